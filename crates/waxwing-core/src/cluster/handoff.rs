//! XEP-0198 resumption on another node: a client whose stream-managed
//! session is detached (or still attached) on node A resumes it on node B.
//!
//! B does not know which node holds the session: the stream-management id
//! is a random token and stays one (nothing in it names a node). B asks
//! every node on which the authenticated account has a session, as its
//! [`super::Replica`] shows them (usually one), with a [`Body::HandoffAsk`]
//! on their streams. A node holding a resumable session with that id *of
//! that account* (the same check as a local resumption: a previd is
//! useless to anyone but its owner) hands it over: its session task
//! stops, captures the [`State`] (counters, unacknowledged and held
//! stanzas, presence, flags), answers with a [`Body::HandoffGive`], unbinds
//! the session without ending it (no unavailable presence, nothing stored
//! offline) and forwards what was still queued for it, then anything that
//! arrives for the old session id ([`Moved`]). A's stream to B is ordered,
//! so the forwarded stanzas come after the state. B binds a session with
//! the id it announced in its question (so the forwards find it), restores
//! the state and resumes the client exactly as a local resumption does.
//!
//! Bounded: the answer is waited for [`ASK_TIMEOUT`] (a live node answers
//! in milliseconds; a dead one never does, and the client then gets
//! `<failed/>` and binds anew), at most [`MAX_PENDING`] handoffs wait at
//! once on a node, a state larger than [`MAX_STATE_BYTES`] is not moved
//! (the session then ends on its node as if it had timed out: what the
//! client had not acknowledged goes to offline storage), and the
//! forwarding table holds [`MAX_MOVED`] entries for [`MOVED_KEEP`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::xml::Element;

use super::{Body, Outgoing};
use crate::Server;
use crate::queue::Outbox;
use crate::session::{SessionFlag, SessionHandle};

/// How long a resuming client waits for the node holding its session.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// Handoffs a node waits for at once; more resumptions get `<failed/>`.
pub const MAX_PENDING: usize = 256;
/// The largest state moved (serialized stanzas): a session with more
/// unacknowledged data ends on its node instead.
pub const MAX_STATE_BYTES: usize = 4 << 20;
/// Moved sessions whose stanzas the old node still forwards.
pub const MAX_MOVED: usize = 65_536;
/// How long the old node forwards stanzas that other nodes still address
/// to the old session (until the new one's record reached them).
pub const MOVED_KEEP: Duration = Duration::from_secs(60);

/// B to the nodes that may hold the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    /// B's number for this handoff.
    pub req: u64,
    /// B's node name (where the answer goes) and incarnation.
    pub from: String,
    pub inc: String,
    /// The stream-management id the client resumes.
    pub id: String,
    /// The account the resuming client authenticated as.
    pub user: String,
    /// The session id B binds the session under (forwards use it).
    pub sid: u64,
}

/// A node's answer to an [`Ask`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Give {
    pub req: u64,
    /// The [`Ask::sid`] it answers.
    pub sid: u64,
    /// The session, or `None`: not here, or it cannot move.
    pub state: Option<Box<State>>,
}

/// What a session is, apart from its connection: what the resuming node
/// needs to carry it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub jid: String,
    /// XEP-0198 stream-management id (unchanged by a resumption).
    pub id: String,
    /// Stanzas received from the client and handled (`<resumed h=…/>`).
    pub handled_in: u32,
    /// Stanzas sent to the client.
    pub sent_out: u32,
    /// Sent and not acknowledged, oldest first (`jabber:client` XML).
    pub unacked: Vec<String>,
    /// Held back under XEP-0352 CSI, or queued and not yet written.
    pub pending: Vec<String>,
    /// The last available presence, its priority, and who got directed
    /// presence (RFC 6121 §4.6.3).
    pub last: Option<String>,
    pub priority: i8,
    pub directed: Vec<String>,
    /// The client asked for its roster (gets roster pushes).
    pub interested: bool,
    /// `SessionFlag` bits: carbons, inactive.
    pub flags: u32,
}

impl State {
    /// The session's state; `unacked` and `pending` as they stand.
    pub(crate) fn capture<'a>(
        handle: &SessionHandle,
        id: &str,
        handled_in: u32,
        sent_out: u32,
        unacked: impl IntoIterator<Item = &'a Element>,
        pending: impl IntoIterator<Item = &'a Element>,
    ) -> State {
        let (last, priority, directed) = handle.with_presence_quiet(|p| {
            (
                p.last.as_ref().map(Element::to_xml),
                p.priority,
                p.directed.iter().map(Jid::to_string).collect(),
            )
        });
        let flags =
            handle.flag_bits() & (SessionFlag::Carbons as u32 | SessionFlag::Inactive as u32);
        State {
            jid: handle.jid.to_string(),
            id: id.to_string(),
            handled_in,
            sent_out,
            unacked: unacked.into_iter().map(Element::to_xml).collect(),
            pending: pending.into_iter().map(Element::to_xml).collect(),
            last,
            priority,
            directed,
            interested: handle.is_interested(),
            flags,
        }
    }

    /// The routing record of the session once `ask`'s node has it, before
    /// that node publishes it (see `Replica::expect`).
    pub(crate) fn record_at(&self, ask: &Ask) -> super::replica::Record {
        super::replica::Record {
            jid: self.jid.clone(),
            node: ask.from.clone(),
            inc: ask.inc.clone(),
            sid: ask.sid,
            ver: 0,
            priority: self.priority,
            last: self.last.clone(),
            flags: self.flags,
            interested: self.interested,
            directed: self.directed.clone(),
        }
    }

    /// Bytes of serialized stanzas it carries.
    pub fn size(&self) -> usize {
        let stanzas = self.unacked.iter().chain(&self.pending);
        stanzas.chain(&self.last).map(String::len).sum::<usize>()
            + self.directed.iter().map(String::len).sum::<usize>()
    }

    /// The stanzas, parsed back (a stanza that does not parse is dropped).
    pub(crate) fn unacked_elements(&self) -> VecDeque<Element> {
        parse_all(&self.unacked).collect()
    }

    pub(crate) fn pending_elements(&self) -> Vec<Element> {
        parse_all(&self.pending).collect()
    }

    /// Gives `handle` (not yet bound) the presence and flags of the session.
    fn restore_onto(&self, handle: &SessionHandle) {
        let last = self
            .last
            .as_deref()
            .and_then(|x| waxwing_proto::xml::parse_stanza(x, waxwing_proto::ns::CLIENT).ok());
        handle.with_presence(|p| {
            p.last = last;
            p.priority = self.priority;
            p.directed = self
                .directed
                .iter()
                .filter_map(|j| Jid::parse(j).ok())
                .collect();
        });
        if self.interested {
            handle.set_interested();
        }
        for f in [SessionFlag::Carbons, SessionFlag::Inactive] {
            if self.flags & f as u32 != 0 {
                handle.set_flag(f, true);
            }
        }
    }
}

fn parse_all(xml: &[String]) -> impl Iterator<Item = Element> + '_ {
    xml.iter()
        .filter_map(|x| waxwing_proto::xml::parse_stanza(x, waxwing_proto::ns::CLIENT).ok())
}

/// A session moved here, bound, for the resuming connection to carry on.
pub(crate) struct Arrived {
    pub(crate) handle: Arc<SessionHandle>,
    pub(crate) outbox: Outbox,
    pub(crate) state: Box<State>,
}

/// One handoff this node waits for.
struct Pending {
    user: BareJid,
    /// Nodes asked that have not answered yet.
    waiting: usize,
    tx: oneshot::Sender<Arrived>,
}

/// The handoffs of one node: those it waits for, and the sessions it gave
/// away whose stanzas it still forwards.
#[derive(Default)]
pub struct Handoffs {
    next_req: AtomicU64,
    pending: std::sync::Mutex<HashMap<u64, Pending>>,
    moved: std::sync::Mutex<Moved>,
}

/// Old session id → where the session went (node, new id), and when.
#[derive(Default)]
struct Moved {
    to: HashMap<u64, (Arc<str>, u64, Instant)>,
}

impl Moved {
    fn insert(&mut self, old: u64, node: Arc<str>, sid: u64, now: Instant) {
        if self.to.len() >= MAX_MOVED {
            self.to
                .retain(|_, (_, _, at)| now.duration_since(*at) < MOVED_KEEP);
        }
        if self.to.len() >= MAX_MOVED {
            // Still full of fresh entries: the oldest goes.
            if let Some(oldest) = self.to.iter().min_by_key(|(_, v)| v.2).map(|(k, _)| *k) {
                self.to.remove(&oldest);
            }
        }
        self.to.insert(old, (node, sid, now));
    }

    fn get(&self, old: u64, now: Instant) -> Option<(Arc<str>, u64)> {
        self.to
            .get(&old)
            .filter(|(_, _, at)| now.duration_since(*at) < MOVED_KEEP)
            .map(|(n, s, _)| (n.clone(), *s))
    }
}

impl Handoffs {
    /// Remembers that local session `old` now lives on `node` as `sid`.
    pub(crate) fn moved(&self, old: u64, node: Arc<str>, sid: u64) {
        self.moved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(old, node, sid, Instant::now());
    }

    /// Where local session `old` went, if it moved recently.
    pub(crate) fn moved_to(&self, old: u64) -> Option<(Arc<str>, u64)> {
        self.moved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(old, Instant::now())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// On the node a client resumes at: asks the nodes where `user` has
/// sessions for the one with stream-management id `id`; the session, bound
/// here, when one of them hands it over within [`ASK_TIMEOUT`].
pub(crate) async fn ask(server: &Arc<Server>, id: &str, user: &BareJid) -> Option<Arrived> {
    let c = server.cluster.as_ref()?;
    if c.draining().is_some() {
        // A node being drained takes no sessions in.
        return None;
    }
    let mut nodes: Vec<Arc<str>> = Vec::new();
    for s in server.sessions.resources(user) {
        if let Some(n) = s.remote_node()
            && !nodes.iter().any(|m| &**m == n)
        {
            nodes.push(n.into());
        }
    }
    if nodes.is_empty() {
        return None;
    }
    let req = c.handoffs.next_req.fetch_add(1, Ordering::Relaxed);
    let sid = SessionHandle::reserve_id();
    let (tx, rx) = oneshot::channel();
    {
        let mut pending = c.handoffs.pending();
        if pending.len() >= MAX_PENDING {
            tracing::warn!("cluster: too many session handoffs at once; resumption refused");
            server.metrics.cluster_handoff("in", false);
            return None;
        }
        pending.insert(
            req,
            Pending {
                user: user.clone(),
                waiting: nodes.len(),
                tx,
            },
        );
    }
    let link = c.replica.link();
    for node in nodes {
        let ask = Ask {
            req,
            from: c.node().to_string(),
            inc: c.incarnation.clone(),
            id: id.to_string(),
            user: user.to_string(),
            sid,
        };
        if link
            .send(Outgoing {
                node,
                body: Body::HandoffAsk(Box::new(ask)),
            })
            .is_err()
        {
            answered_none(server, req);
        }
    }
    let arrived = tokio::time::timeout(ASK_TIMEOUT, rx).await;
    // Answered or not, this handoff waits no more; an answer coming later
    // finds nobody waiting (see `on_give`).
    c.handoffs.pending().remove(&req);
    match arrived {
        Ok(Ok(a)) => {
            server.metrics.cluster_handoff("in", true);
            Some(a)
        }
        Ok(Err(_)) => {
            tracing::debug!(%user, "cluster: no node holds the session to resume");
            None
        }
        Err(_) => {
            tracing::info!(%user, "cluster: the node holding the session did not answer in time");
            server.metrics.cluster_handoff("in", false);
            None
        }
    }
}

/// One asked node does not have the session: when none is left to answer,
/// the waiting resumption fails at once instead of at the timeout.
fn answered_none(server: &Server, req: u64) {
    let Some(c) = &server.cluster else { return };
    let mut pending = c.handoffs.pending();
    if let Some(p) = pending.get_mut(&req) {
        p.waiting = p.waiting.saturating_sub(1);
        if p.waiting == 0 {
            pending.remove(&req);
        }
    }
}

/// On the resuming node: a node's answer. The session is bound here at
/// once, under the id announced in the question, before anything else
/// that node sent after the answer (forwarded stanzas) is read.
pub(crate) async fn on_give(server: &Arc<Server>, give: Give) {
    let Some(c) = &server.cluster else { return };
    let Some(state) = give.state else {
        answered_none(server, give.req);
        return;
    };
    let Ok(jid) = FullJid::parse(&state.jid) else {
        answered_none(server, give.req);
        return;
    };
    let waiting = c.handoffs.pending().remove(&give.req);
    let waiting = waiting.filter(|p| {
        // Never another account's session, whatever a node sends.
        p.user == *jid.bare()
    });
    let config = server.live();
    let (handle, outbox) =
        SessionHandle::new_with_id(give.sid, jid, config.outbound_queue, config.outbound_burst);
    state.restore_onto(&handle);
    if let Some(old) = server.sessions.bind(handle.clone()) {
        old.close(
            waxwing_proto::stanza::StreamError::new(
                waxwing_proto::stanza::StreamCondition::Conflict,
            )
            .with_text("replaced by a new connection"),
        );
    }
    let arrived = Arrived {
        handle,
        outbox,
        state,
    };
    let arrived = match waiting {
        Some(p) => match p.tx.send(arrived) {
            Ok(()) => return,
            Err(a) => a,
        },
        None => arrived,
    };
    // The client gave up waiting (timeout, disconnect): the session ends
    // here as a detached one does when nobody resumes it.
    tracing::info!(jid = %arrived.handle.jid, "cluster: a handed-over session found no client; ending it");
    server.metrics.cluster_handoff("in", false);
    end_orphan(server, arrived).await;
}

/// Ends a session that arrived with nobody to resume it: unbound, its
/// contacts told it left, what the client never acknowledged stored offline.
async fn end_orphan(server: &Arc<Server>, a: Arrived) {
    let Arrived {
        handle,
        mut outbox,
        state,
    } = a;
    server.sessions.unbind(&handle);
    outbox.close();
    let mut undelivered: Vec<Element> = state.unacked_elements().into();
    undelivered.extend(state.pending_elements());
    outbox.drain_untracked(&mut undelivered);
    server.clone().session_ended(&handle, undelivered).await;
}

/// Stanzas for local session `sid`, which is gone: when it moved to
/// another node recently, they follow it there. They come back otherwise.
pub(crate) fn follow(
    server: &Server,
    to: &FullJid,
    sid: u64,
    stanzas: Vec<Element>,
) -> Result<(), Vec<Element>> {
    let Some(c) = &server.cluster else {
        return Err(stanzas);
    };
    match c.handoffs.moved_to(sid) {
        Some((node, new)) => c.replica.link().deliver(&node, to, new, stanzas),
        None => Err(stanzas),
    }
}

/// Answers `ask` with "not here".
pub(crate) fn refuse(server: &Server, ask: &Ask) {
    give(server, ask, None);
}

/// Sends the answer to `ask`; false when the cluster link is full.
pub(crate) fn give(server: &Server, ask: &Ask, state: Option<Box<State>>) -> bool {
    let Some(c) = &server.cluster else {
        return false;
    };
    c.replica
        .link()
        .send(Outgoing {
            node: ask.from.as_str().into(),
            body: Body::HandoffGive(Give {
                req: ask.req,
                sid: ask.sid,
                state,
            }),
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Envelope;

    fn stanza(xml: &str) -> Element {
        waxwing_proto::xml::parse_stanza(xml, waxwing_proto::ns::CLIENT).expect("parses")
    }

    fn state() -> State {
        State {
            jid: "alice@example.org/phone".into(),
            id: "sm-1".into(),
            handled_in: 7,
            sent_out: u32::MAX,
            unacked: vec!["<message xmlns='jabber:client' to='alice@example.org/phone' id='m1'><body>a &amp; b</body></message>".into()],
            pending: vec!["<presence xmlns='jabber:client' from='bob@example.org/x'/>".into()],
            last: Some("<presence xmlns='jabber:client'><show>away</show></presence>".into()),
            priority: -3,
            directed: vec!["room@muc.example.org/alice".into()],
            interested: true,
            flags: SessionFlag::Carbons as u32,
        }
    }

    #[test]
    fn handoff_envelopes_round_trip() {
        let ask = Envelope {
            node: "b".into(),
            inc: "i".into(),
            seq: 1,
            body: Body::HandoffAsk(Box::new(Ask {
                req: 9,
                from: "b".into(),
                inc: "i".into(),
                id: "sm-1".into(),
                user: "alice@example.org".into(),
                sid: 42,
            })),
        };
        assert_eq!(Envelope::decode(ask.encode().as_bytes()), Some(ask));
        for state in [Some(Box::new(state())), None] {
            let give = Envelope {
                node: "a".into(),
                inc: "j".into(),
                seq: 2,
                body: Body::HandoffGive(Give {
                    req: 9,
                    sid: 42,
                    state,
                }),
            };
            assert_eq!(Envelope::decode(give.encode().as_bytes()), Some(give));
        }
    }

    #[test]
    fn a_captured_state_restores_the_same_session() {
        let (a, _rx) = SessionHandle::new_with_id(
            SessionHandle::reserve_id(),
            FullJid::parse("alice@example.org/phone").expect("jid"),
            8,
            8,
        );
        a.with_presence(|p| {
            p.last = Some(stanza(
                "<presence xmlns='jabber:client'><show>dnd</show></presence>",
            ));
            p.priority = 5;
            p.directed
                .insert(Jid::parse("room@muc.example.org/alice").expect("jid"));
        });
        a.set_interested();
        a.set_flag(SessionFlag::Inactive, true);
        a.set_flag(SessionFlag::Detached, true);
        let unacked = [stanza(
            "<message xmlns='jabber:client' id='1'><body>x</body></message>",
        )];
        let pending = [stanza(
            "<message xmlns='jabber:client' id='2'><body>y</body></message>",
        )];
        let s = State::capture(&a, "sm-9", 3, 4, &unacked, &pending);
        assert_eq!(
            s.flags,
            SessionFlag::Inactive as u32,
            "detached is not carried over"
        );
        let wire: State =
            serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("state parses");
        assert_eq!(wire, s);
        let (b, _rx) =
            SessionHandle::new_with_id(77, FullJid::parse(&wire.jid).expect("jid"), 8, 8);
        wire.restore_onto(&b);
        assert_eq!(b.id, 77);
        assert_eq!(b.priority(), 5);
        assert!(b.is_interested());
        assert!(b.flag(SessionFlag::Inactive));
        assert!(!b.flag(SessionFlag::Carbons));
        assert_eq!(
            b.last_presence()
                .and_then(|p| p.child("show", waxwing_proto::ns::CLIENT).map(|s| s.text())),
            Some("dnd".to_string())
        );
        b.with_presence(|p| assert_eq!(p.directed.len(), 1));
        assert_eq!(wire.unacked_elements()[0].attr("id"), Some("1"));
        assert_eq!(wire.pending_elements()[0].attr("id"), Some("2"));
        assert!(wire.size() > 0);
    }

    #[test]
    fn stanzas_for_a_moved_session_follow_it_for_a_while() {
        let mut m = Moved::default();
        let t0 = Instant::now();
        m.insert(5, "b".into(), 90, t0);
        assert_eq!(m.get(5, t0), Some(("b".into(), 90)));
        assert_eq!(m.get(6, t0), None);
        assert_eq!(
            m.get(5, t0 + MOVED_KEEP),
            None,
            "forgotten after MOVED_KEEP"
        );
    }

    #[test]
    fn the_forwarding_table_is_bounded() {
        let mut m = Moved::default();
        let t0 = Instant::now();
        // All fresh: the oldest make room.
        let at = |i: u64| t0 + Duration::from_micros(i);
        for i in 0..(MAX_MOVED as u64 + 10) {
            m.insert(i, "b".into(), i, at(i));
        }
        assert_eq!(m.to.len(), MAX_MOVED);
        let last = MAX_MOVED as u64 + 9;
        assert!(m.get(last, at(last)).is_some());
        assert!(m.get(0, at(last)).is_none(), "the oldest went");
        // Expired ones go first, all at once.
        m.insert(
            u64::MAX,
            "b".into(),
            1,
            t0 + MOVED_KEEP + Duration::from_secs(1),
        );
        assert_eq!(m.to.len(), 1);
    }
}
