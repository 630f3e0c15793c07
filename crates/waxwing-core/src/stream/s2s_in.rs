//! Incoming server-to-server streams.
//!
//! One task per connection: STARTTLS (or XEP-0368 direct TLS), then any mix
//! of
//! - SASL EXTERNAL (XEP-0178) for the domain in the header's `from`, when
//!   its certificate is valid;
//! - dialback requests (`<db:result/>`, receiving role): each names an
//!   originating domain, which is authenticated for this stream once its
//!   authoritative server confirms the key (or, XEP-0344, at once when the
//!   TLS certificate is valid for it);
//! - dialback verifications (`<db:verify/>`, authoritative role), answered
//!   from our secret on any stream, authenticated or not;
//! - stanzas, routed only when their `from` domain was authenticated on
//!   this stream (else `invalid-from`) and their `to` is a domain we serve
//!   for which that domain authenticated (else `host-unknown`);
//! - XEP-0288 `<bidi/>` (offered in the features): each pair authenticated
//!   afterwards makes this stream our route to the peer for the inverse
//!   pair, fed by a bounded queue this task writes.
//!
//! Until a pair is authenticated, the stream runs under `auth_timeout`
//! from the moment it was accepted (TLS handshakes included), and what it
//! costs is charged to the peer's address (`s2s::limits`): connections,
//! dialback verifications in flight, failed dialbacks. The domain a peer
//! merely claims is never charged.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::Instrument;
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{self, Condition, StanzaError, StreamCondition, StreamError};
use waxwing_proto::xml::{Element, Limits, StreamEvent, StreamHeader};

use crate::abuse::{ConnectionPermit, TokenBucket};
use crate::config::DialbackPolicy;
use crate::queue::{Outbox, Outq, outbound};
use crate::random_id;
use crate::router::Server;
use crate::s2s::dialback;
use crate::s2s::limits::Busy;
use crate::s2s::reputation::{Admit, MAX_REFUSED_IN_A_ROW, Offence, Standing};
use crate::s2s::wire::{READ_CHUNK, ReadError, Wire, header, stream_prefixed};
use crate::s2s::{BIDI_FEATURE_NS, BIDI_NS, Pair, flush_at_shutdown, to_client_ns, write_batch};
use crate::stream::compress;
use crate::stream::s2s_out;

/// Dialback verifications one stream may have in flight.
const MAX_PENDING_VERIFICATIONS: usize = 8;

/// Why a stream ended.
enum End {
    Error(StreamError),
    /// The peer closed its stream (or we closed an idle one).
    Closed,
    /// EOF without a closing tag.
    Gone,
}

fn stream_error(c: StreamCondition, text: &str) -> End {
    End::Error(StreamError::new(c).with_text(text))
}

impl From<ReadError> for End {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Gone => End::Gone,
            ReadError::Stream(e) => End::Error(e),
        }
    }
}

/// The answer from an authoritative server about one `<db:result/>`.
struct Verified {
    /// The originating (remote) domain.
    remote: String,
    /// The receiving (our) domain.
    local: String,
    outcome: Result<bool, s2s_out::Failure>,
}

/// Runs one incoming s2s connection to completion.
pub(crate) async fn serve(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    let span = tracing::info_span!("s2s_in", %peer);
    async move {
        let c = server.live();
        let limits = Limits {
            max_stanza_bytes: c.max_stanza_bytes,
            max_depth: c.max_depth,
            max_attrs: c.max_attributes,
        };
        // Every phase before authentication (TLS handshakes included) must
        // be over by then.
        let auth_deadline = tokio::time::Instant::now() + c.auth_timeout;
        let permit = server.s2s.inbound.connection(peer.ip());
        let refused = permit.is_none();
        let mut conn = Incoming {
            wire: Wire::new(tcp, limits),
            server: server.clone(),
            peer,
            auth_deadline,
            _permit: permit,
            stream_id: String::new(),
            local: None,
            remote_hint: None,
            header_sent: false,
            sasl_done: false,
            certs: None,
            authed: HashSet::new(),
            pending: 0,
            refused_in_a_row: 0,
            // Servers carry many users' traffic: ten times a client's allowance.
            bucket: s2s_read_bucket(&server),
            bidi: false,
            queue: None,
            routes: Vec::new(),
            counted: None,
        };
        if refused {
            tracing::warn!("too many incoming s2s connections from this address");
            if direct_tls {
                return; // no TLS yet, so no way to say why
            }
            let end = stream_error(
                StreamCondition::PolicyViolation,
                "too many connections from your address",
            );
            return conn.finish(end).await;
        }
        if server.config.s2s.enabled && direct_tls {
            let acceptor = server.s2s.tls.acceptor.clone();
            let accept = conn.wire.io.accept_tls(&acceptor);
            match tokio::time::timeout_at(auth_deadline, accept).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "direct TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("direct TLS handshake not done in time");
                    return;
                }
            }
            conn.certs = conn.wire.io.peer_certificates();
        }
        let end = if server.config.s2s.enabled {
            conn.run().await
        } else {
            stream_error(StreamCondition::PolicyViolation, "federation is disabled")
        };
        conn.release_routes().await;
        conn.finish(end).await;
    }
    .instrument(span)
    .await
}

struct Incoming {
    server: Arc<Server>,
    wire: Wire,
    peer: SocketAddr,
    /// Accepted + `auth_timeout`: nothing authenticated by then ends the stream.
    auth_deadline: tokio::time::Instant,
    /// Counts this connection against its address while it lives.
    _permit: Option<ConnectionPermit>,
    /// Our id for the current stream (dialback keys are bound to it).
    stream_id: String,
    /// The domain of ours the peer addressed in its header.
    local: Option<String>,
    /// The header's `from`: who the peer says it is.
    remote_hint: Option<String>,
    header_sent: bool,
    sasl_done: bool,
    certs: Option<Vec<CertificateDer<'static>>>,
    /// Authenticated (remote, local) domain pairs.
    authed: HashSet<(String, String)>,
    pending: usize,
    /// Stanzas refused by the per-domain rate limit since the last admitted one.
    refused_in_a_row: u32,
    bucket: TokenBucket,
    /// XEP-0288 enabled by the peer's `<bidi/>`.
    bidi: bool,
    /// Bidirectional streams: the queue of stanzas to write to the peer
    /// (created on the first pair authenticated).
    queue: Option<(Outq, Outbox)>,
    /// (local, remote) pairs this stream is registered as the route of.
    routes: Vec<Pair>,
    /// Counts this stream in `waxwing_s2s_streams` once a pair authenticated.
    counted: Option<crate::metrics::GaugeGuard>,
}

/// The read allowance of an s2s connection: servers carry many users'
/// traffic, so ten times a client's.
pub(crate) fn s2s_read_bucket(server: &Server) -> TokenBucket {
    let c = server.live();
    TokenBucket::new(
        c.read_rate_bytes.saturating_mul(10),
        c.read_burst_bytes.saturating_mul(10),
    )
}

/// What becomes of a stanza an authenticated peer sent.
pub(crate) enum Admission {
    /// Route it (already in the client namespace).
    Route(Element),
    /// Route nothing; answer the peer with this error reply.
    Reply(Element),
    /// Route nothing, answer nothing.
    Drop,
}

/// Checks a stanza from a peer: its addresses, `allowed(from domain, to
/// domain)` (the pairs the stream authenticated), and the per-domain rate
/// limit. `Err` ends the stream. Shared by incoming streams and outgoing
/// bidirectional ones.
pub(crate) async fn admit_stanza(
    server: &Server,
    el: Element,
    refused_in_a_row: &mut u32,
    allowed: impl Fn(&str, &str) -> Result<(), StreamError>,
) -> Result<Admission, StreamError> {
    let bad = |c: StreamCondition, text: &str| StreamError::new(c).with_text(text);
    let from = match el.attr("from").map(Jid::parse) {
        Some(Ok(f)) => f,
        Some(Err(_)) => return Err(bad(StreamCondition::InvalidFrom, "'from' is not a JID")),
        None => {
            return Err(bad(
                StreamCondition::ImproperAddressing,
                "stanza without 'from'",
            ));
        }
    };
    let to = match el.attr("to").map(Jid::parse) {
        Some(Ok(t)) => t,
        Some(Err(_)) => {
            let reply = StanzaError::modify(Condition::JidMalformed);
            return Ok(match stanza::error_reply(&el, &reply) {
                Some(mut r) => {
                    r.remove_attr("from");
                    Admission::Reply(r)
                }
                None => Admission::Drop,
            });
        }
        None => {
            return Err(bad(
                StreamCondition::ImproperAddressing,
                "stanza without 'to'",
            ));
        }
    };
    let fd = from.domain();
    allowed(fd, to.domain())?;
    match server.s2s.defences.admit(fd) {
        Admit::Yes => *refused_in_a_row = 0,
        Admit::Blocked => {
            tracing::info!(from = fd, "closing a stream from a blocked domain");
            return Err(bad(
                StreamCondition::PolicyViolation,
                "your domain is blocked here",
            ));
        }
        Admit::RateLimited { record } => {
            if record {
                tracing::info!(from = fd, "remote domain over its stanza rate limit");
                server.record_offence(fd, Offence::RateLimited).await;
            }
            *refused_in_a_row += 1;
            if *refused_in_a_row >= MAX_REFUSED_IN_A_ROW {
                return Err(bad(
                    StreamCondition::PolicyViolation,
                    "stanza rate limit exceeded again and again",
                ));
            }
            let err = StanzaError::wait(Condition::PolicyViolation)
                .with_text("stanza rate limit for your domain exceeded");
            return Ok(match stanza::error_reply(&el, &err) {
                Some(r) => Admission::Reply(r),
                None => Admission::Drop,
            });
        }
    }
    Ok(Admission::Route(to_client_ns(el)))
}

/// The next stanza of a bidirectional stream's queue; never, without one.
async fn next_queued(queue: &mut Option<(Outq, Outbox)>) -> Option<Vec<Element>> {
    match queue {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Incoming {
    async fn run(&mut self) -> End {
        let (vtx, mut vrx) = mpsc::channel::<Verified>(MAX_PENDING_VERIFICATIONS);
        let auth_deadline = self.auth_deadline;
        let idle = self.server.config.s2s.idle_timeout;
        let mut last = tokio::time::Instant::now();
        let mut buf = [0u8; READ_CHUNK];
        let shutdown = self.server.shutdown.clone();
        loop {
            loop {
                let ev = match self.wire.framer.next_event() {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(e) => return End::Error(e),
                };
                let authenticated = !self.authed.is_empty();
                let handled = async {
                    match ev {
                        StreamEvent::Open(h) => self.on_open(h).await,
                        StreamEvent::Stanza(el) => self.on_element(el, &vtx).await,
                        StreamEvent::Close => Err(End::Closed),
                    }
                };
                // Before authentication even our writes are under the
                // deadline: a peer that pipelines requests and never reads
                // must not hold the stream open.
                let r = if !authenticated {
                    tokio::time::timeout_at(auth_deadline, handled)
                        .await
                        .unwrap_or_else(|_| {
                            Err(stream_error(
                                StreamCondition::ConnectionTimeout,
                                "no domain authenticated in time",
                            ))
                        })
                } else {
                    handled.await
                };
                if let Err(end) = r {
                    return end;
                }
            }
            // Unauthenticated streams get `auth_timeout` from the accept,
            // verifications in flight or not (each is bounded by
            // `connect_timeout`); then idle rules.
            let deadline = if self.authed.is_empty() {
                auth_deadline.min(last + idle)
            } else {
                last + idle
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // A bidirectional stream is also a route: what was
                    // queued on it at shutdown goes before the stream error.
                    if let Some((_, rx)) = &mut self.queue {
                        flush_at_shutdown(&mut self.wire, rx).await;
                    }
                    return stream_error(StreamCondition::SystemShutdown, "the server is shutting down");
                }
                Some(v) = vrx.recv() => {
                    if let Err(end) = self.on_verified(v).await {
                        return end;
                    }
                }
                Some(first) = next_queued(&mut self.queue) => {
                    let out = match &mut self.queue {
                        Some((_, rx)) => write_batch(first, rx),
                        None => unreachable!("a stanza came from the queue"),
                    };
                    if let Err(e) = self.wire.write(&out).await {
                        tracing::info!(error = %e, "bidirectional s2s write failed");
                        return End::Gone;
                    }
                    last = tokio::time::Instant::now();
                }
                r = self.wire.read_some(&mut buf) => match r {
                    Ok(n) => {
                        last = tokio::time::Instant::now();
                        let wait = self.bucket.take(n, std::time::Instant::now());
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                    }
                    Err(e) => return e.into(),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if self.authed.is_empty() && tokio::time::Instant::now() >= auth_deadline {
                        return stream_error(StreamCondition::ConnectionTimeout, "no domain authenticated in time");
                    }
                    tracing::debug!("closing an idle incoming s2s stream");
                    return End::Closed;
                }
            }
        }
    }

    async fn write(&mut self, data: &str) -> Result<(), End> {
        self.wire.write(data).await.map_err(|_| End::Gone)
    }

    async fn send(&mut self, el: &Element) -> Result<(), End> {
        self.wire.send(el).await.map_err(|_| End::Gone)
    }

    /// The first authenticated pair decides the stream's method.
    fn count_stream(&mut self, method: &'static str) {
        if self.counted.is_none() {
            self.counted = Some(self.server.metrics.s2s_stream("in", method));
        }
    }

    fn local_domain(&self) -> String {
        self.local
            .clone()
            .unwrap_or_else(|| self.server.config.hosts[0].clone())
    }

    /// Answers a stream header with ours and the features.
    async fn on_open(&mut self, h: StreamHeader) -> Result<(), End> {
        let to = h.to.as_deref().and_then(|t| BareJid::domain_only(t).ok());
        let from = match h.from.as_deref().map(BareJid::domain_only) {
            None => None,
            Some(Ok(d)) => Some(d.domain().to_string()),
            Some(Err(_)) => {
                return Err(stream_error(
                    StreamCondition::InvalidFrom,
                    "'from' is not a domain",
                ));
            }
        };
        let version1 = h
            .version
            .as_deref()
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
            .is_some_and(|m| m >= 1);
        self.stream_id = random_id();
        let local = match &to {
            Some(d) if self.server.is_local_domain(d.domain()) => d.domain().to_string(),
            _ => {
                return Err(stream_error(
                    StreamCondition::HostUnknown,
                    "this server does not serve that domain",
                ));
            }
        };
        if self.local.as_ref().is_some_and(|l| l != &local) {
            return Err(stream_error(
                StreamCondition::HostUnknown,
                "the domain changed on stream restart",
            ));
        }
        self.local = Some(local.clone());
        if from.is_some() {
            self.remote_hint = from.clone();
        }
        let head = header(
            &local,
            self.remote_hint.as_deref(),
            Some(&self.stream_id),
            version1,
        );
        self.header_sent = true;
        self.write(&head).await?;
        if !version1 {
            // Pre-1.0 peers do dialback without features.
            return Ok(());
        }
        let tls = self.wire.io.is_tls();
        let mut features = Element::new("features", ns::STREAM);
        if !tls {
            let mut starttls = Element::new("starttls", ns::TLS);
            if self.server.config.s2s.require_encryption {
                starttls.push_child(Element::new("required", ns::TLS));
            }
            features.push_child(starttls);
        }
        if tls && !self.sasl_done {
            let external = self.remote_hint.as_deref().is_some_and(|r| {
                self.server.config.s2s.policy(r) != DialbackPolicy::Refuse && self.cert_valid_for(r)
            });
            if external {
                features.push_child(
                    Element::new("mechanisms", ns::SASL)
                        .with_child(Element::new("mechanism", ns::SASL).with_text("EXTERNAL")),
                );
            }
        }
        // XEP-0138 after SASL (a dialback-only stream has no restart after
        // authentication, so nothing to offer compression on).
        if tls
            && self.sasl_done
            && self.server.config.compression_enabled
            && !self.wire.io.is_compressed()
        {
            features.push_child(compress::feature());
        }
        if tls || !self.server.config.s2s.require_encryption {
            features.push_child(
                Element::new("dialback", dialback::FEATURE_NS)
                    .with_child(Element::new("errors", dialback::FEATURE_NS)),
            );
        }
        // XEP-0288 §2: offered before and after TLS, until enabled.
        if self.server.config.s2s.bidi && !self.bidi {
            features.push_child(Element::new("bidi", BIDI_FEATURE_NS));
        }
        self.write(&stream_prefixed(&features)).await
    }

    fn cert_valid_for(&self, domain: &str) -> bool {
        self.server
            .s2s
            .tls
            .check(self.certs.as_deref(), domain)
            .is_valid()
    }

    async fn on_element(&mut self, el: Element, vtx: &mpsc::Sender<Verified>) -> Result<(), End> {
        if el.is("starttls", ns::TLS) {
            return self.starttls().await;
        }
        if el.is("auth", ns::SASL) {
            return self.sasl_external(&el).await;
        }
        if el.is("compress", compress::NS) {
            return self.compress(&el).await;
        }
        if el.is("bidi", BIDI_NS) {
            return self.enable_bidi();
        }
        if el.ns == dialback::NS && el.attr("type").is_none() {
            return match el.name.as_str() {
                "result" => self.db_result(&el, vtx).await,
                "verify" => self.db_verify(&el).await,
                _ => Err(stream_error(
                    StreamCondition::UnsupportedStanzaType,
                    "unknown dialback element",
                )),
            };
        }
        if el.ns == dialback::NS {
            return Ok(()); // answers to requests we never make on inbound streams
        }
        if stanza::kind(&el).is_some() && el.ns == ns::SERVER {
            return self.on_stanza(el).await;
        }
        Err(stream_error(
            StreamCondition::UnsupportedStanzaType,
            "not a stanza, dialback or negotiation element",
        ))
    }

    async fn starttls(&mut self) -> Result<(), End> {
        if self.wire.io.is_tls() {
            return Err(stream_error(
                StreamCondition::PolicyViolation,
                "TLS is already on",
            ));
        }
        if self.wire.framer.buffered() > 0 {
            return Err(stream_error(
                StreamCondition::PolicyViolation,
                "data after <starttls/>",
            ));
        }
        self.write(&format!("<proceed xmlns='{}'/>", ns::TLS))
            .await?;
        let acceptor = self.server.s2s.tls.acceptor.clone();
        let deadline = if self.authed.is_empty() {
            self.auth_deadline
        } else {
            tokio::time::Instant::now() + self.server.live().auth_timeout
        };
        match tokio::time::timeout_at(deadline, self.wire.io.accept_tls(&acceptor)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "STARTTLS handshake failed");
                return Err(End::Gone);
            }
            Err(_) => {
                tracing::debug!("STARTTLS handshake not done in time");
                return Err(End::Gone);
            }
        }
        self.certs = self.wire.io.peer_certificates();
        self.wire.new_framer();
        self.header_sent = false;
        Ok(())
    }

    /// XEP-0288 §2: the initiating server asks for a bidirectional stream
    /// (after STARTTLS when it uses TLS; before or after authenticating).
    fn enable_bidi(&mut self) -> Result<(), End> {
        if !self.server.config.s2s.bidi {
            return Err(stream_error(
                StreamCondition::UnsupportedStanzaType,
                "bidirectional streams are not offered here",
            ));
        }
        if self.server.config.s2s.require_encryption && !self.wire.io.is_tls() {
            return Err(stream_error(
                StreamCondition::PolicyViolation,
                "encryption is required before <bidi/>",
            ));
        }
        if self.bidi {
            return Ok(());
        }
        self.bidi = true;
        self.server
            .s2s
            .bidi
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!("incoming s2s stream is bidirectional (XEP-0288)");
        // Pairs authenticated before <bidi/> count too.
        for (remote, local) in self.authed.clone() {
            self.add_route(&local, &remote);
        }
        Ok(())
    }

    /// On a bidirectional stream, `remote` authenticated for our `local`:
    /// we may now send from `local` to `remote` here (XEP-0288 §2).
    fn add_route(&mut self, local: &str, remote: &str) {
        if !self.bidi {
            return;
        }
        let pair: Pair = (local.to_string(), remote.to_string());
        if self.routes.contains(&pair) {
            return;
        }
        let max = self.server.config.s2s.max_queue;
        let burst = self.server.live().outbound_burst;
        let (tx, _) = self.queue.get_or_insert_with(|| outbound(max, burst));
        let max_routes = self.server.config.s2s.max_outgoing_routes;
        if self.server.s2s.register_bidi(&pair, tx, max_routes) {
            tracing::info!(%local, %remote, "incoming bidirectional stream is the route for this pair");
            self.routes.push(pair);
        }
    }

    /// Unregisters this stream's routes; stanzas still queued are routed
    /// again (a new connection carries them).
    async fn release_routes(&mut self) {
        let Some((tx, mut rx)) = self.queue.take() else {
            return;
        };
        rx.close();
        for pair in self.routes.drain(..) {
            self.server.s2s.forget(&pair, &tx);
        }
        if self.server.shutdown.is_cancelled() {
            return;
        }
        while let Some(els) = rx.try_recv() {
            for el in els {
                tokio::spawn(self.server.clone().route(el));
            }
        }
    }

    /// XEP-0138 on a stream authenticated with SASL EXTERNAL.
    async fn compress(&mut self, el: &Element) -> Result<(), End> {
        if !self.server.config.compression_enabled
            || !self.sasl_done
            || self.wire.io.is_compressed()
        {
            return self.send(&compress::failure("setup-failed")).await;
        }
        let method = el.child("method", compress::NS).map(|m| m.text());
        if method.as_deref().map(str::trim) != Some("zlib") {
            return self.send(&compress::failure("unsupported-method")).await;
        }
        if self.wire.framer.buffered() > 0 {
            return Err(stream_error(
                StreamCondition::PolicyViolation,
                "data after <compress/>",
            ));
        }
        self.write(&format!("<compressed xmlns='{}'/>", compress::NS))
            .await?;
        if self
            .wire
            .io
            .compress(self.server.config.compression_max_ratio)
            .is_err()
        {
            return Err(End::Gone);
        }
        tracing::debug!("incoming s2s stream compressed (XEP-0138)");
        self.server
            .s2s
            .compressed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.wire.new_framer();
        self.header_sent = false;
        Ok(())
    }

    async fn sasl_failure(&mut self, condition: &str) -> Result<(), End> {
        let failure =
            Element::new("failure", ns::SASL).with_child(Element::new(condition, ns::SASL));
        self.write(&failure.to_xml()).await
    }

    /// XEP-0178: the peer authenticates as its header's `from` with its certificate.
    async fn sasl_external(&mut self, auth: &Element) -> Result<(), End> {
        if auth.attr("mechanism") != Some("EXTERNAL") {
            return self.sasl_failure("invalid-mechanism").await;
        }
        if !self.wire.io.is_tls() || self.sasl_done {
            return self.sasl_failure("encryption-required").await;
        }
        let text = auth.text();
        let text = text.trim();
        let authzid = if text.is_empty() || text == "=" {
            None
        } else {
            match base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
            {
                Some(s) => Some(s),
                None => return self.sasl_failure("incorrect-encoding").await,
            }
        };
        let claimed = match (authzid, self.remote_hint.clone()) {
            (Some(a), Some(h)) if a == h => h,
            (None, Some(h)) => h,
            (Some(_), _) => return self.sasl_failure("invalid-authzid").await,
            (None, None) => return self.sasl_failure("not-authorized").await,
        };
        let ok = self.server.config.s2s.policy(&claimed) != DialbackPolicy::Refuse
            && self.server.s2s.defences.standing(&claimed) != Standing::Blocked
            && self.cert_valid_for(&claimed);
        if !ok {
            tracing::info!(domain = %claimed, "SASL EXTERNAL refused");
            return self.sasl_failure("not-authorized").await;
        }
        self.write(&format!("<success xmlns='{}'/>", ns::SASL))
            .await?;
        let local = self.local_domain();
        tracing::info!(remote = %claimed, %local, "incoming s2s stream authenticated (SASL EXTERNAL)");
        self.count_stream("sasl_external");
        self.add_route(&local, &claimed);
        self.authed.insert((claimed, local));
        self.sasl_done = true;
        self.wire.framer.reset();
        self.header_sent = false;
        Ok(())
    }

    /// Dialback, receiving role: `<db:result from=O to=R>key</db:result>`.
    async fn db_result(&mut self, el: &Element, vtx: &mpsc::Sender<Verified>) -> Result<(), End> {
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            return Err(stream_error(
                StreamCondition::ImproperAddressing,
                "dialback request without from/to",
            ));
        };
        let Ok(remote) = BareJid::domain_only(from).map(|j| j.domain().to_string()) else {
            return Err(stream_error(
                StreamCondition::InvalidFrom,
                "'from' is not a domain",
            ));
        };
        let Ok(local) = BareJid::domain_only(to).map(|j| j.domain().to_string()) else {
            return Err(stream_error(
                StreamCondition::HostUnknown,
                "'to' is not a domain",
            ));
        };
        let refuse = |c: Condition, text: &str| {
            dialback::result_error(&local, &remote, &StanzaError::cancel(c).with_text(text))
        };
        if !self.server.is_local_domain(&local) {
            let e = refuse(
                Condition::ItemNotFound,
                "this server does not serve that domain",
            );
            return self.send(&e).await;
        }
        if self.server.config.s2s.require_encryption && !self.wire.io.is_tls() {
            return Err(stream_error(
                StreamCondition::PolicyViolation,
                "encryption is required before dialback",
            ));
        }
        let policy = self.server.config.s2s.policy(&remote);
        let cert_valid = self.cert_valid_for(&remote);
        if self.server.s2s.defences.standing(&remote) == Standing::Blocked {
            tracing::info!(%remote, "dialback from a blocked domain");
            let e = refuse(Condition::NotAllowed, "your domain is blocked here");
            return self.send(&e).await;
        }
        if policy == DialbackPolicy::Refuse {
            tracing::info!(%remote, "dialback from a refused domain");
            let e = refuse(
                Condition::NotAllowed,
                "federation with your domain is not allowed",
            );
            return self.send(&e).await;
        }
        if cert_valid {
            // XEP-0344 §2.4: the certificate already proves the domain.
            return self
                .on_verified(Verified {
                    remote,
                    local,
                    outcome: Ok(true),
                })
                .await;
        }
        if policy == DialbackPolicy::RequireValidCerts {
            let e = refuse(
                Condition::NotAuthorized,
                "a valid certificate is required for your domain",
            );
            return self.send(&e).await;
        }
        if self.pending >= MAX_PENDING_VERIFICATIONS {
            let e = refuse(Condition::ResourceConstraint, "too many dialback requests");
            return self.send(&e).await;
        }
        // Each verification is a connection we open to the claimed domain's
        // server: bounded per address and server-wide, and refused to an
        // address whose keys keep failing.
        let permit = match self.server.s2s.inbound.verification(self.peer.ip()) {
            Ok(p) => p,
            Err(busy) => {
                let (condition, text) = match busy {
                    Busy::FailedTooOften => (
                        Condition::PolicyViolation,
                        "too many failed dialbacks from your address; try again later",
                    ),
                    Busy::AddressBusy => (
                        Condition::ResourceConstraint,
                        "too many dialback verifications in flight for your address",
                    ),
                    Busy::ServerBusy => (
                        Condition::ResourceConstraint,
                        "too many dialback verifications in flight; try again later",
                    ),
                };
                tracing::debug!(%remote, ?busy, "dialback request not verified");
                let e = dialback::result_error(
                    &local,
                    &remote,
                    &StanzaError::wait(condition).with_text(text),
                );
                return self.send(&e).await;
            }
        };
        self.pending += 1;
        let server = self.server.clone();
        let (id, key) = (self.stream_id.clone(), el.text().trim().to_string());
        let vtx = vtx.clone();
        let ip = self.peer.ip();
        tracing::debug!(%remote, %local, "verifying a dialback key with the authoritative server");
        tokio::spawn(async move {
            let outcome =
                s2s_out::verify(server.clone(), local.clone(), remote.clone(), id, key).await;
            if !matches!(outcome, Ok(true)) {
                // Charged here, not when the stream hears of it: the stream
                // may be gone (closed at the first refusal) while its other
                // verifications still cost us a connection each. Charged to
                // the address that presented the key, never to the domain
                // it claimed: anyone can claim any domain. A domain whose
                // server cannot be reached counts too: claiming one is how
                // a peer makes us connect to arbitrary hosts.
                server.s2s.inbound.record_failure(ip);
            }
            drop(permit);
            let _ = vtx
                .send(Verified {
                    remote,
                    local,
                    outcome,
                })
                .await;
        });
        Ok(())
    }

    async fn on_verified(&mut self, v: Verified) -> Result<(), End> {
        self.pending = self.pending.saturating_sub(1);
        match v.outcome {
            Ok(true) => {
                self.send(&dialback::result_answer(&v.local, &v.remote, true))
                    .await?;
                tracing::info!(remote = %v.remote, local = %v.local, "incoming s2s stream authenticated (dialback)");
                self.count_stream("dialback");
                self.add_route(&v.local, &v.remote);
                self.authed.insert((v.remote, v.local));
                Ok(())
            }
            Ok(false) => {
                tracing::warn!(remote = %v.remote, "dialback key refused by the authoritative server");
                self.send(&dialback::result_answer(&v.local, &v.remote, false))
                    .await?;
                if self.authed.is_empty() {
                    return Err(stream_error(
                        StreamCondition::NotAuthorized,
                        "dialback verification failed",
                    ));
                }
                Ok(())
            }
            Err(f) => {
                tracing::info!(remote = %v.remote, error = %f.text, "dialback verification impossible");
                let err = StanzaError::new(f.condition).with_text(f.text);
                self.send(&dialback::result_error(&v.local, &v.remote, &err))
                    .await
            }
        }
    }

    /// Dialback, authoritative role: `<db:verify from=R to=O id>key</db:verify>`.
    async fn db_verify(&mut self, el: &Element) -> Result<(), End> {
        let (Some(from), Some(to), Some(id)) = (el.attr("from"), el.attr("to"), el.attr("id"))
        else {
            return Err(stream_error(
                StreamCondition::ImproperAddressing,
                "dialback verification without from/to/id",
            ));
        };
        let valid = self.server.is_local_domain(to)
            && self.server.s2s.secret().verify(from, to, id, &el.text());
        tracing::debug!(
            receiving = from,
            originating = to,
            valid,
            "answering a dialback verification"
        );
        let answer = dialback::verify_answer(to, from, id, valid);
        self.send(&answer).await
    }

    /// RFC 6120 §13.? / XEP-0220 §4: only authenticated domain pairs may send.
    async fn on_stanza(&mut self, el: Element) -> Result<(), End> {
        if self.authed.is_empty() {
            return Err(stream_error(
                StreamCondition::NotAuthorized,
                "authenticate (dialback or SASL) first",
            ));
        }
        let authed = &self.authed;
        let server = &self.server;
        let allowed = |fd: &str, td: &str| {
            if !authed.iter().any(|(r, _)| r == fd) {
                tracing::warn!(
                    from = fd,
                    "stanza from a domain this stream did not authenticate"
                );
                return Err(StreamError::new(StreamCondition::InvalidFrom)
                    .with_text("that domain is not authenticated on this stream"));
            }
            if !server.is_local_domain(td) || !authed.contains(&(fd.to_string(), td.to_string())) {
                return Err(StreamError::new(StreamCondition::HostUnknown).with_text(
                    "that domain is not served here, or not authenticated for on this stream",
                ));
            }
            Ok(())
        };
        match admit_stanza(server, el, &mut self.refused_in_a_row, allowed).await {
            Err(e) => Err(End::Error(e)),
            Ok(Admission::Route(el)) => {
                self.server.clone().handle_from_peer(el).await;
                Ok(())
            }
            Ok(Admission::Reply(r)) => self.send(&r).await,
            Ok(Admission::Drop) => Ok(()),
        }
    }

    /// Sends the stream error (after a header if none was sent) and closes.
    async fn finish(mut self, end: End) {
        match end {
            End::Gone => {}
            End::Closed => self.wire.close(None).await,
            End::Error(e) => {
                if !self.header_sent {
                    let head = header(&self.local_domain(), None, Some(&random_id()), true);
                    let _ = self.wire.write(&head).await;
                }
                tracing::debug!(condition = e.condition.as_str(), text = ?e.text, "s2s stream error");
                self.wire.close(Some(&e)).await;
            }
        }
    }
}
