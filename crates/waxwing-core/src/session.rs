//! Bound sessions: the handle other tasks use to reach a client, and the
//! registry of who is online.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::stanza::{StreamCondition, StreamError};
use waxwing_proto::xml::Element;

use crate::queue::{Outbox, Outq, Refused, outbound};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    close_reason: Mutex<Option<StreamError>>,
    presence: Mutex<PresenceState>,
    /// The client asked for its roster, so it gets roster pushes (RFC 6121 §2.1.6).
    interested: AtomicBool,
    flags: AtomicU32,
    /// A [`Transport`] as its `u8`; TCP unless the session's task says otherwise.
    transport: AtomicU8,
    /// `waxwing_queue_overflows_total`, set when the session is bound.
    overflows: OnceLock<prometheus_client::metrics::counter::Counter>,
}

impl SessionHandle {
    pub(crate) fn new(jid: FullJid, queue: usize, burst_limit: usize) -> (Arc<Self>, Outbox) {
        let (queue, outbox) = outbound(queue, burst_limit);
        let handle = SessionHandle {
            id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
            jid,
            queue,
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
            presence: Mutex::new(PresenceState::default()),
            interested: AtomicBool::new(false),
            flags: AtomicU32::new(0),
            transport: AtomicU8::new(Transport::Tcp as u8),
            overflows: OnceLock::new(),
        };
        (Arc::new(handle), outbox)
    }

    /// Queues a stanza without waiting. A session whose queue is full is not
    /// reading: it is closed rather than buffered without bound.
    pub fn send(&self, stanza: Element) -> bool {
        self.accepted(self.queue.push(stanza))
    }

    /// Queues stanzas that belong together — a group chat join's presence
    /// of every occupant, history and subject — as one queue entry, without
    /// waiting: nothing else is written between them, and a burst larger
    /// than the queue does not overflow it. Burst stanzas are counted
    /// against their own allowance (`limits.outbound_burst`); a session
    /// with more unread than that is closed, like one with a full queue.
    pub fn send_burst(&self, stanzas: Vec<Element>) -> bool {
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
        self.refused(self.queue.push(stanza))
            .map_err(|mut v| v.pop().expect("one stanza"))
    }

    /// [`SessionHandle::send_burst`], but a refused burst comes back.
    pub fn offer_burst(&self, stanzas: Vec<Element>) -> Result<(), Vec<Element>> {
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
        self.closed.is_cancelled() || self.queue.is_closed()
    }

    /// Asks the session's task to end the stream with `err`. The first reason wins.
    pub fn close(&self, err: StreamError) {
        let mut reason = self.close_reason.lock().expect("close_reason lock");
        if reason.is_none() {
            *reason = Some(err);
        }
        drop(reason);
        self.closed.cancel();
    }

    pub(crate) fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    pub(crate) fn take_close_reason(&self) -> Option<StreamError> {
        self.close_reason.lock().expect("close_reason lock").take()
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
    pub fn with_presence<R>(&self, f: impl FnOnce(&mut PresenceState) -> R) -> R {
        f(&mut self.presence())
    }

    pub fn is_interested(&self) -> bool {
        self.interested.load(Ordering::Relaxed)
    }

    pub fn set_interested(&self) {
        self.interested.store(true, Ordering::Relaxed);
    }

    pub fn flag(&self, f: SessionFlag) -> bool {
        self.flags.load(Ordering::Relaxed) & f as u32 != 0
    }

    pub fn set_flag(&self, f: SessionFlag, on: bool) {
        if on {
            self.flags.fetch_or(f as u32, Ordering::Relaxed);
        } else {
            self.flags.fetch_and(!(f as u32), Ordering::Relaxed);
        }
    }
}

/// Who is online on this node. A std `RwLock`: every operation is a short
/// map update and none of them awaits.
#[derive(Default)]
pub struct SessionRegistry {
    by_user: RwLock<HashMap<BareJid, Vec<Arc<SessionHandle>>>>,
    /// Counts sessions closed for a full queue (shared with `Metrics`).
    overflows: prometheus_client::metrics::counter::Counter,
}

impl SessionRegistry {
    /// A registry whose sessions count queue overflows in `overflows`.
    pub(crate) fn counting_overflows(
        overflows: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        SessionRegistry {
            by_user: RwLock::default(),
            overflows,
        }
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
        list.push(handle);
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
        removed
    }

    pub fn resources(&self, user: &BareJid) -> Vec<Arc<SessionHandle>> {
        self.by_user
            .read()
            .expect("registry lock")
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    pub fn resource_count(&self, user: &BareJid) -> usize {
        self.by_user
            .read()
            .expect("registry lock")
            .get(user)
            .map_or(0, Vec::len)
    }

    pub fn get(&self, jid: &FullJid) -> Option<Arc<SessionHandle>> {
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
