//! The module list of this build.

use std::sync::Arc;

use waxwing_core::hooks::{ModuleLoader, load};
use waxwing_modules::{disco, offline, ping, presence, register, roster, time, version};

/// Every module, in registration order. Order matters only within a hook
/// chain of equal priority.
pub fn all() -> Vec<Arc<dyn ModuleLoader>> {
    vec![
        load(roster::Roster),
        load(presence::Presence),
        load(offline::Offline),
        load(disco::Disco),
        load(ping::Ping),
        load(version::Version),
        load(time::Time),
        load(register::Register),
    ]
}
