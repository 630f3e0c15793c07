//! XEP-0049: Private XML Storage.
//!
//! Each child of `<query xmlns='jabber:iq:private'/>` is stored under its
//! qualified name (`{namespace}name`), as Prosody does, in the per-account
//! XML store shared with vCards (`vcard.rs`). Only the account's own
//! sessions may read or write (§3: `forbidden` for anyone else).
//! This module removes all of an account's fragments, vCard included,
//! when the account is deleted.

use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Event, EventHandler, Iq, IqHandler, IqResult, IqTarget, Module, RegisterError, Registrar,
};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::{Element, parse_stanza};

use crate::internal;

/// XEP-0049 namespace.
pub const PRIVATE: &str = "jabber:iq:private";

/// Private XML storage.
pub struct Private;

impl Module for Private {
    fn name(&self) -> &'static str {
        "private"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.server_feature(PRIVATE);
        reg.iq(IqTarget::Account, PRIVATE, self.clone())?;
        reg.on_events(self);
        Ok(())
    }
}

/// The storage key of a fragment.
fn key(el: &Element) -> String {
    format!("{{{}}}{}", el.ns, el.name)
}

/// §3: `jabber:*`, `http://jabber.org/*` and `vcard-temp` are reserved;
/// data without a namespace of its own could not be told apart.
fn reserved(namespace: &str) -> bool {
    namespace.is_empty()
        || namespace.starts_with("jabber:")
        || namespace.starts_with("http://jabber.org/")
        || namespace == "vcard-temp"
}

/// The fragments a request names, checked.
fn fragments(query: &Element) -> Result<Vec<&Element>, StanzaError> {
    if query.name != "query" {
        return Err(StanzaError::modify(Condition::BadRequest));
    }
    let children: Vec<&Element> = query.children().collect();
    if children.is_empty() {
        return Err(StanzaError::modify(Condition::NotAcceptable)
            .with_text("name the element to store or retrieve"));
    }
    if children.iter().any(|c| reserved(&c.ns)) {
        return Err(StanzaError::modify(Condition::NotAcceptable).with_text("reserved namespace"));
    }
    Ok(children)
}

#[async_trait]
impl IqHandler for Private {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult {
        let owner = iq.from.to_bare();
        if cx.origin().is_none() || iq.to.as_ref().is_some_and(|t| t.bare() != &owner) {
            return Err(StanzaError::auth(Condition::Forbidden));
        }
        let wanted = fragments(&iq.payload)?;
        let store = &cx.stores().private_xml;
        if iq.is_set {
            for el in wanted {
                store
                    .set(&owner, &key(el), &el.to_xml())
                    .await
                    .map_err(internal)?;
                if el.is("storage", crate::bookmarks::NS_STORAGE) {
                    crate::bookmarks::mirror_from_private(cx, &owner, el).await;
                }
            }
            return Ok(None);
        }
        let mut query = Element::new("query", PRIVATE);
        for el in wanted {
            let stored = store.get(&owner, &key(el)).await.map_err(internal)?;
            let found = stored.and_then(|xml| match parse_stanza(&xml, ns::CLIENT) {
                Ok(found) => Some(found),
                Err(_) => {
                    tracing::error!(%owner, "dropping corrupt private XML");
                    None
                }
            });
            // Nothing stored: the empty element back (XEP-0049 §2 example 4).
            query.push_child(found.unwrap_or_else(|| Element::new(el.name.clone(), el.ns.clone())));
        }
        Ok(Some(query))
    }
}

#[async_trait]
impl EventHandler for Private {
    async fn on_event(&self, cx: &Cx, event: &Event) {
        if let Event::UserDeleted(user) = event
            && let Err(e) = cx.stores().private_xml.remove_user(user).await
        {
            tracing::error!(error = %e, %user, "removing private XML of a deleted account failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(children: Vec<Element>) -> Element {
        let mut q = Element::new("query", PRIVATE);
        for c in children {
            q.push_child(c);
        }
        q
    }

    #[test]
    fn keys_are_qualified_names() {
        assert_eq!(
            key(&Element::new("storage", "storage:bookmarks")),
            "{storage:bookmarks}storage"
        );
    }

    #[test]
    fn accepts_own_namespaces() {
        let q = query(vec![Element::new("prefs", "exodus:prefs")]);
        assert_eq!(fragments(&q).unwrap().len(), 1);
    }

    #[test]
    fn refuses_empty_and_reserved() {
        assert_eq!(
            fragments(&query(vec![])).unwrap_err().condition,
            Condition::NotAcceptable
        );
        for ns in [
            "jabber:iq:roster",
            "http://jabber.org/protocol/x",
            "vcard-temp",
            "",
        ] {
            let q = query(vec![Element::new("x", ns)]);
            assert_eq!(
                fragments(&q).unwrap_err().condition,
                Condition::NotAcceptable,
                "{ns}"
            );
        }
        assert_eq!(
            fragments(&Element::new("storage", PRIVATE))
                .unwrap_err()
                .condition,
            Condition::BadRequest
        );
    }
}
