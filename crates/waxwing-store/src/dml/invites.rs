//! Invitations (XEP-0401/0379/0445).

use async_trait::async_trait;
use sqlx::Row;
use waxwing_proto::jid::BareJid;

use super::{Bounded, DbRow, Store, db, jid, unsigned};
use crate::StoreError;
use crate::invites::{Invite, InviteKind, InviteStore};

/// The columns in [`record`]'s terms (a macro, so that statements stay literals).
macro_rules! columns {
    () => {
        "id, token_hash, host, kind, creator, username, created_at, expires_at, max_uses, uses"
    };
}

fn uses(n: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(unsigned(n, what)?)
        .map_err(|_| StoreError::Corrupt(format!("{what} is out of range: {n}")))
}

fn record(row: &DbRow) -> Result<Invite, StoreError> {
    let kind: String = row.try_get("kind").map_err(db)?;
    let creator: Option<String> = row.try_get("creator").map_err(db)?;
    Ok(Invite {
        id: row.try_get("id").map_err(db)?,
        token_hash: row.try_get("token_hash").map_err(db)?,
        host: row.try_get("host").map_err(db)?,
        kind: InviteKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown invitation kind {kind:?}")))?,
        creator: creator.as_deref().map(jid).transpose()?,
        username: row.try_get("username").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        expires_at: row.try_get("expires_at").map_err(db)?,
        max_uses: uses(row.try_get("max_uses").map_err(db)?, "max_uses")?,
        uses: uses(row.try_get("uses").map_err(db)?, "uses")?,
    })
}

#[async_trait]
impl InviteStore for Store {
    async fn create(&self, i: &Invite) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO invites (id, token_hash, host, kind, creator, username, created_at, \
             expires_at, max_uses, uses) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&i.id)
        .bind(&i.token_hash)
        .bind(&i.host)
        .bind(i.kind.as_str())
        .bind(i.creator.as_ref().map(ToString::to_string))
        .bind(&i.username)
        .bind(i.created_at)
        .bind(i.expires_at)
        .bind(i64::from(i.max_uses))
        .bind(i64::from(i.uses))
        .execute(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists);
        }
        Ok(())
    }

    async fn by_token(&self, token_hash: &[u8]) -> Result<Option<Invite>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM invites WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        row.as_ref().map(record).transpose()
    }

    async fn claim(&self, token_hash: &[u8], now: i64) -> Result<Option<Invite>, StoreError> {
        // One statement: the check and the count cannot be split by a
        // concurrent claim on either backend.
        let row = sqlx::query(concat!(
            "UPDATE invites SET uses = uses + 1 \
             WHERE token_hash = $1 AND uses < max_uses AND expires_at > $2 RETURNING ",
            columns!()
        ))
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        row.as_ref().map(record).transpose()
    }

    async fn release(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE invites SET uses = uses - 1 WHERE id = $1 AND uses > 0")
            .bind(id)
            .execute(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn revoke(&self, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM invites WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn list(
        &self,
        host: Option<&str>,
        creator: Option<&BareJid>,
    ) -> Result<Vec<Invite>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM invites WHERE ($1 IS NULL OR host = $1) AND ($2 IS NULL OR creator = $2) \
             ORDER BY created_at, id"
        ))
        .bind(host)
        .bind(creator.map(ToString::to_string))
        .fetch_all(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        rows.iter().map(record).collect()
    }

    async fn count_pending(&self, creator: &BareJid, now: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM invites \
             WHERE creator = $1 AND uses < max_uses AND expires_at > $2",
        )
        .bind(creator.to_string())
        .bind(now)
        .fetch_one(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        unsigned(n, "count")
    }

    async fn username_reserved(
        &self,
        host: &str,
        username: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM invites \
             WHERE host = $1 AND username = $2 AND uses < max_uses AND expires_at > $3",
        )
        .bind(host)
        .bind(username)
        .bind(now)
        .fetch_one(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        Ok(n > 0)
    }

    async fn purge_expired(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM invites WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn remove_creator(&self, creator: &BareJid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM invites WHERE creator = $1")
            .bind(creator.to_string())
            .execute(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        Ok(())
    }
}
