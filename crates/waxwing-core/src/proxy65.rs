//! XEP-0065: the SOCKS5 bytestreams proxy on `proxy.<host>`.
//!
//! Two clients that cannot reach each other directly both connect to our
//! SOCKS5 port and ask (RFC 1928 CONNECT, address type "domain") for the
//! same address, `hex(SHA-1(sid ‖ initiator JID ‖ target JID))`. Each such
//! connection waits, for at most `activation_timeout`, in a table keyed by
//! that hash. The initiator then sends `<activate/>` to `proxy.<host>`; we
//! recompute the hash from the IQ's authenticated `from`, so only the real
//! initiator can join the two, and relay bytes both ways under a bandwidth
//! cap per direction and an idle timeout.
//!
//! Only local accounts may learn the streamhost or activate, each with at
//! most `max_streams_per_user` relays at once; at most `max_pending`
//! connections wait server-wide, two per hash. The socket tasks are
//! spawned by the listener (`listen.rs`); the XMPP side is a
//! [`DomainService`] this module registers when `[proxy65] enabled`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{self, Condition, StanzaError};
use waxwing_proto::xml::Element;

use crate::abuse::TokenBucket;
use crate::hooks::{Cx, DomainService, Module, RegisterError, Registrar};
use crate::router::Server;

/// The SOCKS5 greeting and request must be done within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read at a time while relaying.
const RELAY_CHUNK: usize = 16 * 1024;

/// What an activation tells a waiting connection.
enum Role {
    /// Relay between your socket and the one arriving on this channel.
    Relay(oneshot::Receiver<TcpStream>, StreamPermit),
    /// Hand your socket to the relaying partner.
    Give(oneshot::Sender<TcpStream>),
}

struct Waiting {
    id: u64,
    tx: oneshot::Sender<Role>,
}

/// The proxy's shared state, owned by the [`Server`].
#[derive(Default)]
pub(crate) struct Proxy {
    /// Connections waiting for activation, by destination hash.
    waiting: Mutex<HashMap<String, Vec<Waiting>>>,
    /// Live relays per initiating account.
    streams: Arc<Mutex<HashMap<BareJid, u32>>>,
    next_id: AtomicU64,
    /// The first bound listener (port 0 resolved), for the streamhost.
    bound: OnceLock<SocketAddr>,
}

/// One relay counted against its initiator; released on drop.
struct StreamPermit {
    user: BareJid,
    streams: Arc<Mutex<HashMap<BareJid, u32>>>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut m = lock(&self.streams);
        if let Some(n) = m.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `hex(SHA-1(sid ‖ requester ‖ target))`, XEP-0065 §5.3.2.
pub(crate) fn destination(sid: &str, requester: &str, target: &str) -> String {
    let mut h = Sha1::new();
    h.update(sid.as_bytes());
    h.update(requester.as_bytes());
    h.update(target.as_bytes());
    hex::encode(h.finalize())
}

impl Proxy {
    pub(crate) fn set_bound(&self, addr: SocketAddr) {
        let _ = self.bound.set(addr);
    }

    /// Queues a connection under `hash`; `None` when the table is full or
    /// two connections already wait for that hash.
    fn wait(&self, hash: &str, max_pending: u32) -> Option<(u64, oneshot::Receiver<Role>)> {
        let mut w = lock(&self.waiting);
        let total: usize = w.values().map(Vec::len).sum();
        if total >= max_pending as usize || w.get(hash).is_some_and(|v| v.len() >= 2) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        w.entry(hash.to_string())
            .or_default()
            .push(Waiting { id, tx });
        Some((id, rx))
    }

    /// Forgets a connection that gave up waiting.
    fn forget(&self, hash: &str, id: u64) {
        let mut w = lock(&self.waiting);
        if let Some(v) = w.get_mut(hash) {
            v.retain(|x| x.id != id);
            if v.is_empty() {
                w.remove(hash);
            }
        }
    }

    /// Joins the two connections waiting under `hash` for `user`.
    fn activate(&self, hash: &str, user: &BareJid, max_per_user: u32) -> Result<(), StanzaError> {
        let mut w = lock(&self.waiting);
        if w.get(hash).map(Vec::len) != Some(2) {
            return Err(StanzaError::cancel(Condition::ItemNotFound)
                .with_text("both parties must be connected to the proxy first"));
        }
        let permit = {
            let mut m = lock(&self.streams);
            let n = m.entry(user.clone()).or_insert(0);
            if *n >= max_per_user {
                return Err(StanzaError::wait(Condition::ResourceConstraint)
                    .with_text("too many bytestreams through the proxy at once"));
            }
            *n += 1;
            StreamPermit {
                user: user.clone(),
                streams: self.streams.clone(),
            }
        };
        let pair = w.remove(hash).expect("checked above");
        drop(w);
        let mut it = pair.into_iter();
        let (a, b) = (it.next().expect("two"), it.next().expect("two"));
        let (stx, srx) = oneshot::channel();
        if a.tx.send(Role::Relay(srx, permit)).is_err() || b.tx.send(Role::Give(stx)).is_err() {
            return Err(StanzaError::cancel(Condition::ItemNotFound)
                .with_text("a party went away before activation"));
        }
        Ok(())
    }
}

/// Serves one SOCKS5 connection: handshake, wait for activation, relay.
pub(crate) async fn serve(server: Arc<Server>, mut tcp: TcpStream, peer: SocketAddr) {
    let c = &server.config.proxy65;
    // Counted with the address's client connections: the proxy port is no
    // way around `max_connections_per_ip`.
    let Some(_permit) = server
        .connections
        .try_acquire(peer.ip(), server.live().max_connections_per_ip)
    else {
        return;
    };
    let hash = match tokio::time::timeout(HANDSHAKE_TIMEOUT, socks5_handshake(&mut tcp)).await {
        Ok(Ok(hash)) => hash,
        _ => {
            tracing::debug!(%peer, "SOCKS5 handshake failed");
            return;
        }
    };
    let Some((id, role)) = server.proxy65.wait(&hash, c.max_pending) else {
        // RFC 1928 §6: 0x02 "connection not allowed by ruleset".
        let _ = tcp.write_all(&reply(0x02, &hash)).await;
        return;
    };
    if tcp.write_all(&reply(0x00, &hash)).await.is_err() {
        server.proxy65.forget(&hash, id);
        return;
    }
    let shutdown = server.shutdown.clone();
    let role = tokio::select! {
        r = tokio::time::timeout(c.activation_timeout, role) => r,
        _ = shutdown.cancelled() => return server.proxy65.forget(&hash, id),
    };
    match role {
        Ok(Ok(Role::Give(tx))) => {
            let _ = tx.send(tcp);
        }
        Ok(Ok(Role::Relay(partner, permit))) => {
            let Ok(Ok(other)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, partner).await else {
                return;
            };
            let _permit = permit;
            tracing::debug!(%peer, "bytestream activated");
            tokio::select! {
                r = relay(tcp, other, c.bandwidth_bytes_per_sec, c.idle_timeout) => {
                    tracing::debug!(%peer, bytes = r, "bytestream ended");
                }
                _ = shutdown.cancelled() => {}
            }
        }
        _ => {
            tracing::debug!(%peer, "bytestream never activated");
            server.proxy65.forget(&hash, id);
        }
    }
}

/// RFC 1928 greeting (method "no authentication") and CONNECT request to a
/// domain-type address, which must be a 40-character hex SHA-1.
async fn socks5_handshake(tcp: &mut TcpStream) -> std::io::Result<String> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not a XEP-0065 request");
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(bad());
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    tcp.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        tcp.write_all(&[5, 0xff]).await?;
        return Err(bad());
    }
    tcp.write_all(&[5, 0]).await?;
    let mut req = [0u8; 5];
    tcp.read_exact(&mut req).await?;
    // VER 5, CMD CONNECT, RSV, ATYP domain, length 40.
    if req[..4] != [5, 1, 0, 3] || req[4] != 40 {
        let _ = tcp.write_all(&[5, 0x08, 0, 1, 0, 0, 0, 0, 0, 0]).await;
        return Err(bad());
    }
    let mut addr = [0u8; 42]; // the address and the port
    tcp.read_exact(&mut addr).await?;
    let hash = std::str::from_utf8(&addr[..40]).map_err(|_| bad())?;
    if !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(hash.to_ascii_lowercase())
}

/// A CONNECT reply naming `hash` as the bound address (XEP-0065 §6.3.3).
fn reply(status: u8, hash: &str) -> Vec<u8> {
    let mut r = vec![5, status, 0, 3, hash.len() as u8];
    r.extend_from_slice(hash.as_bytes());
    r.extend_from_slice(&[0, 0]);
    r
}

/// Copies both ways until both sides are done, an error, or `idle` passes
/// with no data either way. Returns the bytes relayed.
async fn relay(a: TcpStream, b: TcpStream, rate: u64, idle: Duration) -> u64 {
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let last = Arc::new(Mutex::new(tokio::time::Instant::now()));
    let one = copy_limited(ar, bw, rate, last.clone());
    let two = copy_limited(br, aw, rate, last.clone());
    let watchdog = async {
        loop {
            let due = *lock(&last) + idle;
            tokio::time::sleep_until(due).await;
            if *lock(&last) + idle <= tokio::time::Instant::now() {
                return;
            }
        }
    };
    tokio::select! {
        (x, y) = async { tokio::join!(one, two) } => x + y,
        _ = watchdog => 0,
    }
}

async fn copy_limited<R, W>(
    mut r: R,
    mut w: W,
    rate: u64,
    last: Arc<Mutex<tokio::time::Instant>>,
) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut bucket = TokenBucket::new(rate, rate.max(RELAY_CHUNK as u64));
    let mut buf = vec![0u8; RELAY_CHUNK];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        *lock(&last) = tokio::time::Instant::now();
        let wait = bucket.take(n, std::time::Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        total += n as u64;
    }
    let _ = w.shutdown().await;
    total
}

/// The module that serves every `proxy.<host>`; `lib.rs` adds it to the
/// module list when `[proxy65] enabled`.
pub(crate) struct Proxy65Module {
    pub(crate) domains: Vec<String>,
}

impl Module for Proxy65Module {
    fn name(&self) -> &'static str {
        "proxy65"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        for d in &self.domains {
            reg.service(d, Arc::new(Proxy65Service))?;
        }
        Ok(())
    }
}

/// One `proxy.<host>` service.
struct Proxy65Service;

#[async_trait]
impl DomainService for Proxy65Service {
    async fn handle_stanza(&self, cx: &Cx, stanza: Element) {
        if stanza.name != "iq" {
            // Messages and presence to the proxy mean nothing; errors about
            // them would only add traffic.
            return;
        }
        let ty = stanza.attr("type").unwrap_or("");
        if ty != "get" && ty != "set" {
            return;
        }
        match answer(cx, &stanza, ty == "set") {
            Ok(payload) => {
                let mut r = stanza::iq_result(&stanza);
                if let Some(p) = payload {
                    r.push_child(p);
                }
                cx.route(r).await;
            }
            Err(e) => cx.bounce(&stanza, e).await,
        }
    }

    fn name(&self) -> &str {
        "SOCKS5 Bytestreams"
    }
}

fn answer(cx: &Cx, iq: &Element, set: bool) -> Result<Option<Element>, StanzaError> {
    let payload = iq
        .children()
        .next()
        .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
    let from = iq
        .attr("from")
        .and_then(|f| Jid::parse(f).ok())
        .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
    let service = iq.attr("to").unwrap_or_default();
    match (set, payload.ns.as_str(), payload.name.as_str()) {
        (false, ns::DISCO_INFO, "query") => Ok(Some(
            Element::new("query", ns::DISCO_INFO)
                .with_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "proxy")
                        .with_attr("type", "bytestreams")
                        .with_attr("name", "SOCKS5 Bytestreams"),
                )
                .with_child(
                    Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO),
                )
                .with_child(
                    Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::BYTESTREAMS),
                ),
        )),
        (false, ns::DISCO_ITEMS, "query") => Ok(Some(Element::new("query", ns::DISCO_ITEMS))),
        (false, ns::BYTESTREAMS, "query") => {
            local_user(cx, &from)?;
            let (host, port) = streamhost(cx, service)?;
            Ok(Some(
                Element::new("query", ns::BYTESTREAMS).with_child(
                    Element::new("streamhost", ns::BYTESTREAMS)
                        .with_attr("jid", service)
                        .with_attr("host", host)
                        .with_attr("port", port.to_string()),
                ),
            ))
        }
        (true, ns::BYTESTREAMS, "query") => {
            let user = local_user(cx, &from)?;
            let sid = payload
                .attr("sid")
                .filter(|s| !s.is_empty())
                .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
            let target = payload
                .child("activate", ns::BYTESTREAMS)
                .map(|a| a.text())
                .and_then(|t| Jid::parse(t.trim()).ok())
                .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
            let hash = destination(sid, &from.to_string(), &target.to_string());
            let c = &cx.config().proxy65;
            cx.server
                .proxy65
                .activate(&hash, &user, c.max_streams_per_user)?;
            Ok(None)
        }
        _ => Err(StanzaError::cancel(Condition::ServiceUnavailable)),
    }
}

/// The proxy serves our own accounts only: anyone else could use our
/// bandwidth for their transfers.
fn local_user(cx: &Cx, from: &Jid) -> Result<BareJid, StanzaError> {
    if from.local().is_some() && cx.is_local_host(from.domain()) {
        Ok(from.bare().clone())
    } else {
        Err(StanzaError::auth(Condition::Forbidden)
            .with_text("this proxy serves local accounts only"))
    }
}

/// The host and port clients connect to.
fn streamhost(cx: &Cx, service: &str) -> Result<(String, u16), StanzaError> {
    let c = &cx.config().proxy65;
    let bound = cx
        .server
        .proxy65
        .bound
        .get()
        .copied()
        .ok_or_else(|| StanzaError::wait(Condition::ServiceUnavailable))?;
    let host = match &c.public_host {
        Some(h) => h.clone(),
        None if !bound.ip().is_unspecified() => bound.ip().to_string(),
        None => service
            .split_once('.')
            .map_or(service, |(_, host)| host)
            .to_string(),
    };
    Ok((host, bound.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_is_xep_0065_hash() {
        // python3 -c "import hashlib; print(hashlib.sha1(
        //   b'vxf9n471bn46romeo@montague.lit/orchardjuliet@capulet.lit/balcony').hexdigest())"
        assert_eq!(
            destination(
                "vxf9n471bn46",
                "romeo@montague.lit/orchard",
                "juliet@capulet.lit/balcony"
            ),
            "01494a7e04f11decb0c82b29d36d172e55ebe7a9"
        );
    }

    #[test]
    fn activation_needs_both_parties_and_respects_the_user_limit() {
        let p = Proxy::default();
        let user = BareJid::parse("a@example.org").unwrap();
        let (_a, _ra) = p.wait("h1", 10).unwrap();
        assert_eq!(
            p.activate("h1", &user, 1).unwrap_err().condition,
            Condition::ItemNotFound
        );
        let (_b, _rb) = p.wait("h1", 10).unwrap();
        assert!(p.wait("h1", 10).is_none(), "a third party for one hash");
        p.activate("h1", &user, 1).unwrap();
        // The relay's permit is inside the Role sent to the first party.
        let (_c, _rc) = p.wait("h2", 10).unwrap();
        let (_d, _rd) = p.wait("h2", 10).unwrap();
        assert_eq!(
            p.activate("h2", &user, 1).unwrap_err().condition,
            Condition::ResourceConstraint
        );
        // Refused, the pair still waits; once the first relay ends (its
        // permit travels with the first party's role), it can go.
        drop(_ra);
        p.activate("h2", &user, 1).unwrap();
    }

    #[test]
    fn pending_connections_are_bounded() {
        let p = Proxy::default();
        let _x = p.wait("a", 2).unwrap();
        let _y = p.wait("b", 2).unwrap();
        assert!(p.wait("c", 2).is_none());
        p.forget("a", _x.0);
        assert!(p.wait("c", 2).is_some());
    }
}
