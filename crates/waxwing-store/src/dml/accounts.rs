use async_trait::async_trait;
use waxwing_proto::jid::BareJid;

use super::{Bounded, Conn, Store, db, jid, unsigned};
use crate::accounts::normalize_secrets;
use crate::{AccountStore, LoginRead, StoreError, StoredSecret};

/// The secrets of one account (`$1`). An account without secrets comes
/// back as one row of NULLs; no row at all means no account.
pub(super) const SECRETS_SQL: &str = "SELECT s.mechanism, s.salt, s.iterations, s.stored_key, s.server_key \
     FROM accounts a LEFT JOIN account_secrets s ON s.jid = a.jid \
     WHERE a.jid = $1 ORDER BY s.mechanism";

/// A row of [`SECRETS_SQL`].
pub(super) type SecretRow = (
    Option<String>,
    Option<Vec<u8>>,
    Option<i64>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

/// Decodes the rows of [`SECRETS_SQL`].
pub(super) fn secrets_from_rows(
    rows: Vec<SecretRow>,
) -> Result<Option<Vec<StoredSecret>>, StoreError> {
    if rows.is_empty() {
        return Ok(None);
    }
    rows.into_iter()
        .filter_map(|(m, salt, it, stored, server)| Some((m?, salt?, it?, stored?, server?)))
        .map(|(mechanism, salt, iterations, stored_key, server_key)| {
            Ok(StoredSecret {
                iterations: u32::try_from(iterations).map_err(|_| {
                    StoreError::Corrupt(format!("SCRAM iteration count {iterations}"))
                })?,
                mechanism,
                salt,
                stored_key,
                server_key,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|mut secrets| {
            // Collected in place into the rows' buffer, whose capacity is
            // twice what two secrets need; the account cache keeps this
            // vector for every recently seen account.
            secrets.shrink_to_fit();
            Some(secrets)
        })
}

async fn insert_secrets(
    conn: &mut Conn,
    user: &str,
    secrets: &[StoredSecret],
) -> Result<(), StoreError> {
    for s in normalize_secrets(secrets) {
        sqlx::query(
            "INSERT INTO account_secrets (jid, mechanism, salt, iterations, stored_key, server_key) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(user)
        .bind(&s.mechanism)
        .bind(&s.salt)
        .bind(i64::from(s.iterations))
        .bind(&s.stored_key)
        .bind(&s.server_key)
        .execute(&mut *conn)
        .bounded().await
        .map_err(db)?;
    }
    Ok(())
}

#[async_trait]
impl AccountStore for Store {
    async fn create(&self, user: &BareJid, secrets: &[StoredSecret]) -> Result<(), StoreError> {
        let key = user.to_string();
        let mut tx = self.write_tx(&key).await?;
        let inserted = sqlx::query(
            "INSERT INTO accounts (jid, domain) VALUES ($1, $2) ON CONFLICT (jid) DO NOTHING",
        )
        .bind(&key)
        .bind(user.domain())
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(db)?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::AlreadyExists);
        }
        insert_secrets(&mut tx, &key, secrets).await?;
        tx.commit().bounded().await.map_err(db)
    }

    async fn secrets(&self, user: &BareJid) -> Result<Option<Vec<StoredSecret>>, StoreError> {
        // One statement, so a concurrent set_secrets is seen whole or not at
        // all, and one round trip to the database thread: this runs on
        // every login.
        let mut r = self.reader().await?;
        let rows: Vec<SecretRow> = sqlx::query_as(SECRETS_SQL)
            .bind(user.to_string())
            .fetch_all(r.conn())
            .bounded()
            .await
            .map_err(|e| r.error(e))?;
        secrets_from_rows(rows)
    }

    async fn login_reads(&self, user: &BareJid, fragment: &str) -> Result<LoginRead, StoreError> {
        self.batched_login_reads(user, fragment).await
    }

    async fn set_secrets(
        &self,
        user: &BareJid,
        secrets: &[StoredSecret],
    ) -> Result<(), StoreError> {
        let key = user.to_string();
        let mut tx = self.write_tx(&key).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE jid = $1)")
                .bind(&key)
                .fetch_one(&mut *tx)
                .bounded()
                .await
                .map_err(db)?;
        if !exists {
            return Err(StoreError::NotFound);
        }
        sqlx::query("DELETE FROM account_secrets WHERE jid = $1")
            .bind(&key)
            .execute(&mut *tx)
            .bounded()
            .await
            .map_err(db)?;
        insert_secrets(&mut tx, &key, secrets).await?;
        tx.commit().bounded().await.map_err(db)
    }

    async fn delete(&self, user: &BareJid) -> Result<(), StoreError> {
        let key = user.to_string();
        let mut tx = self.write_tx(&key).await?;
        // Secrets go with the account (ON DELETE CASCADE).
        let deleted = sqlx::query("DELETE FROM accounts WHERE jid = $1")
            .bind(&key)
            .execute(&mut *tx)
            .bounded()
            .await
            .map_err(db)?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        let had_visible: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM roster_items WHERE owner = $1 AND in_roster)",
        )
        .bind(&key)
        .fetch_one(&mut *tx)
        .bounded()
        .await
        .map_err(db)?;
        // Groups go with their items (ON DELETE CASCADE).
        sqlx::query("DELETE FROM roster_items WHERE owner = $1")
            .bind(&key)
            .execute(&mut *tx)
            .bounded()
            .await
            .map_err(db)?;
        if had_visible {
            super::roster::bump_version(&mut tx, &key).await?;
        }
        sqlx::query("DELETE FROM offline_messages WHERE owner = $1")
            .bind(&key)
            .execute(&mut *tx)
            .bounded()
            .await
            .map_err(db)?;
        tx.commit().bounded().await.map_err(db)
    }

    async fn exists(&self, user: &BareJid) -> Result<bool, StoreError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE jid = $1)")
            .bind(user.to_string())
            .fetch_one(&self.pool)
            .bounded()
            .await
            .map_err(db)
    }

    async fn list(&self, domain: Option<&str>) -> Result<Vec<BareJid>, StoreError> {
        let rows: Vec<String> = match domain {
            Some(d) => {
                sqlx::query_scalar("SELECT jid FROM accounts WHERE domain = $1")
                    .bind(d)
                    .fetch_all(&self.pool)
                    .bounded()
                    .await
            }
            None => {
                sqlx::query_scalar("SELECT jid FROM accounts")
                    .fetch_all(&self.pool)
                    .bounded()
                    .await
            }
        }
        .map_err(db)?;
        // Sorted by BareJid's Ord, not by string collation, so that every
        // backend returns the same order.
        let mut jids = rows.iter().map(|s| jid(s)).collect::<Result<Vec<_>, _>>()?;
        jids.sort();
        Ok(jids)
    }

    async fn count(&self, domain: Option<&str>) -> Result<u64, StoreError> {
        let n: i64 = match domain {
            Some(d) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE domain = $1")
                    .bind(d)
                    .fetch_one(&self.pool)
                    .bounded()
                    .await
            }
            None => {
                sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
                    .fetch_one(&self.pool)
                    .bounded()
                    .await
            }
        }
        .map_err(db)?;
        unsigned(n, "account count")
    }
}
