//! The gate in front of each listener: every message the `turn` crate
//! reads passes through here first (a wrapper around the listener's
//! `Conn`), because the crate has no hook for the two refusals an
//! operator needs before it acts:
//! - CreatePermission and ChannelBind naming a peer the [`PeerPolicy`]
//!   refuses get 403 Forbidden (RFC 5766 §9.1: "the server MAY refuse
//!   … for local policy"); Send indications to such a peer are dropped;
//! - an Allocate of a user at their quota gets 486 Allocation Quota
//!   Reached (RFC 5766 §6.2 step 7).
//!
//! It also notes the user of each Allocate it passes on, for the relay
//! generator (`relay.rs`), which runs inside the crate's handling of that
//! same message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use stun::attributes::{ATTR_MESSAGE_INTEGRITY, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS};
use stun::error_code::{CODE_ALLOC_QUOTA_REACHED, CODE_FORBIDDEN, ErrorCode, ErrorCodeAttribute};
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, METHOD_ALLOCATE, METHOD_BINDING,
    METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_SEND, Message, MessageType, Method,
    Setter,
};
use tokio_util::sync::CancellationToken;
use webrtc_util::Conn;

use super::auth::user_of;
use super::relay::{Allocating, ClientKey, Relays};

/// What the gate does with one incoming message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand it to the crate; `Some(user)` for an Allocate.
    Pass(Option<String>),
    /// Answer it with this error response instead.
    Refuse(Vec<u8>),
    /// Ignore it (an indication to a refused peer).
    Drop,
}

/// Judges one datagram or TCP frame from a client.
pub(crate) fn judge(buf: &[u8], client: ClientKey, relays: &Relays, refused: &Refusals) -> Verdict {
    // ChannelData (first two bits 01) goes to a bound channel, and binding
    // one was judged already; anything not STUN the crate discards.
    if buf.len() < 20 || buf[0] & 0xc0 != 0 {
        return Verdict::Pass(None);
    }
    let mut m = Message {
        raw: buf.to_vec(),
        ..Default::default()
    };
    if m.decode().is_err() {
        return Verdict::Pass(None);
    }
    let (method, class) = (m.typ.method, m.typ.class);
    if class == CLASS_REQUEST && method != METHOD_BINDING && !relays.admit_request() {
        refused.rate.inc();
        return Verdict::Drop;
    }
    let peer_refused = || peers(&m).any(|ip| !relays.policy().allows(ip));
    if class == CLASS_REQUEST
        && (method == METHOD_CREATE_PERMISSION || method == METHOD_CHANNEL_BIND)
    {
        if peer_refused() {
            refused.peer.inc();
            return refuse(&m, method, CODE_FORBIDDEN, "Forbidden peer address");
        }
    } else if class == CLASS_INDICATION && method == METHOD_SEND {
        if peer_refused() {
            refused.peer.inc();
            return Verdict::Drop;
        }
    } else if class == CLASS_REQUEST && method == METHOD_ALLOCATE {
        // Only an Allocate that carries credentials can create anything;
        // the first, unauthenticated one gets the crate's 401 and nonce.
        if m.contains(ATTR_MESSAGE_INTEGRITY)
            && let Ok(raw) = m.get(ATTR_USERNAME)
            && let Ok(username) = String::from_utf8(raw)
            && let Some(user) = user_of(&username)
        {
            if relays.quota_reached(user, client) {
                refused.quota.inc();
                return refuse(
                    &m,
                    method,
                    CODE_ALLOC_QUOTA_REACHED,
                    "Allocation Quota Reached",
                );
            }
            return Verdict::Pass(Some(user.to_string()));
        }
    }
    Verdict::Pass(None)
}

/// Every XOR-PEER-ADDRESS of `m` (CreatePermission may carry several).
fn peers(m: &Message) -> impl Iterator<Item = IpAddr> + '_ {
    m.attributes
        .0
        .iter()
        .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        // A malformed one is refused as the unspecified address.
        .map(|a| xor_ip(&a.value, &m.transaction_id.0).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
}

/// The IP of an XOR-encoded address attribute (RFC 5389 §15.2).
fn xor_ip(v: &[u8], transaction_id: &[u8; 12]) -> Option<IpAddr> {
    const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    match (v.get(1)?, v.len()) {
        (0x01, 8) => {
            let o: [u8; 4] = std::array::from_fn(|i| v[4 + i] ^ COOKIE[i]);
            Some(IpAddr::V4(Ipv4Addr::from(o)))
        }
        (0x02, 20) => {
            let key: Vec<u8> = COOKIE.iter().chain(transaction_id).copied().collect();
            let o: [u8; 16] = std::array::from_fn(|i| v[4 + i] ^ key[i]);
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

fn refuse(m: &Message, method: Method, code: ErrorCode, reason: &str) -> Verdict {
    let mut out = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(m.transaction_id),
        Box::new(MessageType::new(method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code,
            reason: reason.as_bytes().to_vec(),
        }),
    ];
    match out.build(&setters) {
        Ok(()) => Verdict::Refuse(out.raw),
        Err(_) => Verdict::Drop,
    }
}

/// The refusal counters (`waxwing_turn_refused_requests_total`).
#[derive(Clone)]
pub(crate) struct Refusals {
    pub peer: Counter,
    pub quota: Counter,
    /// Requests dropped over `relay::MAX_REQUESTS_PER_SEC`.
    pub rate: Counter,
}

/// A listener's `Conn` as the crate sees it, with the gate in front.
pub(crate) struct GatedConn {
    pub inner: Arc<dyn Conn + Send + Sync>,
    /// The listener's address (half of each client's key).
    pub local: SocketAddr,
    pub relays: Arc<Relays>,
    pub refused: Refusals,
    /// The Allocate being handled (see `relay::RelayGenerator`).
    pub pending: Arc<Mutex<Option<Allocating>>>,
    pub shutdown: CancellationToken,
}

#[async_trait]
impl Conn for GatedConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other(
            "a listener is not connected".into(),
        ))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = tokio::select! {
                // Ends the crate's read loop, which closes its allocations.
                _ = self.shutdown.cancelled() => {
                    return Err(webrtc_util::Error::Other("shutting down".into()));
                }
                r = self.inner.recv_from(buf) => match r {
                    Ok(v) => v,
                    Err(e) => {
                        // One bad datagram or ICMP error must not end the
                        // listener (the crate's loop stops at any error).
                        tracing::debug!(error = %e, "TURN listener receive error");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let client = (self.local, from);
            match judge(&buf[..n], client, &self.relays, &self.refused) {
                Verdict::Pass(user) => {
                    // The crate handles this message before it reads the
                    // next, so `pending` always speaks of the one it holds.
                    *self.pending.lock().unwrap_or_else(|e| e.into_inner()) =
                        user.map(|user| Allocating { user, client });
                    return Ok((n, from));
                }
                Verdict::Refuse(reply) => {
                    let _ = self.inner.send_to(&reply, from).await;
                }
                Verdict::Drop => {}
            }
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other(
            "a listener sends to an address".into(),
        ))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// The crate calls this whenever one allocation closes: the listener
    /// itself stays open (it closes on shutdown).
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use stun::textattrs::Username;
    use turn::proto::peeraddr::PeerAddress;

    use super::*;
    use crate::metrics::Metrics;
    use crate::turn::peers::PeerPolicy;
    use crate::turn::relay::Limits;
    use stun::message::METHOD_REFRESH;

    fn relays() -> Arc<Relays> {
        Relays::new(
            Limits {
                per_user: 1,
                total: 10,
                allocation_bandwidth: 10_000,
                user_bandwidth: 10_000,
                max_age: Duration::from_secs(60),
            },
            PeerPolicy::default(),
            "127.0.0.1".parse().unwrap(),
            Some("127.0.0.1".parse().unwrap()),
            (40000, 40010),
            &Metrics::new(),
        )
    }

    const CLIENT: ClientKey = (
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3478),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 5)), 40000),
    );

    fn refusals() -> Refusals {
        Refusals {
            peer: Counter::default(),
            quota: Counter::default(),
            rate: Counter::default(),
        }
    }

    fn msg(method: Method, class: stun::message::MessageClass, peers: &[&str]) -> Vec<u8> {
        let mut m = Message::new();
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(stun::agent::TransactionId::new()),
            Box::new(MessageType::new(method, class)),
        ];
        for p in peers {
            let a: SocketAddr = p.parse().unwrap();
            setters.push(Box::new(PeerAddress {
                ip: a.ip(),
                port: a.port(),
            }));
        }
        m.build(&setters).unwrap();
        m.raw
    }

    fn error_code(raw: &[u8]) -> u16 {
        let mut m = Message {
            raw: raw.to_vec(),
            ..Default::default()
        };
        m.decode().unwrap();
        let mut e = ErrorCodeAttribute::default();
        stun::message::Getter::get_from(&mut e, &m).unwrap();
        e.code.0
    }

    #[test]
    fn permissions_for_refused_peers_get_403_and_indications_are_dropped() {
        let (r, c) = (relays(), refusals());
        let ok = msg(
            METHOD_CREATE_PERMISSION,
            CLASS_REQUEST,
            &["192.0.2.9:5000", "[2001:db8::1]:5"],
        );
        assert_eq!(judge(&ok, CLIENT, &r, &c), Verdict::Pass(None));
        for bad in [
            msg(
                METHOD_CREATE_PERMISSION,
                CLASS_REQUEST,
                &["192.0.2.9:5000", "127.0.0.1:5000"],
            ),
            msg(METHOD_CHANNEL_BIND, CLASS_REQUEST, &["10.0.0.1:5000"]),
            msg(METHOD_CHANNEL_BIND, CLASS_REQUEST, &["[::1]:5000"]),
        ] {
            match judge(&bad, CLIENT, &r, &c) {
                Verdict::Refuse(reply) => assert_eq!(error_code(&reply), 403),
                v => panic!("{v:?}"),
            }
        }
        let send = msg(METHOD_SEND, CLASS_INDICATION, &["169.254.169.254:80"]);
        assert_eq!(judge(&send, CLIENT, &r, &c), Verdict::Drop);
        assert_eq!(c.peer.get(), 4);
        // ChannelData and garbage are the crate's business.
        assert_eq!(
            judge(&[0x40, 0, 0, 4, 1, 2, 3, 4], CLIENT, &r, &c),
            Verdict::Pass(None)
        );
    }

    #[test]
    fn requests_over_the_server_wide_rate_are_dropped_but_binding_is_not() {
        use crate::turn::relay::MAX_REQUESTS_PER_SEC as MAX;
        let (r, c) = (relays(), refusals());
        let req = msg(METHOD_REFRESH, CLASS_REQUEST, &[]);
        let passed = (0..1000)
            .filter(|_| judge(&req, CLIENT, &r, &c) != Verdict::Drop)
            .count() as u64;
        // One second's burst, and what refilled while the loop ran.
        assert!((MAX..MAX + 20).contains(&passed), "{passed}");
        assert_eq!(c.rate.get(), 1000 - passed);
        let binding = msg(METHOD_BINDING, CLASS_REQUEST, &[]);
        assert_eq!(judge(&binding, CLIENT, &r, &c), Verdict::Pass(None));
    }

    #[test]
    fn an_allocate_at_quota_gets_486() {
        let (r, c) = (relays(), refusals());
        let mut m = Message::new();
        m.build(&[
            Box::new(stun::agent::TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(Username::new(
                ATTR_USERNAME,
                "2000000000:alice@example.org".into(),
            )),
            Box::new(stun::integrity::MessageIntegrity::new_short_term_integrity(
                "x".into(),
            )),
        ])
        .unwrap();
        assert_eq!(
            judge(&m.raw, CLIENT, &r, &c),
            Verdict::Pass(Some("alice@example.org".into()))
        );
        let generator = crate::turn::relay::RelayGenerator {
            relays: r.clone(),
            pending: Arc::new(Mutex::new(Some(Allocating {
                user: "alice@example.org".into(),
                client: CLIENT,
            }))),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let held = rt.block_on(turn::relay::RelayAddressGenerator::allocate_conn(
            &generator, true, 0,
        ));
        assert!(held.is_ok());
        // Another client of the same user is over the quota.
        let other: ClientKey = (CLIENT.0, "192.0.2.5:40001".parse().unwrap());
        match judge(&m.raw, other, &r, &c) {
            Verdict::Refuse(reply) => assert_eq!(error_code(&reply), 486),
            v => panic!("{v:?}"),
        }
        assert_eq!(c.quota.get(), 1);
        // The client that holds it may repeat its Allocate (a
        // retransmission): the crate answers that one.
        assert!(matches!(
            judge(&m.raw, CLIENT, &r, &c),
            Verdict::Pass(Some(_))
        ));
        // The allocation's end frees the quota.
        drop(held);
        assert!(matches!(
            judge(&m.raw, other, &r, &c),
            Verdict::Pass(Some(_))
        ));
    }
}
