//! Federation abuse defences: a stanza rate limit per remote domain, the
//! domain block list, and a local reputation record per remote domain.
//!
//! **Rate limit.** Each remote domain has one token bucket for all its
//! incoming streams (`[s2s] stanza_rate` stanzas/s, bursts of
//! `stanza_burst`). A stanza over the limit is dropped and answered with a
//! `policy-violation` stanza error (type `wait`), so a busy but honest
//! server loses only the excess and learns why; a stream that keeps
//! sending after [`MAX_REFUSED_IN_A_ROW`] refusals in a row is closed with
//! the `policy-violation` stream error (the choice: stanza errors for
//! bursts, the stream error only when the peer ignores them).
//!
//! **Reputation.** Spam reports (XEP-0377), bounces, failed dialbacks and
//! rate-limit episodes each add a weight to a score that halves every
//! `[s2s.reputation] half_life_secs`. At `throttle_at` the domain is
//! throttled (each of its stanzas costs [`THROTTLE_COST`] tokens); at
//! `block_at` it is blocked like a domain an administrator blocked.
//!
//! **Block list.** `[s2s] blocked_domains` plus the administrators' blocks
//! (ad-hoc command, persisted in the record). A blocked domain cannot
//! authenticate, its stanzas end the stream with `policy-violation`, and
//! stanzas to it bounce.
//!
//! Every record lives in the store and, for sync checks on the hot path,
//! in memory: all of them are loaded at start ([`Defences::load`]).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use waxwing_store::{DomainReputation, DomainReputationStore, StoreError};

use crate::abuse::TokenBucket;
use crate::config::S2sConfig;

/// Records and buckets kept in memory at most; past it the cleanest
/// records (never blocked ones) are dropped from memory, not from the store.
const MAX_TRACKED: usize = 10_000;
/// Tokens a throttled domain's stanza costs.
pub const THROTTLE_COST: usize = 4;
/// Refused stanzas in a row after which the stream is closed.
pub const MAX_REFUSED_IN_A_ROW: u32 = 50;
/// At most one rate-limit offence per domain is recorded per this interval.
const RATE_HIT_INTERVAL: Duration = Duration::from_secs(60);

/// Something counted against a remote domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offence {
    /// A local user reported one of its JIDs as spam (XEP-0377).
    SpamReport,
    /// One of its stanzas had to be bounced.
    Bounce,
    // A dialback key that fails to verify is not here: whoever presents it
    // only claims the domain, so it is charged to its address
    // (`s2s::limits`), not to the domain (issue 14).
    /// It went over the stanza rate limit.
    RateLimited,
}

impl Offence {
    /// What one offence adds to the score.
    pub fn weight(self) -> f64 {
        match self {
            Offence::SpamReport => 1.0,
            Offence::RateLimited => 0.5,
            Offence::Bounce => 0.1,
        }
    }
}

/// Where a domain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Good,
    /// Past `throttle_at`: a smaller share of the rate limit.
    Throttled,
    /// Past `block_at`, or blocked by configuration or an administrator.
    Blocked,
}

impl Standing {
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Good => "good",
            Standing::Throttled => "throttled",
            Standing::Blocked => "blocked",
        }
    }
}

/// The verdict on one incoming stanza.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Over the rate limit; `record` when this starts a new episode that
    /// should count against the domain's reputation.
    RateLimited {
        record: bool,
    },
    Blocked,
}

/// Thresholds from `[s2s.reputation]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReputationConfig {
    pub throttle_at: f64,
    pub block_at: f64,
    pub half_life: Duration,
}

/// A record as admins see it: score decayed to now, and the standing.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainStatus {
    pub record: DomainReputation,
    pub standing: Standing,
    /// Blocked by `[s2s] blocked_domains`.
    pub configured_block: bool,
}

struct Bucket {
    bucket: TokenBucket,
    last_hit: Option<Instant>,
}

/// The federation abuse state, owned by the `S2sManager`.
pub struct Defences {
    cfg: ReputationConfig,
    rate: u64,
    burst: u64,
    /// `[s2s] blocked_domains`, replaced whole by a reload.
    blocked_domains: arc_swap::ArcSwap<HashSet<String>>,
    records: Mutex<HashMap<String, DomainReputation>>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Defences {
    pub fn new(c: &S2sConfig) -> Self {
        Defences {
            cfg: c.reputation,
            rate: u64::from(c.stanza_rate),
            burst: u64::from(c.stanza_burst),
            blocked_domains: arc_swap::ArcSwap::from_pointee(
                c.blocked_domains.iter().cloned().collect(),
            ),
            records: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, DomainReputation>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the configured block list (a reload); streams from a newly
    /// blocked domain are refused from their next stanza on.
    pub fn set_configured_blocks(&self, domains: &[String]) {
        self.blocked_domains
            .store(std::sync::Arc::new(domains.iter().cloned().collect()));
        tracing::info!(domains = ?domains, "[s2s] blocked_domains reloaded");
    }

    /// Loads the stored records (at start).
    pub async fn load(&self, store: &dyn DomainReputationStore) -> Result<(), StoreError> {
        let all = store.list().await?;
        let mut records = self.records();
        for r in all {
            records.insert(r.domain.clone(), r);
        }
        Self::bound(&mut records, self.cfg);
        Ok(())
    }

    /// Keeps the in-memory table under [`MAX_TRACKED`], forgetting the
    /// lowest scores first and never a blocked record.
    fn bound(records: &mut HashMap<String, DomainReputation>, cfg: ReputationConfig) {
        if records.len() < MAX_TRACKED {
            return;
        }
        let mut scores: Vec<f64> = records.values().map(|r| r.score).collect();
        scores.sort_by(f64::total_cmp);
        let cutoff = scores[scores.len() / 2];
        records.retain(|_, r| r.blocked || r.score > cutoff || r.score >= cfg.throttle_at);
    }

    /// The score `r` has decayed to at `now`.
    fn decayed(&self, r: &DomainReputation, now: i64) -> f64 {
        let elapsed = (now - r.updated_at).max(0) as f64;
        let half_life = self.cfg.half_life.as_secs_f64().max(1.0);
        r.score * 0.5f64.powf(elapsed / half_life)
    }

    fn standing_of(&self, r: Option<&DomainReputation>, domain: &str, now: i64) -> Standing {
        if self.blocked_domains.load().contains(domain) {
            return Standing::Blocked;
        }
        let Some(r) = r else {
            return Standing::Good;
        };
        if r.blocked {
            return Standing::Blocked;
        }
        let score = self.decayed(r, now);
        if score >= self.cfg.block_at {
            Standing::Blocked
        } else if score >= self.cfg.throttle_at {
            Standing::Throttled
        } else {
            Standing::Good
        }
    }

    /// Where `domain` stands at `now` (Unix seconds).
    pub fn standing_at(&self, domain: &str, now: i64) -> Standing {
        let records = self.records();
        self.standing_of(records.get(domain), domain, now)
    }

    pub fn standing(&self, domain: &str) -> Standing {
        self.standing_at(domain, unix_now())
    }

    /// Counts `offence` against `domain`; returns the record to persist.
    pub fn record_at(&self, domain: &str, offence: Offence, now: i64) -> DomainReputation {
        let mut records = self.records();
        Self::bound(&mut records, self.cfg);
        let before = self.standing_of(records.get(domain), domain, now);
        let r = records
            .entry(domain.to_string())
            .or_insert_with(|| DomainReputation::new(domain, now));
        r.score = self.decayed(r, now) + offence.weight();
        r.updated_at = now;
        let n = match offence {
            Offence::SpamReport => &mut r.spam_reports,
            Offence::Bounce => &mut r.bounces,
            Offence::RateLimited => &mut r.rate_limit_hits,
        };
        *n = n.saturating_add(1);
        let r = r.clone();
        let after = self.standing_of(Some(&r), domain, now);
        if after != before {
            tracing::warn!(%domain, score = r.score, standing = after.as_str(), "remote domain's reputation changed");
        }
        r
    }

    /// Sets the administrator's block on `domain`; returns the record to persist.
    pub fn set_blocked_at(&self, domain: &str, blocked: bool, now: i64) -> DomainReputation {
        let mut records = self.records();
        let r = records
            .entry(domain.to_string())
            .or_insert_with(|| DomainReputation::new(domain, now));
        r.score = self.decayed(r, now);
        r.updated_at = now;
        r.blocked = blocked;
        if !blocked {
            // Unblocking is a fresh start: a score past block_at would block again.
            r.score = r.score.min(self.cfg.throttle_at / 2.0);
        }
        r.clone()
    }

    /// Every known domain (records and configured blocks), sorted, with
    /// scores decayed to `now`.
    pub fn report_at(&self, now: i64) -> Vec<DomainStatus> {
        let records = self.records();
        let configured = self.blocked_domains.load_full();
        let mut out: Vec<DomainStatus> = records
            .values()
            .map(|r| {
                let mut record = r.clone();
                record.score = self.decayed(r, now);
                DomainStatus {
                    standing: self.standing_of(Some(r), &r.domain, now),
                    configured_block: configured.contains(&r.domain),
                    record,
                }
            })
            .collect();
        for d in configured.iter() {
            if !records.contains_key(d) {
                out.push(DomainStatus {
                    record: DomainReputation::new(d.clone(), now),
                    standing: Standing::Blocked,
                    configured_block: true,
                });
            }
        }
        out.sort_by(|a, b| a.record.domain.cmp(&b.record.domain));
        out
    }

    /// Decides on one incoming stanza from `domain`.
    pub fn admit_at(&self, domain: &str, now: i64, clock: Instant) -> Admit {
        let cost = match self.standing_at(domain, now) {
            Standing::Blocked => return Admit::Blocked,
            Standing::Throttled => THROTTLE_COST,
            Standing::Good => 1,
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(domain) {
            // Full buckets are refilled ones: forgetting them loses nothing.
            buckets.clear();
        }
        let b = buckets.entry(domain.to_string()).or_insert_with(|| Bucket {
            bucket: TokenBucket::full_at(self.rate, self.burst, clock),
            last_hit: None,
        });
        if b.bucket.try_take(cost, clock) {
            return Admit::Yes;
        }
        let record = b
            .last_hit
            .is_none_or(|t| clock.duration_since(t) >= RATE_HIT_INTERVAL);
        if record {
            b.last_hit = Some(clock);
        }
        Admit::RateLimited { record }
    }

    pub fn admit(&self, domain: &str) -> Admit {
        self.admit_at(domain, unix_now(), Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defences(extra: &str) -> Defences {
        let c = crate::config::Config::parse(&format!(
            "[s2s]\nstanza_rate = 10\nstanza_burst = 20\nblocked_domains = [\"Bad.Example\"]\n{extra}\
             [s2s.reputation]\nthrottle_at = 3.0\nblock_at = 6.0\nhalf_life_secs = 100\n"
        ))
        .unwrap();
        Defences::new(&c.s2s)
    }

    #[test]
    fn reputation_throttles_then_blocks_then_decays() {
        let d = defences("");
        let t = 1_000_000;
        assert_eq!(d.standing_at("spam.example", t), Standing::Good);
        d.record_at("spam.example", Offence::SpamReport, t);
        d.record_at("spam.example", Offence::SpamReport, t);
        assert_eq!(d.standing_at("spam.example", t), Standing::Good);
        let r = d.record_at("spam.example", Offence::SpamReport, t);
        assert_eq!((r.spam_reports, r.failed_dialbacks), (3, 0));
        assert_eq!(d.standing_at("spam.example", t), Standing::Throttled);
        for _ in 0..3 {
            d.record_at("spam.example", Offence::SpamReport, t);
        }
        assert_eq!(d.standing_at("spam.example", t), Standing::Blocked);
        // Score 6 halves every 100 s: 3 after 100 s, 1.5 after 200 s.
        assert_eq!(d.standing_at("spam.example", t + 100), Standing::Throttled);
        assert_eq!(d.standing_at("spam.example", t + 200), Standing::Good);
        // Bounces weigh little.
        for _ in 0..20 {
            d.record_at("bouncy.example", Offence::Bounce, t);
        }
        assert_eq!(d.standing_at("bouncy.example", t), Standing::Good);
        assert_eq!(d.standing_at("other.example", t), Standing::Good);
    }

    #[test]
    fn block_list_config_and_admin() {
        let d = defences("");
        let t = 1_000_000;
        assert_eq!(d.standing_at("bad.example", t), Standing::Blocked);
        assert_eq!(d.admit_at("bad.example", t, Instant::now()), Admit::Blocked);
        let r = d.set_blocked_at("evil.example", true, t);
        assert!(r.blocked);
        assert_eq!(d.standing_at("evil.example", t + 10_000), Standing::Blocked);
        let report = d.report_at(t);
        let domains: Vec<_> = report.iter().map(|s| s.record.domain.as_str()).collect();
        assert_eq!(domains, ["bad.example", "evil.example"]);
        assert!(report[0].configured_block && !report[1].configured_block);
        d.set_blocked_at("evil.example", false, t);
        assert_eq!(d.standing_at("evil.example", t), Standing::Good);
        // Unblocking a domain blocked by its score starts it afresh.
        for _ in 0..6 {
            d.record_at("spam.example", Offence::SpamReport, t);
        }
        assert_eq!(d.standing_at("spam.example", t), Standing::Blocked);
        d.set_blocked_at("spam.example", false, t);
        assert_eq!(d.standing_at("spam.example", t), Standing::Good);
    }

    #[test]
    fn rate_limit_per_domain_counts_one_episode_per_interval() {
        let d = defences("");
        let (t, clock) = (1_000_000, Instant::now());
        for _ in 0..20 {
            assert_eq!(d.admit_at("a.example", t, clock), Admit::Yes);
        }
        assert_eq!(
            d.admit_at("a.example", t, clock),
            Admit::RateLimited { record: true }
        );
        assert_eq!(
            d.admit_at("a.example", t, clock),
            Admit::RateLimited { record: false }
        );
        // Another domain has its own bucket.
        assert_eq!(d.admit_at("b.example", t, clock), Admit::Yes);
        // 10 stanzas/s: after a second, ten more.
        let later = clock + Duration::from_secs(1);
        for _ in 0..10 {
            assert_eq!(d.admit_at("a.example", t, later), Admit::Yes);
        }
        assert!(matches!(
            d.admit_at("a.example", t, later),
            Admit::RateLimited { .. }
        ));
        // A throttled domain gets a quarter of the rate.
        for _ in 0..3 {
            d.record_at("c.example", Offence::SpamReport, t);
        }
        assert_eq!(d.standing_at("c.example", t), Standing::Throttled);
        let admitted = (0..40)
            .filter(|_| d.admit_at("c.example", t, clock) == Admit::Yes)
            .count();
        assert_eq!(admitted, 20 / THROTTLE_COST);
    }

    #[tokio::test]
    async fn records_load_from_the_store() {
        let stores = waxwing_store::memory();
        let d = defences("");
        let r = d.record_at("spam.example", Offence::SpamReport, unix_now());
        stores.reputation.put(&r).await.unwrap();
        let b = d.set_blocked_at("evil.example", true, unix_now());
        stores.reputation.put(&b).await.unwrap();
        let fresh = defences("");
        fresh.load(&*stores.reputation).await.unwrap();
        assert_eq!(fresh.standing("evil.example"), Standing::Blocked);
        let report = fresh.report_at(unix_now());
        assert_eq!(report.len(), 3);
        assert_eq!(report[2].record.spam_reports, 1);
    }
}
