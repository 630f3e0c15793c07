//! Reloading a running server (SIGHUP, `waxwing admin reload`): the
//! configuration file read again and validated as fully as at start,
//! certificates re-read, and what can change live applied; what cannot is
//! named in the log and in the answer.
//!
//! Live settings are read through [`Server::live`], one `ArcSwap` load
//! where a connection starts (the c2s task keeps that snapshot for its
//! whole life) or where a rarely used setting is consulted (`Cx::config`),
//! never a lock, and nothing per stanza on the routing path. Which keys
//! are live is `config::reload::LIVE`.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::config::Config;
use crate::hooks::Event;
use crate::router::Server;

/// Checks a configuration beyond its own validation (the binary's module list).
pub type ConfigCheck = Box<dyn Fn(&Config) -> Result<(), String> + Send + Sync>;

/// Sets the log filter to a `log.level` value.
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the binary gives the server so that it can reload itself.
pub struct ReloadHooks {
    /// The configuration file; `None` when the server runs on the built-in
    /// defaults (a reload then re-reads certificates only).
    pub path: Option<PathBuf>,
    /// Checks beyond the configuration's own (the module list: `config
    /// check` runs them too).
    pub check: ConfigCheck,
    /// Sets the log filter (`log.level`); an error is reported as a warning.
    pub set_log_level: LogLevelSetter,
}

/// What a reload did.
#[derive(Debug, Default, Serialize)]
pub struct ReloadReport {
    /// Changed keys now in effect (`limits.max_stanza_bytes`).
    pub applied: Vec<String>,
    /// Changed keys that take effect only after a restart (`listen.c2s`).
    pub needs_restart: Vec<String>,
    /// Names whose certificate changed.
    pub certificates_replaced: Vec<String>,
    /// Names whose new certificate files were refused, and why (the old
    /// certificate is still served).
    pub certificates_refused: Vec<RefusedCertificate>,
    /// Anything applied only in part (`log.level` under `RUST_LOG`).
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RefusedCertificate {
    pub name: String,
    pub error: String,
}

/// Why nothing was reloaded.
#[derive(Debug, thiserror::Error)]
#[error("{0}; still running on the previous configuration")]
pub struct ReloadError(pub String);

impl Server {
    /// The configuration as of the latest reload: live settings must be
    /// read here (restart-only ones keep their start values in it, so
    /// reading those here is right too). One atomic load: take it once per
    /// connection or per use, not per stanza.
    pub fn live(&self) -> Arc<Config> {
        self.live.load_full()
    }

    /// Called once by the binary after start; without it a reload re-reads
    /// certificates only.
    pub fn set_reload_hooks(&self, hooks: ReloadHooks) {
        if self.reload_hooks.set(hooks).is_err() {
            tracing::warn!("reload hooks set twice; the first ones stay");
        }
    }

    /// Reads the configuration again and applies what can change live.
    /// An invalid file changes nothing (certificates included) and is the
    /// error. Reloads run one at a time.
    pub async fn reload(self: &Arc<Self>) -> Result<ReloadReport, ReloadError> {
        let _one = self.reloading.lock().await;
        let result = self.reload_locked().await;
        match &result {
            Ok(r) => {
                tracing::info!(
                    applied = %r.applied.join(", "),
                    certificates = %r.certificates_replaced.join(", "),
                    "configuration reloaded"
                );
                if !r.needs_restart.is_empty() {
                    tracing::warn!(
                        "needs restart: {} (changed in the file, not applied)",
                        r.needs_restart.join(", ")
                    );
                }
                for w in &r.warnings {
                    tracing::warn!("reload: {w}");
                }
            }
            Err(e) => tracing::error!("configuration reload refused: {e}"),
        }
        result
    }

    async fn reload_locked(self: &Arc<Self>) -> Result<ReloadReport, ReloadError> {
        let hooks = self.reload_hooks.get();
        let running = self.live();
        let mut report = ReloadReport::default();
        let next = match hooks.and_then(|h| h.path.as_ref()) {
            Some(path) => {
                let source = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| ReloadError(format!("cannot read {}: {e}", path.display())))?;
                let at =
                    |e: &dyn std::fmt::Display| ReloadError(format!("{}: {e}", path.display()));
                let file = Config::parse(&source).map_err(|e| at(&e))?;
                if let Some(h) = hooks {
                    (h.check)(&file).map_err(|e| at(&e))?;
                }
                let plan = crate::config::reload::plan(&running, &source).map_err(|e| at(&e))?;
                report.applied = plan.applied;
                report.needs_restart = plan.needs_restart;
                Arc::new(plan.config)
            }
            None => running.clone(),
        };

        // Certificates are read again on every reload, changed paths or
        // not: that is what a renewal hook's `systemctl reload` asks for.
        let certs = self.tls.certificates().clone();
        let paths = next.certificates.clone();
        let certs = tokio::task::spawn_blocking(move || certs.reload(&paths))
            .await
            .map_err(|e| ReloadError(format!("reloading certificates: {e}")))?;
        report.certificates_replaced = certs.replaced;
        report.certificates_refused = certs
            .refused
            .into_iter()
            .map(|(name, error)| RefusedCertificate { name, error })
            .collect();

        if next.s2s.blocked_domains != running.s2s.blocked_domains {
            self.s2s
                .defences
                .set_configured_blocks(&next.s2s.blocked_domains);
        }
        if next.log_level != running.log_level
            && let Some(h) = hooks
            && let Err(e) = (h.set_log_level)(&next.log_level)
        {
            report.warnings.push(format!("log.level: {e}"));
        }
        self.live.store(next);
        if !report.applied.is_empty() {
            self.clone()
                .emit(None, Event::ConfigReloaded { previous: running })
                .await;
        }
        Ok(report)
    }
}
