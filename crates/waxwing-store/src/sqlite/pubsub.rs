//! Publish-subscribe nodes, items, affiliations and subscriptions.

use async_trait::async_trait;
use waxwing_proto::jid::{BareJid, Jid};

use super::{SqliteStore, db, jid};
use crate::StoreError;
use crate::pubsub::{PubSubAffiliation, PubSubItem, PubSubStore, SubscriptionState};

fn any_jid(s: &str) -> Result<Jid, StoreError> {
    Jid::parse(s).map_err(|_| StoreError::Corrupt(format!("stored JID {s:?} is not valid")))
}

impl SqliteStore {
    async fn node_exists(&self, service: &BareJid, node: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pubsub_nodes WHERE service = $1 AND node = $2",
        )
        .bind(service.to_string())
        .bind(node)
        .fetch_one(&self.pool)
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
impl PubSubStore for SqliteStore {
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
        let mut tx = self.write_tx().await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pubsub_nodes WHERE service = $1 AND node = $2",
        )
        .bind(service.to_string())
        .bind(node)
        .fetch_one(&mut *tx)
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
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
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

    async fn remove_service(&self, service: &BareJid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM pubsub_nodes WHERE service = $1")
            .bind(service.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }
}
