//! A counter bumped by every worker thread for nearly every stanza, kept
//! as one cell per thread (up to [`SHARDS`]) and summed when scraped.
//!
//! One shared `AtomicU64` made each increment fight for its cache line:
//! with two workers routing chat, `Metrics::stanza_in` took 1.8 % of the
//! server's CPU for 27 instructions a call. A cell per thread is written
//! by that thread alone, so it stays in its cache; a scrape, seconds
//! apart, pays for reading them all.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Cells per counter. Threads beyond this share cells (still correct, just
/// contended again); the runtime has one worker per core.
const SHARDS: usize = 16;

/// One cell on a cache line of its own (128 bytes: the adjacent-line
/// prefetcher pairs 64-byte lines).
#[derive(Default)]
#[repr(align(128))]
struct Shard(AtomicU64);

/// A Prometheus counter that several threads increment without sharing a
/// cache line; reads and exports the sum of its cells.
#[derive(Clone, Default)]
pub struct ShardedCounter(Arc<[Shard; SHARDS]>);

impl std::fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShardedCounter").field(&self.get()).finish()
    }
}

impl ShardedCounter {
    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn inc_by(&self, n: u64) {
        self.0[this_thread_shard()]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The total, as a plain counter would hold it (wrapping like one).
    pub fn get(&self) -> u64 {
        self.0
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// The calling thread's cell, handed out in turn the first time a thread
/// counts, so the first [`SHARDS`] threads each have their own.
fn this_thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        // A const initialiser and no destructor: the cheapest thread-local
        // access there is; `usize::MAX` means "not assigned yet".
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            s.set(i);
        }
        i
    })
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_what_every_thread_counted() {
        let c = ShardedCounter::default();
        std::thread::scope(|scope| {
            for t in 0..(SHARDS as u64 + 4) {
                let c = c.clone();
                scope.spawn(move || {
                    for _ in 0..1000 {
                        c.inc();
                    }
                    c.inc_by(t);
                });
            }
        });
        let threads = SHARDS as u64 + 4;
        assert_eq!(c.get(), threads * 1000 + (0..threads).sum::<u64>());
    }

    #[test]
    fn a_thread_keeps_its_cell() {
        assert_eq!(this_thread_shard(), this_thread_shard());
        assert!(this_thread_shard() < SHARDS);
    }
}
