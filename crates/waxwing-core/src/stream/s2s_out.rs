//! Outgoing server-to-server streams.
//!
//! [`run`] is the task of one (local, remote) domain pair: it resolves and
//! connects, secures the stream (STARTTLS or XEP-0368 direct TLS),
//! authenticates (SASL EXTERNAL, XEP-0178, else dialback, XEP-0220, as the
//! originating server), then writes the pair's queue until the stream is
//! idle, broken or the server stops. When the peer offers XEP-0288, the
//! stream is made bidirectional first, and the session also routes the
//! peer's stanzas for the inverse pair. [`verify`] is the receiving
//! server's side of dialback: it asks the authoritative server whether a
//! key is valid.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::net::TcpStream;
use tracing::Instrument;
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError, StreamCondition, StreamError};
use waxwing_proto::xml::{Element, Limits, StreamEvent};

use crate::config::DialbackPolicy;
use crate::queue::{Outbox, Outq};
use crate::router::Server;
use crate::s2s::dialback;
use crate::s2s::resolve::{self, Target};
use crate::s2s::tls::CertStatus;
use crate::s2s::wire::{READ_CHUNK, ReadError, Wire, header};
use crate::s2s::{BIDI_FEATURE_NS, BIDI_NS, Pair, flush_at_shutdown, write_batch};
use crate::stream::compress;
use crate::stream::s2s_in::{Admission, admit_stanza, s2s_read_bucket};

/// Why a connection could not be set up; becomes the bounce error.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub condition: Condition,
    pub text: String,
}

impl Failure {
    fn not_found(text: impl Into<String>) -> Self {
        Failure {
            condition: Condition::RemoteServerNotFound,
            text: text.into(),
        }
    }

    fn timeout(text: impl Into<String>) -> Self {
        Failure {
            condition: Condition::RemoteServerTimeout,
            text: text.into(),
        }
    }

    pub fn error(&self) -> StanzaError {
        StanzaError::new(self.condition).with_text(self.text.clone())
    }
}

/// How an established outgoing stream ended.
enum End {
    /// No traffic for the idle timeout; we closed it.
    Idle,
    /// The peer closed it, or it broke.
    Closed,
    Shutdown,
}

/// The task of one domain pair. `tx` is the sender the manager holds, so
/// the task can remove exactly its own entry when it ends.
pub(crate) async fn run(server: Arc<Server>, pair: Pair, tx: Outq, mut rx: Outbox) {
    let span = tracing::info_span!("s2s_out", local = %pair.0, remote = %pair.1);
    async {
        let (local, remote) = (&pair.0, &pair.1);
        let timeout = server.config.s2s.connect_timeout;
        let connected = tokio::select! {
            r = tokio::time::timeout(timeout, connect_session(&server, local, remote)) => {
                r.unwrap_or_else(|_| Err(Failure::timeout(format!(
                    "no authenticated connection to {remote} within {}s", timeout.as_secs()
                ))))
            }
            _ = server.shutdown.cancelled() => Err(Failure::not_found("the server is shutting down")),
        };
        let end = match connected {
            Ok(out) => {
                tracing::info!(auth = out.auth, bidi = out.bidi, "outgoing s2s stream ready");
                server.s2s.opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let method = if out.auth.starts_with("sasl") { "sasl_external" } else { "dialback" };
                let _counted = server.metrics.s2s_stream("out", method);
                Ok(out.session(&server, &mut rx).await)
            }
            Err(f) => {
                tracing::info!(error = %f.text, "outgoing s2s connection failed");
                Err(f)
            }
        };
        // New stanzas now see a closed queue and start a fresh task.
        rx.close();
        server.s2s.forget(&pair, &tx);
        let mut left = Vec::new();
        while rx.try_recv_into(&mut left) {}
        match end {
            Err(f) => {
                for el in left {
                    server.clone().bounce(&el, f.error()).await;
                }
            }
            Ok(End::Idle | End::Closed) => {
                for el in left {
                    tokio::spawn(server.clone().route(el));
                }
            }
            Ok(End::Shutdown) => {}
        }
    }
    .instrument(span)
    .await
}

/// Connects and authenticates as `local` to `remote`.
async fn connect_session(
    server: &Arc<Server>,
    local: &str,
    remote: &str,
) -> Result<Outgoing, Failure> {
    let targets = targets(server, remote).await?;
    let mut last = Failure::not_found(format!("no address for {remote}"));
    for t in targets {
        let attempt = async {
            let mut out = Outgoing::connect(server, local, remote, &t).await?;
            let features = out.negotiate().await?;
            out.request_bidi(&features).await?;
            out.authenticate(features).await?;
            Ok::<_, Failure>(out)
        };
        match attempt.await {
            Ok(out) => return Ok(out),
            Err(f) => {
                tracing::debug!(host = %t.host, port = t.port, error = %f.text, "s2s target failed");
                last = f;
            }
        }
    }
    Err(last)
}

/// Dialback, receiving server role: asks `remote` (authoritative for the
/// originating domain) whether `key` is the key it issued for a stream
/// with id `id` from it to our `local`.
pub(crate) async fn verify(
    server: Arc<Server>,
    local: String,
    remote: String,
    id: String,
    key: String,
) -> Result<bool, Failure> {
    let timeout = server.config.s2s.connect_timeout;
    let work = async {
        let mut last = Failure::not_found(format!("no address for {remote}"));
        for t in targets(&server, &remote).await? {
            let attempt = async {
                let mut out = Outgoing::connect(&server, &local, &remote, &t).await?;
                out.negotiate().await?;
                out.verify(&id, &key).await
            };
            match attempt.await {
                Ok(valid) => return Ok(valid),
                Err(f) => last = f,
            }
        }
        Err(last)
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(Failure::timeout(
                "the authoritative server did not answer in time",
            ))
        })
}

async fn targets(server: &Server, remote: &str) -> Result<Vec<Target>, Failure> {
    match server.config.s2s.routes.get(remote) {
        Some(route) => Ok(vec![
            resolve::static_route(route).map_err(|e| Failure::not_found(e.to_string()))?,
        ]),
        None => resolve::targets(remote)
            .await
            .map_err(|e| Failure::not_found(e.to_string())),
    }
}

/// One outgoing stream while it is set up.
struct Outgoing {
    server: Arc<Server>,
    wire: Wire,
    local: String,
    remote: String,
    /// The id of the peer's latest stream header (dialback keys use it).
    stream_id: String,
    /// The peer's header had version 1.0 (else: legacy dialback, no features).
    version1: bool,
    cert: CertStatus,
    /// How we authenticated, for the logs.
    auth: &'static str,
    /// XEP-0288 enabled: the peer sends its stanzas for us here too.
    bidi: bool,
}

fn io_failure(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::not_found(format!("{what}: {e}"))
}

fn read_failure(e: ReadError) -> Failure {
    match e {
        ReadError::Gone => Failure::not_found("the remote server closed the connection"),
        ReadError::Stream(e) => {
            Failure::not_found(format!("the remote server sent bad XML: {e:?}"))
        }
    }
}

impl Outgoing {
    async fn connect(
        server: &Arc<Server>,
        local: &str,
        remote: &str,
        t: &Target,
    ) -> Result<Outgoing, Failure> {
        let addrs: Vec<_> = tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(|e| io_failure(&format!("resolving {}", t.host), e))?
            .collect();
        let mut tcp = None;
        let mut last_err = None;
        for a in addrs {
            match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(a)).await {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => last_err = Some(e.to_string()),
                Err(_) => last_err = Some(format!("connecting to {a} timed out")),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            Failure::not_found(format!(
                "cannot connect to {}:{}: {}",
                t.host,
                t.port,
                last_err.unwrap_or_else(|| "no addresses".into())
            ))
        })?;
        let c = server.live();
        let limits = Limits {
            max_stanza_bytes: c.max_stanza_bytes,
            max_depth: c.max_depth,
            max_attrs: c.max_attributes,
        };
        let mut out = Outgoing {
            server: server.clone(),
            wire: Wire::new(tcp, limits),
            local: local.into(),
            remote: remote.into(),
            stream_id: String::new(),
            version1: true,
            cert: CertStatus::Absent,
            auth: "none",
            bidi: false,
        };
        if t.direct_tls {
            let connector = server.s2s.tls.connector(local).clone();
            out.wire
                .io
                .connect_tls(&connector, remote)
                .await
                .map_err(|e| io_failure("direct TLS handshake", e))?;
        }
        Ok(out)
    }

    async fn next_element(&mut self) -> Result<Element, Failure> {
        match self.wire.next_event().await.map_err(read_failure)? {
            StreamEvent::Stanza(el) if el.is("error", ns::STREAM) => {
                let e = StreamError::from_element(&el);
                Err(Failure::not_found(format!(
                    "the remote server sent a stream error: {}",
                    e.map(|e| format!(
                        "{}{}",
                        e.condition,
                        e.text.map(|t| format!(" ({t})")).unwrap_or_default()
                    ))
                    .unwrap_or_else(|| el.to_xml())
                )))
            }
            StreamEvent::Stanza(el) => Ok(el),
            StreamEvent::Close => Err(Failure::not_found("the remote server closed the stream")),
            StreamEvent::Open(_) => Err(Failure::not_found("unexpected stream header")),
        }
    }

    /// Sends our header and reads the peer's (RFC 6120 §4.2).
    async fn open(&mut self) -> Result<(), Failure> {
        let h = header(&self.local, Some(&self.remote), None, true);
        self.wire
            .write(&h)
            .await
            .map_err(|e| io_failure("writing", e))?;
        match self.wire.next_event().await.map_err(read_failure)? {
            StreamEvent::Open(h) => {
                self.stream_id = h.id.unwrap_or_default();
                self.version1 = h
                    .version
                    .as_deref()
                    .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
                    .is_some_and(|m| m >= 1);
                Ok(())
            }
            _ => Err(Failure::not_found("expected a stream header")),
        }
    }

    async fn features(&mut self) -> Result<Element, Failure> {
        if !self.version1 {
            return Ok(Element::new("features", ns::STREAM));
        }
        let el = self.next_element().await?;
        if !el.is("features", ns::STREAM) {
            return Err(Failure::not_found("expected stream features"));
        }
        Ok(el)
    }

    /// Opens the stream and secures it; returns the features offered over TLS.
    async fn negotiate(&mut self) -> Result<Element, Failure> {
        loop {
            self.open().await?;
            let features = self.features().await?;
            let tls = self.wire.io.is_tls();
            if !tls && features.child("starttls", ns::TLS).is_some() {
                self.wire
                    .write(&format!("<starttls xmlns='{}'/>", ns::TLS))
                    .await
                    .map_err(|e| io_failure("writing", e))?;
                let el = self.next_element().await?;
                if !el.is("proceed", ns::TLS) {
                    return Err(Failure::not_found("STARTTLS refused"));
                }
                let connector = self.server.s2s.tls.connector(&self.local).clone();
                self.wire
                    .io
                    .connect_tls(&connector, &self.remote)
                    .await
                    .map_err(|e| io_failure("TLS handshake", e))?;
                self.wire.new_framer();
                continue;
            }
            if !tls && self.server.config.s2s.require_encryption {
                return Err(Failure::not_found(
                    "the remote server does not offer TLS, and we require it",
                ));
            }
            self.cert = self
                .server
                .s2s
                .tls
                .check(self.wire.io.peer_certificates().as_deref(), &self.remote);
            if let CertStatus::Invalid(why) = &self.cert {
                tracing::debug!(reason = %why, "remote certificate not trusted");
            }
            if self.server.config.s2s.policy(&self.remote) == DialbackPolicy::RequireValidCerts
                && !self.cert.is_valid()
            {
                return Err(Failure::not_found(format!(
                    "{} has no valid certificate, and its policy requires one",
                    self.remote
                )));
            }
            return Ok(features);
        }
    }

    /// XEP-0288 §2: asks for a bidirectional stream when the peer offers
    /// it, after TLS and before authenticating. There is no answer.
    async fn request_bidi(&mut self, features: &Element) -> Result<(), Failure> {
        if !self.server.config.s2s.bidi || features.child("bidi", BIDI_FEATURE_NS).is_none() {
            return Ok(());
        }
        self.wire
            .write(&format!("<bidi xmlns='{BIDI_NS}'/>"))
            .await
            .map_err(|e| io_failure("writing", e))?;
        self.bidi = true;
        self.server
            .s2s
            .bidi
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// SASL EXTERNAL when offered, else dialback as the originating server.
    async fn authenticate(&mut self, features: Element) -> Result<(), Failure> {
        let external = self.wire.io.is_tls()
            && features
                .child("mechanisms", ns::SASL)
                .is_some_and(|m| m.children().any(|c| c.text().trim() == "EXTERNAL"));
        if external {
            let authzid = base64::engine::general_purpose::STANDARD.encode(&self.local);
            self.wire
                .write(&format!(
                    "<auth xmlns='{}' mechanism='EXTERNAL'>{authzid}</auth>",
                    ns::SASL
                ))
                .await
                .map_err(|e| io_failure("writing", e))?;
            let el = self.next_element().await?;
            if el.is("success", ns::SASL) {
                self.wire.framer.reset();
                self.open().await?;
                let features = self.features().await?;
                self.auth = "sasl-external";
                return self.maybe_compress(&features).await;
            }
            tracing::debug!(answer = %el.to_xml(), "SASL EXTERNAL refused; trying dialback");
        }
        let key = self
            .server
            .s2s
            .secret()
            .key(&self.remote, &self.local, &self.stream_id);
        self.wire
            .send(&dialback::result_request(&self.local, &self.remote, &key))
            .await
            .map_err(|e| io_failure("writing", e))?;
        loop {
            let el = self.next_element().await?;
            if !el.is("result", dialback::NS) {
                continue;
            }
            if el.attr("from") != Some(self.remote.as_str())
                || el.attr("to") != Some(self.local.as_str())
            {
                continue;
            }
            return match el.attr("type") {
                Some("valid") => {
                    self.auth = "dialback";
                    Ok(())
                }
                Some("invalid") => Err(Failure::not_found(format!(
                    "{} refused our dialback key",
                    self.remote
                ))),
                _ => {
                    let err = el
                        .children()
                        .find(|c| c.name == "error")
                        .and_then(StanzaError::from_element);
                    Err(Failure::not_found(format!(
                        "dialback error from {}: {}",
                        self.remote,
                        err.map(|e| e.condition.to_string())
                            .unwrap_or_else(|| "unknown".into())
                    )))
                }
            };
        }
    }

    /// XEP-0138: asks for zlib when the peer offers it and we enable it;
    /// a refusal leaves the stream uncompressed.
    async fn maybe_compress(&mut self, features: &Element) -> Result<(), Failure> {
        let offered = features
            .child("compression", compress::FEATURE_NS)
            .is_some_and(|c| {
                c.children()
                    .any(|m| m.name == "method" && m.text().trim() == "zlib")
            });
        if !offered || !self.server.config.compression_enabled || self.wire.io.is_compressed() {
            return Ok(());
        }
        self.wire
            .write(&format!(
                "<compress xmlns='{0}'><method>zlib</method></compress>",
                compress::NS
            ))
            .await
            .map_err(|e| io_failure("writing", e))?;
        let el = self.next_element().await?;
        if !el.is("compressed", compress::NS) {
            tracing::debug!(answer = %el.to_xml(), "compression refused");
            return Ok(());
        }
        self.wire
            .io
            .compress(self.server.config.compression_max_ratio)
            .map_err(|e| io_failure("compressing", e))?;
        self.wire.new_framer();
        self.open().await?;
        self.features().await?;
        self.auth = "sasl-external+zlib";
        self.server
            .s2s
            .compressed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Dialback, receiving role: one `<db:verify/>` round trip.
    async fn verify(&mut self, id: &str, key: &str) -> Result<bool, Failure> {
        self.wire
            .send(&dialback::verify_request(
                &self.local,
                &self.remote,
                id,
                key,
            ))
            .await
            .map_err(|e| io_failure("writing", e))?;
        let valid = loop {
            let el = self.next_element().await?;
            if el.is("verify", dialback::NS) && el.attr("id") == Some(id) {
                break el.attr("type") == Some("valid")
                    && el.attr("from") == Some(self.remote.as_str());
            }
        };
        self.wire.close(None).await;
        Ok(valid)
    }

    /// An element the peer sent after authentication: on a bidirectional
    /// stream, stanzas from `remote` to `local` (the one pair this stream
    /// authenticated, XEP-0288 §2) and dialback requests; otherwise nothing
    /// is expected. `Err` ends the stream with that error.
    async fn on_peer_element(
        &mut self,
        el: Element,
        refused_in_a_row: &mut u32,
    ) -> Result<(), StreamError> {
        if !self.bidi {
            tracing::debug!(name = %el.name, "ignoring an element on an outgoing stream");
            return Ok(());
        }
        if el.ns == dialback::NS {
            return self.on_peer_dialback(&el).await;
        }
        if waxwing_proto::stanza::kind(&el).is_none() || el.ns != ns::SERVER {
            return Err(StreamError::new(StreamCondition::UnsupportedStanzaType)
                .with_text("not a stanza or dialback element"));
        }
        let (local, remote) = (&self.local, &self.remote);
        let allowed = |fd: &str, td: &str| {
            if fd != remote {
                tracing::warn!(
                    from = fd,
                    "stanza from another domain on a bidirectional stream"
                );
                return Err(StreamError::new(StreamCondition::InvalidFrom)
                    .with_text("that domain is not authenticated on this stream"));
            }
            if td != local {
                return Err(StreamError::new(StreamCondition::HostUnknown)
                    .with_text("this stream is authenticated for another domain of ours"));
            }
            Ok(())
        };
        match admit_stanza(&self.server, el, refused_in_a_row, allowed).await? {
            Admission::Route(el) => self.server.clone().handle_from_peer(el).await,
            Admission::Reply(r) => {
                if self.wire.send(&r).await.is_err() {
                    return Err(StreamError::new(StreamCondition::ConnectionTimeout));
                }
            }
            Admission::Drop => {}
        }
        Ok(())
    }

    /// Dialback on our bidirectional stream: the peer may verify keys with
    /// us (authoritative role); it may not authenticate further domain pairs
    /// here (we answer with a dialback error, and it opens its own stream).
    async fn on_peer_dialback(&mut self, el: &Element) -> Result<(), StreamError> {
        if el.attr("type").is_some() {
            return Ok(());
        }
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            return Err(StreamError::new(StreamCondition::ImproperAddressing)
                .with_text("dialback element without from/to"));
        };
        let answer = match el.name.as_str() {
            "verify" => {
                let id = el.attr("id").unwrap_or_default();
                let valid = self.server.is_local_domain(to)
                    && self.server.s2s.secret().verify(from, to, id, &el.text());
                dialback::verify_answer(to, from, id, valid)
            }
            "result" => dialback::result_error(
                to,
                from,
                &StanzaError::cancel(Condition::FeatureNotImplemented)
                    .with_text("open a stream of your own for further domains"),
            ),
            _ => {
                return Err(StreamError::new(StreamCondition::UnsupportedStanzaType)
                    .with_text("unknown dialback element"));
            }
        };
        if self.wire.send(&answer).await.is_err() {
            return Err(StreamError::new(StreamCondition::ConnectionTimeout));
        }
        Ok(())
    }

    /// Writes the queue until the stream ends (and, when bidirectional,
    /// routes what the peer sends).
    async fn session(mut self, server: &Arc<Server>, rx: &mut Outbox) -> End {
        let idle = server.config.s2s.idle_timeout;
        let mut last = tokio::time::Instant::now();
        let mut buf = [0u8; READ_CHUNK];
        let mut bucket = s2s_read_bucket(server);
        let mut refused_in_a_row = 0;
        loop {
            loop {
                match self.wire.framer.next_event() {
                    Ok(Some(StreamEvent::Stanza(el))) => {
                        if el.is("error", ns::STREAM) {
                            tracing::info!(error = %el.to_xml(), "stream error from the remote server");
                            self.wire.close(None).await;
                            return End::Closed;
                        }
                        if let Err(e) = self.on_peer_element(el, &mut refused_in_a_row).await {
                            self.wire.close(Some(&e)).await;
                            return End::Closed;
                        }
                    }
                    Ok(Some(StreamEvent::Close)) => {
                        self.wire.close(None).await;
                        return End::Closed;
                    }
                    Ok(Some(StreamEvent::Open(_))) => {
                        let e = StreamError::new(StreamCondition::BadFormat);
                        self.wire.close(Some(&e)).await;
                        return End::Closed;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.wire.close(Some(&e)).await;
                        return End::Closed;
                    }
                }
            }
            tokio::select! {
                _ = server.shutdown.cancelled() => {
                    // What modules queued on their way out (a room's 332
                    // presences) goes before the stream error.
                    flush_at_shutdown(&mut self.wire, rx).await;
                    let e = StreamError::new(StreamCondition::SystemShutdown);
                    self.wire.close(Some(&e)).await;
                    return End::Shutdown;
                }
                first = rx.recv() => {
                    let Some(batch) = first else {
                        self.wire.close(None).await;
                        return End::Closed;
                    };
                    let out = write_batch(batch, rx);
                    if let Err(e) = self.wire.write(&out).await {
                        tracing::info!(error = %e, "outgoing s2s write failed");
                        return End::Closed;
                    }
                    last = tokio::time::Instant::now();
                }
                r = self.wire.read_some(&mut buf) => match r {
                    Ok(n) => {
                        last = tokio::time::Instant::now();
                        let wait = bucket.take(n, std::time::Instant::now());
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                    }
                    Err(_) => return End::Closed,
                },
                _ = tokio::time::sleep_until(last + idle) => {
                    tracing::debug!("closing an idle outgoing s2s stream");
                    self.wire.close(None).await;
                    return End::Idle;
                }
            }
        }
    }
}
