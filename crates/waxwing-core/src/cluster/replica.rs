//! This node's in-memory copy of the other nodes' sessions.
//!
//! Each node publishes its sessions' routing state ([`Record`]: full JID,
//! priority, last available presence, flags) in its Redis hash
//! `wx:reg:<node>` and announces every change on the `wx:reg` channel
//! ([`Event`]). Every node keeps all the others' records here, so routing
//! a stanza (`SessionRegistry::resources`/`get`) never waits for Redis:
//! the cost is memory (one record per session in the cluster) and a
//! pub/sub message per presence change.
//!
//! The copy is rebuilt from the hashes whenever the subscription starts
//! (first start, reconnection after Redis was unreachable or restarted);
//! events received meanwhile are applied after the snapshot. Records carry
//! their owner's version number, so an event older than the snapshot
//! changes nothing. A session is identified by (node, incarnation, id): a
//! full JID may briefly exist twice (bound on a second node before the
//! first was told of the conflict), and the end of the old one never
//! removes the new one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use waxwing_proto::jid::{BareJid, FullJid};

use super::Link;
use crate::session::{PresenceState, RemoteSession, SessionHandle};

/// One session's routing state, as its node publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub jid: String,
    pub node: String,
    pub inc: String,
    /// The session's id on its node.
    pub sid: u64,
    /// Increases with every record the incarnation publishes.
    pub ver: u64,
    pub priority: i8,
    /// The last available presence (`jabber:client` XML); `None` before
    /// initial presence and after unavailable.
    pub last: Option<String>,
    /// `SessionFlag` bits (carbons, inactive, detached).
    pub flags: u32,
    /// The client asked for its roster (gets roster pushes).
    pub interested: bool,
    /// Entities that got directed presence from the session (MUC rooms
    /// joined …): if its node dies, the survivor removing it sends them
    /// unavailable (RFC 6121 §4.6.3), so rooms served elsewhere drop the
    /// occupant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directed: Vec<String>,
}

/// A change announced on `wx:reg`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Event {
    /// A session was bound or its state changed.
    Up(Record),
    /// A session ended.
    Down {
        jid: String,
        node: String,
        inc: String,
        sid: u64,
    },
    /// Every session of `node` is gone, except those of incarnation `keep`
    /// (a node starting again drops its previous life's; a dead node's
    /// reaper drops them all).
    Dead { node: String, keep: Option<String> },
    /// `node` changed shared data that other nodes may cache (the
    /// modules' `Cx::announce_change`): `topic` names the cache (a
    /// module's name), `key` what in it (an account).
    Changed {
        node: String,
        topic: String,
        key: String,
    },
}

struct Entry {
    rec: Record,
    handle: Arc<SessionHandle>,
    /// Set when a snapshot did not list this session's node at all (Redis
    /// restarted empty and the node has not published again yet): kept for
    /// routing meanwhile, confirmed by the node's next record of it, or
    /// dropped by [`Replica::prune_unconfirmed`].
    unconfirmed_since: Option<Instant>,
}

/// The other nodes' sessions, by account.
pub struct Replica {
    me: String,
    link: Link,
    by_user: RwLock<HashMap<BareJid, Vec<Entry>>>,
}

impl Replica {
    pub(crate) fn new(me: &str, link: Link) -> Self {
        Replica {
            me: me.to_string(),
            link,
            by_user: RwLock::default(),
        }
    }

    fn handle(&self, rec: &Record, jid: FullJid) -> Arc<SessionHandle> {
        let last = rec
            .last
            .as_deref()
            .and_then(|x| waxwing_proto::xml::parse_stanza(x, waxwing_proto::ns::CLIENT).ok());
        let presence = PresenceState {
            last,
            priority: rec.priority,
            directed: rec
                .directed
                .iter()
                .filter_map(|j| waxwing_proto::jid::Jid::parse(j).ok())
                .collect(),
        };
        SessionHandle::remote(
            jid,
            presence,
            rec.flags,
            rec.interested,
            RemoteSession {
                node: rec.node.as_str().into(),
                sid: rec.sid,
                link: self.link.clone(),
            },
        )
    }

    /// Applies one announced change; our own node's are ignored (they are
    /// in the local registry).
    /// The queue to the other nodes' streams.
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    pub fn apply(&self, ev: Event) {
        match ev {
            Event::Up(rec) => self.upsert(rec),
            Event::Down {
                jid,
                node,
                inc,
                sid,
            } => {
                let Ok(jid) = FullJid::parse(&jid) else {
                    return;
                };
                let mut map = self.by_user.write().expect("replica lock");
                if let Some(list) = map.get_mut(jid.bare()) {
                    list.retain(|e| !(e.rec.node == node && e.rec.inc == inc && e.rec.sid == sid));
                    if list.is_empty() {
                        map.remove(jid.bare());
                    }
                }
            }
            Event::Dead { node, keep } => {
                self.remove_node(&node, keep.as_deref());
            }
            // Not about sessions: the modules' caches (membership::apply).
            Event::Changed { .. } => {}
        }
    }

    fn upsert(&self, rec: Record) {
        if rec.node == self.me {
            return;
        }
        let Ok(jid) = FullJid::parse(&rec.jid) else {
            return;
        };
        let mut map = self.by_user.write().expect("replica lock");
        let list = map.entry(jid.bare().clone()).or_default();
        if let Some(e) = list
            .iter_mut()
            .find(|e| e.rec.node == rec.node && e.rec.inc == rec.inc && e.rec.sid == rec.sid)
        {
            e.unconfirmed_since = None;
            if e.rec.ver < rec.ver {
                e.handle = self.handle(&rec, jid);
                e.rec = rec;
            }
            return;
        }
        let handle = self.handle(&rec, jid);
        list.push(Entry {
            rec,
            handle,
            unconfirmed_since: None,
        });
    }

    /// A session this node knows of before its node announces it (one of
    /// ours that moved there, `cluster::handoff`): routed to at once, and
    /// dropped like a snapshot's unconfirmed sessions if its node never
    /// publishes it.
    pub fn expect(&self, rec: Record) {
        let key = (rec.node.clone(), rec.inc.clone(), rec.sid);
        let Ok(jid) = FullJid::parse(&rec.jid) else {
            return;
        };
        self.upsert(rec);
        let mut map = self.by_user.write().expect("replica lock");
        if let Some(e) = map.get_mut(jid.bare()).and_then(|list| {
            list.iter_mut()
                .find(|e| (&e.rec.node, &e.rec.inc, e.rec.sid) == (&key.0, &key.1, key.2))
        }) && e.rec.ver == 0
        {
            e.unconfirmed_since.get_or_insert_with(Instant::now);
        }
    }

    /// Replaces the sessions of every node `records` (a snapshot of the
    /// hashes) lists with its records. The sessions of a node it does not
    /// list at all are kept, unconfirmed: after Redis restarts empty, the
    /// snapshot can come before a live node has published again, and
    /// forgetting its sessions meanwhile would send their messages to
    /// offline storage instead of to them.
    pub fn reset(&self, records: Vec<Record>) {
        let listed: HashSet<&str> = records.iter().map(|r| r.node.as_str()).collect();
        let now = Instant::now();
        {
            let mut map = self.by_user.write().expect("replica lock");
            map.retain(|_, list| {
                list.retain(|e| !listed.contains(e.rec.node.as_str()));
                for e in list.iter_mut() {
                    e.unconfirmed_since.get_or_insert(now);
                }
                !list.is_empty()
            });
        }
        for rec in records {
            self.upsert(rec);
        }
    }

    /// Drops the sessions that stayed unconfirmed for `max_age` (their node
    /// did not publish them again: they ended, or the node died while Redis
    /// was away) and returns their handles.
    pub fn prune_unconfirmed(&self, max_age: Duration) -> Vec<Arc<SessionHandle>> {
        self.remove_where(|e| e.unconfirmed_since.is_some_and(|t| t.elapsed() >= max_age))
    }

    /// Removes `node`'s sessions (but those of incarnation `keep`) and
    /// returns their handles.
    pub fn remove_node(&self, node: &str, keep: Option<&str>) -> Vec<Arc<SessionHandle>> {
        self.remove_where(|e| e.rec.node == node && keep != Some(e.rec.inc.as_str()))
    }

    /// Removes the sessions `gone` picks and returns their handles.
    fn remove_where(&self, mut gone: impl FnMut(&Entry) -> bool) -> Vec<Arc<SessionHandle>> {
        let mut removed = Vec::new();
        let mut map = self.by_user.write().expect("replica lock");
        map.retain(|_, list| {
            list.retain(|e| {
                let go = gone(e);
                if go {
                    removed.push(e.handle.clone());
                }
                !go
            });
            !list.is_empty()
        });
        removed
    }

    /// Appends the account's remote sessions to `out`.
    pub fn resources_into(&self, user: &BareJid, out: &mut Vec<Arc<SessionHandle>>) {
        if let Some(list) = self.by_user.read().expect("replica lock").get(user) {
            out.extend(list.iter().map(|e| e.handle.clone()));
        }
    }

    /// Remote sessions bound as `jid` (normally zero or one), oldest first.
    pub fn sessions_named(&self, jid: &FullJid) -> Vec<Arc<SessionHandle>> {
        self.by_user
            .read()
            .expect("replica lock")
            .get(jid.bare())
            .map(|list| {
                list.iter()
                    .filter(|e| e.handle.jid == *jid)
                    .map(|e| e.handle.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sessions per remote node.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for list in self.by_user.read().expect("replica lock").values() {
            for e in list {
                *out.entry(e.rec.node.clone()).or_default() += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(jid: &str, node: &str, sid: u64, ver: u64, priority: i8) -> Record {
        Record {
            jid: jid.into(),
            node: node.into(),
            inc: format!("{node}-1"),
            sid,
            ver,
            priority,
            last: Some("<presence/>".into()),
            directed: Vec::new(),
            flags: 0,
            interested: true,
        }
    }

    fn replica() -> Replica {
        Replica::new("me", Link::detached())
    }

    fn bare(s: &str) -> BareJid {
        BareJid::parse(s).unwrap()
    }

    fn down(r: &Record) -> Event {
        Event::Down {
            jid: r.jid.clone(),
            node: r.node.clone(),
            inc: r.inc.clone(),
            sid: r.sid,
        }
    }

    #[test]
    fn remote_sessions_appear_with_their_presence_and_leave() {
        let r = replica();
        let a = rec("u@h/a", "n2", 1, 1, 5);
        r.apply(Event::Up(a.clone()));
        r.apply(Event::Up(rec("u@h/b", "n3", 9, 1, -1)));
        let mut got = Vec::new();
        r.resources_into(&bare("u@h"), &mut got);
        assert_eq!(got.len(), 2);
        let s = got.iter().find(|s| s.jid.resource() == "a").unwrap();
        assert_eq!(s.remote_node(), Some("n2"));
        assert_eq!(s.priority(), 5);
        assert!(s.is_available());
        r.apply(down(&a));
        let mut got = Vec::new();
        r.resources_into(&bare("u@h"), &mut got);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].remote_node(), Some("n3"));
    }

    #[test]
    fn our_own_sessions_are_not_copied() {
        let r = replica();
        r.apply(Event::Up(rec("u@h/a", "me", 1, 1, 0)));
        assert!(r.counts().is_empty());
    }

    #[test]
    fn an_older_version_changes_nothing() {
        let r = replica();
        r.apply(Event::Up(rec("u@h/a", "n2", 1, 5, 5)));
        r.apply(Event::Up(rec("u@h/a", "n2", 1, 3, 1)));
        let s = r.sessions_named(&FullJid::parse("u@h/a").unwrap());
        assert_eq!(s[0].priority(), 5);
        r.apply(Event::Up(rec("u@h/a", "n2", 1, 6, 1)));
        let s = r.sessions_named(&FullJid::parse("u@h/a").unwrap());
        assert_eq!(s[0].priority(), 1);
    }

    #[test]
    fn the_end_of_a_replaced_session_does_not_remove_its_successor() {
        // u@h/a bound on n2, then again on n3 (conflict): n2's end arrives
        // after n3's start.
        let r = replica();
        let old = rec("u@h/a", "n2", 1, 1, 0);
        r.apply(Event::Up(old.clone()));
        r.apply(Event::Up(rec("u@h/a", "n3", 4, 1, 0)));
        r.apply(down(&old));
        let s = r.sessions_named(&FullJid::parse("u@h/a").unwrap());
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].remote_node(), Some("n3"));
    }

    #[test]
    fn a_dead_node_takes_its_sessions_along() {
        let r = replica();
        r.apply(Event::Up(rec("u@h/a", "n2", 1, 1, 0)));
        r.apply(Event::Up(rec("v@h/a", "n2", 2, 1, 0)));
        r.apply(Event::Up(rec("v@h/b", "n3", 1, 1, 0)));
        let mut restarted = rec("w@h/a", "n2", 1, 1, 0);
        restarted.inc = "n2-2".into();
        r.apply(Event::Up(restarted));
        // n2 started again: its previous life's sessions go.
        r.apply(Event::Dead {
            node: "n2".into(),
            keep: Some("n2-2".into()),
        });
        assert_eq!(r.counts().get("n2"), Some(&1));
        let gone = r.remove_node("n2", None);
        assert_eq!(gone.len(), 1);
        assert_eq!(r.counts().get("n3"), Some(&1));
        assert!(!r.counts().contains_key("n2"));
    }

    #[test]
    fn a_snapshot_replaces_the_sessions_of_the_nodes_it_lists() {
        let r = replica();
        r.apply(Event::Up(rec("u@h/a", "n2", 1, 1, 0)));
        r.apply(Event::Up(rec("w@h/a", "n3", 2, 1, 0)));
        r.reset(vec![rec("v@h/a", "n3", 1, 1, 0)]);
        let named = |j: &str| r.sessions_named(&FullJid::parse(j).unwrap()).len();
        assert_eq!(named("w@h/a"), 0, "n3 is listed: its old session goes");
        assert_eq!(named("v@h/a"), 1);
        assert_eq!(named("u@h/a"), 1, "n2 is not listed: kept, unconfirmed");
        assert!(r.prune_unconfirmed(Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn unconfirmed_sessions_are_pruned_unless_published_again() {
        let r = replica();
        r.apply(Event::Up(rec("u@h/a", "n2", 1, 1, 0)));
        r.apply(Event::Up(rec("u@h/b", "n2", 2, 1, 0)));
        r.reset(Vec::new());
        // n2 publishes one of them again (same version: a republication).
        r.apply(Event::Up(rec("u@h/a", "n2", 1, 1, 0)));
        let gone = r.prune_unconfirmed(Duration::ZERO);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].jid.to_string(), "u@h/b");
        assert_eq!(r.sessions_named(&FullJid::parse("u@h/a").unwrap()).len(), 1);
    }

    #[test]
    fn an_expected_session_is_routed_to_until_its_node_confirms_or_never_does() {
        let r = replica();
        // Handed over to n2 (version 0: not published by n2 yet).
        r.expect(rec("u@h/moved", "n2", 7, 0, 3));
        r.expect(rec("u@h/lost", "n2", 8, 0, 0));
        let moved = r.sessions_named(&FullJid::parse("u@h/moved").unwrap());
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].remote_node(), Some("n2"));
        assert_eq!(moved[0].priority(), 3);
        // n2 publishes the one it bound; the other never comes.
        r.apply(Event::Up(rec("u@h/moved", "n2", 7, 1, 4)));
        let gone = r.prune_unconfirmed(Duration::ZERO);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].jid.to_string(), "u@h/lost");
        let moved = r.sessions_named(&FullJid::parse("u@h/moved").unwrap());
        assert_eq!(moved[0].priority(), 4, "the published record replaced it");
        // Published before we expected it: the published record stays, confirmed.
        r.apply(Event::Up(rec("u@h/early", "n2", 9, 2, 5)));
        r.expect(rec("u@h/early", "n2", 9, 0, 0));
        assert!(r.prune_unconfirmed(Duration::ZERO).is_empty());
        let early = r.sessions_named(&FullJid::parse("u@h/early").unwrap());
        assert_eq!(early[0].priority(), 5);
    }
}
