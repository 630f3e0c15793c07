use async_trait::async_trait;
use waxwing_proto::jid::BareJid;

use super::{Bounded, Store, db, jid, unsigned};
use crate::{OfflineMessage, OfflineStore, StoreError};

#[async_trait]
impl OfflineStore for Store {
    async fn push(&self, owner: &BareJid, stanza: &str, quota: u32) -> Result<bool, StoreError> {
        // The count and the insert are atomic: the write transaction is
        // serialized per owner (SQLite's write lock, PostgreSQL's per-key
        // advisory lock; under READ COMMITTED alone two pushes could both
        // see room for one more).
        let owner = owner.to_string();
        let mut tx = self.write_tx(&owner).await?;
        let inserted = sqlx::query(
            "INSERT INTO offline_messages (owner, stanza) \
             SELECT $1, $2 \
             WHERE (SELECT COUNT(*) FROM offline_messages WHERE owner = $1) < $3",
        )
        .bind(&owner)
        .bind(stanza)
        .bind(i64::from(quota))
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(db)?
        .rows_affected();
        tx.commit().bounded().await.map_err(db)?;
        Ok(inserted == 1)
    }

    async fn list_page(
        &self,
        owner: &BareJid,
        after: i64,
        limit: u32,
    ) -> Result<Vec<OfflineMessage>, StoreError> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, stanza FROM offline_messages WHERE owner = $1 AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(owner.to_string())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|(id, stanza)| OfflineMessage { id, stanza })
            .collect())
    }

    async fn remove_up_to(&self, owner: &BareJid, up_to: i64) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM offline_messages WHERE owner = $1 AND id <= $2")
            .bind(owner.to_string())
            .bind(up_to)
            .execute(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        Ok(result.rows_affected())
    }

    async fn count(&self, owner: &BareJid) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM offline_messages WHERE owner = $1")
            .bind(owner.to_string())
            .fetch_one(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        unsigned(n, "offline message count")
    }

    async fn owners(&self) -> Result<Vec<BareJid>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT DISTINCT owner FROM offline_messages")
            .fetch_all(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        rows.iter().map(|r| jid(r)).collect()
    }
}
