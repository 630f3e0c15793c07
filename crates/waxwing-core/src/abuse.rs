//! Defences that span connections: connections per address, failed
//! authentication throttling per address prefix and per (account, prefix),
//! in-band registration limits, the server-wide budget for partially
//! received stanzas, and the per-connection read rate limit.
//!
//! Every table here is bounded: an attacker rotating addresses or account
//! names cannot grow the server's memory without limit.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;
use waxwing_proto::jid::BareJid;

/// Entries kept per failure table (counters and penalties each).
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

/// How many leading bits of a client address identify "one address" for
/// throttling. An IPv6 host usually gets a whole /64, so an attacker who
/// rotates through its own /64 must still count as one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixLengths {
    pub v4: u8,
    pub v6: u8,
}

impl Default for PrefixLengths {
    fn default() -> Self {
        PrefixLengths { v4: 32, v6: 64 }
    }
}

/// A client address with everything after its prefix zeroed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrPrefix(IpAddr);

impl PrefixLengths {
    /// The prefix `ip` belongs to. An IPv4-mapped IPv6 address (what a
    /// dual-stack `[::]` listener sees for IPv4 clients) counts as IPv4.
    pub fn of(&self, ip: IpAddr) -> AddrPrefix {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let bits = u32::from(a) & mask32(self.v4);
                AddrPrefix(IpAddr::V4(bits.into()))
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a) & mask128(self.v6);
                AddrPrefix(IpAddr::V6(bits.into()))
            }
        }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

/// Failures counted in a fixed window that starts at the first failure.
#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Failures per key, bounded, with penalties kept apart from counters.
///
/// Keys below the limit live in `counting`, in least-recently-used order:
/// when it is full the key nobody has failed with for longest goes, which
/// costs an attacker who rotates keys nothing but forgets no penalty.
/// Keys at the limit move to `penalized` until their window ends. Every
/// penalty lasts one window, so insertion order is expiry order: when that
/// table is full, expired penalties go first, and only a table full of live
/// penalties gives up the one closest to its end.
pub(crate) struct FailureTable<K> {
    tables: Mutex<Tables<K>>,
    max: u32,
    window: Duration,
    capacity: usize,
}

struct Tables<K> {
    counting: LinkedHashMap<K, Window>,
    /// Key → end of its penalty.
    penalized: LinkedHashMap<K, Instant>,
}

impl<K: Eq + Hash + Clone> FailureTable<K> {
    pub(crate) fn new(max: u32, window: Duration, capacity: usize) -> Self {
        FailureTable {
            tables: Mutex::new(Tables {
                counting: LinkedHashMap::new(),
                penalized: LinkedHashMap::new(),
            }),
            max,
            window,
            capacity: capacity.max(1),
        }
    }

    /// Whether `key` is serving a penalty at `now`.
    pub(crate) fn blocked(&self, key: &K, now: Instant) -> bool {
        let mut t = self.tables.lock().expect("failure table lock");
        match t.penalized.get(key) {
            Some(until) if now < *until => true,
            Some(_) => {
                t.penalized.remove(key);
                false
            }
            None => false,
        }
    }

    /// Counts one failure of `key`; the `max`-th in a window starts a
    /// penalty that lasts until the window ends.
    pub(crate) fn record(&self, key: &K, now: Instant) {
        let mut t = self.tables.lock().expect("failure table lock");
        if t.penalized.get(key).is_some_and(|until| now < *until) {
            return; // the window already ends in a penalty
        }
        t.penalized.remove(key);
        let failures = match t.counting.to_back(key) {
            Some(w) => {
                if now.duration_since(w.started) >= self.window {
                    *w = Window {
                        started: now,
                        failures: 0,
                    };
                }
                w.failures += 1;
                *w
            }
            None => {
                while t.counting.len() >= self.capacity {
                    t.counting.pop_front();
                }
                let w = Window {
                    started: now,
                    failures: 1,
                };
                t.counting.insert(key.clone(), w);
                w
            }
        };
        if failures.failures >= self.max {
            t.counting.remove(key);
            while t.penalized.len() >= self.capacity {
                let live = t.penalized.front().is_some_and(|(_, until)| now < *until);
                if live {
                    tracing::warn!(
                        capacity = self.capacity,
                        "penalty table full of live penalties; ending the oldest early"
                    );
                }
                t.penalized.pop_front();
            }
            t.penalized
                .insert(key.clone(), failures.started + self.window);
        }
    }

    fn clear(&self, key: &K) {
        let mut t = self.tables.lock().expect("failure table lock");
        t.counting.remove(key);
        t.penalized.remove(key);
    }
}

/// `[auth]` limits on failed authentication.
#[derive(Clone, Copy, Debug)]
pub struct ThrottleConfig {
    /// Failures from one address prefix, over all accounts.
    pub max_per_prefix: u32,
    /// Failures for one account from one address prefix.
    pub max_per_account: u32,
    pub window: Duration,
    pub prefixes: PrefixLengths,
}

/// Throttles password guessing (RFC 6120 §13.9.5 asks servers to limit
/// failed attempts) per address prefix, and per account *and* address
/// prefix: guessing at an account from one network is slowed to
/// `max_per_account` attempts per window, while its owner, elsewhere, is
/// not locked out by it. A valid FAST token is not a guess and is
/// accepted even from a throttled prefix (see the c2s `authenticate`).
pub struct AuthThrottle {
    prefixes: PrefixLengths,
    per_prefix: FailureTable<AddrPrefix>,
    per_account: FailureTable<(BareJid, AddrPrefix)>,
}

impl AuthThrottle {
    pub fn new(config: ThrottleConfig) -> Self {
        Self::with_capacity(config, MAX_TRACKED)
    }

    fn with_capacity(config: ThrottleConfig, capacity: usize) -> Self {
        AuthThrottle {
            prefixes: config.prefixes,
            per_prefix: FailureTable::new(config.max_per_prefix, config.window, capacity),
            per_account: FailureTable::new(config.max_per_account, config.window, capacity),
        }
    }

    /// True when an attempt from `ip` (for `account`, if known yet) must be refused.
    pub fn blocked(&self, ip: IpAddr, account: Option<&BareJid>) -> bool {
        let now = Instant::now();
        let prefix = self.prefixes.of(ip);
        self.per_prefix.blocked(&prefix, now)
            || account.is_some_and(|a| self.per_account.blocked(&(a.clone(), prefix), now))
    }

    pub fn record_failure(&self, ip: IpAddr, account: Option<&BareJid>) {
        let now = Instant::now();
        let prefix = self.prefixes.of(ip);
        self.per_prefix.record(&prefix, now);
        if let Some(a) = account {
            self.per_account.record(&(a.clone(), prefix), now);
        }
    }

    /// A successful login clears the account's failures from that prefix
    /// (not the prefix's: one good password must not unlock guessing at
    /// other accounts).
    pub fn record_success(&self, ip: IpAddr, account: &BareJid) {
        self.per_account
            .clear(&(account.clone(), self.prefixes.of(ip)));
    }
}

/// In-band registrations (XEP-0077) per address prefix within a window.
/// A slot is reserved before the account is created and given back if
/// creation fails, so that parallel streams cannot all pass the check
/// before any of them is counted.
pub struct RegistrationLimit {
    prefixes: PrefixLengths,
    max: u32,
    window: Duration,
    /// Least recently used first; bounded like the failure tables.
    counts: Mutex<LinkedHashMap<AddrPrefix, Window>>,
}

impl RegistrationLimit {
    pub fn new(max: u32, window: Duration, prefixes: PrefixLengths) -> Self {
        RegistrationLimit {
            prefixes,
            max,
            window,
            counts: Mutex::new(LinkedHashMap::new()),
        }
    }

    /// Takes one registration slot for `ip`; false when its prefix has
    /// used them all in the current window.
    pub fn try_reserve(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let prefix = self.prefixes.of(ip);
        let mut counts = self.counts.lock().expect("registration limit lock");
        if let Some(w) = counts.to_back(&prefix) {
            if now.duration_since(w.started) >= self.window {
                *w = Window {
                    started: now,
                    failures: 0,
                };
            }
            if w.failures >= self.max {
                return false;
            }
            w.failures += 1;
            return true;
        }
        while counts.len() >= MAX_TRACKED {
            counts.pop_front();
        }
        counts.insert(
            prefix,
            Window {
                started: now,
                failures: 1,
            },
        );
        true
    }

    /// Gives back a slot whose registration did not create an account.
    pub fn release(&self, ip: IpAddr) {
        let prefix = self.prefixes.of(ip);
        let mut counts = self.counts.lock().expect("registration limit lock");
        if let Some(w) = counts.get_mut(&prefix) {
            w.failures = w.failures.saturating_sub(1);
        }
    }
}

/// The memory all connections together may hold in partially received
/// stanzas. Each connection charges the bytes of its unfinished element
/// (what [`waxwing_proto::xml::Framer::buffered`] counts, which the framer
/// keeps close to what it holds) and gives them back when the element
/// completes or the connection ends.
pub struct PartialBudget {
    held: AtomicUsize,
    max: usize,
}

impl PartialBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(PartialBudget {
            held: AtomicUsize::new(0),
            max,
        })
    }

    /// Bytes charged by all connections now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// A connection's account, empty.
    pub fn charge(self: &Arc<Self>) -> PartialCharge {
        PartialCharge {
            budget: self.clone(),
            charged: 0,
        }
    }
}

/// One connection's share of the [`PartialBudget`]; released on drop.
pub struct PartialCharge {
    budget: Arc<PartialBudget>,
    charged: usize,
}

impl PartialCharge {
    /// Sets this connection's charge to `bytes`; false (and the charge
    /// unchanged) when growing to it would exceed the budget.
    pub fn set(&mut self, bytes: usize) -> bool {
        if bytes <= self.charged {
            self.budget
                .held
                .fetch_sub(self.charged - bytes, Ordering::Relaxed);
            self.charged = bytes;
            return true;
        }
        let more = bytes - self.charged;
        let max = self.budget.max;
        let grown = self
            .budget
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(more).filter(|&n| n <= max)
            });
        if grown.is_ok() {
            self.charged = bytes;
        }
        grown.is_ok()
    }
}

impl Drop for PartialCharge {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.charged, Ordering::Relaxed);
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

    fn throttle(per_prefix: u32, per_account: u32, capacity: usize) -> AuthThrottle {
        AuthThrottle::with_capacity(
            ThrottleConfig {
                max_per_prefix: per_prefix,
                max_per_account: per_account,
                window: Duration::from_secs(60),
                prefixes: PrefixLengths::default(),
            },
            capacity,
        )
    }

    #[test]
    fn auth_failures_block_per_prefix_and_per_account_and_prefix() {
        let t = throttle(3, 2, MAX_TRACKED);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let alice = BareJid::parse("alice@example.org").unwrap();
        t.record_failure(ip, Some(&alice));
        assert!(!t.blocked(ip, Some(&alice)));
        t.record_failure(ip, Some(&alice));
        assert!(
            t.blocked(ip, Some(&alice)),
            "second failure blocks the pair"
        );
        assert!(
            !t.blocked(other, Some(&alice)),
            "issue 14: guessing from one address does not lock the owner out elsewhere"
        );
        assert!(
            !t.blocked(ip, None),
            "the address itself is below its limit"
        );
        t.record_success(ip, &alice);
        assert!(!t.blocked(ip, Some(&alice)));
        t.record_failure(ip, None);
        assert!(
            t.blocked(ip, None),
            "third failure from one address blocks it"
        );
        assert!(t.blocked(ip, Some(&alice)));
    }

    #[test]
    fn ipv6_is_grouped_by_prefix() {
        let t = throttle(3, 2, MAX_TRACKED);
        let alice = BareJid::parse("alice@example.org").unwrap();
        // An attacker rotating through its /64.
        for ip in ["2001:db8:1:2::1", "2001:db8:1:2:ffff::7"] {
            t.record_failure(ip.parse().unwrap(), Some(&alice));
        }
        assert!(t.blocked("2001:db8:1:2::99".parse().unwrap(), Some(&alice)));
        assert!(!t.blocked("2001:db8:1:3::1".parse().unwrap(), Some(&alice)));
        // IPv4 seen through a dual-stack listener is the IPv4 address.
        let p = PrefixLengths::default();
        assert_eq!(
            p.of("::ffff:192.0.2.1".parse().unwrap()),
            p.of("192.0.2.1".parse().unwrap())
        );
        let wide = PrefixLengths { v4: 24, v6: 48 };
        assert_eq!(
            wide.of("192.0.2.1".parse().unwrap()),
            wide.of("192.0.2.200".parse().unwrap())
        );
        assert_eq!(
            wide.of("2001:db8:1:2::1".parse().unwrap()),
            wide.of("2001:db8:1:ffff::1".parse().unwrap())
        );
        assert_ne!(
            wide.of("2001:db8:1::1".parse().unwrap()),
            wide.of("2001:db8:2::1".parse().unwrap())
        );
    }

    #[test]
    fn a_full_table_evicts_counters_not_live_penalties() {
        let t = throttle(1000, 2, 4);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let victim = BareJid::parse("victim@example.org").unwrap();
        t.record_failure(ip, Some(&victim));
        t.record_failure(ip, Some(&victim));
        assert!(t.blocked(ip, Some(&victim)));
        // An attacker fills the table with fresh names from many addresses.
        for i in 0..100u32 {
            let a = BareJid::parse(&format!("u{i}@example.org")).unwrap();
            let from = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            t.record_failure(from, Some(&a));
        }
        assert!(
            t.blocked(ip, Some(&victim)),
            "issue 14: the live penalty survives eviction"
        );
        // Least recently used goes first: a counter touched again stays.
        let t = throttle(1000, 3, 2);
        let [a, b, c] = ["a", "b", "c"].map(|n| BareJid::parse(&format!("{n}@x.org")).unwrap());
        t.record_failure(ip, Some(&a));
        t.record_failure(ip, Some(&b));
        t.record_failure(ip, Some(&a)); // a is now the most recent
        t.record_failure(ip, Some(&c)); // evicts b
        t.record_failure(ip, Some(&a)); // a's third failure
        assert!(t.blocked(ip, Some(&a)), "a kept its count");
        t.record_failure(ip, Some(&b));
        t.record_failure(ip, Some(&b));
        assert!(!t.blocked(ip, Some(&b)), "b started over");
    }

    #[test]
    fn registrations_are_limited_per_prefix() {
        let l = RegistrationLimit::new(2, Duration::from_secs(60), PrefixLengths::default());
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(l.try_reserve(ip));
        assert!(l.try_reserve("2001:db8::2".parse().unwrap()));
        assert!(!l.try_reserve(ip), "the /64 used its two");
        assert!(l.try_reserve("2001:db8:0:1::1".parse().unwrap()));
        l.release(ip);
        assert!(
            l.try_reserve(ip),
            "a failed registration gave its slot back"
        );
    }

    #[test]
    fn partial_stanzas_share_one_budget() {
        let budget = PartialBudget::new(1000);
        let mut a = budget.charge();
        let mut b = budget.charge();
        assert!(a.set(600));
        assert!(!b.set(500), "over the budget");
        assert!(b.set(400));
        assert_eq!(budget.held(), 1000);
        assert!(a.set(100), "shrinking always works");
        assert!(b.set(900));
        drop(b);
        assert_eq!(budget.held(), 100);
        drop(a);
        assert_eq!(budget.held(), 0);
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
