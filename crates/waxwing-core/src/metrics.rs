//! Counters of events an operator must be able to see, kept in memory for
//! the life of the process. There is no endpoint yet: a Prometheus
//! `/metrics` exports [`Metrics`] once it exists. Each counter also has a
//! log line where it is incremented; the counter is for alerting on rates.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic counter (Prometheus `counter`).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The server's counters, one field per metric; reached through
/// `Server::metrics` or `Cx::metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `waxwing_archive_write_failures_total`: messages that could not be
    /// written to a message archive (XEP-0313) and were delivered without
    /// being archived (see SECURITY.md, "Delivery guarantees").
    pub archive_write_failures: Counter,
    /// `waxwing_c2s_stalled_writes_total`: client connections dropped
    /// because one write blocked for `write_timeout_secs`.
    pub c2s_stalled_writes: Counter,
    /// `waxwing_queue_refusals_total`: stanzas a session refused because
    /// its queue was full (or it was closing), then delivered elsewhere,
    /// stored offline or bounced.
    pub queue_refusals: Counter,
}
