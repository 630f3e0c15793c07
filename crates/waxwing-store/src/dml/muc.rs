use std::collections::HashMap;

use async_trait::async_trait;
use waxwing_proto::jid::BareJid;

use super::{Bounded, Conn, Store, db, jid};
use crate::StoreError;
use crate::muc::{Affiliation, MucStore, RoomAffiliation, RoomRecord, StoredRoom};

/// A unique-index violation on the nick column: someone else registered it.
fn nick_taken(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::AlreadyExists,
        _ => db(e),
    }
}

async fn room_exists(conn: &mut Conn, room: &str) -> Result<bool, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM muc_rooms WHERE jid = $1")
        .bind(room)
        .fetch_one(conn)
        .bounded()
        .await
        .map_err(db)?;
    Ok(n > 0)
}

async fn insert_affiliation(
    conn: &mut Conn,
    room: &str,
    item: &RoomAffiliation,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO muc_affiliations (room, jid, affiliation, nick, reason) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (room, jid) DO UPDATE SET affiliation = excluded.affiliation, \
         nick = excluded.nick, reason = excluded.reason",
    )
    .bind(room)
    .bind(item.jid.to_string())
    .bind(item.affiliation.as_str())
    .bind(item.nick.as_deref())
    .bind(item.reason.as_deref())
    .execute(conn)
    .bounded()
    .await
    .map_err(nick_taken)?;
    Ok(())
}

#[async_trait]
impl MucStore for Store {
    async fn replace_room(&self, room: &StoredRoom) -> Result<(), StoreError> {
        let r = &room.room;
        let key = r.jid.to_string();
        let mut tx = self.write_tx(&key).await?;
        sqlx::query(
            "INSERT INTO muc_rooms (jid, domain, config, subject, subject_by) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (jid) DO UPDATE SET config = excluded.config, \
             subject = excluded.subject, subject_by = excluded.subject_by",
        )
        .bind(&key)
        .bind(r.jid.domain())
        .bind(&r.config)
        .bind(&r.subject)
        .bind(r.subject_by.as_deref())
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(db)?;
        sqlx::query("DELETE FROM muc_affiliations WHERE room = $1")
            .bind(&key)
            .execute(&mut *tx)
            .bounded()
            .await
            .map_err(db)?;
        for item in &room.affiliations {
            insert_affiliation(&mut tx, &key, item).await?;
        }
        tx.commit().bounded().await.map_err(db)
    }

    async fn save_room(&self, room: &RoomRecord) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE muc_rooms SET config = $2, subject = $3, subject_by = $4 WHERE jid = $1",
        )
        .bind(room.jid.to_string())
        .bind(&room.config)
        .bind(&room.subject)
        .bind(room.subject_by.as_deref())
        .execute(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn set_affiliation(
        &self,
        room: &BareJid,
        item: &RoomAffiliation,
    ) -> Result<(), StoreError> {
        let key = room.to_string();
        let mut tx = self.write_tx(&key).await?;
        if !room_exists(&mut tx, &key).await? {
            return Err(StoreError::NotFound);
        }
        insert_affiliation(&mut tx, &key, item).await?;
        tx.commit().bounded().await.map_err(db)
    }

    async fn remove_affiliation(&self, room: &BareJid, jid: &BareJid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM muc_affiliations WHERE room = $1 AND jid = $2")
            .bind(room.to_string())
            .bind(jid.to_string())
            .execute(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn rooms(&self, domain: &str) -> Result<Vec<StoredRoom>, StoreError> {
        let mut conn = self.pool.acquire().bounded().await.map_err(db)?;
        let rooms: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT jid, config, subject, subject_by FROM muc_rooms WHERE domain = $1 ORDER BY jid",
        )
        .bind(domain)
        .fetch_all(&mut *conn)
        .bounded()
        .await
        .map_err(db)?;
        let rows: Vec<(String, String, String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT a.room, a.jid, a.affiliation, a.nick, a.reason \
             FROM muc_affiliations a JOIN muc_rooms r ON r.jid = a.room \
             WHERE r.domain = $1 ORDER BY a.room, a.jid",
        )
        .bind(domain)
        .fetch_all(&mut *conn)
        .bounded()
        .await
        .map_err(db)?;
        let mut affs: HashMap<String, Vec<RoomAffiliation>> = HashMap::new();
        for (room, j, affiliation, nick, reason) in rows {
            let affiliation = Affiliation::parse(&affiliation)
                .ok_or_else(|| StoreError::Corrupt(format!("affiliation {affiliation:?}")))?;
            affs.entry(room).or_default().push(RoomAffiliation {
                jid: jid(&j)?,
                affiliation,
                nick,
                reason,
            });
        }
        rooms
            .into_iter()
            .map(|(j, config, subject, subject_by)| {
                Ok(StoredRoom {
                    affiliations: affs.remove(&j).unwrap_or_default(),
                    room: RoomRecord {
                        jid: jid(&j)?,
                        config,
                        subject,
                        subject_by,
                    },
                })
            })
            .collect()
    }

    async fn delete_room(&self, room: &BareJid) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM muc_rooms WHERE jid = $1")
            .bind(room.to_string())
            .execute(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
