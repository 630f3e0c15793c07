//! XEP-0398: User Avatar to vCard-Based Avatars Conversion.
//!
//! - PEP → vCard: a change of the account's `urn:xmpp:avatar:metadata`
//!   node (XEP-0084) copies the image its newest item points to (the
//!   `<info/>` without a `url`, looked up in `urn:xmpp:avatar:data` and
//!   checked against its SHA-1 id) into the vCard's `PHOTO`; an empty
//!   metadata item (avatar disabled) removes the `PHOTO`.
//! - vCard → PEP: a vCard set with a `PHOTO` publishes the image to the
//!   data node and one `<info/>` to the metadata node (contacts with
//!   `+notify` are told); a vCard set that drops the `PHOTO` publishes an
//!   empty metadata item.
//! - Presence: available presence from the account's sessions, broadcast
//!   or directed (MUC joins), carries `<x xmlns='vcard-temp:x:update'>`
//!   with the photo hash unless the client put a `<photo/>` there itself.
//!
//! Every vCard write goes through [`store_vcard`], which also keeps the
//! photo's SHA-1 under its own key, so that presence needs one small read,
//! not the image.

use base64::Engine;
use sha1::{Digest, Sha1};
use waxwing_core::hooks::Cx;
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::xml::{Element, parse_stanza};
use waxwing_store::{PubSubItem, StoreError};

use crate::caps::Caps;
use crate::pubsub::config::NodeConfig;
use crate::pubsub::{Extension, Extensions, Kind, Svc, item_payload};
use waxwing_proto::ns::{VCARD, VCARD_UPDATE};

/// XEP-0084 nodes.
pub const NS_AVATAR_DATA: &str = "urn:xmpp:avatar:data";
pub const NS_AVATAR_METADATA: &str = "urn:xmpp:avatar:metadata";
/// XEP-0398 feature.
pub const NS_CONVERSION: &str = "urn:xmpp:pep-vcard-conversion:0";

/// The vCard's key in the per-account XML store.
pub const VCARD_KEY: &str = "vcard-temp";
/// The photo hash's key; like [`VCARD_KEY`], no `{ns}name` key of private
/// storage (XEP-0049) can collide with it. The account cache reads it with
/// a login's secrets.
const HASH_KEY: &str = waxwing_core::store_cache::AVATAR_HASH_KEY;

fn sha1_hex(data: &[u8]) -> String {
    Sha1::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A vCard's photo: (bytes, MIME type), if it has a decodable `BINVAL`.
pub fn vcard_photo(card: &Element) -> Option<(Vec<u8>, String)> {
    let photo = card.child("PHOTO", VCARD)?;
    let binval: String = photo
        .child("BINVAL", VCARD)?
        .text()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if binval.is_empty() {
        return None;
    }
    let bytes = b64().decode(binval).ok()?;
    let ty = photo
        .child("TYPE", VCARD)
        .map(|t| t.text().trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "image/png".into());
    Some((bytes, ty))
}

/// The stored vCard, or an empty one.
pub async fn load_vcard(cx: &Cx, user: &BareJid) -> Result<Element, StoreError> {
    Ok(match cx.stores().private_xml.get(user, VCARD_KEY).await? {
        Some(xml) => match parse_stanza(&xml, ns::CLIENT) {
            Ok(el) if el.is("vCard", VCARD) => el,
            _ => {
                tracing::error!("dropping a corrupt stored vCard");
                Element::new("vCard", VCARD)
            }
        },
        None => Element::new("vCard", VCARD),
    })
}

/// Stores a vCard and its photo hash (`''` without a photo).
pub async fn store_vcard(cx: &Cx, user: &BareJid, card: &Element) -> Result<(), StoreError> {
    let store = &cx.stores().private_xml;
    store.set(user, VCARD_KEY, &card.to_xml()).await?;
    let hash = vcard_photo(card)
        .map(|(bytes, _)| sha1_hex(&bytes))
        .unwrap_or_default();
    store.set(user, HASH_KEY, &hash).await
}

/// The SHA-1 of the account's vCard photo, if it has one. A vCard stored
/// before the hash was kept beside it gets its hash computed once.
pub async fn photo_hash(cx: &Cx, user: &BareJid) -> Option<String> {
    let store = &cx.stores().private_xml;
    let stored = match store.get(user, HASH_KEY).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "reading the avatar hash failed");
            return None;
        }
    };
    let hash = match stored {
        Some(h) => h,
        None => {
            let card = match load_vcard(cx, user).await {
                Ok(card) => card,
                Err(e) => {
                    tracing::error!(error = %e, "reading the vCard failed");
                    return None;
                }
            };
            let h = vcard_photo(&card)
                .map(|(bytes, _)| sha1_hex(&bytes))
                .unwrap_or_default();
            if let Err(e) = store.set(user, HASH_KEY, &h).await {
                tracing::error!(error = %e, "storing the avatar hash failed");
            }
            h
        }
    };
    Some(hash).filter(|h| !h.is_empty())
}

/// XEP-0398 §4: adds the photo hash to an available presence unless the
/// client's `<x/>` already has a `<photo/>` (empty or not).
pub fn inject_hash(presence: &mut Element, hash: &str) {
    let photo = Element::new("photo", VCARD_UPDATE).with_text(hash);
    match presence.child_mut("x", VCARD_UPDATE) {
        Some(x) if x.child("photo", VCARD_UPDATE).is_some() => {}
        Some(x) => x.push_child(photo),
        None => presence.push_child(Element::new("x", VCARD_UPDATE).with_child(photo)),
    }
}

/// PEP → vCard, after the metadata node changed.
pub async fn pep_to_vcard(cx: &Cx, user: &BareJid) {
    if let Err(e) = try_pep_to_vcard(cx, user).await {
        tracing::error!(error = %e, %user, "converting the PEP avatar to the vCard failed");
    }
}

async fn try_pep_to_vcard(cx: &Cx, user: &BareJid) -> Result<(), StoreError> {
    let p = &cx.stores().pubsub;
    let newest = match p.items(user, NS_AVATAR_METADATA).await {
        Ok(items) => items.into_iter().next(),
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(e),
    };
    let info = newest.as_ref().and_then(item_payload).and_then(|meta| {
        meta.children()
            .find(|i| i.name == "info" && i.attr("url").is_none() && i.attr("id").is_some())
            .cloned()
    });
    let mut card = load_vcard(cx, user).await?;
    let Some(info) = info else {
        // Avatar disabled (or never set): no PHOTO.
        if card.child("PHOTO", VCARD).is_some() {
            card.remove_children(|c| c.is("PHOTO", VCARD));
            store_vcard(cx, user, &card).await?;
        }
        return Ok(());
    };
    let id = info.attr("id").unwrap_or_default().to_ascii_lowercase();
    if photo_hash(cx, user).await.as_deref() == Some(id.as_str()) {
        return Ok(()); // already there (the vCard was the source)
    }
    let data = match p.items(user, NS_AVATAR_DATA).await {
        Ok(items) => items.into_iter().find(|i| i.id.eq_ignore_ascii_case(&id)),
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(e),
    };
    let Some(bytes) = data
        .as_ref()
        .and_then(item_payload)
        .filter(|d| d.is("data", NS_AVATAR_DATA))
        .and_then(|d| {
            let text: String = d.text().chars().filter(|c| !c.is_whitespace()).collect();
            b64().decode(text).ok()
        })
    else {
        tracing::debug!(%user, %id, "avatar metadata without matching data; vCard unchanged");
        return Ok(());
    };
    if sha1_hex(&bytes) != id {
        tracing::warn!(%user, %id, "avatar data does not match its SHA-1 id; vCard unchanged");
        return Ok(());
    }
    let ty = info.attr("type").unwrap_or("image/png");
    card.remove_children(|c| c.is("PHOTO", VCARD));
    card.push_child(
        Element::new("PHOTO", VCARD)
            .with_child(Element::new("TYPE", VCARD).with_text(ty))
            .with_child(Element::new("BINVAL", VCARD).with_text(b64().encode(&bytes))),
    );
    store_vcard(cx, user, &card).await
}

/// vCard → PEP, after a vCard set by the account (`before` is the vCard
/// it replaced).
pub async fn vcard_to_pep(
    cx: &Cx,
    caps: &Caps,
    extensions: &Extensions,
    user: &BareJid,
    before: &Element,
    card: &Element,
) {
    let svc = Svc {
        cx,
        kind: Kind::Pep,
        jid: user.clone(),
        caps,
        extensions,
        deferred: Default::default(),
    };
    let result = match vcard_photo(card) {
        Some((bytes, ty)) => {
            let id = sha1_hex(&bytes);
            let current = match cx.stores().pubsub.items(user, NS_AVATAR_METADATA).await {
                Ok(items) => items.into_iter().next().map(|i| i.id),
                Err(_) => None,
            };
            if current.as_deref() == Some(id.as_str()) {
                return;
            }
            let data = Element::new("data", NS_AVATAR_DATA).with_text(b64().encode(&bytes));
            let meta = Element::new("metadata", NS_AVATAR_METADATA).with_child(
                Element::new("info", NS_AVATAR_METADATA)
                    .with_attr("bytes", bytes.len().to_string())
                    .with_attr("id", id.as_str())
                    .with_attr("type", ty),
            );
            match publish(&svc, NS_AVATAR_DATA, &id, data).await {
                Ok(()) => publish(&svc, NS_AVATAR_METADATA, &id, meta).await,
                Err(e) => Err(e),
            }
        }
        None if vcard_photo(before).is_some() => {
            // The photo was removed: XEP-0084 §4.5, avatar disabled.
            let meta = Element::new("metadata", NS_AVATAR_METADATA);
            publish(&svc, NS_AVATAR_METADATA, "current", meta).await
        }
        None => Ok(()),
    };
    if let Err(e) = result {
        tracing::error!(error = %e, %user, "converting the vCard avatar to PEP failed");
    }
}

/// Publishes on the account's behalf, creating the node with PEP defaults.
async fn publish(svc: &Svc<'_>, node: &str, id: &str, payload: Element) -> Result<(), String> {
    let cfg = match svc.config(node).await {
        Ok(cfg) => cfg,
        Err(_) => {
            let cfg = NodeConfig::pep();
            match svc
                .cx
                .stores()
                .pubsub
                .create_node(&svc.jid, node, &cfg.to_stored())
                .await
            {
                Ok(()) | Err(StoreError::AlreadyExists) => {}
                Err(e) => return Err(e.to_string()),
            }
            svc.config(node)
                .await
                .map_err(|e| format!("{:?}", e.condition))?
        }
    };
    let item = PubSubItem {
        id: id.to_string(),
        publisher: Jid::from(svc.jid.clone()),
        payload: payload.to_xml(),
    };
    svc.store_and_notify(node, &cfg, &item, &payload)
        .await
        .map_err(|e| format!("{:?}", e.condition))
}

/// XEP-0398 as a PubSub extension: the vCard follows the PEP avatar.
pub struct PepToVCard;

#[async_trait::async_trait]
impl Extension for PepToVCard {
    async fn pep_changed(&self, cx: &Cx, owner: &BareJid, node: &str) {
        if node == NS_AVATAR_METADATA {
            pep_to_vcard(cx, owner).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_injected_unless_the_client_set_a_photo() {
        let mut p = Element::new("presence", ns::CLIENT);
        inject_hash(&mut p, "abc");
        let x = p.child("x", VCARD_UPDATE).unwrap();
        assert_eq!(x.child("photo", VCARD_UPDATE).unwrap().text(), "abc");

        let mut empty_x =
            Element::new("presence", ns::CLIENT).with_child(Element::new("x", VCARD_UPDATE));
        inject_hash(&mut empty_x, "abc");
        assert_eq!(
            empty_x
                .child("x", VCARD_UPDATE)
                .unwrap()
                .child("photo", VCARD_UPDATE)
                .unwrap()
                .text(),
            "abc"
        );

        let mut own = Element::new("presence", ns::CLIENT).with_child(
            Element::new("x", VCARD_UPDATE).with_child(Element::new("photo", VCARD_UPDATE)),
        );
        inject_hash(&mut own, "abc");
        assert_eq!(
            own.child("x", VCARD_UPDATE)
                .unwrap()
                .child("photo", VCARD_UPDATE)
                .unwrap()
                .text(),
            ""
        );
    }

    #[test]
    fn vcard_photos_decode_with_whitespace() {
        let card = Element::new("vCard", VCARD).with_child(
            Element::new("PHOTO", VCARD)
                .with_child(Element::new("TYPE", VCARD).with_text("image/gif"))
                .with_child(Element::new("BINVAL", VCARD).with_text("aGVs\n bG8=")),
        );
        assert_eq!(
            vcard_photo(&card),
            Some((b"hello".to_vec(), "image/gif".to_string()))
        );
        assert_eq!(
            sha1_hex(b"hello"),
            "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"
        );
        let bad = Element::new("vCard", VCARD).with_child(
            Element::new("PHOTO", VCARD).with_child(Element::new("BINVAL", VCARD).with_text("!!")),
        );
        assert_eq!(vcard_photo(&bad), None);
    }
}
