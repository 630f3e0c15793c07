//! XEP-0191: Blocking Command — each account's list of blocked JIDs.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use waxwing_proto::jid::{BareJid, Jid};

use crate::StoreError;

/// The JIDs an account blocks. Items are any JID form (`user@domain/res`,
/// `user@domain`, `domain/res`, `domain`); matching is the module's business.
#[async_trait]
pub trait BlocklistStore: Send + Sync {
    /// The owner's blocked JIDs, sorted by their string form.
    async fn list(&self, owner: &BareJid) -> Result<Vec<Jid>, StoreError>;

    /// Adds `jids` (already present ones are kept once). Durable before returning.
    async fn block(&self, owner: &BareJid, jids: &[Jid]) -> Result<(), StoreError>;

    /// Removes `jids` (absent ones are ignored). Durable before returning.
    async fn unblock(&self, owner: &BareJid, jids: &[Jid]) -> Result<(), StoreError>;

    /// Empties the list and returns what it held, sorted.
    async fn unblock_all(&self, owner: &BareJid) -> Result<Vec<Jid>, StoreError>;

    /// Forgets everything about a deleted account.
    async fn remove_user(&self, owner: &BareJid) -> Result<(), StoreError>;
}

/// Reads back a stored blocklist item.
pub(crate) fn parse_item(s: &str) -> Result<Jid, StoreError> {
    Jid::parse(s).map_err(|_| StoreError::Corrupt(format!("blocked JID {s:?} is not valid")))
}

/// In-memory blocklists for tests.
#[derive(Default)]
pub(crate) struct MemoryBlocklist {
    lists: Mutex<HashMap<BareJid, BTreeSet<String>>>,
}

impl MemoryBlocklist {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BareJid, BTreeSet<String>>> {
        self.lists.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn to_jids(set: Option<BTreeSet<String>>) -> Result<Vec<Jid>, StoreError> {
    set.unwrap_or_default()
        .iter()
        .map(|s| parse_item(s))
        .collect()
}

#[async_trait]
impl BlocklistStore for MemoryBlocklist {
    async fn list(&self, owner: &BareJid) -> Result<Vec<Jid>, StoreError> {
        to_jids(self.lock().get(owner).cloned())
    }

    async fn block(&self, owner: &BareJid, jids: &[Jid]) -> Result<(), StoreError> {
        let mut map = self.lock();
        let set = map.entry(owner.clone()).or_default();
        set.extend(jids.iter().map(Jid::to_string));
        Ok(())
    }

    async fn unblock(&self, owner: &BareJid, jids: &[Jid]) -> Result<(), StoreError> {
        let mut map = self.lock();
        if let Some(set) = map.get_mut(owner) {
            for j in jids {
                set.remove(&j.to_string());
            }
            if set.is_empty() {
                map.remove(owner);
            }
        }
        Ok(())
    }

    async fn unblock_all(&self, owner: &BareJid) -> Result<Vec<Jid>, StoreError> {
        to_jids(self.lock().remove(owner))
    }

    async fn remove_user(&self, owner: &BareJid) -> Result<(), StoreError> {
        self.lock().remove(owner);
        Ok(())
    }
}
