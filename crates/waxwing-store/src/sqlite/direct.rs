//! A cold login's reads stepped on the calling thread, on read-only
//! connections of our own (rusqlite), instead of a command to an sqlx
//! connection's thread and the answer back.
//!
//! sqlx runs every SQLite connection on a thread of its own. For the one
//! read of a cold login (secrets, roster and avatar hash: `login.rs`) that
//! hop, waking the connection's thread and being woken by it, cost more
//! than the statements themselves (session 27: the worker threads took
//! 16 % of a cold login wave's CPU, SQLite's own execution under 1 %,
//! most of the rest futex wake-ups and context switches). Here the three
//! statements run inside one read transaction (one WAL read lock instead
//! of three) on a connection taken from a small stack, and the calling
//! task gets its answer without yielding.
//!
//! Why stepping SQLite on a runtime thread is acceptable here: the reads
//! are three indexed lookups of one account (a few pages, from SQLite's
//! page cache or the OS's) that never wait on a lock: a WAL reader does
//! not block on the writer, and the connections have no busy timeout, so
//! anything that would wait (the rare moment the WAL index is rebuilt)
//! fails at once with SQLITE_BUSY instead, and the caller falls back to
//! the sqlx reader (`readers.rs`), as it does on any other error and when
//! all [`max_direct`] connections are in use. Only these reads take this
//! path; everything else stays on sqlx.
//!
//! Connections are read-only (`SQLITE_OPEN_READ_ONLY`), so they can take
//! no write lock; a transaction left open by an error or a panic ends when
//! its `Transaction` drops (rollback), before the connection goes back.

use std::path::PathBuf;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

use super::accounts::{SECRETS_SQL, SecretRow, secrets_from_rows};
use super::im::FRAGMENT_SQL;
use super::roster::{GroupedRow, ITEMS_SQL, items_from_rows};
use crate::{LoginRead, StoreError};

/// Connections kept at most: one per runtime worker thread, whose count
/// tokio takes from the available CPUs (a read holds its connection without
/// yielding, so no more than the runtime's threads can use them at once);
/// beyond that the sqlx reader answers.
fn max_direct() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Why the direct path did not answer (the caller then asks sqlx).
#[derive(Debug)]
pub(crate) enum Miss {
    /// Every connection is in use, or none can be opened.
    Busy,
    /// SQLite failed (SQLITE_BUSY, I/O …; logged); the connection was dropped.
    Failed,
    /// The rows did not decode.
    Store(StoreError),
}

/// Read-only connections to one database file.
pub(crate) struct DirectReaders {
    path: PathBuf,
    max: usize,
    state: Mutex<State>,
}

struct State {
    idle: Vec<Connection>,
    /// Open connections, lent ones included.
    open: usize,
}

impl DirectReaders {
    pub(crate) fn new(path: PathBuf) -> Self {
        DirectReaders {
            path,
            max: max_direct(),
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Only whole pushes, pops and counter steps happen under the lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection or a new one, if fewer than [`max_direct`] exist.
    fn take(&self) -> Result<Connection, Miss> {
        {
            let mut s = self.lock();
            if let Some(c) = s.idle.pop() {
                return Ok(c);
            }
            if s.open >= self.max {
                return Err(Miss::Busy);
            }
            s.open += 1;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        match Connection::open_with_flags(&self.path, flags) {
            // No busy timeout: see the module comment.
            Ok(c) => Ok(c),
            Err(e) => {
                self.lock().open -= 1;
                tracing::warn!(error = %e, "cannot open a direct read-only SQLite connection");
                Err(Miss::Busy)
            }
        }
    }

    fn give_back(&self, conn: Connection) {
        self.lock().idle.push(conn);
    }

    fn forget(&self, conn: Connection) {
        drop(conn);
        self.lock().open -= 1;
    }

    /// The three reads of a cold login (`login.rs`), or why not here.
    pub(crate) fn login_reads(&self, user: &str, fragment: &str) -> Result<LoginRead, Miss> {
        let mut conn = self.take()?;
        let rows = read(&mut conn, user, fragment);
        match rows {
            Ok(rows) => {
                self.give_back(conn);
                decode(rows).map_err(Miss::Store)
            }
            Err(e) => {
                // A database that changed shape under us, a damaged file, a
                // moment of SQLITE_BUSY: start afresh next time.
                tracing::debug!(error = %e, "direct SQLite read failed; reading through sqlx");
                self.forget(conn);
                Err(Miss::Failed)
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn open_count(&self) -> usize {
        self.lock().open
    }
}

type Rows = (Vec<SecretRow>, Vec<GroupedRow>, Option<String>);

/// The statements of `login.rs`, each prepared once per connection. All
/// three run for an unknown account too, as on the sqlx path: no shortcut
/// that would time differently.
fn read(conn: &mut Connection, user: &str, fragment: &str) -> rusqlite::Result<Rows> {
    // One snapshot for the three, one WAL read lock.
    let tx = conn.transaction()?;
    let secrets = {
        let mut st = tx.prepare_cached(SECRETS_SQL)?;
        st.query_map([user], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<rusqlite::Result<Vec<SecretRow>>>()?
    };
    let roster = {
        let mut st = tx.prepare_cached(ITEMS_SQL)?;
        st.query_map([user], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<GroupedRow>>>()?
    };
    let xml = {
        let mut st = tx.prepare_cached(FRAGMENT_SQL)?;
        let mut rows = st.query([user, fragment])?;
        match rows.next()? {
            Some(r) => Some(r.get::<_, String>(0)?),
            None => None,
        }
    };
    tx.commit()?;
    Ok((secrets, roster, xml))
}

fn decode((secrets, roster, fragment): Rows) -> Result<LoginRead, StoreError> {
    Ok(match secrets_from_rows(secrets)? {
        None => LoginRead::NoAccount,
        Some(secrets) => LoginRead::Account {
            secrets,
            roster: items_from_rows(roster)?,
            fragment,
        },
    })
}
