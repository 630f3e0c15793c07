//! A login's three reads in one round trip (`AccountStore::login_reads`).
//!
//! A cold login reads the account's secrets, then (at its initial presence)
//! its roster and its avatar hash: three statements, three round trips to a
//! connection's thread. SQLite runs several statements given as one string
//! in one command of sqlx's worker, answering with each statement's rows
//! followed by its completion; so the three go out together, on one reader,
//! and `store_cache` keeps the roster and the fragment for the moments after
//! authentication that ask for them. The statements are the very ones of
//! `secrets`, `items` and `get` (`dml/`), so the parts cannot drift apart.
//!
//! On a database file they are first tried on the store's own direct
//! connections (`direct.rs`: no thread hop at all); this sqlx path answers
//! when those are busy or fail, and for an in-memory database.

use std::sync::LazyLock;

use futures_util::TryStreamExt as _;
use sqlx::{Either, Executor, FromRow as _, Row as _};
use waxwing_proto::jid::BareJid;

use super::accounts::{SECRETS_SQL, SecretRow, secrets_from_rows};
use super::im::FRAGMENT_SQL;
use super::roster::{GroupedRow, ITEMS_SQL, items_from_rows};
use super::{SqliteStore, db};
use crate::{LoginRead, StoreError};

/// The three statements; each numbers its parameters from the same list
/// (`$1` the account, `$2` the fragment's key).
static LOGIN_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{SECRETS_SQL};\n{ITEMS_SQL};\n{FRAGMENT_SQL}"));

impl SqliteStore {
    pub(super) async fn batched_login_reads(
        &self,
        user: &BareJid,
        fragment: &str,
    ) -> Result<LoginRead, StoreError> {
        if let Some(direct) = &self.direct {
            match direct.login_reads(&user.to_string(), fragment) {
                Ok(read) => return Ok(read),
                // Rows that do not decode would not on sqlx either.
                Err(super::direct::Miss::Store(e)) => return Err(e),
                Err(_) => {} // busy or failed: sqlx answers
            }
        }
        let sql: &'static str = LOGIN_SQL.as_str();
        let mut secrets: Vec<SecretRow> = Vec::new();
        let mut roster: Vec<GroupedRow> = Vec::new();
        let mut xml: Option<String> = None;
        // Which statement the rows belong to: each one's end is announced.
        let mut part = 0;
        let mut r = self.reader().await?;
        {
            // The executor's `fetch_many`: `Query::fetch_many` is deprecated
            // because only SQLite runs several statements in one query
            // (sqlx issue 3108); the SQLite driver still does, and the
            // tests here fail should a later sqlx stop.
            let query = sqlx::query(sql).bind(user.to_string()).bind(fragment);
            let mut results = Executor::fetch_many(r.conn(), query);
            loop {
                let next = match results.try_next().await {
                    Ok(next) => next,
                    Err(e) => {
                        drop(results);
                        return Err(r.error(e));
                    }
                };
                match next {
                    None => break,
                    Some(Either::Left(_done)) => part += 1,
                    Some(Either::Right(row)) => match part {
                        0 => secrets.push(SecretRow::from_row(&row).map_err(db)?),
                        1 => roster.push(GroupedRow::from_row(&row).map_err(db)?),
                        2 => xml = Some(row.try_get::<String, _>(0).map_err(db)?),
                        _ => return Err(StoreError::Backend("unexpected result set".into())),
                    },
                }
            }
        }
        if part != 3 {
            return Err(StoreError::Backend(format!(
                "login reads ended after {part} of 3 statements"
            )));
        }
        Ok(match secrets_from_rows(secrets)? {
            None => LoginRead::NoAccount,
            Some(secrets) => LoginRead::Account {
                secrets,
                roster: items_from_rows(roster)?,
                fragment: xml,
            },
        })
    }
}
