//! Example module: a message of the day. The one to copy when writing a
//! module (docs/modules.md walks through it). Loaded when the configuration
//! has a `[modules.motd]` table:
//!
//! ```toml
//! [modules.motd]
//! text = "Maintenance on Sunday 02:00 UTC."
//! ```
//!
//! Each client gets the text once per login, after its initial presence,
//! and can ask for it again: `<iq type='get'><motd xmlns='urn:waxwing:motd'/></iq>`.
//! A reload (SIGHUP, `waxwing admin reload`) that changes the text reaches
//! the module as `Event::ConfigReloaded`: options are parsed then, not per use.

use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use serde::Deserialize;
use waxwing_core::Config;
use waxwing_core::config::ConfigError;
use waxwing_core::hooks::{
    Cx, Event, EventHandler, Iq, IqHandler, IqResult, IqTarget, Module, RegisterError, Registrar,
};
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

/// The namespace of the IQ this module answers.
pub const NS: &str = "urn:waxwing:motd";

/// `[modules.motd]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// The message.
    text: String,
}

pub struct Motd {
    text: RwLock<Arc<str>>,
}

impl Motd {
    /// The module if `[modules.motd]` is configured.
    pub fn from_config(config: &Config) -> Result<Option<Motd>, ConfigError> {
        let options = config.module_options::<Options>("motd")?;
        Ok(options.map(|o| Motd {
            text: RwLock::new(o.text.into()),
        }))
    }

    fn text(&self) -> Arc<str> {
        self.text
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Module for Motd {
    fn name(&self) -> &'static str {
        "motd"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.server_feature(NS);
        reg.iq_get(IqTarget::Server, NS, self.clone())?;
        reg.on_events(self);
        Ok(())
    }
}

#[async_trait]
impl IqHandler for Motd {
    async fn handle_iq(&self, _cx: &Cx, _iq: Iq) -> IqResult {
        Ok(Some(Element::new("motd", NS).with_text(&*self.text())))
    }
}

#[async_trait]
impl EventHandler for Motd {
    async fn on_event(&self, cx: &Cx, event: &Event) {
        match event {
            Event::InitialPresence(session) => {
                let message = Element::new("message", ns::CLIENT)
                    .with_attr("from", session.jid.domain())
                    .with_attr("to", session.jid.to_string())
                    .with_attr("type", "headline")
                    .with_child(Element::new("body", ns::CLIENT).with_text(&*self.text()));
                cx.route(message).await;
            }
            // The reload validated the table already (it is the same
            // `module_options` call as at start), so an error is not expected.
            Event::ConfigReloaded { .. } => match cx.config().module_options::<Options>("motd") {
                Ok(Some(o)) => {
                    *self.text.write().unwrap_or_else(PoisonError::into_inner) = o.text.into();
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "[modules.motd] not reloaded"),
            },
            _ => {}
        }
    }
}
