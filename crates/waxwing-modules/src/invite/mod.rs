//! Invitations, the IM side (the token service is `waxwing_core::invites`):
//!
//! - XEP-0379: a subscription request to a local user carrying
//!   `<preauth xmlns='urn:xmpp:pars:0' token='…'/>` with one of that user's
//!   contact invitations is approved for them, and they ask back, so the
//!   two end up mutual contacts without anyone clicking "accept";
//! - XEP-0401: an account made with an invitation that carries a roster
//!   subscription ([`Event::InviteRedeemed`]) becomes the inviter's mutual
//!   contact, with roster pushes to the inviter's sessions;
//! - the ad-hoc commands `urn:xmpp:invite#invite` (any local user) and
//!   `urn:xmpp:invite#create-account` (admins), served by `adhoc.rs` with
//!   [`commands`];
//! - the landing page `/invite/{token}` ([`page`]).
//!
//! Both subscription paths go through the presence engine's own outbound
//! processing (`presence::subscription_out`), exactly as if the users had
//! sent `subscribed` and `subscribe` themselves, so roster state, pushes
//! and federation behave as for any subscription.

pub mod commands;
pub mod page;

use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Event, EventHandler, Flow, Hook, Module, Priority, RegisterError, Registrar, StanzaHook,
};
use waxwing_core::invites::NS_PARS;
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::xml::Element;

use crate::presence::subscription_out;
use crate::roster::subscription_presence;

/// The invitations module.
pub struct Invites;

impl Module for Invites {
    fn name(&self) -> &'static str {
        "invites"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        // After blocking (EARLY: a blocked contact's token does nothing),
        // before the presence engine (NORMAL), which then finds the
        // request pre-approved.
        reg.hook(
            Hook::Inbound,
            Priority(Priority::NORMAL.0 - 10),
            self.clone(),
        );
        reg.http_routes(page::routes());
        reg.on_events(self);
        Ok(())
    }
}

#[async_trait]
impl StanzaHook for Invites {
    fn wants(&self, hook: Hook, name: &str) -> bool {
        hook == Hook::Inbound && name == "presence"
    }

    async fn handle_stanza(&self, cx: &Cx, _hook: Hook, stanza: &mut Element) -> Flow {
        if stanza.name != "presence" || stanza.attr("type") != Some("subscribe") {
            return Flow::Continue;
        }
        let Some(token) = stanza
            .children()
            .find(|c| c.is("preauth", NS_PARS))
            .and_then(|p| p.attr("token"))
            .map(str::to_string)
        else {
            return Flow::Continue;
        };
        let (Some(from), Some(to)) = (
            stanza.attr("from").and_then(|f| Jid::parse(f).ok()),
            stanza.attr("to").and_then(|t| Jid::parse(t).ok()),
        ) else {
            return Flow::Continue;
        };
        let (owner, contact) = (to.to_bare(), from.to_bare());
        if owner == contact
            || owner.local().is_none()
            || !cx.is_local_host(owner.domain())
            || !cx.stores().accounts.exists(&owner).await.unwrap_or(false)
        {
            return Flow::Continue;
        }
        // XEP-0379 §4.1: an unknown or spent token is ignored; the request
        // goes on to the user as any other.
        if !cx
            .invites()
            .redeem_subscription(&owner, &contact, &token)
            .await
        {
            return Flow::Continue;
        }
        // The owner pre-approves the contact (RFC 6121 §3.4) and asks back;
        // the presence engine then approves the request it is carrying.
        act_for(cx, &owner, &contact, "subscribed").await;
        act_for(cx, &owner, &contact, "subscribe").await;
        Flow::Continue
    }
}

/// `user` sends a subscription stanza of type `ty` to `contact`, through
/// the presence engine.
async fn act_for(cx: &Cx, user: &BareJid, contact: &BareJid, ty: &str) {
    let stanza = subscription_presence(&user.to_string(), contact, ty);
    subscription_out(cx, user, contact, ty, &stanza).await;
}

/// Makes `a` and `b` (both local) mutual contacts: each pre-approves the
/// other, then each asks; every request finds its approval waiting.
pub async fn make_mutual_contacts(cx: &Cx, a: &BareJid, b: &BareJid) {
    act_for(cx, a, b, "subscribed").await;
    act_for(cx, b, a, "subscribed").await;
    act_for(cx, b, a, "subscribe").await;
    act_for(cx, a, b, "subscribe").await;
}

/// An account was made with an invitation of `inviter`'s that subscribes.
async fn redeemed(cx: &Cx, invitee: &BareJid, inviter: &BareJid) {
    // The inviter may have been deleted since.
    if cx.stores().accounts.exists(inviter).await.unwrap_or(false) {
        make_mutual_contacts(cx, invitee, inviter).await;
        tracing::info!(%invitee, %inviter, "invitee and inviter are now contacts");
    }
}

#[async_trait]
impl EventHandler for Invites {
    async fn on_event(&self, cx: &Cx, event: &Event) {
        match event {
            Event::InviteRedeemed { invitee, inviter } => redeemed(cx, invitee, inviter).await,
            Event::UserDeleted(user) => {
                if let Err(e) = cx.stores().invites.remove_creator(user).await {
                    tracing::error!(error = %e, %user, "removing a deleted user's invitations failed");
                }
            }
            _ => {}
        }
    }
}
