//! XEP-0280: Message Carbons, with the `private`/`no-copy` hints (XEP-0334).
//!
//! `<received/>` copies are made on [`Event::MessageDelivered`], not when a
//! message arrives, because only after the RFC 6121 §8.5 choice do we know
//! which resources got the original. `<sent/>` copies are made on
//! [`Hook::Outbound`] at [`Priority::LATE`], after blocking and anything
//! else that might refuse the message.

use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Event, EventHandler, Flow, Hook, Iq, IqHandler, IqResult, IqTarget, Module, Priority,
    RegisterError, Registrar, StanzaHook,
};
use waxwing_core::session::{SessionFlag, SessionHandle};
use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;

/// XEP-0280 namespace.
pub const CARBONS: &str = "urn:xmpp:carbons:2";
/// XEP-0297: Stanza Forwarding.
pub const FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0334: Message Processing Hints.
const HINTS: &str = "urn:xmpp:hints";
/// XEP-0184 receipts, XEP-0085 chat states, XEP-0333 markers: IM payloads
/// that make any message eligible (XEP-0280 §6.1).
const IM_PAYLOADS: &[&str] = &[
    "urn:xmpp:receipts",
    "http://jabber.org/protocol/chatstates",
    "urn:xmpp:chat-markers:0",
    // XEP-0353 §3: call proposals and answers reach every client of both
    // parties, so that the others stop ringing.
    "urn:xmpp:jingle-message:0",
];
/// XEP-0045 user namespace (mediated invitations, MUC private messages).
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// XEP-0249 direct invitations.
const CONFERENCE: &str = "jabber:x:conference";

/// Message Carbons.
pub struct Carbons;

impl Module for Carbons {
    fn name(&self) -> &'static str {
        "carbons"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.server_feature(CARBONS);
        reg.iq_set(IqTarget::Account, CARBONS, self.clone())?;
        reg.hook(Hook::Outbound, Priority::LATE, self.clone());
        reg.on_events(self);
        Ok(())
    }
}

#[async_trait]
impl IqHandler for Carbons {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult {
        // Only the session itself can switch its own carbons.
        let Some(session) = cx.origin() else {
            return Err(StanzaError::cancel(Condition::NotAllowed));
        };
        if iq
            .to
            .as_ref()
            .is_some_and(|t| t.bare() != session.jid.bare())
        {
            return Err(StanzaError::cancel(Condition::Forbidden));
        }
        let on = match iq.payload.name.as_str() {
            "enable" => true,
            "disable" => false,
            _ => return Err(StanzaError::modify(Condition::BadRequest)),
        };
        // §8.1: repeated enable/disable is not an error.
        session.set_flag(SessionFlag::Carbons, on);
        Ok(None)
    }
}

/// XEP-0280 §6.1 (recommended rules) and §7 (`private`). `inbound` is true
/// for a message received by the account, false for one it sent.
pub fn eligible(msg: &Element, inbound: bool) -> bool {
    // The type first: it settles every room message (one check per
    // recipient of a fan-out) before any scan of the children.
    if !eligible_type(msg) {
        return false;
    }
    let ty = msg.attr("type").unwrap_or("normal");
    // Names only: a routed message's payload is not parsed for this.
    if msg.has_child("private", CARBONS) || msg.has_child("no-copy", HINTS) {
        return false;
    }
    // Carbons of carbons would loop between resources.
    if msg.has_child("sent", CARBONS) || msg.has_child("received", CARBONS) {
        return false;
    }
    if msg.has_child("x", MUC_USER)
        && let Some(x) = msg.child("x", MUC_USER)
    {
        if x.child("invite", MUC_USER).is_some() {
            return true;
        }
        // §6.1: a MUC private message received from an occupant is already
        // replicated by the room to every joined client.
        if inbound {
            return false;
        }
    }
    ty == "chat"
        || (ty == "normal" && msg.has_child("body", ns::CLIENT))
        || msg.has_child("x", CONFERENCE)
        || msg.child_names().any(|(_, ns)| IM_PAYLOADS.contains(&ns))
}

/// The part of [`eligible`] read from the type alone: `false` settles it
/// (not a message, or a type never copied), before anything costlier.
/// Errors are not copied: we cannot tell which request an error answers
/// (§6.1 rule 4).
fn eligible_type(msg: &Element) -> bool {
    msg.name == "message" && !matches!(msg.attr("type"), Some("groupchat" | "headline" | "error"))
}

/// `<message from=bare to=full type=…><{kind}><forwarded>original</forwarded></{kind}></message>`.
pub fn wrap(kind: &str, user: &BareJid, to: &FullJid, original: &Element) -> Element {
    let mut copy = Element::new("message", ns::CLIENT)
        .with_attr("from", user.to_string())
        .with_attr("to", to.to_string());
    if let Some(ty) = original.attr("type") {
        copy.set_attr("type", ty);
    }
    copy.with_child(Element::new(kind, CARBONS).with_child(
        Element::new("forwarded", FORWARD).with_child({
            let mut inner = original.clone();
            inner.ns = ns::CLIENT.into();
            inner
        }),
    ))
}

#[async_trait]
impl StanzaHook for Carbons {
    fn wants(&self, hook: Hook, name: &str) -> bool {
        hook == Hook::Outbound && name == "message"
    }

    /// Everything here is synchronous: the `<sent/>` copies are queued
    /// without waiting, so `handle_stanza` is never needed.
    fn decide_now(&self, cx: &Cx, hook: Hook, msg: &Element) -> Option<Flow> {
        if hook == Hook::Outbound {
            copy_sent(cx, msg);
        }
        Some(Flow::Continue)
    }

    async fn handle_stanza(&self, cx: &Cx, hook: Hook, msg: &mut Element) -> Flow {
        if hook == Hook::Outbound {
            copy_sent(cx, msg);
        }
        Flow::Continue
    }
}

/// §7: `<sent/>` copies of a message a client sends, to the sender's other
/// sessions that have carbons on.
fn copy_sent(cx: &Cx, msg: &Element) {
    let Some(origin) = cx.origin() else {
        return;
    };
    // The account's flag count first: one load, and nearly always no
    // session with carbons on, which settles it before the type is read.
    if !cx.session_may_be_flagged(origin, SessionFlag::Carbons) || !eligible_type(msg) {
        return;
    }
    let user = origin.jid.bare();
    // §7: not to the sender. Most accounts have no other session with
    // carbons on: nothing to copy, nothing to parse, no list copied, and
    // the message's children not even looked at.
    if !cx.any_session_flagged(origin, SessionFlag::Carbons, |s| s.id == origin.id)
        || !eligible(msg, false)
    {
        return;
    }
    let siblings: Vec<_> = cx
        .sessions_of(user)
        .into_iter()
        .filter(|s| s.id != origin.id && s.flag(SessionFlag::Carbons))
        .collect();
    if siblings.is_empty() {
        return;
    }
    // The message as it will be routed: `from` is stamped; a missing
    // `to` means the sender's own bare JID (RFC 6120 §10.3.1).
    let mut original = msg.clone();
    if original.attr("to").is_none() {
        original.set_attr("to", user.to_string());
    }
    let direct = original
        .attr("to")
        .and_then(|t| Jid::parse(t).ok())
        .and_then(|t| t.as_full().cloned());
    for s in siblings {
        // A resource the message is addressed to gets the original, not a copy.
        if direct.as_ref() != Some(&s.jid) {
            s.send(wrap("sent", user, &s.jid, &original));
        }
    }
}

#[async_trait]
impl EventHandler for Carbons {
    fn wants_deliveries(&self) -> bool {
        true
    }

    /// An eligible message to an account with another available session
    /// that has carbons on; most accounts have none.
    fn wants_delivery(
        &self,
        cx: &Cx,
        message: &Element,
        recipients: &[Arc<SessionHandle>],
    ) -> bool {
        let Some(first) = recipients.first() else {
            return false;
        };
        let user = first.jid.bare();
        // First without copying the session list or taking a presence
        // lock: most accounts have no other session with carbons on.
        let not_recipient = |s: &SessionHandle| !recipients.iter().any(|r| r.jid == s.jid);
        // The account's flag count (one load), the type, then the
        // sessions' flags, and only then the children.
        cx.session_may_be_flagged(first, SessionFlag::Carbons)
            && eligible_type(message)
            && cx.any_session_flagged(first, SessionFlag::Carbons, |s| !not_recipient(s))
            && eligible(message, true)
            && cx
                .sessions_of(user)
                .iter()
                .any(|s| s.flag(SessionFlag::Carbons) && s.is_available() && not_recipient(s))
    }

    async fn on_event(&self, cx: &Cx, event: &Event) {
        let Event::MessageDelivered {
            message,
            recipients,
        } = event
        else {
            return;
        };
        if !eligible(message, true) {
            return;
        }
        // The recipients are sessions of the addressee's account.
        let Some(user) = recipients.first().map(|r| r.jid.bare()) else {
            return;
        };
        let copies: Vec<_> = cx
            .sessions_of(user)
            .into_iter()
            .filter(|s| {
                !recipients.iter().any(|r| r.jid == s.jid)
                    && s.flag(SessionFlag::Carbons)
                    && s.is_available()
            })
            .collect();
        if copies.is_empty() {
            return;
        }
        // A message between two resources of the same account was already
        // copied as `<sent/>`.
        if message
            .attr("from")
            .and_then(|f| Jid::parse(f).ok())
            .is_some_and(|f| f.bare() == user)
        {
            return;
        }
        for s in copies {
            s.send(wrap("received", user, &s.jid, message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: Option<&str>) -> Element {
        let mut m = Element::new("message", ns::CLIENT).with_attr("to", "juliet@example.com");
        if let Some(ty) = ty {
            m.set_attr("type", ty);
        }
        m
    }

    fn body(m: Element) -> Element {
        m.with_child(Element::new("body", ns::CLIENT).with_text("hi"))
    }

    #[test]
    fn chat_and_normal_with_body_are_eligible() {
        assert!(eligible(&msg(Some("chat")), true));
        assert!(eligible(&body(msg(None)), true));
        assert!(eligible(&body(msg(Some("normal"))), false));
        assert!(!eligible(&msg(Some("normal")), true));
        assert!(!eligible(&body(msg(Some("groupchat"))), true));
        assert!(!eligible(&body(msg(Some("headline"))), true));
        assert!(!eligible(&body(msg(Some("error"))), true));
        assert!(!eligible(&Element::new("presence", ns::CLIENT), true));
    }

    #[test]
    fn im_payloads_make_normal_messages_eligible() {
        for ns in IM_PAYLOADS {
            let m = msg(None).with_child(Element::new("x", *ns));
            assert!(eligible(&m, true), "{ns}");
        }
        let invite = msg(None).with_child(Element::new("x", CONFERENCE));
        assert!(eligible(&invite, true));
    }

    #[test]
    fn private_and_no_copy_exclude() {
        let private = body(msg(Some("chat")))
            .with_child(Element::new("private", CARBONS))
            .with_child(Element::new("no-copy", HINTS));
        assert!(!eligible(&private, true));
        assert!(!eligible(&private, false));
        let no_copy = body(msg(Some("chat"))).with_child(Element::new("no-copy", HINTS));
        assert!(!eligible(&no_copy, false));
    }

    #[test]
    fn carbons_are_not_copied_again() {
        let m = msg(Some("chat")).with_child(Element::new("received", CARBONS));
        assert!(!eligible(&m, true));
    }

    #[test]
    fn muc_private_messages_are_copied_only_outbound() {
        let pm = body(msg(Some("chat"))).with_child(Element::new("x", MUC_USER));
        assert!(!eligible(&pm, true));
        assert!(eligible(&pm, false));
        let invite = msg(None)
            .with_child(Element::new("x", MUC_USER).with_child(Element::new("invite", MUC_USER)));
        assert!(eligible(&invite, true));
    }
}
