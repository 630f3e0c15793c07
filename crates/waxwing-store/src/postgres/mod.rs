//! PostgreSQL implementation of every store, on one pooled sqlx connection
//! set.
//!
//! The statements are those of the SQLite backend (`crate::sql` explains
//! how they are shared); this module supplies the pool, the migrations in
//! `migrations/postgres/` and the transactions that give the shared
//! statements SQLite's semantics on a server that runs writers in parallel:
//! a write transaction first takes an advisory lock on what it changes (the
//! account, the room, the node), so two writers of the same thing run one
//! after the other, as SQLite's single write lock makes them, while writers
//! of different things proceed at once.

// The point of `dml/`: the same statements compiled for both backends.
#![allow(clippy::duplicate_mod)]

#[path = "../dml/accounts.rs"]
mod accounts;
#[path = "../dml/archive.rs"]
mod archive;
#[path = "../dml/archive_append.rs"]
mod archive_append;
mod breaker;
#[path = "../dml/im.rs"]
mod im;
#[path = "../dml/invites.rs"]
mod invites;
#[path = "../dml/muc.rs"]
mod muc;
#[path = "../dml/offline.rs"]
mod offline;
#[path = "../dml/pubsub.rs"]
mod pubsub;
#[path = "../dml/reputation.rs"]
mod reputation;
#[path = "../dml/roster.rs"]
mod roster;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Postgres, Transaction};
use waxwing_proto::jid::BareJid;

pub(crate) use crate::sql::{db, jid, unsigned};
use crate::{StoreError, Stores};
pub(crate) use breaker::Bounded;

/// The names the shared statements in `dml/` use.
type Db = Postgres;
type Conn = sqlx::PgConnection;
type DbRow = sqlx::postgres::PgRow;
type Store = PgStore;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a caller waits for a free pooled connection before its store
/// call fails (the client then gets `internal-server-error`, not a hang).
/// Every statement is bounded too, and an unreachable server fails calls at
/// once for a while (`breaker.rs`).
const ACQUIRE_TIMEOUT: Duration = breaker::BOUND;

/// A connection idle for longer is pinged before it is lent out, so that a
/// database restart costs a reconnect rather than one failed call per
/// pooled connection; a busy connection is not pinged (the round trip would
/// double the cost of every statement).
const PING_AFTER_IDLE: Duration = Duration::from_secs(5);

/// The PostgreSQL backend: one pool shared by every store trait.
pub(crate) struct PgStore {
    pub(crate) pool: PgPool,
    /// Archive appends waiting for the next group commit.
    appends: archive_append::Appends,
}

impl PgStore {
    /// Where the archive's batches are written: any pooled connection (the
    /// server keeps the pages, not the connection).
    fn append_pool(&self) -> PgPool {
        self.pool.clone()
    }
}

pub(crate) async fn open(url: &str, max_connections: u32) -> Result<Stores, StoreError> {
    let s = Arc::new(connect(url, max_connections).await?);
    Ok(Stores {
        accounts: s.clone(),
        archive: s.clone(),
        blocklist: s.clone(),
        private_xml: s.clone(),
        last_activity: s.clone(),
        roster: s.clone(),
        offline: s.clone(),
        pubsub: s.clone(),
        reputation: s.clone(),
        invites: s.clone(),
        muc: s,
    })
}

/// Connects (failing now if the server cannot be reached or refuses the
/// credentials) and migrates. Concurrent starts of several nodes are safe:
/// sqlx's migrator holds an advisory lock while it runs.
pub(crate) async fn connect(url: &str, max_connections: u32) -> Result<PgStore, StoreError> {
    // sqlx's URL errors name the problem, not the URL (which may carry a
    // password).
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::Backend(format!("bad PostgreSQL URL: {e}")))?
        .application_name("waxwing");
    let (host, port, database) = (
        options.get_host().to_string(),
        options.get_port(),
        options.get_database().unwrap_or_default().to_string(),
    );
    // One connection first, so that an unreachable server or bad
    // credentials fail the start at once, where the pool would retry until
    // its acquire timeout.
    sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(db)?
        .close()
        .await
        .map_err(db)?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .map_err(db)?;
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| StoreError::Backend(format!("migrating the database failed: {e}")))?;
    tracing::info!(%host, port, %database, max_connections, "PostgreSQL database open, schema up to date");
    Ok(PgStore {
        pool,
        appends: archive_append::Appends::default(),
    })
}

/// What [`PgStore::reader`] lends: the shared statements' interface to it
/// is that of SQLite's reader.
pub(crate) struct Reader(sqlx::pool::PoolConnection<Postgres>);

impl Reader {
    fn conn(&mut self) -> &mut Conn {
        &mut self.0
    }

    /// The pool tests the connection when it comes back, so an error
    /// needs no more than converting.
    fn error(&mut self, e: sqlx::Error) -> StoreError {
        db(e)
    }
}

impl PgStore {
    /// No cache of archiving preferences: other nodes of a cluster may
    /// change them (`prefs_cache.rs`).
    fn prefs_cache(&self) -> Option<&crate::prefs_cache::PrefsCache> {
        None
    }

    /// Starts a write transaction serialized with every other one on the
    /// same `scope` (an account, a room, a node): a transaction-scoped
    /// advisory lock, taken in the same round trip as `BEGIN` and released
    /// by its commit or rollback. Under READ COMMITTED the reads inside then
    /// see everything the previous holder committed, which is what the
    /// shared statements expect (SQLite serializes all writers).
    async fn write_tx(&self, scope: &str) -> Result<Transaction<'static, Postgres>, StoreError> {
        let key = lock_key(scope);
        self.begin(AssertSqlSafe(format!(
            "BEGIN; SELECT pg_advisory_xact_lock({key})"
        )))
        .await
    }

    /// A pooled connection for one read-only statement: the same thing the
    /// pool does when a statement is run on it directly (SQLite gives these
    /// statements connections of their own instead, `sqlite/readers.rs`).
    async fn reader(&self) -> Result<Reader, StoreError> {
        Ok(Reader(self.pool.acquire().bounded().await.map_err(db)?))
    }

    /// `AccountStore::login_reads`: PostgreSQL's extended protocol takes
    /// one statement per query, so a login reads its parts one by one.
    async fn batched_login_reads(
        &self,
        _user: &BareJid,
        _fragment: &str,
    ) -> Result<crate::LoginRead, StoreError> {
        Ok(crate::LoginRead::NotBatched)
    }

    /// Starts a read transaction whose statements all see one snapshot
    /// (READ COMMITTED would give each statement its own, so a count and
    /// the page it describes could disagree).
    async fn read_tx(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.begin("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
    }

    /// Starts a transaction with `statement`, bounded, in a task of its own
    /// so that it runs to its end even when the caller stops waiting (the
    /// bound, a closed session).
    ///
    /// Why: sqlx's PostgreSQL `begin` cancelled while its `BEGIN` is on the
    /// wire queues no rollback (sqlx issue 4393: its rollback guard keys on
    /// a transaction depth raised only once the answer is read), and the
    /// pool's check on release only waits for the server to be ready. The
    /// connection went back to the pool inside an open transaction: the
    /// next borrower's statements ran in it and were never committed (an
    /// archive append lost after a PostgreSQL freeze), and the first error
    /// in it made every later statement on that connection fail with 25P02.
    /// Here the abandoned task gets its `Transaction` when the server
    /// answers and drops it at once, which queues the `ROLLBACK` that the
    /// release check sends before the connection is lent again.
    async fn begin(
        &self,
        statement: impl sqlx::SqlSafeStr + Send + 'static,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        let pool = self.pool.clone();
        async move {
            tokio::spawn(async move { pool.begin_with(statement).await })
                .await
                .unwrap_or_else(|e| {
                    Err(sqlx::Error::Io(std::io::Error::other(format!(
                        "the transaction's task failed: {e}"
                    ))))
                })
        }
        .bounded()
        .await
        .map_err(db)
    }
}

/// The advisory-lock key of a scope: 64-bit FNV-1a of a prefix and the
/// scope. A fixed function (not std's `DefaultHasher`, which may change
/// between Rust releases), so that nodes running different builds during a
/// rolling upgrade still agree; a collision only serializes two unrelated
/// writers.
fn lock_key(scope: &str) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = b"waxwing\0"
        .iter()
        .chain(scope.as_bytes())
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    // The same 64 bits, read as PostgreSQL's signed bigint.
    hash as i64
}

/// A store on a fresh database of this process's PostgreSQL, for the shared
/// statements' unit tests (nothing to keep alive: the cluster is shared).
#[cfg(test)]
pub(crate) async fn test_store() -> (PgStore, Box<dyn std::any::Any + Send>) {
    let cluster = tokio::task::spawn_blocking(waxwing_testsvc::postgres::Cluster::shared)
        .await
        .unwrap();
    let url = cluster.database().await;
    (connect(&url, 4).await.unwrap(), Box::new(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        // Fixed values: a change here would make nodes of two releases
        // disagree on which transactions exclude each other.
        assert_eq!(lock_key(""), lock_key(""));
        assert_ne!(
            lock_key("romeo@example.com"),
            lock_key("juliet@example.com")
        );
        assert_eq!(lock_key("romeo@example.com"), LOCK_ROMEO);
    }

    const LOCK_ROMEO: i64 = -4149640952409099145;

    /// Waits until `n` sessions wait for an advisory lock (an event on the
    /// server, observed from `conn`; there is nothing to subscribe to).
    async fn until_lock_waiters(conn: &mut Conn, n: i64) {
        loop {
            let (waiting,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .fetch_one(&mut *conn)
            .await
            .unwrap();
            if waiting == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A row the server refuses for its content (PostgreSQL's text takes no
    /// NUL byte: SQLSTATE 22021, not a constraint) is its own caller's
    /// error: the batch's other items are stored and their callers answered
    /// with their ids.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_refused_for_its_content_fails_only_its_own_append() {
        use archive_append::{Queued, write_batch};
        use tokio::sync::oneshot;

        let (store, _keep) = test_store().await;
        let mut answers = Vec::new();
        let batch = [
            "<message>1</message>",
            "<message>\0</message>",
            "<message>3</message>",
        ]
        .into_iter()
        .map(|stanza| {
            let (done, rx) = oneshot::channel();
            answers.push(rx);
            Queued {
                kind: "user",
                owner: "juliet@capulet.example".into(),
                stamp: 1,
                with_bare: "romeo@montague.example".into(),
                with_resource: None,
                stanza: stanza.into(),
                done,
            }
        })
        .collect();
        let mut draw = || crate::archive::new_archive_id(std::time::SystemTime::now());
        write_batch(&store.pool, batch, &mut draw).await;
        let mut results = Vec::new();
        for rx in answers {
            results.push(rx.await.unwrap());
        }
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(results[1].is_err(), "{results:?}");
        let stored: Vec<(String,)> =
            sqlx::query_as("SELECT stanza FROM archive_items ORDER BY seq")
                .fetch_all(&store.pool)
                .await
                .unwrap();
        let stored: Vec<_> = stored.into_iter().map(|(s,)| s).collect();
        assert_eq!(stored, ["<message>1</message>", "<message>3</message>"]);
    }

    /// A transaction whose `BEGIN` is on the wire when its caller gives up
    /// (a timeout, a closed session) must not stay open on a pooled
    /// connection. sqlx's PostgreSQL `begin` does not roll such a
    /// transaction back (sqlx issue 4393), so the next borrower's statements
    /// ran inside it: an archive append "succeeded" but was never
    /// committed, and the first error left the connection answering 25P02
    /// to everything. Reproduced here with a one-connection pool and a
    /// `BEGIN` held up by an advisory lock, as a frozen server holds it up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_begin_leaves_no_transaction_on_the_pooled_connection() {
        use std::time::SystemTime;

        use crate::archive::{ArchiveOwner, ArchiveStore, NewItem};
        use waxwing_proto::jid::Jid;

        let cluster = tokio::task::spawn_blocking(waxwing_testsvc::postgres::Cluster::shared)
            .await
            .unwrap();
        let url = cluster.database().await;
        let store = Arc::new(connect(&url, 1).await.unwrap());
        let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
        let scope = "romeo@montague.example";
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(lock_key(scope))
            .execute(&mut other)
            .await
            .unwrap();
        let waiting = {
            let store = store.clone();
            tokio::spawn(async move { store.write_tx(scope).await.map(|_| ()) })
        };
        until_lock_waiters(&mut other, 1).await;
        // The caller gives up while its BEGIN waits on the server.
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(lock_key(scope))
            .execute(&mut other)
            .await
            .unwrap();

        // The pool's one connection serves the next call, which must be
        // committed on its own: visible from another session.
        let owner = ArchiveOwner::User(BareJid::parse("juliet@capulet.example").unwrap());
        let with = Jid::parse("romeo@montague.example").unwrap();
        let item = NewItem {
            with: &with,
            stamp: SystemTime::now(),
            stanza: "<message>after</message>",
        };
        let id = store.append(&owner, item).await.unwrap();
        let (seen,): (i64,) = sqlx::query_as("SELECT count(*) FROM archive_items WHERE id = $1")
            .bind(&id)
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert_eq!(seen, 1, "the append ran in a transaction left open");
        // And nothing of ours sits in a transaction any more.
        let (open,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'waxwing' \
             AND state LIKE 'idle in transaction%'",
        )
        .fetch_one(&mut other)
        .await
        .unwrap();
        assert_eq!(open, 0);
    }
}
