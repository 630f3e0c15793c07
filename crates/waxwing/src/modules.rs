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
        // XEP-0363 on upload.<host>, with its routes on the HTTP listener.
        load(waxwing_modules::upload::Upload::new(config)),
        // Converse.js at / of the HTTP listener (fetched once into data_dir).
        load(waxwing_modules::web_client::WebClient::new(config)),
    ];
    if config.link_local.enabled {
        // XEP-0174: the LAN bridge on lan.<host>.
        modules.push(load(waxwing_modules::link_local::LinkLocal::new(
            config.link_local.clone(),
        )));
    }
    // Upload URLs need an HTTP listener (or a proxy in front of one).
    let http = !config.http.listen.is_empty()
        || !config.http.listen_tls.is_empty()
        || config.http.public_url.is_some();
    if config.upload.domains.is_empty() || !http {
        modules.retain(|m| m.module_name() != "upload");
    }
    let listener = !config.http.listen.is_empty() || !config.http.listen_tls.is_empty();
    if !config.http.web_client || !listener {
        modules.retain(|m| m.module_name() != "web_client");
    }
    if !config.mam_enabled {
        modules.retain(|m| m.module_name() != "mam");
    }
    modules
}
