use std::collections::HashMap;

use async_trait::async_trait;
use waxwing_proto::jid::BareJid;

use super::{Bounded, Conn, Store, db, jid, unsigned};
use crate::roster::{normalize_groups, visible_change};
use crate::{RosterItem, RosterStore, StoreError, Subscription};

/// `(other, name, subscription, ask, pending_in, pending_in_stanza, approved, in_roster)`,
/// where `other` is the contact or the owner depending on the query.
type Row = (
    String,
    Option<String>,
    String,
    bool,
    bool,
    Option<String>,
    bool,
    bool,
);

/// A [`Row`] followed by one of the item's groups (NULL for none).
pub(super) type GroupedRow = (
    String,
    Option<String>,
    String,
    bool,
    bool,
    Option<String>,
    bool,
    bool,
    Option<String>,
);

/// Items joined with their groups, as [`GroupedRow`]s: one row per
/// (item, group), one row with a NULL group for an item without groups.
macro_rules! grouped_select {
    () => {
        "SELECT i.contact, i.name, i.subscription, i.ask, i.pending_in, \
         i.pending_in_stanza, i.approved, i.in_roster, g.name \
         FROM roster_items i LEFT JOIN roster_groups g \
         ON g.owner = i.owner AND g.contact = i.contact"
    };
}

/// The columns after the first in a [`Row`], as a literal so that `concat!`
/// keeps every statement a `&'static str`.
macro_rules! item_columns {
    () => {
        "name, subscription, ask, pending_in, pending_in_stanza, approved, in_roster"
    };
}

fn decode(row: Row, contact: BareJid, groups: Vec<String>) -> Result<RosterItem, StoreError> {
    let (_, name, subscription, ask, pending_in, pending_in_stanza, approved, in_roster) = row;
    Ok(RosterItem {
        contact,
        name,
        groups,
        subscription: Subscription::parse(&subscription)
            .ok_or_else(|| StoreError::Corrupt(format!("roster subscription {subscription:?}")))?,
        ask,
        pending_in,
        pending_in_stanza,
        approved,
        in_roster,
    })
}

/// Every item of one owner (`$1`) with its groups, as [`GroupedRow`]s.
pub(super) const ITEMS_SQL: &str = concat!(
    grouped_select!(),
    " WHERE i.owner = $1 ORDER BY i.contact, g.position"
);

/// Decodes the rows of [`ITEMS_SQL`].
pub(super) fn items_from_rows(rows: Vec<GroupedRow>) -> Result<Vec<RosterItem>, StoreError> {
    let mut items = fold_groups(rows)
        .into_iter()
        .map(|(row, groups)| {
            let contact = jid(&row.0)?;
            decode(row, contact, groups)
        })
        .collect::<Result<Vec<_>, _>>()?;
    // BareJid's Ord rather than SQL collation: the same order on every backend.
    items.sort_by(|a, b| a.contact.cmp(&b.contact));
    Ok(items)
}

/// Groups by the key column of `(key, group)` rows, keeping row order.
fn group_map(rows: Vec<(String, String)>) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (key, group) in rows {
        map.entry(key).or_default().push(group);
    }
    map
}

/// One item with its groups, in one statement (so a consistent snapshot
/// outside a transaction too, and one round trip to the database thread).
async fn fetch_item(
    conn: &mut Conn,
    owner: &str,
    contact: &BareJid,
) -> Result<Option<RosterItem>, StoreError> {
    let rows = item_rows(conn, owner, contact).await.map_err(db)?;
    item_from_rows(rows, contact)
}

/// The rows of [`fetch_item`].
async fn item_rows(
    conn: &mut Conn,
    owner: &str,
    contact: &BareJid,
) -> Result<Vec<GroupedRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        grouped_select!(),
        " WHERE i.owner = $1 AND i.contact = $2 ORDER BY g.position"
    ))
    .bind(owner)
    .bind(contact.to_string())
    .fetch_all(&mut *conn)
    .bounded()
    .await
}

fn item_from_rows(
    rows: Vec<GroupedRow>,
    contact: &BareJid,
) -> Result<Option<RosterItem>, StoreError> {
    fold_groups(rows)
        .into_iter()
        .next()
        .map(|(row, groups)| decode(row, contact.clone(), groups))
        .transpose()
}

/// Folds [`GroupedRow`]s, ordered by contact, into each item's row and its
/// groups in row order.
fn fold_groups(rows: Vec<GroupedRow>) -> Vec<(Row, Vec<String>)> {
    let mut items: Vec<(Row, Vec<String>)> = Vec::new();
    for (c, n, sub, ask, pin, pins, appr, inr, group) in rows {
        match items.last_mut() {
            Some((row, groups)) if row.0 == c => groups.extend(group),
            _ => items.push((
                (c, n, sub, ask, pin, pins, appr, inr),
                group.into_iter().collect(),
            )),
        }
    }
    items
}

/// Bumps the owner's roster version inside the caller's transaction.
pub(super) async fn bump_version(conn: &mut Conn, owner: &str) -> Result<u64, StoreError> {
    let v: i64 = sqlx::query_scalar(
        "INSERT INTO roster_versions (owner, version) VALUES ($1, 1) \
         ON CONFLICT (owner) DO UPDATE SET version = roster_versions.version + 1 \
         RETURNING version",
    )
    .bind(owner)
    .fetch_one(&mut *conn)
    .bounded()
    .await
    .map_err(db)?;
    unsigned(v, "roster version")
}

async fn current_version(conn: &mut Conn, owner: &str) -> Result<u64, StoreError> {
    let v: Option<i64> = sqlx::query_scalar("SELECT version FROM roster_versions WHERE owner = $1")
        .bind(owner)
        .fetch_optional(&mut *conn)
        .bounded()
        .await
        .map_err(db)?;
    unsigned(v.unwrap_or(0), "roster version")
}

#[async_trait]
impl RosterStore for Store {
    async fn items(&self, owner: &BareJid) -> Result<Vec<RosterItem>, StoreError> {
        // One statement (a consistent snapshot without a transaction) and
        // one round trip to the database thread: this runs on every login
        // and every presence broadcast. One row per (item, group); an item
        // without groups comes back once with a NULL group.
        let mut r = self.reader().await?;
        let rows: Vec<GroupedRow> = sqlx::query_as(ITEMS_SQL)
            .bind(owner.to_string())
            .fetch_all(r.conn())
            .bounded()
            .await
            .map_err(|e| r.error(e))?;
        items_from_rows(rows)
    }

    async fn get(
        &self,
        owner: &BareJid,
        contact: &BareJid,
    ) -> Result<Option<RosterItem>, StoreError> {
        let mut r = self.reader().await?;
        let rows = item_rows(r.conn(), &owner.to_string(), contact)
            .await
            .map_err(|e| r.error(e))?;
        item_from_rows(rows, contact)
    }

    async fn put(&self, owner: &BareJid, item: &RosterItem) -> Result<u64, StoreError> {
        let owner = owner.to_string();
        let contact = item.contact.to_string();
        let mut new = item.clone();
        new.groups = normalize_groups(&item.groups);

        let mut tx = self.write_tx(&owner).await?;
        let old = fetch_item(&mut tx, &owner, &item.contact).await?;
        // An upsert, not INSERT OR REPLACE: REPLACE deletes the row first,
        // which would cascade to its groups.
        sqlx::query(
            "INSERT INTO roster_items \
               (owner, contact, name, subscription, ask, pending_in, pending_in_stanza, approved, in_roster) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (owner, contact) DO UPDATE SET \
               name = excluded.name, subscription = excluded.subscription, ask = excluded.ask, \
               pending_in = excluded.pending_in, pending_in_stanza = excluded.pending_in_stanza, \
               approved = excluded.approved, in_roster = excluded.in_roster",
        )
        .bind(&owner)
        .bind(&contact)
        .bind(&new.name)
        .bind(new.subscription.as_str())
        .bind(new.ask)
        .bind(new.pending_in)
        .bind(&new.pending_in_stanza)
        .bind(new.approved)
        .bind(new.in_roster)
        .execute(&mut *tx)
        .bounded().await
        .map_err(db)?;

        if old.as_ref().map(|o| &o.groups) != Some(&new.groups) {
            sqlx::query("DELETE FROM roster_groups WHERE owner = $1 AND contact = $2")
                .bind(&owner)
                .bind(&contact)
                .execute(&mut *tx)
                .bounded()
                .await
                .map_err(db)?;
            for (position, group) in new.groups.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO roster_groups (owner, contact, position, name) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(&owner)
                .bind(&contact)
                .bind(position as i64)
                .bind(group)
                .execute(&mut *tx)
                .bounded()
                .await
                .map_err(db)?;
            }
        }

        let version = if visible_change(old.as_ref(), Some(&new)) {
            bump_version(&mut tx, &owner).await?
        } else {
            current_version(&mut tx, &owner).await?
        };
        tx.commit().bounded().await.map_err(db)?;
        Ok(version)
    }

    async fn remove(&self, owner: &BareJid, contact: &BareJid) -> Result<u64, StoreError> {
        let owner = owner.to_string();
        let mut tx = self.write_tx(&owner).await?;
        // Groups go with the row (ON DELETE CASCADE).
        let was_visible: Option<bool> = sqlx::query_scalar(
            "DELETE FROM roster_items WHERE owner = $1 AND contact = $2 RETURNING in_roster",
        )
        .bind(&owner)
        .bind(contact.to_string())
        .fetch_optional(&mut *tx)
        .bounded()
        .await
        .map_err(db)?;
        let version = if was_visible == Some(true) {
            bump_version(&mut tx, &owner).await?
        } else {
            current_version(&mut tx, &owner).await?
        };
        tx.commit().bounded().await.map_err(db)?;
        Ok(version)
    }

    async fn version(&self, owner: &BareJid) -> Result<u64, StoreError> {
        let mut r = self.reader().await?;
        current_version(r.conn(), &owner.to_string()).await
    }

    async fn forget_version(&self, owner: &BareJid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM roster_versions WHERE owner = $1")
            .bind(owner.to_string())
            .execute(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn owners_of(&self, contact: &BareJid) -> Result<Vec<(BareJid, RosterItem)>, StoreError> {
        let key = contact.to_string();
        let mut tx = self.read_tx().await?;
        let rows: Vec<Row> = sqlx::query_as(concat!(
            "SELECT owner, ",
            item_columns!(),
            " FROM roster_items WHERE contact = $1"
        ))
        .bind(&key)
        .fetch_all(&mut *tx)
        .bounded()
        .await
        .map_err(db)?;
        let groups: Vec<(String, String)> = sqlx::query_as(
            "SELECT owner, name FROM roster_groups WHERE contact = $1 ORDER BY owner, position",
        )
        .bind(&key)
        .fetch_all(&mut *tx)
        .bounded()
        .await
        .map_err(db)?;
        tx.commit().bounded().await.map_err(db)?;

        let mut groups = group_map(groups);
        let mut out = rows
            .into_iter()
            .map(|row| {
                let owner = jid(&row.0)?;
                let g = groups.remove(&row.0).unwrap_or_default();
                Ok((owner, decode(row, contact.clone(), g)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}
