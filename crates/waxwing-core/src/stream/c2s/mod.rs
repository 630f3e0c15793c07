//! One client connection: stream negotiation (STARTTLS, SASL, bind), then
//! the bound session loop. One task per connection owns the socket; other
//! tasks reach it only through its [`SessionHandle`].

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use std::collections::HashMap;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;

use tokio::sync::oneshot;
use tracing::Instrument;
use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::sasl::{
    self, ChannelBindingData, Mechanism, SaslError, ScramHash, ScramSecret, ScramServer,
};
use waxwing_proto::stanza::{self, Condition, StanzaError, StreamCondition, StreamError};
use waxwing_proto::xml::{Element, Framer, Limits, StreamEvent, StreamHeader};
use waxwing_proto::{lang, ns};

use crate::abuse::{ConnectionPermit, PartialCharge, TokenBucket};
use crate::hooks::{Cx, Event, Iq, IqKind, IqTarget};
use crate::queue::{Outbox, Receipt};
use crate::router::{Server, call_iq_handler};
use crate::session::SessionFlag;
use crate::session::SessionHandle;
use crate::stream::csi::{self, Held};
use crate::stream::sm::{self, SmState};
use crate::stream::transport::{Transport, is_decompression_bomb};
use crate::{credentials, random_id};

mod fast;
mod sasl2;

/// Bytes read from the socket at a time. Small on purpose: it lives in every
/// idle session, and XMPP stanzas are usually far smaller.
const READ_CHUNK: usize = 2048;
/// Stanzas written in one batch when a queue has a backlog.
const WRITE_BATCH: usize = 64;

/// Why a stream ended.
enum End {
    /// Send this stream error, then close.
    Error(StreamError),
    /// The peer closed its stream; we answer with our footer.
    Closed,
    /// The connection broke (EOF or I/O error without `</stream:stream>`).
    Gone,
}

impl From<StreamError> for End {
    fn from(e: StreamError) -> Self {
        End::Error(e)
    }
}

fn stream_error(c: StreamCondition, text: &str) -> End {
    End::Error(StreamError::new(c).with_text(text))
}

/// Runs one client connection to completion.
pub(crate) async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    let span = tracing::info_span!("c2s", %peer);
    serve_connection(server, tcp, peer, direct_tls)
        .instrument(span)
        .await
}

/// A tokio task stores its future inline, sized for the largest state the
/// future can be in, for as long as the task lives. Most sessions spend
/// their life idle in `run_session`'s select, so every other phase
/// (negotiation, handling a stanza, writing, the goodbye) is boxed: its
/// state then exists only while that phase runs, instead of padding the
/// task of every idle session (4.4 KB of future before, 2.4 KB after).
async fn serve_connection(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    let _ = tcp.set_nodelay(true);
    // Nothing before authentication needs more than a few KiB (a stream
    // header, a SASL exchange, a registration): unauthenticated
    // connections are cheap to open, so each may hold little.
    let limits = Limits {
        max_stanza_bytes: server.config.max_stanza_bytes_before_auth,
        ..full_limits(&server)
    };
    let permit = server
        .connections
        .try_acquire(peer.ip(), server.config.max_connections_per_ip);
    let refused = permit.is_none();
    let local = tcp.local_addr().ok();
    let mut conn = Conn {
        framer: Framer::new(limits, ns::CLIENT),
        io: Transport::Plain(tcp),
        server: server.clone(),
        host: None,
        lang: None,
        header_sent: false,
        unsent: String::new(),
        cb: ChannelBindingData::default(),
        user: None,
        auth_failures: 0,
        registrations: 0,
        peer,
        local,
        attempted: None,
        sasl2: false,
        fast_rotate: false,
        bucket: TokenBucket::new(
            server.config.read_rate_bytes,
            server.config.read_burst_bytes,
        ),
        partial: server.partial_stanzas.charge(),
        _permit: permit,
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
    let (handle, mut rx, inline_sm) = match Box::pin(conn.negotiate_in_time(direct_tls)).await {
        Ok(Negotiated::Bound(handle, rx, inline)) => (handle, rx, inline),
        Ok(Negotiated::Resume(slot, h, success)) => {
            return Box::pin(hand_over(conn, slot, h, success)).await;
        }
        Err(end) => return Box::pin(conn.finish(end)).await,
    };
    tracing::info!(jid = %handle.jid, "session bound");
    let (sm, takeover) = match inline_sm {
        Some(i) => (Some(i.state), i.takeover),
        None => (None, None),
    };
    let mut session = Session {
        handle,
        sm,
        held: Held::default(),
        takeover,
    };
    let end = conn.run_bound(&mut session, &mut rx).await;
    Box::pin(close_session(conn, session, rx, end)).await;
}

/// The framer's limits once the client has authenticated.
fn full_limits(server: &Server) -> Limits {
    Limits {
        max_stanza_bytes: server.config.max_stanza_bytes,
        max_depth: server.config.max_depth,
        max_attrs: server.config.max_attributes,
    }
}

/// Gives a resuming connection to the detached session's task, which takes
/// it over (XEP-0198 §5), or fails the resumption if that session just ended.
async fn hand_over(conn: Conn, slot: oneshot::Sender<Takeover>, h: u32, success: Option<Element>) {
    if let Err(takeover) = slot.send(Takeover {
        conn: Box::new(conn),
        h,
        success,
    }) {
        let mut conn = takeover.conn;
        let _ = conn.send(&sm::failed("item-not-found")).await;
        conn.finish(End::Closed).await;
    }
}

/// Everything after the session loop: unbinds, delivers or stores what
/// was queued, and ends the stream.
async fn close_session(mut conn: Conn, mut session: Session, mut rx: Outbox, end: End) {
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
    server
        .clone()
        .emit(Some(handle.clone()), Event::SessionClosed(handle.clone()))
        .await;
    // XEP-0198 §5: what the client never acknowledged is not lost.
    server
        .clone()
        .store_undelivered(handle.jid.bare(), undelivered)
        .await;
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
}

/// Reads what the transport has into the framer; `Ok(0)` is end of stream.
///
/// The scratch array lives on the stack for one poll only, never across a
/// `Pending`, so the hundreds of thousands of idle sessions this server is
/// built for hold no read buffer of their own (a `Pending` poll_read
/// consumed nothing: tokio-rustls keeps undecrypted bytes in rustls).
fn read_into<'a>(
    io: &'a mut Transport,
    framer: &'a mut Framer,
) -> impl Future<Output = std::io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        let mut scratch = [0u8; READ_CHUNK];
        let mut buf = tokio::io::ReadBuf::new(&mut scratch);
        std::task::ready!(std::pin::Pin::new(&mut *io).poll_read(cx, &mut buf))?;
        framer.feed(buf.filled());
        std::task::Poll::Ready(Ok(buf.filled().len()))
    })
}

/// How long a bound session must send nothing before its framer's parser
/// and buffers are released. Releasing after every read would rebuild the
/// parser for nearly every stanza of a busy session; an idle session, the
/// common case, releases once. Short, so that a wave of logins does not
/// hold every parser at once (the allocator keeps that high-water mark).
const FRAMER_RELEASE_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Why the session loop returned.
enum Outcome {
    End(End),
    /// A new connection resumed this session.
    Takeover(Takeover),
}

/// A resuming connection handed to the session it resumes.
pub(crate) struct Takeover {
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

/// Detached-but-resumable sessions, by stream-management id.
#[derive(Default)]
pub(crate) struct ResumptionTable {
    slots: std::sync::Mutex<HashMap<String, ResumeSlot>>,
}

struct ResumeSlot {
    jid: FullJid,
    session_id: u64,
    tx: oneshot::Sender<Takeover>,
}

impl ResumptionTable {
    fn insert(&self, id: String, jid: FullJid, session_id: u64) -> oneshot::Receiver<Takeover> {
        let (tx, rx) = oneshot::channel();
        self.slots.lock().expect("resumption lock").insert(
            id,
            ResumeSlot {
                jid,
                session_id,
                tx,
            },
        );
        rx
    }

    /// The slot for `id`, if it belongs to `user` (never someone else's session).
    fn take(&self, id: &str, user: &BareJid) -> Option<(oneshot::Sender<Takeover>, FullJid)> {
        let mut slots = self.slots.lock().expect("resumption lock");
        if slots.get(id).is_some_and(|s| s.jid.bare() == user) {
            return slots.remove(id).map(|s| (s.tx, s.jid));
        }
        None
    }

    fn remove(&self, id: &str, session_id: u64) {
        let mut slots = self.slots.lock().expect("resumption lock");
        if slots.get(id).is_some_and(|s| s.session_id == session_id) {
            slots.remove(id);
        }
    }
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

struct Conn {
    server: Arc<Server>,
    io: Transport,
    framer: Framer,
    /// The virtual host this stream is for, from the client's header.
    host: Option<String>,
    /// The default language of the client's stanzas, from its latest
    /// header (RFC 6120 §4.7.4); stamped on those that carry none.
    lang: Option<Box<str>>,
    header_sent: bool,
    /// Output held back to go out with the next write: our stream header
    /// waits for the features, so that a stream (re)start costs the client
    /// one TLS record and one wake-up instead of two.
    unsent: String,
    cb: ChannelBindingData,
    user: Option<BareJid>,
    auth_failures: u32,
    /// Accounts this stream registered in-band (or is registering).
    registrations: u32,
    peer: SocketAddr,
    /// The listener's address: `[auth.listeners]` may narrow its mechanisms.
    local: Option<SocketAddr>,
    bucket: TokenBucket,
    /// This connection's unfinished stanza, charged to the server-wide budget.
    partial: PartialCharge,
    /// Counts this connection against its address while it lives.
    _permit: Option<ConnectionPermit>,
    /// The account named in the current SASL exchange, once known.
    attempted: Option<BareJid>,
    /// The current SASL exchange uses XEP-0388 framing.
    sasl2: bool,
    /// The FAST token just used is due for rotation.
    fast_rotate: bool,
}

impl Conn {
    /// Stream negotiation, which must end in a bound (or resumed) session
    /// within `auth_timeout`.
    async fn negotiate_in_time(&mut self, direct_tls: bool) -> Result<Negotiated, End> {
        let server = self.server.clone();
        let deadline = tokio::time::Instant::now() + server.config.auth_timeout;
        let negotiated = tokio::time::timeout_at(deadline, async {
            if direct_tls {
                self.io.upgrade(&server.tls).await.map_err(|e| {
                    tracing::debug!(error = %e, "direct TLS handshake failed");
                    End::Gone
                })?;
                self.cb = self.io.channel_binding(&server.tls);
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

    /// The session loop, across connection losses and resumptions, until
    /// the session ends.
    async fn run_bound(&mut self, session: &mut Session, rx: &mut Outbox) -> End {
        let handle = session.handle.clone();
        loop {
            match self.run_session(session, rx).await {
                Outcome::Takeover(t) => Box::pin(self.adopt(session, t)).await,
                Outcome::End(End::Gone) if session.resumable() => {
                    tracing::info!(jid = %handle.jid, "connection lost; session kept for resumption");
                    handle.set_flag(SessionFlag::Detached, true);
                    let resumed = self.wait_for_resumption(session).await;
                    handle.set_flag(SessionFlag::Detached, false);
                    match resumed {
                        Some(t) => Box::pin(self.adopt(session, t)).await,
                        None => return End::Gone,
                    }
                }
                Outcome::End(end) => return end,
            }
        }
    }

    async fn write(&mut self, data: &str) -> Result<(), End> {
        // Taken, not cleared: a session must not keep the capacity of its
        // last features for its whole life.
        let mut unsent = std::mem::take(&mut self.unsent);
        let bytes = if unsent.is_empty() {
            data.as_bytes()
        } else {
            unsent.push_str(data);
            unsent.as_bytes()
        };
        // Bounded in time: a client that stops reading fills the socket
        // buffers, and an unbounded write would wedge this task (no reads,
        // no close requests, no timeouts) while the session stays bound.
        let written = tokio::time::timeout(self.server.config.write_timeout, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await;
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
        let xml = el.to_xml_in(ns::CLIENT);
        self.write(&xml).await
    }

    /// Next stream event, reading more bytes as needed.
    async fn next_event(&mut self) -> Result<StreamEvent, End> {
        loop {
            if let Some(ev) = self.framer.next_event()? {
                return Ok(ev);
            }
            self.charge_partial()?;
            let n = read_into(&mut self.io, &mut self.framer)
                .await
                .map_err(read_failed)?;
            if n == 0 {
                return Err(End::Gone);
            }
            self.pace(n).await;
        }
    }

    /// Charges what the framer holds of an unfinished element to the
    /// server-wide budget; a connection that would exceed it is closed
    /// with `resource-constraint` rather than let memory grow.
    fn charge_partial(&mut self) -> Result<(), End> {
        if self.partial.set(self.framer.buffered()) {
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

    /// Reads the client's stream header and answers with ours (RFC 6120 §4.2).
    async fn open_stream(&mut self) -> Result<(), End> {
        let header = match self.next_event().await? {
            StreamEvent::Open(h) => h,
            _ => {
                return Err(stream_error(
                    StreamCondition::BadFormat,
                    "expected a stream header",
                ));
            }
        };
        let host = self.check_header(&header);
        let from = match &host {
            Ok(h) => h.clone(),
            Err(_) => self.server.config.hosts[0].clone(),
        };
        let id = random_id();
        // RFC 6120 §4.7.4: the client's language where we have texts in it.
        // Only a well-formed tag is kept, so nothing else reaches the header.
        let lang = header.lang.filter(|l| lang::is_well_formed(l));
        let head = format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' id='{id}' from='{from}' version='1.0' xml:lang='{}'>",
            ns::CLIENT,
            ns::STREAM,
            lang::reply_language(lang.as_deref()),
        );
        self.lang = lang.map(String::into_boxed_str);
        self.header_sent = true;
        self.unsent = head; // goes out with the features, or the error
        let host = host?;
        if self.host.as_ref().is_some_and(|h| h != &host) {
            return Err(stream_error(
                StreamCondition::HostUnknown,
                "the host changed on stream restart",
            ));
        }
        self.host = Some(host);
        Ok(())
    }

    fn check_header(&self, header: &StreamHeader) -> Result<String, End> {
        let Some(to) = header.to.as_deref() else {
            return Err(stream_error(
                StreamCondition::HostUnknown,
                "the stream header has no 'to'",
            ));
        };
        let host = BareJid::domain_only(to)
            .map_err(|_| stream_error(StreamCondition::HostUnknown, "'to' is not a domain"))?
            .domain()
            .to_string();
        if !self.server.config.is_local_host(&host) {
            return Err(stream_error(
                StreamCondition::HostUnknown,
                "this server does not serve that host",
            ));
        }
        // RFC 6120 §4.7.5: a missing version means pre-1.0, which has no
        // features and no SASL; a higher major version is answered with ours.
        match header
            .version
            .as_deref()
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
        {
            Some(major) if major >= 1 => Ok(host),
            _ => Err(stream_error(
                StreamCondition::UnsupportedVersion,
                "version 1.0 is required",
            )),
        }
    }

    /// Negotiates until a resource is bound.
    async fn negotiate(&mut self) -> Result<Negotiated, End> {
        // SASL2 authenticates without a stream restart (XEP-0388 §2.6).
        let mut restart = true;
        loop {
            if restart {
                self.open_stream().await?;
            }
            restart = true;
            let tls = self.io.is_tls();
            let config = &self.server.config;
            let sasl_allowed = tls || !config.require_encryption;
            let mut features = Element::new("features", ns::STREAM);
            if self.user.is_none() {
                if !tls {
                    let mut starttls = Element::new("starttls", ns::TLS);
                    if config.require_encryption {
                        starttls.push_child(Element::new("required", ns::TLS));
                    }
                    features.push_child(starttls);
                }
                if sasl_allowed {
                    let mut mechs = Element::new("mechanisms", ns::SASL);
                    for m in self.mechanisms_offered(tls) {
                        mechs.push_child(Element::new("mechanism", ns::SASL).with_text(m));
                    }
                    features.push_child(mechs);
                    if self.cb.any()
                        && self
                            .mechanisms_offered(tls)
                            .iter()
                            .any(|m| m.ends_with("-PLUS"))
                    {
                        // XEP-0440: tell clients which binding types -PLUS supports.
                        let mut cb = Element::new("sasl-channel-binding", ns::SASL_CB);
                        for (ty, have) in [
                            ("tls-exporter", self.cb.tls_exporter.is_some()),
                            (
                                "tls-server-end-point",
                                self.cb.tls_server_end_point.is_some(),
                            ),
                        ] {
                            if have {
                                cb.push_child(
                                    Element::new("channel-binding", ns::SASL_CB)
                                        .with_attr("type", ty),
                                );
                            }
                        }
                        features.push_child(cb);
                    }
                    if config.registration_open
                        && !config
                            .auth
                            .is_anonymous(self.host.as_deref().unwrap_or_default())
                    {
                        features.push_child(Element::new("register", ns::REGISTER_FEATURE));
                    }
                    if tls {
                        let mechanisms = self.mechanisms_offered(tls);
                        features.push_child(sasl2::feature(&mechanisms, &self.cb));
                    }
                }
            } else {
                features.push_child(Element::new("bind", ns::BIND));
                features.push_child(Element::new("sm", sm::NS));
                features.push_child(Element::new("csi", csi::NS));
                features.push_child(
                    Element::new("session", ns::SESSION)
                        .with_child(Element::new("optional", ns::SESSION)),
                );
                if config.compression_enabled && !self.io.is_compressed() {
                    features.push_child(compression_feature());
                }
                for el in self.server.stream_features() {
                    features.push_child(el);
                }
            }
            self.write(&stream_prefixed(&features)).await?;

            loop {
                let el = self.next_element().await?;
                if self.user.is_none() {
                    if el.is("starttls", ns::TLS) && !tls {
                        self.starttls().await?;
                        break;
                    }
                    if el.is("auth", ns::SASL) {
                        if !sasl_allowed {
                            self.sasl_failure("encryption-required").await?;
                            continue;
                        }
                        if let Some(additional) = self.authenticate(&el).await? {
                            let success = Element::new("success", ns::SASL).with_text(
                                additional
                                    .map(|d| sasl::encode_payload(&d))
                                    .unwrap_or_default(),
                            );
                            self.write(&success.to_xml()).await?;
                            self.framer.reset();
                            break;
                        }
                        continue;
                    }
                    if el.is("authenticate", sasl2::NS) {
                        if !tls {
                            // XEP-0388 §5: SASL2 only over TLS.
                            self.sasl2 = true;
                            self.sasl_failure("encryption-required").await?;
                            self.sasl2 = false;
                            continue;
                        }
                        match self.sasl2_authenticate(&el).await? {
                            None => continue,
                            Some(sasl2::Outcome::Ready(negotiated)) => return Ok(negotiated),
                            Some(sasl2::Outcome::Authenticated) => {
                                restart = false;
                                break;
                            }
                        }
                    }
                    if el.is("iq", ns::CLIENT) && sasl_allowed && is_register_iq(&el) {
                        self.pre_auth_register(el).await?;
                        continue;
                    }
                    return Err(stream_error(
                        StreamCondition::NotAuthorized,
                        "authenticate first",
                    ));
                }
                if el.is("compress", COMPRESS_NS) {
                    if self.compress(&el).await? {
                        break;
                    }
                    continue;
                }
                if el.is("iq", ns::CLIENT) && el.child("bind", ns::BIND).is_some() {
                    if let Some((handle, rx)) = self.bind(&el).await? {
                        return Ok(Negotiated::Bound(handle, rx, None));
                    }
                    continue;
                }
                if el.is("resume", sm::NS) {
                    let user = self.user.clone().expect("authenticated");
                    let slot = el
                        .attr("previd")
                        .and_then(|id| self.server.resumption.take(id, &user))
                        .map(|(tx, _)| tx);
                    match (slot, sm::parse_h(&el)) {
                        (Some(slot), Some(h)) => return Ok(Negotiated::Resume(slot, h, None)),
                        _ => self.send(&sm::failed("item-not-found")).await?,
                    }
                    continue;
                }
                return Err(stream_error(
                    StreamCondition::NotAuthorized,
                    "bind a resource first",
                ));
            }
        }
    }

    /// XEP-0138: `<compress/>` after authentication. True when the stream
    /// is now compressed (and restarts).
    async fn compress(&mut self, el: &Element) -> Result<bool, End> {
        let failure = |condition: &str| {
            Element::new("failure", COMPRESS_NS)
                .with_child(Element::new(condition, COMPRESS_NS))
                .to_xml()
        };
        if !self.server.config.compression_enabled || self.io.is_compressed() {
            self.write(&failure("setup-failed")).await?;
            return Ok(false);
        }
        let method = el.child("method", COMPRESS_NS).map(|m| m.text());
        if method.as_deref().map(str::trim) != Some("zlib") {
            self.write(&failure("unsupported-method")).await?;
            return Ok(false);
        }
        // As with STARTTLS: nothing may be pipelined across the switch.
        if self.framer.buffered() > 0 {
            return Err(stream_error(
                StreamCondition::PolicyViolation,
                "data after <compress/>",
            ));
        }
        self.write(&format!("<compressed xmlns='{COMPRESS_NS}'/>"))
            .await?;
        if self
            .io
            .compress(self.server.config.compression_max_ratio)
            .is_err()
        {
            return Err(End::Gone);
        }
        self.framer.reset();
        Ok(true)
    }

    async fn starttls(&mut self) -> Result<(), End> {
        // Bytes pipelined after <starttls/> would be processed as if they
        // came over TLS (CVE-2011-0411 class): refuse them.
        if self.framer.buffered() > 0 {
            return Err(stream_error(
                StreamCondition::PolicyViolation,
                "data after <starttls/>",
            ));
        }
        self.write(&Element::new("proceed", ns::TLS).to_xml())
            .await?;
        let tls = self.server.tls.clone();
        if let Err(e) = self.io.upgrade(&tls).await {
            tracing::debug!(error = %e, "STARTTLS handshake failed");
            return Err(End::Gone);
        }
        self.cb = self.io.channel_binding(&tls);
        self.framer.reset();
        self.header_sent = false;
        Ok(())
    }

    async fn sasl_failure(&mut self, condition: &str) -> Result<(), End> {
        let failure =
            Element::new("failure", self.sasl_ns()).with_child(Element::new(condition, ns::SASL));
        self.write(&failure.to_xml()).await
    }

    /// One SASL exchange (either framing). `Some(additional data)` on
    /// success, with `self.user` set; `None` after a failure the client may
    /// retry; Err once too many failures piled up.
    async fn authenticate(&mut self, auth: &Element) -> Result<Option<Option<Vec<u8>>>, End> {
        let ip = self.peer.ip();
        let server = self.server.clone();
        let throttle = &server.auth_throttle;
        self.attempted = None;
        // A FAST token is 32 random bytes, bound to one client: presenting
        // a valid one is not guessing, so the owner gets in even from a
        // throttled network (a failed one still counts as a failure).
        let fast = self.sasl2 && auth.attr("mechanism").is_some_and(|m| m.starts_with("HT-"));
        let outcome = if !fast && throttle.blocked(ip, None) {
            Err(SaslError::TemporaryAuthFailure)
        } else {
            let exchange = if fast {
                self.fast_exchange(auth).await?
            } else {
                self.sasl_exchange(auth).await?
            };
            match exchange {
                // A throttled (account, address prefix) stays throttled even
                // for the right password: otherwise guessing would not slow
                // down. Other prefixes are unaffected.
                Ok((user, _)) if !fast && throttle.blocked(ip, Some(&user)) => {
                    Err(SaslError::TemporaryAuthFailure)
                }
                other => other,
            }
        };
        match outcome {
            Ok((user, additional)) => {
                throttle.record_success(ip, &user);
                self.framer.set_limits(full_limits(&server));
                tracing::info!(%user, "authenticated");
                self.user = Some(user);
                Ok(Some(additional))
            }
            Err(e) => {
                self.sasl_failure(e.condition()).await?;
                if matches!(e, SaslError::Aborted) {
                    return Ok(None);
                }
                tracing::info!(user = ?self.attempted.as_ref().map(|u| u.to_string()), condition = e.condition(), "authentication failed");
                throttle.record_failure(ip, self.attempted.as_ref());
                self.auth_failures += 1;
                if self.auth_failures >= self.server.config.max_auth_failures {
                    return Err(stream_error(
                        StreamCondition::PolicyViolation,
                        "too many failed authentication attempts",
                    ));
                }
                Ok(None)
            }
        }
    }

    /// Reads the next SASL response; `<abort/>` and anything else end the exchange.
    async fn sasl_response(&mut self) -> Result<Result<Vec<u8>, SaslError>, End> {
        let el = self.next_element().await?;
        if el.is("abort", self.sasl_ns()) {
            return Ok(Err(SaslError::Aborted));
        }
        if !el.is("response", self.sasl_ns()) {
            return Err(stream_error(
                StreamCondition::NotAuthorized,
                "SASL exchange in progress",
            ));
        }
        Ok(sasl::decode_payload(&el.text()))
    }

    /// The mechanisms for this stream's host on this listener and connection.
    fn mechanisms_offered(&self, tls: bool) -> Vec<&'static str> {
        crate::auth::Authenticator::offered(
            &self.server.config,
            self.host.as_deref(),
            self.local,
            tls,
            &self.cb,
            self.io.peer_certificate().is_some(),
        )
    }

    fn sasl_ns(&self) -> &'static str {
        if self.sasl2 { sasl2::NS } else { ns::SASL }
    }

    async fn challenge(&mut self, data: &[u8]) -> Result<(), End> {
        // SASL2 has no "=" for empty data (XEP-0388 §2.1): empty is empty.
        let text = if self.sasl2 && data.is_empty() {
            String::new()
        } else {
            sasl::encode_payload(data)
        };
        let el = Element::new("challenge", self.sasl_ns()).with_text(text);
        self.write(&el.to_xml()).await
    }

    /// Ok((user, additional data for `<success/>`)) when the exchange succeeded.
    async fn sasl_exchange(
        &mut self,
        auth: &Element,
    ) -> Result<Result<(BareJid, Option<Vec<u8>>), SaslError>, End> {
        let tls = self.io.is_tls();
        let offered = self.mechanisms_offered(tls);
        let Some(mech) = auth
            .attr("mechanism")
            .filter(|m| offered.contains(m))
            .and_then(Mechanism::from_name)
        else {
            return Ok(Err(SaslError::InvalidMechanism));
        };
        let text = if self.sasl2 {
            auth.child("initial-response", sasl2::NS)
                .map(|r| r.text())
                .unwrap_or_default()
        } else {
            auth.text()
        };
        let initial = if text.trim().is_empty() {
            // No initial response: send an empty challenge and wait (RFC 6120 §6.4.2).
            self.challenge(&[]).await?;
            match self.sasl_response().await? {
                Ok(data) => data,
                Err(e) => return Ok(Err(e)),
            }
        } else {
            match sasl::decode_payload(&text) {
                Ok(d) => d,
                Err(e) => return Ok(Err(e)),
            }
        };
        let host = self.host.clone().unwrap_or_default();
        match mech {
            Mechanism::Plain => Ok(self.plain(&initial, &host).await.map(|u| (u, None))),
            Mechanism::Anonymous => {
                Ok(
                    crate::auth::anonymous::login(&self.server, &host, self.peer.ip(), &initial)
                        .await
                        .map(|u| (u, None)),
                )
            }
            Mechanism::External => {
                let cert = self.io.peer_certificate();
                Ok(
                    crate::auth::external::login(&self.server, &host, cert, &initial)
                        .await
                        .map(|u| (u, None)),
                )
            }
            Mechanism::Scram { hash, plus } => self.scram(hash, plus, &initial, &host).await,
        }
    }

    async fn plain(&mut self, data: &[u8], host: &str) -> Result<BareJid, SaslError> {
        let creds = sasl::parse_plain(data)?;
        let user =
            BareJid::new(Some(&creds.authcid), host).map_err(|_| SaslError::NotAuthorized)?;
        self.attempted = Some(user.clone());
        check_authzid(creds.authzid.as_deref(), &user)?;
        let server = self.server.clone();
        if let Some(verdict) = server
            .auth
            .external_plain(&server, &user, &creds.password)
            .await
        {
            return verdict.map(|()| user);
        }
        let secrets = self.lookup(&user).await?;
        let secret = secrets
            .iter()
            .find(|s| s.hash == ScramHash::Sha256)
            .or(secrets.first())
            .cloned();
        // An unknown account costs the same derivation as a known one, so
        // that the time to answer does not say which accounts exist.
        let (secret, exists) = match secret {
            Some(s) => (s, true),
            None => (
                credentials::decoy_secret(
                    &credentials::host_fake_salt_key(&self.server.fake_salt_key, host),
                    user.local().unwrap_or_default(),
                    self.server.config.scram_iterations,
                ),
                false,
            ),
        };
        // PBKDF2 takes milliseconds: keep it off the threads that serve streams.
        let password = creds.password;
        let ok = tokio::task::spawn_blocking(move || secret.verify_password(&password))
            .await
            .unwrap_or(false);
        if ok && exists {
            Ok(user)
        } else {
            Err(SaslError::NotAuthorized)
        }
    }

    async fn lookup(&self, user: &BareJid) -> Result<Vec<ScramSecret>, SaslError> {
        match self.server.stores.accounts.secrets(user).await {
            Ok(Some(list)) => Ok(list.iter().filter_map(credentials::from_stored).collect()),
            Ok(None) => Ok(Vec::new()),
            Err(e) => {
                tracing::error!(error = %e, "credential lookup failed");
                Err(SaslError::TemporaryAuthFailure)
            }
        }
    }

    async fn scram(
        &mut self,
        hash: ScramHash,
        plus: bool,
        first: &[u8],
        host: &str,
    ) -> Result<Result<(BareJid, Option<Vec<u8>>), SaslError>, End> {
        // RFC 5802 §6: a client's "y" (binding supported by it, not by us)
        // is a downgrade only when we advertised -PLUS; a host or listener
        // whose list leaves -PLUS out must accept it.
        let tls = self.io.is_tls();
        let cb = if self
            .mechanisms_offered(tls)
            .iter()
            .any(|m| m.ends_with("-PLUS"))
        {
            self.cb.clone()
        } else {
            ChannelBindingData::default()
        };
        let mut scram = ScramServer::new(hash, plus, cb, random_id());
        let client_first = match scram.handle_client_first(first) {
            Ok(cf) => cf,
            Err(e) => return Ok(Err(e)),
        };
        let user = BareJid::new(Some(&client_first.username), host).ok();
        self.attempted = user.clone();
        let secret = match &user {
            Some(u) => match self.lookup(u).await {
                Ok(list) => list.into_iter().find(|s| s.hash == hash),
                Err(e) => return Ok(Err(e)),
            },
            None => None,
        };
        let server_first = scram.server_first(
            secret.as_ref(),
            &credentials::host_fake_salt_key(&self.server.fake_salt_key, host),
            self.server.config.scram_iterations,
        );
        self.challenge(&server_first).await?;
        let client_final = match self.sasl_response().await? {
            Ok(data) => data,
            Err(e) => return Ok(Err(e)),
        };
        let server_final = match scram.handle_client_final(&client_final) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        let (Some(user), Some(_)) = (user, secret) else {
            return Ok(Err(SaslError::NotAuthorized));
        };
        if let Err(e) = check_authzid(client_first.authzid.as_deref(), &user) {
            return Ok(Err(e));
        }
        Ok(Ok((user, Some(server_final))))
    }

    async fn pre_auth_register(&mut self, el: Element) -> Result<(), End> {
        let host = self.host.clone().unwrap_or_default();
        let reply = match iq_request(&el) {
            Err(err) => stanza::error_reply(&el, &err),
            Ok((kind, payload)) => {
                let key = (IqTarget::Server, kind, ns::REGISTER.to_string());
                let server = self.server.clone();
                let creates = creates_account(kind, &payload);
                match server.registry.iq.get(&key) {
                    None => stanza::error_reply(
                        &el,
                        &StanzaError::cancel(Condition::ServiceUnavailable),
                    ),
                    Some(_) if creates && !self.reserve_registration() => stanza::error_reply(
                        &el,
                        &StanzaError::wait(Condition::PolicyViolation)
                            .with_text("too many registrations; try again later"),
                    ),
                    Some((module, handler)) => {
                        let host_jid = Jid::parse(&host).map_err(|_| End::Closed)?;
                        let iq = Iq {
                            from: host_jid.clone(),
                            to: Some(host_jid),
                            id: el.attr("id").unwrap_or_default().to_string(),
                            is_set: kind == IqKind::Set,
                            payload,
                            stanza: el.clone(),
                            authenticated: false,
                        };
                        let cx = Cx::new(self.server.clone(), None);
                        let answer = call_iq_handler(module, handler.as_ref(), &cx, iq).await;
                        if creates && answer.is_err() {
                            // No account was created: the slot goes back.
                            self.registrations -= 1;
                            self.server.registrations.release(self.peer.ip());
                        }
                        match answer {
                            Ok(result) => {
                                let mut r = stanza::iq_result(&el);
                                r.remove_attr("to");
                                if let Some(p) = result {
                                    r.push_child(p);
                                }
                                Some(r)
                            }
                            Err(err) => stanza::error_reply(&el, &err),
                        }
                    }
                }
            }
        };
        if let Some(mut reply) = reply {
            reply.remove_attr("to");
            self.send(&reply).await?;
        }
        Ok(())
    }

    /// Takes a registration slot for this stream and its address prefix
    /// (`[registration] max_per_stream`, `max_per_address`).
    fn reserve_registration(&mut self) -> bool {
        if self.registrations >= self.server.config.registration_max_per_stream
            || !self.server.registrations.try_reserve(self.peer.ip())
        {
            tracing::info!(peer = %self.peer, "in-band registration refused: limit reached");
            return false;
        }
        self.registrations += 1;
        true
    }

    /// Resource binding (RFC 6120 §7). Ok(None) when the client got an error and may retry.
    async fn bind(&mut self, iq: &Element) -> Result<Option<(Arc<SessionHandle>, Outbox)>, End> {
        let requested = iq
            .child("bind", ns::BIND)
            .and_then(|b| b.child("resource", ns::BIND))
            .map(|r| r.text())
            .filter(|r| !r.trim().is_empty());
        let bound = if iq.attr("type") != Some("set") {
            Err(StanzaError::modify(Condition::BadRequest))
        } else {
            self.bind_resource(requested.unwrap_or_else(|| format!("waxwing-{}", random_id())))
                .await
        };
        match bound {
            Ok((handle, rx)) => {
                let mut reply = stanza::iq_result(iq);
                reply.remove_attr("to");
                reply.remove_attr("from");
                reply.push_child(
                    Element::new("bind", ns::BIND).with_child(
                        Element::new("jid", ns::BIND).with_text(handle.jid.to_string()),
                    ),
                );
                self.send(&reply).await?;
                Ok(Some((handle, rx)))
            }
            Err(err) => {
                if let Some(r) = stanza::error_reply(iq, &err) {
                    self.send(&r).await?;
                }
                Ok(None)
            }
        }
    }

    /// Binds `resource` for the authenticated user (RFC 6120 §7, XEP-0386).
    async fn bind_resource(
        &mut self,
        resource: String,
    ) -> Result<(Arc<SessionHandle>, Outbox), StanzaError> {
        let user = self.user.clone().expect("bind only after authentication");
        let full = FullJid::new(user.clone(), &resource).map_err(|_| {
            StanzaError::modify(Condition::BadRequest).with_text("invalid resource")
        })?;
        let sessions = &self.server.sessions;
        let replacing = sessions.get(&full).is_some();
        if !replacing && sessions.resource_count(&user) >= self.server.config.max_resources {
            return Err(
                StanzaError::wait(Condition::ResourceConstraint).with_text("too many resources")
            );
        }
        let (handle, rx) = SessionHandle::new(
            full,
            self.server.config.outbound_queue,
            self.server.config.outbound_burst,
        );
        if let Some(old) = sessions.bind(handle.clone()) {
            // RFC 6120 §7.7.2.2: the newer session wins; the old one gets <conflict/>.
            old.close(
                StreamError::new(StreamCondition::Conflict)
                    .with_text("replaced by a new connection"),
            );
        }
        self.server
            .clone()
            .emit(Some(handle.clone()), Event::SessionBound(handle.clone()))
            .await;
        Ok((handle, rx))
    }

    /// The bound session: read stanzas, write queued ones, until the end.
    async fn run_session(&mut self, session: &mut Session, rx: &mut Outbox) -> Outcome {
        let shutdown = self.server.shutdown.clone();
        let handle = session.handle.clone();
        let idle_timeout = self.server.config.idle_timeout;
        let stanza_timeout = self.server.config.stanza_timeout;
        let mut last_read = tokio::time::Instant::now();
        // Set while a stanza is incomplete: a client trickling one stanza
        // forever (slowloris) must not hold the session.
        let mut stanza_started: Option<tokio::time::Instant> = None;
        // The framer holds its parser and buffers (about 2 KiB) while the
        // client is sending; they go once it has been quiet for a moment.
        let mut framer_held = true;
        loop {
            loop {
                match self.framer.next_event() {
                    Ok(Some(StreamEvent::Stanza(el))) => {
                        // Boxed (see `serve_connection`): the hook chain's state
                        // is the largest a session ever holds, and only for
                        // the time one stanza takes.
                        if let Err(end) = Box::pin(self.handle_element(session, el)).await {
                            return Outcome::End(end);
                        }
                    }
                    Ok(Some(StreamEvent::Close)) => return Outcome::End(End::Closed),
                    Ok(Some(StreamEvent::Open(_))) => {
                        return Outcome::End(stream_error(
                            StreamCondition::BadFormat,
                            "stream header inside the stream",
                        ));
                    }
                    Ok(None) => break,
                    Err(e) => return Outcome::End(End::Error(e)),
                }
            }
            if let Err(end) = self.charge_partial() {
                return Outcome::End(end);
            }
            if self.framer.buffered() == 0 {
                stanza_started = None;
            } else if stanza_started.is_none() {
                stanza_started = Some(last_read);
            }
            let deadline = match stanza_started {
                Some(t) => (t + stanza_timeout).min(last_read + idle_timeout),
                None => last_read + idle_timeout,
            };
            // One timer for both: the release point comes first unless the
            // framer is already released or a stanza is half-read.
            let release_at = last_read + FRAMER_RELEASE_AFTER;
            let releasing = framer_held && stanza_started.is_none() && release_at < deadline;
            let wake = if releasing { release_at } else { deadline };
            let takeover = async {
                match session.takeover.as_mut() {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            let mut batch = Vec::new();
            tokio::select! {
                biased;
                _ = handle.closed().cancelled() => {
                    // What was queued before the close (e.g. the reply to an
                    // account removal) is flushed by the caller, then the reason.
                    return Outcome::End(handle.take_close_reason().map_or(End::Closed, End::Error));
                }
                _ = shutdown.cancelled() => {
                    return Outcome::End(stream_error(StreamCondition::SystemShutdown, "the server is shutting down"));
                }
                Some(t) = takeover => return Outcome::Takeover(t),
                true = rx.recv_into(&mut batch) => {
                    // A burst may be larger than a batch: it goes out whole.
                    while batch.len() < WRITE_BATCH && rx.try_recv_into(&mut batch) {}
                    let receipts = rx.take_receipts();
                    let write = Box::pin(self.deliver(session, batch, receipts));
                    tokio::select! {
                        r = write => if let Err(end) = r { return Outcome::End(end); },
                        _ = handle.closed().cancelled() => {
                            return Outcome::End(handle.take_close_reason().map_or(End::Closed, End::Error));
                        }
                    }
                }
                r = read_into(&mut self.io, &mut self.framer) => match r {
                    Ok(0) => return Outcome::End(End::Gone),
                    Err(e) => return Outcome::End(read_failed(e)),
                    Ok(n) => {
                        last_read = tokio::time::Instant::now();
                        framer_held = true;
                        self.pace(n).await;
                    }
                },
                _ = tokio::time::sleep_until(wake) => {
                    if releasing {
                        self.framer.release_idle_buffers();
                        framer_held = false;
                        continue;
                    }
                    let text = if stanza_started.is_some_and(|t| t + stanza_timeout <= deadline) {
                        "a stanza took too long to arrive"
                    } else {
                        "no data for too long"
                    };
                    return Outcome::End(stream_error(StreamCondition::ConnectionTimeout, text));
                }
            }
        }
    }

    /// Writes queued stanzas: held back while the client is inactive (CSI),
    /// counted and kept until acknowledged (SM), in one write.
    async fn deliver(
        &mut self,
        session: &mut Session,
        batch: Vec<Element>,
        receipts: Vec<(Range<usize>, Receipt)>,
    ) -> Result<(), End> {
        if !receipts.is_empty() {
            // Tracked stanzas are never held back: their receipt says the
            // client has them. What was held goes first, to keep the order.
            let mut now = session.held.take();
            let shift = now.len();
            now.extend(batch);
            let receipts = receipts
                .into_iter()
                .map(|(r, receipt)| (r.start + shift..r.end + shift, receipt))
                .collect();
            return self.write_stanzas(session, now, receipts).await;
        }
        let inactive = session.handle.flag(SessionFlag::Inactive);
        let mut now = Vec::with_capacity(batch.len());
        for el in batch {
            if inactive && !csi::is_urgent(&el) {
                now.extend(session.held.hold(el));
            } else {
                // Anything held goes first, so the client sees stanzas in order.
                now.extend(session.held.take());
                now.push(el);
            }
        }
        self.write_stanzas(session, now, Vec::new()).await
    }

    /// Writes `stanzas` in one write. A receipt (for the stanzas in its
    /// range) resolves once they are written, or under stream management
    /// once the client acknowledges them; an `<r/>` then goes with them.
    async fn write_stanzas(
        &mut self,
        session: &mut Session,
        stanzas: Vec<Element>,
        receipts: Vec<(Range<usize>, Receipt)>,
    ) -> Result<(), End> {
        if stanzas.is_empty() {
            for (_, receipt) in receipts {
                let _ = receipt.send(());
            }
            return Ok(());
        }
        let mut out = String::new();
        let mut ask = false;
        let base = session.sm.as_ref().map_or(0, |sm| sm.sent_out);
        for el in stanzas {
            el.write_to(&mut out, ns::CLIENT);
            if let Some(sm) = session.sm.as_mut() {
                ask |= sm.on_sent(el);
            }
        }
        let mut receipts = receipts;
        if let Some(sm) = session.sm.as_mut() {
            for (range, receipt) in receipts.drain(..) {
                if range.is_empty() {
                    let _ = receipt.send(());
                    continue;
                }
                let first = base.wrapping_add(range.start as u32 + 1);
                let last = base.wrapping_add(range.end as u32);
                sm.track(first, last, receipt);
                ask = true;
            }
        }
        if let Some(sm) = &session.sm {
            // What may be queued (bursts included) may also be in flight.
            let limit = self.server.config.outbound_queue + self.server.config.outbound_burst;
            if sm.unacked.len() > limit {
                return Err(stream_error(
                    StreamCondition::PolicyViolation,
                    "too many unacknowledged stanzas",
                ));
            }
            if ask {
                sm::request().write_to(&mut out, ns::CLIENT);
            }
        }
        self.write(&out).await?;
        // Without stream management, written is all we can know.
        for (_, receipt) in receipts {
            let _ = receipt.send(());
        }
        Ok(())
    }

    /// Stream-management and CSI nonzas, then stanzas.
    async fn handle_element(&mut self, session: &mut Session, el: Element) -> Result<(), End> {
        if el.ns == sm::NS {
            return self.handle_sm(session, el).await;
        }
        if el.ns == csi::NS {
            match el.name.as_str() {
                "inactive" => session.handle.set_flag(SessionFlag::Inactive, true),
                "active" => {
                    session.handle.set_flag(SessionFlag::Inactive, false);
                    let held = session.held.take();
                    self.write_stanzas(session, held, Vec::new()).await?;
                }
                _ => {
                    return Err(stream_error(
                        StreamCondition::UnsupportedStanzaType,
                        "unknown CSI element",
                    ));
                }
            }
            return Ok(());
        }
        let handle = session.handle.clone();
        self.handle_stanza(&handle, el).await?;
        if let Some(sm) = session.sm.as_mut() {
            sm.on_handled();
        }
        Ok(())
    }

    async fn handle_sm(&mut self, session: &mut Session, el: Element) -> Result<(), End> {
        match el.name.as_str() {
            "enable" => {
                if session.sm.is_some() {
                    return self.send(&sm::failed("unexpected-request")).await;
                }
                let resume = matches!(el.attr("resume"), Some("true" | "1"));
                let id = random_id();
                let mut enabled = Element::new("enabled", sm::NS).with_attr("id", id.as_str());
                if resume {
                    let max = self.server.config.resume_timeout.as_secs();
                    enabled.set_attr("resume", "true");
                    enabled.set_attr("max", max.to_string());
                    let handle = &session.handle;
                    session.takeover = Some(self.server.resumption.insert(
                        id.clone(),
                        handle.jid.clone(),
                        handle.id,
                    ));
                }
                session.sm = Some(SmState::new(id, resume));
                self.send(&enabled).await
            }
            "r" => match &session.sm {
                Some(sm) => self.send(&sm::ack(sm.handled_in)).await,
                None => Err(stream_error(
                    StreamCondition::UnsupportedStanzaType,
                    "stream management is not enabled",
                )),
            },
            "a" => match (session.sm.as_mut(), sm::parse_h(&el)) {
                (Some(sm), Some(h)) => sm.on_ack(h).map_err(End::Error),
                _ => Err(stream_error(
                    StreamCondition::UnsupportedStanzaType,
                    "unexpected ack",
                )),
            },
            "resume" => self.send(&sm::failed("unexpected-request")).await,
            _ => Err(stream_error(
                StreamCondition::UnsupportedStanzaType,
                "unknown stream management element",
            )),
        }
    }

    /// Waits, detached, for a client to resume this session (XEP-0198 §5).
    async fn wait_for_resumption(&mut self, session: &mut Session) -> Option<Takeover> {
        let rx = session.takeover.as_mut()?;
        let timeout = self.server.config.resume_timeout;
        tokio::select! {
            t = rx => t.ok(),
            _ = tokio::time::sleep(timeout) => None,
            _ = session.handle.closed().cancelled() => None,
            _ = self.server.shutdown.cancelled() => None,
        }
    }

    /// Continues the session over the resuming connection: acknowledges,
    /// retransmits what the client missed, and reopens the resumption slot.
    async fn adopt(&mut self, session: &mut Session, takeover: Takeover) {
        let new = *takeover.conn;
        self.io = new.io;
        self.framer = new.framer;
        self.peer = new.peer;
        self.bucket = new.bucket;
        self.partial = new.partial;
        self.cb = new.cb;
        self._permit = new._permit;
        self.header_sent = true;
        self.unsent = new.unsent;
        let handle = session.handle.clone();
        let Some(sm) = session.sm.as_mut() else {
            return;
        };
        if sm.on_ack(takeover.h).is_err() {
            tracing::debug!("resumption with an impossible h; retransmitting everything");
        }
        let resumed = Element::new("resumed", sm::NS)
            .with_attr("h", sm.handled_in.to_string())
            .with_attr("previd", sm.id.as_str());
        let mut out = match takeover.success {
            Some(mut success) => {
                success.push_child(resumed);
                let mut out = success.to_xml();
                out.push_str("<stream:features/>");
                out
            }
            None => resumed.to_xml_in(ns::CLIENT),
        };
        for el in &sm.unacked {
            el.write_to(&mut out, ns::CLIENT);
        }
        let id = sm.id.clone();
        session.takeover = Some(
            self.server
                .resumption
                .insert(id, handle.jid.clone(), handle.id),
        );
        tracing::info!(jid = %handle.jid, peer = %self.peer, "session resumed");
        // A failed write shows up as EOF on the next read.
        let _ = self.write(&out).await;
    }

    async fn handle_stanza(
        &mut self,
        handle: &Arc<SessionHandle>,
        mut el: Element,
    ) -> Result<(), End> {
        if stanza::kind(&el).is_none() {
            return Err(stream_error(
                StreamCondition::UnsupportedStanzaType,
                "not a message, presence or iq",
            ));
        }
        // RFC 6120 §8.1.2.1: stamp `from`; a client may only claim itself.
        if let Some(from) = el.attr("from") {
            let ok = match Jid::parse(from) {
                Ok(Jid::Full(f)) => f == handle.jid,
                Ok(Jid::Bare(b)) => &b == handle.jid.bare(),
                Err(_) => false,
            };
            if !ok {
                return Err(stream_error(
                    StreamCondition::InvalidFrom,
                    "'from' does not match the session",
                ));
            }
        }
        el.set_attr("from", handle.jid.to_string());
        if let Some(lang) = &self.lang
            && el.attr("xml:lang").is_none()
        {
            el.set_attr("xml:lang", lang.to_string());
        }
        // Legacy session establishment (RFC 3921 §3): answered, does nothing.
        if el.name == "iq"
            && el.child("session", ns::SESSION).is_some()
            && el
                .attr("to")
                .is_none_or(|t| self.host.as_deref() == Some(t))
        {
            let mut reply = stanza::iq_result(&el);
            reply.remove_attr("from");
            reply.remove_attr("to");
            return self.send(&reply).await;
        }
        // Isolated: a panic fails this stanza, not the session.
        self.server.clone().handle_from_client(handle, el).await;
        Ok(())
    }

    /// Sends the stream error (with a header first if none was sent) and closes.
    async fn finish(mut self, end: End) {
        let mut out = std::mem::take(&mut self.unsent);
        if let End::Error(e) = &end {
            if !self.header_sent {
                out.push_str(&format!(
                    "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' id='{}' from='{}' version='1.0'>",
                    ns::CLIENT,
                    ns::STREAM,
                    random_id(),
                    self.host.clone().unwrap_or_else(|| self.server.config.hosts[0].clone())
                ));
            }
            tracing::debug!(condition = e.condition.as_str(), text = ?e.text, "stream error");
            out.push_str(&stream_prefixed(&e.to_element()));
        }
        out.push_str("</stream:stream>");
        // A peer that is gone fails the first write: no more attempts.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            self.io.write_all(out.as_bytes()).await?;
            self.io.flush().await?;
            self.io.shutdown().await
        })
        .await;
    }
}

/// Writes an element of the streams namespace with the `stream:` prefix that
/// our header declared. Equivalent XML either way, but some deployed clients
/// XEP-0138 protocol namespace.
const COMPRESS_NS: &str = "http://jabber.org/protocol/compress";

/// The XEP-0138 stream feature: zlib only.
fn compression_feature() -> Element {
    Element::new("compression", "http://jabber.org/features/compress")
        .with_child(Element::new("method", "http://jabber.org/features/compress").with_text("zlib"))
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

/// match on the literal `<stream:features>`.
fn stream_prefixed(el: &Element) -> String {
    debug_assert_eq!(el.ns, ns::STREAM);
    let mut out = format!("<stream:{}>", el.name);
    for child in el.children() {
        child.write_to(&mut out, ns::CLIENT);
    }
    out.push_str(&format!("</stream:{}>", el.name));
    out
}

fn check_authzid(authzid: Option<&str>, user: &BareJid) -> Result<(), SaslError> {
    match authzid {
        None | Some("") => Ok(()),
        Some(z) => match Jid::parse(z) {
            Ok(j) if j.bare() == user => Ok(()),
            _ => Err(SaslError::InvalidAuthzid),
        },
    }
}

/// An IQ set that asks for a new account (not a form request, nor `<remove/>`).
fn creates_account(kind: IqKind, payload: &Element) -> bool {
    kind == IqKind::Set && payload.child("username", ns::REGISTER).is_some()
}

fn is_register_iq(el: &Element) -> bool {
    el.first_child()
        .is_some_and(|c| c.is("query", ns::REGISTER))
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
