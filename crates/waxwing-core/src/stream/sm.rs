//! XEP-0198 stream management: ack counters and the unacknowledged queue.
//! Pure state; the c2s task does the I/O.

use std::collections::VecDeque;

use waxwing_proto::stanza::{StreamCondition, StreamError};
use waxwing_proto::xml::Element;

/// `urn:xmpp:sm:3`
pub const NS: &str = "urn:xmpp:sm:3";

/// Ask the client for an ack after this many unacknowledged stanzas.
const REQUEST_EVERY: u32 = 5;

/// Counters of one stream-managed session. Counters wrap at 2^32 (XEP-0198 §4).
#[derive(Debug)]
pub struct SmState {
    pub id: String,
    pub resumable: bool,
    /// Stanzas received from the client and handled.
    pub handled_in: u32,
    /// Stanzas sent to the client.
    pub sent_out: u32,
    /// Sent but not yet acknowledged, oldest first.
    pub unacked: VecDeque<Element>,
    since_request: u32,
}

impl SmState {
    pub fn new(id: String, resumable: bool) -> Self {
        SmState {
            id,
            resumable,
            handled_in: 0,
            sent_out: 0,
            unacked: VecDeque::new(),
            since_request: 0,
        }
    }

    /// Records a stanza written to the client; true when it is time for `<r/>`.
    pub fn on_sent(&mut self, el: Element) -> bool {
        self.sent_out = self.sent_out.wrapping_add(1);
        self.unacked.push_back(el);
        self.since_request += 1;
        if self.since_request >= REQUEST_EVERY {
            self.since_request = 0;
            return true;
        }
        false
    }

    /// Applies the client's `h`: everything up to it is acknowledged.
    pub fn on_ack(&mut self, h: u32) -> Result<(), StreamError> {
        let pending = self.unacked.len() as u32;
        let acked_before = self.sent_out.wrapping_sub(pending);
        let newly = h.wrapping_sub(acked_before);
        if newly > pending {
            // XEP-0198 §4: an h beyond what was sent is a protocol violation.
            return Err(StreamError::new(StreamCondition::UndefinedCondition)
                .with_text("acknowledged more stanzas than were sent (handled-count-too-high)"));
        }
        self.unacked.drain(..newly as usize);
        Ok(())
    }

    pub fn on_handled(&mut self) {
        self.handled_in = self.handled_in.wrapping_add(1);
    }
}

pub fn ack(h: u32) -> Element {
    Element::new("a", NS).with_attr("h", h.to_string())
}

pub fn request() -> Element {
    Element::new("r", NS)
}

pub fn failed(condition: &str) -> Element {
    Element::new("failed", NS).with_child(Element::new(condition, waxwing_proto::ns::STANZAS))
}

pub fn parse_h(el: &Element) -> Option<u32> {
    el.attr("h")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u32) -> Element {
        Element::new("message", "jabber:client").with_attr("id", n.to_string())
    }

    #[test]
    fn acks_drop_acknowledged_stanzas() {
        let mut sm = SmState::new("x".into(), true);
        for i in 0..3 {
            sm.on_sent(msg(i));
        }
        sm.on_ack(2).unwrap();
        assert_eq!(sm.unacked.len(), 1);
        assert_eq!(sm.unacked[0].attr("id"), Some("2"));
        sm.on_ack(2).unwrap(); // repeated ack is harmless
        assert_eq!(sm.unacked.len(), 1);
        assert!(sm.on_ack(5).is_err());
    }

    #[test]
    fn counters_wrap_at_two_to_the_32() {
        let mut sm = SmState::new("x".into(), true);
        sm.sent_out = u32::MAX - 1;
        sm.on_sent(msg(1));
        sm.on_sent(msg(2));
        sm.on_sent(msg(3));
        assert_eq!(sm.sent_out, 1);
        sm.on_ack(0).unwrap(); // acks msg 1 and 2 (u32::MAX, then 0)
        assert_eq!(sm.unacked.len(), 1);
        assert_eq!(sm.unacked[0].attr("id"), Some("3"));
    }

    #[test]
    fn requests_every_few_stanzas() {
        let mut sm = SmState::new("x".into(), false);
        let asked: Vec<bool> = (0..10).map(|i| sm.on_sent(msg(i))).collect();
        assert_eq!(asked.iter().filter(|a| **a).count(), 2);
    }
}
