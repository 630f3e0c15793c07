//! The link-local endpoint: mDNS announcements and browsing, the peer
//! table, the listener and the table of serverless streams.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hashlink::LruCache;
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use waxwing_proto::xml::{Element, Limits};

use super::SERVICE_TYPE;
use super::name::{Instance, valid_machine};
use super::stream;
use super::txt::Presence;
use crate::abuse::TokenBucket;
use crate::config::Config;

/// Stanzas waiting for one serverless stream; a peer this far behind is
/// not reading, and further sends fail instead of piling up.
const STREAM_QUEUE: usize = 64;
/// Events waiting for the endpoint's user (standalone UI or bridge).
const EVENT_QUEUE: usize = 256;
/// How long [`Endpoint::stop`] waits for streams to say goodbye.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// What the endpoint needs, from `[link_local]` and `[limits]` or the
/// standalone command line.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Interface name or one of its addresses; `None`: every interface
    /// (standalone mode on a laptop only; the server requires one).
    pub interface: Option<String>,
    pub port: u16,
    /// The `machine` of every announced `user@machine`.
    pub machine: String,
    pub tls: bool,
    pub require_tls: bool,
    pub max_peers: usize,
    pub max_streams: usize,
    pub stanza_rate: u64,
    pub stanza_burst: u64,
    /// The framer's limits, as for client streams after authentication.
    pub limits: Limits,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
}

impl EndpointConfig {
    pub fn from_config(c: &Config) -> Self {
        let ll = &c.link_local;
        EndpointConfig {
            interface: ll.interface.clone(),
            port: ll.port,
            machine: if ll.machine.is_empty() {
                machine_name()
            } else {
                ll.machine.clone()
            },
            tls: ll.tls,
            require_tls: ll.require_tls,
            max_peers: ll.max_peers,
            max_streams: ll.max_streams,
            stanza_rate: ll.stanza_rate,
            stanza_burst: ll.stanza_burst,
            limits: Limits {
                max_stanza_bytes: c.max_stanza_bytes,
                max_depth: c.max_depth,
                max_attrs: c.max_attributes,
            },
            connect_timeout: ll.connect_timeout,
            idle_timeout: ll.idle_timeout,
            write_timeout: c.write_timeout,
        }
    }
}

/// This machine's name as a DNS label: the host name up to its first dot,
/// other characters replaced by `-`.
pub fn machine_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let label: String = raw
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let label = label.trim_matches('-').to_string();
    if valid_machine(&label) {
        label
    } else {
        "waxwing".into()
    }
}

/// A peer seen on the LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub instance: Instance,
    pub presence: Presence,
    /// Announced addresses (IPv4), in no order.
    pub addrs: Vec<IpAddr>,
    pub port: u16,
    /// The DNS-SD service instance name (`bob@desk._presence._tcp.local.`).
    pub fullname: String,
}

/// What the endpoint tells its user.
#[derive(Debug)]
pub enum LinkEvent {
    /// A peer appeared, or its presence or addresses changed.
    PeerUp(Peer),
    /// A peer said goodbye (or its records expired).
    PeerDown(Instance),
    /// A message from a peer to one of our announced entities (`owner` as
    /// given to [`Endpoint::announce`]); `from`/`to` are already stamped
    /// with the two instance names.
    Message {
        from: Instance,
        owner: String,
        stanza: Element,
    },
    /// A stanza we sent could not be delivered (no connection, or the
    /// stream ended before it was written).
    Undelivered {
        owner: String,
        to: Instance,
        stanza: Element,
        /// As given to [`Endpoint::send`] (the bridge keeps the sender's
        /// full JID there, for the error).
        origin: Option<String>,
    },
}

/// A stanza waiting for its stream, with the caller's note of where it came from.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub stanza: Element,
    pub origin: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("link-local interface {0:?} has no IPv4 address")]
    NoAddress(String),
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Why [`Endpoint::send`] refused a stanza.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("the sender is not announced on the LAN")]
    NotAnnounced,
    #[error("no such peer on the LAN")]
    UnknownPeer,
    #[error("too many link-local streams")]
    TooManyStreams,
    #[error("the stream to this peer is not keeping up")]
    Busy,
}

/// One of our announced entities.
#[derive(Clone, Debug)]
pub(super) struct Local {
    pub instance: Instance,
    fullname: String,
}

/// The sending side of one serverless stream.
struct StreamSlot {
    id: u64,
    tx: mpsc::Sender<Outgoing>,
}

pub(super) struct Inner {
    pub cfg: EndpointConfig,
    daemon: ServiceDaemon,
    /// Addresses we listen on and announce; empty: every interface
    /// (mdns-sd fills the addresses in).
    addrs: Vec<IpAddr>,
    pub port: u16,
    /// Owner key → announced entity.
    local: Mutex<HashMap<String, Local>>,
    /// Instance key → peer.
    peers: Mutex<HashMap<String, Peer>>,
    /// (our instance key, peer instance key) → stream.
    streams: Mutex<HashMap<(String, String), StreamSlot>>,
    next_stream: AtomicU64,
    pub stream_slots: Arc<Semaphore>,
    /// Stanza budgets per peer address (bounded: least recently used go).
    buckets: Mutex<LruCache<IpAddr, TokenBucket>>,
    pub events: mpsc::Sender<LinkEvent>,
    pub tls: Option<stream::LlTls>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running link-local endpoint. Dropping it does not stop it: call
/// [`Endpoint::stop`] so that peers get the goodbye packets.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl Endpoint {
    /// Binds the listener, starts mDNS and browsing. Events arrive on the
    /// returned receiver, which the caller must keep reading.
    pub async fn start(
        cfg: EndpointConfig,
    ) -> Result<(Endpoint, mpsc::Receiver<LinkEvent>), StartError> {
        let addrs = interface_addrs(cfg.interface.as_deref())?;
        let mut listeners = Vec::new();
        let mut port = cfg.port;
        for ip in addrs.iter().copied().chain(
            addrs
                .is_empty()
                .then_some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ) {
            let l = TcpListener::bind(SocketAddr::new(ip, port)).await?;
            port = l.local_addr()?.port();
            listeners.push(l);
        }
        let daemon = ServiceDaemon::new()?;
        if let Some(iface) = &cfg.interface {
            daemon.disable_interface(IfKind::All)?;
            match iface.parse::<IpAddr>() {
                Ok(ip) => daemon.enable_interface(IfKind::Addr(ip))?,
                Err(_) => daemon.enable_interface(IfKind::Name(iface.clone()))?,
            }
        }
        let tls = if cfg.tls {
            Some(stream::LlTls::new(&cfg.machine).map_err(StartError::Tls)?)
        } else {
            None
        };
        let browse = daemon.browse(SERVICE_TYPE)?;
        let (events, rx) = mpsc::channel(EVENT_QUEUE);
        let inner = Arc::new(Inner {
            stream_slots: Arc::new(Semaphore::new(cfg.max_streams)),
            buckets: Mutex::new(LruCache::new(cfg.max_peers.saturating_mul(2).max(16))),
            cfg,
            daemon,
            addrs,
            port,
            local: Mutex::default(),
            peers: Mutex::default(),
            streams: Mutex::default(),
            next_stream: AtomicU64::new(1),
            events,
            tls,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        inner.tasks.spawn(discover(inner.clone(), browse));
        for l in listeners {
            inner.tasks.spawn(accept_loop(inner.clone(), l));
        }
        Ok((Endpoint { inner }, rx))
    }

    /// The TCP port of the serverless streams.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The addresses we listen on (empty: every interface).
    pub fn addrs(&self) -> &[IpAddr] {
        &self.inner.addrs
    }

    pub fn machine(&self) -> &str {
        &self.inner.cfg.machine
    }

    /// Announces (or re-announces with new presence) the entity `owner` as
    /// `user@machine`; a name another owner holds gets `-1`, `-2` …
    /// (XEP-0174 §3). Returns the announced instance.
    pub fn announce(&self, owner: &str, user: &str, presence: &Presence) -> Option<Instance> {
        let inner = &self.inner;
        let instance = {
            let local = lock(&inner.local);
            match local.get(owner) {
                Some(l) => l.instance.clone(),
                None => (0..100).find_map(|n| {
                    let u = if n == 0 {
                        user.to_string()
                    } else {
                        format!("{user}-{n}")
                    };
                    let i = Instance::new(&u, &inner.cfg.machine)?;
                    let taken = local.values().any(|l| l.instance.key() == i.key())
                        || lock(&inner.peers).contains_key(&i.key());
                    (!taken).then_some(i)
                })?,
            }
        };
        let host = format!("{}.local.", inner.cfg.machine);
        let txt = presence.to_txt(inner.port);
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance.to_string(),
            &host,
            inner.addrs.as_slice(),
            inner.port,
            txt.as_slice(),
        );
        let info = match info {
            Ok(i) if inner.addrs.is_empty() => i.enable_addr_auto(),
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(%instance, error = %e, "link-local: cannot announce");
                return None;
            }
        };
        let fullname = info.get_fullname().to_string();
        if let Err(e) = inner.daemon.register(info) {
            tracing::warn!(%instance, error = %e, "link-local: cannot announce");
            return None;
        }
        lock(&inner.local).insert(
            owner.to_string(),
            Local {
                instance: instance.clone(),
                fullname,
            },
        );
        tracing::debug!(%instance, "link-local: announced");
        Some(instance)
    }

    /// Withdraws `owner` (mDNS goodbye) and closes its streams.
    pub fn withdraw(&self, owner: &str) {
        let _ = self.withdraw_inner(owner);
    }

    fn withdraw_inner(&self, owner: &str) -> Option<mdns_sd::Receiver<mdns_sd::UnregisterStatus>> {
        let l = lock(&self.inner.local).remove(owner)?;
        let key = l.instance.key();
        // Dropping the senders ends the streams after what they hold.
        lock(&self.inner.streams).retain(|(ours, _), _| *ours != key);
        tracing::debug!(instance = %l.instance, "link-local: withdrawn");
        match self.inner.daemon.unregister(&l.fullname) {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::warn!(instance = %l.instance, error = %e, "link-local: goodbye failed");
                None
            }
        }
    }

    /// The announced instance of `owner`.
    pub fn instance_of(&self, owner: &str) -> Option<Instance> {
        lock(&self.inner.local)
            .get(owner)
            .map(|l| l.instance.clone())
    }

    /// Every peer currently seen, sorted by name.
    pub fn peers(&self) -> Vec<Peer> {
        let mut v: Vec<Peer> = lock(&self.inner.peers).values().cloned().collect();
        v.sort_by_key(|p| p.instance.key());
        v
    }

    /// A peer by name (without regard to case).
    pub fn peer(&self, instance: &Instance) -> Option<Peer> {
        lock(&self.inner.peers).get(&instance.key()).cloned()
    }

    /// Sends `stanza` from `owner` to the peer `to`, over the stream between
    /// them, opening one if there is none. `from`/`to` are set here.
    /// `origin` comes back with the stanza if it cannot be delivered.
    pub fn send(
        &self,
        owner: &str,
        to: &Instance,
        mut stanza: Element,
        origin: Option<String>,
    ) -> Result<(), SendError> {
        let inner = &self.inner;
        let from = self.instance_of(owner).ok_or(SendError::NotAnnounced)?;
        let peer = self.peer(to).ok_or(SendError::UnknownPeer)?;
        stanza.set_attr("from", from.to_string());
        stanza.set_attr("to", peer.instance.to_string());
        let key = (from.key(), peer.instance.key());
        let mut out = Outgoing { stanza, origin };
        let mut streams = lock(&inner.streams);
        if let Some(slot) = streams.get(&key) {
            match slot.tx.try_send(out) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => return Err(SendError::Busy),
                Err(mpsc::error::TrySendError::Closed(o)) => {
                    streams.remove(&key);
                    out = o;
                }
            }
        }
        let permit = inner
            .stream_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| SendError::TooManyStreams)?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let _ = tx.try_send(out);
        let id = inner.next_stream.fetch_add(1, Ordering::Relaxed);
        streams.insert(key, StreamSlot { id, tx });
        drop(streams);
        inner.tasks.spawn(stream::run_outgoing(
            inner.clone(),
            permit,
            id,
            owner.to_string(),
            from,
            peer,
            rx,
        ));
        Ok(())
    }

    /// Withdraws everything (goodbye packets), closes every stream, stops mDNS.
    pub async fn stop(self) {
        let owners: Vec<String> = lock(&self.inner.local).keys().cloned().collect();
        let goodbyes: Vec<_> = owners
            .iter()
            .filter_map(|o| self.withdraw_inner(o))
            .collect();
        // The goodbye packets go out before the daemon stops.
        for rx in goodbyes {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx.recv_async()).await;
        }
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(STOP_GRACE, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("link-local: streams did not close in time");
        }
        if let Ok(rx) = self.inner.daemon.shutdown() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx.recv_async()).await;
        }
    }
}

impl Inner {
    /// The owner whose instance is `key`.
    pub fn local_by_key(&self, key: &str) -> Option<(String, Local)> {
        lock(&self.local)
            .iter()
            .find(|(_, l)| l.instance.key() == key)
            .map(|(o, l)| (o.clone(), l.clone()))
    }

    /// The only announced entity, for a stream header without `to`.
    pub fn only_local(&self) -> Option<(String, Local)> {
        let local = lock(&self.local);
        (local.len() == 1)
            .then(|| local.iter().next().map(|(o, l)| (o.clone(), l.clone())))
            .flatten()
    }

    pub fn peer(&self, key: &str) -> Option<Peer> {
        lock(&self.peers).get(key).cloned()
    }

    /// Peers announced at `ip`.
    pub fn peers_at(&self, ip: IpAddr) -> Vec<Peer> {
        lock(&self.peers)
            .values()
            .filter(|p| p.addrs.contains(&ip))
            .cloned()
            .collect()
    }

    /// Takes one stanza from the budget of `ip`.
    pub fn charge(&self, ip: IpAddr) -> bool {
        let mut b = lock(&self.buckets);
        let now = Instant::now();
        if b.get(&ip).is_none() {
            b.insert(
                ip,
                TokenBucket::full_at(self.cfg.stanza_rate, self.cfg.stanza_burst, now),
            );
        }
        b.get_mut(&ip).is_some_and(|t| t.try_take(1, now))
    }

    /// Makes an accepted stream the one for its pair; returns its receiver.
    pub fn register_stream(
        &self,
        ours: &Instance,
        peer: &Instance,
    ) -> (u64, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        lock(&self.streams).insert((ours.key(), peer.key()), StreamSlot { id, tx });
        (id, rx)
    }

    /// Forgets stream `id` (if it is still the one for its pair).
    pub fn unregister_stream(&self, ours: &Instance, peer: &Instance, id: u64) {
        let key = (ours.key(), peer.key());
        let mut streams = lock(&self.streams);
        if streams.get(&key).is_some_and(|s| s.id == id) {
            streams.remove(&key);
        }
    }

    /// A peer we could not connect to may be gone without a goodbye (a
    /// crash, a cable pulled): RFC 6762 §10.4 asks for its records again,
    /// and if nobody answers they are flushed and the peer reported down,
    /// instead of lingering for the records' lifetime (75 minutes).
    pub fn verify(&self, peer: &Peer) {
        if let Err(e) = self
            .daemon
            .verify(peer.fullname.clone(), mdns_sd::VERIFY_TIMEOUT_DEFAULT)
        {
            tracing::debug!(peer = %peer.instance, error = %e, "link-local: cannot verify");
        }
    }

    /// The address outgoing streams come from (the one we announce).
    pub fn source_addr(&self) -> Option<IpAddr> {
        self.addrs.first().copied()
    }

    fn is_ours(&self, fullname: &str) -> bool {
        lock(&self.local).values().any(|l| l.fullname == fullname)
    }
}

/// The IPv4 addresses of the configured interface (a name or an address).
fn interface_addrs(iface: Option<&str>) -> Result<Vec<IpAddr>, StartError> {
    let Some(iface) = iface else {
        return Ok(Vec::new());
    };
    if let Ok(ip) = iface.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let addrs: Vec<IpAddr> = if_addrs::get_if_addrs()?
        .into_iter()
        .filter(|i| i.name == iface)
        .map(|i| i.ip())
        .filter(IpAddr::is_ipv4)
        .collect();
    if addrs.is_empty() {
        return Err(StartError::NoAddress(iface.into()));
    }
    Ok(addrs)
}

/// Turns mDNS browse events into the peer table and [`LinkEvent`]s.
async fn discover(inner: Arc<Inner>, browse: mdns_sd::Receiver<ServiceEvent>) {
    let mut full_warned = false;
    loop {
        let ev = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            ev = browse.recv_async() => match ev {
                Ok(ev) => ev,
                Err(_) => return,
            },
        };
        match ev {
            ServiceEvent::ServiceResolved(rs) => {
                if inner.is_ours(&rs.fullname) {
                    continue;
                }
                let Some(instance) = Instance::from_fullname(&rs.fullname) else {
                    tracing::debug!(name = %rs.fullname, "link-local: ignoring an unusable name");
                    continue;
                };
                let mut addrs: Vec<IpAddr> = rs
                    .addresses
                    .iter()
                    .map(|a| a.to_ip_addr())
                    .filter(IpAddr::is_ipv4)
                    .collect();
                addrs.sort();
                let presence =
                    Presence::from_txt(rs.txt_properties.iter().map(|p| (p.key(), p.val())));
                let peer = Peer {
                    instance,
                    presence,
                    addrs,
                    port: rs.port,
                    fullname: rs.fullname.clone(),
                };
                let changed = {
                    let mut peers = lock(&inner.peers);
                    let key = peer.instance.key();
                    match peers.get(&key) {
                        Some(old) if *old == peer => false,
                        None if peers.len() >= inner.cfg.max_peers => {
                            if !full_warned {
                                tracing::warn!(
                                    max = inner.cfg.max_peers,
                                    "link-local: peer table full; new peers are ignored"
                                );
                                full_warned = true;
                            }
                            false
                        }
                        _ => {
                            peers.insert(key, peer.clone());
                            true
                        }
                    }
                };
                if changed {
                    tracing::debug!(peer = %peer.instance, "link-local: peer up");
                    if inner.events.send(LinkEvent::PeerUp(peer)).await.is_err() {
                        return;
                    }
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                let Some(instance) = Instance::from_fullname(&fullname) else {
                    continue;
                };
                let gone = lock(&inner.peers).remove(&instance.key());
                if let Some(p) = gone {
                    full_warned = false;
                    tracing::debug!(peer = %p.instance, "link-local: peer down");
                    if inner
                        .events
                        .send(LinkEvent::PeerDown(p.instance))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            _ => {}
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let (tcp, remote) = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "link-local: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let permit = inner.stream_slots.clone().try_acquire_owned().ok();
        inner
            .tasks
            .spawn(stream::run_incoming(inner.clone(), permit, tcp, remote));
    }
}
