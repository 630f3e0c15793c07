//! XEP-0012: Last Activity — when each account's last session ended.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use waxwing_proto::jid::BareJid;

use crate::StoreError;

/// The end of an account's last session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastActivity {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The `<status/>` of the last unavailable presence; empty if none.
    pub status: String,
}

/// Last logout per account.
#[async_trait]
pub trait LastActivityStore: Send + Sync {
    /// The account's last logout, if it ever logged out.
    async fn get(&self, user: &BareJid) -> Result<Option<LastActivity>, StoreError>;

    /// Records a logout, replacing the previous one. Durable before returning.
    async fn set(&self, user: &BareJid, last: &LastActivity) -> Result<(), StoreError> {
        self.set_many(&[(user.clone(), last.clone())]).await
    }

    /// Records several accounts' logouts at once (one commit), each
    /// replacing that account's previous one; of two entries for one
    /// account the later wins. Durable before returning.
    async fn set_many(&self, entries: &[(BareJid, LastActivity)]) -> Result<(), StoreError>;

    /// Forgets a deleted account.
    async fn remove_user(&self, user: &BareJid) -> Result<(), StoreError>;
}

/// In-memory last activity for tests.
#[derive(Default)]
pub(crate) struct MemoryLastActivity {
    data: Mutex<HashMap<BareJid, LastActivity>>,
}

impl MemoryLastActivity {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BareJid, LastActivity>> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl LastActivityStore for MemoryLastActivity {
    async fn get(&self, user: &BareJid) -> Result<Option<LastActivity>, StoreError> {
        Ok(self.lock().get(user).cloned())
    }

    async fn set_many(&self, entries: &[(BareJid, LastActivity)]) -> Result<(), StoreError> {
        let mut data = self.lock();
        for (user, last) in entries {
            data.insert(user.clone(), last.clone());
        }
        Ok(())
    }

    async fn remove_user(&self, user: &BareJid) -> Result<(), StoreError> {
        self.lock().remove(user);
        Ok(())
    }
}
