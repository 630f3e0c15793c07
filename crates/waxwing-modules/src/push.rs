//! XEP-0357: Push Notifications. A client registers an app server (a
//! pubsub JID and node); when a message arrives that the client cannot
//! receive right now — its stream-managed session is detached, it said it
//! is inactive (XEP-0352: mobile OSes suspend such apps), or the account
//! has no session at all — we publish a summary to that node.
//!
//! The summary carries the message count and the sender, never the body:
//! app servers are third parties, and XEP-0357 §7 leaves bodies optional.

use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Event, EventHandler, Flow, Hook, Iq, IqHandler, IqResult, IqTarget, Module, Priority,
    RegisterError, Registrar, StanzaHook,
};
use waxwing_core::session::{SessionFlag, SessionHandle};
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::{Element, parse_stanza};

use crate::{internal, stanza_id};

/// `urn:xmpp:push:0`
pub const NS: &str = "urn:xmpp:push:0";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// Store key (not a `{ns}name` key, so private storage clients can't reach it).
const KEY: &str = "push:registrations";
/// Registrations kept per account.
const MAX_REGISTRATIONS: usize = 16;

/// Push notifications.
pub struct Push;

impl Module for Push {
    fn name(&self) -> &'static str {
        "push"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.iq_set(IqTarget::Account, NS, self.clone())?;
        reg.account_feature(NS);
        // Observes offline delivery without consuming it: offline storage still runs.
        reg.hook(Hook::Undeliverable, Priority::EARLY, self.clone());
        reg.on_events(self);
        Ok(())
    }
}

/// One app-server registration.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Registration {
    service: Jid,
    node: String,
    /// The resource that enabled it: only that client's absence triggers a push.
    resource: String,
    /// Publish options (e.g. the app server's secret), passed through as given.
    options: Option<Element>,
}

impl Registration {
    fn to_element(&self) -> Element {
        let mut el = Element::new("registration", NS)
            .with_attr("jid", self.service.to_string())
            .with_attr("node", self.node.as_str())
            .with_attr("resource", self.resource.as_str());
        if let Some(o) = &self.options {
            el.push_child(o.clone());
        }
        el
    }

    fn from_element(el: &Element) -> Option<Self> {
        Some(Registration {
            service: Jid::parse(el.attr("jid")?).ok()?,
            node: el.attr("node")?.to_string(),
            resource: el.attr("resource")?.to_string(),
            options: el.child("x", ns::DATA_FORMS).cloned(),
        })
    }
}

async fn load(cx: &Cx, user: &BareJid) -> Result<Vec<Registration>, StanzaError> {
    let xml = cx
        .stores()
        .private_xml
        .get(user, KEY)
        .await
        .map_err(internal)?;
    Ok(xml
        .and_then(|x| parse_stanza(&x, ns::CLIENT).ok())
        .map(|list| {
            list.children()
                .filter_map(Registration::from_element)
                .collect()
        })
        .unwrap_or_default())
}

async fn save(cx: &Cx, user: &BareJid, regs: &[Registration]) -> Result<(), StanzaError> {
    let mut list = Element::new("registrations", NS);
    for r in regs {
        list.push_child(r.to_element());
    }
    cx.stores()
        .private_xml
        .set(user, KEY, &list.to_xml())
        .await
        .map_err(internal)
}

#[async_trait]
impl IqHandler for Push {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult {
        let Jid::Full(from) = &iq.from else {
            return Err(StanzaError::cancel(Condition::NotAllowed));
        };
        if iq.to.as_ref().is_some_and(|t| t.bare() != from.bare()) {
            return Err(StanzaError::cancel(Condition::Forbidden));
        }
        let user = from.bare();
        let service = iq
            .payload
            .attr("jid")
            .and_then(|j| Jid::parse(j).ok())
            .ok_or_else(|| {
                StanzaError::modify(Condition::BadRequest).with_text("'jid' is required")
            })?;
        let node = iq.payload.attr("node").map(str::to_string);
        let mut regs = load(cx, user).await?;
        match iq.payload.name.as_str() {
            "enable" => {
                let node = node.ok_or_else(|| {
                    StanzaError::modify(Condition::BadRequest).with_text("'node' is required")
                })?;
                regs.retain(|r| !(r.service == service && r.node == node));
                if regs.len() >= MAX_REGISTRATIONS {
                    return Err(StanzaError::wait(Condition::ResourceConstraint));
                }
                regs.push(Registration {
                    service,
                    node,
                    resource: from.resource().to_string(),
                    options: iq.payload.child("x", ns::DATA_FORMS).cloned(),
                });
            }
            "disable" => regs
                .retain(|r| !(r.service == service && node.as_ref().is_none_or(|n| &r.node == n))),
            _ => return Err(StanzaError::modify(Condition::BadRequest)),
        }
        save(cx, user, &regs).await?;
        Ok(None)
    }
}

/// The XEP-0357 §5 summary publish to one app server.
fn notification(user: &BareJid, reg: &Registration, count: usize, sender: Option<&str>) -> Element {
    let field = |var: &str, value: &str| {
        Element::new("field", ns::DATA_FORMS)
            .with_attr("var", var)
            .with_child(Element::new("value", ns::DATA_FORMS).with_text(value))
    };
    let mut form = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "submit")
        .with_child(field("FORM_TYPE", "urn:xmpp:push:summary"))
        .with_child(field("message-count", &count.to_string()));
    if let Some(s) = sender {
        form.push_child(field("last-message-sender", s));
    }
    let mut pubsub = Element::new("pubsub", PUBSUB).with_child(
        Element::new("publish", PUBSUB)
            .with_attr("node", reg.node.as_str())
            .with_child(
                Element::new("item", PUBSUB)
                    .with_child(Element::new("notification", NS).with_child(form)),
            ),
    );
    if let Some(opts) = &reg.options {
        pubsub.push_child(Element::new("publish-options", PUBSUB).with_child(opts.clone()));
    }
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("id", stanza_id("push"))
        .with_attr("from", user.to_string())
        .with_attr("to", reg.service.to_string())
        .with_child(pubsub)
}

/// Messages worth waking a phone for: a body, or an encrypted payload.
fn is_important(msg: &Element) -> bool {
    msg.name == "message"
        && !matches!(msg.attr("type"), Some("error" | "groupchat" | "headline"))
        && (msg.has_child("body", ns::CLIENT) || msg.child_names().any(|(n, _)| n == "encrypted"))
}

async fn notify(cx: &Cx, user: &BareJid, msg: &Element, which: impl Fn(&Registration) -> bool) {
    let regs = match load(cx, user).await {
        Ok(r) => r,
        Err(_) => return,
    };
    let sender = msg
        .attr("from")
        .and_then(|f| Jid::parse(f).ok())
        .map(|j| j.to_bare().to_string());
    for reg in regs.iter().filter(|r| which(r)) {
        cx.route(notification(user, reg, 1, sender.as_deref()))
            .await;
    }
}

#[async_trait]
impl StanzaHook for Push {
    fn wants(&self, _hook: Hook, name: &str) -> bool {
        name == "message"
    }

    async fn handle_stanza(&self, cx: &Cx, _hook: Hook, msg: &mut Element) -> Flow {
        if is_important(msg)
            && let Some(user) = msg
                .attr("to")
                .and_then(|t| Jid::parse(t).ok())
                .map(|j| j.to_bare())
        {
            // Nobody is online: every registered client is absent.
            notify(cx, &user, msg, |_| true).await;
        }
        Flow::Continue
    }
}

#[async_trait]
impl EventHandler for Push {
    fn wants_deliveries(&self) -> bool {
        true
    }

    /// An important message to a session that is detached or inactive.
    fn wants_delivery(
        &self,
        _cx: &Cx,
        message: &Element,
        recipients: &[Arc<SessionHandle>],
    ) -> bool {
        // The flags first: a few loads, and nearly always no.
        recipients
            .iter()
            .any(|s| s.flag(SessionFlag::Detached) || s.flag(SessionFlag::Inactive))
            && is_important(message)
    }

    async fn on_event(&self, cx: &Cx, event: &Event) {
        match event {
            Event::MessageDelivered {
                message,
                recipients,
            } if is_important(message) => {
                for session in recipients {
                    if session.flag(SessionFlag::Detached) || session.flag(SessionFlag::Inactive) {
                        let jid = &session.jid;
                        let resource = jid.resource().to_string();
                        notify(cx, jid.bare(), message, |r| r.resource == resource).await;
                    }
                }
            }
            Event::UserDeleted(_) => {} // private_xml is cleared with the account's other fragments
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_round_trip() {
        let r = Registration {
            service: Jid::parse("push.example.com").unwrap(),
            node: "n1".into(),
            resource: "phone".into(),
            options: Some(Element::new("x", ns::DATA_FORMS).with_attr("type", "submit")),
        };
        assert_eq!(Registration::from_element(&r.to_element()), Some(r));
    }

    #[test]
    fn summary_has_no_body() {
        let user = BareJid::parse("romeo@example.net").unwrap();
        let reg = Registration {
            service: Jid::parse("push.example.com").unwrap(),
            node: "n1".into(),
            resource: "r".into(),
            options: None,
        };
        let n = notification(&user, &reg, 1, Some("juliet@example.com"));
        let xml = n.to_xml();
        assert!(xml.contains("urn:xmpp:push:summary"));
        assert!(xml.contains("juliet@example.com"));
        assert!(!xml.contains("last-message-body"));
    }

    #[test]
    fn only_real_messages_wake_a_phone() {
        let chat = Element::new("message", ns::CLIENT)
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"));
        assert!(is_important(&chat));
        let state = Element::new("message", ns::CLIENT).with_child(Element::new(
            "composing",
            "http://jabber.org/protocol/chatstates",
        ));
        assert!(!is_important(&state));
    }
}
