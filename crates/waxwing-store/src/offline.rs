//! XEP-0160: Best Practices for Handling Offline Messages

use async_trait::async_trait;
use waxwing_proto::jid::BareJid;

use crate::StoreError;

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineMessage {
    /// Increases with every push and is never reused, even after deletes,
    /// so `remove_up_to` can never catch a message that arrived later.
    pub id: i64,
    /// Serialized XML, already stamped with `<delay/>` (XEP-0203) by the caller.
    pub stanza: String,
}

/// Messages held for users who were offline.
#[async_trait]
pub trait OfflineStore: Send + Sync {
    /// Stores a message. Durable before returning. Returns `Ok(false)`
    /// without storing when the owner already has `quota` messages; the
    /// check and the insert are atomic.
    async fn push(&self, owner: &BareJid, stanza: &str, quota: u32) -> Result<bool, StoreError>;

    /// All of the owner's messages, oldest first (by id). Delivery pages
    /// with [`OfflineStore::list_page`]; this is for administration.
    async fn list(&self, owner: &BareJid) -> Result<Vec<OfflineMessage>, StoreError> {
        self.list_page(owner, i64::MIN, u32::MAX).await
    }

    /// At most `limit` of the owner's messages with `id > after`, oldest
    /// first: delivery reads a page at a time, whatever the count.
    async fn list_page(
        &self,
        owner: &BareJid,
        after: i64,
        limit: u32,
    ) -> Result<Vec<OfflineMessage>, StoreError>;

    /// Deletes messages with `id <= up_to` and returns how many. Called once
    /// the client has them (acknowledged, or written to its socket), so a
    /// crash in between redelivers rather than loses.
    async fn remove_up_to(&self, owner: &BareJid, up_to: i64) -> Result<u64, StoreError>;

    /// How many messages the owner has.
    async fn count(&self, owner: &BareJid) -> Result<u64, StoreError>;

    /// Every account with at least one message, in no particular order.
    async fn owners(&self) -> Result<Vec<BareJid>, StoreError>;
}
