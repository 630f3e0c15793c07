//! The hardware floor: a minimal tokio + rustls "server" that speaks just
//! enough XMPP for the load generator (stream header, STARTTLS, SASL PLAIN
//! accepting any password, bind) and routes stanzas by their `to` attribute,
//! found by scanning bytes. No XML parsing, no rosters, no presence, no
//! storage: what is left is TLS, the kernel's TCP path and one hash lookup,
//! which is the least any XMPP server must spend.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::scan::{self, Item};

/// JID (bare and full) → that connection's outbox.
type Routes = Arc<RwLock<HashMap<Vec<u8>, mpsc::UnboundedSender<Vec<u8>>>>>;

pub async fn serve(
    listen: SocketAddr,
    domain: String,
    cert: &str,
    key: &str,
) -> anyhow::Result<()> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {cert}"))?
        .collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {key}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // The generator disables resumption; tickets would only cost CPU.
    config.send_tls13_tickets = 0;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(listen).await?;
    println!(
        "waxwing-bench: floor listening c2s {}",
        listener.local_addr()?
    );
    println!("waxwing-bench: ready");
    let routes: Routes = Arc::default();
    let domain: Arc<str> = domain.into();
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("floor: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, routes, domain) = (acceptor.clone(), routes.clone(), domain.clone());
        tokio::spawn(async move {
            let _ = conn(tcp, acceptor, routes, domain).await;
        });
    }
}

/// Reads items into `buf` until one complete item is at its start.
async fn next<S: AsyncReadExt + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> anyhow::Result<(Item, usize)> {
    loop {
        if let Some(found) = scan::next_item(buf) {
            return Ok(found);
        }
        buf.reserve(4096);
        if io.read_buf(buf).await? == 0 {
            bail!("eof");
        }
    }
}

/// Next depth-1 element (skipping whitespace and a re-sent header).
async fn element<S: AsyncReadExt + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> anyhow::Result<Vec<u8>> {
    loop {
        let (item, n) = next(io, buf).await?;
        let bytes: Vec<u8> = buf.drain(..n).collect();
        match item {
            Item::Stanza(_) => return Ok(bytes),
            Item::Close => bail!("closed"),
            _ => {}
        }
    }
}

/// Reads the client's header and answers with ours plus `features`.
async fn open<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    domain: &str,
    features: &str,
) -> anyhow::Result<()> {
    loop {
        let (item, n) = next(io, buf).await?;
        buf.drain(..n);
        if matches!(item, Item::Open(_)) {
            break;
        }
    }
    let head = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='floor' from='{domain}' version='1.0'><stream:features>{features}</stream:features>"
    );
    io.write_all(head.as_bytes()).await?;
    Ok(())
}

const MECHS: &str = "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms>";

async fn conn(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    routes: Routes,
    domain: Arc<str>,
) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let mut tcp = tcp;
    let mut buf = Vec::new();
    let features = format!("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>{MECHS}");
    open(&mut tcp, &mut buf, &domain, &features).await?;
    let first = element(&mut tcp, &mut buf).await?;
    if scan::tag_name(&first) == b"starttls" {
        tcp.write_all(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await?;
        let mut tls = acceptor.accept(tcp).await?;
        buf.clear();
        open(&mut tls, &mut buf, &domain, MECHS).await?;
        let first = element(&mut tls, &mut buf).await?;
        session(tls, buf, first, routes, domain).await
    } else {
        session(tcp, buf, first, routes, domain).await
    }
}

/// SASL PLAIN (any password), bind, then route until the stream ends.
async fn session<S>(
    mut io: S,
    mut buf: Vec<u8>,
    mut el: Vec<u8>,
    routes: Routes,
    domain: Arc<str>,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // In-band registration before authentication: every account exists.
    while scan::tag_name(&el) == b"iq" {
        let id = String::from_utf8_lossy(scan::attr(&el, b"id").unwrap_or(b"")).into_owned();
        io.write_all(format!("<iq type='result' id='{id}'/>").as_bytes())
            .await?;
        el = element(&mut io, &mut buf).await?;
    }
    if scan::tag_name(&el) != b"auth" {
        bail!("expected <auth/>");
    }
    let text = el
        .iter()
        .position(|&b| b == b'>')
        .map(|p| {
            &el[p + 1
                ..el.iter()
                    .rposition(|&b| b == b'<')
                    .unwrap_or(el.len())
                    .max(p + 1)]
        })
        .unwrap_or(b"");
    let decoded = B64.decode(text).unwrap_or_default();
    let user = decoded
        .split(|&b| b == 0)
        .nth(1)
        .unwrap_or(b"anon")
        .to_vec();
    io.write_all(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        .await?;
    buf.clear();
    open(
        &mut io,
        &mut buf,
        &domain,
        "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>",
    )
    .await?;
    let bind = element(&mut io, &mut buf).await?;
    let id = String::from_utf8_lossy(scan::attr(&bind, b"id").unwrap_or(b"")).into_owned();
    let resource = scan::child_text(&bind, b"resource")
        .filter(|r| !r.is_empty())
        .unwrap_or(b"floor");
    let bare = [&user[..], b"@", domain.as_bytes()].concat();
    let full = [&bare[..], b"/", resource].concat();
    io.write_all(
        format!(
            "<iq type='result' id='{id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>{}</jid></bind></iq>",
            String::from_utf8_lossy(&full)
        )
        .as_bytes(),
    )
    .await?;
    let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
    {
        let mut r = routes.write().unwrap();
        r.insert(full.clone(), tx.clone());
        r.insert(bare.clone(), tx.clone());
    }
    let (mut rh, wh) = tokio::io::split(io);
    let writer = tokio::spawn(write_loop(wh, rx));
    let result = route_loop(&mut rh, buf, &routes, &tx, &domain).await;
    {
        let mut r = routes.write().unwrap();
        for k in [&full, &bare] {
            if r.get(k).is_some_and(|t| t.same_channel(&tx)) {
                r.remove(k);
            }
        }
    }
    drop(tx);
    let _ = writer.await;
    result
}

/// Everything queued for this connection goes out in one write.
async fn write_loop<W: AsyncWrite + Unpin>(mut wh: W, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut out = Vec::with_capacity(16 * 1024);
    while let Some(first) = rx.recv().await {
        out.clear();
        out.extend_from_slice(&first);
        while out.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(m) => out.extend_from_slice(&m),
                Err(_) => break,
            }
        }
        if wh.write_all(&out).await.is_err() {
            return;
        }
    }
    let _ = wh.write_all(b"</stream:stream>").await;
    let _ = wh.shutdown().await;
}

async fn route_loop<R: AsyncRead + Unpin>(
    rh: &mut R,
    mut buf: Vec<u8>,
    routes: &Routes,
    me: &mpsc::UnboundedSender<Vec<u8>>,
    domain: &str,
) -> anyhow::Result<()> {
    loop {
        let mut at = 0;
        while let Some((item, n)) = scan::next_item(&buf[at..]) {
            let el = &buf[at..at + n];
            at += n;
            match item {
                Item::Close => return Ok(()),
                Item::Stanza(_) => route(el, routes, me, domain),
                _ => {}
            }
        }
        buf.drain(..at);
        // Into spare capacity: no zeroing of a buffer the read overwrites.
        buf.reserve(8192);
        if rh.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

fn route(el: &[u8], routes: &Routes, me: &mpsc::UnboundedSender<Vec<u8>>, domain: &str) {
    let to = scan::attr(el, b"to");
    if let Some(to) = to.filter(|t| *t != domain.as_bytes()) {
        let r = routes.read().unwrap();
        let bare = to.split(|&b| b == b'/').next().unwrap_or(to);
        if let Some(tx) = r.get(to).or_else(|| r.get(bare)) {
            let _ = tx.send(el.to_vec());
            return;
        }
    }
    // Addressed to the server or to nobody we know: answer IQs, drop the rest.
    if scan::tag_name(el) == b"iq" && matches!(scan::attr(el, b"type"), Some(b"get" | b"set")) {
        let id = String::from_utf8_lossy(scan::attr(el, b"id").unwrap_or(b""));
        let reply = match to {
            Some(t) if t != domain.as_bytes() => format!(
                "<iq type='error' id='{id}' from='{}'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
                String::from_utf8_lossy(t)
            ),
            _ => format!("<iq type='result' id='{id}'/>"),
        };
        let _ = me.send(reply.into_bytes());
    }
}
