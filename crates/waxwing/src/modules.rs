//! The module list of this build.

use std::sync::Arc;

use waxwing_core::Config;
use waxwing_core::hooks::{ModuleLoader, load};
use waxwing_modules::{
    adhoc, blocking, carbons, disco, extdisco, last, mam, motd, offline, ping, presence, private,
    register, roster, time, vcard, version,
};

/// The modules of this build, in registration order, without those named
/// in `modules_disabled` (see [`check_disabled`]). Order matters only
/// within a hook chain of equal priority.
pub fn all(config: &Config) -> Vec<Arc<dyn ModuleLoader>> {
    let mut modules = every(config);
    modules.retain(|m| !config.modules_disabled.iter().any(|d| d == m.module_name()));
    modules
}

/// Modules that are loaded only when their `[modules.<name>]` table exists.
const CONFIGURED: &[&str] = &["motd"];

/// Refuses a `modules_disabled` entry or a `[modules.<name>]` table that
/// names no module of this build (a typo must not leave a module running
/// that the operator meant to turn off, or silently ignore options), and
/// options a module does not accept.
pub fn check_disabled(config: &Config) -> Result<(), String> {
    motd::Motd::from_config(config).map_err(|e| e.to_string())?;
    let mut known: Vec<&'static str> = every(config).iter().map(|m| m.module_name()).collect();
    for c in CONFIGURED {
        if !known.contains(c) {
            known.push(c);
        }
    }
    for t in config.module_tables.keys() {
        if !CONFIGURED.contains(&t.as_str()) {
            return Err(format!(
                "[modules.{t}]: no module of this build takes options by that name; those that do: {}",
                CONFIGURED.join(", ")
            ));
        }
    }
    for d in &config.modules_disabled {
        if !known.contains(&d.as_str()) {
            return Err(format!(
                "modules_disabled: no module is called {d:?}; the modules are: {}",
                known.join(", ")
            ));
        }
    }
    Ok(())
}

fn every(config: &Config) -> Vec<Arc<dyn ModuleLoader>> {
    let pubsub = waxwing_modules::pubsub::PubSub::new(config);
    // Features built on PEP plug into the engine (pubsub/extension.rs).
    pubsub.extend(Arc::new(waxwing_modules::bookmarks::CompatMirror));
    pubsub.extend(Arc::new(waxwing_modules::avatar::PepToVCard));
    let mut modules = vec![
        load(roster::Roster),
        load(presence::Presence),
        load(offline::Offline::new()),
        load(mam::Mam::default()),
        // Blocking's hooks run first in both chains (Priority::EARLY).
        load(blocking::Blocking::new()),
        // After MAM, so that copies carry the archive's stanza-id.
        load(carbons::Carbons),
        load(vcard::VCard::new(pubsub.caps(), pubsub.extensions())),
        load(private::Private),
        load(last::Last::new()),
        load(adhoc::AdHoc::new().with_feeds(pubsub.feeds())),
        load(disco::Disco),
        load(ping::Ping),
        load(version::Version),
        load(time::Time),
        load(extdisco::ExtDisco),
        load(register::Register),
        load(waxwing_modules::invite::Invites),
        load(waxwing_modules::push::Push),
        load(waxwing_modules::muc::Muc::new(config)),
        // PEP on accounts and the pubsub.<host> services (XEP-0060/0163).
        load(pubsub),
        // XEP-0363 on upload.<host>, with its routes on the HTTP listener.
        load(waxwing_modules::upload::Upload::new(config)),
        // Converse.js at / of the HTTP listener (fetched once into data_dir).
        load(waxwing_modules::web_client::WebClient::new(config)),
    ];
    // Checked by `check_disabled` before the server starts.
    if let Ok(Some(m)) = motd::Motd::from_config(config) {
        modules.push(load(m));
    }
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
