//! The Waxwing runtime: everything with a socket, a task or a lock.
#![forbid(unsafe_code)]

pub mod abuse;
pub mod acme;
pub mod admin;
pub mod auth;
pub mod bosh;
pub(crate) mod boxed;
pub(crate) mod client_memo;
pub mod cluster;
pub(crate) mod component;
pub mod config;
pub mod credentials;
pub mod fast_map;
pub mod hooks;
pub mod http;
pub mod invites;
pub(crate) mod isolate;
pub mod link_local;
pub mod listen;
pub mod metrics;
pub mod private_file;
pub(crate) mod proxy65;
pub(crate) mod queue;
pub mod reload;
pub mod router;
pub mod s2s;
pub mod session;
pub mod shared_stanza;
pub mod store_cache;
pub mod stream;
pub mod time;
mod timed;
pub mod tls;
pub(crate) mod turn;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

pub use config::Config;
pub use router::Server;

use crate::hooks::{ModuleLoader, RegisterError, Registrar};
use crate::listen::ListenerKind;

/// The git revision this binary was built from ("unknown" outside git).
pub const BUILD_REVISION: &str = env!("WAXWING_GIT_REVISION");
/// The build date (UTC, `SOURCE_DATE_EPOCH` when set).
pub const BUILD_DATE: &str = env!("WAXWING_BUILD_DATE");
/// `0.1.0 (rev 1234abcd5678, built 2026-12-06)`, for `--version`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (rev ",
    env!("WAXWING_GIT_REVISION"),
    ", built ",
    env!("WAXWING_BUILD_DATE"),
    ")"
);

/// How long a graceful stop waits for streams to close before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long modules get for `Event::ShuttingDown` before streams close.
const FAREWELL_GRACE: Duration = Duration::from_secs(2);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Store(#[from] waxwing_store::StoreError),
    #[error("modules: {0}")]
    Register(#[from] RegisterError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cluster: {0}")]
    Cluster(#[from] cluster::ClusterError),
}

/// A started server.
pub struct Running {
    pub server: Arc<Server>,
    /// Every bound listener with its real address (port 0 resolved).
    pub listeners: Vec<(ListenerKind, SocketAddr)>,
    tasks: TaskTracker,
}

/// Opens storage, registers modules, loads TLS, binds listeners and starts accepting.
pub async fn start(
    config: Config,
    modules: Vec<Arc<dyn ModuleLoader>>,
) -> Result<Running, StartError> {
    std::fs::create_dir_all(&config.data_dir)?;
    let stores = waxwing_store::open_with(&config.database_url, &config.storage).await?;
    start_with_stores(config, modules, stores).await
}

/// [`start`] on stores the caller opened (`config.database_url` is not
/// used): tests wrap a store to make it fail on demand.
pub async fn start_with_stores(
    config: Config,
    modules: Vec<Arc<dyn ModuleLoader>>,
    stores: waxwing_store::Stores,
) -> Result<Running, StartError> {
    std::fs::create_dir_all(&config.data_dir)?;
    let mut config = config;
    let turn_bound = turn::bind(&config).await?;
    turn::advertise(&mut config, &turn_bound);
    let mut modules = modules;
    if config.proxy65.enabled {
        modules.push(hooks::load(proxy65::Proxy65Module {
            domains: config.proxy65.domains.clone(),
        }));
    }
    let mut registry = Registrar::build(modules)?;
    stream::c2s::websocket::register(&mut registry, &config);
    bosh::register(&mut registry.http, &config.bosh);
    let tls = tls::TlsContext::load(&config)?;
    let s2s = s2s::S2sManager::new(&config, &tls)?;
    s2s.defences.load(&*stores.reputation).await?;
    let fake_salt_key = credentials::load_fake_salt_key(&config.data_dir)?;
    let server = Server::new(config, stores, registry, tls, s2s, fake_salt_key);
    acme::install_stored(&server);
    if let Some(interval) = server.config.cert_watch_interval {
        tls::watch::spawn(
            server.tls.certificates().clone(),
            interval,
            server.shutdown.clone(),
            &server.background,
        );
    }
    cluster::Cluster::start(&server).await?;
    auth::anonymous::purge(&server).await;
    let bound = listen::bind_all(&server).await?;
    let mut listeners: Vec<_> = bound.iter().map(|b| (b.kind, b.addr)).collect();
    listeners.extend(turn_bound.addrs());
    turn::start(&server, turn_bound).await?;
    server
        .clone()
        .emit(None, crate::hooks::Event::Started)
        .await;
    let tasks = TaskTracker::new();
    let (web, xmpp): (Vec<_>, Vec<_>) = bound
        .into_iter()
        .partition(|b| matches!(b.kind, ListenerKind::Http | ListenerKind::Https));
    server.http.set_bound(
        web.iter()
            .map(|b| (http::Secure(b.kind == ListenerKind::Https), b.addr))
            .collect(),
    );
    if !web.is_empty() {
        let app = http::app(&server);
        let permits = Arc::new(tokio::sync::Semaphore::new(
            server.config.http.max_connections,
        ));
        for b in web {
            tracing::info!(kind = b.kind.name(), addr = %b.addr, "listening");
            let l = http::HttpListener {
                secure: http::Secure(b.kind == ListenerKind::Https),
                listener: b.listener,
            };
            tokio::spawn(http::accept_loop(
                server.clone(),
                l,
                app.clone(),
                permits.clone(),
                tasks.clone(),
            ));
        }
    }
    for b in xmpp {
        tracing::info!(kind = b.kind.name(), addr = %b.addr, "listening");
        tokio::spawn(listen::accept_loop(server.clone(), b, tasks.clone()));
    }
    // After the listeners: the CA's validators connect to them.
    acme::spawn(&server);
    Ok(Running {
        server,
        listeners,
        tasks,
    })
}

impl Running {
    /// Graceful stop: no new connections, `system-shutdown` to every stream,
    /// then wait (bounded) for the connection tasks to finish their writes.
    pub async fn stop(self) {
        let farewell = self
            .server
            .clone()
            .emit(None, crate::hooks::Event::ShuttingDown);
        if tokio::time::timeout(FAREWELL_GRACE, farewell)
            .await
            .is_err()
        {
            tracing::warn!("modules did not finish their shutdown work in time");
        }
        self.server.shutdown();
        self.tasks.close();
        self.server.background.close();
        let both = async {
            self.tasks.wait().await;
            self.server.background.wait().await;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, both).await.is_err() {
            tracing::warn!("some connections or background tasks did not end in time");
        }
        if let Some(c) = &self.server.cluster {
            c.leave().await;
        }
    }
}

/// A random identifier for stream ids, nonces and generated resources:
/// 96 random bits, 16 URL-safe base64 characters.
pub fn random_id() -> String {
    let mut id = String::with_capacity(16);
    push_random_id(&mut id);
    id
}

/// Appends a [`random_id`] to `out`, for ids written straight into a
/// stanza's XML (a room's stanza-ids): base64 escapes nothing in an
/// attribute.
pub fn push_random_id(out: &mut String) {
    use base64::Engine;
    // Filled in one go: `rand::random::<[u8; 12]>()` draws each byte from
    // its own 32-bit word.
    let mut bytes = [0u8; 12];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_url_safe_base64_of_twelve_bytes() {
        use base64::Engine;
        let (a, b) = (random_id(), random_id());
        assert!(a.len() == 16 && a != b);
        for id in [&a, &b] {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(id)
                .unwrap();
            assert_eq!(bytes.len(), 12, "{id}");
        }
        let mut appended = String::from("x");
        push_random_id(&mut appended);
        assert!(appended.starts_with('x') && appended.len() == 17);
    }
}
