//! What the SQL backends share: the error conversion and the decoding of
//! stored columns.
//!
//! The statements themselves are shared too, at the source level: every
//! file in `dml/` is compiled once inside `sqlite/` and once inside
//! `postgres/` (`#[path]` modules), where `super::{Store, Db, Conn, DbRow}`
//! name that backend's types and `Store::write_tx` / `Store::read_tx` its
//! transactions. The SQL is the subset both databases accept (`$n`
//! placeholders, `ON CONFLICT … DO UPDATE`, `RETURNING`, `excluded.`), so
//! the two backends cannot drift apart in semantics; only the DDL in
//! `migrations/` differs. Each file is still checked against its concrete
//! backend's types by the compiler, which a generic `Database` parameter
//! would give up for a thicket of trait bounds.

use waxwing_proto::jid::BareJid;

use crate::StoreError;

/// Converts a sqlx error, keeping a description for logs but neither the SQL
/// nor sqlx's types: callers only ever see [`StoreError`].
pub(crate) fn db(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(d) => match d.code() {
            Some(code) => StoreError::Backend(format!("database error {code}: {}", d.message())),
            None => StoreError::Backend(format!("database error: {}", d.message())),
        },
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(e.to_string())
        }
        sqlx::Error::PoolTimedOut => {
            StoreError::Backend("timed out waiting for a database connection".into())
        }
        other => StoreError::Backend(other.to_string()),
    }
}

/// Reads back a JID column.
pub(crate) fn jid(s: &str) -> Result<BareJid, StoreError> {
    BareJid::parse(s).map_err(|_| StoreError::Corrupt(format!("stored JID {s:?} is not valid")))
}

/// Reads back a non-negative count or version column.
pub(crate) fn unsigned(n: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{what} is negative: {n}")))
}
