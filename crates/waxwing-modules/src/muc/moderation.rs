//! XEP-0425: Moderated Message Retraction (`urn:xmpp:message-moderate:1`).
//!
//! A moderator names a message by the stanza-id the room gave it. The
//! room answers with a XEP-0424 `<retract/>` from the room's own JID —
//! clients that only know XEP-0424 still hide the message — and the
//! archive keeps a `<retracted/>` tombstone in its place, so that history
//! fetched later no longer carries the content.

use std::time::SystemTime;

use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;

use super::room::NS_OCCUPANT_ID;

/// XEP-0425 namespace.
pub const NS: &str = "urn:xmpp:message-moderate:1";
/// XEP-0424 Message Retraction, whose `<retract/>` the moderation carries.
pub const NS_RETRACT: &str = "urn:xmpp:message-retract:1";

/// A parsed `<moderate/>` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The room's stanza-id of the message to retract.
    pub id: String,
    pub reason: Option<String>,
}

impl Request {
    /// `<moderate id='…'><retract xmlns='urn:xmpp:message-retract:1'/><reason/></moderate>`.
    pub fn parse(el: &Element) -> Result<Self, StanzaError> {
        let id = el
            .attr("id")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                StanzaError::modify(Condition::BadRequest).with_text("<moderate/> needs an id")
            })?
            .to_string();
        // Retraction is the only moderation action this version defines.
        if el.child("retract", NS_RETRACT).is_none() {
            return Err(StanzaError::cancel(Condition::FeatureNotImplemented)
                .with_text("only retraction is supported"));
        }
        let reason = el
            .child("reason", NS)
            .map(|r| r.text().trim().to_string())
            .filter(|r| !r.is_empty());
        Ok(Request { id, reason })
    }
}

fn moderated(by: &str, occupant_id: &str) -> Element {
    Element::new("moderated", NS)
        .with_attr("by", by)
        .with_child(Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", occupant_id))
}

/// The moderation message every occupant gets (XEP-0425 §3.1), without `to`.
pub fn announcement(
    room: &str,
    id: &str,
    by: &str,
    occupant_id: &str,
    reason: Option<&str>,
) -> Element {
    let mut retract = Element::new("retract", NS_RETRACT)
        .with_attr("id", id)
        .with_child(moderated(by, occupant_id));
    if let Some(r) = reason {
        retract.push_child(Element::new("reason", NS_RETRACT).with_text(r));
    }
    Element::new("message", ns::CLIENT)
        .with_attr("type", "groupchat")
        .with_attr("from", room)
        .with_attr("id", crate::stanza_id("moderate"))
        .with_child(retract)
}

/// The archive tombstone of a moderated message (XEP-0425 §4): its
/// addressing, id and author's occupant id stay; every other child — the
/// body and anything that might leak it — gives way to `<retracted/>`.
/// `by` is the moderator's occupant JID, not its real JID, so a
/// semi-anonymous room stays semi-anonymous.
pub fn tombstone(
    original: &Element,
    by: &str,
    occupant_id: &str,
    reason: Option<&str>,
    now: SystemTime,
) -> Element {
    let mut t = Element::new(original.name.clone(), original.ns.clone());
    for (k, v) in &original.attrs {
        t.set_attr(k.clone(), v.clone());
    }
    for c in original.children().filter(|c| c.ns == NS_OCCUPANT_ID) {
        t.push_child(c.clone());
    }
    let mut retracted = Element::new("retracted", NS_RETRACT)
        .with_attr("stamp", waxwing_core::time::xep0082(now))
        .with_child(moderated(by, occupant_id));
    if let Some(r) = reason {
        retracted.push_child(Element::new("reason", NS_RETRACT).with_text(r));
    }
    t.with_child(retracted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use waxwing_proto::xml::parse_stanza;

    fn el(xml: &str) -> Element {
        parse_stanza(xml, ns::CLIENT).unwrap()
    }

    #[test]
    fn requests_are_parsed() {
        let iq = el(&format!(
            "<iq xmlns='jabber:client'><moderate xmlns='{NS}' id='s1'>\
             <retract xmlns='{NS_RETRACT}'/><reason> spam </reason></moderate></iq>"
        ));
        let r = Request::parse(iq.first_child().unwrap()).unwrap();
        assert_eq!(r.id, "s1");
        assert_eq!(r.reason.as_deref(), Some("spam"));
        let no_id = Element::new("moderate", NS).with_child(Element::new("retract", NS_RETRACT));
        assert!(Request::parse(&no_id).is_err());
        let no_retract = Element::new("moderate", NS).with_attr("id", "s1");
        assert!(Request::parse(&no_retract).is_err());
    }

    #[test]
    fn tombstones_keep_nothing_of_the_content() {
        let original = el(&format!(
            "<message xmlns='jabber:client' type='groupchat' from='r@c/oldhag' id='m1'>\
             <body>potions</body><html xmlns='http://jabber.org/protocol/xhtml-im'/>\
             <occupant-id xmlns='{NS_OCCUPANT_ID}' id='o1'/></message>"
        ));
        let t = tombstone(
            &original,
            "r@c/mod",
            "o2",
            Some("spam"),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(t.attr("from"), Some("r@c/oldhag"));
        assert_eq!(t.attr("id"), Some("m1"));
        assert!(t.child("body", ns::CLIENT).is_none());
        assert!(!t.to_xml().contains("potions") && !t.to_xml().contains("xhtml"));
        assert_eq!(
            t.child("occupant-id", NS_OCCUPANT_ID)
                .and_then(|o| o.attr("id")),
            Some("o1")
        );
        let r = t.child("retracted", NS_RETRACT).unwrap();
        assert_eq!(r.child("reason", NS_RETRACT).unwrap().text(), "spam");
        let m = r.child("moderated", NS).unwrap();
        assert_eq!(m.attr("by"), Some("r@c/mod"));
        let a = announcement("r@c", "s1", "r@c/mod", "o2", None);
        let retract = a.child("retract", NS_RETRACT).unwrap();
        assert_eq!(retract.attr("id"), Some("s1"));
        assert!(retract.child("moderated", NS).is_some());
    }
}
