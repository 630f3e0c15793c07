//! Secrets and rosters of recently seen accounts, kept in memory in front
//! of the account and roster stores (`[storage] cache_accounts`).
//!
//! A login reads the account's SCRAM secrets, then its avatar hash (kept
//! in private XML) and its roster for the initial presence broadcast, and
//! the roster again for the unavailable one at logout; every presence
//! between contacts looks up one roster row. On SQLite
//! each of those is a round trip to the connection's thread and back
//! (sqlx runs statements there), which cost more CPU than the SCRAM
//! exchange itself. Here they are answered from memory once the account has
//! been seen.
//!
//! Writes go to the store first and then drop the account's entry
//! (write-through with invalidation, never a cached copy of what was
//! written): the next read loads what the store has. Every write method of
//! [`AccountStore`] and [`RosterStore`] that touches an account's secrets or
//! rows invalidates that account, so a password change, an account deletion
//! and every roster change (including the other side of a subscription,
//! which writes the contact's roster through the same trait) are seen by the
//! next read.
//!
//! A login that finds no secrets here asks the store for its three reads at
//! once ([`AccountStore::login_reads`]: one round trip on SQLite) and keeps
//! the roster and the avatar hash ([`AVATAR_HASH_KEY`]) with the secrets, so
//! the initial presence that follows reads memory too. Only logins do that:
//! `exists` (asked for every stanza to a local account) reads the secrets
//! alone.
//!
//! A read that raced a write must not put the old value back: each map has
//! a generation, bumped by every invalidation; a read notes it before going
//! to the store and only fills the cache if it has not moved.
//!
//! Writers in other processes: `waxwing user add|passwd|remove`, run beside
//! a live server, write the database directly and then replace the stamp
//! file `<data_dir>/accounts.changed` ([`note_outside_change`]); every cached
//! read first looks at the stamp (one `stat`, far cheaper than a statement)
//! and drops everything when it changed. Anything else is covered by a
//! lifetime: an entry is used for at most `[storage] cache_secs` after it was
//! loaded. With `[cluster]` the cache is off: other nodes write the same
//! database.
//!
//! Memory: at most `cache_accounts` accounts (about 550 bytes each with
//! their secrets, an empty roster and the avatar hash: every online
//! account has an entry, so they are compact, see `key.rs` and
//! `packed.rs`), and no longer than
//! needed: a sweeper task drops entries that have not been used for
//! `cache_secs` and gives the map's memory back, so the copies a login wave
//! left do not stay for the life of the process.

use std::borrow::Borrow;
use std::hash::Hash;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hashlink::LinkedHashMap;
use waxwing_proto::jid::BareJid;
use waxwing_store::{
    AccountStore, LoginRead, PrivateXmlStore, RosterItem, RosterStore, StoreError, StoredSecret,
    Stores,
};

mod key;
mod packed;
use key::{AccountKey, AccountParts, FragmentKey, FragmentParts, FragmentRef};
use packed::PackedSecrets;

/// The private-XML key of the account's avatar hash (XEP-0153/XEP-0398),
/// which every available presence carries: read with the secrets on a
/// login (`avatar.rs` in waxwing-modules stores it).
pub const AVATAR_HASH_KEY: &str = "vcard-temp#photo-sha1";

/// How many accounts (and private-XML fragments) and how long
/// (`[storage] cache_accounts`, `cache_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Accounts whose secrets (and, separately, rosters) are kept; 0: no cache.
    pub accounts: usize,
    /// How long a loaded entry may be used.
    pub lifetime: Duration,
}

/// The file other processes replace after changing accounts in the
/// database of `data_dir`.
fn stamp_path(data_dir: &Path) -> PathBuf {
    data_dir.join("accounts.changed")
}

/// Tells a server running on `data_dir` that accounts changed behind its
/// back (`waxwing user …`): it drops its cached copies before the next read.
/// Written to a temporary file and renamed, so a reader sees a new file.
pub fn note_outside_change(data_dir: &Path) -> std::io::Result<()> {
    let path = stamp_path(data_dir);
    let tmp = path.with_extension("changed.tmp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    std::fs::write(&tmp, format!("{}\n", now.as_nanos()))?;
    std::fs::rename(&tmp, &path)
}

/// What identifies one version of the stamp file: a rename makes a new
/// inode, and its change time moves even when an inode number is reused.
type StampId = Option<(u64, i64, i64)>;

fn stamp_id(path: &Path) -> StampId {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

/// The stamp as last seen.
struct Stamp {
    path: PathBuf,
    seen: Mutex<StampId>,
}

/// Puts the cache in front of `stores`' accounts, rosters and private XML
/// (nothing when `limits.accounts` is 0). `data_dir`: where other processes
/// leave their stamp.
pub(crate) fn wrap(mut stores: Stores, limits: CacheLimits, data_dir: &Path) -> Stores {
    if limits.accounts == 0 {
        return stores;
    }
    let path = stamp_path(data_dir);
    let caches = Arc::new(Caches {
        secrets: Cache::new(limits),
        rosters: Cache::new(limits),
        fragments: Cache::new(limits),
        stamp: Stamp {
            seen: Mutex::new(stamp_id(&path)),
            path,
        },
    });
    spawn_sweeper(&caches, limits.lifetime);
    stores.accounts = Arc::new(CachedAccounts {
        inner: stores.accounts,
        caches: caches.clone(),
    });
    stores.roster = Arc::new(CachedRoster {
        inner: stores.roster,
        caches: caches.clone(),
    });
    stores.private_xml = Arc::new(CachedPrivateXml {
        inner: stores.private_xml,
        caches,
    });
    stores
}

/// How often the sweeper looks for expired entries: half their lifetime,
/// so an unused entry is gone at most 1.5 lifetimes after it was loaded,
/// within these bounds.
fn sweep_period(lifetime: Duration) -> Duration {
    (lifetime / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Sweeps `caches` every [`sweep_period`] for as long as they exist (a
/// server's life), when there is a runtime to sweep on.
fn spawn_sweeper(caches: &Arc<Caches>, lifetime: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let caches = Arc::downgrade(caches);
    runtime.spawn(async move {
        let mut every = tokio::time::interval(sweep_period(lifetime));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await; // the first tick is immediate
        loop {
            every.tick().await;
            let Some(caches) = caches.upgrade() else {
                return;
            };
            caches.sweep();
        }
    });
}

/// A bounded, least-recently-used map whose entries expire, with the
/// generation that keeps a racing read from caching a stale value.
struct Cache<K: Hash + Eq, V> {
    state: Mutex<State<K, V>>,
    lifetime: Duration,
    /// At most this many entries; the least recently used one goes first.
    capacity: usize,
}

struct State<K: Hash + Eq, V> {
    /// Least recently used (read or filled) first: every use moves its
    /// entry to the back.
    entries: LinkedHashMap<K, (Instant, V)>,
    generation: u64,
}

impl<K: Hash + Eq, V: Clone> Cache<K, V> {
    fn new(limits: CacheLimits) -> Self {
        Cache {
            state: Mutex::new(State {
                entries: LinkedHashMap::new(),
                generation: 0,
            }),
            lifetime: limits.lifetime,
            capacity: limits.accounts,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K, V>> {
        // The map is only ever changed by whole-entry inserts and removals:
        // a panic elsewhere while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached value, or the generation to hand to [`Cache::fill`]
    /// after loading it from the store.
    fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Result<V, u64>
    where
        K: Borrow<Q>,
    {
        self.get_at(key, Instant::now())
    }

    /// [`Cache::get`] at `now`.
    fn get_at<Q: Hash + Eq + ?Sized>(&self, key: &Q, now: Instant) -> Result<V, u64>
    where
        K: Borrow<Q>,
    {
        let mut s = self.lock();
        match s.entries.to_back(key) {
            Some((at, v)) if now.saturating_duration_since(*at) < self.lifetime => Ok(v.clone()),
            Some(_) => {
                s.entries.remove(key);
                Err(s.generation)
            }
            None => Err(s.generation),
        }
    }

    /// Keeps `value`, read from the store, unless some write invalidated
    /// anything since `generation` was taken (the value may predate it).
    fn fill(&self, key: K, generation: u64, value: V) {
        self.fill_at(key, generation, value, Instant::now())
    }

    /// [`Cache::fill`] at `now`.
    fn fill_at(&self, key: K, generation: u64, value: V, now: Instant) {
        let mut s = self.lock();
        if s.generation == generation {
            s.entries.insert(key, (now, value));
            while s.entries.len() > self.capacity {
                s.entries.pop_front();
            }
        }
    }

    /// Drops every entry that has not been used for the lifetime, and
    /// gives the map's memory back when it dropped any. Returns how many
    /// went.
    ///
    /// Only the front needs looking at: an entry unused for a lifetime was
    /// loaded at least that long ago (it has expired), and every entry in
    /// front of it was used even earlier; so popping expired entries off
    /// the front until a live one stops it removes every idle one, and an
    /// expired entry further back (loaded long ago, used lately) goes at
    /// its next use, as before.
    fn sweep(&self) -> usize {
        self.sweep_at(Instant::now())
    }

    /// [`Cache::sweep`] at `now`.
    fn sweep_at(&self, now: Instant) -> usize {
        let mut s = self.lock();
        let mut dropped = 0;
        while s
            .entries
            .front()
            .is_some_and(|(_, (at, _))| now.saturating_duration_since(*at) >= self.lifetime)
        {
            s.entries.pop_front();
            dropped += 1;
        }
        if dropped > 0 {
            // Removed entries' nodes are kept for reuse and the table keeps
            // its size: after a login wave that is the wave's whole size.
            s.entries.shrink_to_fit();
        }
        dropped
    }

    /// The generation a read starting now hands to [`Cache::fill`].
    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Forgets `key`; called after every write that touched it (failed
    /// writes too: a failure may still have committed).
    fn invalidate<Q: Hash + Eq + ?Sized>(&self, key: &Q)
    where
        K: Borrow<Q>,
    {
        let mut s = self.lock();
        s.generation = s.generation.wrapping_add(1);
        s.entries.remove(key);
    }

    /// Forgets everything (a write whose keys are not known one by one).
    fn clear(&self) {
        let mut s = self.lock();
        s.generation = s.generation.wrapping_add(1);
        s.entries.clear();
        s.entries.shrink_to_fit();
    }
}

/// Both maps: deleting an account also deletes its roster rows.
struct Caches {
    /// The secrets of existing accounts. An unknown address is not
    /// remembered: `waxwing user add` beside a running server must work at
    /// once for someone who just failed to log in.
    /// Packed into one block each (`packed.rs`).
    secrets: Cache<AccountKey, PackedSecrets>,
    /// Every row of the owner's roster, sorted by contact as `items` returns them.
    /// A slice, not a `Vec`: an empty roster is then the `Arc`'s counters
    /// alone, and a full one exactly its rows.
    rosters: Cache<AccountKey, Arc<[RosterItem]>>,
    /// Small private-XML fragments; `None`: nothing stored under that key.
    fragments: Cache<FragmentKey, Option<Arc<str>>>,
    stamp: Stamp,
}

impl Caches {
    /// Drops the entries of every map that went unused for their lifetime.
    fn sweep(&self) {
        let dropped = self.secrets.sweep() + self.rosters.sweep() + self.fragments.sweep();
        if dropped > 0 {
            tracing::debug!(dropped, "account cache: unused entries dropped");
        }
    }

    /// Drops every copy if another process changed accounts since the
    /// last look. Before every cached read.
    fn check_stamp(&self) {
        let now = stamp_id(&self.stamp.path);
        let mut seen = self.stamp.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen != now {
            *seen = now;
            self.secrets.clear();
            self.rosters.clear();
            self.fragments.clear();
        }
    }
}

/// An account's secrets as `CachedAccounts::load` found them.
enum Secrets {
    Cached(PackedSecrets),
    /// Just read from the store.
    Read(Vec<StoredSecret>),
}

impl Secrets {
    fn into_vec(self) -> Vec<StoredSecret> {
        match self {
            Secrets::Cached(packed) => packed.unpack(),
            Secrets::Read(secrets) => secrets,
        }
    }
}

struct CachedAccounts {
    inner: Arc<dyn AccountStore>,
    caches: Arc<Caches>,
}

impl CachedAccounts {
    /// `login`: a login asks, so the roster and avatar hash are read along.
    async fn load(&self, user: &BareJid, login: bool) -> Result<Option<Secrets>, StoreError> {
        self.caches.check_stamp();
        match self.caches.secrets.get(user as &dyn AccountParts) {
            Ok(s) => Ok(Some(Secrets::Cached(s))),
            Err(generation) => {
                if login {
                    // Taken before the read, as `generation` was.
                    let rosters = self.caches.rosters.generation();
                    let fragments = self.caches.fragments.generation();
                    match self.inner.login_reads(user, AVATAR_HASH_KEY).await? {
                        LoginRead::NoAccount => return Ok(None),
                        LoginRead::Account {
                            secrets,
                            roster,
                            fragment,
                        } => {
                            let c = &self.caches;
                            if let Some(packed) = PackedSecrets::pack(&secrets) {
                                c.secrets.fill(AccountKey::new(user), generation, packed);
                            }
                            c.rosters
                                .fill(AccountKey::new(user), rosters, shared_roster(roster));
                            if fragment
                                .as_ref()
                                .is_none_or(|v| v.len() <= MAX_CACHED_FRAGMENT)
                            {
                                let key = FragmentKey::new(user, AVATAR_HASH_KEY);
                                c.fragments.fill(
                                    key,
                                    fragments,
                                    fragment.as_deref().map(Arc::from),
                                );
                            }
                            return Ok(Some(Secrets::Read(secrets)));
                        }
                        LoginRead::NotBatched => {}
                    }
                }
                let Some(s) = self.inner.secrets(user).await? else {
                    return Ok(None);
                };
                if let Some(packed) = PackedSecrets::pack(&s) {
                    self.caches
                        .secrets
                        .fill(AccountKey::new(user), generation, packed);
                }
                Ok(Some(Secrets::Read(s)))
            }
        }
    }
}

#[async_trait]
impl AccountStore for CachedAccounts {
    async fn create(&self, user: &BareJid, secrets: &[StoredSecret]) -> Result<(), StoreError> {
        let r = self.inner.create(user, secrets).await;
        self.caches.secrets.invalidate(user as &dyn AccountParts);
        r
    }
    async fn secrets(&self, user: &BareJid) -> Result<Option<Vec<StoredSecret>>, StoreError> {
        Ok(self.load(user, true).await?.map(Secrets::into_vec))
    }
    async fn set_secrets(
        &self,
        user: &BareJid,
        secrets: &[StoredSecret],
    ) -> Result<(), StoreError> {
        let r = self.inner.set_secrets(user, secrets).await;
        self.caches.secrets.invalidate(user as &dyn AccountParts);
        r
    }
    async fn delete(&self, user: &BareJid) -> Result<(), StoreError> {
        let r = self.inner.delete(user).await;
        self.caches.secrets.invalidate(user as &dyn AccountParts);
        self.caches.rosters.invalidate(user as &dyn AccountParts);
        r
    }
    async fn exists(&self, user: &BareJid) -> Result<bool, StoreError> {
        Ok(self.load(user, false).await?.is_some())
    }
    async fn list(&self, domain: Option<&str>) -> Result<Vec<BareJid>, StoreError> {
        self.inner.list(domain).await
    }
    async fn count(&self, domain: Option<&str>) -> Result<u64, StoreError> {
        self.inner.count(domain).await
    }
    async fn login_reads(&self, user: &BareJid, fragment: &str) -> Result<LoginRead, StoreError> {
        // Nothing above the cache batches; `secrets` does it for logins.
        self.inner.login_reads(user, fragment).await
    }
}

/// `items` as the roster cache keeps them. Most accounts' rosters are
/// empty, and every empty one is the same `Arc` instead of an allocation
/// of its own per cached account.
fn shared_roster(items: Vec<RosterItem>) -> Arc<[RosterItem]> {
    static EMPTY: std::sync::LazyLock<Arc<[RosterItem]>> =
        std::sync::LazyLock::new(|| Arc::from(Vec::new()));
    if items.is_empty() {
        EMPTY.clone()
    } else {
        Arc::from(items)
    }
}

struct CachedRoster {
    inner: Arc<dyn RosterStore>,
    caches: Arc<Caches>,
}

impl CachedRoster {
    async fn load(&self, owner: &BareJid) -> Result<Arc<[RosterItem]>, StoreError> {
        self.caches.check_stamp();
        match self.caches.rosters.get(owner as &dyn AccountParts) {
            Ok(items) => Ok(items),
            Err(generation) => {
                let items = shared_roster(self.inner.items(owner).await?);
                self.caches
                    .rosters
                    .fill(AccountKey::new(owner), generation, items.clone());
                Ok(items)
            }
        }
    }
}

#[async_trait]
impl RosterStore for CachedRoster {
    async fn items(&self, owner: &BareJid) -> Result<Vec<RosterItem>, StoreError> {
        Ok(self.load(owner).await?.to_vec())
    }
    async fn get(
        &self,
        owner: &BareJid,
        contact: &BareJid,
    ) -> Result<Option<RosterItem>, StoreError> {
        let items = self.load(owner).await?;
        Ok(items
            .binary_search_by(|i| i.contact.cmp(contact))
            .ok()
            .map(|at| items[at].clone()))
    }
    async fn put(&self, owner: &BareJid, item: &RosterItem) -> Result<u64, StoreError> {
        let r = self.inner.put(owner, item).await;
        self.caches.rosters.invalidate(owner as &dyn AccountParts);
        r
    }
    async fn remove(&self, owner: &BareJid, contact: &BareJid) -> Result<u64, StoreError> {
        let r = self.inner.remove(owner, contact).await;
        self.caches.rosters.invalidate(owner as &dyn AccountParts);
        r
    }
    async fn version(&self, owner: &BareJid) -> Result<u64, StoreError> {
        self.inner.version(owner).await
    }
    async fn forget_version(&self, owner: &BareJid) -> Result<(), StoreError> {
        self.inner.forget_version(owner).await
    }
    async fn owners_of(&self, contact: &BareJid) -> Result<Vec<(BareJid, RosterItem)>, StoreError> {
        self.inner.owners_of(contact).await
    }
}

/// Private-XML fragments up to this size are kept (the avatar hash every
/// available presence carries is 40 bytes); larger ones (bookmarks, vCards)
/// are read when asked for, as before.
const MAX_CACHED_FRAGMENT: usize = 1024;

struct CachedPrivateXml {
    inner: Arc<dyn PrivateXmlStore>,
    caches: Arc<Caches>,
}

#[async_trait]
impl PrivateXmlStore for CachedPrivateXml {
    async fn get(&self, owner: &BareJid, key: &str) -> Result<Option<String>, StoreError> {
        self.caches.check_stamp();
        match self
            .caches
            .fragments
            .get(&FragmentRef(owner, key) as &dyn FragmentParts)
        {
            Ok(v) => Ok(v.map(|v| v.to_string())),
            Err(generation) => {
                let v = self.inner.get(owner, key).await?;
                if v.as_ref().is_none_or(|v| v.len() <= MAX_CACHED_FRAGMENT) {
                    self.caches.fragments.fill(
                        FragmentKey::new(owner, key),
                        generation,
                        v.as_deref().map(Arc::from),
                    );
                }
                Ok(v)
            }
        }
    }
    async fn set(&self, owner: &BareJid, key: &str, xml: &str) -> Result<(), StoreError> {
        let r = self.inner.set(owner, key, xml).await;
        self.caches
            .fragments
            .invalidate(&FragmentRef(owner, key) as &dyn FragmentParts);
        r
    }
    async fn remove_user(&self, owner: &BareJid) -> Result<(), StoreError> {
        let r = self.inner.remove_user(owner).await;
        // Rare (account deletion), and the keys are not indexed by owner.
        self.caches.fragments.clear();
        r
    }
    async fn keys(&self, owner: &BareJid) -> Result<Vec<String>, StoreError> {
        self.inner.keys(owner).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use waxwing_store::Subscription;

    fn jid(s: &str) -> BareJid {
        BareJid::parse(s).unwrap()
    }

    fn secret(salt: u8) -> StoredSecret {
        StoredSecret {
            mechanism: "SCRAM-SHA-256".into(),
            salt: vec![salt],
            iterations: 4096,
            stored_key: vec![1],
            server_key: vec![2],
        }
    }

    const LIMITS: CacheLimits = CacheLimits {
        accounts: 100,
        lifetime: Duration::from_secs(3600),
    };

    /// The cached stores, and the ones behind them (a writer the cache does
    /// not see, like another process).
    fn stores(limits: CacheLimits) -> (Stores, Stores) {
        let inner = waxwing_store::memory();
        // No stamp is ever written there.
        let dir = Path::new("/nonexistent/waxwing-store-cache-test");
        (wrap(inner.clone(), limits, dir), inner)
    }

    #[tokio::test]
    async fn the_cli_stamp_drops_every_copy() {
        let dir = tempfile::tempdir().unwrap();
        let inner = waxwing_store::memory();
        let cached = wrap(inner.clone(), LIMITS, dir.path());
        let alice = jid("alice@example.org");
        cached.accounts.create(&alice, &[secret(1)]).await.unwrap();
        cached
            .roster
            .put(&alice, &RosterItem::new(jid("bob@example.org")))
            .await
            .unwrap();
        assert_eq!(
            cached.accounts.secrets(&alice).await.unwrap(),
            Some(vec![secret(1)])
        );
        assert_eq!(cached.roster.items(&alice).await.unwrap().len(), 1);
        // `waxwing user passwd`, twice in a row (the second must count too).
        for salt in [2, 3] {
            inner
                .accounts
                .set_secrets(&alice, &[secret(salt)])
                .await
                .unwrap();
            note_outside_change(dir.path()).unwrap();
            assert_eq!(
                cached.accounts.secrets(&alice).await.unwrap(),
                Some(vec![secret(salt)])
            );
        }
        // `waxwing user remove`.
        inner.accounts.delete(&alice).await.unwrap();
        note_outside_change(dir.path()).unwrap();
        assert_eq!(cached.accounts.secrets(&alice).await.unwrap(), None);
        assert!(cached.roster.items(&alice).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn secrets_are_kept_until_the_server_changes_them() {
        let (cached, behind) = stores(LIMITS);
        let alice = jid("alice@example.org");
        cached.accounts.create(&alice, &[secret(1)]).await.unwrap();
        assert_eq!(
            cached.accounts.secrets(&alice).await.unwrap(),
            Some(vec![secret(1)])
        );
        // Behind the cache's back: still the copy (this is what saves the read).
        behind
            .accounts
            .set_secrets(&alice, &[secret(2)])
            .await
            .unwrap();
        assert_eq!(
            cached.accounts.secrets(&alice).await.unwrap(),
            Some(vec![secret(1)])
        );
        // A password change through the server is seen by the next login.
        cached
            .accounts
            .set_secrets(&alice, &[secret(3)])
            .await
            .unwrap();
        assert_eq!(
            cached.accounts.secrets(&alice).await.unwrap(),
            Some(vec![secret(3)])
        );
        cached.accounts.delete(&alice).await.unwrap();
        assert_eq!(cached.accounts.secrets(&alice).await.unwrap(), None);
        assert!(!cached.accounts.exists(&alice).await.unwrap());
    }

    #[tokio::test]
    async fn unknown_accounts_are_not_remembered() {
        let (cached, behind) = stores(LIMITS);
        let bob = jid("bob@example.org");
        assert_eq!(cached.accounts.secrets(&bob).await.unwrap(), None);
        // `waxwing user add` beside the running server.
        behind.accounts.create(&bob, &[secret(1)]).await.unwrap();
        assert_eq!(
            cached.accounts.secrets(&bob).await.unwrap(),
            Some(vec![secret(1)])
        );
        assert!(cached.accounts.exists(&bob).await.unwrap());
    }

    #[tokio::test]
    async fn entries_expire_for_writers_the_server_does_not_see() {
        let (cached, behind) = stores(CacheLimits {
            accounts: 100,
            lifetime: Duration::ZERO,
        });
        let alice = jid("alice@example.org");
        cached.accounts.create(&alice, &[secret(1)]).await.unwrap();
        assert_eq!(
            cached.accounts.secrets(&alice).await.unwrap(),
            Some(vec![secret(1)])
        );
        behind
            .accounts
            .set_secrets(&alice, &[secret(2)])
            .await
            .unwrap();
        assert_eq!(
            cached.accounts.secrets(&alice).await.unwrap(),
            Some(vec![secret(2)])
        );
    }

    #[tokio::test]
    async fn rosters_are_dropped_by_every_roster_write() {
        let (cached, behind) = stores(LIMITS);
        let (alice, bob, carol) = (
            jid("alice@example.org"),
            jid("bob@example.org"),
            jid("carol@example.org"),
        );
        cached.accounts.create(&alice, &[secret(1)]).await.unwrap();
        let mut item = RosterItem::new(bob.clone());
        cached.roster.put(&alice, &item).await.unwrap();
        assert_eq!(
            cached.roster.items(&alice).await.unwrap(),
            vec![item.clone()]
        );
        // Cached: a row written behind its back is not seen...
        behind
            .roster
            .put(&alice, &RosterItem::new(carol.clone()))
            .await
            .unwrap();
        assert_eq!(cached.roster.items(&alice).await.unwrap().len(), 1);
        assert_eq!(cached.roster.get(&alice, &carol).await.unwrap(), None);
        // ...until the server writes that roster (a subscription change).
        item.subscription = Subscription::Both;
        cached.roster.put(&alice, &item).await.unwrap();
        assert_eq!(cached.roster.items(&alice).await.unwrap().len(), 2);
        assert_eq!(cached.roster.get(&alice, &bob).await.unwrap(), Some(item));
        assert!(cached.roster.get(&alice, &carol).await.unwrap().is_some());
        cached.roster.remove(&alice, &carol).await.unwrap();
        assert_eq!(cached.roster.get(&alice, &carol).await.unwrap(), None);
        // Deleting the account deletes its rows.
        cached.accounts.delete(&alice).await.unwrap();
        assert!(cached.roster.items(&alice).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn small_private_fragments_are_kept_large_ones_read_each_time() {
        let (cached, behind) = stores(LIMITS);
        let alice = jid("alice@example.org");
        let big = "x".repeat(MAX_CACHED_FRAGMENT + 1);
        cached.private_xml.set(&alice, "hash", "abc").await.unwrap();
        cached.private_xml.set(&alice, "big", &big).await.unwrap();
        assert_eq!(
            cached
                .private_xml
                .get(&alice, "hash")
                .await
                .unwrap()
                .as_deref(),
            Some("abc")
        );
        assert_eq!(
            cached.private_xml.get(&alice, "big").await.unwrap(),
            Some(big)
        );
        assert_eq!(cached.private_xml.get(&alice, "none").await.unwrap(), None);
        behind.private_xml.set(&alice, "hash", "def").await.unwrap();
        behind.private_xml.set(&alice, "big", "y").await.unwrap();
        assert_eq!(
            cached
                .private_xml
                .get(&alice, "hash")
                .await
                .unwrap()
                .as_deref(),
            Some("abc")
        );
        assert_eq!(
            cached
                .private_xml
                .get(&alice, "big")
                .await
                .unwrap()
                .as_deref(),
            Some("y")
        );
        cached.private_xml.set(&alice, "hash", "ghi").await.unwrap();
        assert_eq!(
            cached
                .private_xml
                .get(&alice, "hash")
                .await
                .unwrap()
                .as_deref(),
            Some("ghi")
        );
        cached.private_xml.remove_user(&alice).await.unwrap();
        assert_eq!(cached.private_xml.get(&alice, "hash").await.unwrap(), None);
    }

    /// The cache over a real SQLite file (whose `login_reads` batches),
    /// and the stores behind it.
    async fn sqlite_stores(dir: &tempfile::TempDir) -> (Stores, Stores) {
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let inner = waxwing_store::open(&url).await.unwrap();
        (wrap(inner.clone(), LIMITS, dir.path()), inner)
    }

    #[tokio::test]
    async fn a_login_keeps_the_roster_and_avatar_hash_read_with_its_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let (cached, behind) = sqlite_stores(&dir).await;
        let (alice, bob) = (jid("alice@example.org"), jid("bob@example.org"));
        behind.accounts.create(&alice, &[secret(1)]).await.unwrap();
        behind
            .roster
            .put(&alice, &RosterItem::new(bob.clone()))
            .await
            .unwrap();
        behind
            .private_xml
            .set(&alice, AVATAR_HASH_KEY, "abc")
            .await
            .unwrap();
        // The login's read: secrets, and the other two along.
        assert_eq!(
            cached.accounts.secrets(&alice).await.unwrap(),
            Some(vec![secret(1)])
        );
        // Changed behind the cache's back: the copies read with the secrets
        // are what the initial presence sees, no second read.
        behind
            .roster
            .put(&alice, &RosterItem::new(jid("carol@example.org")))
            .await
            .unwrap();
        behind
            .private_xml
            .set(&alice, AVATAR_HASH_KEY, "def")
            .await
            .unwrap();
        assert_eq!(cached.roster.items(&alice).await.unwrap().len(), 1);
        assert_eq!(
            cached
                .private_xml
                .get(&alice, AVATAR_HASH_KEY)
                .await
                .unwrap()
                .as_deref(),
            Some("abc")
        );
        // Writes through the server still drop the copies.
        cached
            .roster
            .put(&alice, &RosterItem::new(jid("dave@example.org")))
            .await
            .unwrap();
        assert_eq!(cached.roster.items(&alice).await.unwrap().len(), 3);
        // No account: nothing kept, and one created beside the server is
        // found at once.
        let eve = jid("eve@example.org");
        assert_eq!(cached.accounts.secrets(&eve).await.unwrap(), None);
        behind.accounts.create(&eve, &[secret(2)]).await.unwrap();
        assert_eq!(
            cached.accounts.secrets(&eve).await.unwrap(),
            Some(vec![secret(2)])
        );
    }

    #[tokio::test]
    async fn exists_reads_the_secrets_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (cached, behind) = sqlite_stores(&dir).await;
        let alice = jid("alice@example.org");
        behind.accounts.create(&alice, &[secret(1)]).await.unwrap();
        assert!(cached.accounts.exists(&alice).await.unwrap());
        // The roster was not read along: a row written behind the cache's
        // back is seen by the first roster read.
        behind
            .roster
            .put(&alice, &RosterItem::new(jid("bob@example.org")))
            .await
            .unwrap();
        assert_eq!(cached.roster.items(&alice).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_write_racing_the_login_read_is_not_undone() {
        let dir = tempfile::tempdir().unwrap();
        let (_, behind) = sqlite_stores(&dir).await;
        let alice = jid("alice@example.org");
        behind.accounts.create(&alice, &[secret(1)]).await.unwrap();
        // What `load` does, with a roster write landing between the
        // generation taken and the fill.
        let accounts = CachedAccounts {
            inner: behind.accounts.clone(),
            caches: Arc::new(Caches {
                secrets: Cache::new(LIMITS),
                rosters: Cache::new(LIMITS),
                fragments: Cache::new(LIMITS),
                stamp: Stamp {
                    path: dir.path().join("accounts.changed"),
                    seen: Mutex::new(None),
                },
            }),
        };
        let before = accounts.caches.rosters.generation();
        accounts
            .caches
            .rosters
            .invalidate(&alice as &dyn AccountParts);
        accounts
            .caches
            .rosters
            .fill(AccountKey::new(&alice), before, Arc::from(vec![]));
        assert!(
            accounts
                .caches
                .rosters
                .get(&alice as &dyn AccountParts)
                .is_err()
        );
        // And the real path fills all three when nothing raced.
        accounts.secrets(&alice).await.unwrap();
        assert!(
            accounts
                .caches
                .rosters
                .get(&alice as &dyn AccountParts)
                .is_ok()
        );
        assert!(
            accounts
                .caches
                .fragments
                .get(&FragmentRef(&alice, AVATAR_HASH_KEY) as &dyn FragmentParts)
                .is_ok()
        );
    }

    #[test]
    fn every_empty_roster_is_one_shared_allocation() {
        let (a, b) = (shared_roster(Vec::new()), shared_roster(Vec::new()));
        assert!(Arc::ptr_eq(&a, &b));
        let item = RosterItem::new(jid("bob@example.org"));
        let full = shared_roster(vec![item.clone()]);
        assert_eq!(&*full, &[item][..]);
        assert!(!Arc::ptr_eq(&full, &shared_roster(vec![full[0].clone()])));
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let cache: Cache<u32, u32> = Cache::new(LIMITS);
        let Err(generation) = cache.get(&1) else {
            panic!("empty cache")
        };
        // The store is read (old value), then a write lands and invalidates.
        cache.invalidate(&1);
        cache.fill(1, generation, 10);
        assert!(cache.get(&1).is_err());
        let Err(generation) = cache.get(&1) else {
            panic!()
        };
        cache.fill(1, generation, 11);
        assert_eq!(cache.get(&1), Ok(11));
    }

    #[test]
    fn the_sweep_drops_exactly_the_entries_unused_for_their_lifetime() {
        let minute = Duration::from_secs(60);
        let cache: Cache<u32, u32> = Cache::new(CacheLimits {
            accounts: 100,
            lifetime: minute,
        });
        let t0 = Instant::now();
        for k in 1..=3 {
            let g = cache.get_at(&k, t0).unwrap_err();
            cache.fill_at(k, g, k, t0);
        }
        let g = cache.get_at(&4, t0).unwrap_err();
        cache.fill_at(4, g, 4, t0 + minute / 2);
        // Before anything is a lifetime old: nothing goes.
        assert_eq!(cache.sweep_at(t0 + minute / 2), 0);
        // 2 was used lately (moved to the back): it still expires by its
        // load time when read, but the sweep stops at the first live entry.
        assert_eq!(cache.get_at(&2, t0 + minute / 2), Ok(2));
        assert_eq!(
            cache.sweep_at(t0 + minute),
            2,
            "1 and 3, idle for a lifetime"
        );
        assert_eq!(cache.lock().entries.len(), 2);
        assert!(cache.get_at(&1, t0 + minute).is_err());
        assert!(cache.get_at(&3, t0 + minute).is_err());
        // 2 is used past its lifetime: not served, and dropped by that read.
        assert!(cache.get_at(&2, t0 + minute).is_err());
        assert_eq!(cache.get_at(&4, t0 + minute), Ok(4));
        // Later, 4 expires too: the map is empty and has given back its
        // table (the nodes of removed entries are not kept for reuse).
        assert_eq!(cache.sweep_at(t0 + 2 * minute), 1);
        let s = cache.lock();
        assert!(s.entries.is_empty());
        assert_eq!(s.entries.capacity(), 0);
    }

    #[test]
    fn a_swept_map_shrinks_to_what_it_holds() {
        let cache: Cache<u32, u32> = Cache::new(CacheLimits {
            accounts: 20_000,
            lifetime: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        for k in 0..10_000 {
            let g = cache.get_at(&k, t0).unwrap_err();
            cache.fill_at(k, g, k, t0);
        }
        let full = cache.lock().entries.capacity();
        assert!(full >= 10_000);
        // Ten accounts come back; the wave's other entries expire.
        let later = t0 + Duration::from_secs(30);
        for k in 0..10 {
            let g = cache.get_at(&(k + 20_000), later).unwrap_err();
            cache.fill_at(k + 20_000, g, k, later);
        }
        assert_eq!(cache.sweep_at(t0 + Duration::from_secs(60)), 10_000);
        let s = cache.lock();
        assert_eq!(s.entries.len(), 10);
        assert!(
            s.entries.capacity() < full / 100,
            "{} of {full}",
            s.entries.capacity()
        );
    }

    #[test]
    fn the_sweep_period_is_half_the_lifetime_within_bounds() {
        assert_eq!(
            sweep_period(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
        assert_eq!(sweep_period(Duration::from_secs(1)), Duration::from_secs(1));
        assert_eq!(
            sweep_period(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
    }

    #[tokio::test]
    async fn the_sweeper_does_not_keep_the_caches_alive() {
        let caches = Arc::new(Caches {
            secrets: Cache::new(LIMITS),
            rosters: Cache::new(LIMITS),
            fragments: Cache::new(LIMITS),
            stamp: Stamp {
                path: PathBuf::from("/nonexistent/accounts.changed"),
                seen: Mutex::new(None),
            },
        });
        spawn_sweeper(&caches, LIMITS.lifetime);
        let weak = Arc::downgrade(&caches);
        drop(caches);
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn the_least_recently_used_account_goes_first() {
        let cache: Cache<u32, u32> = Cache::new(CacheLimits {
            accounts: 2,
            lifetime: Duration::from_secs(60),
        });
        for k in [1, 2] {
            let g = cache.get(&k).unwrap_err();
            cache.fill(k, g, k);
        }
        assert_eq!(cache.get(&1), Ok(1));
        let g = cache.get(&3).unwrap_err();
        cache.fill(3, g, 3);
        assert!(cache.get(&2).is_err());
        assert_eq!(cache.get(&1), Ok(1));
        assert_eq!(cache.get(&3), Ok(3));
    }
}
