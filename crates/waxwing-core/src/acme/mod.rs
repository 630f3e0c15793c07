//! Certificates from an ACME (RFC 8555) certificate authority such as
//! Let's Encrypt, for every host and its service domains, with
//! `instant-acme` as the protocol client.
//!
//! - `issue.rs`: the account and one order (challenges, finalization).
//! - `challenges.rs`: the answers the CA's validators fetch while an order
//!   is open: http-01 on the HTTP listener ([`routes`]), tls-alpn-01 in
//!   the TLS certificate resolver (`tls/mod.rs`).
//! - `files.rs`: the account key and the certificates in `<data_dir>/acme/`.
//! - `schedule.rs`: when a certificate is due, the backoff after a failure.
//!
//! One background task ([`spawn`]) owns all of it: at start and then at
//! least daily it looks at every host's certificate, orders the ones that
//! are missing, lack a name or are due, and installs what it got in the
//! certificate store, which new handshakes read (established sessions
//! keep the connection they have). A failed order keeps the old
//! certificate and is tried again after a doubling wait.

pub mod challenges;
pub mod files;
mod issue;
pub mod schedule;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};

pub use challenges::Challenges;

use crate::router::Server;
use crate::tls::{CertSource, SourceKind};

/// RFC 8555 §8.3: where the CA fetches an http-01 key authorization.
const HTTP_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/{token}";

/// `GET /.well-known/acme-challenge/{token}` on the HTTP listener: the key
/// authorization of an open order's token, else 404. Served on every
/// `Host` (the validator asks for the name being validated, which may be
/// a service domain that resolves to this machine).
pub(crate) fn routes() -> Router<Arc<Server>> {
    Router::new().route(HTTP_CHALLENGE_PATH, axum::routing::get(http_challenge))
}

async fn http_challenge(State(server): State<Arc<Server>>, Path(token): Path<String>) -> Response {
    match server.tls.acme_challenges().http(&token) {
        Some(key_authorization) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            key_authorization,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Serves the certificates ACME obtained before this start (if their
/// files load), so that a restart does not fall back to self-signed ones
/// until the renewal task has looked. Before the listeners are bound.
pub(crate) fn install_stored(server: &Server) {
    for host in server.config.acme_hosts() {
        let (cert, _) = files::cert_paths(&server.config.data_dir, &host);
        if cert.exists()
            && let Err(e) = install(server, &host)
        {
            tracing::warn!(host, error = %e, "stored ACME certificate not usable; ordering a new one");
        }
    }
}

/// Puts `host`'s stored ACME pair in the certificate store for every name
/// it covers. Blocking file I/O.
fn install(server: &Server, host: &str) -> Result<(), crate::tls::TlsError> {
    let (cert, key) = files::cert_paths(&server.config.data_dir, host);
    let source = CertSource {
        kind: SourceKind::Acme,
        cert,
        key,
    };
    let stored = files::read(&source.cert).ok().flatten();
    let configured: Vec<String> = server
        .tls
        .certificates()
        .status()
        .into_iter()
        .filter(|c| c.source.kind == SourceKind::Configured)
        .map(|c| c.name)
        .collect();
    for name in server.config.certificate_names(host) {
        // A name the operator gave files for since (a reloaded
        // `[[tls.certificates]]`) keeps them.
        if configured.contains(&name) {
            continue;
        }
        // A name the certificate does not cover yet (a service domain
        // added since) keeps what it has until the new order lands.
        if stored
            .as_ref()
            .is_some_and(|c| schedule::covers(c, std::slice::from_ref(&name)))
        {
            server.tls.certificates().install(&name, source.clone())?;
        }
    }
    Ok(())
}

/// Starts the renewal task when `[acme]` is enabled and some host gets
/// its certificate from it.
pub(crate) fn spawn(server: &Arc<Server>) {
    if server.config.acme_hosts().is_empty() {
        return;
    }
    let task = Renewal::new(server.clone());
    server.background.spawn(task.run());
}

/// One host's place in the schedule.
struct HostState {
    host: String,
    names: Vec<String>,
    /// Failed orders in a row.
    failures: u32,
    /// Set after a failure: no order before then.
    retry_at: Option<SystemTime>,
}

struct Renewal {
    server: Arc<Server>,
    hosts: Vec<HostState>,
    account: Option<instant_acme::Account>,
}

impl Renewal {
    fn new(server: Arc<Server>) -> Self {
        let hosts = server
            .config
            .acme_hosts()
            .into_iter()
            .map(|host| HostState {
                names: server.config.certificate_names(&host),
                host,
                failures: 0,
                retry_at: None,
            })
            .collect();
        Renewal {
            server,
            hosts,
            account: None,
        }
    }

    async fn run(mut self) {
        let shutdown = self.server.shutdown.clone();
        loop {
            let next = tokio::select! {
                next = self.round() => next,
                _ = shutdown.cancelled() => return,
            };
            let wait = next
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tracing::debug!(secs = wait.as_secs(), "next ACME certificate check");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Orders what is due; returns when to look again.
    async fn round(&mut self) -> SystemTime {
        let cfg = self.server.config.acme.clone();
        let mut next = SystemTime::now() + schedule::CHECK_INTERVAL;
        for i in 0..self.hosts.len() {
            let now = SystemTime::now();
            let due = self.due(i);
            if due > now {
                next = next.min(due);
                continue;
            }
            let host = self.hosts[i].host.clone();
            match self.renew(i).await {
                Ok(not_after) => {
                    self.server.metrics.acme_order("success");
                    let h = &mut self.hosts[i];
                    h.failures = 0;
                    h.retry_at = None;
                    tracing::info!(
                        host,
                        names = ?h.names,
                        not_after = %waxwing_proto::datetime::format(not_after),
                        "ACME certificate issued and installed"
                    );
                    next = next.min(self.due(i));
                }
                Err(e) => {
                    self.server.metrics.acme_order("failure");
                    // The next attempt starts from the account file again:
                    // a broken connection or a deactivated account is not
                    // kept in memory.
                    self.account = None;
                    let h = &mut self.hosts[i];
                    h.failures += 1;
                    let wait = schedule::backoff(h.failures, cfg.retry_initial, cfg.retry_max);
                    let at = SystemTime::now() + wait;
                    h.retry_at = Some(at);
                    tracing::warn!(
                        host,
                        error = %e,
                        failures = h.failures,
                        retry_in_secs = wait.as_secs(),
                        "ACME order failed; the current certificate stays in use"
                    );
                    next = next.min(at);
                }
            }
        }
        next
    }

    /// When host `i` should next be ordered.
    fn due(&self, i: usize) -> SystemTime {
        let h = &self.hosts[i];
        if let Some(at) = h.retry_at {
            return at;
        }
        let (cert, _) = files::cert_paths(&self.server.config.data_dir, &h.host);
        let stored = match files::read(&cert) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(host = h.host, path = %cert.display(), error = %e, "stored ACME certificate unreadable; ordering a new one");
                None
            }
        };
        schedule::renewal_due(
            stored.as_ref(),
            &h.names,
            self.server.config.acme.renew_before,
        )
    }

    /// Orders, stores and installs host `i`'s certificate; its not-after.
    async fn renew(&mut self, i: usize) -> Result<SystemTime, RenewError> {
        let cfg = &self.server.config.acme;
        let data_dir = self.server.config.data_dir.clone();
        let account = match &self.account {
            Some(a) => a.clone(),
            None => {
                let a = issue::account(cfg, &data_dir).await?;
                self.account = Some(a.clone());
                a
            }
        };
        let h = &self.hosts[i];
        tracing::info!(host = h.host, names = ?h.names, directory = %cfg.directory, "ordering a certificate");
        let issued =
            issue::order(&account, cfg, &h.names, self.server.tls.acme_challenges()).await?;
        let server = self.server.clone();
        let host = h.host.clone();
        tokio::task::spawn_blocking(move || -> Result<SystemTime, RenewError> {
            files::store(&data_dir, &host, &issued.chain_pem, &issued.key_pem)
                .map_err(RenewError::Store)?;
            install(&server, &host)?;
            let (cert, _) = files::cert_paths(&data_dir, &host);
            let stored = files::read(&cert).map_err(RenewError::Store)?;
            Ok(stored.map_or(SystemTime::UNIX_EPOCH, |s| s.not_after))
        })
        .await
        .map_err(|e| RenewError::Store(std::io::Error::other(e.to_string())))?
    }
}

#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error(transparent)]
    Issue(#[from] issue::IssueError),
    #[error("storing the certificate: {0}")]
    Store(std::io::Error),
    #[error("installing the certificate: {0}")]
    Install(#[from] crate::tls::TlsError),
}
