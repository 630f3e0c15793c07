//! The built-in STUN/TURN server (`[turn]`, off by default): RFC 5389
//! Binding and RFC 5766 Allocate, Refresh, CreatePermission, ChannelBind,
//! Send/Data indications and ChannelData, over UDP and TCP.
//!
//! The protocol is webrtc-rs's `turn` crate. Around it:
//! - `auth.rs`: the TURN REST credentials XEP-0215 hands out (same secret);
//! - `gate.rs`: a wrapper around each listener's socket that refuses
//!   permissions to private peers (403) and Allocates over quota (486);
//! - `relay.rs`: relay sockets from the configured port range, with the
//!   per-user quota, bandwidth limits and peer filter applied to every
//!   datagram, and the relay metrics;
//! - `peers.rs`: which peer addresses are refused;
//! - `tcp.rs`: TCP connections framed into the crate's datagram `Conn`.
//!
//! The listeners are bound before the server is built (`bind`), so that a
//! taken port is a startup error and XEP-0215 can advertise the ports
//! actually bound (`advertise`); `start` then runs the crate's server
//! until shutdown.

mod auth;
mod gate;
mod peers;
mod relay;
mod tcp;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use turn::server::Server as TurnServer;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::Conn;

use crate::config::Config;
use crate::config::ext::ExternalService;
use crate::listen::ListenerKind;
use crate::router::Server;

/// The listeners of `[turn]`, bound.
#[derive(Default)]
pub(crate) struct Bound {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
}

impl Bound {
    /// `(kind, address)` of each listener, for the startup report.
    pub fn addrs(&self) -> Vec<(ListenerKind, SocketAddr)> {
        let udp = self.udp.iter().filter_map(|s| s.local_addr().ok());
        let tcp = self.tcp.iter().filter_map(|s| s.local_addr().ok());
        udp.map(|a| (ListenerKind::TurnUdp, a))
            .chain(tcp.map(|a| (ListenerKind::TurnTcp, a)))
            .collect()
    }
}

/// Binds the `[turn]` listeners (none when it is off).
pub(crate) async fn bind(config: &Config) -> std::io::Result<Bound> {
    let t = &config.turn;
    let mut out = Bound::default();
    if !t.enabled {
        return Ok(out);
    }
    let named = |what: &str, addr: SocketAddr, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
    };
    for a in &t.listen_udp {
        out.udp.push(
            UdpSocket::bind(a)
                .await
                .map_err(|e| named("turn_udp", *a, e))?,
        );
    }
    for a in &t.listen_tcp {
        out.tcp.push(
            TcpListener::bind(a)
                .await
                .map_err(|e| named("turn_tcp", *a, e))?,
        );
    }
    Ok(out)
}

/// Lists the built-in server in `[external_services]` (XEP-0215), with
/// the ports actually bound: STUN and TURN on the first UDP listener,
/// TURN on the first TCP one.
pub(crate) fn advertise(config: &mut Config, bound: &Bound) {
    let host = config.turn.public_host.clone();
    let mut add = |kind: &str, transport: &str, port: u16| {
        config.external_services.services.push(ExternalService {
            kind: kind.into(),
            host: host.clone(),
            port,
            transport: Some(transport.into()),
            name: None,
        });
    };
    if let Some(port) = bound
        .udp
        .first()
        .and_then(|s| s.local_addr().ok())
        .map(|a| a.port())
    {
        add("stun", "udp", port);
        add("turn", "udp", port);
    }
    if let Some(port) = bound
        .tcp
        .first()
        .and_then(|s| s.local_addr().ok())
        .map(|a| a.port())
    {
        add("turn", "tcp", port);
    }
}

/// Runs the TURN server on `bound` until the server shuts down.
pub(crate) async fn start(server: &Arc<Server>, bound: Bound) -> std::io::Result<()> {
    let t = &server.config.turn;
    if !t.enabled {
        return Ok(());
    }
    let relay_ip = t.relay_ip.expect("checked by the configuration");
    let relays = relay::Relays::new(
        relay::Limits {
            per_user: t.max_allocations_per_user,
            total: t.max_allocations,
            allocation_bandwidth: t.allocation_bandwidth,
            user_bandwidth: t.user_bandwidth,
            max_age: t.max_allocation,
        },
        peers::PeerPolicy {
            allow_private: t.allow_private_peers,
            allowed: t.allowed_peers.clone(),
        },
        relay_ip,
        t.relay_bind,
        (t.min_port, t.max_port),
        &server.metrics,
    );
    let refused = gate::Refusals {
        peer: server.metrics.turn_refused("peer_refused"),
        quota: server.metrics.turn_refused("quota"),
        rate: server.metrics.turn_refused("rate"),
    };
    let shutdown: CancellationToken = server.shutdown_token();
    let mut sockets: Vec<Arc<dyn Conn + Send + Sync>> = Vec::new();
    for s in bound.udp {
        sockets.push(Arc::new(s));
    }
    for l in bound.tcp {
        // One TCP connection per allocation, and a few for STUN.
        let max = t.max_allocations as usize + 64;
        let local = l.local_addr()?;
        let r = relays.clone();
        let closed = Arc::new(move |client| r.end_client((local, client)));
        sockets.push(tcp::TcpMux::start(l, max, closed, shutdown.clone())?);
    }
    let conn_configs = sockets
        .into_iter()
        .map(|inner| {
            let pending = Arc::new(Mutex::new(None));
            let local = inner.local_addr()?;
            Ok(ConnConfig {
                conn: Arc::new(gate::GatedConn {
                    local,
                    inner,
                    relays: relays.clone(),
                    refused: refused.clone(),
                    pending: pending.clone(),
                    shutdown: shutdown.clone(),
                }),
                relay_addr_generator: Box::new(relay::RelayGenerator {
                    relays: relays.clone(),
                    pending,
                }),
            })
        })
        .collect::<Result<Vec<_>, webrtc_util::Error>>()
        .map_err(|e| std::io::Error::other(format!("TURN listener: {e}")))?;
    let turn = TurnServer::new(ServerConfig {
        conn_configs,
        realm: t.realm.clone(),
        auth_handler: Arc::new(auth::RestAuth::new(t.secret.clone(), t.realm.clone())),
        channel_bind_timeout: std::time::Duration::ZERO,
        alloc_close_notify: None,
    })
    .await
    .map_err(|e| std::io::Error::other(format!("TURN server: {e}")))?;
    tracing::info!(realm = %t.realm, relay_ip = %relay_ip, ports = %format!("{}-{}", t.min_port, t.max_port), "TURN server started");
    tokio::spawn(async move {
        shutdown.cancelled().await;
        // The gates already end the read loops; this closes what is left.
        let _ = turn.close().await;
    });
    Ok(())
}
