//! Local reputation of remote domains: what federation abuse defences
//! (`waxwing-core`'s `s2s::reputation`) count against each peer domain,
//! and whether an administrator blocked it.
//!
//! The store keeps counters and the last computed score; the decay and the
//! thresholds are the core's business, so the store stays a plain record.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::StoreError;

/// One remote domain's record.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainReputation {
    /// The remote domain (prepared).
    pub domain: String,
    /// XEP-0377 spam reports by our users against JIDs of the domain.
    pub spam_reports: u64,
    /// Stanzas from the domain we had to bounce (no such user …).
    pub bounces: u64,
    /// Dialback keys presented in its name that did not verify. No longer
    /// counted: whoever presents a key only claims the domain, so failures
    /// are charged to the peer's address instead. Kept for older records.
    pub failed_dialbacks: u64,
    /// Times its traffic went over the per-domain stanza rate limit.
    pub rate_limit_hits: u64,
    /// The decaying score as last computed.
    pub score: f64,
    /// When `score` was computed, in seconds since the Unix epoch.
    pub updated_at: i64,
    /// Blocked by an administrator, whatever the score.
    pub blocked: bool,
}

impl DomainReputation {
    /// A clean record.
    pub fn new(domain: impl Into<String>, now: i64) -> Self {
        DomainReputation {
            domain: domain.into(),
            spam_reports: 0,
            bounces: 0,
            failed_dialbacks: 0,
            rate_limit_hits: 0,
            score: 0.0,
            updated_at: now,
            blocked: false,
        }
    }
}

/// Reputation records of remote domains.
#[async_trait]
pub trait DomainReputationStore: Send + Sync {
    /// The domain's record, if it has one.
    async fn get(&self, domain: &str) -> Result<Option<DomainReputation>, StoreError>;

    /// Creates or replaces the domain's record. Durable before returning.
    async fn put(&self, rep: &DomainReputation) -> Result<(), StoreError>;

    /// Every record, sorted by domain.
    async fn list(&self) -> Result<Vec<DomainReputation>, StoreError>;
}

/// In-memory reputation records for tests.
#[derive(Default)]
pub(crate) struct MemoryReputation {
    records: Mutex<BTreeMap<String, DomainReputation>>,
}

impl MemoryReputation {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DomainReputation>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl DomainReputationStore for MemoryReputation {
    async fn get(&self, domain: &str) -> Result<Option<DomainReputation>, StoreError> {
        Ok(self.lock().get(domain).cloned())
    }

    async fn put(&self, rep: &DomainReputation) -> Result<(), StoreError> {
        self.lock().insert(rep.domain.clone(), rep.clone());
        Ok(())
    }

    async fn list(&self) -> Result<Vec<DomainReputation>, StoreError> {
        Ok(self.lock().values().cloned().collect())
    }
}
