//! A minimal XMPP client: connect, STARTTLS, SASL (SCRAM-SHA-256, then
//! SCRAM-SHA-1, then PLAIN, as offered), bind. Benchmark only: the server's
//! certificate is not verified.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::scan::{self, Item};

/// Where and how to connect; shared by every connection of a run.
pub struct Target {
    pub addr: String,
    pub domain: String,
    pub tls: bool,
    pub password: String,
    /// Force one mechanism (e.g. "PLAIN"); otherwise the best offered.
    pub mechanism: Option<String>,
    pub connector: TlsConnector,
    pub scram_cache: ScramCache,
    /// RFC 7395: connect to this `ws://` URL at `addr` instead of XMPP over TCP.
    pub websocket: Option<String>,
}

impl Target {
    pub fn new(
        addr: String,
        domain: String,
        tls: bool,
        password: String,
        mechanism: Option<String>,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth();
        // Every login pays a full handshake, on every server alike: session
        // resumption would measure the ticket cache, not the login path.
        config.resumption = rustls::client::Resumption::disabled();
        Target {
            addr,
            domain,
            tls,
            password,
            mechanism,
            connector: TlsConnector::from(Arc::new(config)),
            scram_cache: ScramCache::default(),
            websocket: None,
        }
    }

    pub fn bare(&self, user: &str) -> String {
        format!("{user}@{}", self.domain)
    }
}

/// Salted passwords by (hash, salt, iterations). PBKDF2 with 4096 rounds
/// costs the client more than SCRAM costs the server (which stores the
/// derived keys), so without this cache a login benchmark measures the
/// generator. Real clients cache the salted password too.
#[derive(Default, Clone)]
pub struct ScramCache(Arc<Mutex<HashMap<ScramKey, Vec<u8>>>>);

/// (hash name, salt, iterations): what a salted password depends on
/// besides the password, which is the same for every benchmark account.
type ScramKey = (String, Vec<u8>, u32);

impl ScramCache {
    pub fn load(&self, path: &str) {
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        let mut map = self.0.lock().unwrap();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if let [h, salt, iter, salted] = f[..]
                && let (Ok(s), Ok(i), Ok(p)) = (B64.decode(salt), iter.parse(), B64.decode(salted))
            {
                map.insert((h.to_string(), s, i), p);
            }
        }
    }

    pub fn save(&self, path: &str) -> io::Result<()> {
        let map = self.0.lock().unwrap();
        let mut out = String::new();
        for ((h, s, i), p) in map.iter() {
            out.push_str(&format!("{h} {} {i} {}\n", B64.encode(s), B64.encode(p)));
        }
        std::fs::write(path, out)
    }

    fn salted(&self, hash: Hash, password: &str, salt: &[u8], iter: u32) -> Vec<u8> {
        let key = (hash.name().to_string(), salt.to_vec(), iter);
        if let Some(v) = self.0.lock().unwrap().get(&key) {
            return v.clone();
        }
        let v = hash.pbkdf2(password.as_bytes(), salt, iter);
        self.0.lock().unwrap().insert(key, v.clone());
        v
    }
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Plain TCP or TLS over it, or a WebSocket.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Ws(Box<crate::ws::WsIo>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Ws(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Reads whole top-level elements from an [`Io`].
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
    /// Reads from the connection so far: stanzas that came in one read
    /// arrived at the same moment (see [`Reader::reads`]).
    reads: u64,
}

/// Bytes asked of the connection per read: a full TLS record's plaintext.
const READ_CHUNK: usize = 16 * 1024;

/// What [`Reader::next`] returns.
pub enum Got<'a> {
    Open,
    Stanza(&'a [u8]),
    Close,
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            buf: Vec::with_capacity(4096),
            start: 0,
            reads: 0,
        }
    }
}

impl Reader {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Next item, reading from `io` as needed. `Err` on EOF.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> anyhow::Result<Got<'_>> {
        loop {
            if let Some((item, n)) = scan::next_item(&self.buf[self.start..]) {
                let at = self.start;
                self.start += n;
                match item {
                    Item::Skip(_) => continue,
                    Item::Open(_) => return Ok(Got::Open),
                    Item::Close => return Ok(Got::Close),
                    Item::Stanza(len) => return Ok(Got::Stanza(&self.buf[at..at + len])),
                }
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            // Into spare capacity: no zeroing of a buffer the read overwrites.
            self.buf.reserve(READ_CHUNK);
            let n = io.read_buf(&mut self.buf).await?;
            self.reads += 1;
            if n == 0 {
                bail!("connection closed by server");
            }
        }
    }

    /// How many reads from the connection there have been. A receiver that
    /// sees this unchanged since its last stanza knows the stanza came in the
    /// same read, so it can reuse the clock reading it took then.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// Next stanza (skipping stream headers); error on stream close.
    pub async fn stanza<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> anyhow::Result<Vec<u8>> {
        loop {
            match self.next(io).await? {
                Got::Open => continue,
                Got::Stanza(s) => return Ok(s.to_vec()),
                Got::Close => bail!("stream closed by server"),
            }
        }
    }
}

/// A connected, authenticated and bound session.
pub struct Session {
    pub io: Io,
    pub reader: Reader,
    pub jid: String,
}

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xml:lang='en' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
}

/// Opens a stream and returns the features element.
async fn open(io: &mut Io, reader: &mut Reader, domain: &str) -> anyhow::Result<Vec<u8>> {
    reader.clear();
    io.write_all(header(domain).as_bytes()).await?;
    let f = reader.stanza(io).await?;
    if scan::tag_name(&f).ends_with(b"error") {
        bail!("stream error: {}", String::from_utf8_lossy(&f));
    }
    Ok(f)
}

/// TCP connect, STARTTLS if asked. Returns the transport and the features.
pub async fn connect(t: &Target) -> anyhow::Result<(Io, Reader, Vec<u8>)> {
    if let Some(url) = &t.websocket {
        let ws = crate::ws::WsIo::connect(&t.addr, url, &t.domain).await?;
        let mut io = Io::Ws(Box::new(ws));
        let mut reader = Reader::default();
        let features = open(&mut io, &mut reader, &t.domain).await?;
        return Ok((io, reader, features));
    }
    let tcp = TcpStream::connect(&t.addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let mut io = Io::Plain(tcp);
    let mut reader = Reader::default();
    let mut features = open(&mut io, &mut reader, &t.domain).await?;
    if t.tls {
        if !scan::contains(&features, b"<starttls") {
            bail!("server does not offer STARTTLS");
        }
        io.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await?;
        let r = reader.stanza(&mut io).await?;
        if scan::tag_name(&r) != b"proceed" {
            bail!("STARTTLS refused: {}", String::from_utf8_lossy(&r));
        }
        let Io::Plain(tcp) = io else { unreachable!() };
        let name = ServerName::try_from(t.domain.clone())?;
        let tls = t
            .connector
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        io = Io::Tls(Box::new(tls));
        features = open(&mut io, &mut reader, &t.domain).await?;
    }
    Ok((io, reader, features))
}

/// In-band registration (XEP-0077) on an open stream.
pub async fn register(
    io: &mut Io,
    reader: &mut Reader,
    user: &str,
    password: &str,
) -> anyhow::Result<()> {
    io.write_all(
        format!(
            "<iq type='set' id='reg1'><query xmlns='jabber:iq:register'><username>{user}</username><password>{password}</password></query></iq>"
        )
        .as_bytes(),
    )
    .await?;
    loop {
        let s = reader.stanza(io).await?;
        if scan::attr(&s, b"id") == Some(b"reg1") {
            match scan::attr(&s, b"type") {
                Some(b"result") => return Ok(()),
                // Already registered by an earlier run: fine for a benchmark.
                _ if scan::contains(&s, b"<conflict") => return Ok(()),
                _ => bail!(
                    "registration of {user} failed: {}",
                    String::from_utf8_lossy(&s)
                ),
            }
        }
    }
}

/// Connects, authenticates and binds `user`.
pub async fn login(t: &Target, user: &str) -> anyhow::Result<Session> {
    let (io, reader, features) = connect(t).await?;
    login_on(t, io, reader, features, user).await
}

/// Registers (XEP-0077) then logs in on the same connection.
pub async fn register_and_login(t: &Target, user: &str) -> anyhow::Result<Session> {
    let (mut io, mut reader, features) = connect(t).await?;
    register(&mut io, &mut reader, user, &t.password).await?;
    login_on(t, io, reader, features, user).await
}

async fn login_on(
    t: &Target,
    mut io: Io,
    mut reader: Reader,
    features: Vec<u8>,
    user: &str,
) -> anyhow::Result<Session> {
    let offered = scan::all_child_texts(&features, b"mechanism");
    let pick = |m: &str| offered.contains(&m.as_bytes());
    let mech = match &t.mechanism {
        Some(m) if pick(m) => m.as_str(),
        Some(m) => bail!("server does not offer {m}"),
        None if pick("SCRAM-SHA-256") => "SCRAM-SHA-256",
        None if pick("SCRAM-SHA-1") => "SCRAM-SHA-1",
        None if pick("PLAIN") => "PLAIN",
        None => bail!(
            "no usable SASL mechanism in {}",
            String::from_utf8_lossy(&features)
        ),
    };
    match mech {
        "PLAIN" => {
            let cred = B64.encode(format!("\0{user}\0{}", t.password));
            io.write_all(
                format!(
                    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>"
                )
                .as_bytes(),
            )
            .await?;
            let r = reader.stanza(&mut io).await?;
            if scan::tag_name(&r) != b"success" {
                bail!("PLAIN failed for {user}: {}", String::from_utf8_lossy(&r));
            }
        }
        _ => {
            let hash = if mech == "SCRAM-SHA-256" {
                Hash::Sha256
            } else {
                Hash::Sha1
            };
            scram(t, &mut io, &mut reader, user, hash).await?;
        }
    }
    let features = open(&mut io, &mut reader, &t.domain).await?;
    io.write_all(
        b"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bench</resource></bind></iq>",
    )
    .await?;
    let jid = loop {
        let s = reader.stanza(&mut io).await?;
        if scan::attr(&s, b"id") == Some(b"bind1") {
            if scan::attr(&s, b"type") != Some(b"result") {
                bail!("bind failed: {}", String::from_utf8_lossy(&s));
            }
            let jid =
                scan::child_text(&s, b"jid").ok_or_else(|| anyhow!("bind result without jid"))?;
            break String::from_utf8_lossy(jid).into_owned();
        }
    };
    // RFC 3921 sessions: only when the server says they are not optional.
    if scan::contains(&features, b"urn:ietf:params:xml:ns:xmpp-session")
        && !scan::contains(&features, b"<optional")
    {
        io.write_all(b"<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
            .await?;
        loop {
            let s = reader.stanza(&mut io).await?;
            if scan::attr(&s, b"id") == Some(b"sess1") {
                break;
            }
        }
    }
    Ok(Session { io, reader, jid })
}

#[derive(Clone, Copy)]
enum Hash {
    Sha1,
    Sha256,
}

impl Hash {
    fn name(self) -> &'static str {
        match self {
            Hash::Sha1 => "SCRAM-SHA-1",
            Hash::Sha256 => "SCRAM-SHA-256",
        }
    }
    fn pbkdf2(self, pw: &[u8], salt: &[u8], iter: u32) -> Vec<u8> {
        match self {
            Hash::Sha1 => {
                let mut out = vec![0u8; 20];
                pbkdf2::pbkdf2::<Hmac<sha1::Sha1>>(pw, salt, iter, &mut out)
                    .expect("hmac takes any key");
                out
            }
            Hash::Sha256 => {
                let mut out = vec![0u8; 32];
                pbkdf2::pbkdf2::<Hmac<sha2::Sha256>>(pw, salt, iter, &mut out)
                    .expect("hmac takes any key");
                out
            }
        }
    }
    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha1 => {
                let mut m = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key).expect("any key");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Hash::Sha256 => {
                let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("any key");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }
    fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Hash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
        }
    }
}

/// RFC 5802 client side, without channel binding ("n,,").
async fn scram(
    t: &Target,
    io: &mut Io,
    reader: &mut Reader,
    user: &str,
    hash: Hash,
) -> anyhow::Result<()> {
    let nonce: String = {
        use rand::Rng;
        let mut r = rand::rng();
        (0..24)
            .map(|_| char::from(r.random_range(b'a'..=b'z')))
            .collect()
    };
    let first_bare = format!("n={user},r={nonce}");
    let first = format!("n,,{first_bare}");
    io.write_all(
        format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{}</auth>",
            hash.name(),
            B64.encode(&first)
        )
        .as_bytes(),
    )
    .await?;
    let ch = reader.stanza(io).await?;
    if scan::tag_name(&ch) != b"challenge" {
        bail!("SCRAM refused for {user}: {}", String::from_utf8_lossy(&ch));
    }
    let server_first = String::from_utf8(B64.decode(inner_text(&ch))?)?;
    let mut r = None;
    let mut s = None;
    let mut i = None;
    for part in server_first.split(',') {
        match part.split_at_checked(2) {
            Some(("r=", v)) => r = Some(v.to_string()),
            Some(("s=", v)) => s = Some(B64.decode(v)?),
            Some(("i=", v)) => i = Some(v.parse::<u32>()?),
            _ => {}
        }
    }
    let (Some(r), Some(salt), Some(iter)) = (r, s, i) else {
        bail!("bad server-first-message {server_first}");
    };
    if !r.starts_with(&nonce) {
        bail!("server nonce does not extend ours");
    }
    let salted = t.scram_cache.salted(hash, &t.password, &salt, iter);
    let client_key = hash.hmac(&salted, b"Client Key");
    let stored_key = hash.digest(&client_key);
    let without_proof = format!("c=biws,r={r}");
    let auth_message = format!("{first_bare},{server_first},{without_proof}");
    let sig = hash.hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
    let final_msg = format!("{without_proof},p={}", B64.encode(proof));
    io.write_all(
        format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            B64.encode(final_msg)
        )
        .as_bytes(),
    )
    .await?;
    let r = reader.stanza(io).await?;
    if scan::tag_name(&r) != b"success" {
        bail!("SCRAM failed for {user}: {}", String::from_utf8_lossy(&r));
    }
    Ok(())
}

/// Text content of a simple element such as `<challenge>…</challenge>`.
fn inner_text(el: &[u8]) -> &[u8] {
    let start = el
        .iter()
        .position(|&b| b == b'>')
        .map_or(el.len(), |p| p + 1);
    let end = el.iter().rposition(|&b| b == b'<').unwrap_or(el.len());
    if end > start { &el[start..end] } else { &[] }
}

/// Sends the stream footer and closes, without waiting long for the server.
pub async fn close(mut s: Session) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let _ = s.io.write_all(b"</stream:stream>").await;
        let _ = s.io.shutdown().await;
    })
    .await;
}
