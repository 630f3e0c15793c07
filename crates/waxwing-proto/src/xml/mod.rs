//! XML for XMPP: an owned element tree and the stream framer.
//!
//! Nothing here knows about sockets: the framer takes bytes and returns
//! events, so the same code serves TCP, WebSocket (after de-framing) and
//! fuzzing.

mod element;
mod framer;
mod prefixes;
#[cfg(any(test, feature = "rxml-reference"))]
pub mod reference;
mod tokenizer;
#[cfg(test)]
mod tokenizer_tests;

pub use compact_str::CompactString;
pub use element::{Children, Element, Node, escape_attr};
pub use framer::{Framer, Limits, StreamEvent, StreamHeader};

use crate::stanza::{StreamCondition, StreamError};

/// Parses one stored stanza (e.g. an offline message) written by
/// [`Element::to_xml`]. Goes through the same [`Framer`] as the wire, so
/// stored data gets no laxer treatment than live data.
pub fn parse_stanza(xml: &str, content_ns: &'static str) -> Result<Element, StreamError> {
    let header = format!(
        "<stream:stream xmlns='{content_ns}' xmlns:stream='{}'>",
        crate::ns::STREAM
    );
    // The limit must cover the header too: the framer counts every byte it
    // has not yet turned into an event.
    let limits = Limits {
        max_stanza_bytes: header.len() + xml.len() + 1,
        ..Limits::default()
    };
    let mut framer = Framer::new(limits, content_ns);
    framer.feed(header.as_bytes());
    framer.feed(xml.as_bytes());
    match framer.next_event()? {
        Some(StreamEvent::Open(_)) => {}
        _ => return Err(StreamError::new(StreamCondition::BadFormat)),
    }
    match framer.next_event()? {
        Some(StreamEvent::Stanza(el)) => Ok(el),
        _ => Err(StreamError::new(StreamCondition::BadFormat)),
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn stored_stanza_round_trips() {
        let el = Element::new("message", crate::ns::CLIENT)
            .with_attr("to", "a@b")
            .with_child(Element::new("body", crate::ns::CLIENT).with_text("x < y & z"))
            .with_child(
                Element::new("delay", crate::ns::DELAY).with_attr("stamp", "2026-01-01T00:00:00Z"),
            );
        let parsed = parse_stanza(&el.to_xml(), crate::ns::CLIENT).unwrap();
        assert_eq!(parsed, el);
    }
}
