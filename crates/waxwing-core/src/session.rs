//! Bound sessions: the handle other tasks use to reach a client, and the
//! registry of who is online.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::stanza::{StreamCondition, StreamError};
use waxwing_proto::xml::Element;

use crate::cluster::{Link, Publisher, Replica};
use crate::fast_map::FastMap;
use crate::queue::{Outbox, Outq, Refused, outbound};
use crate::shared_stanza::Addressed;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Presence state of one session, as the presence engine sees it.
#[derive(Debug, Default, Clone)]
pub struct PresenceState {
    /// The last broadcast available presence; `None` until initial presence
    /// and after unavailable (RFC 6121 §4.2, §4.5).
    pub last: Option<Element>,
    pub priority: i8,
    /// Entities that got directed presence and are not otherwise entitled to
    /// it; they get unavailable when the session goes away (RFC 6121 §4.6.3).
    pub directed: HashSet<Jid>,
}

/// Per-session switches that modules flip. A closed set, like `Event`:
/// the whole vocabulary is here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SessionFlag {
    /// XEP-0280: the client enabled message carbons.
    Carbons = 1 << 0,
    /// XEP-0352: the client said it is inactive.
    Inactive = 1 << 1,
    /// XEP-0198: the connection broke and the session waits to be resumed.
    Detached = 1 << 2,
    /// XEP-0313 / XEP-0198 and friends may add theirs here.
    Reserved = 1 << 31,
}

/// How a client session reaches us; for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Transport {
    /// An XMPP stream over TCP (STARTTLS or direct TLS).
    Tcp = 0,
    /// RFC 7395 WebSocket.
    WebSocket = 1,
    /// XEP-0124/0206 BOSH.
    Bosh = 2,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Tcp, Transport::WebSocket, Transport::Bosh];

    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::WebSocket => "websocket",
            Transport::Bosh => "bosh",
        }
    }
}

/// The one way other tasks reach a bound client session.
#[derive(Debug)]
pub struct SessionHandle {
    pub id: u64,
    pub jid: FullJid,
    queue: Outq,
    closed: CancellationToken,
    /// Boxed, like `observer`: rarely set, and every session's handle
    /// would carry its size (the handle stays within a 320-byte allocation).
    close_reason: Mutex<Option<Box<StreamError>>>,
    presence: Mutex<PresenceState>,
    /// The client asked for its roster, so it gets roster pushes (RFC 6121 §2.1.6).
    interested: AtomicBool,
    flags: AtomicU32,
    /// A [`Transport`] as its `u8`; TCP unless the session's task says otherwise.
    transport: AtomicU8,
    /// `waxwing_queue_overflows_total`, set when the session is bound.
    overflows: OnceLock<prometheus_client::metrics::counter::Counter>,
    /// Cluster mode: told when the presence or flags change, so the rest of
    /// the cluster learns them (set when the session is bound).
    observer: OnceLock<Box<(Arc<Publisher>, Weak<SessionHandle>)>>,
    /// Cluster mode: this handle stands for a session on another node;
    /// what is queued on it goes there (see `cluster::replica`).
    remote: Option<Box<RemoteSession>>,
}

/// Where a session bound on another node lives.
#[derive(Debug)]
pub(crate) struct RemoteSession {
    pub(crate) node: Arc<str>,
    /// The session's id on its node.
    pub(crate) sid: u64,
    pub(crate) link: Link,
}

impl SessionHandle {
    pub(crate) fn new(jid: FullJid, queue: usize, burst_limit: usize) -> (Arc<Self>, Outbox) {
        Self::new_with_id(Self::reserve_id(), jid, queue, burst_limit)
    }

    /// A fresh session id, for a handle made later with [`Self::new_with_id`]
    /// (a session moving here from another node: the id is announced first).
    pub(crate) fn reserve_id() -> u64 {
        NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn new_with_id(
        id: u64,
        jid: FullJid,
        queue: usize,
        burst_limit: usize,
    ) -> (Arc<Self>, Outbox) {
        let (queue, outbox) = outbound(queue, burst_limit);
        let handle = SessionHandle {
            id,
            jid,
            queue,
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
            presence: Mutex::new(PresenceState::default()),
            interested: AtomicBool::new(false),
            flags: AtomicU32::new(0),
            transport: AtomicU8::new(Transport::Tcp as u8),
            overflows: OnceLock::new(),
            observer: OnceLock::new(),
            remote: None,
        };
        (Arc::new(handle), outbox)
    }

    /// A handle for a session bound on another node, with its presence and
    /// flags as that node last published them. Stanzas queued on it travel
    /// to that node; its presence state is a copy (changes stay here).
    pub(crate) fn remote(
        jid: FullJid,
        presence: PresenceState,
        flags: u32,
        interested: bool,
        remote: RemoteSession,
    ) -> Arc<Self> {
        // Never read: a remote handle's stanzas go to its link.
        let (queue, _) = outbound(1, 1);
        Arc::new(SessionHandle {
            id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
            jid,
            queue,
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
            presence: Mutex::new(presence),
            interested: AtomicBool::new(interested),
            flags: AtomicU32::new(flags),
            transport: AtomicU8::new(Transport::Tcp as u8),
            overflows: OnceLock::new(),
            observer: OnceLock::new(),
            remote: Some(Box::new(remote)),
        })
    }

    /// The node this session is bound on, when it is not this one.
    pub fn remote_node(&self) -> Option<&str> {
        self.remote.as_deref().map(|r| &*r.node)
    }

    /// For a remote session: hands the stanzas to the cluster link (no
    /// waiting); they come back when its bounded queue is full (Redis
    /// unreachable for a while), for the router to treat this session as
    /// gone, as with a full local queue.
    fn forward(&self, r: &RemoteSession, stanzas: Vec<Element>) -> Result<(), Vec<Element>> {
        r.link.deliver(&r.node, &self.jid, r.sid, stanzas)
    }

    /// Cluster mode: who to tell when this session's routing state changes.
    pub(crate) fn observe(self: &Arc<Self>, publisher: Arc<Publisher>) {
        if self
            .observer
            .set(Box::new((publisher, Arc::downgrade(self))))
            .is_ok()
        {
            self.changed();
        }
    }

    fn changed(&self) {
        if let Some((p, me)) = self.observer.get().map(|o| &**o) {
            p.mark(&self.jid, self.id, me.clone());
        }
    }

    /// Queues a stanza without waiting. A session whose queue is full is not
    /// reading: it is closed rather than buffered without bound.
    pub fn send(&self, stanza: Element) -> bool {
        if let Some(r) = &self.remote {
            return self.forward(r, vec![stanza]).is_ok();
        }
        self.accepted(self.queue.push(stanza))
    }

    /// Queues stanzas that belong together — a group chat join's presence
    /// of every occupant, history and subject — as one queue entry, without
    /// waiting: nothing else is written between them, and a burst larger
    /// than the queue does not overflow it. Burst stanzas are counted
    /// against their own allowance (`limits.outbound_burst`); a session
    /// with more unread than that is closed, like one with a full queue.
    pub fn send_burst(&self, stanzas: Vec<Element>) -> bool {
        if let Some(r) = &self.remote {
            return self.forward(r, stanzas).is_ok();
        }
        self.accepted(self.queue.push_burst(stanzas))
    }

    /// Set by a session task whose stream is not plain TCP.
    pub fn set_transport(&self, t: Transport) {
        self.transport.store(t as u8, Ordering::Relaxed);
    }

    pub fn transport(&self) -> Transport {
        match self.transport.load(Ordering::Relaxed) {
            1 => Transport::WebSocket,
            2 => Transport::Bosh,
            _ => Transport::Tcp,
        }
    }

    /// Entries waiting in the outbound queue.
    pub fn queued(&self) -> usize {
        self.queue.depth()
    }

    /// [`SessionHandle::send`], but a refused stanza comes back, for the
    /// router to deliver elsewhere (RFC 6121 §8.5: as if this resource were
    /// not there) or to bounce.
    pub fn offer(&self, stanza: Element) -> Result<(), Element> {
        if let Some(r) = &self.remote {
            return self
                .forward(r, vec![stanza])
                .map_err(|mut v| v.pop().expect("one stanza"));
        }
        self.refused(self.queue.push(stanza))
            .map_err(|mut v| v.pop().expect("one stanza"))
    }

    /// [`SessionHandle::offer`] for a fan-out's shared stanza addressed to
    /// this session (`crate::shared_stanza`); a refused one comes back as a tree.
    pub fn offer_addressed(&self, stanza: Addressed) -> Result<(), Element> {
        if let Some(r) = &self.remote {
            return self
                .forward(r, vec![stanza.into_element()])
                .map_err(|mut v| v.pop().expect("one stanza"));
        }
        self.refused(self.queue.push_addressed(stanza))
            .map_err(|mut v| v.pop().expect("one stanza"))
    }

    /// [`SessionHandle::send_burst`], but a refused burst comes back.
    pub fn offer_burst(&self, stanzas: Vec<Element>) -> Result<(), Vec<Element>> {
        if let Some(r) = &self.remote {
            return self.forward(r, stanzas);
        }
        self.refused(self.queue.push_burst(stanzas))
    }

    /// Queues stanzas whose delivery someone waits for (offline messages,
    /// which are deleted only once delivered), as one entry like a burst.
    /// The receiver resolves once the client has them: acknowledged under
    /// stream management (XEP-0198), otherwise written to its socket. It
    /// fails if the session ends first; such stanzas are then neither
    /// written later nor handed to offline storage: their owner still has
    /// them. Refused like [`SessionHandle::send_burst`].
    pub fn send_tracked(&self, stanzas: Vec<Element>) -> Option<oneshot::Receiver<()>> {
        if self.remote.is_some() {
            // Nobody here would learn when the client has them.
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.accepted(self.queue.push_tracked(stanzas, tx))
            .then_some(rx)
    }

    fn accepted(&self, r: Result<(), Refused>) -> bool {
        self.refused(r).is_ok()
    }

    fn refused(&self, r: Result<(), Refused>) -> Result<(), Vec<Element>> {
        match r {
            Ok(()) => Ok(()),
            Err(Refused::Full(v)) => {
                tracing::warn!(jid = %self.jid, "outbound queue full; closing the session");
                if let Some(c) = self.overflows.get() {
                    c.inc();
                }
                self.close(
                    StreamError::new(StreamCondition::PolicyViolation)
                        .with_text("too many unread stanzas"),
                );
                Err(v)
            }
            Err(Refused::Closed(v)) => Err(v),
        }
    }

    /// The session was asked to end (queue overflow, conflict, removal …):
    /// it takes nothing more, so routing treats it as unbound.
    pub fn is_closing(&self) -> bool {
        if self.remote.is_some() {
            return self.closed.is_cancelled();
        }
        self.closed.is_cancelled() || self.queue.is_closed()
    }

    /// Asks the session's task to end the stream with `err`. The first reason wins.
    pub fn close(&self, err: StreamError) {
        if let Some(r) = &self.remote {
            r.link.close(&r.node, &self.jid, r.sid, &err);
            self.closed.cancel();
            return;
        }
        let mut reason = self.close_reason.lock().expect("close_reason lock");
        if reason.is_none() {
            *reason = Some(Box::new(err));
        }
        drop(reason);
        self.closed.cancel();
    }

    pub(crate) fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    pub(crate) fn take_close_reason(&self) -> Option<StreamError> {
        self.close_reason
            .lock()
            .expect("close_reason lock")
            .take()
            .map(|e| *e)
    }

    /// Modules' closures run under this lock ([`SessionHandle::with_presence`]):
    /// one that panicked poisoned it, and refusing the session's presence
    /// from then on would fail every delivery to the account.
    fn presence(&self) -> std::sync::MutexGuard<'_, PresenceState> {
        self.presence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True once initial presence was sent and until unavailable.
    pub fn is_available(&self) -> bool {
        self.presence().last.is_some()
    }

    pub fn priority(&self) -> i8 {
        self.presence().priority
    }

    /// Reads and changes the presence state under its lock (never across `.await`).
    /// [`SessionHandle::with_presence`] for a reader that changes nothing.
    pub(crate) fn with_presence_quiet<R>(&self, f: impl FnOnce(&PresenceState) -> R) -> R {
        f(&self.presence())
    }

    /// The session's last broadcast available presence (`None` before
    /// initial presence and after unavailable).
    pub fn last_presence(&self) -> Option<Element> {
        self.presence().last.clone()
    }

    pub fn with_presence<R>(&self, f: impl FnOnce(&mut PresenceState) -> R) -> R {
        let r = f(&mut self.presence());
        self.changed();
        r
    }

    pub fn is_interested(&self) -> bool {
        self.interested.load(Ordering::Relaxed)
    }

    pub fn set_interested(&self) {
        if !self.interested.swap(true, Ordering::Relaxed) {
            self.changed();
        }
    }

    pub fn flag(&self, f: SessionFlag) -> bool {
        self.flags.load(Ordering::Relaxed) & f as u32 != 0
    }

    pub fn set_flag(&self, f: SessionFlag, on: bool) {
        let before = if on {
            self.flags.fetch_or(f as u32, Ordering::Relaxed)
        } else {
            self.flags.fetch_and(!(f as u32), Ordering::Relaxed)
        };
        if (before & f as u32 != 0) != on {
            self.changed();
        }
    }

    /// Every flag, as bits.
    pub(crate) fn flag_bits(&self) -> u32 {
        self.flags.load(Ordering::Relaxed)
    }
}

/// Who is online on this node, and in cluster mode on the others too. A
/// std `RwLock`: every operation is a short map update and none of them
/// awaits.
///
/// In cluster mode, [`SessionRegistry::resources`] and
/// [`SessionRegistry::get`] also return handles for sessions on other nodes
/// (from the in-memory [`Replica`] of the cluster's registry, so routing
/// costs no Redis round trip), which the router and the modules use like
/// local ones. `bind`, `all`, `accounts` and `count` are this node's only.
#[derive(Default)]
pub struct SessionRegistry {
    /// Keyed with [`FastMap`]'s hasher: looked up several times per message.
    by_user: RwLock<FastMap<BareJid, Vec<Arc<SessionHandle>>>>,
    /// Counts sessions closed for a full queue (shared with `Metrics`).
    overflows: prometheus_client::metrics::counter::Counter,
    cluster: Option<ClusterView>,
}

/// The cluster's sessions as this node sees them, and where to announce its own.
pub(crate) struct ClusterView {
    pub(crate) replica: Arc<Replica>,
    pub(crate) publisher: Arc<Publisher>,
}

impl SessionRegistry {
    /// A registry whose sessions count queue overflows in `overflows`.
    pub(crate) fn counting_overflows(
        overflows: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        SessionRegistry {
            by_user: RwLock::default(),
            overflows,
            cluster: None,
        }
    }

    /// Cluster mode: remote sessions come from `replica`, local changes go to `publisher`.
    pub(crate) fn with_cluster(mut self, replica: Arc<Replica>, publisher: Arc<Publisher>) -> Self {
        self.cluster = Some(ClusterView { replica, publisher });
        self
    }

    /// Adds a session. Returns the session it replaced, which had the same
    /// full JID (RFC 6120 §7.7.2.2: the old one gets `conflict`).
    pub fn bind(&self, handle: Arc<SessionHandle>) -> Option<Arc<SessionHandle>> {
        let _ = handle.overflows.set(self.overflows.clone());
        let mut map = self.by_user.write().expect("registry lock");
        let list = map.entry(handle.jid.bare().clone()).or_default();
        let old = list
            .iter()
            .position(|s| s.jid.resource() == handle.jid.resource())
            .map(|i| list.swap_remove(i));
        list.push(handle.clone());
        drop(map);
        if let Some(c) = &self.cluster {
            // RFC 6120 §7.7.2.2 across nodes: the same full JID bound
            // elsewhere is replaced, as it would be here.
            for other in c.replica.sessions_named(&handle.jid) {
                other.close(
                    StreamError::new(StreamCondition::Conflict)
                        .with_text("replaced by a new session"),
                );
            }
            handle.observe(c.publisher.clone());
        }
        old
    }

    /// Removes exactly this session (not a newer one with the same JID).
    pub fn unbind(&self, handle: &SessionHandle) -> bool {
        let mut map = self.by_user.write().expect("registry lock");
        let Some(list) = map.get_mut(handle.jid.bare()) else {
            return false;
        };
        let before = list.len();
        list.retain(|s| s.id != handle.id);
        let removed = list.len() != before;
        if list.is_empty() {
            map.remove(handle.jid.bare());
        }
        drop(map);
        if removed && let Some(c) = &self.cluster {
            c.publisher.mark(&handle.jid, handle.id, Weak::new());
        }
        removed
    }

    /// The account's sessions, on every node in cluster mode.
    pub fn resources(&self, user: &BareJid) -> Vec<Arc<SessionHandle>> {
        let mut out = self.local_resources(user);
        if let Some(c) = &self.cluster {
            c.replica.resources_into(user, &mut out);
        }
        out
    }

    /// The account's sessions on this node.
    pub fn local_resources(&self, user: &BareJid) -> Vec<Arc<SessionHandle>> {
        self.by_user
            .read()
            .expect("registry lock")
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    /// Whether any session of the account (on every node in cluster mode)
    /// has `flag` set and is not one `skip` picks, without copying the
    /// account's session list: the message path asks this for every
    /// message (carbons), and the answer is nearly always no. `skip` runs
    /// under the registry's read lock, so it may only read what needs no
    /// lock (ids, JIDs, flags).
    pub fn any_flagged(
        &self,
        user: &BareJid,
        flag: SessionFlag,
        skip: impl Fn(&SessionHandle) -> bool,
    ) -> bool {
        let wanted = |s: &SessionHandle| s.flag(flag) && !skip(s);
        let local = self
            .by_user
            .read()
            .expect("registry lock")
            .get(user)
            .is_some_and(|list| list.iter().any(|s| wanted(s)));
        if local {
            return true;
        }
        let Some(c) = &self.cluster else {
            return false;
        };
        let mut remote = Vec::new();
        c.replica.resources_into(user, &mut remote);
        remote.iter().any(|s| wanted(s))
    }

    /// Sessions of the account on this node.
    pub fn resource_count(&self, user: &BareJid) -> usize {
        self.by_user
            .read()
            .expect("registry lock")
            .get(user)
            .map_or(0, Vec::len)
    }

    /// A session by full JID: this node's, or in cluster mode another's.
    pub fn get(&self, jid: &FullJid) -> Option<Arc<SessionHandle>> {
        self.get_local(jid).or_else(|| {
            self.cluster
                .as_ref()
                .and_then(|c| c.replica.sessions_named(jid).pop())
        })
    }

    /// A session bound on this node.
    pub fn get_local(&self, jid: &FullJid) -> Option<Arc<SessionHandle>> {
        let map = self.by_user.read().expect("registry lock");
        map.get(jid.bare())?
            .iter()
            .find(|s| s.jid.resource() == jid.resource())
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        self.by_user
            .read()
            .expect("registry lock")
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// Every account with at least one bound session, in no order.
    pub fn accounts(&self) -> Vec<BareJid> {
        self.by_user
            .read()
            .expect("registry lock")
            .iter()
            .filter(|(_, sessions)| !sessions.is_empty())
            .map(|(user, _)| user.clone())
            .collect()
    }

    pub fn count(&self) -> usize {
        self.by_user
            .read()
            .expect("registry lock")
            .values()
            .map(Vec::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: usize) -> Element {
        Element::new("message", "jabber:client").with_attr("id", i.to_string())
    }

    #[tokio::test]
    async fn a_burst_takes_one_slot_and_keeps_its_order() {
        let jid = FullJid::parse("a@example/r").unwrap();
        let (h, mut out) = SessionHandle::new(jid, 2, 100);
        assert!(h.send(msg(0)));
        assert!(h.send_burst((1..=50).map(msg).collect()));
        assert!(!h.closed().is_cancelled());
        assert_eq!(out.recv().await.unwrap().len(), 1);
        let burst = out.recv().await.unwrap();
        let ids: Vec<_> = burst.iter().map(|m| m.attr("id").unwrap()).collect();
        assert_eq!(ids, (1..=50).map(|i| i.to_string()).collect::<Vec<_>>());
        // Taken off the queue: the allowance is free again.
        assert!(h.send_burst((0..100).map(msg).collect()));
        assert!(!h.closed().is_cancelled());
    }

    #[tokio::test]
    async fn unread_bursts_beyond_the_allowance_close_the_session() {
        let jid = FullJid::parse("a@example/r").unwrap();
        let (h, _out) = SessionHandle::new(jid, 16, 100);
        assert!(h.send_burst((0..60).map(msg).collect()));
        assert!(!h.send_burst((0..60).map(msg).collect()));
        assert!(h.closed().is_cancelled());
        assert_eq!(
            h.take_close_reason().map(|e| e.condition),
            Some(StreamCondition::PolicyViolation)
        );
    }
}
