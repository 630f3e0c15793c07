//! XEP-0160: offline messages, stamped with XEP-0203 delay and delivered in
//! order at the next available presence.
//!
//! The module keeps the set of accounts that may have stored messages
//! (loaded at start, added to on every store), so that the initial presence
//! of an account without any, nearly every login, costs no storage read.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Event, EventHandler, Flow, Hook, Module, Priority, RegisterError, Registrar, StanzaHook,
};
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::{Element, parse_stanza};

/// XEP-0334 message processing hints.
const HINTS: &str = "urn:xmpp:hints";

/// Offline storage.
#[derive(Default)]
pub struct Offline {
    waiting: Mutex<Waiting>,
}

/// Which accounts may have messages stored.
#[derive(Default)]
struct Waiting {
    /// The store's owners were read at start. Until then (or if that read
    /// failed) every initial presence reads the store.
    loaded: bool,
    owners: HashSet<BareJid>,
}

impl Offline {
    pub fn new() -> Self {
        Self::default()
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn load_owners(&self, cx: &Cx) {
        match cx.stores().offline.owners().await {
            Ok(owners) => {
                let mut w = self.waiting();
                w.owners.extend(owners);
                w.loaded = true;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading who has offline messages failed; every login will look")
            }
        }
    }

    /// Whether `user`'s messages must be read now. The account leaves the
    /// set before the read, so a message stored during the delivery puts it
    /// back and is picked up at the next login.
    fn take(&self, user: &BareJid) -> bool {
        let mut w = self.waiting();
        w.owners.remove(user) || !w.loaded
    }

    /// Delivery stopped short (or failed): look again next time.
    fn keep(&self, user: &BareJid) {
        self.waiting().owners.insert(user.clone());
    }
}

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
    fn wants(&self, _hook: Hook, name: &str) -> bool {
        name == "message"
    }

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
            // Into the set once stored: whichever login comes next reads it.
            Ok(true) => self.keep(&user),
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
        let session = match event {
            Event::InitialPresence(session) => session,
            Event::Started => return self.load_owners(cx).await,
            Event::UserDeleted(user) => {
                self.waiting().owners.remove(user);
                return;
            }
            _ => return,
        };
        // Negative priority: the resource never gets bare-JID messages (RFC 6121 §8.5.2.1.1).
        if session.priority() < 0 {
            return;
        }
        let user = session.jid.bare();
        if !self.take(user) {
            return;
        }
        let messages = match cx.stores().offline.list(user).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, %user, "reading offline messages failed");
                self.keep(user);
                return;
            }
        };
        let mut delivered = None;
        for m in messages {
            match parse_stanza(&m.stanza, ns::CLIENT) {
                Ok(mut el) => {
                    el.set_attr("to", session.jid.to_string());
                    if !session.send(el) {
                        self.keep(user);
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
            self.keep(user);
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
