//! In-process test harness: a server on ephemeral ports and a raw-XML client
//! that states conversations like Prosody's scansion scripts.
//!
//! Synchronisation is never a sleep. Every read waits for an expected
//! element with a deadline ([`TIMEOUT`]) that fails the test. To show that
//! something did *not* arrive, [`Client::sync`] sends a ping and collects
//! everything queued before the pong: one connection is ordered, so anything
//! caused earlier would be in front of it.
#![allow(dead_code)]

pub mod http;
pub mod panic;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use waxwing_core::listen::ListenerKind;
use waxwing_core::stream::compress::{Deflater, Inflater};
use waxwing_core::{Config, Running};
use waxwing_proto::jid::BareJid;
use waxwing_proto::ns;
use waxwing_proto::xml::{Element, Framer, Limits, StreamEvent, StreamHeader, parse_stanza};

/// How long any single expectation may wait before it fails the test.
///
/// Generous on purpose: a passing test never waits for it (every wait ends
/// on the element it expects, and [`Client::expect_nothing`] proves absence
/// with a ping round trip, not a timeout), so only a failing test pays it,
/// and a loaded 2-core CI machine running every suite at once cannot make a
/// correct test miss it.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// A loopback port that is free now, for a server whose port must be
/// written into another server's configuration before either starts.
///
/// Drawn at random *below* the kernel's ephemeral range (32768 and up), not
/// with `bind(0)`: a port from the ephemeral range can be taken, before the
/// server binds it, as the source port of any outgoing connection on the
/// machine (the suites open thousands at once), while a random port below
/// it collides only with another test drawing the same one.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut seed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    for _ in 0..1000 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = 10_000 + (seed >> 33) as u16 % 22_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between 10000 and 32000");
}

/// Whether a server did not start because a port it was given is taken:
/// another test process drew the same [`free_port`] between the draw and
/// the bind.
pub fn port_taken(e: &waxwing_core::StartError) -> bool {
    matches!(e, waxwing_core::StartError::Io(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

/// What `start` starts with a port from [`free_port`]; drawn again while
/// the port was taken before the server bound it ([`port_taken`]). For two
/// servers that route to each other: the first one listens on a port of
/// the kernel's, and `start` gives the drawn one to the second, which the
/// first must be told of before the second can start.
pub async fn on_free_port<T, F>(mut start: impl FnMut(u16) -> F) -> T
where
    F: std::future::Future<Output = Result<T, waxwing_core::StartError>>,
{
    for _ in 0..10 {
        match start(free_port()).await {
            Err(e) if port_taken(&e) => continue,
            started => return started.expect("servers start"),
        }
    }
    panic!("ten drawn ports in a row were taken before the server bound them");
}

/// `first` and `second` if `second` started; else `first` is stopped
/// (`stop`), not left running with routes to a port someone else has.
pub async fn both_or_stop<N, F>(
    first: N,
    second: Result<N, waxwing_core::StartError>,
    stop: impl FnOnce(N) -> F,
) -> Result<(N, N), waxwing_core::StartError>
where
    F: std::future::Future<Output = ()>,
{
    match second {
        Ok(second) => Ok((first, second)),
        Err(e) => {
            stop(first).await;
            Err(e)
        }
    }
}
/// The served domain.
pub const DOMAIN: &str = "localhost";

// ---------------------------------------------------------------------------
// Server

/// A server running in this process on `127.0.0.1:0`, with its own temp dir.
pub struct TestServer {
    pub running: Running,
    pub c2s: u16,
    pub direct_tls: u16,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// `overrides` is TOML spliced in after the top-level keys and before
    /// `[listen]`: top-level keys and any table except `[listen]`/`[storage]`.
    pub async fn start_with(overrides: &str) -> Self {
        let stores = waxwing_store::open("sqlite::memory:")
            .await
            .expect("in-memory database");
        Self::start_with_stores(overrides, stores).await
    }

    /// [`TestServer::start_with`] on stores the test built, e.g. with one
    /// store wrapped to fail on demand.
    pub async fn start_with_stores(overrides: &str, stores: waxwing_store::Stores) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            "data_dir = {data:?}\nhosts = [\"{DOMAIN}\"]\n{overrides}\n\
             [listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = [\"127.0.0.1:0\"]\n\
             [storage]\ndatabase = \"sqlite::memory:\"\n",
            data = dir.path().display().to_string(),
        );
        let config = Config::parse(&toml).unwrap_or_else(|e| panic!("test config: {e}\n{toml}"));
        let modules = modules(&config);
        let running = waxwing_core::start_with_stores(config, modules, stores)
            .await
            .expect("server starts");
        let c2s = listener_port(&running, ListenerKind::C2s);
        let direct_tls = listener_port(&running, ListenerKind::C2sDirectTls);
        TestServer {
            running,
            c2s,
            direct_tls,
            _dir: dir,
        }
    }

    /// Creates `local@localhost` with password `pw`.
    pub async fn add_user(&self, local: &str, pw: &str) {
        create_account_with(&self.running, local, DOMAIN, pw).await;
    }

    /// STARTTLS, SCRAM-SHA-256 and bind `resource`; no presence yet.
    /// The password of every test user is [`password`]`(user)`.
    pub async fn login(&self, user: &str, resource: &str) -> Client {
        let mut c = Client::connect_plain(self.c2s).await;
        c.open_stream().await;
        c.starttls().await;
        c.auth_scram_sha256(user, &password(user)).await;
        c.bind(Some(resource)).await;
        c
    }

    /// [`TestServer::login`], then fetch the roster (so the session gets
    /// pushes) and send initial presence with `priority`, waiting until the
    /// server has processed it. What arrived meanwhile is discarded.
    pub async fn login_available(&self, user: &str, resource: &str, priority: i8) -> Client {
        let mut c = self.login(user, resource).await;
        c.get_roster().await;
        c.available(priority).await;
        c
    }

    /// Adds `user` (password from [`password`]).
    pub async fn user(&self, user: &str) {
        self.add_user(user, &password(user)).await;
    }
}

impl TestServer {
    /// Logged in, roster fetched, available, and everything caused by that drained.
    pub async fn online(&self, user: &str, resource: &str) -> Client {
        let mut c = self.login_available(user, resource, 0).await;
        c.sync().await;
        c
    }

    /// Mutual `both` subscription between two local users, written straight
    /// to the store (tests about other features need contacts, not the handshake).
    pub async fn befriend(&self, a: &str, b: &str) {
        for (owner, contact) in [(a, b), (b, a)] {
            let mut item = waxwing_store::RosterItem::new(jid(contact));
            item.subscription = waxwing_store::Subscription::Both;
            self.running
                .server
                .stores
                .roster
                .put(&jid(owner), &item)
                .await
                .expect("roster row");
        }
    }
}

/// `local@localhost` as a prepared bare JID.
pub fn jid(local: &str) -> BareJid {
    BareJid::parse(&bare(local)).expect("valid JID")
}

/// An IQ of type result.
pub fn is_result(el: &Element) -> bool {
    el.attr("type") == Some("result")
}

/// Deterministic per-user test password.
pub fn password(user: &str) -> String {
    format!("{user}-secret-pw")
}

/// `local@localhost`.
pub fn bare(local: &str) -> String {
    format!("{local}@{DOMAIN}")
}

// ---------------------------------------------------------------------------
// TLS: test-only verifier

/// Accepts any server certificate. TEST ONLY: the server presents a
/// self-signed certificate generated on first start.
#[derive(Debug)]
pub struct DangerousAcceptAnyCertForTests(Arc<rustls::crypto::CryptoProvider>);

impl DangerousAcceptAnyCertForTests {
    pub fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        DangerousAcceptAnyCertForTests(provider)
    }
}

impl rustls::client::danger::ServerCertVerifier for DangerousAcceptAnyCertForTests {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    tls_connector_alpn(b"xmpp-client")
}

fn tls_connector_alpn(alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DangerousAcceptAnyCertForTests(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

// ---------------------------------------------------------------------------
// Transport

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// XEP-0138 zlib over one of the above.
    Zlib(Box<Zlib>),
    Gone,
}

/// The client side of XEP-0138: each write compressed with a sync flush.
struct Zlib {
    inner: Io,
    deflater: Deflater,
    inflater: Inflater,
    plain: Vec<u8>,
    plain_pos: usize,
    pending: Vec<u8>,
    pending_pos: usize,
    /// Bytes on the wire, each way.
    wire_out: usize,
    wire_in: usize,
}

impl Zlib {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.pending_pos < self.pending.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.pending_pos..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.pending_pos += n;
                    self.wire_out += n;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.pending.clear();
        self.pending_pos = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if self.plain_pos < self.plain.len() {
                let n = buf.remaining().min(self.plain.len() - self.plain_pos);
                buf.put_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
                self.plain_pos += n;
                if self.plain_pos == self.plain.len() {
                    self.plain.clear();
                    self.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut raw = [0u8; 4096];
            let mut rb = ReadBuf::new(&mut raw);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            if rb.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            self.wire_in += rb.filled().len();
            self.inflater
                .decompress(rb.filled(), &mut self.plain)
                .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Zlib(z) => z.poll_read(cx, buf),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Zlib(z) => {
                match z.poll_drain(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
                z.deflater.compress(buf, &mut z.pending);
                if let Poll::Ready(Err(e)) = z.poll_drain(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(buf.len()))
            }
            Io::Gone => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Zlib(z) => match z.poll_drain(cx) {
                Poll::Ready(Ok(())) => Pin::new(&mut z.inner).poll_flush(cx),
                other => other,
            },
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Zlib(z) => match z.poll_drain(cx) {
                Poll::Ready(Ok(())) => Pin::new(&mut z.inner).poll_shutdown(cx),
                other => other,
            },
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
}

// ---------------------------------------------------------------------------
// Client

/// One raw XML client connection.
pub struct Client {
    io: Io,
    framer: Framer,
    /// The server's latest stream header.
    pub header: Option<StreamHeader>,
    /// The latest `<stream:features/>`.
    pub features: Option<Element>,
    /// Bound full JID.
    pub jid: Option<String>,
    /// The server sent `</stream:stream>`.
    pub closed: bool,
    /// XEP-0440/RFC 9266 tls-exporter bytes once TLS is up (TLS 1.3).
    pub tls_exporter: Option<Vec<u8>>,
    /// The domain named in our stream headers ([`DOMAIN`] unless changed).
    pub domain: String,
    /// The `xml:lang` of our stream headers (`en` unless changed).
    pub lang: String,
    next_id: u32,
    /// Descriptions of everything read so far, for failure messages.
    log: VecDeque<String>,
}

fn client_framer() -> Framer {
    Framer::new(
        Limits {
            max_stanza_bytes: 4 << 20,
            ..Limits::default()
        },
        ns::CLIENT,
    )
}

/// The stream header a well-behaved client sends.
pub fn stream_header(to: &str) -> String {
    stream_header_lang(to, "en")
}

/// [`stream_header`] in language `lang`.
pub fn stream_header_lang(to: &str, lang: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' to='{to}' version='1.0' xml:lang='{lang}'>",
        ns::CLIENT,
        ns::STREAM
    )
}

impl Client {
    /// TCP to the STARTTLS listener; nothing sent yet.
    pub async fn connect_plain(port: u16) -> Client {
        let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("connect timed out")
            .expect("connect");
        tcp.set_nodelay(true).ok();
        Client::new(Io::Plain(tcp))
    }

    /// TCP to the STARTTLS listener from the loopback address `source`
    /// (any 127.0.0.0/8 address works on Linux), for tests that need
    /// clients at different addresses; nothing sent yet.
    pub async fn connect_plain_from(port: u16, source: std::net::IpAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(std::net::SocketAddr::new(source, 0))
            .expect("bind the source address");
        let tcp = tokio::time::timeout(TIMEOUT, socket.connect(([127, 0, 0, 1], port).into()))
            .await
            .expect("connect timed out")
            .expect("connect");
        tcp.set_nodelay(true).ok();
        Client::new(Io::Plain(tcp))
    }

    /// TLS from the first byte (XEP-0368); nothing sent yet.
    pub async fn connect_direct_tls(port: u16) -> Client {
        let mut c = Client::connect_plain(port).await;
        c.tls_handshake().await;
        c
    }

    fn new(io: Io) -> Client {
        Client {
            io,
            framer: client_framer(),
            header: None,
            features: None,
            jid: None,
            closed: false,
            tls_exporter: None,
            domain: DOMAIN.to_string(),
            lang: "en".to_string(),
            next_id: 0,
            log: VecDeque::new(),
        }
    }

    /// A fresh stanza id.
    pub fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{}", self.next_id)
    }

    /// Writes raw bytes.
    pub async fn send_bytes(&mut self, data: &[u8]) {
        tokio::time::timeout(TIMEOUT, async {
            self.io.write_all(data).await?;
            self.io.flush().await
        })
        .await
        .expect("write timed out")
        .expect("write");
    }

    /// Writes raw XML.
    pub async fn send(&mut self, xml: &str) {
        self.send_bytes(xml.as_bytes()).await;
    }

    /// Next framer event, reading as needed; panics on timeout.
    async fn next_event(&mut self, what: &str) -> Option<StreamEvent> {
        let mut buf = [0u8; 8192];
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match self.framer.next_event() {
                Ok(Some(ev)) => return Some(ev),
                Ok(None) => {}
                Err(e) => panic!("server sent bad XML ({e:?}) while waiting for {what}"),
            }
            if self.closed {
                return None;
            }
            let n = match tokio::time::timeout_at(deadline, self.io.read(&mut buf)).await {
                Err(_) => panic!(
                    "timed out after {TIMEOUT:?} waiting for {what}; recently received:\n{}",
                    self.recent()
                ),
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
            };
            if n == 0 {
                return None;
            }
            self.framer.feed(&buf[..n]);
        }
    }

    fn recent(&self) -> String {
        self.log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn remember(&mut self, s: String) {
        if self.log.len() == 20 {
            self.log.pop_front();
        }
        self.log.push_back(s);
    }

    /// The next top-level element; stream headers are recorded on the way.
    /// Panics if the stream ends first.
    pub async fn next(&mut self, what: &str) -> Element {
        match self.try_next(what).await {
            Some(el) => el,
            None => panic!(
                "stream ended while waiting for {what}; recently received:\n{}",
                self.recent()
            ),
        }
    }

    /// The next top-level element, or `None` once the stream has ended.
    pub async fn try_next(&mut self, what: &str) -> Option<Element> {
        loop {
            match self.next_event(what).await? {
                StreamEvent::Open(h) => {
                    self.remember(format!("<stream:stream id={:?}>", h.id));
                    self.header = Some(h);
                }
                StreamEvent::Stanza(el) => {
                    self.remember(el.to_xml_in(ns::CLIENT));
                    return Some(el);
                }
                StreamEvent::Close => {
                    self.remember("</stream:stream>".into());
                    self.closed = true;
                    return None;
                }
            }
        }
    }

    /// The next element must match `pattern` (see [`matches_pattern`]).
    pub async fn expect(&mut self, pattern: &str) -> Element {
        let el = self.next(pattern).await;
        assert!(
            matches_pattern(&el, pattern),
            "expected {pattern}\n     got {}",
            el.to_xml_in(ns::CLIENT)
        );
        el
    }

    /// The next element must satisfy `pred`.
    pub async fn expect_with(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
        let el = self.next(what).await;
        assert!(
            pred(&el),
            "expected {what}\n     got {}",
            el.to_xml_in(ns::CLIENT)
        );
        el
    }

    /// The next `patterns.len()` elements must match the patterns, in any order.
    pub async fn expect_unordered(&mut self, patterns: &[&str]) -> Vec<Element> {
        let mut left: Vec<&str> = patterns.to_vec();
        let mut out = Vec::new();
        while !left.is_empty() {
            let el = self.next(&left.join(" | ")).await;
            let Some(i) = left.iter().position(|p| matches_pattern(&el, p)) else {
                panic!(
                    "expected one of\n  {}\n     got {}",
                    left.join("\n  "),
                    el.to_xml_in(ns::CLIENT)
                );
            };
            left.remove(i);
            out.push(el);
        }
        out
    }

    /// Sends a ping to our own account and returns everything that arrived
    /// before its answer.
    pub async fn sync(&mut self) -> Vec<Element> {
        let id = self.id("sync");
        self.send(&format!(
            "<iq type='get' id='{id}'><ping xmlns='{}'/></iq>",
            ns::PING
        ))
        .await;
        let mut before = Vec::new();
        loop {
            let el = self.next(&format!("the pong to {id}")).await;
            if el.name == "iq" && el.attr("id") == Some(id.as_str()) {
                assert_eq!(el.attr("type"), Some("result"), "ping failed: {el}");
                return before;
            }
            before.push(el);
        }
    }

    /// Nothing is pending on this connection (see module docs).
    pub async fn expect_nothing(&mut self) {
        let got = self.sync().await;
        assert!(
            got.is_empty(),
            "expected nothing, got:\n{}",
            got.iter()
                .map(|e| e.to_xml_in(ns::CLIENT))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// The next element must be `<stream:error>` with `condition`, followed
    /// by the end of the stream. Returns the error element.
    pub async fn expect_stream_error(&mut self, condition: &str) -> Element {
        let el = self.next(&format!("stream error <{condition}/>")).await;
        assert!(
            el.is("error", ns::STREAM),
            "expected stream error <{condition}/>, got {}",
            el.to_xml_in(ns::CLIENT)
        );
        assert!(
            el.child(condition, ns::STREAMS_ERRORS).is_some(),
            "expected stream error <{condition}/>, got {}",
            el.to_xml_in(ns::CLIENT)
        );
        self.expect_closed().await;
        el
    }

    /// The server ends the stream (closing tag and/or EOF) with nothing else first.
    pub async fn expect_closed(&mut self) {
        if let Some(el) = self.try_next("the end of the stream").await {
            panic!(
                "expected the stream to end, got {}",
                el.to_xml_in(ns::CLIENT)
            );
        }
        // After </stream:stream> the server closes the socket.
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(TIMEOUT, self.io.read(&mut buf)).await {
                Err(_) => panic!("the server did not close the socket after the stream"),
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Sends our header, reads the server's and its features.
    /// XEP-0138: asks for zlib, switches to it and restarts the stream.
    pub async fn compress(&mut self) -> Element {
        self.send("<compress xmlns='http://jabber.org/protocol/compress'><method>zlib</method></compress>")
            .await;
        self.expect("<compressed xmlns='http://jabber.org/protocol/compress'/>")
            .await;
        let inner = std::mem::replace(&mut self.io, Io::Gone);
        self.io = Io::Zlib(Box::new(Zlib {
            inner,
            deflater: Deflater::new(),
            // The client trusts the server: no practical bound.
            inflater: Inflater::new(u64::MAX / 2),
            plain: Vec::new(),
            plain_pos: 0,
            pending: Vec::new(),
            pending_pos: 0,
            wire_out: 0,
            wire_in: 0,
        }));
        self.framer = client_framer();
        self.open_stream().await
    }

    /// Compressed bytes sent and received since [`Client::compress`].
    pub fn wire_bytes(&self) -> Option<(usize, usize)> {
        match &self.io {
            Io::Zlib(z) => Some((z.wire_out, z.wire_in)),
            _ => None,
        }
    }

    pub async fn open_stream(&mut self) -> Element {
        let header = stream_header_lang(&self.domain, &self.lang);
        self.send(&header).await;
        self.read_features().await
    }

    /// Reads `<stream:features/>` (after the server's header).
    pub async fn read_features(&mut self) -> Element {
        let f = self
            .expect_with("<stream:features>", |e| e.is("features", ns::STREAM))
            .await;
        assert!(self.header.is_some(), "features without a stream header");
        self.features = Some(f.clone());
        f
    }

    async fn tls_handshake(&mut self) {
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) else {
            panic!("TLS on a stream that is not plain TCP");
        };
        let name = rustls::pki_types::ServerName::try_from(DOMAIN).expect("server name");
        let tls = tokio::time::timeout(TIMEOUT, tls_connector().connect(name, tcp))
            .await
            .expect("TLS handshake timed out")
            .expect("TLS handshake");
        let conn = tls.get_ref().1;
        self.tls_exporter = (conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3))
            .then(|| {
                conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
                    .ok()
                    .map(|k| k.to_vec())
            })
            .flatten();
        self.io = Io::Tls(Box::new(tls));
        self.framer = client_framer();
        self.header = None;
    }

    /// `<starttls/>`, `<proceed/>`, handshake, new stream; returns the new features.
    pub async fn starttls(&mut self) -> Element {
        self.send(&format!("<starttls xmlns='{}'/>", ns::TLS)).await;
        self.expect(&format!("<proceed xmlns='{}'/>", ns::TLS))
            .await;
        self.tls_handshake().await;
        self.open_stream().await
    }

    /// SASL PLAIN; panics unless it succeeds. Restarts the stream.
    pub async fn auth_plain(&mut self, user: &str, pw: &str) -> Element {
        self.send(&plain_auth(user, pw)).await;
        self.expect(&format!("<success xmlns='{}'/>", ns::SASL))
            .await;
        self.restart().await
    }

    /// After SASL success: new header, new features.
    async fn restart(&mut self) -> Element {
        self.framer.reset();
        self.header = None;
        self.open_stream().await
    }

    /// SCRAM-SHA-256; panics unless it succeeds (and the server proves
    /// it knows the password). Restarts the stream.
    pub async fn auth_scram_sha256(&mut self, user: &str, pw: &str) -> Element {
        self.scram(user, pw, false).await
    }

    /// SCRAM-SHA-256-PLUS with tls-exporter channel binding.
    pub async fn auth_scram_sha256_plus(&mut self, user: &str, pw: &str) -> Element {
        self.scram(user, pw, true).await
    }

    async fn scram(&mut self, user: &str, pw: &str, plus: bool) -> Element {
        let (mech, gs2) = if plus {
            ("SCRAM-SHA-256-PLUS", "p=tls-exporter,,")
        } else {
            ("SCRAM-SHA-256", "n,,")
        };
        let cnonce = waxwing_core::random_id();
        let username = user.replace('=', "=3D").replace(',', "=2C");
        let client_first_bare = format!("n={username},r={cnonce}");
        self.send(&format!(
            "<auth xmlns='{}' mechanism='{mech}'>{}</auth>",
            ns::SASL,
            B64.encode(format!("{gs2}{client_first_bare}"))
        ))
        .await;
        let challenge = self
            .expect(&format!("<challenge xmlns='{}'/>", ns::SASL))
            .await;
        let server_first = String::from_utf8(
            B64.decode(challenge.text().trim())
                .expect("base64 challenge"),
        )
        .expect("utf-8 challenge");
        let field = |k: &str| {
            server_first
                .split(',')
                .find_map(|p| p.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k}= in {server_first}"))
                .to_string()
        };
        let nonce = field("r");
        assert!(nonce.starts_with(&cnonce), "server nonce must extend ours");
        let salt = B64.decode(field("s")).expect("salt");
        let iterations: u32 = field("i").parse().expect("iterations");
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2::<Hmac<Sha256>>(pw.as_bytes(), &salt, iterations, &mut salted)
            .expect("pbkdf2");
        let hmac = |key: &[u8], data: &[u8]| -> Vec<u8> {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac key");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        };
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key);
        let mut cbind = gs2.as_bytes().to_vec();
        if plus {
            cbind.extend(
                self.tls_exporter
                    .as_ref()
                    .expect("tls-exporter needs TLS 1.3"),
            );
        }
        let without_proof = format!("c={},r={nonce}", B64.encode(&cbind));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        self.send(&format!(
            "<response xmlns='{}'>{}</response>",
            ns::SASL,
            B64.encode(format!("{without_proof},p={}", B64.encode(proof)))
        ))
        .await;
        let success = self
            .expect(&format!("<success xmlns='{}'/>", ns::SASL))
            .await;
        let server_final =
            String::from_utf8(B64.decode(success.text().trim()).expect("base64 success"))
                .expect("utf-8");
        let server_key = hmac(&salted, b"Server Key");
        let expected = format!(
            "v={}",
            B64.encode(hmac(&server_key, auth_message.as_bytes()))
        );
        assert_eq!(server_final, expected, "server signature");
        self.restart().await
    }

    /// Binds `resource` (or lets the server pick); returns the full JID.
    pub async fn bind(&mut self, resource: Option<&str>) -> String {
        let id = self.id("bind");
        let inner = resource
            .map(|r| format!("<resource>{r}</resource>"))
            .unwrap_or_default();
        self.send(&format!(
            "<iq type='set' id='{id}'><bind xmlns='{}'>{inner}</bind></iq>",
            ns::BIND
        ))
        .await;
        let reply = self.expect(&format!("<iq type='result' id='{id}'/>")).await;
        let jid = reply
            .child("bind", ns::BIND)
            .and_then(|b| b.child("jid", ns::BIND))
            .map(|j| j.text())
            .expect("bind result carries the JID");
        self.jid = Some(jid.clone());
        jid
    }

    /// The bound full JID.
    pub fn full(&self) -> &str {
        self.jid.as_deref().expect("bound")
    }

    /// Roster get; returns the `<query/>` (absent for an up-to-date `ver`).
    pub async fn get_roster(&mut self) -> Option<Element> {
        self.get_roster_ver(None).await
    }

    pub async fn get_roster_ver(&mut self, ver: Option<&str>) -> Option<Element> {
        let id = self.id("roster");
        let ver = ver.map(|v| format!(" ver='{v}'")).unwrap_or_default();
        self.send(&format!(
            "<iq type='get' id='{id}'><query xmlns='{}'{ver}/></iq>",
            ns::ROSTER
        ))
        .await;
        let reply = self.expect(&format!("<iq type='result' id='{id}'/>")).await;
        reply.child("query", ns::ROSTER).cloned()
    }

    /// Sends available presence with `priority` and returns everything that
    /// arrived before the server finished processing it (probe answers,
    /// other resources' presence, offline messages …).
    pub async fn available(&mut self, priority: i8) -> Vec<Element> {
        self.send(&format!(
            "<presence><priority>{priority}</priority></presence>"
        ))
        .await;
        self.sync().await
    }

    /// Drops the connection without a closing tag (a crashed client).
    pub fn drop_abruptly(self) {
        drop(self);
    }

    /// Sends an IQ and returns the answer with the same id, skipping anything
    /// else that arrives first (presence, announcements).
    pub async fn iq(&mut self, ty: &str, to: Option<&str>, payload: &str) -> Element {
        let id = self.id("iq");
        let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
        self.send(&format!("<iq type='{ty}' id='{id}'{to}>{payload}</iq>"))
            .await;
        loop {
            let el = self.next(&format!("the answer to {id}")).await;
            if el.name == "iq" && el.attr("id") == Some(id.as_str()) {
                return el;
            }
        }
    }

    /// Sends `</stream:stream>`.
    pub async fn close_stream(&mut self) {
        self.send("</stream:stream>").await;
    }

    /// Writes `unit` over and over without reading, until a write fails,
    /// blocks for [`TIMEOUT`] (nobody reads the other end any more) or
    /// `max_bytes` went out. Returns the bytes written.
    pub async fn send_without_reading(&mut self, unit: &str, max_bytes: usize) -> usize {
        let chunk = unit.repeat((65536 / unit.len()).max(1));
        let mut sent = 0;
        while sent < max_bytes {
            let write = async {
                self.io.write_all(chunk.as_bytes()).await?;
                self.io.flush().await
            };
            match tokio::time::timeout(TIMEOUT, write).await {
                Ok(Ok(())) => sent += chunk.len(),
                Ok(Err(_)) | Err(_) => break,
            }
        }
        sent
    }
}

/// `<auth mechanism='PLAIN'>` for `user` / `pw`.
pub fn plain_auth(user: &str, pw: &str) -> String {
    format!(
        "<auth xmlns='{}' mechanism='PLAIN'>{}</auth>",
        ns::SASL,
        B64.encode(format!("\0{user}\0{pw}"))
    )
}

// ---------------------------------------------------------------------------
// Matching

/// Scansion-style matching: `pattern` is an XML element (default namespace
/// `jabber:client`). `el` matches when it has the same name and namespace,
/// every attribute of the pattern with the same value (`{any}` matches any
/// value that is present, `{absent}` requires the attribute to be missing), every child of the pattern matches some distinct
/// child of `el`, and, if the pattern has non-blank text, the same text.
/// Extra attributes and children in `el` are allowed.
pub fn matches_pattern(el: &Element, pattern: &str) -> bool {
    let p = parse_stanza(pattern, ns::CLIENT)
        .unwrap_or_else(|e| panic!("bad pattern {pattern}: {e:?}"));
    element_matches(el, &p)
}

fn element_matches(el: &Element, p: &Element) -> bool {
    if el.name != p.name || el.ns != p.ns {
        return false;
    }
    for (k, v) in &p.attrs {
        if v == "{absent}" {
            if el.attr(k).is_some() {
                return false;
            }
            continue;
        }
        match el.attr(k) {
            Some(actual) if v == "{any}" || actual == v => {}
            _ => return false,
        }
    }
    let mut used = vec![false; el.children().count()];
    for pc in p.children() {
        let found = el
            .children()
            .enumerate()
            .find(|(i, c)| !used[*i] && element_matches(c, pc));
        match found {
            Some((i, _)) => used[i] = true,
            None => return false,
        }
    }
    let text = p.text();
    if !text.trim().is_empty() && el.text() != text {
        return false;
    }
    true
}

/// Names (`{ns}name`) of an element's children, in order.
pub fn child_names(el: &Element) -> Vec<String> {
    el.children()
        .map(|c| format!("{{{}}}{}", c.ns, c.name))
        .collect()
}

/// `<stream:error>` as a pattern-free check for stanza error replies:
/// the stanza is of type error with `condition` in the stanzas namespace.
pub fn has_stanza_error(el: &Element, condition: &str) -> bool {
    el.attr("type") == Some("error")
        && el
            .child("error", ns::CLIENT)
            .is_some_and(|e| e.child(condition, ns::STANZAS).is_some())
}

/// The modules of a test server: the binary's list, after [`panic::Panicker`]
/// (inert unless a test asks it to panic).
pub fn modules(config: &Config) -> Vec<Arc<dyn waxwing_core::hooks::ModuleLoader>> {
    let mut modules = vec![waxwing_core::hooks::load(panic::Panicker)];
    modules.extend(waxwing::modules::all(config));
    modules
}

/// A server whose SQLite database lives in `dir`, so that a second
/// server started on the same `dir` sees what the first stored.
pub async fn start_on(dir: &std::path::Path) -> (Running, u16) {
    let toml = format!(
        "data_dir = {data:?}\nhosts = [\"{DOMAIN}\"]\n\
         [listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = []\n\
         [storage]\ndatabase = \"sqlite://{db}\"\n",
        data = dir.display().to_string(),
        db = dir.join("waxwing.db").display(),
    );
    let config = Config::parse(&toml).expect("config");
    let modules = modules(&config);
    let running = waxwing_core::start(config, modules).await.expect("starts");
    let port = listener_port(&running, ListenerKind::C2s);
    (running, port)
}

/// The port a listener of `kind` was bound to (configured as port 0).
pub fn listener_port(running: &Running, kind: ListenerKind) -> u16 {
    running
        .listeners
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, a)| a.port())
        .expect("listener bound")
}

/// STARTTLS, SCRAM-SHA-256 and bind resource `r` on `port`; no presence.
pub async fn login_on(port: u16, user: &str) -> Client {
    let mut c = Client::connect_plain(port).await;
    c.open_stream().await;
    c.starttls().await;
    c.auth_scram_sha256(user, &password(user)).await;
    c.bind(Some("r")).await;
    c
}

/// Creates `local@domain` on `running`, with the test password [`password`]`(local)`.
pub async fn create_account(running: &Running, local: &str, domain: &str) {
    create_account_with(running, local, domain, &password(local)).await;
}

/// Creates `local@domain` on `running` with password `pw`.
pub async fn create_account_with(running: &Running, local: &str, domain: &str, pw: &str) {
    let jid = BareJid::new(Some(local), domain).expect("valid JID");
    let secrets = waxwing_core::credentials::make_secrets(pw, 4096).expect("secrets");
    running
        .server
        .stores
        .accounts
        .create(&jid, &secrets)
        .await
        .expect("account created");
}
