//! BOSH (XEP-0124, XEP-0206): the connection manager.
//!
//! The protocol is `waxwing_proto::bosh` (sans-IO); this module gives it
//! time and connections. Each BOSH session is a [`Shared`] that three
//! parties touch, never holding its lock across an `.await`:
//! - the HTTP handlers (`http.rs`), which hand it requests and wait for
//!   their answers on a oneshot each;
//! - the client connection task (`stream/c2s`, through the BOSH link),
//!   which takes payloads as stream events and writes elements into it,
//!   so SASL, bind, stream management and CSI are the same code as TCP;
//! - one small timer task per session, for `wait` and `inactivity`, which
//!   also removes the session from the table when it ends.
//!
//! Memory per session is bounded: the state machine bounds held, waiting
//! and cached requests and the outgoing queue; [`Shared`] bounds the
//! payloads the client task has not read yet, and the HTTP layer the
//! requests in flight. The table has a server-wide cap.

pub mod http;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};
use waxwing_proto::bosh::{Action, Closed, Policy, Request, Response, Session, Token};
use waxwing_proto::ns;
use waxwing_proto::stanza::StreamError;
use waxwing_proto::xml::{Limits, StreamEvent, StreamHeader};

pub use crate::config::BoshConfig;
use crate::router::Server;

/// The URL path BOSH is served at, the one clients and XEP-0156 expect.
pub const PATH: &str = "/http-bind";

/// Mounts BOSH on the HTTP listener and announces it (XEP-0156), when on.
pub(crate) fn register(http: &mut crate::http::HttpRoutes, cfg: &BoshConfig) {
    if !cfg.enabled {
        return;
    }
    http.unlimited = std::mem::take(&mut http.unlimited).merge(http::routes());
    http.alt_connections
        .push((crate::http::AltConnection::Bosh, PATH.to_owned()));
}

/// Payload bytes the client task has not read yet, past which a session's
/// new requests wait (the HTTP equivalent of TCP backpressure).
const MAX_UNREAD_BYTES: usize = 512 * 1024;

/// Outgoing payloads waiting for a request, per session.
const MAX_OUTGOING_BYTES: usize = 256 * 1024;

/// The BOSH service (`Server::bosh`): the session table and the policy.
pub struct Bosh {
    policy: Policy,
    max_sessions: usize,
    sessions: Mutex<HashMap<Arc<str>, Arc<Shared>>>,
}

impl Bosh {
    pub fn new(cfg: &BoshConfig) -> Self {
        Bosh {
            policy: Policy {
                max_wait: cfg.max_wait,
                max_hold: 1,
                inactivity: cfg.inactivity,
                polling: Duration::from_secs(2),
                max_pause: cfg.max_pause,
                max_outgoing_bytes: MAX_OUTGOING_BYTES,
            },
            max_sessions: cfg.max_sessions,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Shared>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sessions open now.
    pub fn session_count(&self) -> usize {
        self.table().len()
    }

    fn get(&self, sid: &str) -> Option<Arc<Shared>> {
        self.table().get(sid).cloned()
    }
}

/// One BOSH session, shared by its HTTP requests, its client task and its
/// timer.
pub(crate) struct Shared {
    sid: Arc<str>,
    inner: Mutex<Inner>,
    /// Wakes the client task: input arrived, or the session ended.
    input: Notify,
    /// Wakes whoever waits for room: the client task's writes (outgoing
    /// answered) and HTTP requests (input read).
    room: Notify,
    /// Wakes the timer task: deadlines may have moved.
    timer: Notify,
    /// Whether the HTTP connection that created it was TLS.
    secure: bool,
    pub(crate) peer: SocketAddr,
    /// Tokens for this session's HTTP requests (0 is the creation's).
    next_token: AtomicU64,
    /// Requests being handled now (see `http::MAX_IN_FLIGHT`).
    in_flight: AtomicUsize,
}

struct Inner {
    session: Session,
    /// The HTTP requests waiting for their answer.
    waiters: HashMap<Token, oneshot::Sender<Response>>,
    /// Input for the client task, with the bytes each cost.
    input: VecDeque<(Result<StreamEvent, StreamError>, usize)>,
    input_bytes: usize,
    /// Bytes received since the client task last asked (its rate limit).
    unreported: usize,
    /// Request bytes not yet attached to an input event.
    charge: usize,
    /// The client task's current element limits.
    limits: Limits,
    /// The session ended on the BOSH side: the client task sees the end of
    /// its input once it has read what is queued.
    ended: bool,
}

impl Shared {
    fn next_token(&self) -> Token {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Performs the state machine's actions and lets the timer task know
    /// its deadlines may have moved. Called with the lock held, after every
    /// input to the state machine but the timer's own.
    fn dispatch(&self, inner: &mut Inner) {
        self.perform(inner);
        self.timer.notify_one();
    }

    /// Performs the state machine's actions.
    fn perform(&self, inner: &mut Inner) {
        let mut woke = false;
        while let Some(action) = inner.session.poll_action() {
            match action {
                Action::Respond { token, response } => {
                    if let Some(tx) = inner.waiters.remove(&token) {
                        // The HTTP client may have gone; its answer stays
                        // in the cache for a resend.
                        let _ = tx.send(response);
                    }
                }
                Action::StreamStart { to, from, lang, .. } => {
                    let header = StreamHeader {
                        ns: ns::CLIENT.to_owned(),
                        to,
                        from,
                        id: None,
                        version: Some("1.0".to_owned()),
                        lang,
                    };
                    inner.push_input(Ok(StreamEvent::Open(header)));
                    woke = true;
                }
                Action::Payload(el) => {
                    inner.push_input(Ok(StreamEvent::Stanza(el)));
                    woke = true;
                }
                Action::Closed(why) => {
                    tracing::debug!(sid = %self.sid, ?why, "BOSH session ended");
                    if why == Closed::ClientTerminated {
                        inner.push_input(Ok(StreamEvent::Close));
                    }
                    inner.ended = true;
                    woke = true;
                    // Requests that raced the end get item-not-found.
                    for (_, tx) in inner.waiters.drain() {
                        let _ = tx.send(waxwing_proto::bosh::unknown_session());
                    }
                }
            }
        }
        if woke {
            self.input.notify_one();
        }
        self.room.notify_waiters();
    }

    // ---- for the client task (the BOSH link) ----

    pub(crate) fn next_event(&self) -> Result<Option<StreamEvent>, StreamError> {
        let mut inner = self.lock();
        let Some((ev, cost)) = inner.input.pop_front() else {
            return Ok(None);
        };
        inner.input_bytes -= cost;
        if inner.input.is_empty() {
            inner.input.shrink_to(4);
        }
        drop(inner);
        self.room.notify_waiters();
        ev.map(Some)
    }

    /// Waits for input; the bytes it cost (at least 1), or 0 at the end.
    /// Cancel-safe: all state is in `Shared`.
    pub(crate) async fn receive(&self) -> usize {
        loop {
            let notified = self.input.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                if !inner.input.is_empty() {
                    return std::mem::take(&mut inner.unreported).max(1);
                }
                if inner.ended {
                    return 0;
                }
            }
            notified.await;
        }
    }

    pub(crate) fn set_limits(&self, limits: Limits) {
        self.lock().limits = limits;
    }

    pub(crate) fn is_secure(&self) -> bool {
        self.secure
    }

    pub(crate) fn set_stream_info(&self, id: &str, from: &str) {
        self.lock().session.set_stream_info(id, from);
    }

    /// Queues serialized elements for the client; `close` ends the session
    /// after them (with the stream error among them, if any). Waits while
    /// the outgoing queue is full; `false` once the session has ended.
    pub(crate) async fn write(&self, elements: Vec<String>, close: bool) -> bool {
        {
            let mut inner = self.lock();
            if inner.ended {
                return false;
            }
            let now = Instant::now();
            let mut error = None;
            for el in elements {
                if el.starts_with("<stream:error") {
                    error = Some(el);
                } else {
                    inner.session.push_xml(el, now);
                }
            }
            if close || error.is_some() {
                inner.session.close(error, now);
            }
            self.dispatch(&mut inner);
        }
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let inner = self.lock();
                if !inner.session.is_open() {
                    // Ended by us (then the write did its job) or by the
                    // client or a timeout (then the connection is gone).
                    return close;
                }
                if !inner.session.is_full() {
                    return true;
                }
            }
            room.await;
        }
    }

    /// The client task is gone (closed, or dropped its connection to wait
    /// for a stream management resumption elsewhere).
    pub(crate) fn detach(&self) {
        let mut inner = self.lock();
        inner.session.close(None, Instant::now());
        self.dispatch(&mut inner);
    }

    // ---- for the HTTP side ----

    /// Hands a request to the state machine; the receiver gets its answer.
    fn handle(&self, token: Token, req: Request) -> oneshot::Receiver<Response> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        inner.waiters.insert(token, tx);
        inner.charge += req.size;
        inner.unreported += req.size;
        inner.session.handle(token, req, Instant::now());
        self.dispatch(&mut inner);
        rx
    }

    /// Waits until the client task has read enough of the input (bounded
    /// by `limit`); `false` if it did not in time.
    async fn wait_for_room(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let inner = self.lock();
                if inner.input_bytes < MAX_UNREAD_BYTES || inner.ended {
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return false;
            }
        }
    }

    /// Input for the client task that breaks the rules before the state
    /// machine sees it (a body over the session's size limit).
    fn fail_input(&self, err: StreamError) {
        let mut inner = self.lock();
        inner.input.push_back((Err(err), 0));
        drop(inner);
        self.input.notify_one();
    }

    fn limits(&self) -> Limits {
        self.lock().limits
    }
}

impl Inner {
    fn push_input(&mut self, ev: Result<StreamEvent, StreamError>) {
        let cost = std::mem::take(&mut self.charge);
        self.input_bytes += cost;
        self.input.push_back((ev, cost));
    }
}

/// Runs a session's timers until it ends, then removes it from the table.
async fn timer_task(server: Arc<Server>, shared: Arc<Shared>) {
    loop {
        let kicked = shared.timer.notified();
        tokio::pin!(kicked);
        kicked.as_mut().enable();
        let due = {
            let mut inner = shared.lock();
            inner.session.handle_timeout(Instant::now());
            // Not `dispatch`: kicking ourselves would spin.
            shared.perform(&mut inner);
            if inner.session.is_closed() {
                break;
            }
            inner.session.poll_timeout()
        };
        match due {
            Some(due) => {
                let due = tokio::time::Instant::from_std(due);
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = &mut kicked => {}
                }
            }
            None => kicked.await,
        }
    }
    server.bosh.table().remove(&shared.sid);
}
