//! Hash maps for the lookups made on every routed stanza.
//!
//! The session registry and the blocklist cache are looked up several
//! times per message, keyed by bare JIDs; with std's SipHash, hashing
//! those short keys cost more than the rest of the lookup (about 4 % of
//! the server's instructions on a saturated 1:1 chat). foldhash (what
//! hashbrown itself defaults to) is several times cheaper on short keys.
//! Its own random state is seeded from address-space layout and the
//! clock; ours comes from the operating system's generator, once per
//! process (shared) and once per map, so colliding keys cannot be
//! computed in advance. The keys are addresses of local accounts and
//! names from the configuration, never arbitrary input; see SECURITY.md.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use foldhash::SharedSeed;
use foldhash::fast::{FoldHasher, SeedableRandomState};

/// A `HashMap` with [`FastState`].
pub type FastMap<K, V> = HashMap<K, V, FastState>;

/// foldhash, seeded from the OS's random generator.
#[derive(Clone, Debug)]
pub struct FastState(SeedableRandomState);

impl Default for FastState {
    fn default() -> Self {
        static SHARED: OnceLock<SharedSeed> = OnceLock::new();
        let shared = SHARED.get_or_init(|| SharedSeed::from_u64(rand::random()));
        FastState(SeedableRandomState::with_seed(rand::random(), shared))
    }
}

impl BuildHasher for FastState {
    type Hasher = FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_hash_alike_within_themselves_and_differently_across() {
        let a = FastState::default();
        let b = FastState::default();
        assert_eq!(
            a.hash_one("juliet@example.com"),
            a.hash_one("juliet@example.com")
        );
        // Two maps, two seeds: a collision found in one says nothing of the other.
        assert_ne!(
            a.hash_one("juliet@example.com"),
            b.hash_one("juliet@example.com")
        );
        let mut m: FastMap<String, u8> = FastMap::default();
        m.insert("x".into(), 1);
        assert_eq!(m.get("x"), Some(&1));
    }
}
