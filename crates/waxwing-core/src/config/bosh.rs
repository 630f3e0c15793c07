//! `[bosh]`, validated (ranges are in `check_numbers`).

use std::time::Duration;

use super::raw;

/// BOSH (XEP-0124/0206) on the HTTP listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoshConfig {
    pub enabled: bool,
    /// Sessions at once, server-wide.
    pub max_sessions: usize,
    /// Longest a request is held before an empty answer.
    pub max_wait: Duration,
    /// Longest a client may have no request with us.
    pub inactivity: Duration,
    /// Longest pause a client may ask for (XEP-0124 §12).
    pub max_pause: Duration,
    /// Requests from a loopback address count as encrypted (a local
    /// reverse proxy terminating TLS, or a client on this machine).
    pub loopback_is_secure: bool,
}

impl Default for BoshConfig {
    fn default() -> Self {
        bosh_config(&raw::Bosh::default())
    }
}

pub(super) fn bosh_config(b: &raw::Bosh) -> BoshConfig {
    BoshConfig {
        enabled: b.enabled,
        max_sessions: b.max_sessions,
        max_wait: Duration::from_secs(b.max_wait_secs),
        inactivity: Duration::from_secs(b.inactivity_secs),
        max_pause: Duration::from_secs(b.max_pause_secs),
        loopback_is_secure: b.loopback_is_secure,
    }
}
