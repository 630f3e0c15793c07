//! RFC 6121 §2: roster management, versioning and pushes.

use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Iq, IqHandler, IqResult, IqTarget, Module, RegisterError, Registrar, StreamFeature,
};
use waxwing_proto::jid::BareJid;
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;
use waxwing_store::roster::{RosterItem, Subscription};

use crate::locks::UserLocks;
use crate::{internal, stanza_id};

/// Roster get/set (RFC 6121 §2) for every account.
pub struct Roster;

impl Module for Roster {
    fn name(&self) -> &'static str {
        "roster"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.iq(IqTarget::Account, ns::ROSTER, self.clone())?;
        reg.stream_feature(self);
        Ok(())
    }
}

impl StreamFeature for Roster {
    fn stream_features(&self, _cx: &Cx) -> Vec<Element> {
        vec![
            Element::new("ver", ns::ROSTER_VER),
            Element::new("sub", ns::PRE_APPROVAL),
        ]
    }
}

#[async_trait]
impl IqHandler for Roster {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult {
        let owner = iq.from.to_bare();
        // RFC 6121 §2.1.5/§2.1.3: only the account itself may touch its roster.
        if iq.to.as_ref().is_some_and(|t| t.bare() != &owner) {
            return Err(StanzaError::cancel(Condition::Forbidden));
        }
        if iq.is_set {
            set(cx, &owner, &iq.payload).await.map(|()| None)
        } else {
            get(cx, &owner, &iq).await
        }
    }
}

async fn get(cx: &Cx, owner: &BareJid, iq: &Iq) -> IqResult {
    if let Some(origin) = cx.origin() {
        origin.set_interested();
    }
    let stores = cx.stores();
    let version = stores.roster.version(owner).await.map_err(internal)?;
    // RFC 6121 §2.6.3: an up-to-date cache gets an empty result.
    if iq.payload.attr("ver") == Some(version.to_string().as_str()) {
        return Ok(None);
    }
    let mut query = Element::new("query", ns::ROSTER).with_attr("ver", version.to_string());
    for item in stores.roster.items(owner).await.map_err(internal)? {
        if item.in_roster {
            query.push_child(item_element(&item));
        }
    }
    Ok(Some(query))
}

async fn set(cx: &Cx, owner: &BareJid, query: &Element) -> Result<(), StanzaError> {
    let mut items = query.children();
    let (Some(el), None) = (items.next(), items.next()) else {
        return Err(StanzaError::modify(Condition::BadRequest).with_text("exactly one item"));
    };
    if !el.is("item", ns::ROSTER) {
        return Err(StanzaError::modify(Condition::BadRequest));
    }
    let contact = el
        .attr("jid")
        .and_then(|j| BareJid::parse(j).ok())
        .ok_or_else(|| StanzaError::modify(Condition::JidMalformed))?;
    let guard = UserLocks::global().lock(owner).await;
    let existing = cx
        .stores()
        .roster
        .get(owner, &contact)
        .await
        .map_err(internal)?;
    if el.attr("subscription") == Some("remove") {
        let Some(item) = existing.filter(|i| i.in_roster || i.pending_in || i.approved) else {
            return Err(StanzaError::cancel(Condition::ItemNotFound));
        };
        // RFC 6121 §2.5.2: removing an item cancels both subscription directions.
        let from = owner.to_string();
        let mut outgoing = Vec::new();
        if matches!(item.subscription, Subscription::To | Subscription::Both) || item.ask {
            outgoing.push(subscription_presence(&from, &contact, "unsubscribe"));
        }
        if matches!(item.subscription, Subscription::From | Subscription::Both) || item.pending_in {
            outgoing.push(subscription_presence(&from, &contact, "unsubscribed"));
        }
        let version = cx
            .stores()
            .roster
            .remove(owner, &contact)
            .await
            .map_err(internal)?;
        let mut removed = RosterItem::new(contact);
        removed.in_roster = false;
        push(cx, owner, &removed, version).await;
        // Routing takes the contact's roster lock: never while holding ours.
        drop(guard);
        for p in outgoing {
            cx.route(p).await;
        }
        return Ok(());
    }
    let mut groups = Vec::new();
    for g in el.children().filter(|c| c.is("group", ns::ROSTER)) {
        let name = g.text();
        if name.is_empty() {
            return Err(StanzaError::modify(Condition::NotAcceptable).with_text("empty group name"));
        }
        if groups.contains(&name) {
            return Err(StanzaError::modify(Condition::BadRequest).with_text("duplicate group"));
        }
        groups.push(name);
    }
    // RFC 6121 §2.1.5: a roster at `max_roster_items` rows takes no new
    // contact (hidden rows of pending requests count: they are stored too).
    if existing.is_none() {
        let rows = cx.stores().roster.items(owner).await.map_err(internal)?;
        if rows.len() >= cx.config().max_roster_items {
            return Err(StanzaError::cancel(Condition::NotAllowed).with_text("the roster is full"));
        }
    }
    // The client may not set subscription state (RFC 6121 §2.1.2.5); keep ours.
    let mut item = existing.unwrap_or_else(|| RosterItem::new(contact.clone()));
    item.name = el
        .attr("name")
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    item.groups = groups;
    item.in_roster = true;
    let version = cx
        .stores()
        .roster
        .put(owner, &item)
        .await
        .map_err(internal)?;
    push(cx, owner, &item, version).await;
    Ok(())
}

/// The `<item/>` of a roster result or push.
pub fn item_element(item: &RosterItem) -> Element {
    let mut el = Element::new("item", ns::ROSTER).with_attr("jid", item.contact.to_string());
    if !item.in_roster {
        el.set_attr("subscription", "remove");
        return el;
    }
    el.set_attr("subscription", item.subscription.as_str());
    if let Some(name) = &item.name {
        el.set_attr("name", name.as_str());
    }
    if item.ask {
        el.set_attr("ask", "subscribe");
    }
    if item.approved {
        el.set_attr("approved", "true");
    }
    for g in &item.groups {
        el.push_child(Element::new("group", ns::ROSTER).with_text(g.as_str()));
    }
    el
}

/// Sends a roster push (RFC 6121 §2.1.6) to every interested resource.
pub async fn push(cx: &Cx, owner: &BareJid, item: &RosterItem, version: u64) {
    let query = Element::new("query", ns::ROSTER)
        .with_attr("ver", version.to_string())
        .with_child(item_element(item));
    for session in cx.sessions_of(owner) {
        if session.is_interested() {
            let iq = Element::new("iq", ns::CLIENT)
                .with_attr("type", "set")
                .with_attr("id", stanza_id("push"))
                .with_attr("to", session.jid.to_string())
                .with_child(query.clone());
            session.send(iq);
        }
    }
}

/// A subscription-related presence stanza from a bare JID.
pub fn subscription_presence(from: &str, to: &BareJid, ty: &str) -> Element {
    Element::new("presence", ns::CLIENT)
        .with_attr("from", from)
        .with_attr("to", to.to_string())
        .with_attr("type", ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_element_carries_state() {
        let mut item = RosterItem::new(BareJid::parse("juliet@example.com").unwrap());
        item.name = Some("Juliet".into());
        item.groups = vec!["Friends".into()];
        item.subscription = Subscription::To;
        item.ask = true;
        let el = item_element(&item);
        assert_eq!(el.attr("subscription"), Some("to"));
        assert_eq!(el.attr("ask"), Some("subscribe"));
        assert_eq!(el.attr("name"), Some("Juliet"));
        assert_eq!(
            el.children().next().map(|g| g.text()),
            Some("Friends".into())
        );
        item.in_roster = false;
        assert_eq!(item_element(&item).attr("subscription"), Some("remove"));
    }
}
