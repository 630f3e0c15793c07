//! Archiving preferences of recently seen accounts, in memory, for the
//! SQLite backend.
//!
//! With archiving on, every chat message reads the preferences of both of
//! its archives (`mam.rs` decides per message whether to archive), nearly
//! always to find none stored. On SQLite each read is a trip to a reader
//! connection's thread (wake-ups, locks, page reads after every write):
//! about a quarter of the server's CPU in a saturated chat run with
//! archiving on. The preferences change only through this store
//! (`set_prefs`, and `remove` of the account's archive), so the store can
//! keep what it read and forget it when they change.
//!
//! Only for SQLite: one database file belongs to one server process
//! (`waxwing user remove` and the other offline commands run while it is
//! stopped). PostgreSQL may be shared by a cluster, where another node's
//! change would not reach this cache, so it reads every time.
//!
//! Coherence: a read fills the cache only if no write of preferences ran
//! since it started or runs now ([`PrefsCache::ticket`] / `fill`), so a
//! read that raced a change never caches the old value; a write forgets
//! the account's entry when it starts and when it ends. A write whose
//! future is dropped before it ends (a closed session) may still commit on
//! the connection's thread later, so it turns the cache off for good
//! (rare, and it only costs the reads it saved).
//!
//! Memory: at most [`CAPACITY`] accounts (about 150 bytes each with no
//! lists); when full, the whole cache is dropped and refills.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::archive::ArchivePrefs;

/// Accounts whose preferences are kept (about 2.5 MB when full).
pub(crate) const CAPACITY: usize = 16_384;

#[derive(Default)]
struct Inner {
    /// An account's preferences, `None` when it has none stored.
    map: HashMap<String, Option<ArchivePrefs>>,
    /// Bumped by every write's start and end.
    generation: u64,
    /// Writes started and not yet ended.
    writing: usize,
    /// A write was abandoned half-way: its outcome is unknown.
    off: bool,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct PrefsCache(Mutex<Inner>);

impl PrefsCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached preferences of `user` (`Some(None)`: known to have none).
    pub(crate) fn get(&self, user: &str) -> Option<Option<ArchivePrefs>> {
        self.lock().map.get(user).cloned()
    }

    /// Taken before reading the database: what `fill` needs, or `None`
    /// when what is read now must not be cached.
    pub(crate) fn ticket(&self) -> Option<u64> {
        let inner = self.lock();
        (inner.writing == 0 && !inner.off).then_some(inner.generation)
    }

    /// Keeps what a read that took `ticket` found, unless a write started
    /// since.
    pub(crate) fn fill(&self, user: String, prefs: Option<ArchivePrefs>, ticket: u64) {
        let mut inner = self.lock();
        if inner.generation != ticket || inner.writing != 0 || inner.off {
            return;
        }
        if inner.map.len() >= CAPACITY {
            inner.map.clear();
        }
        inner.map.insert(user, prefs);
    }

    /// Called before a write of `user`'s preferences; [`Writing::ended`]
    /// once the database has answered it (committed or failed).
    pub(crate) fn writing(&self, user: &str) -> Writing<'_> {
        let mut inner = self.lock();
        inner.writing += 1;
        inner.generation += 1;
        inner.map.remove(user);
        Writing {
            cache: self,
            user: user.to_string(),
            ended: false,
        }
    }
}

/// A write of one account's preferences in progress.
pub(crate) struct Writing<'a> {
    cache: &'a PrefsCache,
    user: String,
    ended: bool,
}

impl Writing<'_> {
    /// The database answered the write, whatever the answer.
    pub(crate) fn ended(mut self) {
        self.ended = true;
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        inner.writing -= 1;
        inner.generation += 1;
        inner.map.remove(&self.user);
        if !self.ended {
            // Dropped mid-way: the write may still commit after this.
            inner.off = true;
            inner.map = HashMap::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::DefaultPolicy;

    fn never() -> Option<ArchivePrefs> {
        Some(ArchivePrefs {
            default: DefaultPolicy::Never,
            ..ArchivePrefs::default()
        })
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let c = PrefsCache::default();
        // Started before the write, answered (with the old value) after it.
        let ticket = c.ticket().unwrap();
        c.writing("juliet").ended();
        c.fill("juliet".into(), None, ticket);
        assert_eq!(c.get("juliet"), None);
        // Started during the write: nothing to keep either.
        let w = c.writing("juliet");
        assert_eq!(c.ticket(), None);
        w.ended();
        let ticket = c.ticket().unwrap();
        c.fill("juliet".into(), never(), ticket);
        assert_eq!(c.get("juliet"), Some(never()));
        // A write forgets the entry.
        c.writing("juliet").ended();
        assert_eq!(c.get("juliet"), None);
    }

    #[test]
    fn an_abandoned_write_turns_the_cache_off() {
        let c = PrefsCache::default();
        let ticket = c.ticket().unwrap();
        c.fill("romeo".into(), None, ticket);
        drop(c.writing("juliet"));
        assert_eq!(c.get("romeo"), None);
        assert_eq!(c.ticket(), None);
    }

    #[test]
    fn bounded() {
        let c = PrefsCache::default();
        for i in 0..=CAPACITY {
            let ticket = c.ticket().unwrap();
            c.fill(format!("u{i}"), None, ticket);
        }
        assert!(c.lock().map.len() <= CAPACITY);
        assert_eq!(c.get(&format!("u{CAPACITY}")), Some(None));
    }
}
