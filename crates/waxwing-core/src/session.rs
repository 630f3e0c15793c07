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

impl SessionFlag {
    /// The flags whose sessions each account counts ([`AccountFlags`]).
    const COUNTED: [SessionFlag; 3] = [
        SessionFlag::Carbons,
        SessionFlag::Inactive,
        SessionFlag::Detached,
    ];

    fn counted_slot(self) -> Option<usize> {
        Self::COUNTED.iter().position(|f| *f == self)
    }
}

/// Set in a handle's flag word while the handle counts in its account's
/// [`AccountFlags`]: from [`SessionRegistry::bind`] to
/// [`SessionRegistry::unbind`]. In the same word as the flags, so a flag
/// change and an unbind are ordered by the word's own atomics and a
/// session is never counted after it left (nor uncounted twice). Never a
/// [`SessionFlag`]: masked out of what [`SessionHandle::flag_bits`] tells
/// the cluster.
const COUNTED_IN_ACCOUNT: u32 = 1 << 30;

/// What modules may know about a whole account (not one session), kept on
/// the account's entry on this node (see [`AccountFlags`]). A closed set,
/// like [`SessionFlag`].
///
/// A fact is a cache of something a module decided, so the module that
/// sets one also withdraws it whenever it may no longer hold
/// ([`SessionRegistry::withdraw_account_fact`]). An entry starts with no
/// facts and goes with the account's last session here; remote and unbound
/// handles have none: a fact not set only means "not known".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum AccountFact {
    /// XEP-0191: the account's blocklist is empty. Set and withdrawn by
    /// the blocking module under its cache's lock only.
    BlocksNobody = 1 << 0,
}

/// How many of an account's sessions on this node have each counted flag
/// set, shared by the account's handles: whether *any* of them has a flag
/// (carbons, for every message sent or received) is then one load from a
/// handle at hand, not a registry lock and lookup and a scan. Written only
/// when a flag changes, so reading it costs no cache-line traffic.
///
/// Beside them, the account's [`AccountFact`]s, read from a handle at
/// hand for the same reason (blocking asks for every message).
#[derive(Debug, Default)]
pub(crate) struct AccountFlags {
    counts: [AtomicU32; SessionFlag::COUNTED.len()],
    facts: AtomicU32,
}

impl AccountFlags {
    /// Counts a session's flags in `bits` in (`+1`) or out (`-1`, wrapping:
    /// a count never goes below zero but for an instant between a flag
    /// change and its count, and any non-zero count only means "look").
    fn add(&self, bits: u32, delta: u32) {
        for (slot, f) in SessionFlag::COUNTED.iter().enumerate() {
            if bits & *f as u32 != 0 {
                self.counts[slot].fetch_add(delta, Ordering::Relaxed);
            }
        }
    }

    /// False when no session of the account on this node has `flag`;
    /// `None` for a flag that is not counted.
    fn any(&self, flag: SessionFlag) -> Option<bool> {
        let slot = flag.counted_slot()?;
        Some(self.counts[slot].load(Ordering::Relaxed) != 0)
    }

    /// Counts a session just bound in its flags, and points it at them.
    fn count(self: &Arc<Self>, handle: &SessionHandle) {
        if let Err(ours) = handle.account.set(self.clone())
            && !handle.account.get().is_some_and(|a| Arc::ptr_eq(a, &ours))
        {
            // Bound before under another entry of the account (not
            // something the server does): it cannot be counted here, so
            // these counts never read zero again and every question about
            // the account looks at its sessions.
            self.add(u32::MAX, 1);
            return;
        }
        // Release: whoever sees it counted sees `account` set.
        let before = handle.flags.fetch_or(COUNTED_IN_ACCOUNT, Ordering::AcqRel);
        if before & COUNTED_IN_ACCOUNT == 0 {
            self.add(before, 1);
        }
    }

    fn has_fact(&self, fact: AccountFact) -> bool {
        self.facts.load(Ordering::Acquire) & fact as u32 != 0
    }

    fn set_fact(&self, fact: AccountFact) {
        // Read first: set once, then read for every message, so the
        // line stays shared between the threads that read it.
        if !self.has_fact(fact) {
            self.facts.fetch_or(fact as u32, Ordering::AcqRel);
        }
    }

    fn withdraw_fact(&self, fact: AccountFact) {
        if self.has_fact(fact) {
            self.facts.fetch_and(!(fact as u32), Ordering::AcqRel);
        }
    }

    /// Takes a session leaving the account out of its counts, once.
    fn uncount(self: &Arc<Self>, handle: &SessionHandle) {
        if !handle.account.get().is_some_and(|a| Arc::ptr_eq(a, self)) {
            return;
        }
        let before = handle
            .flags
            .fetch_and(!COUNTED_IN_ACCOUNT, Ordering::AcqRel);
        if before & COUNTED_IN_ACCOUNT != 0 {
            self.add(before, 1u32.wrapping_neg());
        }
    }
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
    /// Set by [`Self::close`] before `closed` is cancelled: what
    /// [`Self::is_closing`] reads for every message routed to the session.
    /// The token's own `is_cancelled` takes the token's mutex, which the
    /// session's task also takes while it waits on the token, so the
    /// sender's thread and the recipient's fought over that lock's line.
    closing: AtomicBool,
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
    /// Its account's flag counts on this node, set when the session is
    /// bound (a handle is bound at most once).
    account: OnceLock<Arc<AccountFlags>>,
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
            closing: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            presence: Mutex::new(PresenceState::default()),
            interested: AtomicBool::new(false),
            flags: AtomicU32::new(0),
            transport: AtomicU8::new(Transport::Tcp as u8),
            overflows: OnceLock::new(),
            account: OnceLock::new(),
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
            closing: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            presence: Mutex::new(presence),
            interested: AtomicBool::new(interested),
            flags: AtomicU32::new(flags),
            transport: AtomicU8::new(Transport::Tcp as u8),
            overflows: OnceLock::new(),
            account: OnceLock::new(),
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
            return self.closing.load(Ordering::Acquire);
        }
        self.closing.load(Ordering::Acquire) || self.queue.is_closed()
    }

    /// Asks the session's task to end the stream with `err`. The first reason wins.
    pub fn close(&self, err: StreamError) {
        if let Some(r) = &self.remote {
            r.link.close(&r.node, &self.jid, r.sid, &err);
            self.mark_closing();
            return;
        }
        let mut reason = self.close_reason.lock().expect("close_reason lock");
        if reason.is_none() {
            *reason = Some(Box::new(err));
        }
        drop(reason);
        self.mark_closing();
    }

    /// `closing` first, then the token: whoever the token wakes finds the
    /// session closing.
    fn mark_closing(&self) {
        self.closing.store(true, Ordering::Release);
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
        let bit = f as u32;
        // The account's count goes up before the flag is set and down
        // after it is cleared, so it is never below the number of its
        // counted sessions with the flag, even for an instant: a zero is
        // always true (`AccountFlags`). An increment the change turns out
        // not to need is taken back.
        let early = self.account.get();
        if on && let Some(a) = early {
            a.add(bit, 1);
        }
        // Acquire: a handle seen counted has its `account` set.
        let before = if on {
            self.flags.fetch_or(bit, Ordering::AcqRel)
        } else {
            self.flags.fetch_and(!bit, Ordering::AcqRel)
        };
        let changed = (before & bit != 0) != on;
        let moves = changed && before & COUNTED_IN_ACCOUNT != 0;
        let delta = match (on, early) {
            (true, Some(_)) if !moves => Some(1u32.wrapping_neg()),
            // Bound since `early` was read: counted after all.
            (true, None) if moves => Some(1),
            (false, _) if moves => Some(1u32.wrapping_neg()),
            _ => None,
        };
        if let Some(delta) = delta
            && let Some(a) = self.account.get()
        {
            a.add(bit, delta);
        }
        if changed {
            self.changed();
        }
    }

    /// Every flag, as bits.
    pub(crate) fn flag_bits(&self) -> u32 {
        self.flags.load(Ordering::Relaxed) & !COUNTED_IN_ACCOUNT
    }

    /// Whether a session of this one's account on this node might have
    /// `flag`: false is sure (for a bound local session and a counted
    /// flag), true means the sessions must be looked at.
    fn account_may_have(&self, flag: SessionFlag) -> bool {
        self.bound_account()
            .and_then(|a| a.any(flag))
            .unwrap_or(true)
    }

    /// The account's entry on this node, while this session counts in it
    /// (bound here, from `bind` to `unbind`): the entry the registry
    /// holds for the account then, so what is withdrawn through the
    /// registry is withdrawn here.
    fn bound_account(&self) -> Option<&AccountFlags> {
        self.account
            .get()
            .filter(|_| self.flags.load(Ordering::Acquire) & COUNTED_IN_ACCOUNT != 0)
            .map(|a| &**a)
    }

    /// Whether this session is in the registry of this node now: from
    /// [`SessionRegistry::bind`] until it is unbound or replaced, when
    /// [`SessionRegistry::get`] of its JID returns it. One load, no lock:
    /// a caller that looked the session up before may keep it as long as
    /// this holds, instead of looking it up again (the router, for a
    /// client that keeps writing to the same resource). False for a
    /// remote handle.
    pub(crate) fn is_bound_here(&self) -> bool {
        self.bound_account().is_some()
    }

    /// Whether `fact` is known to hold for this session's account; false
    /// when it is not known (never set, withdrawn since, a session on
    /// another node or no longer bound).
    pub fn account_fact(&self, fact: AccountFact) -> bool {
        self.bound_account().is_some_and(|a| a.has_fact(fact))
    }

    /// Records `fact` for this session's account, while the session is
    /// bound here (else nothing is recorded: a fact on an entry the
    /// registry no longer holds could never be withdrawn). The caller
    /// must hold whatever orders it with the fact's withdrawal (see
    /// [`AccountFact`]).
    pub fn set_account_fact(&self, fact: AccountFact) {
        if let Some(a) = self.bound_account() {
            a.set_fact(fact);
        }
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
    by_user: RwLock<FastMap<BareJid, Account>>,
    /// Counts sessions closed for a full queue (shared with `Metrics`).
    overflows: prometheus_client::metrics::counter::Counter,
    cluster: Option<ClusterView>,
}

/// One online account's sessions on this node.
#[derive(Default)]
struct Account {
    sessions: Vec<Arc<SessionHandle>>,
    flags: Arc<AccountFlags>,
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
        let account = map.entry(handle.jid.bare().clone()).or_default();
        let list = &mut account.sessions;
        let old = list
            .iter()
            .position(|s| s.jid.resource() == handle.jid.resource())
            .map(|i| list.swap_remove(i));
        if let Some(old) = &old {
            account.flags.uncount(old);
        }
        // Exactly: most accounts have one session, and a `Vec`'s first push
        // would make room for four (every online account paid 24 bytes).
        list.reserve_exact(1);
        list.push(handle.clone());
        account.flags.count(&handle);
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
        let Some(account) = map.get_mut(handle.jid.bare()) else {
            return false;
        };
        let list = &mut account.sessions;
        let before = list.len();
        list.retain(|s| s.id != handle.id);
        let removed = list.len() != before;
        if removed {
            account.flags.uncount(handle);
        }
        if account.sessions.is_empty() {
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
            .map(|a| a.sessions.clone())
            .unwrap_or_default()
    }

    /// Whether any session of the account (on every node in cluster mode)
    /// has `flag` set and is not one `skip` picks, without copying the
    /// account's session list: the message path asks this for every
    /// message (carbons), and the answer is nearly always no. `skip` runs
    /// under the registry's read lock, so it may only read what needs no
    /// lock (ids, JIDs, flags).
    ///
    /// `member` is one of the account's sessions (the sender's, a
    /// recipient): when it is bound here, a local session with `flag` is
    /// looked for only if its account's count says there is one.
    pub fn any_flagged(
        &self,
        member: &SessionHandle,
        flag: SessionFlag,
        skip: impl Fn(&SessionHandle) -> bool,
    ) -> bool {
        let user = member.jid.bare();
        let wanted = |s: &SessionHandle| s.flag(flag) && !skip(s);
        let local = member.account_may_have(flag)
            && self
                .by_user
                .read()
                .expect("registry lock")
                .get(user)
                .is_some_and(|a| a.sessions.iter().any(|s| wanted(s)));
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

    /// False when surely no session of `member`'s account has `flag`
    /// (see [`SessionRegistry::any_flagged`]): read from the account's
    /// counts, without a lock. Lets a caller skip whatever it would check
    /// before asking `any_flagged` (the message's type, its children)
    /// when the answer is no anyway.
    pub fn may_be_flagged(&self, member: &SessionHandle, flag: SessionFlag) -> bool {
        self.cluster.is_some() || member.account_may_have(flag)
    }

    /// Withdraws `fact` for `user`'s account on this node (see
    /// [`AccountFact`]); nothing to do when it has no session here.
    pub fn withdraw_account_fact(&self, user: &BareJid, fact: AccountFact) {
        if let Some(a) = self.by_user.read().expect("registry lock").get(user) {
            a.flags.withdraw_fact(fact);
        }
    }

    /// Withdraws `fact` for every account on this node.
    pub fn withdraw_account_fact_everywhere(&self, fact: AccountFact) {
        for a in self.by_user.read().expect("registry lock").values() {
            a.flags.withdraw_fact(fact);
        }
    }

    /// Sessions of the account on this node.
    pub fn resource_count(&self, user: &BareJid) -> usize {
        self.by_user
            .read()
            .expect("registry lock")
            .get(user)
            .map_or(0, |a| a.sessions.len())
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
            .sessions
            .iter()
            .find(|s| s.jid.resource() == jid.resource())
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        self.by_user
            .read()
            .expect("registry lock")
            .values()
            .flat_map(|a| &a.sessions)
            .cloned()
            .collect()
    }

    /// Every account with at least one bound session, in no order.
    pub fn accounts(&self) -> Vec<BareJid> {
        self.by_user
            .read()
            .expect("registry lock")
            .iter()
            .filter(|(_, a)| !a.sessions.is_empty())
            .map(|(user, _)| user.clone())
            .collect()
    }

    pub fn count(&self) -> usize {
        self.by_user
            .read()
            .expect("registry lock")
            .values()
            .map(|a| a.sessions.len())
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

    fn session(jid: &str) -> Arc<SessionHandle> {
        SessionHandle::new(FullJid::parse(jid).unwrap(), 16, 100).0
    }

    /// What `any_flagged` must answer: the sessions looked at one by one.
    fn scanned(reg: &SessionRegistry, user: &str, flag: SessionFlag) -> bool {
        let user = BareJid::parse(user).unwrap();
        reg.local_resources(&user).iter().any(|s| s.flag(flag))
    }

    /// Two sessions of one account, bound in `reg`.
    fn two_bound(reg: &SessionRegistry) -> (Arc<SessionHandle>, Arc<SessionHandle>) {
        let (a, b) = (session("u@example/a"), session("u@example/b"));
        reg.bind(a.clone());
        reg.bind(b.clone());
        (a, b)
    }

    fn carbons_count(member: &SessionHandle) -> u32 {
        member.account.get().unwrap().counts[0].load(Ordering::Relaxed)
    }

    #[test]
    fn flag_counts_follow_flags_binds_and_unbinds() {
        let reg = SessionRegistry::default();
        let carbons = SessionFlag::Carbons;
        let (a, b) = two_bound(&reg);
        let none = |_: &SessionHandle| false;
        assert!(!reg.any_flagged(&a, carbons, none));

        // Set on one session: seen from the other, unless skipped.
        b.set_flag(carbons, true);
        b.set_flag(carbons, true);
        assert!(reg.any_flagged(&a, carbons, none));
        assert!(!reg.any_flagged(&a, carbons, |s| s.id == b.id));
        assert!(!reg.any_flagged(&a, SessionFlag::Inactive, none));
        assert_eq!(carbons_count(&a), 1);

        // Gone: no longer counted, and its later changes count nowhere.
        assert!(reg.unbind(&b));
        assert!(!reg.any_flagged(&a, carbons, none));
        b.set_flag(carbons, false);
        b.set_flag(carbons, true);
        assert_eq!(carbons_count(&a), 0);
        assert!(!reg.unbind(&b));
        assert_eq!(carbons_count(&a), 0);

        // Flags set before the bind count; a replaced session (same full
        // JID) stops counting.
        let c = session("u@example/c");
        c.set_flag(carbons, true);
        reg.bind(c.clone());
        assert!(reg.any_flagged(&a, carbons, none));
        let c2 = session("u@example/c");
        assert!(reg.bind(c2.clone()).is_some_and(|old| old.id == c.id));
        assert!(!reg.any_flagged(&a, carbons, none));
        assert_eq!(
            reg.any_flagged(&a, carbons, none),
            scanned(&reg, "u@example", carbons)
        );

        // The internal marker never leaves in the flags the cluster reads.
        assert_eq!(c2.flag_bits(), 0);
        c2.set_flag(carbons, true);
        assert_eq!(c2.flag_bits(), carbons as u32);
        assert!(reg.any_flagged(&a, carbons, |s| s.id == a.id));
    }

    /// The lock-free "surely not" that callers ask before costlier checks:
    /// never false while a session of the account has the flag.
    #[test]
    fn may_be_flagged_is_never_false_while_a_session_has_the_flag() {
        let reg = SessionRegistry::default();
        let carbons = SessionFlag::Carbons;
        let (a, b) = two_bound(&reg);
        assert!(!reg.may_be_flagged(&a, carbons));
        b.set_flag(carbons, true);
        assert!(reg.may_be_flagged(&a, carbons));
        assert!(reg.may_be_flagged(&b, carbons));
        b.set_flag(carbons, false);
        assert!(!reg.may_be_flagged(&a, carbons));
        a.set_flag(carbons, true);
        assert!(reg.may_be_flagged(&a, carbons));
        // Not bound here: nothing is known, so maybe.
        let loose = session("v@example/x");
        assert!(reg.may_be_flagged(&loose, carbons));
    }

    /// A handle is "bound here" exactly while the registry returns it for
    /// its JID: what lets the router keep one it looked up.
    #[test]
    fn bound_here_follows_the_registry() {
        let reg = SessionRegistry::default();
        let a = session("u@example/a");
        assert!(!a.is_bound_here());
        reg.bind(a.clone());
        assert!(a.is_bound_here());
        assert!(reg.get(&a.jid).is_some_and(|s| s.id == a.id));
        // Replaced by a session with the same full JID.
        let a2 = session("u@example/a");
        reg.bind(a2.clone());
        assert!(!a.is_bound_here());
        assert!(a2.is_bound_here());
        assert!(reg.unbind(&a2));
        assert!(!a2.is_bound_here());
        assert!(reg.get(&a2.jid).is_none());
    }

    /// Sessions killed while their flags change, on other threads: the
    /// counts end as the flags of the sessions still bound say.
    #[test]
    fn flag_counts_survive_unbinds_racing_flag_changes() {
        let reg = SessionRegistry::default();
        let carbons = SessionFlag::Carbons;
        let stays = session("u@example/stays");
        reg.bind(stays.clone());
        for round in 0..50 {
            let leaving: Vec<_> = (0..4)
                .map(|i| session(&format!("u@example/r{round}-{i}")))
                .collect();
            for s in &leaving {
                reg.bind(s.clone());
            }
            std::thread::scope(|scope| {
                for s in &leaving {
                    scope.spawn(|| {
                        for i in 0..20 {
                            s.set_flag(carbons, i % 2 == 0);
                        }
                    });
                    scope.spawn(|| {
                        reg.unbind(s);
                    });
                }
            });
            assert_eq!(carbons_count(&stays), 0, "round {round}");
            assert!(!reg.any_flagged(&stays, carbons, |_| false));
        }
        stays.set_flag(carbons, true);
        assert_eq!(carbons_count(&stays), 1);
    }

    /// A handle bound again under a new entry of its account cannot be
    /// counted there: the account then always looks at its sessions.
    #[test]
    fn a_handle_bound_twice_turns_the_counts_off() {
        let reg = SessionRegistry::default();
        let carbons = SessionFlag::Carbons;
        let a = session("u@example/a");
        reg.bind(a.clone());
        reg.unbind(&a);
        let b = session("u@example/b");
        reg.bind(b.clone());
        a.set_flag(carbons, true);
        reg.bind(a.clone());
        assert!(reg.any_flagged(&b, carbons, |_| false));
        a.set_flag(carbons, false);
        assert!(!reg.any_flagged(&b, carbons, |_| false));
        assert!(b.account_may_have(carbons));
    }

    #[test]
    fn account_facts_are_shared_withdrawn_and_go_with_the_entry() {
        let reg = SessionRegistry::default();
        let fact = AccountFact::BlocksNobody;
        let user = BareJid::parse("u@example").unwrap();
        let a = session("u@example/a");
        // Not bound: nothing to record it on.
        a.set_account_fact(fact);
        assert!(!a.account_fact(fact));
        reg.bind(a.clone());
        assert!(!a.account_fact(fact), "a fresh entry knows nothing");

        // Set through one handle: read through every handle of the account.
        a.set_account_fact(fact);
        let b = session("u@example/b");
        reg.bind(b.clone());
        assert!(a.account_fact(fact) && b.account_fact(fact));

        // Withdrawn by bare JID: gone for every handle, and only for that account.
        let other = session("v@example/a");
        reg.bind(other.clone());
        other.set_account_fact(fact);
        reg.withdraw_account_fact(&user, fact);
        assert!(!a.account_fact(fact) && !b.account_fact(fact));
        assert!(other.account_fact(fact));
        b.set_account_fact(fact);
        assert!(a.account_fact(fact));
        reg.withdraw_account_fact_everywhere(fact);
        assert!(!a.account_fact(fact) && !other.account_fact(fact));

        // An unbound (or replaced) handle reads nothing; the others still do.
        b.set_account_fact(fact);
        assert!(reg.unbind(&a));
        assert!(!a.account_fact(fact) && b.account_fact(fact));
        let b2 = session("u@example/b");
        assert!(reg.bind(b2.clone()).is_some_and(|old| old.id == b.id));
        assert!(!b.account_fact(fact) && b2.account_fact(fact));

        // The last session gone, the entry goes: a new one starts empty,
        // and a handle of the old one cannot set anything on it.
        assert!(reg.unbind(&b2));
        let c = session("u@example/c");
        reg.bind(c.clone());
        assert!(!c.account_fact(fact));
        b2.set_account_fact(fact);
        a.set_account_fact(fact);
        assert!(!c.account_fact(fact));
    }

    #[tokio::test]
    async fn unread_bursts_beyond_the_allowance_close_the_session() {
        let jid = FullJid::parse("a@example/r").unwrap();
        let (h, _out) = SessionHandle::new(jid, 16, 100);
        assert!(h.send_burst((0..60).map(msg).collect()));
        assert!(!h.send_burst((0..60).map(msg).collect()));
        assert!(h.closed().is_cancelled());
        assert!(h.is_closing());
        assert_eq!(
            h.take_close_reason().map(|e| e.condition),
            Some(StreamCondition::PolicyViolation)
        );
    }

    #[test]
    fn a_session_asked_to_close_reads_as_closing() {
        let jid = FullJid::parse("a@example/r").unwrap();
        let (h, _out) = SessionHandle::new(jid, 16, 100);
        assert!(!h.is_closing());
        h.close(StreamError::new(StreamCondition::Conflict));
        assert!(h.is_closing());
        assert!(h.closed().is_cancelled());
    }
}
