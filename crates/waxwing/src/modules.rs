//! The module list of this build.

use std::sync::Arc;

use waxwing_core::Config;
use waxwing_core::hooks::{ModuleLoader, load};
use waxwing_modules::{
    adhoc, blocking, carbons, disco, last, mam, offline, ping, presence, private, register, roster,
    time, vcard, version,
};

/// Every module, in registration order. Order matters only within a hook
/// chain of equal priority.
pub fn all(config: &Config) -> Vec<Arc<dyn ModuleLoader>> {
    let pubsub = waxwing_modules::pubsub::PubSub::new(config);
    let mut modules = vec![
        load(roster::Roster),
        load(presence::Presence),
        load(offline::Offline::new()),
        load(mam::Mam::default()),
        // Blocking's hooks run first in both chains (Priority::EARLY).
        load(blocking::Blocking::new()),
        // After MAM, so that copies carry the archive's stanza-id.
        load(carbons::Carbons),
        load(vcard::VCard::new(pubsub.caps())),
        load(private::Private),
        load(last::Last::new()),
        load(adhoc::AdHoc::new().with_feeds(pubsub.feeds())),
        load(disco::Disco),
        load(ping::Ping),
        load(version::Version),
        load(time::Time),
        load(register::Register),
        load(waxwing_modules::push::Push),
        load(waxwing_modules::muc::Muc::new(config)),
        // PEP on accounts and the pubsub.<host> services (XEP-0060/0163).
        load(pubsub),
    ];
    if config.link_local.enabled {
        // XEP-0174: the LAN bridge on lan.<host>.
        modules.push(load(waxwing_modules::link_local::LinkLocal::new(
            config.link_local.clone(),
        )));
    }
    if !config.mam_enabled {
        modules.retain(|m| m.module_name() != "mam");
    }
    modules
}
