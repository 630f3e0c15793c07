//! Reputation records of remote domains.

use async_trait::async_trait;
use sqlx::Row;

use super::{Bounded, DbRow, Store, db, unsigned};
use crate::StoreError;
use crate::reputation::{DomainReputation, DomainReputationStore};

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn record(row: &DbRow) -> Result<DomainReputation, StoreError> {
    let get = |c: &str| row.try_get::<i64, _>(c).map_err(db);
    Ok(DomainReputation {
        domain: row.try_get("domain").map_err(db)?,
        spam_reports: unsigned(get("spam_reports")?, "spam_reports")?,
        bounces: unsigned(get("bounces")?, "bounces")?,
        failed_dialbacks: unsigned(get("failed_dialbacks")?, "failed_dialbacks")?,
        rate_limit_hits: unsigned(get("rate_limit_hits")?, "rate_limit_hits")?,
        score: row.try_get("score").map_err(db)?,
        updated_at: get("updated_at")?,
        blocked: get("blocked")? != 0,
    })
}

#[async_trait]
impl DomainReputationStore for Store {
    async fn get(&self, domain: &str) -> Result<Option<DomainReputation>, StoreError> {
        let row = sqlx::query(
            "SELECT domain, spam_reports, bounces, failed_dialbacks, rate_limit_hits, score, \
             updated_at, blocked FROM domain_reputation WHERE domain = $1",
        )
        .bind(domain)
        .fetch_optional(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        row.as_ref().map(record).transpose()
    }

    async fn put(&self, r: &DomainReputation) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO domain_reputation (domain, spam_reports, bounces, failed_dialbacks, \
             rate_limit_hits, score, updated_at, blocked) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (domain) DO UPDATE SET spam_reports = excluded.spam_reports, \
             bounces = excluded.bounces, failed_dialbacks = excluded.failed_dialbacks, \
             rate_limit_hits = excluded.rate_limit_hits, score = excluded.score, \
             updated_at = excluded.updated_at, blocked = excluded.blocked",
        )
        .bind(&r.domain)
        .bind(count(r.spam_reports))
        .bind(count(r.bounces))
        .bind(count(r.failed_dialbacks))
        .bind(count(r.rate_limit_hits))
        .bind(r.score)
        .bind(r.updated_at)
        .bind(i64::from(r.blocked))
        .execute(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<DomainReputation>, StoreError> {
        let rows = sqlx::query(
            "SELECT domain, spam_reports, bounces, failed_dialbacks, rate_limit_hits, score, \
             updated_at, blocked FROM domain_reputation ORDER BY domain",
        )
        .fetch_all(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        rows.iter().map(record).collect()
    }
}
