//! Relayed transport addresses: the UDP sockets of allocations, taken
//! from `[turn] min_port`–`max_port`, and everything that limits them.
//!
//! The `turn` crate asks a [`RelayAddressGenerator`] for a socket when it
//! accepts an Allocate; ours hands out a [`RelayConn`] that
//! - holds the user's quota slot (freed when the crate drops the socket,
//!   however the allocation ended),
//! - drops datagrams to or from peers the [`PeerPolicy`] refuses (a second
//!   line behind the gate, which refuses the permissions themselves),
//! - drops datagrams over the allocation's or the user's bandwidth
//!   (UDP semantics: never queue, never block the relay loop),
//! - ends the allocation after `max_allocation_secs`, refreshed or not,
//! - counts relayed bytes for `/metrics`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use turn::relay::RelayAddressGenerator;
use webrtc_util::Conn;

use super::peers::PeerPolicy;
use crate::metrics::Metrics;

/// The limits of `[turn]` that apply to relays.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub per_user: u32,
    pub total: u32,
    pub allocation_bandwidth: u64,
    pub user_bandwidth: u64,
    pub max_age: Duration,
}

/// Counters the relays move.
#[derive(Clone)]
struct Counters {
    allocations: prometheus_client::metrics::gauge::Gauge,
    to_peer: Counter,
    from_peer: Counter,
    dropped_bandwidth: Counter,
    dropped_peer: Counter,
}

/// State shared by every listener's relays: who holds how many
/// allocations, and the per-user bandwidth buckets.
pub(crate) struct Relays {
    limits: Limits,
    policy: PeerPolicy,
    relay_ip: IpAddr,
    bind_ip: IpAddr,
    min_port: u16,
    max_port: u16,
    counters: Counters,
    /// Never held across an `.await`.
    users: Mutex<Users>,
    /// TURN requests server-wide (see [`Relays::admit_request`]).
    requests: Mutex<Bucket>,
}

/// TURN requests (not Binding, not data) the server takes per second.
/// The `turn` crate remembers every nonce it hands out until a request
/// presents it again after it went stale, so each unauthenticated
/// request costs memory it may never give back: this bounds how fast an
/// attacker can make it grow. Legitimate load is about one request per
/// allocation per minute (Refresh, CreatePermission, ChannelBind).
pub(crate) const MAX_REQUESTS_PER_SEC: u64 = 50;

#[derive(Default)]
struct Users {
    total: u32,
    by_user: HashMap<String, UserEntry>,
    /// The relays of each client, to end them when its TCP connection
    /// closes (RFC 5766 §2.1: the allocation goes with the connection).
    by_client: HashMap<ClientKey, Vec<(u64, CancellationToken)>>,
    next_id: u64,
}

struct UserEntry {
    /// The clients holding the user's allocations (one entry each).
    clients: Vec<ClientKey>,
    bucket: Arc<Mutex<Bucket>>,
}

/// A client transport address on one listener: (listener, client). It
/// names an allocation (RFC 5766's 5-tuple, the protocol being the
/// listener's).
pub(crate) type ClientKey = (SocketAddr, SocketAddr);

/// Whose Allocate the crate is handling on a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allocating {
    pub user: String,
    pub client: ClientKey,
}

impl Relays {
    pub fn new(
        limits: Limits,
        policy: PeerPolicy,
        relay_ip: IpAddr,
        bind_ip: Option<IpAddr>,
        ports: (u16, u16),
        metrics: &Metrics,
    ) -> Arc<Self> {
        let bind_ip = bind_ip.unwrap_or(match relay_ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        });
        Arc::new(Relays {
            limits,
            policy,
            relay_ip,
            bind_ip,
            min_port: ports.0,
            max_port: ports.1,
            counters: Counters {
                allocations: metrics.turn_allocations.clone(),
                to_peer: metrics.turn_relayed_bytes("to_peer"),
                from_peer: metrics.turn_relayed_bytes("from_peer"),
                dropped_bandwidth: metrics.turn_dropped("bandwidth"),
                dropped_peer: metrics.turn_dropped("peer_refused"),
            },
            users: Mutex::new(Users::default()),
            requests: Mutex::new(Bucket::new(MAX_REQUESTS_PER_SEC)),
        })
    }

    /// Whether one more TURN request fits [`MAX_REQUESTS_PER_SEC`].
    pub fn admit_request(&self) -> bool {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(1, Instant::now())
    }

    pub fn policy(&self) -> &PeerPolicy {
        &self.policy
    }

    /// Whether `user` may not make one more allocation from `client` (the
    /// gate answers 486 Allocation Quota Reached before the crate does any
    /// work). A client that holds an allocation already is not refused
    /// here: that is a retransmission or a mismatch, the crate's to answer.
    pub fn quota_reached(&self, user: &str, client: ClientKey) -> bool {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let entry = users.by_user.get(user);
        if entry.is_some_and(|u| u.clients.contains(&client)) {
            return false;
        }
        users.total >= self.limits.total
            || entry.is_some_and(|u| u.clients.len() >= self.limits.per_user as usize)
    }

    /// Takes one allocation slot for `user`, if the quotas leave one.
    fn reserve(self: &Arc<Self>, user: &str, client: ClientKey) -> Option<Slot> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if users.total >= self.limits.total {
            return None;
        }
        let rate = self.limits.user_bandwidth;
        let entry = users
            .by_user
            .entry(user.to_string())
            .or_insert_with(|| UserEntry {
                clients: Vec::new(),
                bucket: Arc::new(Mutex::new(Bucket::new(rate))),
            });
        if entry.clients.len() >= self.limits.per_user as usize {
            return None;
        }
        entry.clients.push(client);
        let bucket = entry.bucket.clone();
        let closed = CancellationToken::new();
        let id = users.next_id;
        users.next_id += 1;
        users
            .by_client
            .entry(client)
            .or_default()
            .push((id, closed.clone()));
        users.total += 1;
        self.counters.allocations.inc();
        Some(Slot {
            relays: self.clone(),
            user: user.to_string(),
            client,
            user_bucket: bucket,
            id,
            closed,
        })
    }

    /// Ends the relays of `client` (its TCP connection closed).
    pub fn end_client(&self, client: ClientKey) {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for (_, t) in users.by_client.get(&client).into_iter().flatten() {
            t.cancel();
        }
    }

    fn release(&self, user: &str, client: ClientKey, id: u64) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.total = users.total.saturating_sub(1);
        if let Some(tokens) = users.by_client.get_mut(&client) {
            tokens.retain(|(i, _)| *i != id);
            if tokens.is_empty() {
                users.by_client.remove(&client);
            }
        }
        if let Some(e) = users.by_user.get_mut(user) {
            if let Some(i) = e.clients.iter().position(|c| *c == client) {
                e.clients.swap_remove(i);
            }
            if e.clients.is_empty() {
                users.by_user.remove(user);
            }
        }
        self.counters.allocations.dec();
    }

    /// Binds a UDP socket on a free port of the range, starting at a random
    /// one so that relayed addresses are not predictable.
    async fn bind(&self) -> std::io::Result<UdpSocket> {
        let span = u32::from(self.max_port - self.min_port) + 1;
        let start = rand::random::<u32>() % span;
        // Enough tries to get past a busy stretch without scanning a
        // whole nearly-full range on every Allocate.
        let mut last = None;
        for i in 0..span.min(64) {
            let port = self.min_port + ((start + i) % span) as u16;
            match UdpSocket::bind(SocketAddr::new(self.bind_ip, port)).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("empty relay port range")))
    }
}

/// One user's hold on an allocation; dropping it frees the quota.
struct Slot {
    relays: Arc<Relays>,
    user: String,
    client: ClientKey,
    user_bucket: Arc<Mutex<Bucket>>,
    id: u64,
    /// Cancelled to end the relay from outside (`Relays::end_client`).
    closed: CancellationToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.relays.release(&self.user, self.client, self.id);
    }
}

/// A token bucket in bytes: `rate` per second, bursts of one second.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: u64) -> Self {
        Bucket {
            rate: rate as f64,
            tokens: rate as f64,
            last: Instant::now(),
        }
    }

    /// Takes `n` bytes if there are that many tokens at `now`.
    pub fn take(&mut self, n: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

/// The relay generator of one listener. The crate handles one request at
/// a time per listener, and the gate notes the (authenticated-to-be)
/// user of the Allocate it passes on in `pending`, which is how the
/// allocation knows whose quota it takes.
pub(crate) struct RelayGenerator {
    pub relays: Arc<Relays>,
    pub pending: Arc<Mutex<Option<Allocating>>>,
}

#[async_trait]
impl RelayAddressGenerator for RelayGenerator {
    fn validate(&self) -> Result<(), turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        let r = &self.relays;
        if use_ipv4 != r.relay_ip.is_ipv4() {
            return Err(turn::Error::Other("address family not served".into()));
        }
        let Allocating { user, client } = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| turn::Error::Other("no user for this allocation".into()))?;
        // Checked again here (the gate's check and this one are not atomic
        // across listeners): the crate answers 508 if this refuses. (With
        // EVEN-PORT the crate asks twice and drops the first socket.)
        let slot = r
            .reserve(&user, client)
            .ok_or_else(|| turn::Error::Other("allocation quota reached".into()))?;
        let sock = if requested_port != 0 {
            // EVEN-PORT reservations name their port; only inside the range.
            if !(r.min_port..=r.max_port).contains(&requested_port) {
                return Err(turn::Error::Other("port outside the relay range".into()));
            }
            UdpSocket::bind(SocketAddr::new(r.bind_ip, requested_port)).await
        } else {
            r.bind().await
        }
        .map_err(|e| turn::Error::Other(format!("no relay port: {e}")))?;
        let local = sock
            .local_addr()
            .map_err(|e| turn::Error::Other(e.to_string()))?;
        let advertised = SocketAddr::new(r.relay_ip, local.port());
        tracing::debug!(%user, relay = %advertised, "TURN allocation");
        let conn = RelayConn {
            sock,
            local,
            bucket: Mutex::new(Bucket::new(r.limits.allocation_bandwidth)),
            deadline: Instant::now() + r.limits.max_age,
            closed: slot.closed.clone(),
            slot,
        };
        Ok((Arc::new(conn), advertised))
    }
}

/// One allocation's relayed socket (see the module comment).
pub(crate) struct RelayConn {
    sock: UdpSocket,
    local: SocketAddr,
    bucket: Mutex<Bucket>,
    deadline: Instant,
    closed: CancellationToken,
    slot: Slot,
}

impl RelayConn {
    /// Whether `n` more bytes fit both the allocation's and the user's rate.
    fn admit(&self, n: usize) -> bool {
        let now = Instant::now();
        let mut own = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let mut user = self
            .slot
            .user_bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Take from both or neither.
        if own.take(n, now) {
            if user.take(n, now) {
                return true;
            }
            own.tokens += n as f64;
        }
        self.slot.relays.counters.dropped_bandwidth.inc();
        false
    }

    fn ended() -> webrtc_util::Error {
        webrtc_util::Error::Other("relay closed".into())
    }
}

#[async_trait]
impl Conn for RelayConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other("relays are not connected".into()))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    /// The next datagram from a peer that passes the policy and the rate.
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = tokio::select! {
                _ = self.closed.cancelled() => return Err(Self::ended()),
                _ = tokio::time::sleep_until(self.deadline) => {
                    tracing::debug!(user = %self.slot.user, "TURN allocation reached max_allocation_secs");
                    return Err(Self::ended());
                }
                r = self.sock.recv_from(buf) => match r {
                    Ok(v) => v,
                    // ICMP errors surface here on some systems: not fatal.
                    Err(e) => {
                        tracing::debug!(error = %e, "TURN relay receive error");
                        continue;
                    }
                },
            };
            if !self.slot.relays.policy.allows(from.ip()) {
                self.slot.relays.counters.dropped_peer.inc();
                continue;
            }
            if !self.admit(n) {
                continue;
            }
            self.slot.relays.counters.from_peer.inc_by(n as u64);
            return Ok((n, from));
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other("relays send to a peer".into()))
    }

    /// Sends to a peer that passes the policy and the rate; otherwise the
    /// datagram is dropped (reported as sent, as a lossy network would).
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if self.closed.is_cancelled() || Instant::now() >= self.deadline {
            return Err(Self::ended());
        }
        if !self.slot.relays.policy.allows(target.ip()) {
            self.slot.relays.counters.dropped_peer.inc();
            return Ok(buf.len());
        }
        if !self.admit(buf.len()) {
            return Ok(buf.len());
        }
        let n = self.sock.send_to(buf, target).await?;
        self.slot.relays.counters.to_peer.inc_by(n as u64);
        Ok(n)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.closed.cancel();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_second_of_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000);
        b.last = t0;
        assert!(b.take(1000, t0));
        assert!(!b.take(1, t0));
        assert!(b.take(500, t0 + Duration::from_millis(500)));
        assert!(!b.take(100, t0 + Duration::from_millis(500)));
        // Never more than one second's worth, however long it waited.
        assert!(!b.take(1001, t0 + Duration::from_secs(60)));
    }

    fn relays(per_user: u32, total: u32) -> Arc<Relays> {
        relays_aged(per_user, total, Duration::from_secs(60))
    }

    fn relays_aged(per_user: u32, total: u32, max_age: Duration) -> Arc<Relays> {
        Relays::new(
            Limits {
                per_user,
                total,
                allocation_bandwidth: 10_000,
                user_bandwidth: 10_000,
                max_age,
            },
            PeerPolicy::default(),
            "127.0.0.1".parse().unwrap(),
            Some("127.0.0.1".parse().unwrap()),
            (40000, 40010),
            &Metrics::new(),
        )
    }

    fn client(port: u16) -> ClientKey {
        (
            "127.0.0.1:3478".parse().unwrap(),
            SocketAddr::new("192.0.2.5".parse().unwrap(), port),
        )
    }

    #[test]
    fn quotas_count_per_user_and_server_wide_and_free_on_drop() {
        let r = relays(2, 3);
        let alice = "alice@example.org";
        let a1 = r.reserve(alice, client(1)).unwrap();
        let _a2 = r.reserve(alice, client(2)).unwrap();
        assert!(r.quota_reached(alice, client(3)));
        assert!(r.reserve(alice, client(3)).is_none());
        // A client holding an allocation (a retransmitted Allocate) is
        // left to the crate.
        assert!(!r.quota_reached(alice, client(2)));
        let _b1 = r.reserve("bob@example.org", client(4)).unwrap();
        // The server-wide limit is reached for everyone.
        assert!(r.quota_reached("carol@example.org", client(5)));
        assert!(r.reserve("carol@example.org", client(5)).is_none());
        drop(a1);
        assert!(!r.quota_reached(alice, client(3)));
        let a3 = r.reserve(alice, client(3)).unwrap();
        // A closed TCP connection ends its client's relays.
        r.end_client(client(3));
        assert!(a3.closed.is_cancelled() && !_a2.closed.is_cancelled());
        drop(a3);
        assert!(!r.users.lock().unwrap().by_client.contains_key(&client(3)));
    }

    #[tokio::test]
    async fn a_relay_ends_at_max_age_and_frees_its_slot() {
        let r = relays_aged(4, 4, Duration::from_millis(100));
        let generator = RelayGenerator {
            relays: r.clone(),
            pending: Arc::new(Mutex::new(Some(Allocating {
                user: "alice@example.org".into(),
                client: client(1),
            }))),
        };
        let (conn, _) = generator.allocate_conn(true, 0).await.unwrap();
        let mut buf = [0u8; 16];
        // Nothing arrives; the receive ends (the crate then drops the
        // allocation) at the deadline, not later.
        let ended = tokio::time::timeout(Duration::from_secs(5), conn.recv_from(&mut buf)).await;
        assert!(matches!(ended, Ok(Err(_))), "the relay outlived max_age");
        assert!(
            conn.send_to(b"x", "192.0.2.1:9".parse().unwrap())
                .await
                .is_err()
        );
        drop(conn);
        assert!(!r.quota_reached("alice@example.org", client(2)));
        assert_eq!(r.users.lock().unwrap().total, 0);
    }

    #[tokio::test]
    async fn relays_bind_in_the_range_and_refuse_private_peers() {
        let r = relays(4, 4);
        let generator = RelayGenerator {
            relays: r.clone(),
            pending: Arc::new(Mutex::new(Some(Allocating {
                user: "alice@example.org".into(),
                client: client(1),
            }))),
        };
        let (conn, addr) = generator.allocate_conn(true, 0).await.unwrap();
        assert!((40000..=40010).contains(&addr.port()), "{addr}");
        assert_eq!(addr.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
        // A datagram to a loopback peer is dropped, not sent.
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = peer.local_addr().unwrap();
        assert_eq!(conn.send_to(b"hello", to).await.unwrap(), 5);
        let mut buf = [0u8; 16];
        let got = tokio::time::timeout(Duration::from_millis(200), peer.recv_from(&mut buf)).await;
        assert!(got.is_err(), "a loopback peer received relayed data");
        assert!(generator.allocate_conn(false, 0).await.is_err());
        drop(conn);
        assert!(r.users.lock().unwrap().by_user.is_empty());
    }
}
