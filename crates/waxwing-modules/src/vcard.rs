//! XEP-0054: vCard-temp storage, which XEP-0153 avatars build on.
//!
//! The server keeps each account's vCard as opaque XML and hands it to
//! anyone who asks (vCards are public profiles, as in Prosody and
//! ejabberd); only the account itself may change it. The vCard `PHOTO`
//! and PEP avatars (XEP-0084) are kept in step, and presence carries the
//! photo hash (XEP-0153 `vcard-temp:x:update`), by `avatar.rs` (XEP-0398).

use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Event, EventHandler, Flow, Hook, Iq, IqHandler, IqResult, IqTarget, Module, Priority,
    RegisterError, Registrar, StanzaHook,
};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::{Element, parse_stanza};

use crate::avatar::{self, NS_CONVERSION};
use crate::caps::Caps;
use crate::internal;

pub use waxwing_proto::ns::{VCARD, VCARD_UPDATE};
/// vCard-temp, with XEP-0398 avatar conversion.
pub struct VCard {
    /// PEP notifications of converted avatars go to contacts by their caps.
    caps: Arc<Caps>,
    /// The PubSub engine's extensions (a converted avatar is a PEP publish).
    extensions: Arc<crate::pubsub::Extensions>,
}

impl VCard {
    /// `caps` is the PubSub module's entity-capabilities cache.
    pub fn new(caps: Arc<Caps>, extensions: Arc<crate::pubsub::Extensions>) -> Self {
        VCard { caps, extensions }
    }
}

impl Module for VCard {
    fn name(&self) -> &'static str {
        "vcard"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.server_feature(VCARD);
        reg.account_feature(VCARD);
        reg.server_feature(NS_CONVERSION);
        reg.account_feature(NS_CONVERSION);
        reg.iq(IqTarget::Account, VCARD, self.clone())?;
        reg.hook(Hook::Outbound, Priority::EARLY, self.clone());
        reg.on_events(self);
        Ok(())
    }
}

#[async_trait]
impl StanzaHook for VCard {
    fn wants(&self, _hook: Hook, name: &str) -> bool {
        name == "presence"
    }

    /// XEP-0398 §4: the photo hash in every available presence the
    /// account's sessions send, broadcast or directed.
    async fn handle_stanza(&self, cx: &Cx, _hook: Hook, stanza: &mut Element) -> Flow {
        if stanza.name != "presence" || stanza.attr("type").is_some() {
            return Flow::Continue;
        }
        let Some(origin) = cx.origin() else {
            return Flow::Continue;
        };
        if let Some(hash) = avatar::photo_hash(cx, origin.jid.bare()).await {
            avatar::inject_hash(stanza, &hash);
        }
        Flow::Continue
    }
}

/// Reads back a stored vCard. A corrupt one is logged and served as empty
/// rather than failing every request for it.
fn decode(xml: &str) -> Element {
    match parse_stanza(xml, ns::CLIENT) {
        Ok(el) if el.is("vCard", VCARD) => el,
        _ => {
            tracing::error!("dropping a corrupt stored vCard");
            Element::new("vCard", VCARD)
        }
    }
}

#[async_trait]
impl IqHandler for VCard {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult {
        if !iq.payload.is("vCard", VCARD) {
            return Err(StanzaError::modify(Condition::BadRequest));
        }
        let requester = iq.from.to_bare();
        let owner = iq
            .to
            .as_ref()
            .map_or_else(|| requester.clone(), |t| t.to_bare());
        let store = &cx.stores().private_xml;
        if iq.is_set {
            // Only the account's own client sessions write its vCard.
            if owner != requester || cx.origin().is_none() {
                return Err(StanzaError::auth(Condition::Forbidden));
            }
            let before = avatar::load_vcard(cx, &owner).await.map_err(internal)?;
            avatar::store_vcard(cx, &owner, &iq.payload)
                .await
                .map_err(internal)?;
            avatar::vcard_to_pep(
                cx,
                &self.caps,
                &self.extensions,
                &owner,
                &before,
                &iq.payload,
            )
            .await;
            return Ok(None);
        }
        if owner != requester
            && !cx
                .stores()
                .accounts
                .exists(&owner)
                .await
                .map_err(internal)?
        {
            return Err(StanzaError::cancel(Condition::ServiceUnavailable));
        }
        // XEP-0054 §3.1: no vCard is an empty one.
        Ok(Some(
            match store
                .get(&owner, avatar::VCARD_KEY)
                .await
                .map_err(internal)?
            {
                Some(xml) => decode(&xml),
                None => Element::new("vCard", VCARD),
            },
        ))
    }
}

#[async_trait]
impl EventHandler for VCard {
    async fn on_event(&self, cx: &Cx, event: &Event) {
        // Removes every fragment of the account; `private.rs` does the same,
        // so either module alone cleans up.
        if let Event::UserDeleted(user) = event
            && let Err(e) = cx.stores().private_xml.remove_user(user).await
        {
            tracing::error!(error = %e, %user, "removing the vCard of a deleted account failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_vcards_round_trip() {
        let card = Element::new("vCard", VCARD)
            .with_child(Element::new("FN", VCARD).with_text("Juliet & co"))
            .with_child(
                Element::new("PHOTO", VCARD)
                    .with_child(Element::new("TYPE", VCARD).with_text("image/png"))
                    .with_child(Element::new("BINVAL", VCARD).with_text("iVBORw0K")),
            );
        assert_eq!(decode(&card.to_xml()), card);
    }

    #[test]
    fn corrupt_vcard_reads_as_empty() {
        assert_eq!(decode("<oops"), Element::new("vCard", VCARD));
        assert_eq!(
            decode("<x xmlns='urn:other'/>"),
            Element::new("vCard", VCARD)
        );
    }
}
