//! The one HTTP listener (axum on hyper), shared by every web feature:
//! WebSocket, BOSH, connection discovery, file upload, the web client and
//! later `/metrics` and the admin API.
//!
//! # Adding routes
//!
//! Anything that registers through [`Registrar`](crate::hooks::Registrar)
//! (a module in `waxwing-modules`, a loader in the binary, or core code that
//! `start_with_stores` registers) adds an [`axum::Router<Arc<Server>>`]
//! before the listener starts:
//!
//! ```ignore
//! fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
//!     reg.http_routes(
//!         axum::Router::new().route("/metrics", axum::routing::get(metrics)),
//!     );
//!     Ok(())
//! }
//! async fn metrics(State(server): State<Arc<Server>>) -> String { … }
//! ```
//!
//! Handlers reach the server through `State<Arc<Server>>`; a router with a
//! state of its own can be given after `.with_state(own)`. Every request
//! also carries, as extensions, [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo)
//! (the peer) and [`Secure`] (whether it came over TLS). Two paths given twice
//! is a startup panic (axum's overlap check), found by any test that starts
//! the server.
//!
//! Routes added with [`Registrar::http_routes`](crate::hooks::Registrar::http_routes)
//! get the request timeout (`[http] request_timeout_secs`) and the body limit
//! (`[http] max_body_bytes`, enforced by axum's body extractors: `Bytes`,
//! `String`, `Form`…). A route that streams large bodies or holds requests
//! longer (upload PUT, BOSH long polls, WebSocket upgrades, which end their
//! HTTP request at once anyway) uses
//! [`Registrar::http_routes_unlimited`](crate::hooks::Registrar::http_routes_unlimited)
//! and enforces its own limits.
//!
//! Every response gets the security headers of [`security`] (a route may set
//! its own `Content-Security-Policy`, which is then kept). WebSocket and BOSH
//! check the `Origin` of a request with [`security::check_origin`].
//!
//! Connection discovery (XEP-0156) lists what was registered with
//! [`Registrar::alt_connection`](crate::hooks::Registrar::alt_connection).

pub mod discovery;
pub mod security;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::router::Server;

/// How long a connection being shut down may finish its request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Whether a request came over TLS (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secure(pub bool);

/// An XEP-0156 alternative connection method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AltConnection {
    /// RFC 7395, `urn:xmpp:alt-connections:websocket`, `ws://`/`wss://`.
    WebSocket,
    /// XEP-0206, `urn:xmpp:alt-connections:xbosh`.
    Bosh,
}

impl AltConnection {
    pub fn rel(self) -> &'static str {
        match self {
            AltConnection::WebSocket => "urn:xmpp:alt-connections:websocket",
            AltConnection::Bosh => "urn:xmpp:alt-connections:xbosh",
        }
    }
}

/// What modules registered for the HTTP listener (part of the registry).
#[derive(Default)]
pub struct HttpRoutes {
    pub(crate) ordinary: Router<Arc<Server>>,
    pub(crate) unlimited: Router<Arc<Server>>,
    /// (method, path on this server), in registration order.
    pub(crate) alt_connections: Vec<(AltConnection, String)>,
}

/// The HTTP side of the running server: its bound addresses (known once the
/// listeners are bound, port 0 resolved) and the URLs derived from them.
#[derive(Debug, Default)]
pub struct HttpState {
    bound: OnceLock<Vec<(Secure, SocketAddr)>>,
}

impl HttpState {
    pub(crate) fn set_bound(&self, bound: Vec<(Secure, SocketAddr)>) {
        let _ = self.bound.set(bound);
    }

    /// The bound listeners (empty before they are bound, or with none configured).
    pub fn bound(&self) -> &[(Secure, SocketAddr)] {
        self.bound.get().map(Vec::as_slice).unwrap_or_default()
    }

    /// The base URL (`scheme://authority[/path]`, no trailing slash) that
    /// clients of `host` reach the HTTP listener at: `[http] public_url` when
    /// configured; else `http://localhost:<port>` for the zero-config
    /// `localhost` host on a loopback plain listener (what a developer opens
    /// in the browser; browsers treat `localhost` as a secure context);
    /// else `https://<host>[:port]` on the TLS listener, else
    /// `http://<host>:<port>`. `None` without any HTTP listener.
    pub fn base_url(&self, config: &crate::Config, host: &str) -> Option<String> {
        if let Some(url) = &config.http.public_url {
            return Some(url.clone());
        }
        let bound = self.bound();
        let plain = bound.iter().find(|(s, _)| !s.0).map(|(_, a)| *a);
        let tls = bound.iter().find(|(s, _)| s.0).map(|(_, a)| *a);
        match (plain, tls) {
            (Some(a), _) if host == "localhost" && a.ip().is_loopback() => {
                Some(format!("http://localhost:{}", a.port()))
            }
            (_, Some(a)) if a.port() == 443 => Some(format!("https://{host}")),
            (_, Some(a)) => Some(format!("https://{host}:{}", a.port())),
            (Some(a), None) if a.port() == 80 => Some(format!("http://{host}")),
            (Some(a), None) => Some(format!("http://{host}:{}", a.port())),
            (None, None) => None,
        }
    }
}

/// The XEP-0156 connection methods registered (method, path), in order.
pub fn alt_connections(server: &Server) -> &[(AltConnection, String)] {
    &server.registry.http.alt_connections
}

/// One bound HTTP listening socket.
pub(crate) struct HttpListener {
    pub secure: Secure,
    pub listener: TcpListener,
}

/// The whole application: registered routes, discovery, the common layers.
pub(crate) fn app(server: &Arc<Server>) -> Router {
    use axum::extract::DefaultBodyLimit;
    use tower_http::timeout::TimeoutLayer;
    let cfg = &server.config.http;
    let routes = &server.registry.http;
    let ordinary = routes
        .ordinary
        .clone()
        .merge(discovery::routes())
        .merge(crate::metrics::routes())
        .merge(crate::admin::routes())
        .merge(crate::acme::routes())
        .layer(TimeoutLayer::with_status_code(
            http::StatusCode::REQUEST_TIMEOUT,
            cfg.request_timeout,
        ))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes));
    let app = ordinary
        .merge(routes.unlimited.clone())
        .with_state(server.clone());
    security::layers(app, &server.config)
}

/// Serves one bound HTTP listener until shutdown. Connections beyond
/// `[http] max_connections` (over all HTTP listeners) are closed at once.
pub(crate) async fn accept_loop(
    server: Arc<Server>,
    l: HttpListener,
    app: Router,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
) {
    let shutdown = server.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = l.listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "HTTP connection limit reached; closing");
            drop(tcp);
            continue;
        };
        let server = server.clone();
        let app = app.clone();
        let secure = l.secure;
        tasks.spawn(async move {
            serve_connection(server, tcp, peer, secure, app).await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    server: Arc<Server>,
    tcp: TcpStream,
    peer: SocketAddr,
    secure: Secure,
    app: Router,
) {
    let _ = tcp.set_nodelay(true);
    let cfg = &server.config.http;
    let hsts = if secure.0 { cfg.hsts_max_age } else { None };
    let service = hyper::service::service_fn(move |mut req: http::Request<_>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(secure);
        let app = app.clone();
        async move {
            let mut resp = app.oneshot(req.map(axum::body::Body::new)).await?;
            if let Some(age) = hsts {
                resp.headers_mut().insert(
                    http::header::STRICT_TRANSPORT_SECURITY,
                    http::HeaderValue::from_str(&format!("max-age={age}"))
                        .expect("a number is a valid header value"),
                );
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(64 * 1024);
    let shutdown = server.shutdown.clone();
    if secure.0 {
        let handshake = server.tls.https_acceptor().accept(tcp);
        let tls = match tokio::time::timeout(cfg.header_read_timeout, handshake).await {
            Ok(Ok(tls)) if crate::tls::is_acme_validation(tls.get_ref().1) => {
                tracing::debug!(%peer, "ACME tls-alpn-01 validation handshake done");
                return;
            }
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "HTTPS handshake timed out");
                return;
            }
        };
        let conn = builder
            .serve_connection(TokioIo::new(tls), service)
            .with_upgrades();
        drive(conn, shutdown, peer).await;
    } else {
        let conn = builder
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        drive(conn, shutdown, peer).await;
    }
}

/// Runs a connection; on shutdown lets its current request finish (bounded)
/// and closes it.
async fn drive<C>(conn: C, shutdown: tokio_util::sync::CancellationToken, peer: SocketAddr)
where
    C: std::future::Future<Output = hyper::Result<()>> + GracefulConnection,
{
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

/// hyper's upgradeable connections, whose `graceful_shutdown` is inherent.
trait GracefulConnection {
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S> GracefulConnection for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self)
    }
}
