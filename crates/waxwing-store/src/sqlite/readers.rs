//! Connections of the store's own for single read-only statements, kept
//! out of sqlx's pool because of what the pool does on every release.
//!
//! sqlx runs each SQLite connection on a thread of its own: a statement is
//! a message to that thread and an answer back. A connection handed out by
//! the pool also goes back through `return_to_pool`, which spawns a task and
//! pings the connection (a second round trip to its thread) before anyone
//! may use it again, unconditionally: it cannot tell whether a cancelled
//! caller left a transaction half-done. The hot reads (a login's secrets,
//! roster and avatar hash; a presence's roster row) are single statements,
//! so half of their thread hops were that ping.
//!
//! A reader connection is opened read-only (`SQLITE_OPEN_READONLY`) and is
//! only ever given one statement at a time outside any transaction
//! ([`Reader::conn`] is used for exactly one `fetch_*` call), which is why
//! it needs no ping:
//! - it can hold no write lock and start no transaction that outlives the
//!   statement: SQLite's implicit read transaction of a lone `SELECT` ends
//!   when the statement runs to completion or is reset;
//! - a caller cancelled mid-statement drops the receiving end of the rows;
//!   the connection's thread then stops stepping and resets the statement
//!   (sqlx's `ExecuteIter` resets on drop), ending that read transaction,
//!   before it takes the next command;
//! - commands on one connection run in the order sent and each answers on
//!   its own channel, so the next holder never sees an earlier holder's rows.
//!
//! When every reader is busy the statement goes to the pool as before (so
//! readers never add waiting); a reader whose thread died (an error other
//! than the database's own) is dropped, and a new one is opened by the next
//! call that finds none free.

use std::sync::Mutex;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePool};
use sqlx::{Connection, Sqlite};

use super::db;
use crate::StoreError;

/// Readers per database: each is one thread; two serve a 2-core host, and
/// the pool answers beyond them.
pub(crate) const READERS: usize = 2;

/// The read-only connections and how many exist (idle or lent).
pub(crate) struct Readers {
    options: SqliteConnectOptions,
    state: Mutex<State>,
}

struct State {
    idle: Vec<SqliteConnection>,
    /// Connections open or being opened, lent ones included.
    open: usize,
}

impl Readers {
    /// `options`: the database's connect options (made read-only here).
    pub(crate) fn new(options: SqliteConnectOptions) -> Self {
        Readers {
            options: options.read_only(true).create_if_missing(false),
            state: Mutex::new(State {
                idle: Vec::with_capacity(READERS),
                open: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Only whole pushes, pops and counter steps happen under the lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle reader, a new one if fewer than [`READERS`] exist, or the
    /// pool's connection when all are lent.
    pub(crate) async fn get<'a>(&'a self, pool: &SqlitePool) -> Result<Reader<'a>, StoreError> {
        let opening = {
            let mut s = self.lock();
            if let Some(conn) = s.idle.pop() {
                return Ok(Reader::own(self, conn));
            }
            if s.open < READERS {
                s.open += 1;
                true
            } else {
                false
            }
        };
        if opening {
            // Counted as open before the await: a cancelled open gives
            // its place back when `slot` drops.
            let mut slot = Slot(Some(self));
            match SqliteConnection::connect_with(&self.options).await {
                Ok(conn) => {
                    slot.0 = None; // the place is the new reader's now
                    return Ok(Reader::own(self, conn));
                }
                Err(e) => {
                    drop(slot);
                    tracing::warn!(error = %e, "cannot open a read-only SQLite connection; reading through the pool");
                }
            }
        }
        Ok(Reader::pooled(pool.acquire().await.map_err(db)?))
    }

    fn put_back(&self, conn: SqliteConnection) {
        self.lock().idle.push(conn);
    }

    fn forget_one(&self) {
        let mut s = self.lock();
        s.open = s.open.saturating_sub(1);
    }
}

/// A place counted in `open` for a connection not yet opened.
struct Slot<'a>(Option<&'a Readers>);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.forget_one();
        }
    }
}

/// One connection lent for one read-only statement.
pub(crate) struct Reader<'a> {
    conn: Conn<'a>,
}

enum Conn<'a> {
    /// A reader; `None` once found broken (it is then closed, not returned).
    Own {
        home: &'a Readers,
        conn: Option<SqliteConnection>,
    },
    Pooled(sqlx::pool::PoolConnection<Sqlite>),
}

impl<'a> Reader<'a> {
    /// The pool's connection, for when no reader can be had.
    pub(crate) fn pooled(conn: sqlx::pool::PoolConnection<Sqlite>) -> Self {
        Reader {
            conn: Conn::Pooled(conn),
        }
    }

    fn own(home: &'a Readers, conn: SqliteConnection) -> Self {
        Reader {
            conn: Conn::Own {
                home,
                conn: Some(conn),
            },
        }
    }

    /// Whether this is one of the store's readers (not the pool's).
    #[cfg(test)]
    pub(crate) fn is_own(&self) -> bool {
        matches!(self.conn, Conn::Own { .. })
    }

    /// The connection, for one `fetch_*` or `execute` of a `SELECT`.
    pub(crate) fn conn(&mut self) -> &mut SqliteConnection {
        match &mut self.conn {
            Conn::Own { conn, .. } => conn.as_mut().expect("a broken reader is not lent again"),
            Conn::Pooled(c) => c,
        }
    }

    /// Converts the statement's error, retiring a reader whose thread or
    /// channel failed (the database's own errors leave it usable).
    pub(crate) fn error(&mut self, e: sqlx::Error) -> StoreError {
        if let Conn::Own { conn, home } = &mut self.conn
            && !matches!(
                e,
                sqlx::Error::Database(_)
                    | sqlx::Error::RowNotFound
                    | sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::Decode(_)
                    | sqlx::Error::Encode(_)
                    | sqlx::Error::TypeNotFound { .. }
                    | sqlx::Error::ColumnNotFound(_)
                    | sqlx::Error::ColumnIndexOutOfBounds { .. }
            )
            && let Some(broken) = conn.take()
        {
            tracing::warn!(error = %e, "read-only SQLite connection failed; opening another");
            home.forget_one();
            drop(broken);
        }
        db(e)
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Conn::Own { home, conn } = &mut self.conn
            && let Some(conn) = conn.take()
        {
            home.put_back(conn);
        }
    }
}
