//! Per-account XML fragments keyed by a string: XEP-0049 private XML
//! storage (key `{namespace}name`) and XEP-0054 vCard-temp (key `vcard-temp`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use waxwing_proto::jid::BareJid;

use crate::StoreError;

/// Opaque serialized XML per `(owner, key)`. The store never parses it.
#[async_trait]
pub trait PrivateXmlStore: Send + Sync {
    /// The fragment stored under `key`, if any.
    async fn get(&self, owner: &BareJid, key: &str) -> Result<Option<String>, StoreError>;

    /// Stores (or replaces) the fragment under `key`. Durable before returning.
    async fn set(&self, owner: &BareJid, key: &str, xml: &str) -> Result<(), StoreError>;

    /// Forgets every fragment of a deleted account.
    async fn remove_user(&self, owner: &BareJid) -> Result<(), StoreError>;

    /// Every key `owner` has a fragment under, sorted (for exports).
    async fn keys(&self, owner: &BareJid) -> Result<Vec<String>, StoreError>;
}

/// In-memory fragments for tests.
#[derive(Default)]
pub(crate) struct MemoryPrivateXml {
    data: Mutex<HashMap<BareJid, BTreeMap<String, String>>>,
}

impl MemoryPrivateXml {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BareJid, BTreeMap<String, String>>> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl PrivateXmlStore for MemoryPrivateXml {
    async fn get(&self, owner: &BareJid, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().get(owner).and_then(|m| m.get(key)).cloned())
    }

    async fn set(&self, owner: &BareJid, key: &str, xml: &str) -> Result<(), StoreError> {
        self.lock()
            .entry(owner.clone())
            .or_default()
            .insert(key.to_owned(), xml.to_owned());
        Ok(())
    }

    async fn keys(&self, owner: &BareJid) -> Result<Vec<String>, StoreError> {
        Ok(self
            .lock()
            .get(owner)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn remove_user(&self, owner: &BareJid) -> Result<(), StoreError> {
        self.lock().remove(owner);
        Ok(())
    }
}
