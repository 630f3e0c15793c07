//! Group commit for archive appends (shared by SQLite and PostgreSQL).
//!
//! With archiving on, every chat message is two appends (the sender's and
//! the recipient's archive). One autocommit `INSERT` each means one commit
//! (and on SQLite one trip to the connection's thread, WAL work, and a turn
//! at the one write lock) per item. Instead, [`Appends::enqueue`] puts the
//! item in a pending batch; the append that finds no writer running starts
//! one, which takes everything pending (at most [`BATCH_ROWS`] rows), writes
//! it as one multi-row `INSERT`, answers each caller with its own id or
//! error, and repeats until nothing is pending. Appends that arrive while a
//! batch is being written join the next one. At a few messages a second
//! this is one statement per item, as before; under load, one per batch.
//!
//! Each caller still awaits its own item's commit, so a message is archived
//! before it is delivered or acknowledged, as before (SECURITY.md,
//! "Delivery guarantees").
//!
//! The writer is a spawned task, not the first caller itself (unlike the
//! logout batches of `waxwing-modules`' `last.rs`, whose callers do not wait
//! for the write): a caller whose future is dropped (a closed session, a
//! timeout) would otherwise drop a statement half-way through other
//! callers' items, leaving them unanswered and their rows in doubt. A
//! dropped caller here only drops its receiver; its row is still written.
//!
//! Memory: every pending item belongs to a caller awaiting it, so the queue
//! holds at most one item per append in flight.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use sqlx::{Pool, QueryBuilder};
use tokio::sync::oneshot;

use super::{Bounded, Db, db};
use crate::StoreError;

/// Rows per statement: 7 bind parameters each, 1,792 in all, far below
/// SQLite's 32,766 and PostgreSQL's 65,535; and a bounded statement, so one
/// commit never holds SQLite's write lock for long.
pub(super) const BATCH_ROWS: usize = 256;

/// A fresh id colliding with a stored one is astronomically unlikely; a few
/// attempts turn "unlikely" into "never" without looping forever on a bug.
const ID_ATTEMPTS: usize = 4;

/// One item waiting to be written, with the caller's answer channel.
pub(super) struct Queued {
    pub(super) kind: &'static str,
    pub(super) owner: String,
    /// Milliseconds since the Unix epoch.
    pub(super) stamp: i64,
    pub(super) with_bare: String,
    pub(super) with_resource: Option<String>,
    pub(super) stanza: String,
    /// The archive id, or why the item was not stored.
    pub(super) done: oneshot::Sender<Result<String, StoreError>>,
}

#[derive(Default)]
struct Pending {
    items: VecDeque<Queued>,
    /// A writer task is running and will take whatever is added here.
    writing: bool,
}

/// The pending batch of one store.
#[derive(Default, Clone)]
pub(crate) struct Appends(Arc<Mutex<Pending>>);

impl Appends {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`; true when no writer is running and the caller must
    /// start one ([`write_pending`]).
    pub(super) fn enqueue(&self, item: Queued) -> bool {
        let mut pending = self.lock();
        pending.items.push_back(item);
        !std::mem::replace(&mut pending.writing, true)
    }

    /// The next batch, in append order; `None` (and the writer role given
    /// up, under the same lock) when nothing is pending.
    fn next_batch(&self) -> Option<Vec<Queued>> {
        let mut pending = self.lock();
        if pending.items.is_empty() {
            pending.writing = false;
            return None;
        }
        let n = pending.items.len().min(BATCH_ROWS);
        Some(pending.items.drain(..n).collect())
    }
}

/// Gives the writer role up if the writer task ends without emptying the
/// queue (a panic, the runtime shutting down): the items left are answered
/// with an error (their senders dropped) rather than waiting on nobody, and
/// the next append starts a new writer.
struct WriterRole {
    appends: Appends,
    finished: bool,
}

impl Drop for WriterRole {
    fn drop(&mut self) {
        if !self.finished {
            let mut pending = self.appends.lock();
            pending.items.clear();
            pending.writing = false;
        }
    }
}

/// The writer: batches until the queue is empty. `draw` makes fresh ids.
pub(super) async fn write_pending(
    pool: Pool<Db>,
    appends: Appends,
    mut draw: impl FnMut(std::time::SystemTime) -> String + Send + 'static,
) {
    let mut role = WriterRole {
        appends,
        finished: false,
    };
    let mut draw = move || draw(std::time::SystemTime::now());
    loop {
        let Some(batch) = role.appends.next_batch() else {
            role.finished = true;
            return;
        };
        write_batch(&pool, batch, &mut draw).await;
    }
}

/// Writes `batch` in one statement and answers every caller. An error that
/// one row may have caused (a constraint violation, in practice a drawn id
/// that is already taken; a value the server refuses) sends the batch row
/// by row, each row with fresh ids on a collision, so that one row's
/// trouble is only its own caller's. Any other failure (the database
/// unreachable, locked past its timeout) is every caller's: retrying each
/// row would only multiply the wait.
pub(super) async fn write_batch(
    pool: &Pool<Db>,
    batch: Vec<Queued>,
    draw: &mut (dyn FnMut() -> String + Send),
) {
    let ids: Vec<String> = batch.iter().map(|_| draw()).collect();
    let mut qb = QueryBuilder::<Db>::new(
        "INSERT INTO archive_items \
         (owner_kind, owner, id, stamp, with_bare, with_resource, stanza) ",
    );
    qb.push_values(batch.iter().zip(&ids), |mut row, (q, id)| {
        row.push_bind(q.kind)
            .push_bind(q.owner.as_str())
            .push_bind(id.as_str())
            .push_bind(q.stamp)
            .push_bind(q.with_bare.as_str())
            .push_bind(q.with_resource.as_deref())
            .push_bind(q.stanza.as_str());
    });
    // Not kept prepared: the text differs with every batch size, and each
    // connection's statement cache would keep up to 100 of them.
    let result = qb.build().persistent(false).execute(pool).bounded().await;
    match result {
        Ok(_) => {
            for (q, id) in batch.into_iter().zip(ids) {
                // A caller that gave up has dropped its receiver: nothing to tell.
                let _ = q.done.send(Ok(id));
            }
        }
        Err(sqlx::Error::Database(d)) if is_about_rows(d.as_ref()) => {
            tracing::debug!(rows = batch.len(), error = %d.message(), "archive batch refused; writing it row by row");
            for q in batch {
                let result = write_one(pool, &q, draw).await;
                let _ = q.done.send(result);
            }
        }
        Err(e) => {
            let e = db(e);
            for q in batch {
                let _ = q.done.send(Err(e.clone()));
            }
        }
    }
}

/// Whether the server refused the statement for what is in some row rather
/// than for its own state: a constraint, or PostgreSQL's data exceptions
/// (SQLSTATE class 22: a NUL byte in text, a value out of range). SQLite's
/// other errors (busy, I/O, full) are the database's, not a row's.
fn is_about_rows(d: &dyn sqlx::error::DatabaseError) -> bool {
    !matches!(d.kind(), sqlx::error::ErrorKind::Other)
        || d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .is_some_and(|pg| pg.code().starts_with("22"))
}

/// One row, drawing a fresh id on each collision.
async fn write_one(
    pool: &Pool<Db>,
    q: &Queued,
    draw: &mut (dyn FnMut() -> String + Send),
) -> Result<String, StoreError> {
    let mut last = None;
    for _ in 0..ID_ATTEMPTS {
        let id = draw();
        let result = sqlx::query(
            "INSERT INTO archive_items \
             (owner_kind, owner, id, stamp, with_bare, with_resource, stanza) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(q.kind)
        .bind(q.owner.as_str())
        .bind(id.as_str())
        .bind(q.stamp)
        .bind(q.with_bare.as_str())
        .bind(q.with_resource.as_deref())
        .bind(q.stanza.as_str())
        .execute(pool)
        .bounded()
        .await;
        match result {
            Ok(_) => return Ok(id),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                last = Some(sqlx::Error::Database(d));
            }
            Err(e) => return Err(db(e)),
        }
    }
    Err(last.map(db).unwrap_or(StoreError::Backend(
        "could not draw a unique archive id".into(),
    )))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use waxwing_proto::jid::{BareJid, Jid};

    use super::*;
    use crate::archive::{ArchiveOwner, ArchiveQuery, ArchiveStore, NewItem, new_archive_id};

    fn owner() -> ArchiveOwner {
        ArchiveOwner::User(BareJid::parse("juliet@capulet.example").unwrap())
    }

    fn queued(n: usize) -> (Queued, oneshot::Receiver<Result<String, StoreError>>) {
        let (done, rx) = oneshot::channel();
        let q = Queued {
            kind: "user",
            owner: "juliet@capulet.example".into(),
            stamp: 1,
            with_bare: "romeo@montague.example".into(),
            with_resource: Some("orchard".into()),
            stanza: format!("<message>{n}</message>"),
            done,
        };
        (q, rx)
    }

    async fn all_ids(store: &super::super::Store) -> Vec<String> {
        let q = ArchiveQuery {
            max: 1000,
            ..ArchiveQuery::default()
        };
        let page = store.query(&owner(), &q).await.unwrap();
        page.items.into_iter().map(|i| i.id).collect()
    }

    async fn append(store: &super::super::Store, n: usize) -> Result<String, StoreError> {
        let with = Jid::parse("romeo@montague.example").unwrap();
        let stanza = format!("<message>{n}</message>");
        let item = NewItem {
            with: &with,
            stamp: SystemTime::now(),
            stanza: &stanza,
        };
        store.append(&owner(), item).await
    }

    /// A drawn id that is already stored fails the batch's statement; the
    /// batch is then written row by row with fresh ids, every caller gets
    /// its own, and the stored item keeps its id and content.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn colliding_id_falls_back_to_rows_with_fresh_ids() {
        let (store, _keep) = super::super::test_store().await;
        let taken = append(&store, 0).await.unwrap();
        let fresh = |_| new_archive_id(SystemTime::now());
        // Batch ids: a, taken, b (refused). Row by row: c; taken again, then d; e.
        let mut script: VecDeque<String> = [fresh(()), taken.clone(), fresh(())]
            .into_iter()
            .chain([fresh(()), taken.clone()])
            .collect();
        let mut draw = move || script.pop_front().unwrap_or_else(|| fresh(()));
        let (batch, answers): (Vec<_>, Vec<_>) = (1..=3).map(queued).unzip();
        write_batch(&store.pool, batch, &mut draw).await;
        let mut ids = Vec::new();
        for rx in answers {
            ids.push(rx.await.unwrap().unwrap());
        }
        assert!(!ids.contains(&taken), "{ids:?}");
        let mut expected = vec![taken.clone()];
        expected.extend(ids);
        assert_eq!(all_ids(&store).await, expected, "all stored, in order");
        let q = ArchiveQuery {
            ids: vec![taken],
            max: 10,
            ..ArchiveQuery::default()
        };
        let page = store.query(&owner(), &q).await.unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].stanza, "<message>0</message>");
    }

    /// Callers that give up while their item is pending lose nothing of
    /// anybody else's, and the writer goes on serving later appends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_callers_neither_lose_items_nor_wedge_the_writer() {
        let (store, _keep) = super::super::test_store().await;
        let store = Arc::new(store);
        // Each polled once (which queues its item), then dropped.
        for n in 0..20 {
            let _ = tokio::time::timeout(Duration::ZERO, append(&store, n)).await;
        }
        let mut tasks = Vec::new();
        for n in 20..40 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move { append(&store, n).await }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap().unwrap());
        }
        // Rows are written in queue order, so the cancelled ones (queued
        // first) are in by the time the later ones are answered.
        let stored = all_ids(&store).await;
        assert_eq!(stored.len(), 40);
        for id in &ids {
            assert!(stored.contains(id));
        }
        let last = append(&store, 40).await.unwrap();
        assert_eq!(all_ids(&store).await.last(), Some(&last));
    }

    /// More concurrent appends than fit one statement: every caller gets a
    /// distinct id, and each sees its own item as soon as it is answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_beyond_one_batch() {
        let (store, _keep) = super::super::test_store().await;
        let store = Arc::new(store);
        let n = BATCH_ROWS * 2 + 17;
        let mut tasks = Vec::new();
        for i in 0..n {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let id = append(&store, i).await.unwrap();
                let q = ArchiveQuery {
                    ids: vec![id.clone()],
                    max: 1,
                    ..ArchiveQuery::default()
                };
                let page = store.query(&owner(), &q).await.unwrap();
                assert_eq!(page.items.len(), 1, "{id} not readable once answered");
                assert_eq!(page.items[0].stanza, format!("<message>{i}</message>"));
                id
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        let mut stored = all_ids(&store).await;
        assert_eq!(stored.len(), n);
        stored.sort();
        ids.sort();
        ids.dedup();
        assert_eq!(stored, ids);
    }
}
