//! XML namespace names used by the server.
//!
//! One constant per namespace so a typo is a compile error, not a silent
//! mismatch in `Element::is`.

use compact_str::CompactString;

/// RFC 6120 §4.8.1: the `<stream:stream>` wrapper, `<stream:features>`, `<stream:error>`.
pub const STREAM: &str = "http://etherx.jabber.org/streams";
/// RFC 6120 §4.8.3: content namespace of client-to-server streams.
pub const CLIENT: &str = "jabber:client";
/// RFC 6120 §4.8.3: content namespace of server-to-server streams.
pub const SERVER: &str = "jabber:server";
/// XEP-0114: content namespace of external component streams.
pub const COMPONENT: &str = "jabber:component:accept";
/// RFC 6120 §4.9.3: stream error conditions.
pub const STREAMS_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// RFC 6120 §8.3.3: stanza error conditions.
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// RFC 6120 §5: STARTTLS negotiation.
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// RFC 6120 §6: SASL negotiation.
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// RFC 6120 §7: resource binding.
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// RFC 3921 §3 (legacy, kept by draft-cridland-xmpp-session): session establishment.
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// RFC 6121 §2: roster management.
pub const ROSTER: &str = "jabber:iq:roster";
/// RFC 6121 §2.6: roster versioning stream feature.
pub const ROSTER_VER: &str = "urn:xmpp:features:rosterver";
/// RFC 6121 §3.4: subscription pre-approval stream feature.
pub const PRE_APPROVAL: &str = "urn:xmpp:features:pre-approval";
/// XEP-0030: Service Discovery, info queries.
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0030: Service Discovery, items queries.
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// XEP-0199: XMPP Ping.
pub const PING: &str = "urn:xmpp:ping";
/// XEP-0092: Software Version.
pub const VERSION: &str = "jabber:iq:version";
/// XEP-0202: Entity Time.
pub const TIME: &str = "urn:xmpp:time";
/// XEP-0203: Delayed Delivery.
pub const DELAY: &str = "urn:xmpp:delay";
/// XEP-0077: In-Band Registration, the IQ payload.
pub const REGISTER: &str = "jabber:iq:register";
/// XEP-0077: In-Band Registration, the stream feature.
pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
/// XEP-0160: Best Practices for Handling Offline Messages (disco feature `msgoffline`).
pub const OFFLINE: &str = "msgoffline";
/// XEP-0004: Data Forms.
pub const DATA_FORMS: &str = "jabber:x:data";
/// XEP-0440: SASL Channel-Binding Type Capability.
pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
/// XML 1.0 / Namespaces in XML §3: the namespace bound to the `xml:` prefix.
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
/// XEP-0215: External Service Discovery.
pub const EXTDISCO: &str = "urn:xmpp:extdisco:2";
/// XEP-0065: SOCKS5 Bytestreams.
pub const BYTESTREAMS: &str = "http://jabber.org/protocol/bytestreams";
/// XEP-0054: vcard-temp.
pub const VCARD: &str = "vcard-temp";
/// XEP-0153: vCard-based avatars (advertised; the work is the clients').
pub const VCARD_UPDATE: &str = "vcard-temp:x:update";

/// Namespaces longer than a [`CompactString`] holds inline that clients
/// put on stanza payloads (and the server's own), so that an element in
/// one of them shares this static string instead of allocating its own.
const LONG_KNOWN: &[&str] = &[
    STREAM,
    STREAMS_ERRORS,
    STANZAS,
    TLS,
    SASL,
    BIND,
    SESSION,
    PRE_APPROVAL,
    DISCO_INFO,
    DISCO_ITEMS,
    REGISTER_FEATURE,
    XML,
    BYTESTREAMS,
    "http://jabber.org/protocol/chatstates",
    "http://jabber.org/protocol/caps",
    "http://jabber.org/protocol/muc",
    "http://jabber.org/protocol/muc#user",
    "http://jabber.org/protocol/muc#admin",
    "http://jabber.org/protocol/muc#owner",
    "http://jabber.org/protocol/nick",
    "http://jabber.org/protocol/address",
    "http://jabber.org/protocol/pubsub",
    "http://jabber.org/protocol/pubsub#event",
    "http://jabber.org/protocol/pubsub#owner",
    "http://jabber.org/protocol/rsm",
    "http://jabber.org/protocol/commands",
    "http://jabber.org/protocol/xhtml-im",
    "http://www.w3.org/1999/xhtml",
    "http://jabber.org/protocol/ibb",
    "urn:xmpp:message-correct:0",
    "urn:xmpp:jingle-message:0",
    "eu.siacs.conversations.axolotl",
];

/// `uri` as a [`CompactString`]: the static string if it is one of the
/// long namespaces above, else a copy (inline when short).
pub fn intern(uri: &str) -> CompactString {
    if uri.len() > MAX_INLINE
        && let Some(known) = LONG_KNOWN.iter().find(|k| **k == uri)
    {
        return CompactString::const_new(known);
    }
    CompactString::new(uri)
}

/// The longest string a [`CompactString`] holds without allocating.
const MAX_INLINE: usize = std::mem::size_of::<String>();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_namespaces_do_not_allocate() {
        for uri in LONG_KNOWN {
            assert!(uri.len() > MAX_INLINE, "{uri} is inline anyway");
            let s = intern(uri);
            assert_eq!(s, *uri);
            assert!(!s.is_heap_allocated(), "{uri}");
            assert_eq!(s.as_static_str(), Some(*uri));
        }
        assert!(!intern(CLIENT).is_heap_allocated(), "short: inline");
        let other = intern("urn:example:a-namespace-nobody-knows");
        assert_eq!(other, "urn:example:a-namespace-nobody-knows");
        assert!(other.is_heap_allocated());
    }
}
