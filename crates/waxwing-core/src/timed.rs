//! Storage latency for `waxwing_storage_seconds{store,op}`: the stores on
//! the login and delivery paths (accounts, rosters, offline messages)
//! wrapped so that every call is timed, whatever the backend.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use waxwing_proto::jid::BareJid;
use waxwing_store::{
    AccountStore, LoginRead, OfflineMessage, OfflineStore, RosterItem, RosterStore, StoreError,
    StoredSecret, Stores,
};

use crate::metrics::{Histograms, StorageLabels};

struct Timed<T: ?Sized> {
    inner: Arc<T>,
    store: &'static str,
    seconds: Histograms,
}

impl<T: ?Sized> Timed<T> {
    fn observe(&self, op: &'static str, since: Instant) {
        self.seconds
            .get_or_create(&StorageLabels {
                store: self.store,
                op,
            })
            .observe(since.elapsed().as_secs_f64());
    }
}

/// Wraps `stores`' accounts, roster and offline stores to time their calls.
pub(crate) fn wrap(mut stores: Stores, seconds: &Histograms) -> Stores {
    stores.accounts = Arc::new(Timed {
        inner: stores.accounts,
        store: "accounts",
        seconds: seconds.clone(),
    });
    stores.roster = Arc::new(Timed {
        inner: stores.roster,
        store: "roster",
        seconds: seconds.clone(),
    });
    stores.offline = Arc::new(Timed {
        inner: stores.offline,
        store: "offline",
        seconds: seconds.clone(),
    });
    stores
}

macro_rules! timed {
    ($self:ident, $op:literal, $call:expr) => {{
        let t = Instant::now();
        let r = $call.await;
        $self.observe($op, t);
        r
    }};
}

#[async_trait]
impl AccountStore for Timed<dyn AccountStore> {
    async fn create(&self, user: &BareJid, secrets: &[StoredSecret]) -> Result<(), StoreError> {
        timed!(self, "create", self.inner.create(user, secrets))
    }
    async fn secrets(&self, user: &BareJid) -> Result<Option<Vec<StoredSecret>>, StoreError> {
        timed!(self, "secrets", self.inner.secrets(user))
    }
    async fn set_secrets(
        &self,
        user: &BareJid,
        secrets: &[StoredSecret],
    ) -> Result<(), StoreError> {
        timed!(self, "set_secrets", self.inner.set_secrets(user, secrets))
    }
    async fn delete(&self, user: &BareJid) -> Result<(), StoreError> {
        timed!(self, "delete", self.inner.delete(user))
    }
    async fn exists(&self, user: &BareJid) -> Result<bool, StoreError> {
        timed!(self, "exists", self.inner.exists(user))
    }
    async fn list(&self, domain: Option<&str>) -> Result<Vec<BareJid>, StoreError> {
        timed!(self, "list", self.inner.list(domain))
    }
    async fn count(&self, domain: Option<&str>) -> Result<u64, StoreError> {
        timed!(self, "count", self.inner.count(domain))
    }
    async fn login_reads(&self, user: &BareJid, fragment: &str) -> Result<LoginRead, StoreError> {
        timed!(self, "login_reads", self.inner.login_reads(user, fragment))
    }
}

#[async_trait]
impl RosterStore for Timed<dyn RosterStore> {
    async fn items(&self, owner: &BareJid) -> Result<Vec<RosterItem>, StoreError> {
        timed!(self, "items", self.inner.items(owner))
    }
    async fn get(
        &self,
        owner: &BareJid,
        contact: &BareJid,
    ) -> Result<Option<RosterItem>, StoreError> {
        timed!(self, "get", self.inner.get(owner, contact))
    }
    async fn put(&self, owner: &BareJid, item: &RosterItem) -> Result<u64, StoreError> {
        timed!(self, "put", self.inner.put(owner, item))
    }
    async fn remove(&self, owner: &BareJid, contact: &BareJid) -> Result<u64, StoreError> {
        timed!(self, "remove", self.inner.remove(owner, contact))
    }
    async fn version(&self, owner: &BareJid) -> Result<u64, StoreError> {
        timed!(self, "version", self.inner.version(owner))
    }
    async fn forget_version(&self, owner: &BareJid) -> Result<(), StoreError> {
        timed!(self, "forget_version", self.inner.forget_version(owner))
    }
    async fn owners_of(&self, contact: &BareJid) -> Result<Vec<(BareJid, RosterItem)>, StoreError> {
        timed!(self, "owners_of", self.inner.owners_of(contact))
    }
}

#[async_trait]
impl OfflineStore for Timed<dyn OfflineStore> {
    async fn push(&self, owner: &BareJid, stanza: &str, quota: u32) -> Result<bool, StoreError> {
        timed!(self, "push", self.inner.push(owner, stanza, quota))
    }
    async fn list_page(
        &self,
        owner: &BareJid,
        after: i64,
        limit: u32,
    ) -> Result<Vec<OfflineMessage>, StoreError> {
        timed!(self, "list_page", self.inner.list_page(owner, after, limit))
    }
    async fn remove_up_to(&self, owner: &BareJid, up_to: i64) -> Result<u64, StoreError> {
        timed!(self, "remove_up_to", self.inner.remove_up_to(owner, up_to))
    }
    async fn count(&self, owner: &BareJid) -> Result<u64, StoreError> {
        timed!(self, "count", self.inner.count(owner))
    }
    async fn owners(&self) -> Result<Vec<BareJid>, StoreError> {
        timed!(self, "owners", self.inner.owners())
    }
}
