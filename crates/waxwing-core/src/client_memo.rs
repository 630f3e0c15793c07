//! What a busy client connection remembers from one stanza to the next,
//! so that the next one, which is usually like it, costs less: its
//! session's `from` text, the latest `to` parsed, and the local session
//! that `to` named.
//!
//! A cache only: every answer is what the work it saves would give. It
//! lives in one box, made on the first stanza and dropped when the
//! connection goes idle (with the framer's buffers), so an idle session
//! carries a null pointer.

use std::sync::{Arc, Weak};

use waxwing_proto::jid::{Jid, JidError};
use waxwing_proto::xml::CompactString;

use crate::session::SessionHandle;

#[derive(Debug, Default)]
pub(crate) struct ClientMemo(Option<Box<Remembered>>);

#[derive(Debug, Default)]
struct Remembered {
    /// The stamped `from`: the bound session's full JID as text, and the
    /// id of that session (the text is only ever read for it).
    from: Option<(u64, CompactString)>,
    /// The latest `to`, parsed, and the text it was parsed from equals.
    to: Option<Jid>,
    /// The local session `to` named when it was last looked up.
    recipient: Weak<SessionHandle>,
}

impl ClientMemo {
    fn remembered(&mut self) -> &mut Remembered {
        self.0.get_or_insert_default()
    }

    /// `session`'s full JID as text, for the `from` stamped on each of its
    /// stanzas: written once, then cloned (one allocation for a long JID,
    /// none for a short one), not formatted again per stanza.
    pub(crate) fn stamped_from(&mut self, session: &SessionHandle) -> CompactString {
        let from = &mut self.remembered().from;
        match from {
            Some((id, text)) if *id == session.id => text.clone(),
            _ => {
                let text = CompactString::from(session.jid.to_text());
                *from = Some((session.id, text.clone()));
                text
            }
        }
    }

    /// [`Jid::parse`] of a stanza's `to`, through the last one parsed, and
    /// the local session it names if one was looked up for it and is
    /// still the one bound to that JID ([`ClientMemo::remember_recipient`]).
    pub(crate) fn parse_to(
        &mut self,
        s: &str,
    ) -> Result<(Jid, Option<Arc<SessionHandle>>), JidError> {
        let r = self.remembered();
        if let Some(last) = &r.to
            && last.is_written_as(s)
        {
            let recipient = r.recipient.upgrade().filter(|h| h.is_bound_here());
            return Ok((last.clone(), recipient));
        }
        let jid = Jid::parse(s)?;
        r.to = Some(jid.clone());
        r.recipient = Weak::new();
        Ok((jid, None))
    }

    /// Remembers `session`, just looked up, if it is the one the latest
    /// `to` names ([`ClientMemo::parse_to`]).
    pub(crate) fn remember_recipient(&mut self, session: &Arc<SessionHandle>) {
        if let Some(r) = self.0.as_deref_mut()
            && r.to.as_ref().and_then(Jid::as_full) == Some(&session.jid)
        {
            r.recipient = Arc::downgrade(session);
        }
    }

    /// Lets everything go (the connection went idle).
    pub(crate) fn forget(&mut self) {
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionRegistry;
    use waxwing_proto::jid::FullJid;

    fn session(jid: &str) -> Arc<SessionHandle> {
        SessionHandle::new(FullJid::parse(jid).unwrap(), 16, 100).0
    }

    #[test]
    fn the_stamped_from_is_the_sessions_jid() {
        let mut memo = ClientMemo::default();
        let a = session("juliet@example.com/balcony");
        let b = session("romeo@example.net/orchard");
        assert_eq!(memo.stamped_from(&a), "juliet@example.com/balcony");
        assert_eq!(memo.stamped_from(&a), "juliet@example.com/balcony");
        assert_eq!(memo.stamped_from(&b), "romeo@example.net/orchard");
        memo.forget();
        assert_eq!(memo.stamped_from(&a), "juliet@example.com/balcony");
    }

    /// Parsed through the memo or afresh, a `to` is the same address,
    /// whatever came before it (another spelling of the same address,
    /// another address, a malformed one).
    #[test]
    fn a_to_parses_as_jid_parse() {
        let mut memo = ClientMemo::default();
        for t in [
            "romeo@example.net/orchard",
            "romeo@example.net/orchard",
            "Romeo@example.net/orchard",
            "romeo@example.net/orchard",
            "romeo@example.net./orchard",
            "a@@b",
            "romeo@example.net/orchard",
            "romeo@example.net",
            "romeo@example.net/Orchard",
        ] {
            let parsed = memo.parse_to(t).map(|(jid, _)| jid);
            assert_eq!(parsed, Jid::parse(t), "{t}");
        }
    }

    /// The remembered recipient is given only while the registry would
    /// return it for the same `to`: never a session that was replaced or
    /// unbound, nor one for another address.
    #[test]
    fn a_recipient_is_given_only_while_it_is_bound_to_that_to() {
        let reg = SessionRegistry::default();
        let mut memo = ClientMemo::default();
        let r = session("romeo@example.net/orchard");
        reg.bind(r.clone());
        let to = "romeo@example.net/orchard";
        let (jid, known) = memo.parse_to(to).unwrap();
        assert!(known.is_none());
        let full = jid.as_full().unwrap().clone();
        memo.remember_recipient(&reg.get(&full).unwrap());
        let (_, known) = memo.parse_to(to).unwrap();
        assert!(known.is_some_and(|s| s.id == r.id));

        // Another `to` in between: looked up again.
        assert!(memo.parse_to("nurse@example.net/x").unwrap().1.is_none());
        assert!(memo.parse_to(to).unwrap().1.is_none());
        // A session for another address is not remembered.
        let other = session("romeo@example.net/balcony");
        reg.bind(other.clone());
        memo.remember_recipient(&other);
        assert!(memo.parse_to(to).unwrap().1.is_none());
        memo.remember_recipient(&r);
        assert!(memo.parse_to(to).unwrap().1.is_some());

        // Replaced by a new session with the same JID: not given.
        let r2 = session("romeo@example.net/orchard");
        reg.bind(r2.clone());
        assert!(memo.parse_to(to).unwrap().1.is_none());
        memo.remember_recipient(&r2);
        assert!(memo.parse_to(to).unwrap().1.is_some_and(|s| s.id == r2.id));

        // Unbound: not given.
        reg.unbind(&r2);
        assert!(memo.parse_to(to).unwrap().1.is_none());
    }
}
