//! Publish-subscribe nodes, items, affiliations and subscriptions.

use async_trait::async_trait;
use waxwing_proto::jid::{BareJid, Jid};

use super::{Bounded, Store, db, jid, unsigned};
use crate::StoreError;
use crate::pubsub::{
    FeedKey, PubSubAffiliation, PubSubItem, PubSubStore, StoredFeed, SubscriptionState,
};

fn any_jid(s: &str) -> Result<Jid, StoreError> {
    Jid::parse(s).map_err(|_| StoreError::Corrupt(format!("stored JID {s:?} is not valid")))
}

impl Store {
    async fn node_exists(&self, service: &BareJid, node: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pubsub_nodes WHERE service = $1 AND node = $2",
        )
        .bind(service.to_string())
        .bind(node)
        .fetch_one(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        Ok(n > 0)
    }

    async fn require_node(&self, service: &BareJid, node: &str) -> Result<(), StoreError> {
        if self.node_exists(service, node).await? {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }
}

#[async_trait]
impl PubSubStore for Store {
    async fn create_node(
        &self,
        service: &BareJid,
        node: &str,
        config: &str,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO pubsub_nodes (service, node, config) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(service.to_string())
        .bind(node)
        .bind(config)
        .execute(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists);
        }
        Ok(())
    }

    async fn node_config(
        &self,
        service: &BareJid,
        node: &str,
    ) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT config FROM pubsub_nodes WHERE service = $1 AND node = $2")
            .bind(service.to_string())
            .bind(node)
            .fetch_optional(&self.pool)
            .bounded()
            .await
            .map_err(db)
    }

    async fn set_node_config(
        &self,
        service: &BareJid,
        node: &str,
        config: &str,
    ) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE pubsub_nodes SET config = $3 WHERE service = $1 AND node = $2")
                .bind(service.to_string())
                .bind(node)
                .bind(config)
                .execute(&self.pool)
                .bounded()
                .await
                .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn delete_node(&self, service: &BareJid, node: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM pubsub_nodes WHERE service = $1 AND node = $2")
            .bind(service.to_string())
            .bind(node)
            .execute(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn nodes(&self, service: &BareJid) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT node FROM pubsub_nodes WHERE service = $1 ORDER BY node")
            .bind(service.to_string())
            .fetch_all(&self.pool)
            .bounded()
            .await
            .map_err(db)
    }

    async fn publish(
        &self,
        service: &BareJid,
        node: &str,
        item: &PubSubItem,
        max_items: Option<u64>,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.write_tx(&format!("{service}\n{node}")).await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pubsub_nodes WHERE service = $1 AND node = $2",
        )
        .bind(service.to_string())
        .bind(node)
        .fetch_one(&mut *tx)
        .bounded()
        .await
        .map_err(db)?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        // Delete then insert, so that a republished id becomes the newest.
        sqlx::query("DELETE FROM pubsub_items WHERE service = $1 AND node = $2 AND item_id = $3")
            .bind(service.to_string())
            .bind(node)
            .bind(&item.id)
            .execute(&mut *tx)
            .bounded()
            .await
            .map_err(db)?;
        sqlx::query(
            "INSERT INTO pubsub_items (service, node, item_id, publisher, payload) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(service.to_string())
        .bind(node)
        .bind(&item.id)
        .bind(item.publisher.to_string())
        .bind(&item.payload)
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(db)?;
        let mut dropped = Vec::new();
        if let Some(max) = max_items {
            let max = i64::try_from(max).unwrap_or(i64::MAX);
            dropped = sqlx::query_scalar(
                "DELETE FROM pubsub_items WHERE service = $1 AND node = $2 AND seq NOT IN \
                 (SELECT seq FROM pubsub_items WHERE service = $1 AND node = $2 \
                  ORDER BY seq DESC LIMIT $3) RETURNING item_id",
            )
            .bind(service.to_string())
            .bind(node)
            .bind(max)
            .fetch_all(&mut *tx)
            .bounded()
            .await
            .map_err(db)?;
        }
        tx.commit().bounded().await.map_err(db)?;
        Ok(dropped)
    }

    async fn retract(&self, service: &BareJid, node: &str, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "DELETE FROM pubsub_items WHERE service = $1 AND node = $2 AND item_id = $3",
        )
        .bind(service.to_string())
        .bind(node)
        .bind(id)
        .execute(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn items(&self, service: &BareJid, node: &str) -> Result<Vec<PubSubItem>, StoreError> {
        self.require_node(service, node).await?;
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT item_id, publisher, payload FROM pubsub_items \
             WHERE service = $1 AND node = $2 ORDER BY seq DESC",
        )
        .bind(service.to_string())
        .bind(node)
        .fetch_all(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        rows.into_iter()
            .map(|(id, publisher, payload)| {
                Ok(PubSubItem {
                    id,
                    publisher: any_jid(&publisher)?,
                    payload,
                })
            })
            .collect()
    }

    async fn purge(&self, service: &BareJid, node: &str) -> Result<(), StoreError> {
        self.require_node(service, node).await?;
        sqlx::query("DELETE FROM pubsub_items WHERE service = $1 AND node = $2")
            .bind(service.to_string())
            .bind(node)
            .execute(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn set_affiliation(
        &self,
        service: &BareJid,
        node: &str,
        who: &BareJid,
        affiliation: Option<PubSubAffiliation>,
    ) -> Result<(), StoreError> {
        self.require_node(service, node).await?;
        match affiliation {
            Some(a) => sqlx::query(
                "INSERT INTO pubsub_affiliations (service, node, jid, affiliation) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (service, node, jid) DO UPDATE SET affiliation = excluded.affiliation",
            )
            .bind(service.to_string())
            .bind(node)
            .bind(who.to_string())
            .bind(a.as_str()),
            None => sqlx::query(
                "DELETE FROM pubsub_affiliations WHERE service = $1 AND node = $2 AND jid = $3",
            )
            .bind(service.to_string())
            .bind(node)
            .bind(who.to_string()),
        }
        .execute(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn affiliations(
        &self,
        service: &BareJid,
        node: &str,
    ) -> Result<Vec<(BareJid, PubSubAffiliation)>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT jid, affiliation FROM pubsub_affiliations \
             WHERE service = $1 AND node = $2 ORDER BY jid",
        )
        .bind(service.to_string())
        .bind(node)
        .fetch_all(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        rows.into_iter()
            .map(|(j, a)| {
                let a = PubSubAffiliation::parse(&a)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown affiliation {a:?}")))?;
                Ok((jid(&j)?, a))
            })
            .collect()
    }

    async fn set_subscription(
        &self,
        service: &BareJid,
        node: &str,
        who: &Jid,
        state: Option<SubscriptionState>,
    ) -> Result<(), StoreError> {
        self.require_node(service, node).await?;
        match state {
            Some(s) => sqlx::query(
                "INSERT INTO pubsub_subscriptions (service, node, jid, state) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (service, node, jid) DO UPDATE SET state = excluded.state",
            )
            .bind(service.to_string())
            .bind(node)
            .bind(who.to_string())
            .bind(s.as_str()),
            None => sqlx::query(
                "DELETE FROM pubsub_subscriptions WHERE service = $1 AND node = $2 AND jid = $3",
            )
            .bind(service.to_string())
            .bind(node)
            .bind(who.to_string()),
        }
        .execute(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn subscriptions(
        &self,
        service: &BareJid,
        node: &str,
    ) -> Result<Vec<(Jid, SubscriptionState)>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT jid, state FROM pubsub_subscriptions \
             WHERE service = $1 AND node = $2 ORDER BY jid",
        )
        .bind(service.to_string())
        .bind(node)
        .fetch_all(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        rows.into_iter()
            .map(|(j, s)| {
                let s = SubscriptionState::parse(&s)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown subscription {s:?}")))?;
                Ok((any_jid(&j)?, s))
            })
            .collect()
    }

    async fn subscription_options(
        &self,
        service: &BareJid,
        node: &str,
        jid: &Jid,
    ) -> Result<Option<String>, StoreError> {
        self.require_node(service, node).await?;
        sqlx::query_scalar(
            "SELECT options FROM pubsub_subscriptions \
             WHERE service = $1 AND node = $2 AND jid = $3",
        )
        .bind(service.to_string())
        .bind(node)
        .bind(jid.to_string())
        .fetch_optional(&self.pool)
        .bounded()
        .await
        .map_err(db)
    }

    async fn set_subscription_options(
        &self,
        service: &BareJid,
        node: &str,
        jid: &Jid,
        options: &str,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE pubsub_subscriptions SET options = $4 \
             WHERE service = $1 AND node = $2 AND jid = $3",
        )
        .bind(service.to_string())
        .bind(node)
        .bind(jid.to_string())
        .bind(options)
        .execute(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn subscriptions_with_options(
        &self,
        service: &BareJid,
        node: &str,
    ) -> Result<Vec<(Jid, SubscriptionState, String)>, StoreError> {
        self.require_node(service, node).await?;
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT jid, state, options FROM pubsub_subscriptions \
             WHERE service = $1 AND node = $2 ORDER BY jid",
        )
        .bind(service.to_string())
        .bind(node)
        .fetch_all(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        rows.into_iter()
            .map(|(j, s, o)| {
                let s = SubscriptionState::parse(&s)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown subscription {s:?}")))?;
                Ok((any_jid(&j)?, s, o))
            })
            .collect()
    }

    async fn remove_service(&self, service: &BareJid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM pubsub_nodes WHERE service = $1")
            .bind(service.to_string())
            .execute(&self.pool)
            .bounded()
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn feeds(&self) -> Result<Vec<StoredFeed>, StoreError> {
        type Row = (
            String,
            String,
            String,
            i64,
            i64,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT service, node, url, interval_secs, admin, etag, last_modified \
             FROM pubsub_feeds ORDER BY service, node, url",
        )
        .fetch_all(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        rows.into_iter()
            .map(
                |(service, node, url, interval, admin, etag, last_modified)| {
                    Ok(StoredFeed {
                        key: FeedKey {
                            service: jid(&service)?,
                            node,
                            url,
                        },
                        interval_secs: unsigned(interval, "feed interval")?,
                        admin: admin != 0,
                        etag,
                        last_modified,
                    })
                },
            )
            .collect()
    }

    async fn save_feed(
        &self,
        key: &FeedKey,
        interval_secs: u64,
        admin: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pubsub_feeds (service, node, url, interval_secs, admin) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (service, node, url) DO UPDATE \
             SET interval_secs = excluded.interval_secs, admin = excluded.admin",
        )
        .bind(key.service.to_string())
        .bind(&key.node)
        .bind(&key.url)
        .bind(i64::try_from(interval_secs).unwrap_or(i64::MAX))
        .bind(i64::from(admin))
        .execute(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn remove_feed(&self, key: &FeedKey) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM pubsub_feeds WHERE service = $1 AND node = $2 AND url = $3")
                .bind(key.service.to_string())
                .bind(&key.node)
                .bind(&key.url)
                .execute(&self.pool)
                .bounded()
                .await
                .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_feed_validators(
        &self,
        key: &FeedKey,
        etag: Option<&str>,
        last_modified: Option<&str>,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE pubsub_feeds SET etag = $4, last_modified = $5 \
             WHERE service = $1 AND node = $2 AND url = $3",
        )
        .bind(key.service.to_string())
        .bind(&key.node)
        .bind(&key.url)
        .bind(etag)
        .bind(last_modified)
        .execute(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn feed_seen(
        &self,
        key: &FeedKey,
        item_ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let seen: Vec<String> = sqlx::query_scalar(
            "SELECT item_id FROM pubsub_feed_seen WHERE service = $1 AND node = $2 AND url = $3",
        )
        .bind(key.service.to_string())
        .bind(&key.node)
        .bind(&key.url)
        .fetch_all(&self.pool)
        .bounded()
        .await
        .map_err(db)?;
        let seen: std::collections::HashSet<String> = seen.into_iter().collect();
        Ok(item_ids
            .iter()
            .filter(|id| seen.contains(*id))
            .cloned()
            .collect())
    }

    async fn mark_feed_seen(
        &self,
        key: &FeedKey,
        item_id: &str,
        keep: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self
            .write_tx(&format!("{}\n{}\n{}", key.service, key.node, key.url))
            .await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pubsub_feeds WHERE service = $1 AND node = $2 AND url = $3",
        )
        .bind(key.service.to_string())
        .bind(&key.node)
        .bind(&key.url)
        .fetch_one(&mut *tx)
        .bounded()
        .await
        .map_err(db)?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query(
            "DELETE FROM pubsub_feed_seen \
             WHERE service = $1 AND node = $2 AND url = $3 AND item_id = $4",
        )
        .bind(key.service.to_string())
        .bind(&key.node)
        .bind(&key.url)
        .bind(item_id)
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(db)?;
        sqlx::query(
            "INSERT INTO pubsub_feed_seen (service, node, url, item_id) VALUES ($1, $2, $3, $4)",
        )
        .bind(key.service.to_string())
        .bind(&key.node)
        .bind(&key.url)
        .bind(item_id)
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(db)?;
        sqlx::query(
            "DELETE FROM pubsub_feed_seen WHERE service = $1 AND node = $2 AND url = $3 \
             AND seq NOT IN (SELECT seq FROM pubsub_feed_seen \
             WHERE service = $1 AND node = $2 AND url = $3 ORDER BY seq DESC LIMIT $4)",
        )
        .bind(key.service.to_string())
        .bind(&key.node)
        .bind(&key.url)
        .bind(i64::try_from(keep).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(db)?;
        tx.commit().bounded().await.map_err(db)?;
        Ok(())
    }
}
