//! Serverless streams (XEP-0174 §6): `<stream:stream>` in `jabber:client`
//! without SASL, `from`/`to` being `user@machine`, in both directions.
//!
//! The receiving side offers STARTTLS (RFC 6120 §5) when TLS is enabled;
//! the initiator takes it when it has TLS enabled too. Certificates are
//! self-signed and accepted without checks: link-local names cannot be
//! certified, so TLS here protects against passive listeners only (see
//! SECURITY.md). After the headers, either side may send stanzas.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError, StreamCondition, StreamError, error_reply};
use waxwing_proto::xml::{Element, Framer, StreamEvent, StreamHeader, escape_attr};

use super::endpoint::{Inner, LinkEvent, Outgoing, Peer};
use super::name::Instance;
use crate::s2s::wire::{ReadError, S2sIo};

/// Bytes read at a time.
const READ_CHUNK: usize = 4096;

/// The TLS halves of the endpoint: a self-signed certificate for the
/// machine, made at start and never written to disk.
pub(crate) struct LlTls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

impl LlTls {
    pub fn new(machine: &str) -> Result<Self, String> {
        let generated = rcgen::generate_simple_self_signed(vec![format!("{machine}.local")])
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            generated.signing_key.serialize_der(),
        ));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![generated.cert.der().clone()], key)
            .map_err(|e| e.to_string())?;
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::s2s::tls::AcceptAnyCert(provider)))
            .with_no_client_auth();
        Ok(LlTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        })
    }
}

/// A socket with its framer, in `jabber:client`.
struct Conn {
    /// Our `user@machine` header went out (a stream error needs one first).
    header_sent: bool,
    machine: String,
    io: S2sIo,
    framer: Framer,
    limits: waxwing_proto::xml::Limits,
    write_timeout: Duration,
}

impl Conn {
    fn new(tcp: TcpStream, inner: &Inner) -> Self {
        let _ = tcp.set_nodelay(true);
        Conn {
            header_sent: false,
            machine: inner.cfg.machine.clone(),
            io: S2sIo::Plain(tcp),
            framer: Framer::new(inner.cfg.limits, ns::CLIENT),
            limits: inner.cfg.limits,
            write_timeout: inner.cfg.write_timeout,
        }
    }

    fn restart(&mut self) {
        self.framer = Framer::new(self.limits, ns::CLIENT);
    }

    async fn write(&mut self, data: &str) -> Result<(), ReadError> {
        let w = async {
            self.io.write_all(data.as_bytes()).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(self.write_timeout, w).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(ReadError::Gone),
        }
    }

    async fn send_header(&mut self, header: &str) -> Result<(), ReadError> {
        self.header_sent = true;
        self.write(header).await
    }

    async fn send(&mut self, el: &Element) -> Result<(), ReadError> {
        let xml = el.to_xml_in(ns::CLIENT);
        self.write(&xml).await
    }

    async fn next_event(&mut self) -> Result<StreamEvent, ReadError> {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; READ_CHUNK];
        loop {
            match self.framer.next_event() {
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Stream(e)),
            }
            match self.io.read(&mut buf).await {
                Ok(0) | Err(_) => return Err(ReadError::Gone),
                Ok(n) => self.framer.feed(&buf[..n]),
            }
        }
    }

    /// The next top-level element, or why there is none.
    async fn next_element(&mut self) -> Result<Element, ReadError> {
        match self.next_event().await? {
            StreamEvent::Stanza(el) => Ok(el),
            StreamEvent::Close => Err(ReadError::Gone),
            StreamEvent::Open(_) => Err(ReadError::Stream(StreamError::new(
                StreamCondition::InvalidXml,
            ))),
        }
    }

    async fn next_header(&mut self) -> Result<StreamHeader, ReadError> {
        match self.next_event().await? {
            StreamEvent::Open(h) => Ok(h),
            _ => Err(ReadError::Stream(StreamError::new(
                StreamCondition::InvalidXml,
            ))),
        }
    }

    /// Ends our side: optional stream error, footer, close_notify, FIN.
    async fn close(&mut self, error: Option<StreamError>) {
        let mut out = String::new();
        if error.is_some() && !self.header_sent {
            let me = Instance::new("unknown", &self.machine).expect("the machine name is valid");
            out.push_str(&header(&me, None, None, true));
        }
        if let Some(e) = &error {
            let el = e.to_element();
            out.push_str("<stream:error>");
            for c in el.children() {
                c.write_to(&mut out, ns::CLIENT);
            }
            out.push_str("</stream:error>");
        }
        out.push_str("</stream:stream>");
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.io.write_all(out.as_bytes()).await;
            let _ = self.io.flush().await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}

fn header(from: &Instance, to: Option<&str>, id: Option<&str>, version: bool) -> String {
    let mut h = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' from='",
        ns::CLIENT,
        ns::STREAM,
    );
    escape_attr(&mut h, &from.to_string());
    h.push('\'');
    if let Some(to) = to {
        h.push_str(" to='");
        escape_attr(&mut h, to);
        h.push('\'');
    }
    if let Some(id) = id {
        h.push_str(" id='");
        escape_attr(&mut h, id);
        h.push('\'');
    }
    if version {
        h.push_str(" version='1.0'");
    }
    h.push('>');
    h
}

fn stream_error(cond: StreamCondition, text: &str) -> ReadError {
    ReadError::Stream(StreamError::new(cond).with_text(text))
}

fn starttls() -> Element {
    Element::new("starttls", ns::TLS)
}

/// We connect to a peer to send `owner`'s first stanza (already queued in `rx`).
pub(super) async fn run_outgoing(
    inner: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
    id: u64,
    owner: String,
    ours: Instance,
    peer: Peer,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    let setup = tokio::time::timeout(inner.cfg.connect_timeout, connect(&inner, &ours, &peer));
    let result = match setup.await {
        Ok(Ok(mut conn)) => {
            tracing::debug!(peer = %peer.instance, tls = conn.io.is_tls(), "link-local: stream out");
            let ip = peer.addrs.first().copied();
            let r = session(
                &inner,
                &mut conn,
                ip,
                &owner,
                &ours,
                &peer.instance,
                &mut rx,
                None,
            )
            .await;
            finish(&mut conn, r).await;
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err("timed out".to_string()),
    };
    if let Err(e) = result {
        tracing::info!(peer = %peer.instance, error = %e, "link-local: cannot reach peer");
        inner.verify(&peer);
    }
    inner.unregister_stream(&ours, &peer.instance, id);
    undelivered(&inner, &owner, &peer.instance, &mut rx).await;
}

/// Hands back what was queued but never written.
async fn undelivered(inner: &Inner, owner: &str, to: &Instance, rx: &mut mpsc::Receiver<Outgoing>) {
    rx.close();
    while let Ok(out) = rx.try_recv() {
        let ev = LinkEvent::Undelivered {
            owner: owner.to_string(),
            to: to.clone(),
            stanza: out.stanza,
            origin: out.origin,
        };
        if inner.events.send(ev).await.is_err() {
            return;
        }
    }
}

async fn connect(inner: &Inner, ours: &Instance, peer: &Peer) -> Result<Conn, String> {
    let ip = *peer.addrs.first().ok_or("the peer announced no address")?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    // From the address we announce, so that the peer can match us.
    if let Some(local) = inner.source_addr() {
        socket
            .bind(SocketAddr::new(local, 0))
            .map_err(|e| e.to_string())?;
    }
    let tcp = socket
        .connect(SocketAddr::new(ip, peer.port))
        .await
        .map_err(|e| e.to_string())?;
    let mut conn = Conn::new(tcp, inner);
    let to = peer.instance.to_string();
    let err = |e: ReadError| match e {
        ReadError::Gone => "the peer closed the stream".to_string(),
        ReadError::Stream(s) => format!("stream error {}", s.condition.as_str()),
    };
    conn.send_header(&header(ours, Some(&to), None, true))
        .await
        .map_err(err)?;
    let h = conn.next_header().await.map_err(err)?;
    if h.version.as_deref() != Some("1.0") {
        if inner.cfg.require_tls {
            conn.close(Some(
                StreamError::new(StreamCondition::PolicyViolation).with_text("TLS is required"),
            ))
            .await;
            return Err("the peer does not speak XMPP 1.0, and TLS is required".into());
        }
        return Ok(conn);
    }
    let features = conn.next_element().await.map_err(err)?;
    let offered = features.child("starttls", ns::TLS).is_some();
    match (&inner.tls, offered) {
        (Some(tls), true) => {
            conn.send(&starttls()).await.map_err(err)?;
            let answer = conn.next_element().await.map_err(err)?;
            if !answer.is("proceed", ns::TLS) {
                return Err("the peer refused STARTTLS".into());
            }
            let sni = format!("{}.local", peer.instance.machine());
            conn.io
                .connect_tls(&tls.connector, &sni)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            conn.restart();
            conn.send_header(&header(ours, Some(&to), None, true))
                .await
                .map_err(err)?;
            conn.next_header().await.map_err(err)?;
            conn.next_element().await.map_err(err)?; // features, empty
            Ok(conn)
        }
        _ if inner.cfg.require_tls => {
            conn.close(Some(
                StreamError::new(StreamCondition::PolicyViolation).with_text("TLS is required"),
            ))
            .await;
            Err("the peer offers no TLS, and TLS is required".into())
        }
        (None, _)
            if features
                .child("starttls", ns::TLS)
                .is_some_and(|s| s.child("required", ns::TLS).is_some()) =>
        {
            Err("the peer requires TLS, which is disabled here".into())
        }
        _ => Ok(conn),
    }
}

/// A peer connects to us.
pub(super) async fn run_incoming(
    inner: Arc<Inner>,
    permit: Option<OwnedSemaphorePermit>,
    tcp: TcpStream,
    remote: SocketAddr,
) {
    let mut conn = Conn::new(tcp, &inner);
    let accepted = tokio::time::timeout(
        inner.cfg.connect_timeout,
        accept(&inner, &mut conn, remote.ip(), permit.is_some()),
    )
    .await;
    let (owner, ours, peer, first) = match accepted {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => return finish(&mut conn, Err(e)).await,
        Err(_) => {
            return finish(
                &mut conn,
                Err(stream_error(StreamCondition::ConnectionTimeout, "too slow")),
            )
            .await;
        }
    };
    tracing::debug!(%peer, tls = conn.io.is_tls(), "link-local: stream in");
    let (id, mut rx) = inner.register_stream(&ours, &peer);
    let r = session(
        &inner,
        &mut conn,
        Some(remote.ip()),
        &owner,
        &ours,
        &peer,
        &mut rx,
        first,
    )
    .await;
    finish(&mut conn, r).await;
    inner.unregister_stream(&ours, &peer, id);
    undelivered(&inner, &owner, &peer, &mut rx).await;
    drop(permit);
}

/// Writes our header (once the peer's is read) and any stream error.
async fn finish(conn: &mut Conn, r: Result<(), ReadError>) {
    match r {
        Ok(()) | Err(ReadError::Gone) => conn.close(None).await,
        Err(ReadError::Stream(e)) => {
            tracing::info!(condition = e.condition.as_str(), "link-local: stream error");
            conn.close(Some(e)).await
        }
    }
}

type Accepted = (String, Instance, Instance, Option<Element>);

/// Header exchange and optional STARTTLS as the receiving side. Returns
/// the owner and instance addressed, the peer, and a first stanza read
/// while waiting for STARTTLS.
async fn accept(
    inner: &Inner,
    conn: &mut Conn,
    ip: IpAddr,
    have_slot: bool,
) -> Result<Accepted, ReadError> {
    let h = conn.next_header().await?;
    let version = h.version.as_deref() == Some("1.0");
    let local = match h.to.as_deref() {
        Some(to) => Instance::parse(to).and_then(|i| inner.local_by_key(&i.key())),
        None => inner.only_local(),
    };
    let reply_to = h.from.clone();
    let Some((owner, local)) = local else {
        // Our header must go first for the error to be well-formed.
        let me = Instance::new("unknown", &inner.cfg.machine).expect("machine is valid");
        conn.send_header(&header(&me, reply_to.as_deref(), None, version))
            .await?;
        return Err(stream_error(
            StreamCondition::HostUnknown,
            "no such user here",
        ));
    };
    let id = crate::random_id();
    conn.send_header(&header(
        &local.instance,
        reply_to.as_deref(),
        Some(&id),
        version,
    ))
    .await?;
    if !have_slot {
        return Err(stream_error(
            StreamCondition::ResourceConstraint,
            "too many streams",
        ));
    }
    // The only check link-local allows: the peer must be one announced
    // from the address the connection comes from.
    let peer = match h.from.as_deref().map(Instance::parse) {
        Some(Some(claimed)) => inner
            .peer(&claimed.key())
            .filter(|p| p.addrs.contains(&ip))
            .map(|p| p.instance),
        Some(None) => None,
        None => match inner.peers_at(ip).as_slice() {
            [only] => Some(only.instance.clone()),
            _ => None,
        },
    };
    let Some(peer) = peer else {
        return Err(stream_error(
            StreamCondition::InvalidFrom,
            "not a peer announced from this address",
        ));
    };
    if !version {
        if inner.cfg.require_tls {
            return Err(stream_error(
                StreamCondition::PolicyViolation,
                "TLS is required",
            ));
        }
        return Ok((owner, local.instance, peer, None));
    }
    let mut features = Element::new("features", ns::STREAM);
    if inner.tls.is_some() {
        let mut st = starttls();
        if inner.cfg.require_tls {
            st.push_child(Element::new("required", ns::TLS));
        }
        features.push_child(st);
    }
    conn.write(&stream_features(&features)).await?;
    let Some(tls) = &inner.tls else {
        return Ok((owner, local.instance, peer, None));
    };
    let first = conn.next_element().await?;
    if !first.is("starttls", ns::TLS) {
        if inner.cfg.require_tls {
            return Err(stream_error(
                StreamCondition::PolicyViolation,
                "TLS is required",
            ));
        }
        return Ok((owner, local.instance, peer, Some(first)));
    }
    if conn.framer.buffered() > 0 {
        // RFC 6120 §5.4.3.3: nothing may follow <starttls/> before TLS.
        return Err(stream_error(
            StreamCondition::PolicyViolation,
            "data after <starttls/>",
        ));
    }
    conn.write(&format!("<proceed xmlns='{}'/>", ns::TLS))
        .await?;
    conn.io
        .accept_tls(&tls.acceptor)
        .await
        .map_err(|_| ReadError::Gone)?;
    conn.restart();
    conn.next_header().await?;
    let id = crate::random_id();
    conn.send_header(&header(
        &local.instance,
        reply_to.as_deref(),
        Some(&id),
        true,
    ))
    .await?;
    conn.write("<stream:features/>").await?;
    Ok((owner, local.instance, peer, None))
}

fn stream_features(f: &Element) -> String {
    let mut out = String::from("<stream:features>");
    for c in f.children() {
        c.write_to(&mut out, ns::CLIENT);
    }
    out.push_str("</stream:features>");
    out
}

/// Both directions of an established stream until either side ends it.
#[allow(clippy::too_many_arguments)]
async fn session(
    inner: &Inner,
    conn: &mut Conn,
    ip: Option<IpAddr>,
    owner: &str,
    ours: &Instance,
    peer: &Instance,
    rx: &mut mpsc::Receiver<Outgoing>,
    first: Option<Element>,
) -> Result<(), ReadError> {
    if let Some(el) = first {
        incoming(inner, conn, ip, owner, ours, peer, el).await?;
    }
    let idle = inner.cfg.idle_timeout;
    let mut deadline = tokio::time::Instant::now() + idle;
    loop {
        tokio::select! {
            ev = conn.next_event() => {
                deadline = tokio::time::Instant::now() + idle;
                match ev? {
                    StreamEvent::Stanza(el) => {
                        incoming(inner, conn, ip, owner, ours, peer, el).await?;
                    }
                    StreamEvent::Close => return Ok(()),
                    StreamEvent::Open(_) => {
                        return Err(stream_error(StreamCondition::InvalidXml, "a second header"));
                    }
                }
            }
            out = rx.recv() => {
                deadline = tokio::time::Instant::now() + idle;
                match out {
                    Some(out) => {
                        if conn.send(&out.stanza).await.is_err() {
                            let _ = inner.events.send(LinkEvent::Undelivered {
                                owner: owner.to_string(),
                                to: peer.clone(),
                                stanza: out.stanza,
                                origin: out.origin,
                            }).await;
                            return Err(ReadError::Gone);
                        }
                    }
                    None => return Ok(()),
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(()),
            _ = inner.shutdown.cancelled() => {
                return Err(ReadError::Stream(StreamError::new(StreamCondition::SystemShutdown)));
            }
        }
    }
}

/// One element from the peer: messages go to the endpoint's user, IQs get
/// the few answers a serverless entity owes (XEP-0199 ping, XEP-0030
/// disco#info), presence is ignored (XEP-0174 carries it in TXT records).
async fn incoming(
    inner: &Inner,
    conn: &mut Conn,
    ip: Option<IpAddr>,
    owner: &str,
    ours: &Instance,
    peer: &Instance,
    mut el: Element,
) -> Result<(), ReadError> {
    if el.ns != ns::CLIENT || !matches!(el.name.as_str(), "message" | "iq" | "presence") {
        return Err(stream_error(
            StreamCondition::UnsupportedStanzaType,
            "only message, iq and presence",
        ));
    }
    if let Some(ip) = ip
        && !inner.charge(ip)
    {
        return Err(stream_error(
            StreamCondition::PolicyViolation,
            "too many stanzas: slow down",
        ));
    }
    // The stream is between two instances: whatever the stanza says, it
    // is from the peer and for us.
    el.set_attr("from", peer.to_string());
    el.set_attr("to", ours.to_string());
    match el.name.as_str() {
        "message" => {
            let ev = LinkEvent::Message {
                from: peer.clone(),
                owner: owner.to_string(),
                stanza: el,
            };
            inner.events.send(ev).await.map_err(|_| ReadError::Gone)
        }
        "iq" if matches!(el.attr("type"), Some("get" | "set")) => {
            let reply = iq_answer(&el);
            conn.send(&reply).await
        }
        _ => Ok(()),
    }
}

fn iq_answer(iq: &Element) -> Element {
    let payload = iq.first_child();
    let get = iq.attr("type") == Some("get");
    match payload {
        Some(p) if get && p.is("ping", ns::PING) => waxwing_proto::stanza::iq_result(iq),
        Some(p) if get && p.is("query", ns::DISCO_INFO) && p.attr("node").is_none() => {
            let query = Element::new("query", ns::DISCO_INFO)
                .with_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "client")
                        .with_attr("type", "pc")
                        .with_attr("name", "Waxwing"),
                )
                .with_child(
                    Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO),
                )
                .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::PING));
            waxwing_proto::stanza::iq_result(iq).with_child(query)
        }
        _ => error_reply(iq, &StanzaError::cancel(Condition::ServiceUnavailable))
            .unwrap_or_else(|| waxwing_proto::stanza::iq_result(iq)),
    }
}
