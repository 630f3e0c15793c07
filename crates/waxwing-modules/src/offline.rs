//! XEP-0160: offline messages, stamped with XEP-0203 delay and delivered in
//! order at the next available presence.

use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Event, EventHandler, Flow, Hook, Module, Priority, RegisterError, Registrar, StanzaHook,
};
use waxwing_proto::jid::Jid;
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::{Element, parse_stanza};

/// XEP-0334 message processing hints.
const HINTS: &str = "urn:xmpp:hints";

/// Offline storage.
pub struct Offline;

impl Module for Offline {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.server_feature(ns::OFFLINE);
        reg.hook(Hook::Undeliverable, Priority::NORMAL, self.clone());
        reg.on_events(self);
        Ok(())
    }
}

/// Chat states and receipts alone are not worth keeping (XEP-0160 §3, XEP-0334).
fn worth_storing(msg: &Element) -> bool {
    if msg.child("no-store", HINTS).is_some() {
        return false;
    }
    msg.child("body", ns::CLIENT).is_some() || msg.child("store", HINTS).is_some()
}

#[async_trait]
impl StanzaHook for Offline {
    async fn handle_stanza(&self, cx: &Cx, _hook: Hook, msg: &mut Element) -> Flow {
        if msg.name != "message" {
            return Flow::Continue;
        }
        if !worth_storing(msg) {
            return Flow::Handled;
        }
        let Some(to) = msg.attr("to").and_then(|t| Jid::parse(t).ok()) else {
            return Flow::Continue;
        };
        let user = to.to_bare();
        let mut stored = msg.clone();
        stored
            .remove_children(|c| c.is("delay", ns::DELAY) && c.attr("from") == Some(user.domain()));
        stored.push_child(
            Element::new("delay", ns::DELAY)
                .with_attr("from", user.domain())
                .with_attr("stamp", waxwing_core::time::now())
                .with_text("Offline Storage"),
        );
        match cx
            .stores()
            .offline
            .push(&user, &stored.to_xml(), cx.config().offline_quota)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                cx.bounce(
                    msg,
                    StanzaError::cancel(Condition::ServiceUnavailable)
                        .with_text("offline storage is full"),
                )
                .await;
            }
            Err(e) => {
                tracing::error!(error = %e, %user, "storing an offline message failed");
                cx.bounce(msg, StanzaError::wait(Condition::InternalServerError))
                    .await;
            }
        }
        Flow::Handled
    }
}

#[async_trait]
impl EventHandler for Offline {
    async fn on_event(&self, cx: &Cx, event: &Event) {
        let Event::InitialPresence(session) = event else {
            return;
        };
        // Negative priority: the resource never gets bare-JID messages (RFC 6121 §8.5.2.1.1).
        if session.priority() < 0 {
            return;
        }
        let user = session.jid.bare();
        let messages = match cx.stores().offline.list(user).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, %user, "reading offline messages failed");
                return;
            }
        };
        let mut delivered = None;
        for m in messages {
            match parse_stanza(&m.stanza, ns::CLIENT) {
                Ok(mut el) => {
                    el.set_attr("to", session.jid.to_string());
                    if !session.send(el) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(id = m.id, error = %e, "dropping a corrupt offline message")
                }
            }
            delivered = Some(m.id);
        }
        // Removed only after being handed over: a crash in between
        // redelivers rather than loses.
        if let Some(up_to) = delivered
            && let Err(e) = cx.stores().offline.remove_up_to(user, up_to).await
        {
            tracing::error!(error = %e, %user, "removing delivered offline messages failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_meaningful_messages_are_stored() {
        let body = Element::new("message", ns::CLIENT)
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"));
        assert!(worth_storing(&body));
        let state = Element::new("message", ns::CLIENT).with_child(Element::new(
            "composing",
            "http://jabber.org/protocol/chatstates",
        ));
        assert!(!worth_storing(&state));
        let hinted = state.clone().with_child(Element::new("store", HINTS));
        assert!(worth_storing(&hinted));
        let no_store = body.with_child(Element::new("no-store", HINTS));
        assert!(!worth_storing(&no_store));
    }
}
