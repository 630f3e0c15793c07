//! Blocklists, private XML / vCards and last activity (issue 6 stores).

use async_trait::async_trait;
use sqlx::QueryBuilder;
use waxwing_proto::jid::{BareJid, Jid};

use super::{Bounded, Db, Store, db, unsigned};
use crate::StoreError;
use crate::blocklist::{BlocklistStore, parse_item};
use crate::last::{LastActivity, LastActivityStore};
use crate::private_xml::PrivateXmlStore;

#[async_trait]
impl BlocklistStore for Store {
    async fn list(&self, owner: &BareJid) -> Result<Vec<Jid>, StoreError> {
        let mut r = self.reader().await?;
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT jid FROM blocklist WHERE owner = $1 ORDER BY jid")
                .bind(owner.to_string())
                .fetch_all(r.conn())
                .bounded()
                .await
                .map_err(|e| r.error(e))?;
        rows.iter().map(|s| parse_item(s)).collect()
    }

    async fn block(&self, owner: &BareJid, jids: &[Jid]) -> Result<(), StoreError> {
        let mut tx = self.write_tx(&owner.to_string()).await?;
        for j in jids {
            sqlx::query(
                "INSERT INTO blocklist (owner, jid) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(owner.to_string())
            .bind(j.to_string())
            .execute(&mut *tx)
            .bounded()
            .await
            .map_err(db)?;
        }
        tx.commit().bounded().await.map_err(db)
    }

    async fn unblock(&self, owner: &BareJid, jids: &[Jid]) -> Result<(), StoreError> {
        let mut tx = self.write_tx(&owner.to_string()).await?;
        for j in jids {
            sqlx::query("DELETE FROM blocklist WHERE owner = $1 AND jid = $2")
                .bind(owner.to_string())
                .bind(j.to_string())
                .execute(&mut *tx)
                .bounded()
                .await
                .map_err(db)?;
        }
        tx.commit().bounded().await.map_err(db)
    }

    async fn unblock_all(&self, owner: &BareJid) -> Result<Vec<Jid>, StoreError> {
        let mut rows: Vec<String> =
            sqlx::query_scalar("DELETE FROM blocklist WHERE owner = $1 RETURNING jid")
                .bind(owner.to_string())
                .fetch_all(&self.pool)
                .bounded()
                .await
                .map_err(db)?;
        rows.sort();
        rows.iter().map(|s| parse_item(s)).collect()
    }

    async fn remove_user(&self, owner: &BareJid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM blocklist WHERE owner = $1")
            .bind(owner.to_string())
            .execute(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        Ok(())
    }
}

/// One private-XML fragment: owner `$1`, key `$2`.
pub(super) const FRAGMENT_SQL: &str = "SELECT xml FROM private_xml WHERE owner = $1 AND key = $2";

#[async_trait]
impl PrivateXmlStore for Store {
    async fn get(&self, owner: &BareJid, key: &str) -> Result<Option<String>, StoreError> {
        let mut r = self.reader().await?;
        sqlx::query_scalar(FRAGMENT_SQL)
            .bind(owner.to_string())
            .bind(key)
            .fetch_optional(r.conn())
            .bounded()
            .await
            .map_err(|e| r.error(e))
    }

    async fn set(&self, owner: &BareJid, key: &str, xml: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO private_xml (owner, key, xml) VALUES ($1, $2, $3) \
             ON CONFLICT (owner, key) DO UPDATE SET xml = excluded.xml",
        )
        .bind(owner.to_string())
        .bind(key)
        .bind(xml)
        .execute(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn keys(&self, owner: &BareJid) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT key FROM private_xml WHERE owner = $1 ORDER BY key")
            .bind(owner.to_string())
            .fetch_all(&self.pool)
            .bounded()
            .await
            .map_err(db)
    }

    async fn remove_user(&self, owner: &BareJid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM private_xml WHERE owner = $1")
            .bind(owner.to_string())
            .execute(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        Ok(())
    }
}

#[async_trait]
impl LastActivityStore for Store {
    async fn get(&self, user: &BareJid) -> Result<Option<LastActivity>, StoreError> {
        let mut r = self.reader().await?;
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT at, status FROM last_activity WHERE owner = $1")
                .bind(user.to_string())
                .fetch_optional(r.conn())
                .bounded()
                .await
                .map_err(|e| r.error(e))?;
        row.map(|(at, status)| {
            Ok(LastActivity {
                at: unsigned(at, "last activity time")?,
                status,
            })
        })
        .transpose()
    }

    async fn set_many(&self, entries: &[(BareJid, LastActivity)]) -> Result<(), StoreError> {
        // One multi-row upsert per chunk: a single statement and commit for
        // a whole batch of logouts. 3 parameters a row stays far below
        // SQLite's (and PostgreSQL's) limit on bound parameters.
        const ROWS_PER_STATEMENT: usize = 1000;
        // Each account once (the last entry wins): PostgreSQL refuses an
        // upsert that touches one row twice.
        let mut seen = std::collections::HashSet::new();
        let mut rows = Vec::with_capacity(entries.len());
        for (user, last) in entries.iter().rev().filter(|(u, _)| seen.insert(u)) {
            let at = i64::try_from(last.at)
                .map_err(|_| StoreError::Backend("last activity time out of range".into()))?;
            rows.push((user.to_string(), at, last.status.as_str()));
        }
        // In key order, so that two batches (two cluster nodes) lock their
        // common rows in the same order and never deadlock each other.
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Db>::new("INSERT INTO last_activity (owner, at, status) ");
            qb.push_values(chunk, |mut b, (owner, at, status)| {
                b.push_bind(owner).push_bind(at).push_bind(*status);
            });
            qb.push(
                " ON CONFLICT (owner) DO UPDATE SET at = excluded.at, status = excluded.status",
            );
            // Not kept prepared: the text differs with every batch size, and
            // each connection's statement cache would keep up to 100 of them
            // (large ones: a statement of 1,000 rows binds 3,000 values).
            qb.build()
                .persistent(false)
                .execute(&self.pool)
                .bounded()
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    async fn remove_user(&self, user: &BareJid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM last_activity WHERE owner = $1")
            .bind(user.to_string())
            .execute(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        Ok(())
    }
}
