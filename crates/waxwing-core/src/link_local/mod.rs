//! XEP-0174: Link-Local Messaging (serverless XMPP on the LAN).
//!
//! The [`Endpoint`] announces local entities as `_presence._tcp` DNS-SD
//! services over multicast DNS (`mdns-sd`, which runs one thread of its
//! own), browses and resolves the peers of the LAN, and carries messages
//! over serverless streams (`<stream:stream>` without SASL, `from`/`to`
//! being `user@machine`), opened by either side, upgraded to TLS when both
//! offer it. Presence lives in the TXT records ([`txt`]); names and their
//! gateway JIDs in [`name`].
//!
//! Two users of the endpoint: `waxwing link-local` (a standalone peer, no
//! server) and the server's bridge (`waxwing_modules::link_local`), which
//! announces opted-in accounts and shows LAN peers at `lan.<host>`.
//!
//! Peers are unauthenticated (see SECURITY.md): a stream is accepted only
//! from an address the claimed peer announced, peers and streams are
//! capped, and each peer address has a stanza budget.

mod endpoint;
pub mod name;
mod stream;
pub mod txt;

pub use endpoint::{Endpoint, EndpointConfig, LinkEvent, Peer, SendError, StartError};

/// The DNS-SD service type of XEP-0174.
pub const SERVICE_TYPE: &str = "_presence._tcp.local.";
