//! Streaming parser for the never-ending `<stream:stream>` document.
//!
//! The [`Framer`] turns bytes into [`StreamEvent`]s: the stream header, one
//! [`Element`] per top-level child (stanzas and nonzas alike), and the
//! closing tag. It owns every resource limit that must hold *before* a
//! stanza exists as a tree, because once a tree is built the memory is
//! already spent.
//!
//! The XML work (well-formedness, namespaces, and refusing DTDs, entities,
//! PIs and comments) is done by rxml up to and including the stream
//! header, once per stream, and after it by this crate's own
//! [`Tokenizer`], once per stanza: the hot path. The tokenizer is exactly
//! as strict as rxml (see its module docs; `reference::RxmlFramer` is the
//! rxml-only framer the differential tests compare with). On top of them
//! we keep a copy of every byte since the last event we returned. That
//! costs at most one stanza's worth (the size limit bounds it) plus
//! whatever the caller fed but we have not parsed, and buys three things
//! the parsers cannot give us:
//! - [`Framer::reset`] can re-parse bytes that arrived after the last event
//!   (a client pipelining its new stream header right behind `<auth/>`);
//! - [`Framer::buffered`] is exact, for the STARTTLS injection check;
//! - the raw stream header, whose `xmlns` declaration and prefix rxml hides;
//! - a message's content as bytes. Most messages are routed, not read, so
//!   the content of a `<message>` in the stream's namespace is not built
//!   into a tree: the tokenizer still checks every byte of it (and every
//!   limit applies), but records only the names of the direct children,
//!   handing out no token until the message's end tag, and the framer
//!   hands out the validated bytes, which
//!   [`Children`](super::Children) parses if and when someone reads them
//!   and writes back verbatim into the same namespace. Content that uses
//!   a namespace prefix (which may be declared outside it, where the
//!   bytes alone do not say what it means) is built into a tree as usual.

use crate::ns;
use crate::stanza::{StreamCondition, StreamError};
use crate::xml::element::{Children, Element, Node, attr_key, push_text_node};
use crate::xml::tokenizer::{Token, Tokenizer};
use compact_str::CompactString;
use rxml::error::EndOrError;
use rxml::{Event, Parse, Parser, WithOptions};

/// Resource limits for one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes consumed for one top-level element, counted from the end of the
    /// previous one (so the stream header counts too). Exceeding it is a
    /// `policy-violation` as soon as the bytes arrive, not when the element
    /// ends: a start tag that never closes must not buffer forever.
    pub max_stanza_bytes: usize,
    /// Deepest element allowed, where `<stream:stream>` is depth 0 and a
    /// stanza is depth 1.
    pub max_depth: usize,
    /// Attributes on any one element, not counting namespace declarations.
    pub max_attrs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 262_144,
            max_depth: 32,
            max_attrs: 64,
        }
    }
}

/// The attributes of the opening `<stream:stream>` tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamHeader {
    /// Content namespace, e.g. `jabber:client`. This is the framer's
    /// configured namespace: a header declaring a different default
    /// namespace is refused with `invalid-namespace` before this is built.
    pub ns: String,
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    /// `xml:lang`.
    pub lang: Option<String>,
}

/// What the framer produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// The peer opened (or, after [`Framer::reset`], re-opened) the stream.
    Open(StreamHeader),
    /// A complete top-level element: a stanza or a nonza (`<starttls/>`, `<auth/>` …).
    Stanza(Element),
    /// The peer sent `</stream:stream>`.
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for `<stream:stream>`.
    Start,
    /// Inside the stream.
    Open,
    /// The header was an empty element (`<stream:stream …/>`): the stream
    /// is open and its end is the next event, as rxml reports it.
    EmptyRoot,
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
/// (see [`Framer::release_idle_buffers`]). Real headers take about 150
/// bytes; a peer that sent a huge one must not make every later keepalive
/// cost a re-parse of it.
const MAX_REOPEN_HEADER: usize = 512;

/// Bytes-to-events parser for one XML stream. Sans-IO: the caller feeds
/// what it read and then drains [`Framer::next_event`] until it returns
/// `Ok(None)`.
#[derive(Debug)]
pub struct Framer {
    limits: Limits,
    content_ns: &'static str,
    /// rxml, for the prolog and the stream header (state `Start`).
    parser: Option<Box<Parser>>,
    /// The tokenizer inside the stream (state `Open`). `None` while
    /// released between stanzas (see [`Framer::release_idle_buffers`]);
    /// rebuilt from `header` on demand.
    tokenizer: Option<Box<Inside>>,
    /// The raw `<stream:stream …>` start tag of the current stream, which
    /// is all a rebuilt parser needs to be back inside the stream with the
    /// same namespace declarations.
    header: Vec<u8>,
    state: State,
    /// Open elements below the root, each with where its children start
    /// in `nodes`; `stack[0]` is the stanza being built.
    stack: Vec<(Element, usize)>,
    /// The children of the open elements, in document order. An element's
    /// children are moved out of here when it ends, in one allocation of
    /// their size, rather than grown node by node in the element.
    nodes: Vec<Node>,
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
    /// Build every element's tree, never keep content as bytes.
    eager: bool,
}

/// The tokenizer and the state of a message whose content is kept as
/// bytes, in one box: neither is needed between stanzas, when an idle
/// framer drops the box, and the connection's task stays as small as it
/// was (see `waxwing-core`'s `footprint` test).
#[derive(Debug)]
struct Inside {
    tokenizer: Tokenizer,
    lazy: Lazy,
}

/// A message whose content is kept as bytes (see the module docs); the
/// tokenizer keeps the rest of its state (its `Kept`).
#[derive(Debug, Default)]
struct Lazy {
    /// The absolute offset where the content starts; 0 when there is no
    /// such message (a stanza never starts at 0: the header precedes it).
    from: u64,
    /// The tokenizer's count of prefixed start tags when the content
    /// began: if it changes, the content uses a prefix.
    prefixed: u32,
}

impl Inside {
    fn new(tokenizer: Tokenizer) -> Box<Self> {
        Box::new(Inside {
            tokenizer,
            lazy: Lazy::default(),
        })
    }
}

impl Framer {
    /// A framer expecting a stream whose content namespace is `content_ns`
    /// (`jabber:client` for c2s, `jabber:server` for s2s).
    pub fn new(limits: Limits, content_ns: &'static str) -> Self {
        Framer {
            parser: Some(Box::new(new_parser(limits))),
            state: State::Start,
            eager: false,
            ..Self::inside(limits, content_ns, Vec::new())
        }
    }

    /// A framer inside a stream already opened by `header`, the raw start
    /// tag of a `<stream:stream>` read before (rxml is not needed), that
    /// builds every tree: for reading validated bytes again.
    fn inside(limits: Limits, content_ns: &'static str, header: Vec<u8>) -> Self {
        Framer {
            limits,
            content_ns,
            parser: None,
            tokenizer: None,
            header,
            state: State::Open,
            stack: Vec::new(),
            nodes: Vec::new(),
            buf: Vec::new(),
            buf_start: 0,
            consumed: 0,
            event_end: 0,
            boundary: 0,
            poison: None,
            eager: true,
        }
    }

    /// This framer builds every element's tree, message content included
    /// (see the module docs).
    #[must_use]
    pub fn eager(mut self) -> Self {
        self.eager = true;
        self
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
        // Grown by an eighth rather than doubled: a message's content is
        // kept here until its end (see the module docs), and one trickled
        // in should cost about its own size, not up to twice it.
        let needed = self.buf.len() + data.len();
        if needed > self.buf.capacity() {
            let cap = self.buf.capacity();
            let target = needed.max(cap + cap / 8);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(data);
    }

    /// The first byte still needed. Inside the stream, bytes rxml has
    /// parsed are in the element tree already, so keeping them too would
    /// make a partial stanza cost twice its size (a 200 KB text node
    /// trickled into an unfinished stanza held about 470 KB). Only the
    /// last few are kept, for [`Framer::map_error`]. Before the stream is
    /// open everything since the boundary is kept: the header's raw bytes
    /// are read back. [`Framer::reset`] needs nothing parsed past the
    /// boundary, since it is called right after an event. Between stanzas
    /// and in a message whose content is kept as bytes, everything since
    /// the boundary is kept: those bytes are the start tag (a message's
    /// is read again if its content must be built after all) and the
    /// content (which no tree holds twice).
    fn keep_from(&self) -> u64 {
        match self.state {
            State::Open if self.lazy_from() != 0 || self.stack.is_empty() => self.boundary,
            State::Open => self
                .boundary
                .max(self.consumed.saturating_sub(PARSED_TAIL_BYTES)),
            State::Start | State::EmptyRoot | State::Closed => self.boundary,
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
        if let Some(inside) = self.tokenizer.as_mut() {
            inside.tokenizer.set_kept_limits(limits);
        }
        if !retoken || self.buffered() != 0 || self.poison.is_some() {
            return;
        }
        match self.state {
            State::Open => self.tokenizer = None, // rebuilt from the header on demand
            State::Start => self.parser = Some(Box::new(new_parser(limits))),
            State::EmptyRoot | State::Closed => {}
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The next event, or `Ok(None)` if more input is needed (or the stream
    /// is closed). After an error the framer is poisoned and keeps
    /// returning that error until [`Framer::reset`].
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
    /// For STARTTLS the caller must first check [`Framer::buffered`] is 0:
    /// bytes kept here would be plaintext parsed as if it came over TLS.
    pub fn reset(&mut self) {
        if self.boundary < self.buf_start {
            // Called inside an element, whose parsed bytes are gone.
            debug_assert!(false, "Framer::reset inside an element");
            self.poison = Some(policy("stream restart inside an element".into()));
            return;
        }
        self.parser = Some(Box::new(new_parser(self.limits)));
        self.tokenizer = None;
        self.header = Vec::new();
        self.state = State::Start;
        self.stack.clear();
        self.nodes.clear();
        self.consumed = self.boundary;
        self.event_end = self.boundary;
        self.poison = None;
    }

    /// Frees the tokenizer while no stanza is in progress: an idle session
    /// (the common case by far) need not hold its scratch buffers and the
    /// root's namespace scope. The next input rebuilds it by reading the
    /// stored stream header again, about as costly as one small stanza.
    /// The element stack is empty between stanzas, but would keep its
    /// capacity (about 300 bytes after any stanza with nested children).
    pub fn release_idle_buffers(&mut self) {
        if self.buffered() != 0 {
            return;
        }
        let reopenable = self.header.len() <= MAX_REOPEN_HEADER;
        if self.state == State::Open && self.poison.is_none() && reopenable {
            self.tokenizer = None;
        } else if let Some(t) = self.tokenizer.as_mut() {
            t.tokenizer.shrink();
        } else if let Some(p) = self.parser.as_mut() {
            p.release_temporaries();
        }
        self.buf.shrink_to_fit();
        self.stack.shrink_to_fit();
        self.nodes.shrink_to_fit();
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
            if self.state == State::EmptyRoot {
                // The stack is empty: this is the stream's end.
                return Ok(self.end_element());
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
            if self.state == State::Open {
                if self.tokenizer.is_none() && from == to {
                    // Released and nothing new to read: stay released.
                    return Ok(None);
                }
                let (limit, consumed) = (token_limit(self.limits), self.consumed);
                let tokenizer = self.tokenizer.get_or_insert_with(|| {
                    Inside::new(Tokenizer::new(limit, &self.header, consumed))
                });
                let mut input = &self.buf[from..to];
                let before = input.len();
                let res = tokenizer.tokenizer.next(&mut input);
                self.consumed += (before - input.len()) as u64;
                let Some(token) = res? else {
                    self.check_size()?;
                    return Ok(None);
                };
                let out = self.handle_token(token)?;
                self.check_size()?;
                if out.is_some() {
                    return Ok(out);
                }
                continue;
            }
            let Some(parser) = self.parser.as_mut() else {
                return Ok(None);
            };
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

    /// A token from the tokenizer, inside the stream: the same checks and
    /// tree building as [`Framer::handle`] does for rxml's events.
    fn handle_token(&mut self, token: Token) -> Result<Option<StreamEvent>, StreamError> {
        match token {
            Token::Start { element, empty } => {
                self.event_end = self.consumed;
                self.check_element(&element)?;
                debug_assert!(
                    self.lazy_from() == 0,
                    "kept content is read in validate_only mode"
                );
                let lazy = !empty && self.stack.is_empty() && self.keeps_content_of(&element);
                self.stack.push((element, self.nodes.len()));
                if lazy && let Some(inside) = self.tokenizer.as_mut() {
                    inside.lazy.from = self.consumed;
                    inside.lazy.prefixed = inside.tokenizer.prefixed();
                    // The tokenizer reads on to the message's end tag,
                    // enforcing the limits on the content's start tags.
                    inside.tokenizer.keep_content(self.limits, self.stack.len());
                }
                if empty {
                    return Ok(self.end_element());
                }
                Ok(None)
            }
            // Kept content's start tags and text stay in the tokenizer,
            // which hands out only the end tag that closes it.
            Token::Checked { .. } => {
                debug_assert!(false, "a kept content's token came out");
                Err(StreamError::new(StreamCondition::InternalServerError))
            }
            Token::End => {
                self.event_end = self.consumed;
                if self.lazy_from() != 0 {
                    return self.end_lazy().map(Some);
                }
                Ok(self.end_element())
            }
            Token::Text { text, start, end } => {
                self.event_end = end;
                self.text(text, start)?;
                Ok(None)
            }
        }
    }

    /// Limits and stream-level rules for an element below the root.
    fn check_element(&self, el: &Element) -> Result<(), StreamError> {
        let depth = self.check_limits(el.attrs.len())?;
        if depth == 1 {
            // A new stream header where a stanza belongs: refuse it
            // at once instead of waiting for an element that never
            // closes.
            if el.is("stream", crate::ns::STREAM) {
                return Err(StreamError::new(StreamCondition::BadFormat)
                    .with_text("stream header inside the stream"));
            }
            self.check_top_level_ns(el)?;
        }
        Ok(())
    }

    /// The attribute count and depth limits for an element below the root
    /// with `attrs` attributes that just started; returns its depth.
    /// Inlined: it runs for every start tag, kept content included.
    #[inline]
    fn check_limits(&self, attrs: usize) -> Result<usize, StreamError> {
        let open_inside = self
            .tokenizer
            .as_ref()
            .map_or(0, |t| t.tokenizer.kept_open());
        let depth = self.stack.len() + open_inside as usize + 1;
        check_limits(&self.limits, attrs, depth)?;
        Ok(depth)
    }

    /// Whether the content of `el`, a top-level element just opened, is
    /// kept as bytes: a message in the stream's namespace whose content
    /// inherits that namespace as its default (which a stanza with its own
    /// prefix and `xmlns` might not).
    fn keeps_content_of(&self, el: &Element) -> bool {
        // A top-level message passed `check_top_level_ns`: it is in the
        // stream's namespace.
        debug_assert!(el.name != "message" || el.ns == self.content_ns);
        !self.eager
            && el.name.as_str() == "message"
            && self
                .tokenizer
                .as_ref()
                .is_some_and(|t| t.tokenizer.default_ns() == self.content_ns)
    }

    /// Where the content kept as bytes starts; 0 outside such content.
    fn lazy_from(&self) -> u64 {
        self.tokenizer.as_ref().map_or(0, |t| t.lazy.from)
    }

    /// The end tag of a message whose content was kept as bytes, just
    /// consumed.
    fn end_lazy(&mut self) -> Result<StreamEvent, StreamError> {
        let Some(inside) = self.tokenizer.as_mut() else {
            unreachable!("kept content is read by the tokenizer");
        };
        let lazy = std::mem::take(&mut inside.lazy);
        let names = inside.tokenizer.end_kept();
        let prefixed = inside.tokenizer.prefixed() != lazy.prefixed;
        let content_from = lazy.from;
        let (mut el, _) = self.stack.pop().expect("the message is open");
        let content = &self.buf[self.index(content_from)..self.index(self.consumed)];
        // The end tag is the last `<`: it has no other. Its name (at least
        // the local name) and the `/` and `>` around it come after that
        // `<`, and are not looked at.
        let after_lt = (el.name.len() + 2).min(content.len());
        let end_tag = content[..content.len() - after_lt]
            .iter()
            .rposition(|&b| b == b'<')
            .unwrap_or(0);
        match std::str::from_utf8(&content[..end_tag]) {
            Ok(raw) if !prefixed => {
                let ns = CompactString::const_new(self.content_ns);
                el.children = Children::from_raw(raw.to_owned(), ns, names);
            }
            // Rare: parsed again with the stream's declarations in scope.
            _ => el = self.reparse_eager()?,
        }
        self.boundary = self.event_end;
        Ok(StreamEvent::Stanza(el))
    }

    /// Builds the tree of the top-level element that just ended, from its
    /// bytes (`boundary..event_end`) behind the stream's header: the same
    /// checks again, in the same scope.
    fn reparse_eager(&self) -> Result<Element, StreamError> {
        let bytes = &self.buf[self.index(self.boundary)..self.index(self.event_end)];
        frame_again(&self.header, self.content_ns, bytes)?.ok_or_else(|| {
            debug_assert!(false, "a framed stanza did not frame again");
            StreamError::new(StreamCondition::InternalServerError)
        })
    }

    /// Parses `xml`, one element the framer has already validated once
    /// (see [`super::parse_fragment`]), in a stream whose header is
    /// `header`.
    pub(crate) fn parse_validated(
        header: &[u8],
        content_ns: &'static str,
        xml: &str,
    ) -> Result<Element, StreamError> {
        frame_again(header, content_ns, xml.as_bytes())?
            .ok_or_else(|| StreamError::new(StreamCondition::BadFormat))
    }

    fn end_element(&mut self) -> Option<StreamEvent> {
        let Some((mut el, from)) = self.stack.pop() else {
            self.state = State::Closed;
            self.boundary = self.event_end;
            return Some(StreamEvent::Close);
        };
        if self.nodes.len() > from {
            el.children = self.nodes.drain(from..).collect::<Vec<_>>().into();
        }
        if self.stack.is_empty() {
            self.boundary = self.event_end;
            return Some(StreamEvent::Stanza(el));
        }
        self.nodes.push(Node::Element(el));
        None
    }

    /// Text that ends at `event_end` and started at `ev_start`.
    fn text(&mut self, text: String, ev_start: u64) -> Result<(), StreamError> {
        match self.stack.last() {
            Some(_) if text.is_empty() => {}
            // The open element's children are `nodes[from..]`: merged with
            // a text node there, never with one of its parent's.
            Some(&(_, from)) if self.nodes.len() == from => self.nodes.push(Node::Text(text)),
            Some(_) => push_text_node(&mut self.nodes, text),
            // Whitespace between stanzas is the RFC 6120 §4.6.1
            // keepalive. Anything else has no meaning at stream
            // level; it is well-formed XML but not a valid XMPP
            // stream, which is bad-format (§4.9.3.1), not
            // not-well-formed.
            None if text.bytes().all(|b| b.is_ascii_whitespace()) => {
                // A text may cover bytes that are not whitespace
                // although the text is (a reference, a CDATA section,
                // an unfinished UTF-8 sequence the parser refuses only
                // later), and the boundary must not pass them: an idle
                // release would drop the parser and the error with it
                // (found by the framer_chunks fuzz target). So the raw
                // bytes are judged here.
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
        Ok(())
    }

    /// An rxml event before the stream is open: the XML declaration, then
    /// the root element.
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
                self.open(el, ev_start).map(Some)
            }
            // rxml reports neither before the root element.
            Event::EndElement(_) | Event::Text(..) => {
                Err(StreamError::new(StreamCondition::NotWellFormed))
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
        // rxml's work is done for this stream.
        self.parser = None;
        if self.header.ends_with(b"/>") {
            // `/` before the `>` of a start tag can only be the empty
            // element's: a quoted value ends in its quote.
            self.state = State::EmptyRoot;
        } else {
            self.state = State::Open;
            self.tokenizer = Some(Inside::new(Tokenizer::new(
                token_limit(self.limits),
                &self.header,
                self.event_end,
            )));
        }
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

/// Frames `bytes`, one top-level element read once before, with a fresh
/// framer inside the stream opened by `header` that builds every tree.
/// The limits admit what was admitted the first time (they were checked
/// then); sized for the header too, which also sets the tokenizer's
/// longest name or value. `None` if the bytes hold no whole element.
fn frame_again(
    header: &[u8],
    content_ns: &'static str,
    bytes: &[u8],
) -> Result<Option<Element>, StreamError> {
    let limits = Limits {
        max_stanza_bytes: header.len() + bytes.len() + 1,
        max_depth: usize::MAX,
        max_attrs: usize::MAX,
    };
    let mut again = Framer::inside(limits, content_ns, header.to_vec());
    again.feed(bytes);
    Ok(match again.next_event()? {
        Some(StreamEvent::Stanza(el)) => Some(el),
        _ => None,
    })
}

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

/// The attribute count and depth limits for an element below the root
/// with `attrs` attributes at `depth` (a stanza is at 1), wherever its
/// start tag is read: by the framer, or by the tokenizer inside content
/// kept as bytes.
#[inline]
pub(super) fn check_limits(limits: &Limits, attrs: usize, depth: usize) -> Result<(), StreamError> {
    if attrs > limits.max_attrs {
        return Err(policy(format!(
            "more than {} attributes on one element",
            limits.max_attrs
        )));
    }
    if depth > limits.max_depth {
        return Err(policy(format!(
            "elements nested deeper than {}",
            limits.max_depth
        )));
    }
    Ok(())
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

#[cfg(test)]
mod lazy_tests;
#[cfg(test)]
mod tests;
