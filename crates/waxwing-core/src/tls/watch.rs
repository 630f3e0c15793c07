//! Noticing certificate files that changed on disk (certbot, a
//! configuration manager) without a signal.
//!
//! **Why a periodic check, not inotify (`notify`):** certbot renews by
//! writing new files under `archive/` and re-pointing the symlinks in
//! `live/`; Kubernetes swaps a `..data` symlink; configuration managers
//! rename over the file. A watch on the configured path sees none of these
//! (it watches the old inode), so a correct watcher has to follow every
//! symlink and watch each directory on the way, and still misses network
//! file systems. Two `stat` calls per name once a minute cost nothing, see
//! every one of those cases the same way (the stamp in `store.rs` follows
//! symlinks), and certificates are renewed days before they expire, so a
//! minute's delay does not matter. `[tls] watch_interval_secs` sets it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::CertStore;

/// Checks `certs` every `interval` until `shutdown`.
pub(crate) fn spawn(
    certs: Arc<CertStore>,
    interval: Duration,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    tasks.spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let certs = certs.clone();
            // File I/O and parsing: off the runtime's workers.
            if let Err(e) = tokio::task::spawn_blocking(move || certs.check()).await {
                tracing::error!(error = %e, "certificate check failed");
            }
        }
    });
}
