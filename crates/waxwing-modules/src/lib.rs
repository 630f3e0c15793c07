//! Waxwing's protocol modules. Each sees only the module API (`Cx`) of
//! waxwing-core: no sockets, no session internals.
#![forbid(unsafe_code)]

pub mod adhoc;
pub mod avatar;
pub mod blocking;
pub mod bookmarks;
pub mod caps;
pub mod carbons;
pub mod contact_addresses;
pub mod disco;
pub mod extdisco;
pub mod invite;
pub mod last;
pub mod link_local;
mod locks;
pub mod mam;
pub mod motd;
pub mod muc;
pub mod offline;
pub mod ping;
pub mod presence;
pub mod private;
pub mod pubsub;
pub mod push;
pub mod register;
pub mod roster;
pub mod time;
pub mod upload;
pub mod vcard;
pub mod version;
pub mod web_client;

use waxwing_proto::stanza::{Condition, StanzaError};

/// Store failures become `internal-server-error`; the detail goes to the log,
/// never to the client.
pub(crate) fn internal(e: waxwing_store::StoreError) -> StanzaError {
    tracing::error!(error = %e, "storage error");
    StanzaError::wait(Condition::InternalServerError)
}

/// An id for server-generated stanzas.
pub(crate) fn stanza_id(prefix: &str) -> String {
    format!("{prefix}-{}", waxwing_core::random_id())
}
