//! One stanza for many recipients, serialized once (a room's message to
//! its occupants, see [`crate::router::Server::route_fanout`]).
//!
//! A [`SharedStanza`] is the stanza without `to`; each recipient's queue
//! entry is an [`Addressed`]: the shared stanza behind an `Arc` and the
//! recipient's JID. A session writing one to a byte stream copies the
//! shared bytes on either side of the address ([`Addressed::write_client`]):
//! no element tree is made per recipient, and the stanza is serialized
//! once for the whole room. Whatever needs a tree (stream management's
//! unacknowledged stanzas, CSI's queue of held stanzas, offline storage of
//! what a closing session never wrote, another transport's framing) gets
//! one from [`Addressed::into_element`], the same stanza the router would
//! have queued: the shared one's attributes, then `to`.

use std::sync::{Arc, OnceLock};

use waxwing_proto::jid::FullJid;
use waxwing_proto::ns;
use waxwing_proto::xml::{CompactString, Element, escape_attr};

/// What [`escape_attr`] replaces (checked in debug builds).
const ESCAPED: &[char] = &['&', '<', '>', '\'', '"', '\t', '\n', '\r'];

/// A stanza without `to`, shared by every recipient of a fan-out.
#[derive(Debug)]
pub struct SharedStanza {
    element: Element,
    /// Its serialization with `jabber:client` in scope, cut where `to` goes
    /// (after the last attribute): made by the first session that writes it.
    wire: OnceLock<Wire>,
}

/// Two strings rather than one and where to cut it: slicing checks the
/// cut for a char boundary, and that would run once per recipient.
#[derive(Debug)]
struct Wire {
    /// `<message from='…' type='groupchat'` (no `to`).
    head: String,
    /// `>…payload…</message>` or `/>`.
    tail: String,
}

impl SharedStanza {
    /// `stanza` loses its `to` (each copy gets its recipient's).
    pub fn new(mut stanza: Element) -> Arc<Self> {
        stanza.remove_attr("to");
        Arc::new(SharedStanza {
            element: stanza,
            wire: OnceLock::new(),
        })
    }

    /// The stanza, without `to`.
    pub fn element(&self) -> &Element {
        &self.element
    }

    /// The length of what [`Addressed::write_client`] writes, without the
    /// recipient's ` to='…'`: a room's history accounts its messages by
    /// it. Serializes the stanza now if no session has yet; they reuse it.
    pub fn written_len(&self) -> usize {
        let wire = self.wire();
        wire.head.len() + wire.tail.len()
    }

    /// Serialized once, cut by the writer itself after the attributes
    /// (each part sized for what goes in it, so written without growing).
    fn wire(&self) -> &Wire {
        self.wire.get_or_init(|| {
            let (mut head, mut tail) = (String::new(), String::new());
            self.element.write_split(&mut head, &mut tail, ns::CLIENT);
            Wire { head, tail }
        })
    }
}

/// A queue entry's stanza: the shared stanza addressed to one recipient.
#[derive(Debug, Clone)]
pub struct Addressed {
    pub stanza: Arc<SharedStanza>,
    pub to: FullJid,
}

impl Addressed {
    /// The element name (`message` …), for metrics and checks.
    pub fn name(&self) -> &str {
        &self.stanza.element.name
    }

    /// Appends the stanza, addressed, as a top-level element of a
    /// `jabber:client` stream: exactly what [`Element::write_to`] writes
    /// for [`Addressed::into_element`]'s tree.
    pub fn write_client(&self, out: &mut String) {
        let wire = self.stanza.wire();
        out.reserve(wire.head.len() + wire.tail.len() + 64);
        out.push_str(&wire.head);
        out.push_str(" to='");
        // A prepared localpart and domainpart never hold a character an
        // attribute value escapes (RFC 7622 forbids `"&'<>` in localparts,
        // PRECIS any control; domains are LDH or IDNA labels, or IP
        // literals), so only the resource, which may, goes through
        // `escape_attr`: this runs once per recipient of every room message.
        if let Some(local) = self.to.local() {
            debug_assert!(!local.contains(ESCAPED));
            out.push_str(local);
            out.push('@');
        }
        debug_assert!(!self.to.domain().contains(ESCAPED));
        out.push_str(self.to.domain());
        out.push('/');
        escape_attr(out, self.to.resource());
        out.push('\'');
        out.push_str(&wire.tail);
    }

    /// The addressed stanza as a tree: the shared one's attributes, then
    /// `to`; the payload stays shared (`Children`).
    pub fn to_element(&self) -> Element {
        let el = &self.stanza.element;
        let mut attrs = Vec::with_capacity(el.attrs.len() + 1);
        attrs.extend(el.attrs.iter().cloned());
        attrs.push(("to".into(), jid_text(&self.to)));
        Element {
            name: el.name.clone(),
            ns: el.ns.clone(),
            attrs,
            children: el.children.clone(),
        }
    }

    /// Like [`Addressed::to_element`]; the last holder of the shared
    /// stanza takes it rather than copying it.
    pub fn into_element(self) -> Element {
        match Arc::try_unwrap(self.stanza) {
            Ok(shared) => {
                let mut el = shared.element;
                el.attrs.push(("to".into(), jid_text(&self.to)));
                el
            }
            Err(stanza) => Addressed {
                stanza,
                to: self.to,
            }
            .to_element(),
        }
    }
}

/// `jid` as text, inline or in one allocation of the right size
/// (`to_string` goes through the formatter and grows its buffer piece by
/// piece).
fn jid_text(jid: &FullJid) -> CompactString {
    let local = jid.local().map_or(0, |l| l.len() + 1);
    let mut s = CompactString::with_capacity(local + jid.domain().len() + 1 + jid.resource().len());
    if let Some(l) = jid.local() {
        s.push_str(l);
        s.push('@');
    }
    s.push_str(jid.domain());
    s.push('/');
    s.push_str(jid.resource());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Element {
        Element::new("message", ns::CLIENT)
            .with_attr("from", "room@conference.example.com/n'ck & <co>")
            .with_attr("to", "stale@example.com/x")
            .with_attr("type", "groupchat")
            .with_attr("xml:lang", "en")
            .with_attr("{urn:example:attr}flag", "1")
            .with_child(Element::new("body", ns::CLIENT).with_text("hi <there> & 'you'"))
            .with_child(Element::new("x", "urn:example:x").with_attr("a", "b"))
    }

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        escape_attr(&mut out, s);
        out
    }

    #[test]
    fn the_bytes_are_the_trees_serialization() {
        let shared = SharedStanza::new(message());
        for to in [
            "juliet@example.com/balcony",
            "example.com/res'&<>\"",
            "ohara@example.com/r'&/with/slashes",
        ] {
            let a = Addressed {
                stanza: shared.clone(),
                to: FullJid::parse(to).unwrap(),
            };
            let tree = a.to_element();
            assert_eq!(tree.attr("to"), Some(to));
            assert_eq!(tree.attrs.iter().filter(|(k, _)| k == "to").count(), 1);
            let mut bytes = String::new();
            a.write_client(&mut bytes);
            let mut expected = String::new();
            tree.write_to(&mut expected, ns::CLIENT);
            assert_eq!(bytes, expected, "to {to}");
            let to_attr = format!(" to='{}'", escaped(to));
            assert_eq!(shared.written_len(), bytes.len() - to_attr.len());
            // And it parses back to the same tree (attribute order aside).
            let mut back = waxwing_proto::xml::parse_stanza(&bytes, ns::CLIENT).unwrap();
            let mut tree = tree;
            back.attrs.sort();
            tree.attrs.sort();
            assert_eq!(back, tree);
        }
    }

    #[test]
    fn an_empty_stanza_and_another_namespace_are_cut_right() {
        for el in [
            Element::new("presence", ns::CLIENT).with_attr("from", "a@b/c"),
            Element::new("message", "jabber:server").with_attr("id", "1"),
        ] {
            let a = Addressed {
                stanza: SharedStanza::new(el),
                to: FullJid::parse("x@y/z").unwrap(),
            };
            let mut bytes = String::new();
            a.write_client(&mut bytes);
            let mut expected = String::new();
            a.to_element().write_to(&mut expected, ns::CLIENT);
            assert_eq!(bytes, expected);
        }
    }

    #[test]
    fn names_holding_what_closes_a_tag_are_cut_right_too() {
        // The writer cuts, not a search for the first `>`.
        for el in [
            Element::new("m/", ns::CLIENT).with_child(Element::new("b", ns::CLIENT)),
            Element::new("message", ns::CLIENT).with_attr("a>b", "1"),
            Element::new("message", ns::CLIENT).with_attr("{urn:x}a/b", "1"),
        ] {
            let a = Addressed {
                stanza: SharedStanza::new(el),
                to: FullJid::parse("x@y/z").unwrap(),
            };
            assert_eq!(
                a.stanza.written_len(),
                a.stanza.element().to_xml_in(ns::CLIENT).len()
            );
            let mut bytes = String::new();
            a.write_client(&mut bytes);
            let mut expected = String::new();
            a.to_element().write_to(&mut expected, ns::CLIENT);
            assert_eq!(bytes, expected);
        }
    }

    #[test]
    fn jid_text_is_the_display_form() {
        for j in ["juliet@example.com/balcony", "example.com/res/with/slashes"] {
            let full = FullJid::parse(j).unwrap();
            assert_eq!(jid_text(&full), full.to_string());
        }
    }

    #[test]
    fn the_last_holder_takes_the_stanza() {
        let shared = SharedStanza::new(message());
        let to = FullJid::parse("juliet@example.com/balcony").unwrap();
        let first = Addressed {
            stanza: shared.clone(),
            to: to.clone(),
        };
        let copy = first.into_element();
        let last = Addressed { stanza: shared, to }.into_element();
        assert_eq!(copy, last);
        let mut expected = message();
        expected.remove_attr("to");
        expected.set_attr("to", "juliet@example.com/balcony");
        assert_eq!(last, expected);
    }
}
