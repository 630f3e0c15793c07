//! Message archives (XEP-0313) and archiving preferences on SQLite.
//!
//! Queries are built with `QueryBuilder` so that the placeholders follow the
//! backend; the SQL itself stays in the subset PostgreSQL shares. Appends
//! go through the group commit of `archive_append.rs`.

use std::time::SystemTime;

use async_trait::async_trait;
use sqlx::QueryBuilder;
use tokio::sync::oneshot;
use waxwing_proto::jid::{FullJid, Jid};

use super::archive_append::{Queued, write_pending};
use super::{Bounded, Conn, Db, Store, db, jid, unsigned};
use crate::StoreError;
use crate::archive::{
    ArchiveOwner, ArchivePrefs, ArchiveQuery, ArchiveStore, DefaultPolicy, Item, NewItem,
    OwnerKind, Page, from_millis, new_archive_id, to_millis,
};

/// Rows deleted per statement by `purge_before`: each batch is its own
/// short write transaction, so a large purge never holds the write lock
/// long enough to stall message delivery.
const PURGE_BATCH: i64 = 1000;

type Row = (i64, String, i64, String, Option<String>, String);

/// The form filters, with ids resolved to sequence numbers.
struct Filter {
    kind: &'static str,
    owner: String,
    with: Option<(String, Option<String>)>,
    start: Option<i64>,
    end: Option<i64>,
    after_seq: Option<i64>,
    before_seq: Option<i64>,
    ids: Option<Vec<i64>>,
}

impl Filter {
    fn push(&self, qb: &mut QueryBuilder<Db>) {
        qb.push(" WHERE owner_kind = ")
            .push_bind(self.kind)
            .push(" AND owner = ")
            .push_bind(self.owner.clone());
        if let Some((bare, resource)) = &self.with {
            qb.push(" AND with_bare = ").push_bind(bare.clone());
            if let Some(r) = resource {
                qb.push(" AND with_resource = ").push_bind(r.clone());
            }
        }
        if let Some(s) = self.start {
            qb.push(" AND stamp >= ").push_bind(s);
        }
        if let Some(e) = self.end {
            qb.push(" AND stamp <= ").push_bind(e);
        }
        if let Some(a) = self.after_seq {
            qb.push(" AND seq > ").push_bind(a);
        }
        if let Some(b) = self.before_seq {
            qb.push(" AND seq < ").push_bind(b);
        }
        if let Some(ids) = &self.ids {
            qb.push(" AND seq IN (");
            let mut sep = qb.separated(", ");
            for s in ids {
                sep.push_bind(*s);
            }
            qb.push(")");
        }
    }
}

fn row_to_item(row: Row) -> Result<(i64, Item), StoreError> {
    let (seq, id, stamp, with_bare, with_resource, stanza) = row;
    let bare = jid(&with_bare)?;
    let with = match with_resource {
        None => Jid::Bare(bare),
        Some(r) => Jid::Full(
            FullJid::new(bare, &r)
                .map_err(|_| StoreError::Corrupt(format!("stored resource {r:?} is not valid")))?,
        ),
    };
    Ok((
        seq,
        Item {
            id,
            stamp: from_millis(stamp),
            with,
            stanza,
        },
    ))
}

async fn seq_of(conn: &mut Conn, owner: &ArchiveOwner, id: &str) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT seq FROM archive_items WHERE owner_kind = $1 AND owner = $2 AND id = $3",
    )
    .bind(owner.kind().as_str())
    .bind(owner.jid().to_string())
    .bind(id)
    .fetch_optional(&mut *conn)
    .bounded()
    .await
    .map_err(db)?
    .ok_or(StoreError::NotFound)
}

async fn count(conn: &mut Conn, f: &Filter, below: Option<i64>) -> Result<u64, StoreError> {
    let mut qb = QueryBuilder::<Db>::new("SELECT COUNT(*) FROM archive_items");
    f.push(&mut qb);
    if let Some(b) = below {
        qb.push(" AND seq < ").push_bind(b);
    }
    let n: i64 = qb
        .build_query_scalar()
        .fetch_one(&mut *conn)
        .bounded()
        .await
        .map_err(db)?;
    unsigned(n, "archive count")
}

#[async_trait]
impl ArchiveStore for Store {
    async fn append(&self, owner: &ArchiveOwner, item: NewItem<'_>) -> Result<String, StoreError> {
        let (done, result) = oneshot::channel();
        let queued = Queued {
            kind: owner.kind().as_str(),
            owner: owner.jid().to_string(),
            stamp: to_millis(item.stamp),
            with_bare: item.with.bare().to_string(),
            with_resource: item.with.resource().map(str::to_string),
            stanza: item.stanza.to_string(),
            done,
        };
        if self.appends.enqueue(queued) {
            tokio::spawn(write_pending(
                self.append_pool(),
                self.appends.clone(),
                new_archive_id,
            ));
        }
        result.await.unwrap_or_else(|_| {
            Err(StoreError::Backend(
                "the archive writer stopped before this item was written".into(),
            ))
        })
    }

    async fn query(
        &self,
        owner: &ArchiveOwner,
        q: &ArchiveQuery,
    ) -> Result<Page<Item>, StoreError> {
        // One read transaction: the count, the page and the index come from
        // the same snapshot even while messages are being appended.
        let mut tx = self.read_tx().await?;
        let conn = &mut *tx;
        let mut resolve = async |id: &Option<String>| -> Result<Option<i64>, StoreError> {
            match id.as_deref() {
                None | Some("") => Ok(None),
                Some(id) => Ok(Some(seq_of(conn, owner, id).await?)),
            }
        };
        let after_seq = resolve(&q.after_id).await?;
        let before_seq = resolve(&q.before_id).await?;
        let page_after = resolve(&q.after).await?;
        let page_before = resolve(&q.before).await?;
        let ids = if q.ids.is_empty() {
            None
        } else {
            let mut seqs = Vec::with_capacity(q.ids.len());
            for id in &q.ids {
                seqs.push(seq_of(conn, owner, id).await?);
            }
            Some(seqs)
        };
        let f = Filter {
            kind: owner.kind().as_str(),
            owner: owner.jid().to_string(),
            with: q
                .with
                .as_ref()
                .map(|w| (w.bare().to_string(), w.resource().map(str::to_string))),
            start: q.start.map(to_millis),
            end: q.end.map(to_millis),
            after_seq,
            before_seq,
            ids,
        };
        let total = count(conn, &f, None).await?;

        let mut qb = QueryBuilder::<Db>::new(
            "SELECT seq, id, stamp, with_bare, with_resource, stanza FROM archive_items",
        );
        f.push(&mut qb);
        if let Some(a) = page_after {
            qb.push(" AND seq > ").push_bind(a);
        }
        if let Some(b) = page_before {
            qb.push(" AND seq < ").push_bind(b);
        }
        qb.push(if q.backwards() {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq ASC"
        });
        qb.push(" LIMIT ")
            .push_bind(i64::try_from(q.max).unwrap_or(i64::MAX - 1) + 1);
        let rows: Vec<Row> = qb
            .build_query_as()
            .fetch_all(&mut *conn)
            .bounded()
            .await
            .map_err(db)?;
        let complete = rows.len() <= q.max;
        let mut items = rows
            .into_iter()
            .take(q.max)
            .map(row_to_item)
            .collect::<Result<Vec<_>, _>>()?;
        if q.backwards() {
            items.reverse();
        }
        let first_index = match items.first() {
            None => None,
            Some((seq, _)) => Some(count(conn, &f, Some(*seq)).await?),
        };
        drop(tx);
        let mut items: Vec<Item> = items.into_iter().map(|(_, i)| i).collect();
        if q.flip_page {
            items.reverse();
        }
        Ok(Page {
            items,
            count: total,
            first_index,
            complete,
        })
    }

    async fn purge_before(&self, kind: OwnerKind, cutoff: SystemTime) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM archive_items WHERE seq IN \
                 (SELECT seq FROM archive_items WHERE owner_kind = $1 AND stamp < $2 LIMIT $3)",
            )
            .bind(kind.as_str())
            .bind(to_millis(cutoff))
            .bind(PURGE_BATCH)
            .execute(&self.pool)
            .bounded()
            .await
            .map_err(db)?
            .rows_affected();
            total += n;
            if n < PURGE_BATCH as u64 {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    async fn remove(&self, owner: &ArchiveOwner) -> Result<u64, StoreError> {
        let writing = match owner {
            ArchiveOwner::User(user) => self.prefs_cache().map(|c| c.writing(&user.to_string())),
            ArchiveOwner::Room(_) => None,
        };
        let result = self.remove_archive(owner).await;
        if let Some(w) = writing {
            w.ended();
        }
        result
    }

    async fn replace(
        &self,
        owner: &ArchiveOwner,
        id: &str,
        stanza: &str,
    ) -> Result<(), StoreError> {
        let n = sqlx::query(
            "UPDATE archive_items SET stanza = $1 \
             WHERE owner_kind = $2 AND owner = $3 AND id = $4",
        )
        .bind(stanza)
        .bind(owner.kind().as_str())
        .bind(owner.jid().to_string())
        .bind(id)
        .execute(&self.pool)
        .bounded()
        .await
        .map_err(db)?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn prefs(
        &self,
        user: &waxwing_proto::jid::BareJid,
    ) -> Result<Option<ArchivePrefs>, StoreError> {
        let key = user.to_string();
        let cache = self.prefs_cache();
        if let Some(hit) = cache.and_then(|c| c.get(&key)) {
            return Ok(hit);
        }
        let ticket = cache.and_then(|c| c.ticket());
        let prefs = self.read_prefs(&key).await?;
        if let (Some(c), Some(t)) = (cache, ticket) {
            c.fill(key, prefs.clone(), t);
        }
        Ok(prefs)
    }

    async fn set_prefs(
        &self,
        user: &waxwing_proto::jid::BareJid,
        prefs: &ArchivePrefs,
    ) -> Result<(), StoreError> {
        let prefs = prefs.normalized();
        let key = user.to_string();
        let writing = self.prefs_cache().map(|c| c.writing(&key));
        let result = self.write_prefs(&key, &prefs).await;
        if let Some(w) = writing {
            w.ended();
        }
        result
    }
}

impl Store {
    async fn write_prefs(&self, key: &str, prefs: &ArchivePrefs) -> Result<(), StoreError> {
        let mut tx = self.write_tx(key).await?;
        sqlx::query(
            "INSERT INTO archive_prefs (owner, default_policy) VALUES ($1, $2) \
             ON CONFLICT (owner) DO UPDATE SET default_policy = excluded.default_policy",
        )
        .bind(key)
        .bind(prefs.default.as_str())
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(db)?;
        sqlx::query("DELETE FROM archive_prefs_jids WHERE owner = $1")
            .bind(key)
            .execute(&mut *tx)
            .bounded()
            .await
            .map_err(db)?;
        let lists = [("always", &prefs.always), ("never", &prefs.never)];
        for (policy, list) in lists {
            for j in list {
                sqlx::query(
                    "INSERT INTO archive_prefs_jids (owner, jid, policy) VALUES ($1, $2, $3)",
                )
                .bind(key)
                .bind(j.to_string())
                .bind(policy)
                .execute(&mut *tx)
                .bounded()
                .await
                .map_err(db)?;
            }
        }
        tx.commit().bounded().await.map_err(db)
    }
}

impl Store {
    /// `ArchiveStore::remove` with the preferences' cache left aside.
    async fn remove_archive(&self, owner: &ArchiveOwner) -> Result<u64, StoreError> {
        let mut tx = self.write_tx(&owner.jid().to_string()).await?;
        let n = sqlx::query("DELETE FROM archive_items WHERE owner_kind = $1 AND owner = $2")
            .bind(owner.kind().as_str())
            .bind(owner.jid().to_string())
            .execute(&mut *tx)
            .bounded()
            .await
            .map_err(db)?
            .rows_affected();
        if let ArchiveOwner::User(user) = owner {
            // The JID rows go with it (ON DELETE CASCADE).
            sqlx::query("DELETE FROM archive_prefs WHERE owner = $1")
                .bind(user.to_string())
                .execute(&mut *tx)
                .bounded()
                .await
                .map_err(db)?;
        }
        tx.commit().bounded().await.map_err(db)?;
        Ok(n)
    }

    /// `user`'s stored preferences. One statement (one snapshot, so no
    /// transaction), on a reader: a read transaction cost three trips to
    /// the connection's thread on SQLite.
    async fn read_prefs(&self, user: &str) -> Result<Option<ArchivePrefs>, StoreError> {
        let mut r = self.reader().await?;
        let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT p.default_policy, j.jid, j.policy FROM archive_prefs p \
             LEFT JOIN archive_prefs_jids j ON j.owner = p.owner WHERE p.owner = $1",
        )
        .bind(user)
        .fetch_all(r.conn())
        .bounded()
        .await
        .map_err(|e| r.error(e))?;
        let Some((default, _, _)) = rows.first() else {
            return Ok(None);
        };
        let default = DefaultPolicy::parse(default)
            .ok_or_else(|| StoreError::Corrupt(format!("archive default policy {default:?}")))?;
        let mut prefs = ArchivePrefs {
            default,
            always: Vec::new(),
            never: Vec::new(),
        };
        let rows = rows
            .into_iter()
            .filter_map(|(_, j, policy)| Some((j?, policy?)));
        for (j, policy) in rows {
            let j = Jid::parse(&j)
                .map_err(|_| StoreError::Corrupt(format!("stored JID {j:?} is not valid")))?;
            match policy.as_str() {
                "always" => prefs.always.push(j),
                "never" => prefs.never.push(j),
                other => return Err(StoreError::Corrupt(format!("archive policy {other:?}"))),
            }
        }
        // Sorted as Jid sorts, not as the strings do.
        Ok(Some(prefs.normalized()))
    }
}
