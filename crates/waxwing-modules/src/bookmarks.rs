//! XEP-0402: PEP Native Bookmarks, `#compat` mirroring with XEP-0049.
//!
//! Bookmarks live in the `urn:xmpp:bookmarks:1` PEP node, one item per
//! room. After every change to that node the whole set is rewritten as a
//! XEP-0048 `<storage xmlns='storage:bookmarks'/>` in private XML storage
//! (key `{storage:bookmarks}storage`, as `private.rs` stores it), so that
//! clients that only know XEP-0049 see the same bookmarks; and a
//! `<storage/>` written through private storage replaces the node's items.
//! The second direction writes the store directly (no notifications), so
//! the two never trigger each other.

use waxwing_core::hooks::Cx;
use waxwing_proto::jid::BareJid;
use waxwing_proto::xml::Element;

use waxwing_proto::jid::Jid;
use waxwing_store::{PubSubItem, StoreError};

use crate::pubsub::config::{AccessModel, NodeConfig};
use crate::pubsub::item_payload;

/// The XEP-0402 node and payload namespace.
pub const NS_BOOKMARKS2: &str = "urn:xmpp:bookmarks:1";
/// Advertised on accounts: the server keeps both storages in step.
pub const NS_BOOKMARKS2_COMPAT: &str = "urn:xmpp:bookmarks:1#compat";
/// XEP-0048 payload namespace.
pub const NS_STORAGE: &str = "storage:bookmarks";

/// Rewrites the account's XEP-0049 bookmarks from its XEP-0402 node.
pub async fn mirror_to_private(cx: &Cx, owner: &BareJid) {
    let items = match cx.stores().pubsub.items(owner, NS_BOOKMARKS2).await {
        Ok(items) => items,
        // The node was deleted: nothing left to mirror.
        Err(waxwing_store::StoreError::NotFound) => Vec::new(),
        Err(e) => {
            tracing::error!(error = %e, "reading bookmarks for #compat failed");
            return;
        }
    };
    let mut storage = Element::new("storage", NS_STORAGE);
    // Oldest first, the order clients added them in.
    for item in items.iter().rev() {
        let Some(conf) = item_payload(item).filter(|p| p.is("conference", NS_BOOKMARKS2)) else {
            continue;
        };
        storage.push_child(legacy_conference(&item.id, &conf));
    }
    if let Err(e) = cx
        .stores()
        .private_xml
        .set(
            owner,
            &format!("{{{NS_STORAGE}}}storage"),
            &storage.to_xml(),
        )
        .await
    {
        tracing::error!(error = %e, "writing #compat bookmarks failed");
    }
}

/// Replaces the XEP-0402 node's items with the conferences of a XEP-0048
/// `<storage/>` written through private storage.
pub async fn mirror_from_private(cx: &Cx, owner: &BareJid, storage: &Element) {
    if let Err(e) = replace_items(cx, owner, storage).await {
        tracing::error!(error = %e, "writing #compat bookmarks to PEP failed");
    }
}

async fn replace_items(cx: &Cx, owner: &BareJid, storage: &Element) -> Result<(), StoreError> {
    let p = &cx.stores().pubsub;
    let cfg = match p.node_config(owner, NS_BOOKMARKS2).await? {
        Some(xml) => NodeConfig::from_stored(&xml, NodeConfig::pep()),
        None => {
            // XEP-0402 §3: the node clients create.
            let mut cfg = NodeConfig::pep();
            cfg.access_model = AccessModel::Whitelist;
            cfg.max_items = None;
            cfg.send_last_published_item = "never".into();
            match p.create_node(owner, NS_BOOKMARKS2, &cfg.to_stored()).await {
                Ok(()) | Err(StoreError::AlreadyExists) => {}
                Err(e) => return Err(e),
            }
            cfg
        }
    };
    let wanted: Vec<(String, Element)> = storage
        .children()
        .filter(|c| c.is("conference", NS_STORAGE))
        .filter_map(|c| Some((c.attr("jid")?.to_string(), native_conference(c))))
        .collect();
    for old in p.items(owner, NS_BOOKMARKS2).await? {
        if !wanted.iter().any(|(id, _)| *id == old.id) {
            p.retract(owner, NS_BOOKMARKS2, &old.id).await?;
        }
    }
    for (id, conf) in wanted {
        let item = PubSubItem {
            id,
            publisher: Jid::from(owner.clone()),
            payload: conf.to_xml(),
        };
        p.publish(owner, NS_BOOKMARKS2, &item, Some(cfg.item_limit()))
            .await?;
    }
    Ok(())
}

/// One XEP-0048 `<conference/>` as a XEP-0402 one.
fn native_conference(legacy: &Element) -> Element {
    let mut out = Element::new("conference", NS_BOOKMARKS2);
    if let Some(name) = legacy.attr("name") {
        out.set_attr("name", name);
    }
    if matches!(legacy.attr("autojoin"), Some("true" | "1")) {
        out.set_attr("autojoin", "true");
    }
    for child in ["nick", "password"] {
        if let Some(c) = legacy.child(child, NS_STORAGE) {
            out.push_child(Element::new(child, NS_BOOKMARKS2).with_text(c.text()));
        }
    }
    out
}

/// One XEP-0402 `<conference/>` as a XEP-0048 one.
fn legacy_conference(room: &str, conf: &Element) -> Element {
    let mut out = Element::new("conference", NS_STORAGE).with_attr("jid", room);
    if let Some(name) = conf.attr("name") {
        out.set_attr("name", name);
    }
    let autojoin = matches!(conf.attr("autojoin"), Some("true" | "1"));
    out.set_attr("autojoin", if autojoin { "true" } else { "false" });
    for child in ["nick", "password"] {
        if let Some(c) = conf.child(child, NS_BOOKMARKS2) {
            out.push_child(Element::new(child, NS_STORAGE).with_text(c.text()));
        }
    }
    out
}

/// XEP-0402 `#compat` as a PubSub extension: the PEP bookmarks are
/// mirrored to XEP-0049 private XML for older clients.
pub struct CompatMirror;

#[async_trait::async_trait]
impl crate::pubsub::Extension for CompatMirror {
    fn account_features(&self) -> &'static [&'static str] {
        &[NS_BOOKMARKS2_COMPAT]
    }

    async fn pep_changed(&self, cx: &Cx, owner: &BareJid, node: &str) {
        if node == NS_BOOKMARKS2 {
            mirror_to_private(cx, owner).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conference_converts_to_legacy() {
        let conf = Element::new("conference", NS_BOOKMARKS2)
            .with_attr("name", "Council")
            .with_attr("autojoin", "1")
            .with_child(Element::new("nick", NS_BOOKMARKS2).with_text("puck"));
        let legacy = legacy_conference("council@conf.example", &conf);
        assert_eq!(
            legacy.to_xml(),
            "<conference xmlns='storage:bookmarks' jid='council@conf.example' name='Council' \
             autojoin='true'><nick>puck</nick></conference>"
        );
    }
}
