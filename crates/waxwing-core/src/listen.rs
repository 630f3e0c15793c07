//! Listeners: accept connections and hand each to its own task.
//! Listeners never parse XML.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::router::Server;
use crate::stream::{c2s, component, s2s_in};

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// c2s with STARTTLS (RFC 6120).
    C2s,
    /// c2s with TLS from the first byte (XEP-0368).
    C2sDirectTls,
    /// s2s with STARTTLS (RFC 6120).
    S2s,
    /// s2s with TLS from the first byte (XEP-0368).
    S2sDirectTls,
    /// XEP-0114 external components.
    Component,
    /// XEP-0065 SOCKS5 bytestreams proxy.
    Proxy65,
    /// The built-in TURN server's UDP socket (`turn/`).
    TurnUdp,
    /// The built-in TURN server's TCP listener.
    TurnTcp,
    /// The HTTP listener, plain (`http/mod.rs`).
    Http,
    /// The HTTP listener with TLS.
    Https,
}

impl ListenerKind {
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::C2s => "c2s",
            ListenerKind::C2sDirectTls => "c2s_direct_tls",
            ListenerKind::S2s => "s2s",
            ListenerKind::S2sDirectTls => "s2s_direct_tls",
            ListenerKind::Component => "component",
            ListenerKind::Proxy65 => "proxy65",
            ListenerKind::TurnUdp => "turn_udp",
            ListenerKind::TurnTcp => "turn_tcp",
            ListenerKind::Http => "http",
            ListenerKind::Https => "https",
        }
    }
}

/// A bound listening socket.
pub struct Bound {
    pub kind: ListenerKind,
    pub addr: SocketAddr,
    pub(crate) listener: TcpListener,
}

/// Binds every configured address. Binding happens before serving so that a
/// taken port is a startup error, not a log line.
pub async fn bind_all(server: &Server) -> std::io::Result<Vec<Bound>> {
    let mut out = Vec::new();
    // The component port stays closed until a component is configured.
    let none = Vec::new();
    let components = if server.config.components.is_empty() {
        &none
    } else {
        &server.config.component_listen
    };
    let proxy65 = if server.config.proxy65.enabled {
        &server.config.proxy65.listen
    } else {
        &none
    };
    let lists = [
        (ListenerKind::C2s, &server.config.c2s),
        (ListenerKind::C2sDirectTls, &server.config.c2s_direct_tls),
        (ListenerKind::S2s, &server.config.s2s_listen),
        (ListenerKind::S2sDirectTls, &server.config.s2s_direct_tls),
        (ListenerKind::Component, components),
        (ListenerKind::Proxy65, proxy65),
        (ListenerKind::Http, &server.config.http.listen),
        (ListenerKind::Https, &server.config.http.listen_tls),
    ];
    for (kind, addrs) in lists {
        for addr in addrs {
            let listener = bind_or_ipv4(*addr).await.map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr} ({}): {e}", kind.name()),
                )
            })?;
            let addr = listener.local_addr()?;
            if kind == ListenerKind::Proxy65 {
                server.proxy65.set_bound(addr);
            }
            out.push(Bound {
                kind,
                addr,
                listener,
            });
        }
    }
    Ok(out)
}

/// Accepts until shutdown; connection tasks are tracked so that shutdown can
/// wait for every stream to say goodbye.
pub async fn accept_loop(server: Arc<Server>, bound: Bound, tasks: TaskTracker) {
    let shutdown = server.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = bound.listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let counted = server.metrics.connection(bound.kind.name());
                let server = server.clone();
                let serve: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match bound.kind {
                    ListenerKind::C2s => Box::pin(c2s::serve(server, tcp, peer, false)),
                    ListenerKind::C2sDirectTls => Box::pin(c2s::serve(server, tcp, peer, true)),
                    ListenerKind::S2s => Box::pin(s2s_in::serve(server, tcp, peer, false)),
                    ListenerKind::S2sDirectTls => Box::pin(s2s_in::serve(server, tcp, peer, true)),
                    ListenerKind::Component => Box::pin(component::serve(server, tcp, peer)),
                    ListenerKind::Proxy65 => Box::pin(crate::proxy65::serve(server, tcp, peer)),
                    ListenerKind::Http | ListenerKind::Https => {
                        unreachable!("HTTP listeners are served by http::accept_loop")
                    }
                    ListenerKind::TurnUdp | ListenerKind::TurnTcp => {
                        unreachable!("TURN listeners are served by turn::start")
                    }
                };
                tasks.spawn(async move {
                    serve.await;
                    drop(counted);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Binds `addr`; a wildcard IPv6 address on a host without IPv6 falls back
/// to the IPv4 wildcard, so the zero-config `[::]` listeners work anywhere.
async fn bind_or_ipv4(addr: SocketAddr) -> std::io::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED => {
            let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::warn!(%addr, error = %e, fallback = %v4, "IPv6 unavailable; listening on IPv4 only");
            TcpListener::bind(v4).await.map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}
