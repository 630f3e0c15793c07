//! Discussion history (XEP-0045 §7.2.13–7.2.15): a bounded ring of the
//! room's last messages, and the `<history/>` limits a joining client asks for.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use waxwing_proto::datetime;
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

/// One remembered message, as the room reflected it: from the sender's
/// room JID, without `to` and without `<delay/>`. The delay is added
/// when the message is replayed ([`Entry::replay`]), from `at`: a room
/// remembers every message, and replays few.
#[derive(Debug, Clone)]
pub struct Entry {
    pub stanza: Element,
    /// When the room received it: the delay's stamp.
    pub at: SystemTime,
    /// Serialized length as replayed (delay included, `to` not), for
    /// `maxchars`.
    pub chars: usize,
}

impl Entry {
    /// The message for a joining occupant: addressed to `to`, with
    /// `<delay xmlns='urn:xmpp:delay' from='{room}' stamp='{at}'/>`
    /// (XEP-0045 §7.2.15, XEP-0203).
    pub fn replay(&self, room: &str, to: String) -> Element {
        let mut m = self.stanza.clone();
        m.set_attr("to", to);
        m.push_child(delay(room, self.at));
        m
    }
}

/// The `<delay/>` of a message the room received at `at`.
fn delay(room: &str, at: SystemTime) -> Element {
    Element::new("delay", ns::DELAY)
        .with_attr("from", room)
        .with_attr("stamp", datetime::format(at))
}

/// `<delay xmlns='urn:xmpp:delay' from='' stamp=''/>` without the values.
const DELAY_FRAME: usize = 48;
/// A stamp's length: `YYYY-MM-DDThh:mm:ss.mmmZ` (a four-digit year).
const STAMP: usize = 24;

/// The serialized length of the `<delay/>` that [`Entry::replay`] adds
/// for `room`, known without making it: a room JID holds no character
/// an attribute escapes (see `shared_stanza`), and every stamp of a year
/// in 0–9999 has the same length.
pub fn delay_len(room: &str) -> usize {
    DELAY_FRAME + room.len() + STAMP
}

#[derive(Debug, Clone, Default)]
pub struct History {
    entries: VecDeque<Entry>,
    /// Sum of the entries' `chars`.
    bytes: usize,
}

impl History {
    /// Appends, dropping the oldest beyond `cap` messages or `max_bytes`
    /// serialized bytes (`[muc] max_history_bytes`). A message larger than
    /// `max_bytes` by itself is not kept, and the history stays as it was.
    /// `chars` is its serialized length as replayed (see [`Entry::chars`]),
    /// which the caller knows without serializing it again.
    pub fn push(
        &mut self,
        stanza: Element,
        chars: usize,
        at: SystemTime,
        cap: usize,
        max_bytes: usize,
    ) {
        if cap == 0 {
            self.entries.clear();
            self.bytes = 0;
            return;
        }
        if chars > max_bytes {
            return;
        }
        self.bytes += chars;
        self.entries.push_back(Entry { stanza, at, chars });
        while self.entries.len() > cap || self.bytes > max_bytes {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.chars;
        }
    }

    /// Shrinks to `cap` (a lowered `muc#maxhistoryfetch`).
    pub fn truncate(&mut self, cap: usize) {
        while self.entries.len() > cap {
            self.pop_oldest();
        }
    }

    /// Serialized bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Removes the message the room stamped with stanza-id `id` (a
    /// moderated message, XEP-0425: never distributed again) and returns it.
    pub fn remove_by_stanza_id(&mut self, room: &str, id: &str) -> Option<Element> {
        let at = self.entries.iter().position(|e| {
            e.stanza.children().any(|c| {
                c.name == "stanza-id" && c.attr("by") == Some(room) && c.attr("id") == Some(id)
            })
        })?;
        let e = self.entries.remove(at)?;
        self.bytes -= e.chars;
        Some(e.stanza)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries a joining client gets, oldest first: the newest ones
    /// that satisfy every limit at once (§7.2.15: limits combine).
    pub fn select(&self, req: &HistoryRequest, now: SystemTime) -> Vec<&Entry> {
        let mut out = Vec::new();
        let mut chars = 0usize;
        for e in self.entries.iter().rev() {
            if req.maxstanzas.is_some_and(|n| out.len() >= n) {
                break;
            }
            if let Some(s) = req.seconds
                && now.duration_since(e.at).unwrap_or_default() > Duration::from_secs(s)
            {
                break;
            }
            if req.since.is_some_and(|t| e.at <= t) {
                break;
            }
            if let Some(max) = req.maxchars {
                if chars + e.chars > max {
                    break;
                }
                chars += e.chars;
            }
            out.push(e);
        }
        out.reverse();
        out
    }
}

/// `<history maxchars maxstanzas seconds since/>`; absent attributes are no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRequest {
    pub maxchars: Option<usize>,
    pub maxstanzas: Option<usize>,
    pub seconds: Option<u64>,
    pub since: Option<SystemTime>,
}

impl HistoryRequest {
    /// Unparseable values are ignored, as if absent (a lenient reading of §7.2.15).
    pub fn parse(history: Option<&Element>) -> Self {
        let Some(h) = history else {
            return HistoryRequest::default();
        };
        HistoryRequest {
            maxchars: h.attr("maxchars").and_then(|v| v.parse().ok()),
            maxstanzas: h.attr("maxstanzas").and_then(|v| v.parse().ok()),
            seconds: h.attr("seconds").and_then(|v| v.parse().ok()),
            since: h.attr("since").and_then(|s| datetime::parse(s.trim())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn msg(i: usize) -> Element {
        Element::new("message", waxwing_proto::ns::CLIENT).with_attr("id", i.to_string())
    }

    /// Pushes `m` with its own serialized length.
    fn push(h: &mut History, m: Element, at: SystemTime, cap: usize, max_bytes: usize) {
        let chars = m.to_xml().len();
        h.push(m, chars, at, cap, max_bytes);
    }

    fn ids(v: &[&Entry]) -> Vec<String> {
        v.iter()
            .map(|e| e.stanza.attr("id").unwrap().to_string())
            .collect()
    }

    #[test]
    fn ring_keeps_the_newest() {
        let mut h = History::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1000);
        for i in 0..10 {
            push(
                &mut h,
                msg(i),
                t0 + Duration::from_secs(i as u64),
                4,
                usize::MAX,
            );
        }
        assert_eq!(h.len(), 4);
        let all = h.select(&HistoryRequest::default(), t0 + Duration::from_secs(20));
        assert_eq!(ids(&all), ["6", "7", "8", "9"]);
        h.truncate(2);
        assert_eq!(h.len(), 2);
        push(&mut h, msg(99), t0, 0, usize::MAX);
        assert_eq!(h.len(), 0, "a zero cap keeps nothing");
    }

    #[test]
    fn bytes_are_bounded_too() {
        // [muc] max_history_bytes: fifty 100 KiB messages would otherwise
        // stay in memory per room.
        let mut h = History::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1000);
        let one = msg(1).to_xml().len();
        for i in 0..10 {
            push(&mut h, msg(i), t0, 50, 3 * one);
        }
        assert_eq!(h.len(), 3);
        assert_eq!(h.bytes(), 3 * one);
        let all = h.select(&HistoryRequest::default(), t0);
        assert_eq!(ids(&all), ["7", "8", "9"]);
        // One message over the whole budget is not kept, and evicts nothing.
        let mut big = msg(42);
        big.push_child(Element::new("x", "urn:example").with_text("a".repeat(4 * one)));
        push(&mut h, big, t0, 50, 3 * one);
        assert_eq!(
            ids(&h.select(&HistoryRequest::default(), t0)),
            ["7", "8", "9"]
        );
        h.truncate(1);
        assert_eq!(h.bytes(), one);
    }

    #[test]
    fn limits_combine() {
        let mut h = History::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1000);
        for i in 0..10 {
            push(
                &mut h,
                msg(i),
                t0 + Duration::from_secs(i as u64 * 10),
                50,
                usize::MAX,
            );
        }
        let now = t0 + Duration::from_secs(100);
        let r = |maxstanzas, seconds, since, maxchars| HistoryRequest {
            maxstanzas,
            seconds,
            since,
            maxchars,
        };
        assert_eq!(
            ids(&h.select(&r(Some(3), None, None, None), now)),
            ["7", "8", "9"]
        );
        assert_eq!(ids(&h.select(&r(Some(0), None, None, None), now)).len(), 0);
        // Within the last 25 s: sent at 80 and 90 (100 - 25 = 75).
        assert_eq!(
            ids(&h.select(&r(None, Some(25), None, None), now)),
            ["8", "9"]
        );
        let since = Some(t0 + Duration::from_secs(60));
        assert_eq!(
            ids(&h.select(&r(None, None, since, None), now)),
            ["7", "8", "9"]
        );
        let one = msg(9).to_xml().len();
        assert_eq!(ids(&h.select(&r(None, None, None, Some(one)), now)), ["9"]);
        assert_eq!(
            ids(&h.select(&r(Some(1), Some(1000), since, None), now)),
            ["9"]
        );
    }

    #[test]
    fn parses_request_attributes() {
        let el = Element::new("history", "http://jabber.org/protocol/muc")
            .with_attr("maxstanzas", "20")
            .with_attr("maxchars", "x")
            .with_attr("since", "1970-01-01T00:01:40Z");
        let r = HistoryRequest::parse(Some(&el));
        assert_eq!(r.maxstanzas, Some(20));
        assert_eq!(r.maxchars, None);
        assert_eq!(r.since, Some(UNIX_EPOCH + Duration::from_secs(100)));
    }

    /// Issue 14: an extreme year in `since` overflowed the date arithmetic
    /// (a panic in the join handler); it is now an unparseable value, ignored.
    #[test]
    fn extreme_since_is_ignored() {
        for year in [
            "9223372036854775807",
            "-9223372036854775808",
            "106751991167301",
        ] {
            let el = Element::new("history", "http://jabber.org/protocol/muc")
                .with_attr("since", format!("{year}-01-01T00:00:00Z"));
            assert_eq!(HistoryRequest::parse(Some(&el)).since, None, "{year}");
        }
    }

    #[test]
    fn replay_adds_the_delay_of_when_it_was_received() {
        let room = "coven@chat.example";
        let at = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let e = Entry {
            stanza: msg(7).with_attr("from", "coven@chat.example/crone"),
            at,
            chars: 0,
        };
        let m = e.replay(room, "hag@example/b".into());
        assert_eq!(
            m.to_xml_in(ns::CLIENT),
            "<message id='7' from='coven@chat.example/crone' to='hag@example/b'>\
             <delay xmlns='urn:xmpp:delay' from='coven@chat.example' \
             stamp='2026-11-18T11:06:40.123Z'/></message>"
        );
        assert!(e.stanza.child("delay", ns::DELAY).is_none(), "kept without");
    }

    #[test]
    fn delay_len_is_the_serialized_length() {
        for room in ["coven@chat.example", "r@conference.bench.localhost"] {
            for secs in [0, 1_795_000_000, 253_402_300_799] {
                let at = UNIX_EPOCH + Duration::from_secs(secs);
                assert_eq!(
                    delay(room, at).to_xml().len(),
                    delay_len(room),
                    "{room} {secs}"
                );
            }
        }
    }
}
