//! SQLite implementation of every store, on one sqlx pool.
//!
//! The statements are shared with PostgreSQL (`crate::sql` explains how):
//! this module supplies the connection, the pool and the transactions.

#[path = "../dml/accounts.rs"]
mod accounts;
#[path = "../dml/archive.rs"]
mod archive;
#[path = "../dml/archive_append.rs"]
mod archive_append;
pub mod backup;
mod direct;
#[path = "../dml/im.rs"]
mod im;
#[path = "../dml/invites.rs"]
mod invites;
mod login;
#[path = "../dml/muc.rs"]
mod muc;
#[path = "../dml/offline.rs"]
mod offline;
#[path = "../dml/pubsub.rs"]
mod pubsub;
mod readers;
#[path = "../dml/reputation.rs"]
mod reputation;
#[path = "../dml/roster.rs"]
mod roster;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

pub(crate) use crate::sql::{db, jid, unsigned};
use crate::{StoreError, Stores};
use readers::{Reader, Readers};

/// `.bounded()` on a statement of the shared `dml/` files is the statement
/// itself here: SQLite is a file in this process, with no server that can
/// stop answering (PostgreSQL's is in `postgres/breaker.rs`).
pub(crate) trait Bounded: Sized {
    fn bounded(self) -> Self {
        self
    }
}

impl<F: std::future::Future> Bounded for F {}

/// The names the shared statements in `dml/` use.
type Db = Sqlite;
type Conn = sqlx::SqliteConnection;
type DbRow = sqlx::sqlite::SqliteRow;
type Store = SqliteStore;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// SQLite takes one writer at a time, so more connections only help
/// concurrent readers (WAL lets them run beside the writer). Four covers a
/// 2-core host without piling up handles.
const MAX_CONNECTIONS: u32 = 4;

/// How long a statement waits for another connection's (or process's)
/// write lock before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Page cache of the archive writer's connection, in KiB (SQLite's
/// `cache_size` takes a negative number as KiB): the archive's table and
/// its indexes are appended at the owners' positions all over the file,
/// and a page not in the cache is a `pread` and a copy. 16 MiB, once per
/// database, against SQLite's default of 2 MiB per connection.
const ARCHIVE_WRITER_CACHE_KIB: i64 = 16 * 1024;

/// The SQLite backend: one pool shared by all the store traits, and the
/// read-only connections of [`SqliteStore::reader`].
pub(crate) struct SqliteStore {
    pub(crate) pool: SqlitePool,
    /// `None` for an in-memory database, which lives in its one pooled
    /// connection (another connection would open another database).
    readers: Option<Readers>,
    /// Read-only connections stepped on the caller's thread, for a cold
    /// login's reads (`direct.rs`); `None` for an in-memory database.
    direct: Option<direct::DirectReaders>,
    /// Archive appends waiting for the next group commit.
    appends: archive_append::Appends,
    /// The one connection that writes the archive's batches
    /// (see [`archive_writer`]); the pool itself in memory.
    archive_writer: SqlitePool,
    /// Archiving preferences read recently (`prefs_cache.rs`).
    prefs: crate::prefs_cache::PrefsCache,
}

/// What a committed write must survive before a call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The server process dying (kill -9, a crash): WAL with
    /// `synchronous=NORMAL`. Commits reach the OS, not necessarily the disk,
    /// so an OS crash or power cut can lose the last few; no fsync per commit.
    #[default]
    ProcessCrash,
    /// Power loss as well: `synchronous=FULL`, one fsync per commit.
    PowerLoss,
}

pub(crate) async fn open(url: &str, durability: Durability) -> Result<Stores, StoreError> {
    let s = Arc::new(connect(url, durability).await?);
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

pub(crate) async fn connect(url: &str, durability: Durability) -> Result<SqliteStore, StoreError> {
    let in_memory = is_memory_url(url);
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Backend(format!("bad SQLite URL: {e}")))?
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT);
    let path = options.get_filename().to_path_buf();
    let readers = (!in_memory).then(|| Readers::new(options.clone()));

    // How a file database's connections open; `None` in memory.
    let file_opts = (!in_memory).then(|| file_options(options.clone(), durability));
    let pool = match &file_opts {
        // An in-memory database lives exactly as long as some connection to
        // it: one connection that never expires keeps it, and serializes
        // everything, which also sidesteps shared-cache table locks.
        None => one_connection().connect_with(options).await,
        Some(file_opts) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir).await.map_err(|e| {
                    StoreError::Backend(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            SqlitePoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                // sqlx pings a connection before handing it out, to find dead
                // network links; an in-process SQLite connection has none, and
                // each ping is a round trip to its thread (the pool still pings
                // once on release, to catch a statement cancelled mid-way).
                .test_before_acquire(false)
                .connect_with(file_opts.clone())
                .await
        }
    }
    .map_err(db)?;

    MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| StoreError::Backend(format!("migrating the database failed: {e}")))?;

    let archive_writer = match file_opts {
        None => pool.clone(),
        Some(options) => archive_writer(options).await?,
    };

    if in_memory {
        tracing::info!("SQLite database in memory: nothing will be kept");
    } else {
        tracing::info!(path = %path.display(), "SQLite database open, schema up to date");
    }
    Ok(SqliteStore {
        pool,
        direct: (!in_memory).then(|| direct::DirectReaders::new(path.clone())),
        readers,
        appends: archive_append::Appends::default(),
        archive_writer,
        prefs: crate::prefs_cache::PrefsCache::default(),
    })
}

/// How every connection to a database file is opened.
fn file_options(options: SqliteConnectOptions, durability: Durability) -> SqliteConnectOptions {
    options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // See `Durability`: NORMAL survives kill -9 (the WAL is in the
        // OS page cache); FULL also survives power loss, at one fsync
        // per commit.
        .synchronous(match durability {
            Durability::ProcessCrash => SqliteSynchronous::Normal,
            Durability::PowerLoss => SqliteSynchronous::Full,
        })
}

/// The archive's group commits go through one connection of their own,
/// not the pool: SQLite drops a connection's whole page cache when another
/// connection wrote since its last transaction, so batches spread over the
/// pool's connections each began cold, re-reading the table's and the
/// indexes' pages from the file (with archiving on, the largest share of a
/// chat message's CPU, issue #21). One writer that keeps its cache between
/// batches reads them once; the rest of the server's writes are rare
/// beside a chat's archive.
async fn archive_writer(options: SqliteConnectOptions) -> Result<SqlitePool, StoreError> {
    one_connection()
        .connect_with(options.pragma("cache_size", (-ARCHIVE_WRITER_CACHE_KIB).to_string()))
        .await
        .map_err(db)
}

/// A pool of exactly one connection, opened at once and never closed for
/// being idle or old (an in-memory database lives in it; the archive
/// writer keeps its page cache in it).
fn one_connection() -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .test_before_acquire(false)
        .idle_timeout(None)
        .max_lifetime(None)
}

impl SqliteStore {
    /// Where the archive's batches are written (see [`archive_writer`]).
    fn append_pool(&self) -> SqlitePool {
        self.archive_writer.clone()
    }
}

/// Whether the database file of `url` exists (an in-memory one does not).
pub(crate) fn exists(url: &str) -> Result<bool, StoreError> {
    if is_memory_url(url) {
        return Ok(false);
    }
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Backend(format!("bad SQLite URL: {e}")))?;
    Ok(options.get_filename().exists())
}

/// The spellings sqlx reads as an in-memory database.
fn is_memory_url(url: &str) -> bool {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    path == ":memory:" || query.split('&').any(|kv| kv == "mode=memory")
}

impl SqliteStore {
    /// The archiving preferences' cache: this process is the database's
    /// only writer (`prefs_cache.rs`).
    fn prefs_cache(&self) -> Option<&crate::prefs_cache::PrefsCache> {
        Some(&self.prefs)
    }

    /// Starts a write transaction that takes the write lock up front.
    ///
    /// A plain (deferred) `BEGIN` that reads first and writes later can fail
    /// with SQLITE_BUSY at the write, without waiting, when another
    /// connection committed in between; `BEGIN IMMEDIATE` waits on the busy
    /// timeout instead. That one lock serializes every write transaction, so
    /// `_scope` (what PostgreSQL serializes on) is not needed here.
    async fn write_tx(&self, _scope: &str) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)
    }

    /// A connection for one read-only statement outside any transaction
    /// (`readers.rs` says why it is not the pool's): `let mut r =
    /// self.reader().await?;` then `.fetch_all(r.conn())` and
    /// `.map_err(|e| r.error(e))`.
    async fn reader(&self) -> Result<Reader<'_>, StoreError> {
        match &self.readers {
            Some(readers) => readers.get(&self.pool).await,
            None => Ok(Reader::pooled(self.pool.acquire().await.map_err(db)?)),
        }
    }

    /// Starts a read transaction: in WAL mode its first read fixes the
    /// snapshot every later read sees.
    async fn read_tx(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool.begin().await.map_err(db)
    }
}

/// A store on a fresh database file for the shared statements' unit
/// tests, and what keeps the file alive.
#[cfg(test)]
pub(crate) async fn test_store() -> (SqliteStore, Box<dyn std::any::Any + Send>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    (
        connect(&url, Durability::default()).await.unwrap(),
        Box::new(dir),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_urls() {
        assert!(is_memory_url("sqlite::memory:"));
        assert!(is_memory_url("sqlite://:memory:"));
        assert!(is_memory_url("sqlite://?mode=memory"));
        assert!(!is_memory_url("sqlite://data/waxwing.db"));
        assert!(!is_memory_url("sqlite://memory.db"));
    }

    #[tokio::test]
    async fn file_database_is_durable_and_strict() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("a/b.db").display());
        let s = connect(&url, Durability::PowerLoss).await.unwrap();
        let mut conn = s.pool.acquire().await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        // 2 = FULL
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(sync, 2);
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(fk, 1);
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(busy, 5000);
    }

    /// A file database with one account row, and its store.
    async fn file_store(dir: &tempfile::TempDir) -> SqliteStore {
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let s = connect(&url, Durability::default()).await.unwrap();
        sqlx::query("INSERT INTO accounts (jid, domain) VALUES ('a@x', 'x')")
            .execute(&s.pool)
            .await
            .unwrap();
        s
    }

    #[tokio::test]
    async fn readers_see_committed_writes_and_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = file_store(&dir).await;
        let mut r = s.reader().await.unwrap();
        assert!(r.is_own(), "a file database lends its own readers");
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
            .fetch_one(r.conn())
            .await
            .unwrap();
        assert_eq!(n, 1);
        // Read-only at the SQLite level, not by convention alone.
        let e = sqlx::query("INSERT INTO accounts (jid, domain) VALUES ('b@x', 'x')")
            .execute(r.conn())
            .await
            .unwrap_err();
        assert!(matches!(e, sqlx::Error::Database(_)), "{e:?}");
        let _ = r.error(e); // the database's own error: the reader stays
        drop(r);
        // A write through the pool, then the same reader sees it.
        sqlx::query("INSERT INTO accounts (jid, domain) VALUES ('c@x', 'x')")
            .execute(&s.pool)
            .await
            .unwrap();
        let mut r = s.reader().await.unwrap();
        assert!(r.is_own());
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
            .fetch_one(r.conn())
            .await
            .unwrap();
        assert_eq!(n, 2);
    }

    #[tokio::test]
    async fn when_every_reader_is_lent_the_pool_answers() {
        let dir = tempfile::tempdir().unwrap();
        let s = file_store(&dir).await;
        let mut lent = Vec::new();
        for _ in 0..readers::READERS {
            let r = s.reader().await.unwrap();
            assert!(r.is_own());
            lent.push(r);
        }
        let mut extra = s.reader().await.unwrap();
        assert!(!extra.is_own());
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
            .fetch_one(extra.conn())
            .await
            .unwrap();
        assert_eq!(n, 1);
        drop(extra);
        drop(lent);
        // Returned readers are lent again; no more are opened.
        let mut again = Vec::new();
        for _ in 0..readers::READERS {
            let r = s.reader().await.unwrap();
            assert!(r.is_own());
            again.push(r);
        }
        assert!(!s.reader().await.unwrap().is_own());
    }

    #[tokio::test]
    async fn a_cancelled_read_leaves_no_transaction_open() {
        use futures_util::StreamExt as _;
        let dir = tempfile::tempdir().unwrap();
        let s = file_store(&dir).await;
        {
            let mut r = s.reader().await.unwrap();
            // Far more rows than sqlx's row channel holds: the statement is
            // still being stepped when its caller goes away.
            let mut rows = sqlx::query_scalar::<_, i64>(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) \
                 SELECT i FROM n",
            )
            .fetch(r.conn());
            assert_eq!(rows.next().await.unwrap().unwrap(), 1);
            // The caller is cancelled here: stream and reader dropped.
        }
        // The reader goes back and is lent again, and a statement on it
        // answers with its own rows, not the old statement's.
        let mut r = s.reader().await.unwrap();
        assert!(r.is_own());
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
            .fetch_one(r.conn())
            .await
            .unwrap();
        assert_eq!(n, 1);
        drop(r);
        // A read transaction left open would pin the WAL: a TRUNCATE
        // checkpoint could not finish (it reports busy = 1).
        sqlx::query("INSERT INTO accounts (jid, domain) VALUES ('b@x', 'x')")
            .execute(&s.pool)
            .await
            .unwrap();
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(busy, 0, "a reader still holds a read transaction");
    }

    #[tokio::test]
    async fn a_memory_database_reads_through_its_one_connection() {
        let s = connect("sqlite::memory:", Durability::default())
            .await
            .unwrap();
        let mut r = s.reader().await.unwrap();
        assert!(!r.is_own());
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
            .fetch_one(r.conn())
            .await
            .unwrap();
        assert_eq!(n, 0);
    }

    /// Group-committed batches vary in size, so their statement text does:
    /// kept prepared, every size would stay in the connection's statement
    /// cache (up to sqlx's 100, each as large as its batch), which showed
    /// as RSS growing from one login wave to the next.
    #[tokio::test]
    async fn batches_of_every_size_leave_no_prepared_statement_behind() {
        use crate::{LastActivity, LastActivityStore};
        use sqlx::Connection;
        use waxwing_proto::jid::BareJid;
        let s = connect("sqlite::memory:", Durability::default())
            .await
            .unwrap();
        let cached = |s: &Store| {
            let pool = s.pool.clone();
            async move { pool.acquire().await.unwrap().cached_statements_size() }
        };
        let before = cached(&s).await;
        for size in 1..=12 {
            let batch: Vec<(BareJid, LastActivity)> = (0..size)
                .map(|i| {
                    let user = BareJid::new(Some(&format!("u{i}")), "example.org").unwrap();
                    let last = LastActivity {
                        at: 1_700_000_000 + size,
                        status: String::new(),
                    };
                    (user, last)
                })
                .collect();
            s.set_many(&batch).await.unwrap();
        }
        let after = cached(&s).await;
        assert_eq!(after, before, "set_many left prepared statements cached");
        // And the rows are there: the last batch wrote u0..u11.
        let last = s
            .get(&BareJid::new(Some("u11"), "example.org").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(last.at, 1_700_000_012);
    }

    #[tokio::test]
    async fn login_reads_are_the_three_reads_in_one() {
        use crate::{
            AccountStore, LoginRead, PrivateXmlStore, RosterItem, RosterStore, StoredSecret,
            Subscription,
        };
        use waxwing_proto::jid::BareJid;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("l.db").display());
        for s in [
            connect(&url, Durability::default()).await.unwrap(),
            connect("sqlite::memory:", Durability::default())
                .await
                .unwrap(),
        ] {
            let alice = BareJid::parse("alice@example.org").unwrap();
            let secret = |mechanism: &str, salt: u8| StoredSecret {
                mechanism: mechanism.into(),
                salt: vec![salt],
                iterations: 4096,
                stored_key: vec![1, 2],
                server_key: vec![3, 4],
            };
            assert_eq!(
                s.login_reads(&alice, "k").await.unwrap(),
                LoginRead::NoAccount
            );
            // An account with secrets but nothing else.
            s.create(
                &alice,
                &[secret("SCRAM-SHA-256", 2), secret("SCRAM-SHA-1", 1)],
            )
            .await
            .unwrap();
            let LoginRead::Account {
                secrets,
                roster,
                fragment,
            } = s.login_reads(&alice, "k").await.unwrap()
            else {
                panic!("no account")
            };
            assert_eq!(Some(secrets), s.secrets(&alice).await.unwrap());
            assert!(roster.is_empty());
            assert_eq!(fragment, None);
            // Roster items with and without groups, and the fragment; another
            // key of private XML is not the one asked for.
            for (contact, groups) in [
                ("zed@example.org", vec![]),
                ("bob@example.org", vec!["b".to_string(), "a".to_string()]),
                ("carol@example.org", vec!["c".to_string()]),
            ] {
                let mut item = RosterItem::new(BareJid::parse(contact).unwrap());
                item.groups = groups;
                item.subscription = Subscription::Both;
                item.name = Some(contact.to_uppercase());
                s.put(&alice, &item).await.unwrap();
            }
            PrivateXmlStore::set(&s, &alice, "k", "<hash/>")
                .await
                .unwrap();
            PrivateXmlStore::set(&s, &alice, "other", "<x/>")
                .await
                .unwrap();
            let LoginRead::Account {
                secrets,
                roster,
                fragment,
            } = s.login_reads(&alice, "k").await.unwrap()
            else {
                panic!("no account")
            };
            assert_eq!(Some(secrets), s.secrets(&alice).await.unwrap());
            assert_eq!(roster, s.items(&alice).await.unwrap());
            assert_eq!(roster.len(), 3);
            assert_eq!(fragment.as_deref(), Some("<hash/>"));
            // An account without secrets (SASL EXTERNAL, anonymous) exists.
            let bob = BareJid::parse("bob@example.org").unwrap();
            s.create(&bob, &[]).await.unwrap();
            assert!(matches!(
                s.login_reads(&bob, "k").await.unwrap(),
                LoginRead::Account { ref secrets, .. } if secrets.is_empty()
            ));
            // The file database answered on its direct connection (one,
            // reused), the in-memory one through sqlx.
            assert_eq!(s.direct.is_some(), s.readers.is_some());
            if let Some(d) = &s.direct {
                assert_eq!(d.open_count(), 1);
            }
        }
    }

    /// When the direct connections cannot answer (here: none can be
    /// opened), sqlx's reader gives the same answer.
    #[tokio::test]
    async fn login_reads_fall_back_to_sqlx() {
        use crate::{AccountStore, LoginRead, StoredSecret};
        use waxwing_proto::jid::BareJid;
        let dir = tempfile::tempdir().unwrap();
        let mut s = file_store(&dir).await;
        s.direct = Some(direct::DirectReaders::new(
            dir.path().join("missing/none.db"),
        ));
        let alice = BareJid::parse("alice@example.org").unwrap();
        let secret = StoredSecret {
            mechanism: "SCRAM-SHA-256".into(),
            salt: vec![7],
            iterations: 4096,
            stored_key: vec![1, 2],
            server_key: vec![3, 4],
        };
        s.create(&alice, std::slice::from_ref(&secret))
            .await
            .unwrap();
        let LoginRead::Account { secrets, .. } = s.login_reads(&alice, "k").await.unwrap() else {
            panic!("no account")
        };
        assert_eq!(secrets, vec![secret]);
        assert_eq!(s.direct.as_ref().unwrap().open_count(), 0);
        let nobody = BareJid::parse("nobody@example.org").unwrap();
        assert_eq!(
            s.login_reads(&nobody, "k").await.unwrap(),
            LoginRead::NoAccount
        );
    }

    #[tokio::test]
    async fn errors_do_not_carry_sql() {
        let s = connect("sqlite::memory:", Durability::default())
            .await
            .unwrap();
        let e = sqlx::query("INSERT INTO accounts (jid, domain) VALUES ($1, NULL)")
            .bind("x@y")
            .execute(&s.pool)
            .await
            .map_err(db)
            .unwrap_err();
        let StoreError::Backend(text) = e else {
            panic!("{e:?}")
        };
        assert!(!text.contains("INSERT"), "{text}");
    }
}
