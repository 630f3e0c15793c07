//! XEP-0313: Message Archive Management storage, shared by user archives
//! and MUC room archives: same shape, keyed by [`ArchiveOwner`].
//!
//! Order is the order of [`ArchiveStore::append`] (a per-store sequence),
//! never the timestamp: XEP-0313 §3 warns that messages share timestamps
//! and clocks step backwards. Ids are opaque, unique and never reused.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use waxwing_proto::jid::{BareJid, Jid};

use crate::StoreError;

/// Whose archive: a local account's or a chat room's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ArchiveOwner {
    /// A user's archive, exposed on the account's bare JID.
    User(BareJid),
    /// A MUC room's archive, exposed on the room's bare JID.
    Room(BareJid),
}

/// The kind of an [`ArchiveOwner`], for operations over all archives of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OwnerKind {
    /// User archives.
    User,
    /// Room archives.
    Room,
}

impl OwnerKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::User => "user",
            OwnerKind::Room => "room",
        }
    }
}

impl ArchiveOwner {
    /// User or room.
    pub fn kind(&self) -> OwnerKind {
        match self {
            ArchiveOwner::User(_) => OwnerKind::User,
            ArchiveOwner::Room(_) => OwnerKind::Room,
        }
    }

    /// The archive's address.
    pub fn jid(&self) -> &BareJid {
        match self {
            ArchiveOwner::User(j) | ArchiveOwner::Room(j) => j,
        }
    }
}

/// An item to archive.
#[derive(Debug, Clone, Copy)]
pub struct NewItem<'a> {
    /// The other party: for a user archive the contact (`to` of an outgoing
    /// message, `from` of an incoming one); for a room the occupant's real
    /// JID or occupant JID. Queries filter on it (XEP-0313 `with`).
    pub with: &'a Jid,
    /// When the server received the message.
    pub stamp: SystemTime,
    /// The serialized stanza, as received.
    pub stanza: &'a str,
}

/// An archived item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The archive UID (XEP-0359 stanza-id).
    pub id: String,
    /// When the server received the message (millisecond precision).
    pub stamp: SystemTime,
    /// See [`NewItem::with`].
    pub with: Jid,
    /// The serialized stanza.
    pub stanza: String,
}

/// A query: the filters of the XEP-0313 form, then the RSM (XEP-0059) page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveQuery {
    /// A bare JID matches every resource; a full JID only itself.
    pub with: Option<Jid>,
    /// Items stamped at or after this instant.
    pub start: Option<SystemTime>,
    /// Items stamped at or before this instant.
    pub end: Option<SystemTime>,
    /// Form `after-id`: items strictly after this one (part of the result set).
    pub after_id: Option<String>,
    /// Form `before-id`: items strictly before this one (part of the result set).
    pub before_id: Option<String>,
    /// Form `ids`: only these items. Empty means no such filter.
    pub ids: Vec<String>,
    /// RSM `<after>`: the page starts after this item.
    pub after: Option<String>,
    /// RSM `<before>`: the page ends before this item and is filled from the
    /// end. `Some("")` (an empty `<before/>`) asks for the last page.
    pub before: Option<String>,
    /// Page size, already limited by the caller. 0 asks for the count only.
    pub max: usize,
    /// Return the page newest first (XEP-0313 `<flip-page/>`); the page
    /// itself is the same.
    pub flip_page: bool,
}

impl ArchiveQuery {
    /// True when the page is filled from its end (RSM `<before>`).
    pub fn backwards(&self) -> bool {
        self.before.is_some()
    }
}

/// One page of results with the numbers RSM reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// In archive order, or reversed with `flip_page`.
    pub items: Vec<T>,
    /// Items in the whole result set (the form filters, not the RSM bounds).
    pub count: u64,
    /// Position in the result set of the oldest item of the page.
    pub first_index: Option<u64>,
    /// True when the page was not cut by `max` in its paging direction:
    /// paging forwards, nothing follows it; backwards, nothing precedes it.
    pub complete: bool,
}

impl Page<Item> {
    /// RSM `<first>`: the id of the first item as returned.
    pub fn first_id(&self) -> Option<&str> {
        self.items.first().map(|i| i.id.as_str())
    }

    /// RSM `<last>`: the id of the last item as returned.
    pub fn last_id(&self) -> Option<&str> {
        self.items.last().map(|i| i.id.as_str())
    }
}

/// XEP-0441 default archiving policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultPolicy {
    /// Archive every message.
    #[default]
    Always,
    /// Archive nothing (except JIDs in `always`).
    Never,
    /// Archive messages with contacts in the roster.
    Roster,
}

impl DefaultPolicy {
    /// The XML and stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::Always => "always",
            DefaultPolicy::Never => "never",
            DefaultPolicy::Roster => "roster",
        }
    }

    /// Parses the XML and stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(DefaultPolicy::Always),
            "never" => Some(DefaultPolicy::Never),
            "roster" => Some(DefaultPolicy::Roster),
            _ => None,
        }
    }
}

/// A user's archiving preferences (XEP-0441, `<prefs/>` of XEP-0313).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArchivePrefs {
    /// Policy for JIDs in neither list.
    pub default: DefaultPolicy,
    /// Always archived. Sorted, without duplicates once stored.
    pub always: Vec<Jid>,
    /// Never archived; wins over `always`. Sorted, without duplicates once stored.
    pub never: Vec<Jid>,
}

impl ArchivePrefs {
    /// Sorts and deduplicates the lists; a JID in both is only in `never`.
    pub fn normalized(&self) -> Self {
        let mut never = self.never.clone();
        never.sort();
        never.dedup();
        let mut always: Vec<Jid> = self
            .always
            .iter()
            .filter(|j| !never.contains(j))
            .cloned()
            .collect();
        always.sort();
        always.dedup();
        ArchivePrefs {
            default: self.default,
            always,
            never,
        }
    }
}

/// Message archives (XEP-0313), for users and rooms.
#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// Archives an item and returns its new unique id. Durable before returning.
    async fn append(&self, owner: &ArchiveOwner, item: NewItem<'_>) -> Result<String, StoreError>;

    /// One page of the owner's archive. `NotFound` when an id named in
    /// `after_id`, `before_id`, `ids`, `after` or a non-empty `before` is
    /// not in this owner's archive (XEP-0313 requires item-not-found).
    async fn query(&self, owner: &ArchiveOwner, q: &ArchiveQuery)
    -> Result<Page<Item>, StoreError>;

    /// Deletes the items of every archive of `kind` stamped before `cutoff`
    /// (retention) and returns how many. Ids are never reused afterwards.
    async fn purge_before(&self, kind: OwnerKind, cutoff: SystemTime) -> Result<u64, StoreError>;

    /// Deletes an archive and, for a user, the preferences (account
    /// deletion, room destruction). Returns how many items went.
    async fn remove(&self, owner: &ArchiveOwner) -> Result<u64, StoreError>;

    /// Replaces the stanza of one item, keeping its id, stamp, `with` and
    /// place in the order: a tombstone for a moderated message (XEP-0425).
    /// `NotFound` when the id is not in this owner's archive.
    async fn replace(&self, owner: &ArchiveOwner, id: &str, stanza: &str)
    -> Result<(), StoreError>;

    /// A user's preferences, `None` if never set.
    async fn prefs(&self, user: &BareJid) -> Result<Option<ArchivePrefs>, StoreError>;

    /// Replaces a user's preferences (stored normalized, see [`ArchivePrefs::normalized`]).
    async fn set_prefs(&self, user: &BareJid, prefs: &ArchivePrefs) -> Result<(), StoreError>;
}

/// Milliseconds since the Unix epoch, negative before it.
pub(crate) fn to_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The inverse of [`to_millis`].
pub(crate) fn from_millis(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// A fresh archive id: 20 characters of Crockford base32 over 48 bits of
/// milliseconds and 52 unpredictable bits. Roughly time-ordered (readable in
/// logs, index-friendly), but order comes from the store's sequence; the
/// stores also enforce uniqueness and draw again on a collision.
pub fn new_archive_id(now: SystemTime) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let ms = u128::try_from(to_millis(now).max(0)).unwrap_or(0) & ((1 << 48) - 1);
    let value = (ms << 52) | u128::from(random_u52());
    let mut out = String::with_capacity(20);
    for i in (0..20).rev() {
        out.push(ALPHABET[((value >> (i * 5)) & 31) as usize] as char);
    }
    out
}

/// 52 bits no client can predict, without a random-number crate: SipHash
/// under `RandomState`'s per-process random keys, over a counter and the clock.
fn random_u52() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() >> 12
}

impl fmt::Display for ArchiveOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind().as_str(), self.jid())
    }
}

/// The in-memory archive of [`crate::memory()`]: same contract as SQLite.
#[derive(Default)]
pub(crate) struct MemoryArchive {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    /// Last sequence number handed out; global, like AUTOINCREMENT.
    last_seq: i64,
    archives: HashMap<ArchiveOwner, Vec<(i64, Item)>>,
    /// Every id ever handed out, so none is reused after a purge.
    issued: HashSet<String>,
    prefs: HashMap<BareJid, ArchivePrefs>,
}

impl MemoryArchive {
    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        // Never held across an `.await`; poisoning leaves nothing half-done that matters here.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn with_matches(filter: &Jid, with: &Jid) -> bool {
    match filter {
        Jid::Bare(b) => with.bare() == b,
        Jid::Full(_) => with == filter,
    }
}

#[async_trait]
impl ArchiveStore for MemoryArchive {
    async fn append(&self, owner: &ArchiveOwner, item: NewItem<'_>) -> Result<String, StoreError> {
        let mut st = self.lock();
        let id = loop {
            let id = new_archive_id(SystemTime::now());
            if st.issued.insert(id.clone()) {
                break id;
            }
        };
        st.last_seq += 1;
        let seq = st.last_seq;
        st.archives.entry(owner.clone()).or_default().push((
            seq,
            Item {
                id: id.clone(),
                // Millisecond precision, as stored by SQL.
                stamp: from_millis(to_millis(item.stamp)),
                with: item.with.clone(),
                stanza: item.stanza.to_owned(),
            },
        ));
        Ok(id)
    }

    async fn query(
        &self,
        owner: &ArchiveOwner,
        q: &ArchiveQuery,
    ) -> Result<Page<Item>, StoreError> {
        let st = self.lock();
        let empty = Vec::new();
        let all = st.archives.get(owner).unwrap_or(&empty);
        let seq_of = |id: &Option<String>| -> Result<Option<i64>, StoreError> {
            match id.as_deref() {
                None | Some("") => Ok(None),
                Some(id) => all
                    .iter()
                    .find(|(_, i)| i.id == id)
                    .map(|(s, _)| Some(*s))
                    .ok_or(StoreError::NotFound),
            }
        };
        let after_seq = seq_of(&q.after_id)?;
        let before_seq = seq_of(&q.before_id)?;
        let page_after = seq_of(&q.after)?;
        let page_before = seq_of(&q.before)?;
        let mut ids = Vec::new();
        for id in &q.ids {
            ids.push(seq_of(&Some(id.clone()))?.unwrap_or_default());
        }
        let (start, end) = (q.start.map(to_millis), q.end.map(to_millis));
        let set: Vec<&(i64, Item)> = all
            .iter()
            .filter(|(seq, item)| {
                let stamp = to_millis(item.stamp);
                q.with.as_ref().is_none_or(|w| with_matches(w, &item.with))
                    && start.is_none_or(|s| stamp >= s)
                    && end.is_none_or(|e| stamp <= e)
                    && after_seq.is_none_or(|a| *seq > a)
                    && before_seq.is_none_or(|b| *seq < b)
                    && (q.ids.is_empty() || ids.contains(seq))
            })
            .collect();
        let in_page: Vec<usize> = set
            .iter()
            .enumerate()
            .filter(|(_, (seq, _))| {
                page_after.is_none_or(|a| *seq > a) && page_before.is_none_or(|b| *seq < b)
            })
            .map(|(i, _)| i)
            .collect();
        let complete = in_page.len() <= q.max;
        let chosen: &[usize] = if q.backwards() {
            &in_page[in_page.len().saturating_sub(q.max)..]
        } else {
            &in_page[..in_page.len().min(q.max)]
        };
        let mut items: Vec<Item> = chosen.iter().map(|&i| set[i].1.clone()).collect();
        if q.flip_page {
            items.reverse();
        }
        Ok(Page {
            items,
            count: set.len() as u64,
            first_index: chosen.first().map(|&i| i as u64),
            complete,
        })
    }

    async fn purge_before(&self, kind: OwnerKind, cutoff: SystemTime) -> Result<u64, StoreError> {
        let cutoff = to_millis(cutoff);
        let mut st = self.lock();
        let mut n = 0;
        for (owner, items) in st.archives.iter_mut() {
            if owner.kind() == kind {
                let before = items.len();
                items.retain(|(_, i)| to_millis(i.stamp) >= cutoff);
                n += (before - items.len()) as u64;
            }
        }
        st.archives.retain(|_, items| !items.is_empty());
        Ok(n)
    }

    async fn remove(&self, owner: &ArchiveOwner) -> Result<u64, StoreError> {
        let mut st = self.lock();
        if let ArchiveOwner::User(user) = owner {
            st.prefs.remove(user);
        }
        Ok(st.archives.remove(owner).map_or(0, |v| v.len() as u64))
    }

    async fn replace(
        &self,
        owner: &ArchiveOwner,
        id: &str,
        stanza: &str,
    ) -> Result<(), StoreError> {
        let mut st = self.lock();
        let item = st
            .archives
            .get_mut(owner)
            .and_then(|items| items.iter_mut().find(|(_, i)| i.id == id))
            .ok_or(StoreError::NotFound)?;
        item.1.stanza = stanza.to_string();
        Ok(())
    }

    async fn prefs(&self, user: &BareJid) -> Result<Option<ArchivePrefs>, StoreError> {
        Ok(self.lock().prefs.get(user).cloned())
    }

    async fn set_prefs(&self, user: &BareJid, prefs: &ArchivePrefs) -> Result<(), StoreError> {
        self.lock().prefs.insert(user.clone(), prefs.normalized());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_ordered_by_time() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let a = new_archive_id(t);
        let b = new_archive_id(t);
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
        assert_eq!(a[..9], b[..9], "same millisecond, same prefix");
        let later = new_archive_id(t + Duration::from_millis(1));
        assert!(later > a && later > b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );
        let many: std::collections::HashSet<_> = (0..10_000).map(|_| new_archive_id(t)).collect();
        assert_eq!(many.len(), 10_000);
    }

    #[test]
    fn millis_round_trip_both_sides_of_the_epoch() {
        for ms in [0, 1, -1, 1_795_000_000_123, -86_400_000] {
            assert_eq!(to_millis(from_millis(ms)), ms);
        }
    }

    #[test]
    fn prefs_normalize() {
        let j = |s: &str| Jid::parse(s).unwrap();
        let p = ArchivePrefs {
            default: DefaultPolicy::Roster,
            always: vec![j("b@x"), j("a@x"), j("b@x"), j("c@x")],
            never: vec![j("c@x")],
        }
        .normalized();
        assert_eq!(p.always, vec![j("a@x"), j("b@x")]);
        assert_eq!(p.never, vec![j("c@x")]);
    }
}
