//! Serialises read-modify-write of one account's roster.
//!
//! Subscription state changes arrive from the account's own sessions and
//! from its contacts' sessions at once; without this, two of them could
//! read the same row and one update would be lost. These are async mutexes
//! held across the store round trip on purpose — the one exception to "no
//! lock across .await", and only ever for one account's roster, taken alone
//! (never two at once, so no lock order to get wrong).

use std::hash::BuildHasher;
use std::sync::OnceLock;

use tokio::sync::{Mutex, MutexGuard};
use waxwing_proto::jid::BareJid;

/// Striped: a fixed number of mutexes, so memory does not grow with users.
const STRIPES: usize = 256;

pub struct UserLocks {
    stripes: Vec<Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl UserLocks {
    pub fn global() -> &'static UserLocks {
        static LOCKS: OnceLock<UserLocks> = OnceLock::new();
        LOCKS.get_or_init(|| UserLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: Default::default(),
        })
    }

    pub async fn lock(&self, user: &BareJid) -> MutexGuard<'_, ()> {
        self.stripes[self.hasher.hash_one(user) as usize % STRIPES]
            .lock()
            .await
    }
}
