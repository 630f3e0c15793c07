//! Stanzas (RFC 6120 §8) and the errors they and streams can carry.
//!
//! Stanzas stay [`Element`]s here; these helpers cover what every layer
//! needs before any typed parsing: what kind of stanza it is, and how to
//! answer it.

mod error;

pub use error::{Condition, ErrorType, StanzaError, StreamCondition, StreamError, error_reply};

use crate::ns;
use crate::xml::Element;

/// The three stanza kinds of RFC 6120 §8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StanzaKind {
    Message,
    Presence,
    Iq,
}

impl StanzaKind {
    /// Every kind; `kind as usize` is its place here, so tables indexed by
    /// kind need no mapping of their own.
    pub const ALL: [StanzaKind; 3] = [StanzaKind::Message, StanzaKind::Presence, StanzaKind::Iq];

    /// The element name of a stanza of this kind.
    pub const fn name(self) -> &'static str {
        match self {
            StanzaKind::Message => "message",
            StanzaKind::Presence => "presence",
            StanzaKind::Iq => "iq",
        }
    }
}

/// The kind of `el`, if it is a stanza in a content namespace
/// (`jabber:client` or `jabber:server`); `None` for stream-level elements
/// such as `<stream:features/>` or SASL nonzas.
pub fn kind(el: &Element) -> Option<StanzaKind> {
    if el.ns != ns::CLIENT && el.ns != ns::SERVER {
        return None;
    }
    match el.name.as_str() {
        "message" => Some(StanzaKind::Message),
        "presence" => Some(StanzaKind::Presence),
        "iq" => Some(StanzaKind::Iq),
        _ => None,
    }
}

/// An empty `type='result'` answer to the IQ `req`: addresses swapped,
/// same `id`, same namespace as the request.
pub fn iq_result(req: &Element) -> Element {
    let mut iq = Element::new("iq", req.ns.clone()).with_attr("type", "result");
    if let Some(id) = req.attr("id") {
        iq.set_attr("id", id);
    }
    if let Some(from) = req.attr("from") {
        iq.set_attr("to", from);
    }
    if let Some(to) = req.attr("to") {
        iq.set_attr("from", to);
    }
    iq
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(
            kind(&Element::new("message", ns::CLIENT)),
            Some(StanzaKind::Message)
        );
        assert_eq!(
            kind(&Element::new("presence", ns::SERVER)),
            Some(StanzaKind::Presence)
        );
        assert_eq!(kind(&Element::new("iq", ns::CLIENT)), Some(StanzaKind::Iq));
        assert_eq!(kind(&Element::new("iq", "")), None);
        assert_eq!(kind(&Element::new("features", ns::STREAM)), None);
        assert_eq!(kind(&Element::new("auth", ns::CLIENT)), None);
        for (i, k) in StanzaKind::ALL.into_iter().enumerate() {
            assert_eq!(kind(&Element::new(k.name(), ns::CLIENT)), Some(k));
            assert_eq!(k as usize, i);
        }
    }

    #[test]
    fn iq_result_answers_request() {
        let req = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", "p1")
            .with_attr("from", "romeo@example.net/a")
            .with_attr("to", "example.net")
            .with_child(Element::new("ping", ns::PING));
        assert_eq!(
            iq_result(&req).to_xml_in(ns::CLIENT),
            "<iq type='result' id='p1' to='romeo@example.net/a' from='example.net'/>"
        );
        let own = Element::new("iq", ns::CLIENT).with_attr("id", "x");
        assert_eq!(
            iq_result(&own).to_xml_in(ns::CLIENT),
            "<iq type='result' id='x'/>"
        );
    }
}
