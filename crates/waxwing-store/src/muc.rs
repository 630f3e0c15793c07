//! XEP-0045: Multi-User Chat — persistent rooms.
//!
//! Only what must survive a restart is stored: the configuration, the
//! subject and the affiliations (with registered nicknames). Occupants,
//! roles and discussion history live in memory.

use std::fmt;

use async_trait::async_trait;
use waxwing_proto::jid::BareJid;

use crate::StoreError;

/// A long-lived relation between a bare JID and a room (XEP-0045 §5.2).
/// `none` is the absence of a row, so it has no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Affiliation {
    /// Full control of the room.
    Owner,
    /// May ban, grant membership and moderate.
    Admin,
    /// On the member list; may enter a members-only room.
    Member,
    /// Banned.
    Outcast,
}

impl Affiliation {
    /// The wire and column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Owner => "owner",
            Affiliation::Admin => "admin",
            Affiliation::Member => "member",
            Affiliation::Outcast => "outcast",
        }
    }

    /// Parses what [`Affiliation::as_str`] writes.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "owner" => Affiliation::Owner,
            "admin" => Affiliation::Admin,
            "member" => Affiliation::Member,
            "outcast" => Affiliation::Outcast,
            _ => return None,
        })
    }
}

impl fmt::Display for Affiliation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One affiliation row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomAffiliation {
    /// A bare JID (a user or a whole domain).
    pub jid: BareJid,
    /// What it is to the room.
    pub affiliation: Affiliation,
    /// A nickname registered with the room (XEP-0045 §7.10); unique per room.
    pub nick: Option<String>,
    /// Why it was given (shown in ban lists).
    pub reason: Option<String>,
}

/// A room's own data, without its affiliations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    /// `room@service`.
    pub jid: BareJid,
    /// The configuration, opaque to the store: the MUC module writes its
    /// `muc#roomconfig` form so that one parser reads owners and the database.
    pub config: String,
    /// The current subject; empty when none was set.
    pub subject: String,
    /// Nickname of whoever set the subject.
    pub subject_by: Option<String>,
}

/// A room as loaded at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoom {
    /// Configuration and subject.
    pub room: RoomRecord,
    /// Sorted by JID.
    pub affiliations: Vec<RoomAffiliation>,
}

/// Persistent MUC rooms.
#[async_trait]
pub trait MucStore: Send + Sync {
    /// Creates the room, or replaces its configuration, subject and whole
    /// affiliation list, atomically (a room that just became persistent).
    async fn replace_room(&self, room: &StoredRoom) -> Result<(), StoreError>;

    /// Updates the configuration and subject of an existing room; its
    /// affiliations are untouched. `NotFound` if it was never stored.
    async fn save_room(&self, room: &RoomRecord) -> Result<(), StoreError>;

    /// Sets one affiliation (insert or replace). `NotFound` if the room
    /// was never stored; `AlreadyExists` if another JID holds the nick.
    async fn set_affiliation(
        &self,
        room: &BareJid,
        item: &RoomAffiliation,
    ) -> Result<(), StoreError>;

    /// Removes one affiliation; removing an absent one is not an error.
    async fn remove_affiliation(&self, room: &BareJid, jid: &BareJid) -> Result<(), StoreError>;

    /// Every stored room of a MUC service domain, sorted by JID.
    async fn rooms(&self, domain: &str) -> Result<Vec<StoredRoom>, StoreError>;

    /// Deletes a room and its affiliations. `NotFound` if it was never stored.
    async fn delete_room(&self, room: &BareJid) -> Result<(), StoreError>;
}
