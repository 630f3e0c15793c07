//! Defences that span connections: connections per address, failed
//! authentication throttling, and the per-connection read rate limit.
//!
//! Every table here is bounded: an attacker rotating addresses or account
//! names cannot grow the server's memory without limit.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use waxwing_proto::jid::BareJid;

/// Entries kept per table before stale ones are swept.
const MAX_TRACKED: usize = 100_000;

/// Counts open connections per client address.
#[derive(Default)]
pub struct ConnectionCounter {
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// Held for the life of a connection; releases its slot when dropped.
pub struct ConnectionPermit {
    counter: Arc<ConnectionCounter>,
    ip: IpAddr,
}

impl ConnectionCounter {
    /// A permit, or `None` when `ip` already has `max` connections.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<ConnectionPermit> {
        let mut open = self.open.lock().expect("connection counter lock");
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ConnectionPermit {
            counter: self.clone(),
            ip,
        })
    }

    pub fn open_from(&self, ip: IpAddr) -> u32 {
        self.open
            .lock()
            .expect("connection counter lock")
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.counter.open.lock().expect("connection counter lock");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Failures counted in a fixed window that starts at the first failure.
#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

struct FailureTable<K> {
    entries: Mutex<HashMap<K, Window>>,
    max: u32,
    window: Duration,
}

impl<K: Eq + Hash + Clone> FailureTable<K> {
    fn new(max: u32, window: Duration) -> Self {
        FailureTable {
            entries: Mutex::new(HashMap::new()),
            max,
            window,
        }
    }

    fn blocked(&self, key: &K, now: Instant) -> bool {
        let entries = self.entries.lock().expect("failure table lock");
        entries
            .get(key)
            .is_some_and(|w| now.duration_since(w.started) < self.window && w.failures >= self.max)
    }

    fn record(&self, key: &K, now: Instant) {
        let mut entries = self.entries.lock().expect("failure table lock");
        if entries.len() >= MAX_TRACKED {
            entries.retain(|_, w| now.duration_since(w.started) < self.window);
            if entries.len() >= MAX_TRACKED {
                // Still full of live entries: forget the oldest half rather than grow.
                let mut starts: Vec<Instant> = entries.values().map(|w| w.started).collect();
                starts.sort_unstable();
                let cutoff = starts[starts.len() / 2];
                entries.retain(|_, w| w.started > cutoff);
            }
        }
        let w = entries.entry(key.clone()).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(w.started) >= self.window {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures += 1;
    }

    fn clear(&self, key: &K) {
        self.entries.lock().expect("failure table lock").remove(key);
    }
}

/// Throttles password guessing per client address and per account
/// (RFC 6120 §13.9.5 asks servers to limit failed attempts).
pub struct AuthThrottle {
    per_ip: FailureTable<IpAddr>,
    per_account: FailureTable<BareJid>,
}

impl AuthThrottle {
    pub fn new(max_per_ip: u32, max_per_account: u32, window: Duration) -> Self {
        AuthThrottle {
            per_ip: FailureTable::new(max_per_ip, window),
            per_account: FailureTable::new(max_per_account, window),
        }
    }

    /// True when an attempt from `ip` (for `account`, if known yet) must be refused.
    pub fn blocked(&self, ip: IpAddr, account: Option<&BareJid>) -> bool {
        let now = Instant::now();
        self.per_ip.blocked(&ip, now) || account.is_some_and(|a| self.per_account.blocked(a, now))
    }

    pub fn record_failure(&self, ip: IpAddr, account: Option<&BareJid>) {
        let now = Instant::now();
        self.per_ip.record(&ip, now);
        if let Some(a) = account {
            self.per_account.record(a, now);
        }
    }

    /// A successful login clears the account's failures (not the address's:
    /// one good password must not unlock guessing at other accounts).
    pub fn record_success(&self, account: &BareJid) {
        self.per_account.clear(account);
    }
}

/// Token bucket on bytes read from one connection: sustained `rate` bytes/s
/// with bursts up to `burst`. Reading past it is delayed, not refused, so a
/// fast client slows down instead of losing its session (Prosody does the same).
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64, burst: u64) -> Self {
        Self::full_at(rate, burst, Instant::now())
    }

    /// A full bucket whose clock starts at `now`.
    pub fn full_at(rate: u64, burst: u64, now: Instant) -> Self {
        TokenBucket {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
        }
    }

    /// Takes `n` bytes' worth of tokens and returns how long to pause before
    /// reading again (zero when within the allowance).
    pub fn take(&mut self, n: usize, now: Instant) -> Duration {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Takes `n` tokens if the bucket holds them (refusal, not pacing:
    /// nothing is taken when it does not).
    pub fn try_take(&mut self, n: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_counted_and_released() {
        let c = Arc::new(ConnectionCounter::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = c.try_acquire(ip, 2).unwrap();
        let _b = c.try_acquire(ip, 2).unwrap();
        assert!(c.try_acquire(ip, 2).is_none());
        drop(a);
        assert_eq!(c.open_from(ip), 1);
        assert!(c.try_acquire(ip, 2).is_some());
    }

    #[test]
    fn auth_failures_block_per_ip_and_account() {
        let t = AuthThrottle::new(3, 2, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let alice = BareJid::parse("alice@example.org").unwrap();
        t.record_failure(ip, Some(&alice));
        assert!(!t.blocked(ip, Some(&alice)));
        t.record_failure(other, Some(&alice));
        assert!(
            t.blocked(other, Some(&alice)),
            "account limit spans addresses"
        );
        assert!(!t.blocked(other, None));
        t.record_success(&alice);
        assert!(!t.blocked(ip, Some(&alice)));
        t.record_failure(ip, None);
        t.record_failure(ip, None);
        assert!(
            t.blocked(ip, None),
            "third failure from one address blocks it"
        );
    }

    #[test]
    fn bucket_allows_burst_then_paces() {
        let start = Instant::now();
        let mut b = TokenBucket::new(1000, 2000);
        assert_eq!(b.take(2000, start), Duration::ZERO);
        let wait = b.take(500, start);
        assert_eq!(wait, Duration::from_millis(500));
        // After waiting, the debt is paid.
        assert_eq!(
            b.take(0, start + Duration::from_millis(500)),
            Duration::ZERO
        );
    }
}
