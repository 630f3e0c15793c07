//! RFC 6121 §3–4: the presence engine. Subscription state machine
//! (Appendix A, with pre-approval), initial presence with probes, broadcast,
//! directed presence, and unavailable when a session ends for any reason.
//!
//! "Outbound" is presence sent by one of our users; "inbound" is presence
//! addressed to one of our users. Both sides of a local pair run here, one
//! after the other, through the router — exactly as they would across
//! servers, so federation needs no second implementation.

use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Event, EventHandler, Flow, Hook, Module, Priority, RegisterError, Registrar, StanzaHook,
};
use waxwing_core::session::SessionHandle;
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;
use waxwing_store::roster::{RosterItem, Subscription};

use crate::locks::UserLocks;
use crate::roster::{push, subscription_presence};

/// The presence engine.
pub struct Presence;

impl Module for Presence {
    fn name(&self) -> &'static str {
        "presence"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.hook(Hook::Outbound, Priority::NORMAL, self.clone());
        reg.hook(Hook::Inbound, Priority::NORMAL, self.clone());
        reg.on_events(self);
        Ok(())
    }
}

fn subscribed_from(item: &RosterItem) -> bool {
    matches!(item.subscription, Subscription::From | Subscription::Both)
}

fn subscribed_to(item: &RosterItem) -> bool {
    matches!(item.subscription, Subscription::To | Subscription::Both)
}

#[async_trait]
impl StanzaHook for Presence {
    fn wants(&self, _hook: Hook, name: &str) -> bool {
        name == "presence"
    }

    async fn handle_stanza(&self, cx: &Cx, hook: Hook, stanza: &mut Element) -> Flow {
        if stanza.name != "presence" {
            return Flow::Continue;
        }
        match hook {
            Hook::Outbound => outbound(cx, stanza).await,
            Hook::Inbound => inbound(cx, stanza).await,
            Hook::Undeliverable => Flow::Continue,
        }
    }
}

#[async_trait]
impl EventHandler for Presence {
    async fn on_event(&self, cx: &Cx, event: &Event) {
        match event {
            Event::SessionClosed(session) => {
                // RFC 6121 §4.5.1: a session that ends without unavailable
                // presence is treated as if it had sent one.
                let unavailable = Element::new("presence", ns::CLIENT)
                    .with_attr("type", "unavailable")
                    .with_attr("from", session.jid.to_string());
                broadcast(cx, session, unavailable, false).await;
            }
            Event::UserDeleted(user) => forget_deleted_user(cx, user).await,
            _ => {}
        }
    }
}

async fn outbound(cx: &Cx, stanza: &mut Element) -> Flow {
    let Some(origin) = cx.origin().cloned() else {
        return Flow::Continue;
    };
    let to = stanza.attr("to").and_then(|t| Jid::parse(t).ok());
    let ty = stanza.attr("type").map(str::to_string);
    match (ty.as_deref(), to) {
        (None | Some("unavailable"), None) => {
            broadcast(cx, &origin, stanza.clone(), ty.is_none()).await;
            Flow::Handled
        }
        (None | Some("unavailable"), Some(to)) => {
            directed(cx, &origin, &to, ty.is_none()).await;
            Flow::Continue
        }
        (Some(t @ ("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")), Some(to)) => {
            subscription_out(cx, origin.jid.bare(), to.bare(), t, stanza).await;
            Flow::Handled
        }
        // RFC 6121 §4.3: probes are the server's business, not the client's.
        (Some("probe"), _) => Flow::Handled,
        (Some("error"), _) => Flow::Continue,
        _ => {
            cx.bounce(stanza, StanzaError::modify(Condition::BadRequest))
                .await;
            Flow::Handled
        }
    }
}

fn parse_priority(p: &Element) -> i8 {
    p.child("priority", ns::CLIENT)
        .and_then(|e| e.text().trim().parse::<i64>().ok())
        .map(|v| v.clamp(i8::MIN as i64, i8::MAX as i64) as i8)
        .unwrap_or(0)
}

/// Broadcast of available or unavailable presence (RFC 6121 §4.2, §4.4, §4.5).
async fn broadcast(cx: &Cx, origin: &Arc<SessionHandle>, mut presence: Element, available: bool) {
    presence.remove_attr("to");
    presence.set_attr("from", origin.jid.to_string());
    let (first, directed) = if available {
        let priority = parse_priority(&presence);
        let first = origin.with_presence(|s| {
            let first = s.last.is_none();
            s.last = Some(presence.clone());
            s.priority = priority;
            first
        });
        (first, Vec::new())
    } else {
        let (was, directed) = origin.with_presence(|s| {
            let was = s.last.take().is_some();
            (
                was,
                std::mem::take(&mut s.directed)
                    .into_iter()
                    .collect::<Vec<_>>(),
            )
        });
        if !was && directed.is_empty() {
            return;
        }
        (false, directed)
    };
    let user = origin.jid.bare();
    let roster = match cx.stores().roster.items(user).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, %user, "roster read failed during presence broadcast");
            Vec::new()
        }
    };
    for item in roster.iter().filter(|i| subscribed_from(i)) {
        let mut p = presence.clone();
        p.set_attr("to", item.contact.to_string());
        cx.route(p).await;
    }
    for j in directed {
        let mut p = presence.clone();
        p.set_attr("to", j.to_string());
        cx.route(p).await;
    }
    let siblings: Vec<_> = cx
        .sessions_of(user)
        .into_iter()
        .filter(|s| s.id != origin.id)
        .collect();
    // RFC 6121 §4.2.2, §4.4.2: every available resource of the account,
    // the sender included, sees the broadcast.
    for s in siblings.iter().chain(available.then_some(origin)) {
        if s.is_available() {
            let mut p = presence.clone();
            p.set_attr("to", s.jid.to_string());
            s.send(p);
        }
    }
    if !first {
        return;
    }
    // Initial presence: ask contacts for theirs (RFC 6121 §4.3) and show
    // this resource what the account's other resources are doing.
    for item in roster.iter().filter(|i| subscribed_to(i)) {
        let probe = Element::new("presence", ns::CLIENT)
            .with_attr("type", "probe")
            .with_attr("from", origin.jid.to_string())
            .with_attr("to", item.contact.to_string());
        cx.route(probe).await;
    }
    for s in &siblings {
        if let Some(mut p) = s.with_presence(|st| st.last.clone()) {
            p.set_attr("to", origin.jid.to_string());
            origin.send(p);
        }
    }
    // RFC 6121 §3.1.3: subscription requests that arrived while offline.
    for item in roster.iter().filter(|i| i.pending_in) {
        let mut p = subscription_presence(&item.contact.to_string(), user, "subscribe");
        p.set_attr("to", user.to_string());
        origin.send(p);
    }
    cx.emit(Event::InitialPresence(origin.clone())).await;
}

/// Directed presence (RFC 6121 §4.6): remember recipients who would not get
/// our broadcasts, so that they hear when we go away.
async fn directed(cx: &Cx, origin: &Arc<SessionHandle>, to: &Jid, available: bool) {
    let user = origin.jid.bare();
    if to.bare() == user {
        return;
    }
    let entitled = match cx.stores().roster.get(user, to.bare()).await {
        Ok(Some(item)) => subscribed_from(&item),
        _ => false,
    };
    if entitled {
        return;
    }
    origin.with_presence(|s| {
        if available && s.last.is_some() {
            s.directed.insert(to.clone());
        } else {
            s.directed.remove(to);
        }
    });
}

/// Most bytes of a subscription request kept while it waits for an answer.
const MAX_STORED_REQUEST: usize = 4096;

/// XEP-0172: User Nickname, which a subscription request may carry.
const NS_NICK: &str = "http://jabber.org/protocol/nick";

/// A subscription request as kept until it is answered: whole when small,
/// else only what a client shows of it (the status and the XEP-0172 nick),
/// else only its addressing, so that a peer cannot park a stanza of
/// `max_stanza_bytes` in the database per request.
fn stored_request(request: &Element) -> String {
    let xml = request.to_xml();
    if xml.len() <= MAX_STORED_REQUEST {
        return xml;
    }
    let mut slim = request.clone();
    slim.remove_children(|c| !(c.is("status", ns::CLIENT) || c.is("nick", NS_NICK)));
    let xml = slim.to_xml();
    if xml.len() <= MAX_STORED_REQUEST {
        return xml;
    }
    slim.remove_children(|_| true);
    slim.to_xml()
}

/// Why a change that would add a row or a pending request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    /// `max_roster_items`: the change needs a new row.
    Roster,
    /// `max_pending_subscriptions`: the change keeps one more request.
    Pending,
    /// The roster could not be read to count (logged).
    Unreadable,
}

impl Full {
    /// The error for the sender: `own` when it is the account's own change
    /// (RFC 6121 §2.1.5: not-allowed), else a contact's request, which may
    /// succeed later (resource-constraint, wait).
    fn error(self, own: bool) -> StanzaError {
        let text = match self {
            Full::Roster => "the roster is full",
            Full::Pending => "too many subscription requests are waiting for an answer",
            Full::Unreadable => return StanzaError::wait(Condition::InternalServerError),
        };
        if own {
            StanzaError::cancel(Condition::NotAllowed).with_text(text)
        } else {
            StanzaError::wait(Condition::ResourceConstraint).with_text(text)
        }
    }
}

/// Whether `owner`'s roster has room for a new row and/or one more
/// pending request. One read, only when a change adds either.
async fn check_room(
    cx: &Cx,
    owner: &BareJid,
    new_row: bool,
    new_pending: bool,
) -> Result<(), Full> {
    let items = match cx.stores().roster.items(owner).await {
        Ok(items) => items,
        Err(e) => {
            tracing::error!(error = %e, %owner, "roster read failed");
            return Err(Full::Unreadable);
        }
    };
    let config = cx.config();
    if new_row && items.len() >= config.max_roster_items {
        return Err(Full::Roster);
    }
    if new_pending
        && items.iter().filter(|i| i.pending_in).count() >= config.max_pending_subscriptions
    {
        return Err(Full::Pending);
    }
    Ok(())
}

/// Applies `change` to the roster row of `contact` in `owner`'s roster under
/// the owner's lock. Returns the stanzas to route once the lock is released,
/// or the bound the change would exceed (then nothing is stored).
async fn with_item<F>(
    cx: &Cx,
    owner: &BareJid,
    contact: &BareJid,
    change: F,
) -> Result<Vec<Element>, Full>
where
    F: FnOnce(Option<RosterItem>) -> Option<(RosterItem, Vec<Element>)> + Send,
{
    let guard = UserLocks::global().lock(owner).await;
    let roster = &cx.stores().roster;
    let before = match roster.get(owner, contact).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, %owner, "roster read failed");
            return Ok(Vec::new());
        }
    };
    let seen_before = before.as_ref().map(visible_state);
    let existed = before.is_some();
    let was_pending = before.as_ref().is_some_and(|b| b.pending_in);
    let Some((item, out)) = change(before) else {
        return Ok(Vec::new());
    };
    // A row that tracks nothing any more is removed rather than kept empty.
    let empty = !item.in_roster
        && !item.pending_in
        && !item.approved
        && item.subscription == Subscription::None;
    let (new_row, new_pending) = (!empty && !existed, item.pending_in && !was_pending);
    if new_row || new_pending {
        check_room(cx, owner, new_row, new_pending).await?;
    }
    let stored = if empty {
        roster.remove(owner, contact).await
    } else {
        roster.put(owner, &item).await
    };
    match stored {
        // Push only what a client can see change (RFC 6121 §2.1.6): a row
        // that just remembers a pending request is not a roster item (§3.1.3).
        Ok(version) if seen_before.flatten() != visible_state(&item) => {
            push(cx, owner, &item, version).await
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, %owner, "roster write failed");
            return Ok(Vec::new());
        }
    }
    drop(guard);
    Ok(out)
}

/// What a roster push would show of a row: nothing when it is not a roster item.
fn visible_state(item: &RosterItem) -> Option<(Subscription, bool, bool)> {
    item.in_roster
        .then_some((item.subscription, item.ask, item.approved))
}

/// Copies a client's subscription stanza (keeping status, nick …) as from our bare JID.
fn forward(stanza: &Element, from: &BareJid, to: &BareJid) -> Element {
    let mut p = stanza.clone();
    p.set_attr("from", from.to_string());
    p.set_attr("to", to.to_string());
    p
}

/// Presence of each available resource of `user`, addressed to `to`.
fn current_presence(cx: &Cx, user: &BareJid, to: &str) -> Vec<Element> {
    cx.sessions_of(user)
        .into_iter()
        .filter_map(|s| s.with_presence(|st| st.last.clone()))
        .map(|mut p| {
            p.set_attr("to", to);
            p
        })
        .collect()
}

fn unavailable_from_resources(cx: &Cx, user: &BareJid, to: &BareJid) -> Vec<Element> {
    cx.sessions_of(user)
        .into_iter()
        .filter(|s| s.is_available())
        .map(|s| {
            Element::new("presence", ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_attr("from", s.jid.to_string())
                .with_attr("to", to.to_string())
        })
        .collect()
}

pub(crate) async fn subscription_out(
    cx: &Cx,
    user: &BareJid,
    contact: &BareJid,
    ty: &str,
    stanza: &Element,
) {
    if user == contact {
        return;
    }
    let fwd = forward(stanza, user, contact);
    let out = match ty {
        // RFC 6121 §3.1.2
        "subscribe" => {
            with_item(cx, user, contact, |item| {
                let mut it = item.unwrap_or_else(|| RosterItem::new(contact.clone()));
                it.in_roster = true;
                if !subscribed_to(&it) {
                    it.ask = true;
                }
                Some((it, vec![fwd]))
            })
            .await
        }
        // RFC 6121 §3.1.5, and §3.4 pre-approval when nothing is pending.
        "subscribed" => {
            let presence = current_presence(cx, user, &contact.to_string());
            with_item(cx, user, contact, |item| match item {
                Some(mut it) if it.pending_in => {
                    it.pending_in = false;
                    it.pending_in_stanza = None;
                    it.in_roster = true;
                    it.subscription = match it.subscription {
                        Subscription::To | Subscription::Both => Subscription::Both,
                        _ => Subscription::From,
                    };
                    let mut out = vec![fwd];
                    out.extend(presence);
                    Some((it, out))
                }
                Some(it) if subscribed_from(&it) => None,
                item => {
                    let mut it = item.unwrap_or_else(|| RosterItem::new(contact.clone()));
                    it.in_roster = true;
                    it.approved = true;
                    Some((it, Vec::new()))
                }
            })
            .await
        }
        // RFC 6121 §3.3.2
        "unsubscribe" => {
            let out = with_item(cx, user, contact, |item| {
                let mut it = item.filter(|i| subscribed_to(i) || i.ask)?;
                it.ask = false;
                it.subscription = match it.subscription {
                    Subscription::Both => Subscription::From,
                    _ => Subscription::None,
                };
                Some((it, Vec::new()))
            })
            .await;
            // Only changes an existing row: never over a bound.
            let _ = out;
            Ok(vec![fwd])
        }
        // RFC 6121 §3.2.2: cancel or deny the contact's subscription to us.
        "unsubscribed" => {
            let unavailable = unavailable_from_resources(cx, user, contact);
            with_item(cx, user, contact, |item| {
                let mut it = item?;
                let was_from = subscribed_from(&it);
                if !was_from && !it.pending_in && !it.approved {
                    return None;
                }
                it.pending_in = false;
                it.pending_in_stanza = None;
                it.approved = false;
                it.subscription = match it.subscription {
                    Subscription::Both => Subscription::To,
                    Subscription::From => Subscription::None,
                    s => s,
                };
                let mut out = vec![fwd];
                if was_from {
                    out.extend(unavailable);
                }
                Some((it, out))
            })
            .await
        }
        _ => Ok(Vec::new()),
    };
    match out {
        Ok(out) => {
            for p in out {
                cx.route(p).await;
            }
        }
        // RFC 6121 §2.1.5: the user's own change that needs a row it has
        // no room for is not allowed (a pre-approval or a subscribe).
        Err(full) => cx.bounce(stanza, full.error(true)).await,
    }
}

async fn inbound(cx: &Cx, stanza: &mut Element) -> Flow {
    let ty = match stanza.attr("type") {
        Some(t @ ("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed" | "probe")) => {
            t.to_string()
        }
        _ => return Flow::Continue,
    };
    let (Some(from), Some(to)) = (
        stanza.attr("from").and_then(|f| Jid::parse(f).ok()),
        stanza.attr("to").and_then(|t| Jid::parse(t).ok()),
    ) else {
        return Flow::Handled;
    };
    let user = to.to_bare();
    let contact = from.to_bare();
    // An account with a session exists; only the others need a read (a
    // login's probes to its online contacts would otherwise cost one each).
    if user == contact
        || (cx.sessions_of(&user).is_empty()
            && !cx.stores().accounts.exists(&user).await.unwrap_or(false))
    {
        return Flow::Handled;
    }
    // Subscription stanzas are always about bare JIDs (RFC 6121 §3.1.3).
    let mut deliver = stanza.clone();
    deliver.set_attr("from", contact.to_string());
    deliver.set_attr("to", user.to_string());
    let mut to_sessions = None;
    let out = match ty.as_str() {
        "subscribe" => {
            let subscribed = subscription_presence(&user.to_string(), &contact, "subscribed");
            let presence = current_presence(cx, &user, &contact.to_string());
            let stored = stored_request(&deliver);
            let mut deliver_request = false;
            let out = with_item(cx, &user, &contact, |item| match item {
                // Already subscribed: answer for the user (§3.1.3 step 2).
                Some(it) if subscribed_from(&it) => Some((it, vec![subscribed])),
                Some(mut it) if it.approved => {
                    it.approved = false;
                    it.subscription = if subscribed_to(&it) {
                        Subscription::Both
                    } else {
                        Subscription::From
                    };
                    let mut out = vec![subscribed];
                    out.extend(presence);
                    Some((it, out))
                }
                item => {
                    let mut it = item.unwrap_or_else(|| {
                        let mut fresh = RosterItem::new(contact.clone());
                        fresh.in_roster = false;
                        fresh
                    });
                    it.pending_in = true;
                    it.pending_in_stanza = Some(stored);
                    deliver_request = true;
                    Some((it, Vec::new()))
                }
            })
            .await;
            match out {
                Ok(out) => {
                    if deliver_request {
                        to_sessions = Some(deliver);
                    }
                    out
                }
                // A request the account has no room for is refused, not
                // stored and not shown; the requester may retry once the
                // user has answered others. Older requests are kept: a
                // flood must not push out those the user has seen.
                Err(full) => {
                    cx.bounce(stanza, full.error(false)).await;
                    return Flow::Handled;
                }
            }
        }
        // §3.1.6
        "subscribed" => {
            let mut accepted = false;
            let out = with_item(cx, &user, &contact, |item| {
                let mut it = item.filter(|i| i.ask)?;
                it.ask = false;
                it.subscription = if subscribed_from(&it) {
                    Subscription::Both
                } else {
                    Subscription::To
                };
                accepted = true;
                Some((it, Vec::new()))
            })
            .await
            .unwrap_or_default(); // changes an existing row only
            if accepted {
                to_sessions = Some(deliver);
            }
            out
        }
        // §3.3.3
        "unsubscribe" => {
            let unavailable = unavailable_from_resources(cx, &user, &contact);
            let mut changed = false;
            let out = with_item(cx, &user, &contact, |item| {
                let mut it = item.filter(|i| subscribed_from(i) || i.pending_in)?;
                it.pending_in = false;
                it.pending_in_stanza = None;
                it.subscription = match it.subscription {
                    Subscription::Both => Subscription::To,
                    Subscription::From => Subscription::None,
                    s => s,
                };
                changed = true;
                // Step 3: the contact no longer gets our presence.
                Some((it, unavailable))
            })
            .await
            .unwrap_or_default(); // changes an existing row only
            if changed {
                to_sessions = Some(deliver);
            }
            out
        }
        // §3.2.3
        "unsubscribed" => {
            let mut changed = false;
            let out = with_item(cx, &user, &contact, |item| {
                let mut it = item.filter(|i| subscribed_to(i) || i.ask)?;
                it.ask = false;
                it.subscription = match it.subscription {
                    Subscription::Both => Subscription::From,
                    Subscription::To => Subscription::None,
                    s => s,
                };
                changed = true;
                Some((it, Vec::new()))
            })
            .await
            .unwrap_or_default(); // changes an existing row only
            if changed {
                to_sessions = Some(deliver);
            }
            out
        }
        // §4.3.2
        _ => probe_reply(cx, &user, &contact, &from).await,
    };
    if let Some(p) = to_sessions {
        for s in cx.sessions_of(&user) {
            if s.is_available() {
                let mut p = p.clone();
                p.set_attr("to", s.jid.to_string());
                s.send(p);
            }
        }
    }
    for p in out {
        cx.route(p).await;
    }
    Flow::Handled
}

async fn probe_reply(cx: &Cx, user: &BareJid, contact: &BareJid, from: &Jid) -> Vec<Element> {
    let entitled = matches!(cx.stores().roster.get(user, contact).await, Ok(Some(ref it)) if subscribed_from(it));
    if !entitled {
        // Reveal nothing; tell the prober it is not subscribed.
        return vec![subscription_presence(
            &user.to_string(),
            contact,
            "unsubscribed",
        )];
    }
    let replies = current_presence(cx, user, &from.to_string());
    if replies.is_empty() {
        return vec![
            Element::new("presence", ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_attr("from", user.to_string())
                .with_attr("to", from.to_string()),
        ];
    }
    replies
}

/// A deleted account disappears from local rosters (with pushes).
async fn forget_deleted_user(cx: &Cx, user: &BareJid) {
    let owners = match cx.stores().roster.owners_of(user).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, %user, "cannot clean rosters of a deleted account");
            return;
        }
    };
    for (owner, _) in owners {
        let _guard = UserLocks::global().lock(&owner).await;
        if let Ok(version) = cx.stores().roster.remove(&owner, user).await {
            let mut gone = RosterItem::new(user.clone());
            gone.in_roster = false;
            push(cx, &owner, &gone, version).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(children: Vec<Element>) -> Element {
        let mut p = Element::new("presence", ns::CLIENT)
            .with_attr("from", "romeo@example.net")
            .with_attr("to", "juliet@example.com")
            .with_attr("type", "subscribe");
        for c in children {
            p.push_child(c);
        }
        p
    }

    #[test]
    fn stored_requests_are_bounded() {
        let status = Element::new("status", ns::CLIENT).with_text("hi");
        let nick = Element::new("nick", NS_NICK).with_text("Romeo");
        let small = request(vec![status.clone(), nick.clone()]);
        assert_eq!(stored_request(&small), small.to_xml());

        let bulk = Element::new("x", "urn:example:bulk").with_text("a".repeat(200_000));
        let big = request(vec![status.clone(), nick.clone(), bulk.clone()]);
        let kept = stored_request(&big);
        assert_eq!(kept, request(vec![status, nick]).to_xml());

        let huge_status = Element::new("status", ns::CLIENT).with_text("b".repeat(10_000));
        let kept = stored_request(&request(vec![huge_status, bulk]));
        assert_eq!(kept, request(Vec::new()).to_xml());
        assert!(kept.len() <= MAX_STORED_REQUEST);
    }
}
