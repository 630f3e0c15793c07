//! What travels between nodes on their Redis streams, and the receiving
//! side's de-duplication.
//!
//! A stream entry is one [`Envelope`]: the sending node, its incarnation (a
//! random id per process start, so a restarted node's sequence starting
//! again at 1 is not mistaken for a replay), a sequence number that grows
//! by one per envelope the incarnation sends (to any node), and the body.
//! One task per node writes envelopes, one at a time and in order, retrying
//! a failed `XADD` with the same sequence number; so an envelope may be in
//! a stream twice (the first `XADD` succeeded but its answer was lost) and
//! never out of order. The receiver keeps the highest sequence number seen
//! per incarnation and drops anything not above it: exactly once, in order.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// One message from a node to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending node's name.
    pub node: String,
    /// The sending process's incarnation id.
    pub inc: String,
    pub seq: u64,
    pub body: Body,
}

/// What the receiving node is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Body {
    /// Put these stanzas (serialized, `jabber:client`) on the queue of the
    /// local session `to`, in order, as one burst when there are several.
    /// The sender has run the `Inbound` hooks already (archived the message,
    /// checked blocking …): the receiver only delivers.
    Deliver {
        to: String,
        /// The session's id on the receiving node: a newer session of the
        /// same full JID did not get what was meant for the old one.
        sid: u64,
        stanzas: Vec<String>,
    },
    /// End the local session `to` (id `sid`) with this stream error
    /// (`conflict` when the same full JID was bound on another node,
    /// `not-authorized` when the account was removed …).
    Close {
        to: String,
        sid: u64,
        condition: String,
        text: Option<String>,
    },
    /// Route these stanzas here: the sender found that this node owns
    /// what they are for (a room, a pubsub node, an s2s route; see
    /// `cluster::ownership`). The receiver decides again, in case
    /// ownership moved; `hops` counts the forwards so far.
    Route {
        stanzas: Vec<String>,
        /// They go out together (a group chat join to a remote occupant).
        #[serde(default)]
        burst: bool,
        hops: u8,
    },
    /// XEP-0198 resumption on another node: the sending node has a client
    /// resuming stream-management id `id` as `user`; if a session of that
    /// account with that id is here, hand it over (see `cluster::handoff`).
    HandoffAsk(Box<super::handoff::Ask>),
    /// The answer to a [`Body::HandoffAsk`]: the session's state, or
    /// `None` when it is not here (any more) or cannot move.
    HandoffGive(super::handoff::Give),
}

impl Envelope {
    /// The stream entry's one field value.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("an envelope serializes")
    }

    pub fn decode(s: &[u8]) -> Option<Envelope> {
        serde_json::from_slice(s).ok()
    }
}

/// Sender incarnations remembered at most; the oldest is forgotten first.
/// Each is one node's one process start, so this is far more than a
/// cluster ever has alive.
const MAX_SENDERS: usize = 4096;

/// The receiving node's memory of what it has already taken.
#[derive(Debug, Default)]
pub struct Dedup {
    last: HashMap<String, (u64, u64)>,
    /// Increases with every accepted envelope; orders `last` by recency.
    tick: u64,
}

impl Dedup {
    /// Whether `env` is new (and then remembers it). An envelope whose
    /// sequence number is not above the last one taken from its
    /// incarnation is a repeat.
    pub fn accept(&mut self, env: &Envelope) -> bool {
        self.tick += 1;
        let tick = self.tick;
        if let Some((last, used)) = self.last.get_mut(&env.inc) {
            if env.seq <= *last {
                return false;
            }
            *last = env.seq;
            *used = tick;
            return true;
        }
        if self.last.len() >= MAX_SENDERS
            && let Some(oldest) = self
                .last
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            self.last.remove(&oldest);
        }
        self.last.insert(env.inc.clone(), (env.seq, tick));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(inc: &str, seq: u64) -> Envelope {
        Envelope {
            node: "a".into(),
            inc: inc.into(),
            seq,
            body: Body::Deliver {
                to: "u@h/r".into(),
                sid: 7,
                stanzas: vec![format!("<message id='{seq}'/>")],
            },
        }
    }

    #[test]
    fn envelopes_round_trip() {
        let e = env("i1", 3);
        assert_eq!(Envelope::decode(e.encode().as_bytes()), Some(e));
        let c = Envelope {
            body: Body::Close {
                to: "u@h/r".into(),
                sid: 1,
                condition: "conflict".into(),
                text: None,
            },
            ..env("i1", 4)
        };
        assert_eq!(Envelope::decode(c.encode().as_bytes()), Some(c));
        assert_eq!(Envelope::decode(b"{\"node\":1}"), None);
    }

    #[test]
    fn a_repeated_envelope_is_taken_once() {
        let mut d = Dedup::default();
        assert!(d.accept(&env("i1", 1)));
        assert!(!d.accept(&env("i1", 1)), "the same envelope again");
        assert!(d.accept(&env("i1", 2)));
        assert!(!d.accept(&env("i1", 1)), "an older one, replayed");
    }

    #[test]
    fn gaps_are_fine_and_senders_are_independent() {
        // A sender's numbers are shared by all its destinations: a receiver
        // sees gaps, never a decrease.
        let mut d = Dedup::default();
        assert!(d.accept(&env("i1", 5)));
        assert!(d.accept(&env("i2", 1)));
        assert!(d.accept(&env("i1", 9)));
        assert!(!d.accept(&env("i1", 6)));
        assert!(d.accept(&env("i2", 2)));
    }

    #[test]
    fn a_restarted_sender_starts_again_at_one() {
        let mut d = Dedup::default();
        assert!(d.accept(&env("before", 1000)));
        assert!(d.accept(&env("after", 1)), "new incarnation, new numbers");
    }

    #[test]
    fn replaying_a_stream_delivers_each_envelope_once_in_order() {
        // The transport's worst case: entries repeated (a retried XADD) and
        // the whole stream read again (a consumer restarting from an older
        // cursor). What comes out is each sequence once, ascending.
        let sent: Vec<Envelope> = (1..=50).map(|s| env("i1", s)).collect();
        let mut stream = Vec::new();
        for e in &sent {
            stream.push(e.clone());
            if e.seq % 7 == 0 {
                stream.push(e.clone());
            }
        }
        let replay = stream.clone();
        stream.extend(replay);
        let mut d = Dedup::default();
        let taken: Vec<u64> = stream
            .iter()
            .filter(|e| d.accept(e))
            .map(|e| e.seq)
            .collect();
        assert_eq!(taken, (1..=50).collect::<Vec<_>>());
    }

    #[test]
    fn memory_is_bounded() {
        let mut d = Dedup::default();
        for i in 0..(MAX_SENDERS + 10) {
            assert!(d.accept(&env(&format!("i{i}"), 1)));
        }
        assert_eq!(d.last.len(), MAX_SENDERS);
        // The most recent ones are remembered.
        assert!(!d.accept(&env(&format!("i{}", MAX_SENDERS + 9), 1)));
    }
}
