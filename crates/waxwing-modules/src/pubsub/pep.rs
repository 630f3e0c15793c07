//! XEP-0163: Personal Eventing Protocol — a PubSub service on every account.
//!
//! Requests to an account's bare JID (or without `to`) in the pubsub
//! namespaces land here and are answered by the shared engine in
//! `pubsub/`. Nodes are auto-created on first publish with presence access,
//! and notifications go to the account's contacts whose entity
//! capabilities (`caps.rs`) ask for `node+notify`. When a session's
//! capabilities become known (its available presence), it gets the last
//! item of every node it is interested in, of its own account and of every
//! local contact it has a presence subscription to. Remote contacts with a
//! presence subscription get notifications too: at the resources whose
//! presence (with caps asking for `+notify`) reached the account. OMEMO (XEP-0384),
//! avatars (XEP-0084), nicknames (XEP-0172) and bookmarks (XEP-0402) are
//! ordinary PEP nodes; bookmarks are mirrored to private storage
//! (`bookmarks.rs`).

use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::hooks::{Cx, Iq, IqHandler, IqResult};
use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;
use waxwing_store::Subscription;

use crate::caps::{Caps, Observed};
use crate::pubsub::{Extensions, Kind, NS_OWNER, Svc};

/// The PEP IQ handler (registered by `pubsub::PubSub`).
pub struct Pep {
    pub caps: Arc<Caps>,
    pub extensions: Arc<Extensions>,
}

#[async_trait]
impl IqHandler for Pep {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult {
        let owner = iq.to.as_ref().unwrap_or(&iq.from).to_bare();
        if !cx.is_local_host(owner.domain()) || owner.local().is_none() {
            return Err(StanzaError::cancel(Condition::ServiceUnavailable));
        }
        // Only the account may manage its own nodes.
        if iq.payload.ns == NS_OWNER && *iq.from.bare() != owner {
            return Err(StanzaError::auth(Condition::Forbidden));
        }
        let svc = Svc {
            cx,
            kind: Kind::Pep,
            jid: owner,
            caps: &self.caps,
            extensions: &self.extensions,
            deferred: Default::default(),
        };
        let r = svc.handle(&iq.from, iq.is_set, &iq.payload).await;
        svc.flush_deferred().await;
        r
    }
}

/// An available presence from one of our sessions: note its capabilities,
/// and once they are known, send it the last items it wants.
pub async fn on_available_presence(
    cx: &Cx,
    caps: &Caps,
    jid: &FullJid,
    presence: &Element,
    query_from: &str,
) {
    match caps.observe(jid, presence, query_from) {
        Observed::Known => deliver_last_items(cx, caps, jid).await,
        Observed::Query(iq) => cx.route(iq).await,
        Observed::Unchanged | Observed::Waiting | Observed::None => {}
    }
}

/// XEP-0163 §4.3.2: the last item of each node of the session's own
/// account and of each local contact it is subscribed to, filtered by
/// `+notify` and by the node's access model. For a remote contact's
/// resource: of each of our accounts its presence was sent to.
pub async fn deliver_last_items(cx: &Cx, caps: &Caps, jid: &FullJid) {
    let user = jid.bare().clone();
    if !cx.is_local_host(user.domain()) {
        return deliver_last_items_of(cx, caps, jid, caps.remote_watchers(jid)).await;
    }
    let mut owners: Vec<BareJid> = vec![user.clone()];
    match cx.stores().roster.items(&user).await {
        Ok(items) => owners.extend(
            items
                .into_iter()
                .filter(|i| matches!(i.subscription, Subscription::To | Subscription::Both))
                .filter(|i| cx.is_local_host(i.contact.domain()))
                .map(|i| i.contact),
        ),
        Err(e) => {
            tracing::error!(error = %e, "reading the roster for PEP last items failed");
            return;
        }
    }
    deliver_last_items_of(cx, caps, jid, owners).await
}

/// The last items `jid` wants of the nodes of `owners` (access checked).
async fn deliver_last_items_of(cx: &Cx, caps: &Caps, jid: &FullJid, owners: Vec<BareJid>) {
    let user = jid.bare().clone();
    let to = Jid::from(jid.clone());
    for owner in owners {
        let nodes = match cx.stores().pubsub.nodes(&owner).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "listing PEP nodes failed");
                continue;
            }
        };
        let svc = Svc {
            cx,
            kind: Kind::Pep,
            jid: owner,
            caps,
            // Sending last items changes nothing.
            extensions: &crate::pubsub::extension::NONE,
            deferred: Default::default(),
        };
        for node in nodes {
            if !caps.wants(jid, &node) {
                continue;
            }
            let Ok(cfg) = svc.config(&node).await else {
                continue;
            };
            if cfg.send_last_published_item != "on_sub_and_presence" {
                continue;
            }
            let allowed = match svc.affiliation(&node, &user).await {
                Ok(aff) => svc
                    .may_access(&node, &cfg, &user, aff)
                    .await
                    .unwrap_or(false),
                Err(_) => false,
            };
            if allowed {
                svc.send_last_item(&node, &cfg, &to).await;
            }
        }
    }
}
