//! Storage for Waxwing: one trait per concern ([`AccountStore`],
//! [`RosterStore`], [`OfflineStore`]), an SQLite implementation behind
//! [`open`], and an in-memory one for tests ([`memory()`]).
//!
//! **Invariant:** a store method that writes has made its change durable
//! before it returns; callers acknowledge to clients right after.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::sync::Arc;

pub mod accounts;
pub mod archive;
pub mod blocklist;
pub mod last;
pub mod memory;
pub mod muc;
pub mod offline;
pub mod private_xml;
pub mod roster;
mod sqlite;

pub use accounts::{AccountStore, StoredSecret};
pub use archive::{
    ArchiveOwner, ArchivePrefs, ArchiveQuery, ArchiveStore, DefaultPolicy, Item, NewItem, OwnerKind,
    Page,
};
pub use blocklist::BlocklistStore;
pub use last::{LastActivity, LastActivityStore};
pub use memory::memory;
pub use muc::{Affiliation, MucStore, RoomAffiliation, RoomRecord, StoredRoom};
pub use offline::{OfflineMessage, OfflineStore};
pub use private_xml::PrivateXmlStore;
pub use roster::{RosterItem, RosterStore, Subscription};

/// What can go wrong in a store. Callers map these to XMPP conditions; the
/// backend detail in `Backend` and `Corrupt` is for logs, never for the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The thing to create already exists.
    #[error("already exists")]
    AlreadyExists,
    /// The thing to change or delete does not exist.
    #[error("not found")]
    NotFound,
    /// The database failed or could not be reached. Carries a description
    /// of the failure, never the SQL text or the bound values.
    #[error("storage backend: {0}")]
    Backend(String),
    /// Stored data could not be decoded (a bad JID, an unknown enum value):
    /// someone edited the database by hand, or a migration is missing.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

/// Bundle handed to `waxwing-core`; built once from `[storage]` config.
#[derive(Clone)]
pub struct Stores {
    /// Accounts and SCRAM secrets.
    pub accounts: Arc<dyn AccountStore>,
    /// Rosters and subscription state.
    pub roster: Arc<dyn RosterStore>,
    /// Offline messages (XEP-0160).
    pub offline: Arc<dyn OfflineStore>,
    /// Message archives of users and rooms (XEP-0313).
    pub archive: Arc<dyn ArchiveStore>,
    /// Blocklists (XEP-0191).
    pub blocklist: Arc<dyn BlocklistStore>,
    /// Private XML (XEP-0049) and vCards (XEP-0054).
    pub private_xml: Arc<dyn PrivateXmlStore>,
    /// Last logout per account (XEP-0012).
    pub last_activity: Arc<dyn LastActivityStore>,
    /// Persistent MUC rooms (XEP-0045).
    pub muc: Arc<dyn MucStore>,
}

impl fmt::Debug for Stores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

/// Opens the database at `url` and brings its schema up to date.
///
/// Accepted: `sqlite://path/to/file.db` (relative to the working directory;
/// `sqlite:///abs/path.db` for an absolute path; the file and its parent
/// directories are created if missing) and `sqlite::memory:` (gone when the
/// returned [`Stores`] and its clones are dropped).
pub async fn open(url: &str) -> Result<Stores, StoreError> {
    if url.starts_with("sqlite:") {
        sqlite::open(url).await
    } else {
        let scheme = url.split(':').next().unwrap_or_default();
        Err(StoreError::Backend(format!(
            "unsupported storage URL scheme {scheme:?} (expected \"sqlite:\")"
        )))
    }
}
