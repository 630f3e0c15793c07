//! Storage for Waxwing: one trait per concern ([`AccountStore`],
//! [`RosterStore`], [`OfflineStore`] …), SQLite and PostgreSQL
//! implementations behind [`open`], and an in-memory one for tests
//! ([`memory()`]).
//!
//! **Invariant:** a store method that writes has made its change durable
//! before it returns; callers acknowledge to clients right after.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::sync::Arc;

use waxwing_proto::jid::BareJid;

pub mod accounts;
pub mod archive;
pub mod blocklist;
pub mod invites;
pub mod last;
pub mod memory;
pub mod muc;
pub mod offline;
mod postgres;
mod prefs_cache;
pub mod private_xml;
pub mod pubsub;
pub mod reputation;
pub mod roster;
mod sql;
mod sqlite;
pub mod transfer;

pub use accounts::{AccountStore, LoginRead, StoredSecret};
pub use archive::{
    ArchiveOwner, ArchivePrefs, ArchiveQuery, ArchiveStore, DefaultPolicy, Item, NewItem,
    OwnerKind, Page,
};
pub use blocklist::BlocklistStore;
pub use invites::{Invite, InviteKind, InviteStore};
pub use last::{LastActivity, LastActivityStore};
pub use memory::memory;
pub use muc::{Affiliation, MucStore, RoomAffiliation, RoomRecord, StoredRoom};
pub use offline::{OfflineMessage, OfflineStore};
pub use private_xml::PrivateXmlStore;
pub use pubsub::{
    FeedKey, PubSubAffiliation, PubSubItem, PubSubStore, StoredFeed, SubscriptionState,
};
pub use reputation::{DomainReputation, DomainReputationStore};
pub use roster::{RosterItem, RosterStore, Subscription};
pub use sqlite::Durability;
pub use sqlite::backup::{BackupReport, backup, restore};

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
    /// PubSub and PEP nodes (XEP-0060, XEP-0163).
    pub pubsub: Arc<dyn PubSubStore>,
    /// Local reputation of remote domains (federation abuse defences).
    pub reputation: Arc<dyn DomainReputationStore>,
    /// Invitations (XEP-0401, XEP-0379, XEP-0445).
    pub invites: Arc<dyn InviteStore>,
}

impl Stores {
    /// Deletes an account and every per-user record the stores hold (the
    /// account's own archive, private XML and vCard, blocklist, last
    /// activity, PEP nodes, invitations it made; the accounts store already takes its roster and
    /// offline messages), and removes it from other accounts' rosters.
    /// For offline administration (`waxwing user remove`); a running server
    /// does the same through its modules' `UserDeleted` handlers, which also
    /// notify sessions.
    pub async fn remove_account(&self, user: &BareJid) -> Result<(), StoreError> {
        self.accounts.delete(user).await?;
        self.archive
            .remove(&ArchiveOwner::User(user.clone()))
            .await?;
        self.private_xml.remove_user(user).await?;
        self.blocklist.remove_user(user).await?;
        self.last_activity.remove_user(user).await?;
        self.pubsub.remove_service(user).await?;
        self.invites.remove_creator(user).await?;
        for (owner, _) in self.roster.owners_of(user).await? {
            self.roster.remove(&owner, user).await?;
        }
        Ok(())
    }
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
/// directories are created if missing), `sqlite::memory:` (gone when the
/// returned [`Stores`] and its clones are dropped), and
/// `postgres://user:password@host:port/database` (also `postgresql://`;
/// the database must exist, its tables are created).
pub async fn open(url: &str) -> Result<Stores, StoreError> {
    open_with(url, &OpenOptions::default()).await
}

/// How [`open_with`] sets a database up, beyond its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenOptions {
    /// What a committed SQLite write must survive (PostgreSQL's own
    /// `synchronous_commit` setting decides there).
    pub durability: Durability,
    /// Connections a PostgreSQL pool may open (SQLite's pool is sized for
    /// its single writer).
    pub max_connections: u32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            durability: Durability::default(),
            max_connections: 10,
        }
    }
}

/// The database a URL names, by its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite:`
    Sqlite,
    /// `postgres:` or `postgresql:`
    Postgres,
}

impl Backend {
    /// The backend for `url`, or `None` for a scheme no backend serves.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// [`open`] with explicit options.
pub async fn open_with(url: &str, options: &OpenOptions) -> Result<Stores, StoreError> {
    match Backend::of_url(url) {
        Some(Backend::Sqlite) => sqlite::open(url, options.durability).await,
        Some(Backend::Postgres) => postgres::open(url, options.max_connections).await,
        None => {
            // The scheme only: the rest of a URL can hold a password.
            let scheme = url.split(':').next().unwrap_or_default();
            Err(StoreError::Backend(format!(
                "unsupported storage URL scheme {scheme:?} \
                 (expected \"sqlite:\" or \"postgres:\")"
            )))
        }
    }
}
