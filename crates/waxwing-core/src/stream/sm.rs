//! XEP-0198 stream management: ack counters and the unacknowledged queue.
//! Pure state; the c2s task does the I/O.

use std::collections::VecDeque;

use waxwing_proto::stanza::{StreamCondition, StreamError};
use waxwing_proto::xml::Element;

use crate::queue::Receipt;

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
    /// Tracked stanzas among the unacknowledged (offline messages), oldest
    /// first: their receipts resolve when the client acknowledges them.
    tracked: VecDeque<Tracked>,
}

/// Stanzas `first..=last` (by `sent_out` count) of one tracked entry.
#[derive(Debug)]
struct Tracked {
    first: u32,
    last: u32,
    receipt: Receipt,
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
            tracked: VecDeque::new(),
        }
    }

    /// A session's counters and unacknowledged stanzas as another node
    /// had them (a resumption there, `cluster::handoff`).
    pub fn resumed(id: String, handled_in: u32, sent_out: u32, unacked: VecDeque<Element>) -> Self {
        SmState {
            handled_in,
            sent_out,
            unacked,
            ..SmState::new(id, true)
        }
    }

    /// Stanzas `first..=last` (values of `sent_out` right after each was
    /// sent) were a tracked entry: `receipt` resolves once all are
    /// acknowledged, and they are left out of [`SmState::into_undelivered`].
    pub(crate) fn track(&mut self, first: u32, last: u32, receipt: Receipt) {
        self.tracked.push_back(Tracked {
            first,
            last,
            receipt,
        });
    }

    /// What the client never acknowledged, for offline storage: tracked
    /// stanzas are left out, since whoever tracks them still has them.
    /// Their receipts are dropped unresolved.
    pub fn into_undelivered(self) -> Vec<Element> {
        let first_seq = self
            .sent_out
            .wrapping_sub(self.unacked.len() as u32)
            .wrapping_add(1);
        let tracked = self.tracked;
        self.unacked
            .into_iter()
            .zip(0u32..)
            .filter(|(_, i)| {
                let seq = first_seq.wrapping_add(*i);
                !tracked
                    .iter()
                    .any(|t| seq.wrapping_sub(t.first) <= t.last.wrapping_sub(t.first))
            })
            .map(|(el, _)| el)
            .collect()
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
        // Sequence numbers wrap: `last` is acknowledged when it is at most
        // `h`, i.e. less than half the number space behind it.
        while self
            .tracked
            .front()
            .is_some_and(|t| h.wrapping_sub(t.last) < 1 << 31)
        {
            let t = self.tracked.pop_front().expect("front exists");
            let _ = t.receipt.send(());
        }
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
    fn tracked_stanzas_resolve_on_ack_and_are_not_undelivered() {
        let mut sm = SmState::new("x".into(), true);
        sm.sent_out = u32::MAX - 2; // the tracked range wraps
        sm.on_sent(msg(0));
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        sm.on_sent(msg(1));
        sm.on_sent(msg(2));
        sm.track(u32::MAX, 0, tx);
        sm.on_sent(msg(3));
        sm.on_ack(u32::MAX).unwrap(); // msg 0 and 1: the entry is half acked
        assert!(rx.try_recv().is_err());
        let (tx2, mut rx2) = tokio::sync::oneshot::channel();
        sm.on_sent(msg(4));
        sm.track(2, 2, tx2);
        let ids: Vec<_> = sm
            .into_undelivered()
            .iter()
            .map(|m| m.attr("id").unwrap().to_string())
            .collect();
        assert_eq!(ids, ["3"], "tracked msg 2 and 4 are not handed back");
        assert!(rx.try_recv().is_err() && rx2.try_recv().is_err());

        let mut sm = SmState::new("x".into(), true);
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        sm.on_sent(msg(0));
        sm.on_sent(msg(1));
        sm.track(1, 2, tx);
        sm.on_ack(1).unwrap();
        assert!(rx.try_recv().is_err());
        sm.on_ack(2).unwrap();
        assert_eq!(rx.try_recv(), Ok(()));
    }

    #[test]
    fn requests_every_few_stanzas() {
        let mut sm = SmState::new("x".into(), false);
        let asked: Vec<bool> = (0..10).map(|i| sm.on_sent(msg(i))).collect();
        assert_eq!(asked.iter().filter(|a| **a).count(), 2);
    }
}
