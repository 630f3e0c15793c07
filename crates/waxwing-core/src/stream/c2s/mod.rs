//! One client connection, whatever carries it: stream negotiation
//! (`negotiate.rs`, `auth.rs`, `sasl2.rs`, `fast.rs`), then the bound
//! session loop (`session.rs`), written once against the
//! [`ClientTransport`](link::ClientTransport) of `link.rs` (TCP in
//! `tcp.rs`). One task per connection owns the transport; other tasks
//! reach it only through its [`SessionHandle`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tracing::Instrument;
use waxwing_proto::jid::BareJid;
use waxwing_proto::stanza::{Condition, StanzaError, StreamCondition, StreamError};
use waxwing_proto::xml::{Element, Limits, StreamEvent};

use crate::abuse::{ConnectionPermit, PartialCharge, TokenBucket};
use crate::config::Config;
use crate::hooks::IqKind;
use crate::queue::Outbox;
use crate::random_id;
use crate::router::Server;
use crate::session::SessionHandle;
use crate::stream::csi::Held;
use crate::stream::sm::{self, SmState};
use crate::stream::transport::is_decompression_bomb;

mod auth;
mod bosh;
mod fast;
mod features;
#[cfg(test)]
mod footprint;
mod handoff;
pub(crate) mod link;
mod negotiate;
mod resumption;
mod sasl2;
mod session;
mod tcp;
pub(crate) mod websocket;

pub(crate) use features::FeatureCache;
pub(crate) use handoff::hand_away;
use link::{ClientTransport, Link, Outgoing, StreamOpen};
pub(crate) use resumption::ResumptionTable;

/// Why a stream ended.
enum End {
    /// Send this stream error, then close.
    Error(StreamError),
    /// The peer closed its stream; we answer with our footer.
    Closed,
    /// The connection broke (EOF or I/O error without `</stream:stream>`).
    Gone,
    /// The session was resumed on another cluster node and lives on there:
    /// nothing of it ends here but the connection, if one was still open.
    Moved,
}

impl From<StreamError> for End {
    fn from(e: StreamError) -> Self {
        End::Error(e)
    }
}

fn stream_error(c: StreamCondition, text: &str) -> End {
    End::Error(StreamError::new(c).with_text(text))
}

/// Runs one client connection over TCP to completion.
///
/// Not an `async fn`: the future an `async fn` returns keeps its arguments
/// for its whole life, even once they are moved out, so the socket would
/// be held twice by every session's task. The same goes for the link
/// `serve_link` takes, hence its box (freed as soon as it is unpacked, see
/// [`unbox`]).
pub(crate) fn serve(
    server: Arc<Server>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
) -> impl Future<Output = ()> + Send {
    let span = tracing::info_span!("c2s", %peer);
    let _ = tcp.set_nodelay(true);
    let config = server.live();
    let link = Box::new(Link::Tcp(tcp::TcpLink::new(tcp, initial_limits(&config))));
    serve_link(server, config, link, peer, direct_tls).instrument(span)
}

/// Runs one BOSH session's client connection to completion.
pub(crate) fn serve_bosh(
    server: Arc<Server>,
    shared: Arc<crate::bosh::Shared>,
) -> impl Future<Output = ()> + Send {
    let peer = shared.peer;
    let span = tracing::info_span!("c2s", %peer, transport = "bosh");
    let link = Box::new(Link::Bosh(bosh::BoshLink::new(shared)));
    let config = server.live();
    serve_link(server, config, link, peer, false).instrument(span)
}

/// Nothing before authentication needs more than a few KiB (a stream
/// header, a SASL exchange, a registration): unauthenticated connections
/// are cheap to open, so each may hold little.
pub(crate) fn initial_limits(config: &Config) -> Limits {
    Limits {
        max_stanza_bytes: config.max_stanza_bytes_before_auth,
        ..full_limits(config)
    }
}

/// A tokio task stores its future inline, sized for the largest state the
/// future can be in, for as long as the task lives. Most sessions spend
/// their life idle in `run_session`'s select, so every other phase
/// (negotiation, handling a stanza, writing, the goodbye) is boxed: its
/// state then exists only while that phase runs, instead of padding the
/// task of every idle session (4.4 KB of future before, 2.4 KB after).
///
/// `direct_tls`: XEP-0368, TLS before any XML (TCP only).
///
/// `config`: the live configuration when the connection came (its limits
/// hold for the connection's whole life, whatever a reload changes).
async fn serve_link(
    server: Arc<Server>,
    config: Arc<Config>,
    link: Box<Link>,
    peer: SocketAddr,
    direct_tls: bool,
) {
    let permit = server
        .connections
        .try_acquire(peer.ip(), config.max_connections_per_ip);
    let refused = permit.is_none();
    let mut conn = Conn {
        link: unbox(link),
        server: server.clone(),
        host: None,
        lang: None,
        header_sent: false,
        unsent: Outgoing::default(),
        neg: NegotiationSlot::default(),
        peer,
        bucket: TokenBucket::new(config.read_rate_bytes, config.read_burst_bytes),
        config,
        partial: server.partial_stanzas.charge(),
        _permit: permit,
        memo: Default::default(),
    };
    if refused {
        tracing::warn!(%peer, "too many connections from this address");
        if direct_tls {
            return; // no TLS yet, so no way to say why
        }
        let end = stream_error(
            StreamCondition::PolicyViolation,
            "too many connections from your address",
        );
        return Box::pin(conn.finish(end)).await;
    }
    // In a block, like every value of negotiation: what a task keeps
    // across more than one await gets a slot of its own for the task's
    // whole life, so negotiation's results must be gone before the
    // session's await, and the other outcomes are one boxed await.
    let (mut session, mut rx) = {
        let negotiated = Box::pin(conn.negotiate_in_time(direct_tls)).await;
        conn.neg.release();
        let (handle, rx, inline_sm) = match Negotiated::bound(negotiated) {
            Ok(bound) => bound,
            Err(unbound) => return Box::pin(end_unbound(conn, unbound)).await,
        };
        tracing::info!(jid = %handle.jid, "session bound");
        let (sm, takeover) = match inline_sm {
            Some(i) => (Some(i.state), i.takeover),
            None => (None, None),
        };
        let session = Session {
            handle,
            sm,
            held: Held::default(),
            takeover,
        };
        (session, rx)
    };
    let end = conn.run_bound(&mut session, &mut rx).await;
    Box::pin(close_session(conn, session, rx, end)).await;
}

/// A connection whose negotiation did not bind a session here: it resumed
/// one, or failed.
async fn end_unbound(conn: Conn, unbound: Unbound) {
    match unbound {
        Unbound::Resume(slot, h, success) => hand_over(conn, slot, h, success).await,
        Unbound::Arrived(arrived, h, success) => {
            handoff::carry_on(conn, unbox(arrived), h, success).await;
        }
        Unbound::Failed(end) => conn.finish(end).await,
    }
}

/// Moves a value out of its box and frees the box at once. Moving out
/// with `*boxed` in an `async fn` frees the allocation only when the boxed
/// binding goes out of scope, which for an argument is the end of the
/// function: every session would hold its emptied `Box<Link>` (over
/// 300 bytes) for its whole life.
#[allow(
    clippy::boxed_local,
    reason = "taking the box is the point: it is freed on return"
)]
fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// The bound session until it ends, then its end (see `close_session`).
///
/// Not an `async fn`, for the reason given at [`serve`]: an `async fn`
/// would hold the connection, the session and the queue twice (as its
/// arguments and as its locals) for the session's whole life; the block
/// uses what it captured in place.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice (see above)"
)]
fn run_to_end(
    mut conn: Conn,
    mut session: Session,
    mut rx: Outbox,
) -> impl Future<Output = ()> + Send {
    async move {
        let end = conn.run_bound(&mut session, &mut rx).await;
        Box::pin(close_session(conn, session, rx, end)).await;
    }
}
/// The framer's limits once the client has authenticated.
fn full_limits(config: &Config) -> Limits {
    Limits {
        max_stanza_bytes: config.max_stanza_bytes,
        max_depth: config.max_depth,
        max_attrs: config.max_attributes,
    }
}

/// Gives a resuming connection to the detached session's task, which takes
/// it over (XEP-0198 §5), or fails the resumption if that session just ended.
async fn hand_over(conn: Conn, slot: oneshot::Sender<Takeover>, h: u32, success: Option<Element>) {
    if let Err(Takeover::Here(takeover)) = slot.send(Takeover::Here(Resumption {
        conn: Box::new(conn),
        h,
        success,
    })) {
        let mut conn = takeover.conn;
        let _ = conn.send(&sm::failed("item-not-found")).await;
        conn.finish(End::Closed).await;
    }
}

/// Everything after the session loop: unbinds, delivers or stores what
/// was queued, and ends the stream.
async fn close_session(mut conn: Conn, mut session: Session, mut rx: Outbox, end: End) {
    if matches!(end, End::Moved) {
        // XEP-0198 §5: the connection the session was resumed from, if it
        // was still open, is closed; the session itself lives on elsewhere.
        let moved = StreamError::new(StreamCondition::Conflict)
            .with_text("the session was resumed on another connection");
        return conn.finish(End::Error(moved)).await;
    }
    let server = conn.server.clone();
    let handle = session.handle.clone();
    if let Some(sm) = &session.sm {
        server.resumption.remove(&sm.id, handle.id);
    }
    server.sessions.unbind(&handle);
    // Whoever still sends to this handle is refused and delivers elsewhere.
    rx.close();
    let had_sm = session.sm.is_some();
    let mut undelivered: Vec<Element> = session
        .sm
        .take()
        .map(SmState::into_undelivered)
        .unwrap_or_default();
    undelivered.extend(session.held.take());
    let mut queued = Vec::new();
    rx.drain_untracked(&mut queued);
    if matches!(end, End::Gone) {
        undelivered.extend(queued);
    } else {
        // Stanzas queued before the end (e.g. the answer to the client's
        // last request) still go out before the stream error. Bounded in
        // time: the session may have ended because it stopped reading.
        // What does not make it is not lost: it goes with the undelivered,
        // and under stream management so does what the client cannot
        // acknowledge any more.
        let mut queued = std::collections::VecDeque::from(queued);
        let mut written = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Some(el) = queued.front() {
                if conn.send(el).await.is_err() {
                    break;
                }
                written.extend(queued.pop_front().filter(|_| had_sm));
            }
        })
        .await;
        undelivered.extend(written);
        undelivered.extend(queued);
    }
    server.clone().session_ended(&handle, undelivered).await;
    crate::auth::anonymous::session_closed(&server, handle.jid.bare()).await;
    tracing::info!(jid = %handle.jid, "session ended");
    if !matches!(end, End::Gone) {
        conn.finish(end).await;
    }
}

/// What negotiation produced.
enum Negotiated {
    /// A bound session, with stream management if Bind2 enabled it inline.
    Bound(Arc<SessionHandle>, Outbox, Option<InlineSm>),
    /// The client asked to resume a detached session (XEP-0198 §5).
    /// With the SASL2 `<success/>` to wrap `<resumed/>` in, when resumed inline.
    Resume(oneshot::Sender<Takeover>, u32, Option<Element>),
    /// Cluster mode: the session resumed was handed over by another node
    /// (`cluster::handoff`) and is bound here now; `h` and `<success/>` as
    /// for `Resume`.
    Arrived(Box<crate::cluster::handoff::Arrived>, u32, Option<Element>),
}

/// What negotiation produced, other than a session bound here.
enum Unbound {
    Resume(oneshot::Sender<Takeover>, u32, Option<Element>),
    Arrived(Box<crate::cluster::handoff::Arrived>, u32, Option<Element>),
    Failed(End),
}

impl Negotiated {
    /// The bound session's parts, or what else happened.
    fn bound(
        negotiated: Result<Negotiated, End>,
    ) -> Result<(Arc<SessionHandle>, Outbox, Option<InlineSm>), Unbound> {
        match negotiated {
            Ok(Negotiated::Bound(handle, rx, inline)) => Ok((handle, rx, inline)),
            Ok(Negotiated::Resume(slot, h, success)) => Err(Unbound::Resume(slot, h, success)),
            Ok(Negotiated::Arrived(arrived, h, success)) => {
                Err(Unbound::Arrived(arrived, h, success))
            }
            Err(end) => Err(Unbound::Failed(end)),
        }
    }
}

/// Why the session loop returned.
enum Outcome {
    End(End),
    /// A new connection resumed this session.
    Takeover(Takeover),
}

/// What ends a session's wait for resumption (or its current connection).
pub(crate) enum Takeover {
    /// A connection to this node resumes it.
    Here(Resumption),
    /// A client resumes it on another cluster node, which asks for it.
    Elsewhere(crate::cluster::handoff::Ask),
}

/// A resuming connection handed to the session it resumes.
pub(crate) struct Resumption {
    conn: Box<Conn>,
    /// The client's count of stanzas it received.
    h: u32,
    /// SASL2 inline resumption: `<resumed/>` goes inside this `<success/>`.
    success: Option<Element>,
}

/// Stream management enabled inline by Bind2.
struct InlineSm {
    state: SmState,
    takeover: Option<oneshot::Receiver<Takeover>>,
}
/// Per-session state owned by the connection task.
struct Session {
    handle: Arc<SessionHandle>,
    sm: Option<SmState>,
    held: Held,
    takeover: Option<oneshot::Receiver<Takeover>>,
}

impl Session {
    fn resumable(&self) -> bool {
        self.sm.as_ref().is_some_and(|sm| sm.resumable)
    }
}

/// One client connection: what negotiation and the session loop know,
/// over whichever transport carries it.
struct Conn {
    server: Arc<Server>,
    /// The live configuration when the connection came: its limits and
    /// timeouts (`Server::live`), read here rather than per stanza.
    config: Arc<Config>,
    link: Link,
    /// The virtual host this stream is for, from the client's header.
    /// A `Box<str>`, not a `String`: see `footprint.rs` (the task's size).
    host: Option<Box<str>>,
    /// The default language of the client's stanzas, from its latest
    /// header (RFC 6120 §4.7.4); stamped on those that carry none.
    lang: Option<Box<str>>,
    header_sent: bool,
    /// Output held back to go out with the next write: our stream header
    /// waits for the features, so that a stream (re)start costs the client
    /// one TLS record and one wake-up instead of two.
    unsent: Outgoing,
    /// What only negotiation needs; gone once a session is bound.
    neg: NegotiationSlot,
    peer: SocketAddr,
    bucket: TokenBucket,
    /// This connection's unfinished stanza, charged to the server-wide budget.
    partial: PartialCharge,
    /// Counts this connection against its address while it lives.
    _permit: Option<ConnectionPermit>,
    /// What the client's latest stanza left for the next one, which is
    /// often like it: its `from` text, its `to` parsed, the session that
    /// names (the router's `handle_from_client`). Let go when idle.
    memo: crate::client_memo::ClientMemo,
}

/// The state of stream negotiation that a bound session has no use for.
///
/// Kept out of [`Conn`] proper because a session's task holds its `Conn`
/// inline for the session's whole life, and these fields (two optional
/// JIDs, an invitation token, counters) would put every idle session's
/// task into the allocator's next size class (issue #21: 1,872 bytes
/// against the 1,792-byte class).
struct Negotiation {
    /// The authenticated account, once SASL succeeded.
    user: Option<BareJid>,
    auth_failures: u32,
    /// Accounts this stream registered in-band (or is registering).
    registrations: u32,
    /// The invitation token accepted by XEP-0445 `<preauth/>` on this stream.
    preauth: Option<crate::invites::PreAuth>,
    /// Tokens refused on this stream (a few typos are fine; guessing is not).
    preauth_failures: u32,
    /// The account named in the current SASL exchange, once known.
    attempted: Option<BareJid>,
    /// The current SASL exchange uses XEP-0388 framing.
    sasl2: bool,
    /// The FAST token just used is due for rotation.
    fast_rotate: bool,
}

impl Negotiation {
    /// Where every negotiation starts, and what a released slot reads as.
    const START: Negotiation = Negotiation {
        user: None,
        auth_failures: 0,
        registrations: 0,
        preauth: None,
        preauth_failures: 0,
        attempted: None,
        sasl2: false,
        fast_rotate: false,
    };
}

/// A [`Negotiation`] on the heap only while one runs: one pointer in
/// [`Conn`]. Reading an empty slot sees [`Negotiation::START`]; the first
/// write allocates.
#[derive(Default)]
struct NegotiationSlot(Option<Box<Negotiation>>);

static NEGOTIATION_START: Negotiation = Negotiation::START;

impl NegotiationSlot {
    /// Frees the state once negotiation is over (a session was bound, or
    /// this connection took over a detached one).
    fn release(&mut self) {
        self.0 = None;
    }
}

impl std::ops::Deref for NegotiationSlot {
    type Target = Negotiation;
    fn deref(&self) -> &Negotiation {
        self.0.as_deref().unwrap_or(&NEGOTIATION_START)
    }
}

impl std::ops::DerefMut for NegotiationSlot {
    fn deref_mut(&mut self) -> &mut Negotiation {
        self.0.get_or_insert_with(|| Box::new(Negotiation::START))
    }
}

impl Conn {
    /// Stream negotiation, which must end in a bound (or resumed) session
    /// within `auth_timeout`.
    async fn negotiate_in_time(&mut self, direct_tls: bool) -> Result<Negotiated, End> {
        let server = self.server.clone();
        let deadline = tokio::time::Instant::now() + self.config.auth_timeout;
        let negotiated = tokio::time::timeout_at(deadline, async {
            if direct_tls && let Some(tcp) = self.link.tcp_mut() {
                tcp.upgrade(&server.tls).await.map_err(|e| {
                    tracing::debug!(error = %e, "direct TLS handshake failed");
                    End::Gone
                })?;
            }
            self.negotiate().await
        })
        .await;
        negotiated.unwrap_or_else(|_| {
            Err(stream_error(
                StreamCondition::ConnectionTimeout,
                "authentication took too long",
            ))
        })
    }

    /// Appends `el` to `out` in this transport's framing.
    fn encode(&self, el: &Element, out: &mut Outgoing) {
        self.link.encode(el, out);
    }

    /// Writes `out` (after anything held back in `unsent`).
    async fn write(&mut self, out: Outgoing) -> Result<(), End> {
        // Taken, not cleared: a session must not keep the capacity of its
        // last features for its whole life.
        let mut all = std::mem::take(&mut self.unsent);
        all.append(out);
        let written = {
            let mut write = std::pin::pin!(self.link.write(&all));
            // Nearly every write is taken by the socket at once: only one
            // that has to wait gets its timer (reading the clock and
            // registering with the runtime's timer, once per batch
            // written, otherwise).
            let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
            match first {
                Poll::Ready(r) => Ok(r),
                // Bounded in time: a client that stops reading fills the
                // socket buffers, and an unbounded write would wedge this
                // task (no reads, no close requests, no timeouts) while
                // the session stays bound.
                Poll::Pending => tokio::time::timeout(self.config.write_timeout, write).await,
            }
        };
        all.recycle();
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => {
                self.server.metrics.c2s_stalled_writes.inc();
                tracing::info!(peer = %self.peer, "a write stalled; dropping the connection");
                Err(End::Gone)
            }
        }
    }

    async fn send(&mut self, el: &Element) -> Result<(), End> {
        let mut out = Outgoing::default();
        self.encode(el, &mut out);
        self.write(out).await
    }

    /// Next stream event, receiving more as needed.
    async fn next_event(&mut self) -> Result<StreamEvent, End> {
        loop {
            if let Some(ev) = self.link.next_event()? {
                return Ok(ev);
            }
            self.charge_partial()?;
            let n = self.link.receive().await.map_err(read_failed)?;
            if n == 0 {
                return Err(End::Gone);
            }
            self.pace(n).await;
        }
    }

    /// Charges what the transport holds of an unfinished element to the
    /// server-wide budget; a connection that would exceed it is closed
    /// with `resource-constraint` rather than let memory grow.
    fn charge_partial(&mut self) -> Result<(), End> {
        if self.partial.set(self.link.buffered()) {
            return Ok(());
        }
        tracing::warn!(peer = %self.peer, "partial stanza budget exhausted");
        Err(stream_error(
            StreamCondition::ResourceConstraint,
            "the server holds too many partial stanzas",
        ))
    }

    /// Applies the read rate limit: pauses reading when over the allowance.
    async fn pace(&mut self, n: usize) {
        let wait = self.bucket.take(n, std::time::Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Next depth-1 element of the current stream.
    async fn next_element(&mut self) -> Result<Element, End> {
        match self.next_event().await? {
            StreamEvent::Stanza(el) => Ok(el),
            StreamEvent::Close => Err(End::Closed),
            StreamEvent::Open(_) => Err(stream_error(
                StreamCondition::BadFormat,
                "stream header inside the stream",
            )),
        }
    }

    /// Sends the stream error (with a header first if none was sent) and closes.
    async fn finish(mut self, end: End) {
        let mut out = std::mem::take(&mut self.unsent);
        if let End::Error(e) = &end {
            if !self.header_sent {
                let from = self.host.as_deref().unwrap_or(&self.server.config.hosts[0]);
                let open = StreamOpen {
                    id: &random_id(),
                    from,
                    lang: None,
                };
                self.link.encode_open(&open, &mut out);
            }
            tracing::debug!(condition = e.condition.as_str(), text = ?e.text, "stream error");
            self.link.encode(&e.to_element(), &mut out);
        }
        self.link.encode_close(&mut out);
        // A peer that is gone fails the first write: no more attempts.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            self.link.write(&out).await?;
            self.link.shutdown().await
        })
        .await;
    }
}

/// A failed read ends the stream: silently, unless the peer sent a
/// decompression bomb (XEP-0138), which gets `policy-violation`.
fn read_failed(e: std::io::Error) -> End {
    if is_decompression_bomb(&e) {
        tracing::info!("compressed data over the inflation bound");
        return stream_error(
            StreamCondition::PolicyViolation,
            "compressed data inflates too much",
        );
    }
    End::Gone
}

/// Validates an IQ request's shape: type get/set, an id, exactly one child.
pub(crate) fn iq_request(el: &Element) -> Result<(IqKind, Element), StanzaError> {
    let kind = match el.attr("type") {
        Some("get") => IqKind::Get,
        Some("set") => IqKind::Set,
        _ => return Err(StanzaError::modify(Condition::BadRequest)),
    };
    let mut children = el.children();
    match (el.attr("id"), children.next(), children.next()) {
        (Some(_), Some(payload), None) => Ok((kind, payload.clone())),
        _ => Err(StanzaError::modify(Condition::BadRequest)),
    }
}
