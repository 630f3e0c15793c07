//! A module loaded into every test server (and only there) that panics on
//! demand, to prove that a bug in one handler fails one stanza or one
//! event, never the stream or the server. Inert unless asked:
//!
//! - an IQ get/set with a `<panic xmlns='urn:waxwing:test:panic'/>` payload,
//!   to the server or to an account, panics in the IQ handler;
//! - a message or presence carrying `<panic xmlns='…' on='WHERE'/>` panics
//!   on the `Outbound` hook (`on='outbound'`), the `Inbound` hook
//!   (`on='inbound'`), in `Event::MessageDelivered` (`on='delivered'`), or on
//!   the `Outbound` hook while holding the sender's session presence lock
//!   (`on='presence-lock'`); errors (which echo the payload) never panic;
//! - `Event::SessionBound` / `Event::SessionClosed` of a resource named
//!   `panic-on-bound` / `panic-on-close` panic.
//!
//! It also readdresses on demand: a message carrying
//! `<readdress xmlns='…' to='JID'/>` leaves its `Outbound` hook addressed
//! to JID (the trigger removed), as a module that rewrites addresses
//! would; the hooks after it must see the new address. Every other
//! stanza is passed on from `decide_now`, so that ordinary traffic in the
//! tests takes the router's path for stanzas no hook was handed to change.
//!
//! It is registered first, so its hooks and event handler run before every
//! real module's: a panic that stopped the chain would be visible.

use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Event, EventHandler, Flow, Hook, Iq, IqHandler, IqResult, IqTarget, Module, Priority,
    RegisterError, Registrar, StanzaHook,
};
use waxwing_proto::xml::Element;

/// The namespace of the `<panic/>` trigger.
pub const NS: &str = "urn:waxwing:test:panic";

/// The resource whose binding panics `Event::SessionBound`.
pub const ON_BOUND: &str = "panic-on-bound";
/// The resource whose end panics `Event::SessionClosed`.
pub const ON_CLOSE: &str = "panic-on-close";

/// `<panic xmlns='urn:waxwing:test:panic' on='{on}'/>`.
pub fn trigger(on: &str) -> String {
    format!("<panic xmlns='{NS}' on='{on}'/>")
}

pub struct Panicker;

impl Module for Panicker {
    fn name(&self) -> &'static str {
        "test-panicker"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.iq(IqTarget::Server, NS, self.clone())?;
        reg.iq(IqTarget::Account, NS, self.clone())?;
        reg.hook(Hook::Outbound, Priority(i32::MIN), self.clone());
        reg.hook(Hook::Inbound, Priority(i32::MIN), self.clone());
        reg.on_events(self);
        Ok(())
    }
}

/// Where the stanza asks for a panic, unless it is an error.
fn asked(stanza: &Element) -> Option<&str> {
    if stanza.attr("type") == Some("error") {
        return None;
    }
    // By name first: a routed message's payload is not parsed for this
    // (`lazy_payload.rs` counts the parses).
    if !stanza.has_child("panic", NS) {
        return None;
    }
    stanza.child("panic", NS).and_then(|p| p.attr("on"))
}

#[async_trait]
impl IqHandler for Panicker {
    async fn handle_iq(&self, _cx: &Cx, iq: Iq) -> IqResult {
        panic!("test panic in an IQ handler ({})", iq.id);
    }
}

/// `<readdress xmlns='urn:waxwing:test:panic' to='{to}'/>`.
pub fn readdress(to: &str) -> String {
    format!("<readdress xmlns='{NS}' to='{to}'/>")
}

#[async_trait]
impl StanzaHook for Panicker {
    fn decide_now(&self, _cx: &Cx, _hook: Hook, stanza: &Element) -> Option<Flow> {
        // By name: an ordinary message's payload stays unparsed
        // (`tests/lazy_payload.rs` counts parses).
        (asked(stanza).is_none() && !stanza.has_child("readdress", NS)).then_some(Flow::Continue)
    }

    async fn handle_stanza(&self, cx: &Cx, hook: Hook, stanza: &mut Element) -> Flow {
        if hook == Hook::Outbound
            && let Some(to) = stanza
                .child("readdress", NS)
                .and_then(|r| r.attr("to"))
                .map(str::to_string)
        {
            stanza.remove_children(|c| c.name == "readdress" && c.ns == NS);
            stanza.set_attr("to", to);
            return Flow::Continue;
        }
        match (hook, asked(stanza)) {
            (Hook::Outbound, Some("outbound")) => panic!("test panic on the Outbound hook"),
            (Hook::Inbound, Some("inbound")) => panic!("test panic on the Inbound hook"),
            (Hook::Outbound, Some("presence-lock")) => {
                let origin = cx.origin().expect("from a client session");
                origin.with_presence(|_| -> Flow {
                    panic!("test panic under the session's presence lock")
                })
            }
            _ => Flow::Continue,
        }
    }
}

#[async_trait]
impl EventHandler for Panicker {
    async fn on_event(&self, _cx: &Cx, event: &Event) {
        match event {
            Event::SessionBound(s) if s.jid.resource() == ON_BOUND => {
                panic!("test panic in SessionBound")
            }
            Event::SessionClosed(s) if s.jid.resource() == ON_CLOSE => {
                panic!("test panic in SessionClosed")
            }
            Event::MessageDelivered { message, .. } if asked(message) == Some("delivered") => {
                panic!("test panic in MessageDelivered")
            }
            _ => {}
        }
    }

    fn wants_deliveries(&self) -> bool {
        true
    }

    /// Only the messages it panics on: wanting every delivery would make
    /// every test server announce (and copy) every message, and the
    /// router's path for messages nobody wants would go untested.
    fn wants_delivery(
        &self,
        _cx: &waxwing_core::hooks::Cx,
        message: &Element,
        _recipients: &[Arc<waxwing_core::session::SessionHandle>],
    ) -> bool {
        asked(message) == Some("delivered")
    }
}
