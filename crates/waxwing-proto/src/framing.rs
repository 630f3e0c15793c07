//! RFC 7395 (XMPP over WebSocket) framing, sans-IO.
//!
//! Every WebSocket text message holds complete elements (RFC 7395 §3.3.3:
//! one per message); `<open/>` and `<close/>` in the framing namespace take
//! the place of the stream header and footer. [`MessageFramer`] turns
//! messages into the same [`StreamEvent`]s the byte-stream [`Framer`]
//! produces, under the same limits (size, depth, attributes, restricted
//! XML), by running one [`Framer`] inside a stream that is opened once,
//! invisibly: each message is parsed as the next part of that stream.

use crate::stanza::{StreamCondition, StreamError};
use crate::xml::{Element, Framer, Limits, StreamEvent, StreamHeader};

/// `urn:ietf:params:xml:ns:xmpp-framing`
pub const NS: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// Messages in, stream events out.
#[derive(Debug)]
pub struct MessageFramer {
    framer: Framer,
    content_ns: &'static str,
}

impl MessageFramer {
    /// A framer for messages whose elements default to `content_ns`
    /// (`jabber:client`).
    pub fn new(limits: Limits, content_ns: &'static str) -> Self {
        let mut framer = Framer::new(limits, content_ns);
        let header = format!(
            "<stream:stream xmlns='{content_ns}' xmlns:stream='{}'>",
            crate::ns::STREAM
        );
        framer.feed(header.as_bytes());
        let opened = framer.next_event();
        debug_assert!(matches!(opened, Ok(Some(StreamEvent::Open(_)))));
        MessageFramer { framer, content_ns }
    }

    /// Takes one message's text. Drain [`MessageFramer::next_event`] before
    /// the next message: an element left unfinished is an error then.
    pub fn feed_message(&mut self, text: &str) {
        self.framer.feed(text.as_bytes());
    }

    /// The next event of the messages fed so far; `Ok(None)` when they are
    /// used up. A message that ends inside an element is `bad-format`.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        match self.framer.next_event()? {
            Some(StreamEvent::Stanza(el)) if el.ns == NS => match el.name.as_str() {
                "open" => Ok(Some(StreamEvent::Open(header_of(&el, self.content_ns)))),
                "close" => Ok(Some(StreamEvent::Close)),
                _ => Err(StreamError::new(StreamCondition::BadFormat)
                    .with_text("unknown framing element")),
            },
            Some(ev) => Ok(Some(ev)),
            None if self.framer.buffered() > 0 => Err(StreamError::new(StreamCondition::BadFormat)
                .with_text("a WebSocket message must hold whole elements")),
            None => Ok(None),
        }
    }

    /// See [`Framer::set_limits`].
    pub fn set_limits(&mut self, limits: Limits) {
        self.framer.set_limits(limits);
    }

    /// See [`Framer::release_idle_buffers`].
    pub fn release_idle_buffers(&mut self) {
        self.framer.release_idle_buffers();
    }
}

/// The header an `<open/>` stands for.
fn header_of(open: &Element, content_ns: &str) -> StreamHeader {
    let attr = |name: &str| open.attr(name).map(str::to_string);
    StreamHeader {
        ns: content_ns.to_string(),
        to: attr("to"),
        from: attr("from"),
        id: attr("id"),
        version: attr("version"),
        lang: attr("xml:lang"),
    }
}

/// Our `<open/>` (RFC 7395 §3.4).
pub fn open(id: &str, from: &str, lang: Option<&str>) -> Element {
    let mut el = Element::new("open", NS)
        .with_attr("id", id)
        .with_attr("from", from)
        .with_attr("version", "1.0");
    if let Some(lang) = lang {
        el.set_attr("xml:lang", lang);
    }
    el
}

/// Our `<close/>` (RFC 7395 §3.6), with `see-other-uri` for a redirect (§3.6.1).
pub fn close(see_other_uri: Option<&str>) -> Element {
    let el = Element::new("close", NS);
    match see_other_uri {
        Some(uri) => el.with_attr("see-other-uri", uri),
        None => el,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns;

    fn framer() -> MessageFramer {
        MessageFramer::new(Limits::default(), ns::CLIENT)
    }

    #[test]
    fn open_and_close_stand_for_the_stream_header_and_footer() {
        let mut f = framer();
        f.feed_message(
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0' xml:lang='de'/>",
        );
        let Some(StreamEvent::Open(h)) = f.next_event().unwrap() else {
            panic!("expected open");
        };
        assert_eq!(h.to.as_deref(), Some("example.com"));
        assert_eq!(h.version.as_deref(), Some("1.0"));
        assert_eq!(h.lang.as_deref(), Some("de"));
        assert_eq!(h.ns, ns::CLIENT);
        assert_eq!(f.next_event().unwrap(), None);
        f.feed_message(
            "<iq xmlns='jabber:client' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        let Some(StreamEvent::Stanza(iq)) = f.next_event().unwrap() else {
            panic!("expected a stanza");
        };
        assert!(iq.is("iq", ns::CLIENT));
        f.feed_message("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>");
        assert_eq!(f.next_event().unwrap(), Some(StreamEvent::Close));
    }

    #[test]
    fn a_message_ending_inside_an_element_is_bad_format() {
        let mut f = framer();
        f.feed_message("<message xmlns='jabber:client'><body>half");
        let e = f.next_event().unwrap_err();
        assert_eq!(e.condition, StreamCondition::BadFormat);
    }

    #[test]
    fn whitespace_messages_are_keepalives() {
        let mut f = framer();
        f.feed_message(" \n");
        assert_eq!(f.next_event().unwrap(), None);
        f.feed_message("<presence xmlns='jabber:client'/>");
        assert!(matches!(
            f.next_event().unwrap(),
            Some(StreamEvent::Stanza(_))
        ));
        assert_eq!(f.next_event().unwrap(), None);
    }

    #[test]
    fn limits_hold_per_message() {
        let mut f = MessageFramer::new(
            Limits {
                max_stanza_bytes: 100,
                ..Limits::default()
            },
            ns::CLIENT,
        );
        f.feed_message("<message xmlns='jabber:client'><body>short</body></message>");
        assert!(matches!(
            f.next_event().unwrap(),
            Some(StreamEvent::Stanza(_))
        ));
        let big = format!(
            "<message xmlns='jabber:client'><body>{}</body></message>",
            "x".repeat(200)
        );
        f.feed_message(&big);
        let e = f.next_event().unwrap_err();
        assert_eq!(e.condition, StreamCondition::PolicyViolation);
    }

    #[test]
    fn restricted_xml_is_refused_as_on_tcp() {
        let mut f = framer();
        f.feed_message("<!-- hi --><presence xmlns='jabber:client'/>");
        assert!(f.next_event().is_err());
    }

    #[test]
    fn a_released_framer_parses_the_next_message() {
        let mut f = framer();
        f.feed_message("<presence xmlns='jabber:client'/>");
        assert!(f.next_event().unwrap().is_some());
        assert_eq!(f.next_event().unwrap(), None);
        f.release_idle_buffers();
        f.feed_message("<message xmlns='jabber:client' to='a@b'/>");
        let Some(StreamEvent::Stanza(m)) = f.next_event().unwrap() else {
            panic!("expected a stanza");
        };
        assert_eq!(m.attr("to"), Some("a@b"));
    }

    #[test]
    fn our_open_and_close() {
        let o = open("abc", "example.com", Some("en")).to_xml();
        assert!(o.starts_with("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'"));
        assert!(o.contains("version='1.0'") && o.contains("xml:lang='en'"));
        let c = close(Some("wss://other.example/ws")).to_xml();
        assert!(c.contains("see-other-uri='wss://other.example/ws'"));
    }
}
