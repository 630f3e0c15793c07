//! The rxml-based framer this crate used before [`super::tokenizer`]: the
//! reference the differential tests and the `framer_diff` fuzz target hold
//! the [`Framer`](super::Framer) to. Kept verbatim (the same public
//! interface, rxml doing all XML work), so a difference found is a
//! difference in the XML handling. Not used at runtime: compiled for the
//! tests and with the `rxml-reference` feature.

use crate::ns;
use crate::stanza::{StreamCondition, StreamError};
use crate::xml::element::{Element, attr_key};
use crate::xml::framer::{Limits, StreamEvent, StreamHeader};
use rxml::error::EndOrError;
use rxml::{Event, Parse, Parser, WithOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for `<stream:stream>`.
    Start,
    /// Inside the stream.
    Open,
    /// After `</stream:stream>`; further input is ignored.
    Closed,
}

/// rxml pre-allocates a scratch buffer of `max_token_length` bytes per
/// parser, so tying it to `max_stanza_bytes` would cost 256 KiB per idle
/// connection. Text longer than this is split by rxml and is fine; only a
/// single name or attribute value longer than this is refused, and nothing
/// legitimate in XMPP comes close (a JID is at most 3071 bytes).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Largest stream header for which an idle parser is released and rebuilt
/// (see [`RxmlFramer::release_idle_buffers`]). Real headers take about 150
/// bytes; a peer that sent a huge one must not make every later keepalive
/// cost a re-parse of it.
const MAX_REOPEN_HEADER: usize = 512;

/// Bytes-to-events parser for one XML stream. Sans-IO: the caller feeds
/// what it read and then drains [`RxmlFramer::next_event`] until it returns
/// `Ok(None)`.
#[derive(Debug)]
pub struct RxmlFramer {
    limits: Limits,
    content_ns: &'static str,
    /// `None` while released between stanzas (see
    /// [`RxmlFramer::release_idle_buffers`]); rebuilt from `header` on demand.
    parser: Option<Box<Parser>>,
    /// The raw `<stream:stream …>` start tag of the current stream, which
    /// is all a rebuilt parser needs to be back inside the stream with the
    /// same namespace declarations.
    header: Vec<u8>,
    state: State,
    /// Open elements below the root; `stack[0]` is the stanza being built.
    stack: Vec<Element>,
    /// Input bytes from absolute offset `buf_start` on. Everything before
    /// `boundary` has been returned as an event and may be dropped.
    buf: Vec<u8>,
    buf_start: u64,
    /// Absolute offset up to which bytes were handed to rxml.
    consumed: u64,
    /// Absolute offset where the last rxml event ended. rxml's event
    /// metrics are consecutive, so this is their running sum, except that
    /// they come out short when a multi-byte character was split between
    /// reads; so at each element event, which rxml reports right after
    /// consuming its `>`, this is set to the bytes consumed instead.
    event_end: u64,
    /// Absolute offset where the current top-level element may be said to
    /// begin: the end of the previous one, of the header, or of whitespace
    /// between them. Size limits, `buffered` and `reset` all count from here.
    boundary: u64,
    poison: Option<StreamError>,
}

impl RxmlFramer {
    /// A framer expecting a stream whose content namespace is `content_ns`
    /// (`jabber:client` for c2s, `jabber:server` for s2s).
    pub fn new(limits: Limits, content_ns: &'static str) -> Self {
        RxmlFramer {
            limits,
            content_ns,
            parser: Some(Box::new(new_parser(limits))),
            header: Vec::new(),
            state: State::Start,
            stack: Vec::new(),
            buf: Vec::new(),
            buf_start: 0,
            consumed: 0,
            event_end: 0,
            boundary: 0,
            poison: None,
        }
    }

    /// Appends bytes read from the peer.
    pub fn feed(&mut self, data: &[u8]) {
        // Compact here rather than per event, so draining a read full of
        // small stanzas moves the remaining bytes once, not once per stanza.
        let keep_from = self.keep_from();
        let done = usize::try_from(keep_from.saturating_sub(self.buf_start)).unwrap_or(usize::MAX);
        if done > 0 {
            self.buf.drain(..done.min(self.buf.len()));
            self.buf_start = keep_from;
        }
        self.buf.extend_from_slice(data);
    }

    /// The first byte still needed. Inside the stream, bytes rxml has
    /// parsed are in the element tree already, so keeping them too would
    /// make a partial stanza cost twice its size (a 200 KB text node
    /// trickled into an unfinished stanza held about 470 KB). Only the
    /// last few are kept, for [`RxmlFramer::map_error`]. Before the stream is
    /// open everything since the boundary is kept: the header's raw bytes
    /// are read back. [`RxmlFramer::reset`] needs nothing parsed past the
    /// boundary, since it is called right after an event. Between stanzas
    /// everything since the boundary is kept too, as the framer does:
    /// those bytes are whitespace not yet reported (rxml holds a text that
    /// a read left after a CR) and a start tag not yet finished, which no
    /// tree holds, and a text at stream level is judged by its raw bytes.
    /// Without them a run of CRs longer than the kept tail could not be
    /// judged (its text is shorter than its bytes), the boundary stayed
    /// before it and `buffered()` came out larger than the framer's
    /// (found by the framer_diff fuzz target).
    fn keep_from(&self) -> u64 {
        match self.state {
            State::Open if self.stack.is_empty() => self.boundary,
            State::Open => self
                .boundary
                .max(self.consumed.saturating_sub(PARSED_TAIL_BYTES)),
            State::Start | State::Closed => self.boundary,
        }
    }

    /// Changes the limits, e.g. from the tighter ones that hold before
    /// authentication to the ordinary ones after it. The size limit
    /// applies from the current element on; rxml's name and value length
    /// limit is fixed when its parser is built, so the parser is rebuilt
    /// when that changes and no element is in progress.
    pub fn set_limits(&mut self, limits: Limits) {
        let retoken = token_limit(limits) != token_limit(self.limits);
        self.limits = limits;
        if !retoken || self.buffered() != 0 || self.poison.is_some() {
            return;
        }
        match self.state {
            State::Open => self.parser = None, // rebuilt from the header on demand
            State::Start => self.parser = Some(Box::new(new_parser(limits))),
            State::Closed => {}
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The next event, or `Ok(None)` if more input is needed (or the stream
    /// is closed). After an error the framer is poisoned and keeps
    /// returning that error until [`RxmlFramer::reset`].
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        if let Some(e) = &self.poison {
            return Err(e.clone());
        }
        let r = self.step();
        if let Err(e) = &r {
            self.poison = Some(e.clone());
        }
        r
    }

    /// Starts a fresh document after STARTTLS or SASL success (RFC 6120
    /// §5.4.3.3, §6.4.6): the peer will send a new header, possibly with
    /// an XML declaration. Bytes after the last returned event are kept
    /// and re-parsed, since after SASL they belong to the new stream. Call
    /// this right after handling the event that triggers it, before the
    /// next `next_event`: the old parser would refuse a new XML declaration.
    ///
    /// For STARTTLS the caller must first check [`RxmlFramer::buffered`] is 0:
    /// bytes kept here would be plaintext parsed as if it came over TLS.
    pub fn reset(&mut self) {
        if self.boundary < self.buf_start {
            // Called inside an element, whose parsed bytes are gone.
            debug_assert!(false, "Framer::reset inside an element");
            self.poison = Some(policy("stream restart inside an element".into()));
            return;
        }
        self.parser = Some(Box::new(new_parser(self.limits)));
        self.header = Vec::new();
        self.state = State::Start;
        self.stack.clear();
        self.consumed = self.boundary;
        self.event_end = self.boundary;
        self.poison = None;
    }

    /// Frees the parser while no stanza is in progress. Inside the stream,
    /// rxml keeps about 2 KiB per parser (its own state, the root's
    /// namespace scope, attribute and scratch buffers that keep their
    /// capacity); an idle session (the common case by far) need not hold
    /// that. The next input rebuilds the parser by feeding it the stored
    /// stream header again, about as costly as parsing one small stanza.
    /// The element stack is empty between stanzas, but would keep its
    /// capacity (about 300 bytes after any stanza with nested children).
    pub fn release_idle_buffers(&mut self) {
        if self.buffered() != 0 {
            return;
        }
        let reopenable = self.header.len() <= MAX_REOPEN_HEADER;
        if self.state == State::Open && self.poison.is_none() && reopenable {
            self.parser = None;
        } else if let Some(p) = self.parser.as_mut() {
            p.release_temporaries();
        }
        self.buf.shrink_to_fit();
        self.stack.shrink_to_fit();
    }

    /// Input bytes after the last returned event (or keepalive). Must be 0
    /// when the TLS upgrade starts: anything else is plaintext the peer
    /// sent after `<starttls/>`, which must not be treated as if it came
    /// over TLS (CVE-2011-0411 class).
    pub fn buffered(&self) -> usize {
        let fed = self.buf_start + self.buf.len() as u64;
        usize::try_from(fed - self.boundary).unwrap_or(usize::MAX)
    }

    fn step(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        loop {
            if self.state == State::Closed {
                return Ok(None);
            }
            // Never show rxml more than one byte past the size limit. The
            // limit check then fires at the same byte however the input
            // was chunked, instead of rxml racing ahead through a large
            // read and reporting some later error (or token-length error)
            // first.
            let budget = self
                .boundary
                .saturating_add(self.limits.max_stanza_bytes as u64)
                .saturating_add(1)
                .saturating_sub(self.consumed);
            let from = self.index(self.consumed);
            let to = self.buf.len().min(from.saturating_add(budget as usize));
            if self.parser.is_none() && from == to {
                // Released and nothing new to read: stay released.
                return Ok(None);
            }
            let parser = self
                .parser
                .get_or_insert_with(|| Box::new(reopened_parser(self.limits, &self.header)));
            let mut input = &self.buf[from..to];
            let before = input.len();
            let res = parser.parse(&mut input, false);
            self.consumed += (before - input.len()) as u64;
            let ev = match res {
                Ok(Some(ev)) => ev,
                // Only reported with at_eof, which a stream never is.
                Ok(None) => return Err(StreamError::new(StreamCondition::NotWellFormed)),
                Err(EndOrError::NeedMoreData) => {
                    self.check_size()?;
                    return Ok(None);
                }
                Err(EndOrError::Error(e)) => return Err(self.map_error(e)),
            };
            let ev_start = self.event_end;
            self.event_end = match ev {
                Event::StartElement(..) | Event::EndElement(..) => {
                    debug_assert!(
                        self.consumed == self.buf_start
                            || self.buf.get(self.index(self.consumed) - 1) == Some(&b'>'),
                        "an element event ends at a consumed `>`"
                    );
                    self.consumed
                }
                _ => self.event_end + ev.metrics().len() as u64,
            };
            debug_assert!(self.event_end <= self.consumed);
            let out = self.handle(ev, ev_start)?;
            self.check_size()?;
            if out.is_some() {
                return Ok(out);
            }
        }
    }

    fn handle(&mut self, ev: Event, ev_start: u64) -> Result<Option<StreamEvent>, StreamError> {
        match ev {
            Event::XmlDeclaration(..) => Ok(None),
            Event::StartElement(_, (ns, name), attrs) => {
                if attrs.len() > self.limits.max_attrs {
                    return Err(policy(format!(
                        "more than {} attributes on one element",
                        self.limits.max_attrs
                    )));
                }
                let mut el = Element::new(name.as_str(), ns.as_str());
                for ((ans, aname), value) in attrs {
                    el.attrs
                        .push((attr_key(ans.as_str(), aname.as_str()), value.into()));
                }
                if self.state == State::Start {
                    return self.open(el, ev_start).map(Some);
                }
                let depth = self.stack.len() + 1;
                if depth > self.limits.max_depth {
                    return Err(policy(format!(
                        "elements nested deeper than {}",
                        self.limits.max_depth
                    )));
                }
                if depth == 1 {
                    // A new stream header where a stanza belongs: refuse it
                    // at once instead of waiting for an element that never
                    // closes.
                    if el.is("stream", crate::ns::STREAM) {
                        return Err(StreamError::new(StreamCondition::BadFormat)
                            .with_text("stream header inside the stream"));
                    }
                    self.check_top_level_ns(&el)?;
                }
                self.stack.push(el);
                Ok(None)
            }
            Event::EndElement(_) => match self.stack.pop() {
                None => {
                    self.state = State::Closed;
                    self.boundary = self.event_end;
                    Ok(Some(StreamEvent::Close))
                }
                Some(el) => match self.stack.last_mut() {
                    Some(parent) => {
                        parent.push_child(el);
                        Ok(None)
                    }
                    None => {
                        self.boundary = self.event_end;
                        Ok(Some(StreamEvent::Stanza(el)))
                    }
                },
            },
            Event::Text(_, text) => {
                match self.stack.last_mut() {
                    Some(el) => el.push_text(text),
                    // Whitespace between stanzas is the RFC 6120 §4.6.1
                    // keepalive. Anything else has no meaning at stream
                    // level; it is well-formed XML but not a valid XMPP
                    // stream, which is bad-format (§4.9.3.1), not
                    // not-well-formed.
                    None if text.bytes().all(|b| b.is_ascii_whitespace()) => {
                        // rxml may cover with a text event a byte it refuses
                        // only on its next call (invalid UTF-8 is reported
                        // when the text ends), and the boundary must not pass
                        // it: an idle release would drop the parser and the
                        // error with it (found by the framer_chunks fuzz
                        // target). So the raw bytes are judged here.
                        let raw = (ev_start >= self.buf_start)
                            .then(|| &self.buf[self.index(ev_start)..self.index(self.event_end)]);
                        match raw {
                            Some(raw) if !raw.iter().all(u8::is_ascii_whitespace) => {
                                return Err(StreamError::new(StreamCondition::NotWellFormed)
                                    .with_text("a byte between stanzas that is not whitespace"));
                            }
                            // Not kept any more (a long run): only a text as
                            // long as its bytes is sure to be whitespace; else
                            // the next call judges it.
                            None if text.len() as u64 != self.event_end - ev_start => {}
                            _ => self.boundary = self.event_end,
                        }
                    }
                    None => {
                        return Err(StreamError::new(StreamCondition::BadFormat)
                            .with_text("text outside of any stanza"));
                    }
                }
                Ok(None)
            }
        }
    }

    /// Validates the root element and turns it into the header event.
    fn open(&mut self, root: Element, ev_start: u64) -> Result<StreamEvent, StreamError> {
        // RFC 6120 §4.9.3.10 and §4.9.3.1.
        if root.ns != ns::STREAM {
            return Err(StreamError::new(StreamCondition::InvalidNamespace)
                .with_text("root element not in the streams namespace"));
        }
        if root.name != "stream" {
            return Err(StreamError::new(StreamCondition::BadFormat)
                .with_text("root element is not <stream:stream>"));
        }
        let raw = &self.buf[self.index(ev_start)..self.index(self.event_end)];
        let (qname, default_ns) = scan_start_tag(raw);
        // §4.8.5: the streams namespace must use the prefix "stream".
        if qname != b"stream:stream" {
            return Err(StreamError::new(StreamCondition::BadNamespacePrefix)
                .with_text("the streams namespace must use the prefix 'stream'"));
        }
        // §4.8.2 requires the default namespace declaration; a header
        // without one is let through here and its stanzas are refused by
        // check_top_level_ns, since they land in no namespace.
        if default_ns.is_some_and(|d| d != self.content_ns) {
            return Err(StreamError::new(StreamCondition::InvalidNamespace)
                .with_text(format!("content namespace must be {}", self.content_ns)));
        }
        // From the `<`: rxml refuses whitespace before the root when there
        // is no XML declaration in front of it.
        let tag = raw.iter().position(|&b| b == b'<').unwrap_or(0);
        self.header = raw[tag..].to_vec();
        self.state = State::Open;
        self.boundary = self.event_end;
        Ok(StreamEvent::Open(StreamHeader {
            ns: self.content_ns.to_owned(),
            to: root.attr("to").map(str::to_owned),
            from: root.attr("from").map(str::to_owned),
            id: root.attr("id").map(str::to_owned),
            version: root.attr("version").map(str::to_owned),
            lang: root.attr("xml:lang").map(str::to_owned),
        }))
    }

    /// A stanza in any namespace but the stream's content namespace means
    /// the peer declared the wrong default namespace (or none), which is
    /// invalid-namespace (RFC 6120 §4.9.3.10). Other top-level elements in
    /// foreign namespaces are nonzas for the negotiation layer to judge.
    fn check_top_level_ns(&self, el: &Element) -> Result<(), StreamError> {
        let is_stanza = matches!(el.name.as_str(), "message" | "presence" | "iq");
        if el.ns.is_empty() || (is_stanza && el.ns != self.content_ns) {
            return Err(StreamError::new(StreamCondition::InvalidNamespace)
                .with_text(format!("<{}/> must be in {}", el.name, self.content_ns)));
        }
        Ok(())
    }

    fn check_size(&self) -> Result<(), StreamError> {
        if self.state == State::Closed {
            return Ok(());
        }
        if self.consumed - self.boundary > self.limits.max_stanza_bytes as u64 {
            return Err(policy(format!(
                "stanza larger than {} bytes",
                self.limits.max_stanza_bytes
            )));
        }
        Ok(())
    }

    fn map_error(&self, e: rxml::Error) -> StreamError {
        use StreamCondition as C;
        use rxml::Error as E;
        let condition = match e {
            E::UndeclaredEntity => C::RestrictedXml,
            // rxml treats `<!` not followed by `--` or `[CDATA[` as a syntax
            // error, but `<!DOCTYPE`, `<!ENTITY` and friends are exactly
            // the DTD constructs RFC 6120 §11.1 calls restricted.
            E::InvalidSyntax(_) if self.consumed_ends_with_markup_decl() => C::RestrictedXml,
            // These strings are rxml's, not API; the test
            // `rxml_error_messages_we_match_on` pins them.
            E::RestrictedXml("long name or reference" | "event too long") => C::PolicyViolation,
            E::RestrictedXml("only utf-8 encoding is allowed") => C::UnsupportedEncoding,
            E::RestrictedXml(_) => C::RestrictedXml,
            E::UndeclaredNamespacePrefix(_)
            | E::ReservedNamespacePrefix
            | E::ReservedNamespaceName => C::BadNamespacePrefix,
            E::InvalidEof(_)
            | E::InvalidChar(..)
            | E::UnexpectedChar(..)
            | E::UnexpectedByte(..)
            | E::InvalidSyntax(_)
            | E::UnexpectedToken(..)
            | E::DuplicateAttribute
            | E::ElementMismatch
            | E::MultiColonName(_)
            | E::EmptyNamePart(_)
            | E::InvalidLocalName(_)
            | E::EmptyNamespaceUri
            | E::InvalidUtf8Byte(_) => C::NotWellFormed,
        };
        StreamError::new(condition).with_text(e.to_string())
    }

    /// Whether the last bytes handed to rxml are `<!` and a letter.
    fn consumed_ends_with_markup_decl(&self) -> bool {
        let seen = &self.buf[..self.index(self.consumed).min(self.buf.len())];
        matches!(seen, [.., b'<', b'!', c] if c.is_ascii_alphabetic())
    }

    fn index(&self, offset: u64) -> usize {
        usize::try_from(offset - self.buf_start).expect("buffered bytes fit in memory")
    }
}

/// Parsed bytes kept behind the parser inside the stream (see `keep_from`).
const PARSED_TAIL_BYTES: u64 = 16;

fn token_limit(limits: Limits) -> usize {
    limits.max_stanza_bytes.clamp(1, MAX_TOKEN_BYTES)
}

fn new_parser(limits: Limits) -> Parser {
    let mut p = Parser::with_options(rxml::Options {
        max_token_length: token_limit(limits),
        ..Default::default()
    });
    // Whitespace keepalives must be seen as soon as they arrive so they
    // close the size window of the previous stanza; with buffering rxml
    // would hold them until the next `<`.
    p.set_text_buffering(false);
    p
}

/// A parser that has read `header`, the `<stream:stream …>` start tag of
/// the current stream, and so resolves names as inside that stream. rxml
/// accepted these very bytes when the stream opened, and reports a start
/// tag as soon as its `>` arrives.
fn reopened_parser(limits: Limits, header: &[u8]) -> Parser {
    let mut p = new_parser(limits);
    let mut input = header;
    let r = p.parse(&mut input, false);
    debug_assert!(
        matches!(r, Ok(Some(Event::StartElement(..)))) && input.is_empty(),
        "the stored header reopens the stream"
    );
    p
}

fn policy(text: String) -> StreamError {
    StreamError::new(StreamCondition::PolicyViolation).with_text(text)
}

/// Reads the qualified name and the default namespace declaration from a
/// start tag rxml has already checked for well-formedness, so this only
/// has to split, not validate.
fn scan_start_tag(raw: &[u8]) -> (&[u8], Option<String>) {
    let mut i = raw
        .iter()
        .position(|&b| b == b'<')
        .map_or(raw.len(), |p| p + 1);
    let name_end = |i: usize| {
        raw[i..]
            .iter()
            .position(|b| b.is_ascii_whitespace() || matches!(b, b'/' | b'>' | b'='))
            .map_or(raw.len(), |p| i + p)
    };
    let end = name_end(i);
    let qname = &raw[i..end];
    i = end;
    let mut default_ns = None;
    loop {
        while i < raw.len() && raw[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= raw.len() || matches!(raw[i], b'/' | b'>') {
            return (qname, default_ns);
        }
        let end = name_end(i);
        let attr = &raw[i..end];
        let Some(q) = raw[end..].iter().position(|b| matches!(b, b'\'' | b'"')) else {
            return (qname, default_ns);
        };
        let open = end + q;
        let quote = raw[open];
        let Some(len) = raw[open + 1..].iter().position(|&b| b == quote) else {
            return (qname, default_ns);
        };
        if attr == b"xmlns" {
            default_ns = Some(unescape(&raw[open + 1..open + 1 + len]));
        }
        i = open + 1 + len + 1;
    }
}

/// Expands the predefined entities and character references, the only
/// references rxml lets through.
fn unescape(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    let mut out = String::with_capacity(s.len());
    let mut rest = &*s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let Some(semi) = rest[amp..].find(';') else {
            out.push_str(&rest[amp..]);
            return out;
        };
        let entity = &rest[amp + 1..amp + semi];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "apos" => Some('\''),
            "quot" => Some('"'),
            _ => entity
                .strip_prefix("#x")
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        out.extend(ch);
        rest = &rest[amp + semi + 1..];
    }
    out.push_str(rest);
    out
}

/// What one framer made of a chunked input: its events, `buffered()`
/// after each chunk, and the condition it stopped with.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<String>,
    pub buffered: Vec<usize>,
    pub error: Option<crate::stanza::StreamCondition>,
}

/// Feeds `chunks` to a framer (a release of idle buffers after chunk `i`
/// where `release[i]`), then one NUL byte, which no XML allows anywhere:
/// an error the input had only begun (a token still open, a rule rxml
/// judges when the token ends) must then be reported, so outcomes compare
/// whole, not by when each parser got round to the error.
fn run_framer<F>(
    mut framer: F,
    chunks: &[&[u8]],
    release: &[bool],
    feed: fn(&mut F, &[u8]),
    next: fn(&mut F) -> Result<Option<StreamEvent>, StreamError>,
    idle: fn(&mut F),
    buffered: fn(&F) -> usize,
) -> Outcome {
    let mut out = Outcome {
        events: Vec::new(),
        buffered: Vec::new(),
        error: None,
    };
    let nul: &[u8] = b"\0";
    for (i, c) in chunks.iter().chain(std::iter::once(&nul)).enumerate() {
        feed(&mut framer, c);
        loop {
            match next(&mut framer) {
                Ok(Some(ev)) => out.events.push(format!("{ev:?}")),
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e.condition);
                    return out;
                }
            }
        }
        out.buffered.push(buffered(&framer));
        if release.get(i).copied().unwrap_or(false) {
            idle(&mut framer);
        }
    }
    out
}

/// For a message, whose content the framer keeps as bytes: written back
/// (the bytes, verbatim) and parsed again, directly and inside a wrapper
/// in either stream namespace, it must be the element the tree describes,
/// and so must its copy written from the tree. Panics otherwise (for the
/// fuzz targets, which see the panic).
pub fn check_write_back(el: &super::Element) {
    let stream_ns = match el.ns.as_str() {
        ns::CLIENT if el.name == "message" => ns::CLIENT,
        ns::SERVER if el.name == "message" => ns::SERVER,
        _ => return,
    };
    // Parsed before anything is compared, so the tree is the one the
    // bytes describe rather than one built from them by comparing.
    let tree = super::Element {
        children: el.children.to_vec().into(),
        ..el.clone()
    };
    for (what, written) in [("bytes", el), ("tree", &tree)] {
        let xml = written.to_xml_in(stream_ns);
        let back = super::parse_stanza(&xml, stream_ns)
            .unwrap_or_else(|e| panic!("{what} written back do not parse: {xml:?}: {e:?}"));
        assert_eq!(&back, el, "{what} written back differ: {xml:?}");
        for outer in [ns::CLIENT, ns::SERVER] {
            let wrapper =
                super::Element::new("forwarded", "urn:xmpp:forward:0").with_child(written.clone());
            let xml = wrapper.to_xml_in(outer);
            let back = super::parse_stanza(&xml, outer)
                .unwrap_or_else(|e| panic!("{what} forwarded do not parse: {xml:?}: {e:?}"));
            assert_eq!(
                back.first_child(),
                Some(el),
                "{what} forwarded differ: {xml:?}"
            );
        }
    }
}

/// For a message whose content the framer kept as bytes: the direct
/// children it recorded while only validating that content (the
/// tokenizer's validation-only mode) must be those the bytes hold, in
/// order. Panics otherwise (for the fuzz targets, which see the panic).
pub fn check_child_names(el: &super::Element) {
    if !el.children.is_unparsed() {
        return;
    }
    // Read before the content is parsed, which would answer from the tree.
    let recorded: Vec<(String, String)> = el
        .child_names()
        .map(|(name, ns)| (name.to_owned(), ns.to_owned()))
        .collect();
    let parsed: Vec<(String, String)> = el
        .children
        .to_vec()
        .iter()
        .filter_map(|n| match n {
            super::Node::Element(e) => Some((e.name.to_string(), e.ns.to_string())),
            super::Node::Text(_) => None,
        })
        .collect();
    assert_eq!(
        recorded, parsed,
        "recorded child names differ from the content"
    );
}

/// The differential check of the framer against this rxml-only one: the
/// same chunks must give the same events, `buffered()` values and error
/// condition (see below for when). The framer is also run building every
/// tree (`Framer::eager`, where message content is read in full mode
/// rather than only validated), which must give exactly what the framer
/// keeping content as bytes gives: the same events, `buffered()` after
/// every chunk and condition. Returns the two outcomes that differ.
pub fn compare(
    limits: Limits,
    content_ns: &'static str,
    chunks: &[&[u8]],
    release: &[bool],
) -> Result<(), Box<(Outcome, Outcome)>> {
    let new = run_framer(
        super::Framer::new(limits, content_ns),
        chunks,
        release,
        |f, d| f.feed(d),
        |f| {
            let ev = f.next_event();
            if let Ok(Some(StreamEvent::Stanza(el))) = &ev {
                check_child_names(el);
                check_write_back(el);
            }
            ev
        },
        |f| f.release_idle_buffers(),
        |f| f.buffered(),
    );
    let eager = run_framer(
        super::Framer::new(limits, content_ns).eager(),
        chunks,
        release,
        |f, d| f.feed(d),
        |f| f.next_event(),
        |f| f.release_idle_buffers(),
        |f| f.buffered(),
    );
    if new != eager {
        return Err(Box::new((new, eager)));
    }
    let old = run_framer(
        RxmlFramer::new(limits, content_ns),
        chunks,
        release,
        |f, d| f.feed(d),
        |f| f.next_event(),
        |f| f.release_idle_buffers(),
        |f| f.buffered(),
    );
    // One parser may need a byte more than the other before it refuses a
    // token (rxml reads the `>` after a misplaced `/`), so `buffered()` is
    // compared for the chunks both got through.
    let n = new.buffered.len().min(old.buffered.len());
    if new.events == old.events && new.error == old.error && new.buffered[..n] == old.buffered[..n]
    {
        Ok(())
    } else {
        Err(Box::new((new, old)))
    }
}
