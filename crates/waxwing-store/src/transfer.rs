//! Copying a whole database to another backend (`waxwing storage migrate`):
//! every table, row for row, in one transaction on the target, with the row
//! counts checked before it commits.
//!
//! Both databases are opened through [`crate::open`]'s connectors, so both
//! schemas are at this release's migration; the backends' migrations have
//! the same tables and columns (`migrations/README.md`), listed in
//! [`TABLES`], which a test compares with the schema itself so that a new
//! table cannot be forgotten here.

use sqlx::{AssertSqlSafe, QueryBuilder, Transaction};

use crate::sql::{db, unsigned};
use crate::{Backend, Durability, StoreError, postgres, sqlite};

/// The value types of the schema's columns (NULL allowed in each: the
/// target's constraints are the ones that hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Int,
    Real,
    Bool,
    Bytes,
}

use Kind::{Bool, Bytes, Int, Real, Text};

/// One table: its name, primary key and columns.
struct Table {
    name: &'static str,
    /// The primary key: the copy reads in its order, a page at a time.
    key: &'static [&'static str],
    columns: &'static [(&'static str, Kind)],
    /// An identity column whose sequence must continue after the copied
    /// values on PostgreSQL.
    identity: Option<&'static str>,
}

/// Every table, parents before children (foreign keys hold at each insert).
const TABLES: &[Table] = &[
    Table {
        name: "accounts",
        key: &["jid"],
        columns: &[("jid", Text), ("domain", Text)],
        identity: None,
    },
    Table {
        name: "account_secrets",
        key: &["jid", "mechanism"],
        columns: &[
            ("jid", Text),
            ("mechanism", Text),
            ("salt", Bytes),
            ("iterations", Int),
            ("stored_key", Bytes),
            ("server_key", Bytes),
        ],
        identity: None,
    },
    Table {
        name: "roster_items",
        key: &["owner", "contact"],
        columns: &[
            ("owner", Text),
            ("contact", Text),
            ("name", Text),
            ("subscription", Text),
            ("ask", Bool),
            ("pending_in", Bool),
            ("pending_in_stanza", Text),
            ("approved", Bool),
            ("in_roster", Bool),
        ],
        identity: None,
    },
    Table {
        name: "roster_groups",
        key: &["owner", "contact", "name"],
        columns: &[
            ("owner", Text),
            ("contact", Text),
            ("position", Int),
            ("name", Text),
        ],
        identity: None,
    },
    Table {
        name: "roster_versions",
        key: &["owner"],
        columns: &[("owner", Text), ("version", Int)],
        identity: None,
    },
    Table {
        name: "offline_messages",
        key: &["id"],
        columns: &[("id", Int), ("owner", Text), ("stanza", Text)],
        identity: Some("id"),
    },
    Table {
        name: "muc_rooms",
        key: &["jid"],
        columns: &[
            ("jid", Text),
            ("domain", Text),
            ("config", Text),
            ("subject", Text),
            ("subject_by", Text),
        ],
        identity: None,
    },
    Table {
        name: "muc_affiliations",
        key: &["room", "jid"],
        columns: &[
            ("room", Text),
            ("jid", Text),
            ("affiliation", Text),
            ("nick", Text),
            ("reason", Text),
        ],
        identity: None,
    },
    Table {
        name: "archive_items",
        key: &["seq"],
        columns: &[
            ("seq", Int),
            ("owner_kind", Text),
            ("owner", Text),
            ("id", Text),
            ("stamp", Int),
            ("with_bare", Text),
            ("with_resource", Text),
            ("stanza", Text),
        ],
        identity: Some("seq"),
    },
    Table {
        name: "archive_prefs",
        key: &["owner"],
        columns: &[("owner", Text), ("default_policy", Text)],
        identity: None,
    },
    Table {
        name: "archive_prefs_jids",
        key: &["owner", "jid"],
        columns: &[("owner", Text), ("jid", Text), ("policy", Text)],
        identity: None,
    },
    Table {
        name: "blocklist",
        key: &["owner", "jid"],
        columns: &[("owner", Text), ("jid", Text)],
        identity: None,
    },
    Table {
        name: "private_xml",
        key: &["owner", "key"],
        columns: &[("owner", Text), ("key", Text), ("xml", Text)],
        identity: None,
    },
    Table {
        name: "last_activity",
        key: &["owner"],
        columns: &[("owner", Text), ("at", Int), ("status", Text)],
        identity: None,
    },
    Table {
        name: "pubsub_nodes",
        key: &["service", "node"],
        columns: &[("service", Text), ("node", Text), ("config", Text)],
        identity: None,
    },
    Table {
        name: "pubsub_items",
        key: &["seq"],
        columns: &[
            ("seq", Int),
            ("service", Text),
            ("node", Text),
            ("item_id", Text),
            ("publisher", Text),
            ("payload", Text),
        ],
        identity: Some("seq"),
    },
    Table {
        name: "pubsub_affiliations",
        key: &["service", "node", "jid"],
        columns: &[
            ("service", Text),
            ("node", Text),
            ("jid", Text),
            ("affiliation", Text),
        ],
        identity: None,
    },
    Table {
        name: "pubsub_subscriptions",
        key: &["service", "node", "jid"],
        columns: &[
            ("service", Text),
            ("node", Text),
            ("jid", Text),
            ("state", Text),
            ("options", Text),
        ],
        identity: None,
    },
    Table {
        name: "domain_reputation",
        key: &["domain"],
        columns: &[
            ("domain", Text),
            ("spam_reports", Int),
            ("bounces", Int),
            ("failed_dialbacks", Int),
            ("rate_limit_hits", Int),
            ("score", Real),
            ("updated_at", Int),
            ("blocked", Int),
        ],
        identity: None,
    },
    Table {
        name: "pubsub_feeds",
        key: &["service", "node", "url"],
        columns: &[
            ("service", Text),
            ("node", Text),
            ("url", Text),
            ("interval_secs", Int),
            ("admin", Int),
            ("etag", Text),
            ("last_modified", Text),
        ],
        identity: None,
    },
    Table {
        name: "pubsub_feed_seen",
        key: &["seq"],
        columns: &[
            ("seq", Int),
            ("service", Text),
            ("node", Text),
            ("url", Text),
            ("item_id", Text),
        ],
        identity: Some("seq"),
    },
    Table {
        name: "invites",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("token_hash", Bytes),
            ("host", Text),
            ("kind", Text),
            ("creator", Text),
            ("username", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("max_uses", Int),
            ("uses", Int),
        ],
        identity: None,
    },
];

/// Rows per page read and per INSERT statement: far below both backends'
/// limits on bound parameters (9 columns at most: 4,500 parameters), and a
/// bounded amount of memory whatever the size of the archive.
const PAGE: usize = 500;

/// One column's value.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(Option<String>),
    Int(Option<i64>),
    Real(Option<f64>),
    Bool(Option<bool>),
    Bytes(Option<Vec<u8>>),
}

/// Rows of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    /// The table.
    pub table: &'static str,
    /// Its rows (in the source, and in the target after a copy).
    pub rows: u64,
}

/// Why a migration did not happen (nothing was written to the target).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    /// The target already holds data and `force` was not given.
    #[error(
        "the target database is not empty ({table} has {rows} rows); \
         --force replaces its contents"
    )]
    TargetNotEmpty {
        /// The first non-empty table found.
        table: &'static str,
        /// Its rows.
        rows: u64,
    },
    /// After the copy a table did not have as many rows as the source.
    #[error(
        "{table}: {source_rows} rows in the source but {target_rows} in the target; \
         nothing was written"
    )]
    CountMismatch {
        /// The table.
        table: &'static str,
        /// Rows in the source snapshot.
        source_rows: u64,
        /// Rows in the target.
        target_rows: u64,
    },
    /// Source and target are the same database.
    #[error("source and target are the same database")]
    SameDatabase,
    /// A database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copies every table of `from` into `to` (each opened, and migrated to
/// this release's schema, first). The target must be empty unless `force`,
/// which replaces its contents. All or nothing: the copy is one transaction
/// on the target, committed only when every table has as many rows as in
/// the source's snapshot, so it can simply be run again after a failure.
/// Stop the server first: what it writes to the source during the copy is
/// not carried over.
pub async fn migrate(from: &str, to: &str, force: bool) -> Result<Vec<TableCount>, MigrateError> {
    if from == to {
        return Err(MigrateError::SameDatabase);
    }
    // Opening an SQLite URL creates a missing file: a mistyped --from would
    // "migrate" an empty database.
    if backend(from)? == Backend::Sqlite && !sqlite::exists(from)? {
        return Err(StoreError::Backend("the source SQLite database does not exist".into()).into());
    }
    let mut source = Tx::read(from).await?;
    let mut target = Tx::write(to).await?;
    let mut counts = Vec::with_capacity(TABLES.len());
    for table in TABLES.iter().rev() {
        let rows = target.count(table).await?;
        if rows > 0 {
            if !force {
                return Err(MigrateError::TargetNotEmpty {
                    table: table.name,
                    rows,
                });
            }
            // Children first (the reverse order), inside the transaction:
            // a failed copy leaves the old contents.
            target.clear(table).await?;
        }
    }
    for table in TABLES {
        let source_rows = source.count(table).await?;
        let mut after: Option<Vec<Value>> = None;
        loop {
            let rows = source.page(table, after.as_deref()).await?;
            if rows.is_empty() {
                break;
            }
            target.insert(table, &rows).await?;
            let last = rows.last().expect("non-empty page");
            after = Some(key_of(table, last));
            if rows.len() < PAGE {
                break;
            }
        }
        target.continue_identity(table).await?;
        let target_rows = target.count(table).await?;
        if target_rows != source_rows {
            return Err(MigrateError::CountMismatch {
                table: table.name,
                source_rows,
                target_rows,
            });
        }
        tracing::info!(table = table.name, rows = source_rows, "copied");
        counts.push(TableCount {
            table: table.name,
            rows: source_rows,
        });
    }
    target.commit().await?;
    Ok(counts)
}

/// Rows per table of a database (opened and migrated first).
pub async fn table_counts(url: &str) -> Result<Vec<TableCount>, StoreError> {
    let mut reader = Tx::read(url).await?;
    let mut out = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        out.push(TableCount {
            table: table.name,
            rows: reader.count(table).await?,
        });
    }
    Ok(out)
}

/// The key columns' values of a row.
fn key_of(table: &Table, row: &[Value]) -> Vec<Value> {
    table
        .key
        .iter()
        .map(|k| {
            let i = table
                .columns
                .iter()
                .position(|(c, _)| c == k)
                .expect("key columns are columns");
            row[i].clone()
        })
        .collect()
}

fn column_list(table: &Table) -> String {
    table
        .columns
        .iter()
        .map(|(c, _)| *c)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A transaction on either backend: the source's read snapshot or the
/// target's write transaction.
enum Tx {
    Sqlite(Transaction<'static, sqlx::Sqlite>),
    Postgres(Transaction<'static, sqlx::Postgres>),
}

/// Runs the same code on either backend's transaction (the statements are
/// the same text; the types differ).
macro_rules! on_tx {
    ($tx:expr, $t:ident => $body:expr) => {
        match $tx {
            Tx::Sqlite($t) => $body,
            Tx::Postgres($t) => $body,
        }
    };
}

impl Tx {
    /// A consistent snapshot of the database at `url`.
    async fn read(url: &str) -> Result<Tx, StoreError> {
        Ok(match backend(url)? {
            Backend::Sqlite => {
                let pool = sqlite::connect(url, Durability::PowerLoss).await?.pool;
                // Deferred: the first read fixes the WAL snapshot.
                Tx::Sqlite(pool.begin().await.map_err(db)?)
            }
            Backend::Postgres => {
                let pool = postgres::connect(url, 2).await?.pool;
                Tx::Postgres(
                    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                        .await
                        .map_err(db)?,
                )
            }
        })
    }

    /// A write transaction on the database at `url` (SQLite: holding the
    /// write lock from the start; PostgreSQL: the tables locked against
    /// other writers, so no server writes into the copy meanwhile).
    async fn write(url: &str) -> Result<Tx, StoreError> {
        Ok(match backend(url)? {
            Backend::Sqlite => {
                let pool = sqlite::connect(url, Durability::PowerLoss).await?.pool;
                Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?)
            }
            Backend::Postgres => {
                let pool = postgres::connect(url, 2).await?.pool;
                let mut tx = pool.begin().await.map_err(db)?;
                let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "LOCK TABLE {} IN EXCLUSIVE MODE",
                    names.join(", ")
                )))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                Tx::Postgres(tx)
            }
        })
    }

    async fn count(&mut self, table: &Table) -> Result<u64, StoreError> {
        let sql = format!("SELECT COUNT(*) FROM {}", table.name);
        let n: i64 = on_tx!(self, tx => sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&mut **tx)
            .await
            .map_err(db)?);
        unsigned(n, "row count")
    }

    async fn clear(&mut self, table: &Table) -> Result<(), StoreError> {
        let sql = format!("DELETE FROM {}", table.name);
        on_tx!(self, tx => {
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut **tx)
                .await
                .map_err(db)?;
        });
        Ok(())
    }

    /// The next page after the key `after`, in key order: keyset paging, an
    /// index range scan per page (OFFSET would rescan every row before the
    /// page). Both backends compare row values.
    async fn page(
        &mut self,
        table: &Table,
        after: Option<&[Value]>,
    ) -> Result<Vec<Vec<Value>>, StoreError> {
        on_tx!(self, tx => {
            let mut qb = QueryBuilder::new(format!(
                "SELECT {} FROM {}",
                column_list(table),
                table.name
            ));
            let key = table.key.join(", ");
            if let Some(after) = after {
                qb.push(format!(" WHERE ({key}) > ("));
                let mut sep = qb.separated(", ");
                for v in after {
                    bind!(sep, v.clone());
                }
                qb.push(")");
            }
            qb.push(format!(" ORDER BY {key} LIMIT {PAGE}"));
            let rows = qb.build().fetch_all(&mut **tx).await.map_err(db)?;
            rows.iter()
                .map(|row| decode!(table, row))
                .collect::<Result<Vec<_>, StoreError>>()
        })
    }

    async fn insert(&mut self, table: &Table, rows: &[Vec<Value>]) -> Result<(), StoreError> {
        on_tx!(self, tx => {
            let mut qb = QueryBuilder::new(format!(
                "INSERT INTO {} ({}) ",
                table.name,
                column_list(table)
            ));
            qb.push_values(rows, |mut b, row| {
                for v in row {
                    bind!(b, v.clone());
                }
            });
            qb.build().execute(&mut **tx).await.map_err(db)?;
        });
        Ok(())
    }

    /// After explicit values went into an identity column: make the values
    /// PostgreSQL generates next follow them (SQLite's AUTOINCREMENT already
    /// remembers the largest one inserted).
    async fn continue_identity(&mut self, table: &Table) -> Result<(), StoreError> {
        if let (Tx::Postgres(tx), Some(column)) = (&mut *self, table.identity) {
            let sql = format!(
                "SELECT setval(pg_get_serial_sequence('{t}', '{column}'), \
                 COALESCE(MAX({column}), 0) + 1, false) FROM {t}",
                t = table.name
            );
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut **tx)
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    async fn commit(self) -> Result<(), StoreError> {
        on_tx!(self, tx => tx.commit().await.map_err(db))
    }
}

/// Binds one value on a query builder's separated list (`push_bind`), for
/// whichever backend it belongs to.
macro_rules! bind {
    ($sep:expr, $value:expr) => {
        match $value {
            Value::Text(v) => $sep.push_bind(v),
            Value::Int(v) => $sep.push_bind(v),
            Value::Real(v) => $sep.push_bind(v),
            Value::Bool(v) => $sep.push_bind(v),
            Value::Bytes(v) => $sep.push_bind(v),
        }
    };
}
use bind;

/// Decodes a row of `table` into its values.
macro_rules! decode {
    ($table:expr, $row:expr) => {{
        use sqlx::Row;
        $table
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, kind))| {
                Ok(match kind {
                    Kind::Text => Value::Text($row.try_get(i).map_err(db)?),
                    Kind::Int => Value::Int($row.try_get(i).map_err(db)?),
                    Kind::Real => Value::Real($row.try_get(i).map_err(db)?),
                    Kind::Bool => Value::Bool($row.try_get(i).map_err(db)?),
                    Kind::Bytes => Value::Bytes($row.try_get(i).map_err(db)?),
                })
            })
            .collect::<Result<Vec<Value>, StoreError>>()
    }};
}
use decode;

fn backend(url: &str) -> Result<Backend, StoreError> {
    Backend::of_url(url).ok_or_else(|| {
        StoreError::Backend(format!(
            "unsupported storage URL scheme {:?}",
            url.split(':').next().unwrap_or_default()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `TABLES` names every table and column of the schema, so the copy
    /// cannot silently leave out something a later migration adds.
    async fn tables_are_the_schema(url: &str) {
        let tx = Tx::read(url).await.unwrap();
        let sql = match &tx {
            Tx::Sqlite(_) => {
                "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p \
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' \
                 AND m.name NOT LIKE '_sqlx%' ORDER BY m.name, p.name"
            }
            Tx::Postgres(_) => {
                "SELECT table_name::TEXT, column_name::TEXT FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name NOT LIKE '_sqlx%' \
                 ORDER BY table_name, column_name"
            }
        };
        let mut tx = tx;
        let schema: Vec<(String, String)> = on_tx!(&mut tx, t => sqlx::query_as(sql)
            .fetch_all(&mut **t)
            .await
            .unwrap());
        let mut listed: Vec<(String, String)> = TABLES
            .iter()
            .flat_map(|t| {
                t.columns
                    .iter()
                    .map(|(c, _)| (t.name.to_string(), c.to_string()))
            })
            .collect();
        listed.sort();
        assert_eq!(listed, schema, "transfer::TABLES against {url}");
    }

    #[tokio::test]
    async fn sqlite_tables_are_all_listed() {
        tables_are_the_schema("sqlite::memory:").await;
    }

    #[tokio::test]
    async fn postgres_tables_are_all_listed() {
        let cluster = tokio::task::spawn_blocking(waxwing_testsvc::postgres::Cluster::shared)
            .await
            .unwrap();
        tables_are_the_schema(&cluster.database().await).await;
    }

    #[test]
    fn keys_are_columns() {
        for t in TABLES {
            for k in t.key {
                assert!(t.columns.iter().any(|(c, _)| c == k), "{}.{k}", t.name);
            }
        }
    }
}
