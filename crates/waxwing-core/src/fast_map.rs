//! Hash maps for the lookups made on every routed stanza.
//!
//! The session registry and the blocklist cache are looked up several
//! times per message, keyed by bare JIDs; with std's SipHash, hashing
//! those short keys cost more than the rest of the lookup (about 4 % of
//! the server's instructions on a saturated 1:1 chat). foldhash is what
//! hashbrown itself defaults to: several times cheaper on short keys and
//! seeded at random per process, so an outsider cannot precompute
//! colliding keys. The keys are addresses of local accounts (registered,
//! authenticated), not arbitrary input; see SECURITY.md.

use std::collections::HashMap;

/// The hasher of [`FastMap`].
pub type FastState = foldhash::fast::RandomState;

/// A `HashMap` with [`FastState`].
pub type FastMap<K, V> = HashMap<K, V, FastState>;
