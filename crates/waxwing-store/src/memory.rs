//! In-memory stores for tests: same contract as SQLite, nothing on disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use waxwing_proto::jid::BareJid;

use crate::accounts::normalize_secrets;
use crate::muc::{MucStore, RoomAffiliation, RoomRecord, StoredRoom};
use crate::roster::{normalize_groups, visible_change};
use crate::{
    AccountStore, OfflineMessage, OfflineStore, RosterItem, RosterStore, StoreError, StoredSecret,
    Stores,
};

/// Fresh, empty in-memory stores. Clones of the returned [`Stores`] share data.
pub fn memory() -> Stores {
    let m = Arc::new(Memory::default());
    Stores {
        accounts: m.clone(),
        archive: Arc::new(crate::archive::MemoryArchive::default()),
        blocklist: Arc::new(crate::blocklist::MemoryBlocklist::default()),
        private_xml: Arc::new(crate::private_xml::MemoryPrivateXml::default()),
        last_activity: Arc::new(crate::last::MemoryLastActivity::default()),
        reputation: Arc::new(crate::reputation::MemoryReputation::default()),
        invites: Arc::new(crate::invites::MemoryInvites::default()),
        roster: m.clone(),
        offline: m,
        muc: Arc::new(MemoryMuc::default()),
        pubsub: Arc::new(crate::pubsub::MemoryPubSub::default()),
    }
}

/// One lock over all three concerns, so that account deletion is atomic
/// across them as it is in SQL. A `std` mutex, not tokio's: it is never held
/// across an `.await` (no method awaits anything), and it is cheaper.
#[derive(Default)]
struct Memory {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    accounts: BTreeMap<BareJid, Vec<StoredSecret>>,
    rosters: HashMap<BareJid, BTreeMap<BareJid, RosterItem>>,
    /// Kept after an owner's rows are gone, as SQL keeps `roster_versions`.
    versions: HashMap<BareJid, u64>,
    offline: HashMap<BareJid, Vec<OfflineMessage>>,
    /// Last id handed out; ids are global and never reused, like AUTOINCREMENT.
    last_offline_id: i64,
}

impl Memory {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves no half-applied change that
        // matters to a test store, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn version(&self, owner: &BareJid) -> u64 {
        self.versions.get(owner).copied().unwrap_or(0)
    }

    fn bump(&mut self, owner: &BareJid) -> u64 {
        let v = self.versions.entry(owner.clone()).or_insert(0);
        *v += 1;
        *v
    }
}

#[async_trait]
impl AccountStore for Memory {
    async fn create(&self, user: &BareJid, secrets: &[StoredSecret]) -> Result<(), StoreError> {
        let mut st = self.lock();
        if st.accounts.contains_key(user) {
            return Err(StoreError::AlreadyExists);
        }
        st.accounts.insert(user.clone(), normalize_secrets(secrets));
        Ok(())
    }

    async fn secrets(&self, user: &BareJid) -> Result<Option<Vec<StoredSecret>>, StoreError> {
        Ok(self.lock().accounts.get(user).cloned())
    }

    async fn set_secrets(
        &self,
        user: &BareJid,
        secrets: &[StoredSecret],
    ) -> Result<(), StoreError> {
        let mut st = self.lock();
        let slot = st.accounts.get_mut(user).ok_or(StoreError::NotFound)?;
        *slot = normalize_secrets(secrets);
        Ok(())
    }

    async fn delete(&self, user: &BareJid) -> Result<(), StoreError> {
        let mut st = self.lock();
        if st.accounts.remove(user).is_none() {
            return Err(StoreError::NotFound);
        }
        let had_visible = st
            .rosters
            .remove(user)
            .is_some_and(|r| r.values().any(|i| i.in_roster));
        if had_visible {
            st.bump(user);
        }
        st.offline.remove(user);
        Ok(())
    }

    async fn exists(&self, user: &BareJid) -> Result<bool, StoreError> {
        Ok(self.lock().accounts.contains_key(user))
    }

    async fn list(&self, domain: Option<&str>) -> Result<Vec<BareJid>, StoreError> {
        Ok(self
            .lock()
            .accounts
            .keys()
            .filter(|j| domain.is_none_or(|d| j.domain() == d))
            .cloned()
            .collect())
    }

    async fn count(&self, domain: Option<&str>) -> Result<u64, StoreError> {
        let st = self.lock();
        let n = st
            .accounts
            .keys()
            .filter(|j| domain.is_none_or(|d| j.domain() == d))
            .count();
        Ok(n as u64)
    }
}

#[async_trait]
impl RosterStore for Memory {
    async fn items(&self, owner: &BareJid) -> Result<Vec<RosterItem>, StoreError> {
        Ok(self
            .lock()
            .rosters
            .get(owner)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn get(
        &self,
        owner: &BareJid,
        contact: &BareJid,
    ) -> Result<Option<RosterItem>, StoreError> {
        Ok(self
            .lock()
            .rosters
            .get(owner)
            .and_then(|r| r.get(contact))
            .cloned())
    }

    async fn put(&self, owner: &BareJid, item: &RosterItem) -> Result<u64, StoreError> {
        let mut new = item.clone();
        new.groups = normalize_groups(&item.groups);
        let mut st = self.lock();
        let old = st
            .rosters
            .entry(owner.clone())
            .or_default()
            .insert(new.contact.clone(), new.clone());
        Ok(if visible_change(old.as_ref(), Some(&new)) {
            st.bump(owner)
        } else {
            st.version(owner)
        })
    }

    async fn remove(&self, owner: &BareJid, contact: &BareJid) -> Result<u64, StoreError> {
        let mut st = self.lock();
        let old = st.rosters.get_mut(owner).and_then(|r| r.remove(contact));
        if st.rosters.get(owner).is_some_and(|r| r.is_empty()) {
            st.rosters.remove(owner);
        }
        Ok(if visible_change(old.as_ref(), None) {
            st.bump(owner)
        } else {
            st.version(owner)
        })
    }

    async fn version(&self, owner: &BareJid) -> Result<u64, StoreError> {
        Ok(self.lock().version(owner))
    }

    async fn forget_version(&self, owner: &BareJid) -> Result<(), StoreError> {
        self.lock().versions.remove(owner);
        Ok(())
    }

    async fn owners_of(&self, contact: &BareJid) -> Result<Vec<(BareJid, RosterItem)>, StoreError> {
        let st = self.lock();
        let mut out: Vec<(BareJid, RosterItem)> = st
            .rosters
            .iter()
            .filter_map(|(owner, r)| r.get(contact).map(|i| (owner.clone(), i.clone())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

#[async_trait]
impl OfflineStore for Memory {
    async fn push(&self, owner: &BareJid, stanza: &str, quota: u32) -> Result<bool, StoreError> {
        let mut st = self.lock();
        let held = st.offline.get(owner).map_or(0, Vec::len);
        if held >= quota as usize {
            return Ok(false);
        }
        st.last_offline_id += 1;
        let id = st.last_offline_id;
        st.offline
            .entry(owner.clone())
            .or_default()
            .push(OfflineMessage {
                id,
                stanza: stanza.to_owned(),
            });
        Ok(true)
    }

    async fn list_page(
        &self,
        owner: &BareJid,
        after: i64,
        limit: u32,
    ) -> Result<Vec<OfflineMessage>, StoreError> {
        Ok(self.lock().offline.get(owner).map_or_else(Vec::new, |q| {
            q.iter()
                .filter(|m| m.id > after)
                .take(limit as usize)
                .cloned()
                .collect()
        }))
    }

    async fn remove_up_to(&self, owner: &BareJid, up_to: i64) -> Result<u64, StoreError> {
        let mut st = self.lock();
        let Some(queue) = st.offline.get_mut(owner) else {
            return Ok(0);
        };
        let before = queue.len();
        queue.retain(|m| m.id > up_to);
        let removed = (before - queue.len()) as u64;
        if queue.is_empty() {
            st.offline.remove(owner);
        }
        Ok(removed)
    }

    async fn count(&self, owner: &BareJid) -> Result<u64, StoreError> {
        Ok(self.lock().offline.get(owner).map_or(0, |q| q.len() as u64))
    }

    async fn owners(&self) -> Result<Vec<BareJid>, StoreError> {
        Ok(self
            .lock()
            .offline
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(owner, _)| owner.clone())
            .collect())
    }
}

/// MUC rooms in memory. Their own lock: no other concern touches them.
#[derive(Default)]
struct MemoryMuc {
    rooms: Mutex<BTreeMap<BareJid, StoredRoom>>,
}

impl MemoryMuc {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<BareJid, StoredRoom>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl MucStore for MemoryMuc {
    async fn replace_room(&self, room: &StoredRoom) -> Result<(), StoreError> {
        let mut room = room.clone();
        room.affiliations.sort_by(|a, b| a.jid.cmp(&b.jid));
        room.affiliations.dedup_by(|b, a| {
            // Same JID twice: the later row wins, as with SQL upserts.
            if a.jid == b.jid {
                std::mem::swap(a, b);
                true
            } else {
                false
            }
        });
        let mut nicks: Vec<_> = room
            .affiliations
            .iter()
            .filter_map(|a| a.nick.as_ref())
            .collect();
        nicks.sort();
        if nicks.windows(2).any(|w| w[0] == w[1]) {
            return Err(StoreError::AlreadyExists);
        }
        self.lock().insert(room.room.jid.clone(), room);
        Ok(())
    }

    async fn save_room(&self, room: &RoomRecord) -> Result<(), StoreError> {
        let mut rooms = self.lock();
        let slot = rooms.get_mut(&room.jid).ok_or(StoreError::NotFound)?;
        slot.room = room.clone();
        Ok(())
    }

    async fn set_affiliation(
        &self,
        room: &BareJid,
        item: &RoomAffiliation,
    ) -> Result<(), StoreError> {
        let mut rooms = self.lock();
        let slot = rooms.get_mut(room).ok_or(StoreError::NotFound)?;
        if item.nick.is_some()
            && slot
                .affiliations
                .iter()
                .any(|a| a.jid != item.jid && a.nick == item.nick)
        {
            return Err(StoreError::AlreadyExists);
        }
        match slot.affiliations.binary_search_by(|a| a.jid.cmp(&item.jid)) {
            Ok(i) => slot.affiliations[i] = item.clone(),
            Err(i) => slot.affiliations.insert(i, item.clone()),
        }
        Ok(())
    }

    async fn remove_affiliation(&self, room: &BareJid, jid: &BareJid) -> Result<(), StoreError> {
        if let Some(slot) = self.lock().get_mut(room) {
            slot.affiliations.retain(|a| &a.jid != jid);
        }
        Ok(())
    }

    async fn rooms(&self, domain: &str) -> Result<Vec<StoredRoom>, StoreError> {
        Ok(self
            .lock()
            .values()
            .filter(|r| r.room.jid.domain() == domain)
            .cloned()
            .collect())
    }

    async fn delete_room(&self, room: &BareJid) -> Result<(), StoreError> {
        self.lock()
            .remove(room)
            .map(|_| ())
            .ok_or(StoreError::NotFound)
    }
}
