//! XEP-0352 client state indication: while a client says it is inactive,
//! hold back what can wait and send it when it becomes active again.

use waxwing_proto::ns;
use waxwing_proto::xml::Element;

/// `urn:xmpp:csi:0`
pub const NS: &str = "urn:xmpp:csi:0";

/// Held stanzas beyond this are flushed: holding is an optimisation, never a buffer without bound.
const MAX_HELD: usize = 256;

/// Whether a stanza must reach an inactive client now. Messages with a body
/// (or encrypted payload), anything that is not presence or a bodiless
/// message (IQs expect answers), and subscription requests are urgent.
pub fn is_urgent(el: &Element) -> bool {
    match el.name.as_str() {
        "presence" => matches!(
            el.attr("type"),
            Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed" | "error")
        ),
        "message" => {
            el.has_child("body", ns::CLIENT)
                || el.child_names().any(|(n, _)| n == "encrypted")
                || el.attr("type") == Some("error")
        }
        _ => true,
    }
}

/// Stanzas held back while inactive. Presence from the same sender
/// replaces the older one: only the latest state matters.
#[derive(Default, Debug)]
pub struct Held {
    stanzas: Vec<Element>,
}

impl Held {
    /// Holds `el`; returns what must be written now (nothing, or everything
    /// when the hold is full).
    pub fn hold(&mut self, el: Element) -> Vec<Element> {
        if el.name == "presence" && el.attr("type").is_none_or(|t| t == "unavailable") {
            let from = el.attr("from").map(str::to_string);
            self.stanzas
                .retain(|h| !(h.name == "presence" && h.attr("from").map(str::to_string) == from));
        }
        self.stanzas.push(el);
        if self.stanzas.len() >= MAX_HELD {
            self.take()
        } else {
            Vec::new()
        }
    }

    pub fn take(&mut self) -> Vec<Element> {
        std::mem::take(&mut self.stanzas)
    }

    pub fn is_empty(&self) -> bool {
        self.stanzas.is_empty()
    }

    /// What is held, oldest first.
    pub fn stanzas(&self) -> &[Element] {
        &self.stanzas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(from: &str, show: &str) -> Element {
        Element::new("presence", ns::CLIENT)
            .with_attr("from", from)
            .with_child(Element::new("show", ns::CLIENT).with_text(show))
    }

    #[test]
    fn urgency() {
        let body = Element::new("message", ns::CLIENT)
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"));
        assert!(is_urgent(&body));
        let state = Element::new("message", ns::CLIENT).with_child(Element::new(
            "composing",
            "http://jabber.org/protocol/chatstates",
        ));
        assert!(!is_urgent(&state));
        assert!(!is_urgent(&presence("a@b/c", "away")));
        assert!(is_urgent(
            &Element::new("presence", ns::CLIENT).with_attr("type", "subscribe")
        ));
        assert!(is_urgent(&Element::new("iq", ns::CLIENT)));
    }

    #[test]
    fn presence_is_coalesced_per_sender() {
        let mut h = Held::default();
        assert!(h.hold(presence("a@b/c", "away")).is_empty());
        assert!(h.hold(presence("d@b/c", "dnd")).is_empty());
        assert!(h.hold(presence("a@b/c", "xa")).is_empty());
        let out = h.take();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].child("show", ns::CLIENT).unwrap().text(), "xa");
    }
}
