//! The `<body/>` wrapper: reading a request, writing a response.
//!
//! A request body is parsed by the same [`Framer`] as a TCP stream (behind
//! a synthetic stream header), so BOSH gets exactly the XML restrictions and
//! limits of TCP: no DTDs, entities, comments or PIs, bounded depth,
//! attributes and size.

use super::{BindingCondition, HTTPBIND, XBOSH};
use crate::ns;
use crate::stanza::{StreamCondition, StreamError};
use crate::xml::{Element, Framer, Limits, StreamEvent, escape_attr};

/// The largest `rid` a client may use (XEP-0124 §14.1: 2^53 - 1, so that
/// clients whose numbers are IEEE doubles count exactly).
pub const MAX_RID: u64 = 9_007_199_254_740_991;

/// One parsed client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub rid: u64,
    /// Absent on the session creation request only.
    pub sid: Option<String>,
    pub to: Option<String>,
    pub from: Option<String>,
    /// `xml:lang`.
    pub lang: Option<String>,
    /// BOSH version (`ver`), as (major, minor).
    pub ver: Option<(u32, u32)>,
    pub wait: Option<u64>,
    pub hold: Option<u64>,
    /// The highest `rid` whose response the client has (creation: "1" means
    /// the client will send acks).
    pub ack: Option<u64>,
    pub pause: Option<u64>,
    /// `type='terminate'`.
    pub terminate: bool,
    /// `xmpp:restart='true'` (XEP-0206 §5).
    pub restart: bool,
    /// `xmpp:version` (XEP-0206 §3).
    pub xmpp_version: Option<String>,
    /// XEP-0124 §15 key sequencing.
    pub key: Option<String>,
    pub newkey: Option<String>,
    /// The payloads, children of `<body/>`. Elements written without a
    /// namespace of their own (so in the httpbind namespace) are taken as
    /// `jabber:client`, as every connection manager does.
    pub payloads: Vec<Element>,
    /// Bytes of the HTTP body, charged to the session while the request
    /// waits for an earlier `rid`.
    pub size: usize,
}

/// Why a request body was refused before it could be matched to a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The XML itself is refused (not well-formed, restricted XML, too
    /// large, too deep): answered with the RFC 6120 stream error inside a
    /// `remote-stream-error` terminate body.
    Xml(StreamError),
    /// Well-formed, but not a valid BOSH wrapper (no `<body/>` root, bad or
    /// missing `rid`, bad numbers): `bad-request`.
    Binding(String),
}

impl ParseError {
    fn binding(s: impl Into<String>) -> Self {
        ParseError::Binding(s.into())
    }
}

/// Parses one HTTP request body. `limits` are the stream limits of a c2s
/// connection; one extra level of depth is allowed for the wrapper, and
/// the size limit applies to the whole body (the HTTP layer caps it too).
pub fn parse_request(bytes: &[u8], limits: Limits) -> Result<Request, ParseError> {
    let body = strip_xml_declaration(bytes);
    let header = format!(
        "<stream:stream xmlns='{}' xmlns:stream='{}'>",
        ns::CLIENT,
        ns::STREAM
    );
    let limits = Limits {
        max_stanza_bytes: limits.max_stanza_bytes.saturating_add(header.len()),
        max_depth: limits.max_depth.saturating_add(1),
        ..limits
    };
    let mut framer = Framer::new(limits, ns::CLIENT);
    framer.feed(header.as_bytes());
    framer.feed(body);
    match framer.next_event().map_err(ParseError::Xml)? {
        Some(StreamEvent::Open(_)) => {}
        _ => return Err(ParseError::binding("no body")),
    }
    let root = match framer.next_event().map_err(ParseError::Xml)? {
        Some(StreamEvent::Stanza(el)) => el,
        None => {
            return Err(ParseError::Xml(
                StreamError::new(StreamCondition::NotWellFormed).with_text("incomplete body"),
            ));
        }
        Some(StreamEvent::Close | StreamEvent::Open(_)) => {
            return Err(ParseError::binding("no body"));
        }
    };
    // Anything after the root but whitespace is a second root element or
    // junk; the framer keeps it unparsed.
    match framer.next_event() {
        Ok(None) if framer.buffered() == 0 => {}
        _ => {
            return Err(ParseError::Xml(
                StreamError::new(StreamCondition::NotWellFormed)
                    .with_text("content after the <body/> element"),
            ));
        }
    }
    if !root.is("body", HTTPBIND) {
        return Err(ParseError::binding(
            "the root element must be <body xmlns='http://jabber.org/protocol/httpbind'/>",
        ));
    }
    from_element(root, bytes.len())
}

/// A UTF-8 XML declaration (and byte order mark) in front of the body is
/// allowed in a document, but the framer reads the body inside a stream,
/// where it would be a processing instruction.
fn strip_xml_declaration(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.starts_with(b"<?xml")
        && bytes.get(5).is_some_and(|b| b.is_ascii_whitespace())
        && let Some(end) = bytes.windows(2).position(|w| w == b"?>")
    {
        let decl = &bytes[..end];
        // Only UTF-8 is read; a declaration naming another encoding is
        // refused by the framer as unsupported-encoding on a stream.
        let lower = decl.to_ascii_lowercase();
        let names_encoding = lower.windows(8).any(|w| w == b"encoding");
        let names_other = names_encoding && !lower.windows(5).any(|w| w == b"utf-8");
        if !names_other {
            return &bytes[end + 2..];
        }
    }
    bytes
}

fn from_element(mut root: Element, size: usize) -> Result<Request, ParseError> {
    let rid = match root.attr("rid") {
        Some(v) => parse_num(v, "rid")?,
        None => return Err(ParseError::binding("missing 'rid'")),
    };
    if rid == 0 || rid > MAX_RID {
        return Err(ParseError::binding("'rid' out of range"));
    }
    let ver = match root.attr("ver") {
        None => None,
        Some(v) => Some(parse_ver(v).ok_or_else(|| ParseError::binding("bad 'ver'"))?),
    };
    let opt_num = |name: &str| -> Result<Option<u64>, ParseError> {
        root.attr(name).map(|v| parse_num(v, name)).transpose()
    };
    let wait = opt_num("wait")?;
    let hold = opt_num("hold")?;
    let ack = opt_num("ack")?;
    let pause = opt_num("pause")?;
    let terminate = match root.attr("type") {
        None => false,
        Some("terminate") => true,
        Some(_) => return Err(ParseError::binding("unknown 'type'")),
    };
    let restart = match root.attr(&format!("{{{XBOSH}}}restart")) {
        None => false,
        Some(v) => parse_bool(v).ok_or_else(|| ParseError::binding("bad 'xmpp:restart'"))?,
    };
    let owned = |k: &str| root.attr(k).map(str::to_owned);
    let mut req = Request {
        rid,
        sid: owned("sid"),
        to: owned("to"),
        from: owned("from"),
        lang: owned("xml:lang"),
        ver,
        wait,
        hold,
        ack,
        pause,
        terminate,
        restart,
        xmpp_version: owned(&format!("{{{XBOSH}}}version")),
        key: owned("key"),
        newkey: owned("newkey"),
        payloads: Vec::new(),
        size,
    };
    // Character data directly inside <body/> is forbidden (XEP-0124 §4);
    // the whitespace of pretty-printed bodies is not character data worth
    // refusing.
    if !root.text().trim().is_empty() {
        return Err(ParseError::binding("text directly inside <body/>"));
    }
    for el in root.children_mut() {
        into_client_ns(el);
    }
    req.payloads = root.children().cloned().collect();
    Ok(req)
}

/// Moves elements that inherited the wrapper's namespace into
/// `jabber:client`, recursively (a `<message>` written without `xmlns`
/// has a `<body>` child without one too).
fn into_client_ns(el: &mut Element) {
    if el.ns == HTTPBIND {
        el.ns = ns::CLIENT.into();
    }
    for child in el.children_mut() {
        into_client_ns(child);
    }
}

fn parse_num(v: &str, name: &str) -> Result<u64, ParseError> {
    // Digits only: no sign, no spaces, no exponent; 20 digits overflow u64.
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::binding(format!("bad '{name}'")));
    }
    v.parse()
        .map_err(|_| ParseError::binding(format!("bad '{name}'")))
}

fn parse_ver(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.split_once('.')?;
    let num = |s: &str| {
        (!s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    Some((num(major)?, num(minor)?))
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Writes a `<body/>` response: `attrs` (already escaped-safe values are
/// escaped again here), then the serialized payloads.
pub(crate) fn render(attrs: &[(&str, String)], payloads: &[String]) -> String {
    let len = payloads.iter().map(String::len).sum::<usize>() + 256;
    let mut out = String::with_capacity(len);
    out.push_str("<body xmlns='");
    out.push_str(HTTPBIND);
    out.push('\'');
    for (k, v) in attrs {
        out.push(' ');
        out.push_str(k);
        out.push_str("='");
        let mut el = String::new();
        escape_attr(&mut el, v);
        out.push_str(&el);
        out.push('\'');
    }
    if payloads.is_empty() {
        out.push_str("/>");
        return out;
    }
    out.push('>');
    for p in payloads {
        out.push_str(p);
    }
    out.push_str("</body>");
    out
}

/// The namespace declarations a response carrying XEP-0206 attributes or
/// `stream:` elements needs.
pub(crate) fn xmpp_ns_decls() -> [(&'static str, String); 2] {
    [
        ("xmlns:xmpp", XBOSH.to_owned()),
        ("xmlns:stream", ns::STREAM.to_owned()),
    ]
}

/// Serializes an outgoing element for a response body. Elements in the
/// streams namespace (`<stream:features/>`, `<stream:error/>`) use the
/// `stream:` prefix declared on the wrapper, as clients that match the
/// literal name expect; every other element declares its namespace,
/// since the wrapper's default namespace is httpbind.
pub fn serialize_payload(el: &Element) -> String {
    if el.ns == ns::STREAM {
        let mut out = String::new();
        let tag = format!("stream:{}", el.name);
        // to_xml_prefixed declares the prefix on the element itself, which
        // is redundant but harmless and keeps the element self-contained.
        out.push_str(&el.to_xml_prefixed("stream", HTTPBIND));
        debug_assert!(out.starts_with(&format!("<{tag}")));
        out
    } else {
        el.to_xml_in(HTTPBIND)
    }
}

/// A `type='terminate'` body for a binding condition.
pub(crate) fn terminate_body(condition: Option<BindingCondition>, extra: &[String]) -> String {
    let mut attrs = vec![("type", "terminate".to_owned())];
    if let Some(c) = condition {
        attrs.push(("condition", c.as_str().to_owned()));
    }
    if !extra.is_empty() {
        attrs.extend(xmpp_ns_decls());
    }
    render(&attrs, extra)
}
