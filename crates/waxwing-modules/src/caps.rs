//! XEP-0115: Entity Capabilities, read by the server for PEP `+notify`
//! filtering (XEP-0163 §4.3).
//!
//! A session's `<c/>` names a `ver`; features per `ver` are cached for the
//! life of the process, so each `ver` is asked (disco#info to one full JID)
//! at most once while an answer is outstanding. Hashed `ver`s are verified
//! (§5.4) before being cached: a client cannot poison another's entry.
//!
//! Remote contacts' resources are tracked too (XEP-0163 §4.3 across
//! federation): the caps in the presence they send to our accounts, and
//! which of our accounts got it (whose last items they may then want).
//! Their `ver`s are asked over s2s like local ones. That table is bounded.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use sha1::Digest;
use waxwing_proto::jid::{BareJid, FullJid};
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

/// XEP-0115 namespace.
pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";

/// Bounds on the tables: a flood of made-up `ver`s must not grow them forever.
const MAX_KNOWN: usize = 4096;
const MAX_PENDING: usize = 1024;
/// Remote resources tracked at once, and local accounts remembered per resource.
const MAX_REMOTE: usize = 16384;
/// Sessions served elsewhere remembered at once.
const MAX_ELSEWHERE: usize = 16384;
const MAX_WATCHERS: usize = 256;

/// Features of a session's client.
pub type Features = Arc<HashSet<String>>;

/// What a presence's caps mean for the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Observed {
    /// Same `ver` as before: nothing new.
    Unchanged,
    /// Features are known now (cached `ver`): act on them.
    Known,
    /// Unknown `ver`: send this disco#info query; act when it is answered.
    Query(Element),
    /// Unknown `ver`, already being asked.
    Waiting,
    /// No caps in the presence.
    None,
}

#[derive(Default)]
struct State {
    /// Current cache key per session.
    sessions: HashMap<FullJid, String>,
    /// Cache keys of sessions whose presence this process did not see go
    /// out (served by another node of a cluster), taken from the presence
    /// the session registry holds when they are asked about. Nothing says
    /// when they end, so the table is bounded and emptied when full.
    elsewhere: HashMap<FullJid, String>,
    known: HashMap<String, Features>,
    /// Outstanding queries by IQ id: (cache key, hash algorithm, `ver`,
    /// the JID asked, whose answer alone counts).
    pending: HashMap<String, (String, Option<String>, String, FullJid)>,
    /// Keys with a query outstanding.
    asking: HashSet<String>,
    /// Available remote resources (with caps) per remote bare JID, each with
    /// the local accounts its presence was sent to.
    remote: HashMap<BareJid, HashMap<FullJid, HashSet<BareJid>>>,
    remote_count: usize,
}

/// The capabilities cache.
#[derive(Default)]
pub struct Caps {
    state: Mutex<State>,
}

impl Caps {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The features of a session's client, if known.
    pub fn features(&self, jid: &FullJid) -> Option<Features> {
        let st = self.lock();
        let key = st.sessions.get(jid).or_else(|| st.elsewhere.get(jid))?;
        st.known.get(key).cloned()
    }

    /// Whether the caps of session `jid` were noted (known or being asked).
    pub fn noted(&self, jid: &FullJid) -> bool {
        let st = self.lock();
        st.sessions.contains_key(jid) || st.elsewhere.contains_key(jid)
    }

    /// Notes the caps in `presence`, the current presence of a session of
    /// ours whose broadcast this process did not see (another node of a
    /// cluster serves it), as [`Caps::observe`] does for the others.
    pub fn observe_elsewhere(
        &self,
        jid: &FullJid,
        presence: &Element,
        query_from: &str,
    ) -> Observed {
        let Some((key, hash, node, ver)) = caps_of(presence) else {
            return Observed::None;
        };
        let mut st = self.lock();
        if st.elsewhere.get(jid) == Some(&key) {
            return Observed::Unchanged;
        }
        if st.elsewhere.len() >= MAX_ELSEWHERE {
            st.elsewhere.clear();
        }
        st.elsewhere.insert(jid.clone(), key.clone());
        st.lookup(jid, key, hash, &node, &ver, query_from)
    }

    /// Whether the session asked for notifications of `node` (`node+notify`).
    pub fn wants(&self, jid: &FullJid, node: &str) -> bool {
        self.features(jid)
            .is_some_and(|f| f.contains(&format!("{node}+notify")))
    }

    /// Records the caps of an available presence from `jid`; the query (if
    /// any) is to be sent from `query_from`.
    pub fn observe(&self, jid: &FullJid, presence: &Element, query_from: &str) -> Observed {
        let Some((key, hash, node, ver)) = caps_of(presence) else {
            return Observed::None;
        };
        let mut st = self.lock();
        if st.sessions.get(jid) == Some(&key) {
            return Observed::Unchanged;
        }
        st.sessions.insert(jid.clone(), key.clone());
        st.lookup(jid, key, hash, &node, &ver, query_from)
    }

    /// Whether an available presence from the remote resource `jid` to our
    /// account `to` tells nothing new (same caps, `to` already noted).
    pub fn remote_unchanged(&self, jid: &FullJid, presence: &Element, to: &BareJid) -> bool {
        let Some((mut key, hash, ..)) = caps_of(presence) else {
            return true;
        };
        if hash.is_none() {
            key = format!("{jid} {key}");
        }
        let st = self.lock();
        st.sessions.get(jid) == Some(&key)
            && st
                .remote
                .get(jid.bare())
                .and_then(|r| r.get(jid))
                .is_some_and(|w| w.contains(to))
    }

    /// Records the caps of an available presence from the remote resource
    /// `jid` to our account `to`. `Known` also when only `to` is new (it
    /// gets `to`'s last items then).
    pub fn observe_remote(
        &self,
        jid: &FullJid,
        presence: &Element,
        to: &BareJid,
        query_from: &str,
    ) -> Observed {
        let Some((mut key, hash, node, ver)) = caps_of(presence) else {
            return Observed::None;
        };
        if hash.is_none() {
            // An unverifiable legacy `ver` from another server is cached for
            // that resource only: it cannot speak for our clients' entries.
            key = format!("{jid} {key}");
        }
        let mut st = self.lock();
        let tracked = st
            .remote
            .get(jid.bare())
            .is_some_and(|r| r.contains_key(jid));
        if !tracked {
            if st.remote_count >= MAX_REMOTE {
                tracing::debug!(%jid, "remote caps table full; not tracking this resource");
                return Observed::None;
            }
            st.remote_count += 1;
        }
        let watchers = st
            .remote
            .entry(jid.bare().clone())
            .or_default()
            .entry(jid.clone())
            .or_default();
        let new_watcher = watchers.len() < MAX_WATCHERS && watchers.insert(to.clone());
        if st.sessions.get(jid) == Some(&key) {
            return match st.known.contains_key(&key) {
                true if new_watcher => Observed::Known,
                _ => Observed::Unchanged,
            };
        }
        st.sessions.insert(jid.clone(), key.clone());
        st.lookup(jid, key, hash, &node, &ver, query_from)
    }

    /// Available remote resources of `contact` we know caps for.
    pub fn remote_resources(&self, contact: &BareJid) -> Vec<FullJid> {
        self.lock()
            .remote
            .get(contact)
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Our accounts the remote resource `jid` sent its presence to.
    pub fn remote_watchers(&self, jid: &FullJid) -> Vec<BareJid> {
        self.lock()
            .remote
            .get(jid.bare())
            .and_then(|r| r.get(jid))
            .map(|w| w.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The cache key, hash, node and `ver` of a presence's `<c/>`.
fn caps_of(presence: &Element) -> Option<(String, Option<String>, String, String)> {
    let c = presence.child("c", NS_CAPS)?;
    let (node, ver) = (c.attr("node")?, c.attr("ver")?);
    let hash = c.attr("hash").map(str::to_string);
    // Hashed vers are global; legacy ones only mean something with their node.
    let key = match &hash {
        Some(h) => format!("{h}:{ver}"),
        None => format!("{node}#{ver}"),
    };
    Some((key, hash, node.to_string(), ver.to_string()))
}

impl State {
    /// `jid` now has caps `key`: known, already asked, or to be asked.
    fn lookup(
        &mut self,
        jid: &FullJid,
        key: String,
        hash: Option<String>,
        node: &str,
        ver: &str,
        query_from: &str,
    ) -> Observed {
        if self.known.contains_key(&key) {
            return Observed::Known;
        }
        if self.asking.contains(&key) {
            return Observed::Waiting;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.clear();
            self.asking.clear();
        }
        let id = crate::stanza_id("caps");
        self.pending.insert(
            id.clone(),
            (key.clone(), hash, ver.to_string(), jid.clone()),
        );
        self.asking.insert(key);
        Observed::Query(
            Element::new("iq", ns::CLIENT)
                .with_attr("type", "get")
                .with_attr("id", id)
                .with_attr("from", query_from)
                .with_attr("to", jid.to_string())
                .with_child(
                    Element::new("query", ns::DISCO_INFO)
                        .with_attr("node", format!("{node}#{ver}")),
                ),
        )
    }
}

impl Caps {
    /// The session (or remote resource) is gone or unavailable.
    pub fn forget(&self, jid: &FullJid) {
        let mut st = self.lock();
        st.sessions.remove(jid);
        st.elsewhere.remove(jid);
        let bare = jid.bare();
        if let Some(r) = st.remote.get_mut(bare)
            && r.remove(jid).is_some()
        {
            if r.is_empty() {
                st.remote.remove(bare);
            }
            st.remote_count -= 1;
        }
    }

    /// An IQ result or error that may answer one of our queries. Returns
    /// the sessions whose features just became known, or `None` if the IQ
    /// was not ours.
    pub fn answer(&self, iq: &Element) -> Option<Vec<FullJid>> {
        let id = iq.attr("id")?;
        let mut st = self.lock();
        let asked = &st.pending.get(id)?.3;
        if iq
            .attr("from")
            .and_then(|f| FullJid::parse(f).ok())
            .as_ref()
            != Some(asked)
        {
            return None;
        }
        let (key, hash, ver, _) = st.pending.remove(id)?;
        st.asking.remove(&key);
        let query = iq
            .child("query", ns::DISCO_INFO)
            .filter(|_| iq.attr("type") == Some("result"))?;
        if let Some(h) = &hash {
            match verification_string_hash(query, h) {
                Some(computed) if computed == ver => {}
                computed => {
                    tracing::debug!(hash = %h, %ver, ?computed, answer = %query.to_xml(),
                        "caps ver does not match the disco#info answer");
                    return Some(Vec::new());
                }
            }
        }
        let features: HashSet<String> = query
            .children()
            .filter(|f| f.name == "feature")
            .filter_map(|f| f.attr("var").map(str::to_string))
            .collect();
        if st.known.len() >= MAX_KNOWN {
            st.known.clear();
        }
        st.known.insert(key.clone(), Arc::new(features));
        Some(
            st.sessions
                .iter()
                .chain(st.elsewhere.iter())
                .filter(|(_, k)| **k == key)
                .map(|(j, _)| j.clone())
                .collect(),
        )
    }
}

/// XEP-0115 §5.1 verification string of a disco#info result, hashed with
/// `hash` (`sha-1` or `sha-256`) and base64-encoded; `None` for other hashes.
pub fn verification_string_hash(query: &Element, hash: &str) -> Option<String> {
    let s = verification_string(query);
    let digest = match hash {
        "sha-1" => sha1::Sha1::digest(s.as_bytes()).to_vec(),
        "sha-256" => sha2::Sha256::digest(s.as_bytes()).to_vec(),
        _ => return None,
    };
    Some(base64::engine::general_purpose::STANDARD.encode(digest))
}

/// XEP-0115 §5.1. Everything is sorted on the bare values, before the `<`
/// separators are appended (sorting "a#b<" and "a<" would put them the
/// other way round).
fn verification_string(query: &Element) -> String {
    let mut identities: Vec<[&str; 4]> = query
        .children()
        .filter(|c| c.name == "identity")
        .map(|i| {
            [
                i.attr("category").unwrap_or(""),
                i.attr("type").unwrap_or(""),
                i.attr("xml:lang").unwrap_or(""),
                i.attr("name").unwrap_or(""),
            ]
        })
        .collect();
    identities.sort();
    let mut features: Vec<&str> = query
        .children()
        .filter(|c| c.name == "feature")
        .filter_map(|f| f.attr("var"))
        .collect();
    features.sort();
    let mut forms: Vec<(String, String)> = query
        .children()
        .filter(|c| c.is("x", ns::DATA_FORMS))
        .filter_map(|x| {
            let fields: Vec<&Element> = x.children().filter(|f| f.name == "field").collect();
            let form_type = fields
                .iter()
                .find(|f| f.attr("var") == Some("FORM_TYPE"))?
                .children()
                .find(|v| v.name == "value")?
                .text();
            let mut rest: Vec<(&str, String)> = fields
                .iter()
                .filter(|f| f.attr("var") != Some("FORM_TYPE"))
                .map(|f| {
                    let mut values: Vec<String> = f
                        .children()
                        .filter(|v| v.name == "value")
                        .map(|v| v.text())
                        .collect();
                    values.sort();
                    let values: String = values.iter().map(|v| format!("{v}<")).collect();
                    let var = f.attr("var").unwrap_or("");
                    (var, format!("{var}<{values}"))
                })
                .collect();
            rest.sort();
            let rest: String = rest.into_iter().map(|(_, s)| s).collect();
            Some((form_type.clone(), format!("{form_type}<{rest}")))
        })
        .collect();
    forms.sort();
    let identities: String = identities
        .iter()
        .map(|[c, t, l, n]| format!("{c}/{t}/{l}/{n}<"))
        .collect();
    let features: String = features.iter().map(|f| format!("{f}<")).collect();
    let forms: String = forms.into_iter().map(|(_, s)| s).collect();
    format!("{identities}{features}{forms}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0115 §5.2 simple generation example.
    #[test]
    fn simple_example_hash() {
        let q = Element::new("query", ns::DISCO_INFO)
            .with_child(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("category", "client")
                    .with_attr("name", "Exodus 0.9.1")
                    .with_attr("type", "pc"),
            )
            .with_child(
                Element::new("feature", ns::DISCO_INFO)
                    .with_attr("var", "http://jabber.org/protocol/disco#info"),
            )
            .with_child(
                Element::new("feature", ns::DISCO_INFO)
                    .with_attr("var", "http://jabber.org/protocol/disco#items"),
            )
            .with_child(
                Element::new("feature", ns::DISCO_INFO)
                    .with_attr("var", "http://jabber.org/protocol/muc"),
            )
            .with_child(
                Element::new("feature", ns::DISCO_INFO)
                    .with_attr("var", "http://jabber.org/protocol/caps"),
            );
        assert_eq!(
            verification_string_hash(&q, "sha-1").as_deref(),
            Some("QgayPKawpkPSDYmwT/WM94uAlu0=")
        );
    }

    #[test]
    fn unknown_ver_is_asked_once_then_cached() {
        let caps = Caps::default();
        let a = FullJid::parse("a@x/1").unwrap();
        let b = FullJid::parse("b@x/1").unwrap();
        let presence = Element::new("presence", ns::CLIENT).with_child(
            Element::new("c", NS_CAPS)
                .with_attr("node", "n")
                .with_attr("ver", "v"),
        );
        let Observed::Query(q) = caps.observe(&a, &presence, "pubsub.x") else {
            panic!()
        };
        assert_eq!(caps.observe(&b, &presence, "pubsub.x"), Observed::Waiting);
        assert_eq!(caps.observe(&a, &presence, "pubsub.x"), Observed::Unchanged);
        let reply = Element::new("iq", ns::CLIENT)
            .with_attr("type", "result")
            .with_attr("id", q.attr("id").unwrap())
            .with_attr("from", q.attr("to").unwrap())
            .with_child(Element::new("query", ns::DISCO_INFO).with_child(
                Element::new("feature", ns::DISCO_INFO).with_attr("var", "urn:x+notify"),
            ));
        // Only the JID asked may answer.
        let mut forged = reply.clone();
        forged.set_attr("from", "b@x/1");
        assert_eq!(caps.answer(&forged), None);
        let mut ready = caps.answer(&reply).unwrap();
        ready.sort();
        assert_eq!(ready, vec![a.clone(), b.clone()]);
        assert!(caps.wants(&a, "urn:x"));
        assert!(!caps.wants(&a, "urn:y"));
        caps.forget(&a);
        assert!(!caps.wants(&a, "urn:x"));
        assert_eq!(caps.observe(&a, &presence, "pubsub.x"), Observed::Known);
        assert!(caps.answer(&reply).is_none(), "answered only once");
    }

    #[test]
    fn wrong_hash_is_not_cached() {
        let caps = Caps::default();
        let a = FullJid::parse("a@x/1").unwrap();
        let presence = Element::new("presence", ns::CLIENT).with_child(
            Element::new("c", NS_CAPS)
                .with_attr("node", "n")
                .with_attr("hash", "sha-1")
                .with_attr("ver", "bogus"),
        );
        let Observed::Query(q) = caps.observe(&a, &presence, "pubsub.x") else {
            panic!()
        };
        let reply = Element::new("iq", ns::CLIENT)
            .with_attr("type", "result")
            .with_attr("id", q.attr("id").unwrap())
            .with_attr("from", q.attr("to").unwrap())
            .with_child(Element::new("query", ns::DISCO_INFO));
        assert_eq!(caps.answer(&reply), Some(vec![]));
        assert!(caps.features(&a).is_none());
    }

    #[test]
    fn remote_resources_are_tracked_with_their_watchers_and_forgotten() {
        let caps = Caps::default();
        let bob = FullJid::parse("bob@remote/phone").unwrap();
        let (alice, carol) = (
            BareJid::parse("alice@x").unwrap(),
            BareJid::parse("carol@x").unwrap(),
        );
        let presence = Element::new("presence", ns::CLIENT).with_child(
            Element::new("c", NS_CAPS)
                .with_attr("node", "n")
                .with_attr("ver", "v"),
        );
        assert!(!caps.remote_unchanged(&bob, &presence, &alice));
        let Observed::Query(q) = caps.observe_remote(&bob, &presence, &alice, "pubsub.x") else {
            panic!()
        };
        assert_eq!(q.attr("to"), Some("bob@remote/phone"));
        // A legacy (unhashed) ver from another server is not shared with
        // our own clients' entries.
        let local = FullJid::parse("dave@x/1").unwrap();
        assert!(matches!(
            caps.observe(&local, &presence, "pubsub.x"),
            Observed::Query(_)
        ));
        assert!(caps.remote_unchanged(&bob, &presence, &alice));
        assert!(!caps.remote_unchanged(&bob, &presence, &carol));
        let reply = Element::new("iq", ns::CLIENT)
            .with_attr("type", "result")
            .with_attr("id", q.attr("id").unwrap())
            .with_attr("from", q.attr("to").unwrap())
            .with_child(Element::new("query", ns::DISCO_INFO).with_child(
                Element::new("feature", ns::DISCO_INFO).with_attr("var", "urn:x+notify"),
            ));
        assert_eq!(caps.answer(&reply), Some(vec![bob.clone()]));
        assert!(caps.wants(&bob, "urn:x"));
        // A second account gets the same presence: known at once, for it.
        assert_eq!(
            caps.observe_remote(&bob, &presence, &carol, "pubsub.x"),
            Observed::Known
        );
        assert_eq!(
            caps.observe_remote(&bob, &presence, &carol, "pubsub.x"),
            Observed::Unchanged
        );
        let mut w = caps.remote_watchers(&bob);
        w.sort_by_key(|j| j.to_string());
        assert_eq!(w, vec![alice, carol]);
        assert_eq!(caps.remote_resources(bob.bare()), vec![bob.clone()]);
        caps.forget(&bob);
        assert!(caps.remote_resources(bob.bare()).is_empty());
        assert!(caps.remote_watchers(&bob).is_empty());
        assert_eq!(caps.lock().remote_count, 0);
    }

    /// A feature that extends another (`…/shim` and `…/shim#SubID`): sorted
    /// on the bare values, as slixmpp, Prosody and the XEP do.
    #[test]
    fn features_sort_before_separators() {
        let mut q = Element::new("query", ns::DISCO_INFO).with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "client")
                .with_attr("type", "bot"),
        );
        for f in [
            "http://jabber.org/protocol/shim#SubID",
            "http://jabber.org/protocol/shim",
        ] {
            q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        assert_eq!(
            verification_string(&q),
            "client/bot//<http://jabber.org/protocol/shim<http://jabber.org/protocol/shim#SubID<"
        );
    }

    /// XEP-0115 §5.3 complex generation example (identities with
    /// languages, an extended form).
    #[test]
    fn complex_example_hash() {
        let d = ns::DISCO_INFO;
        let x = ns::DATA_FORMS;
        let field = |var: &str, values: &[&str]| {
            let mut f = Element::new("field", x).with_attr("var", var);
            for v in values {
                f.push_child(Element::new("value", x).with_text(*v));
            }
            f
        };
        let mut q = Element::new("query", d)
            .with_child(
                Element::new("identity", d)
                    .with_attr("xml:lang", "en")
                    .with_attr("category", "client")
                    .with_attr("name", "Psi 0.11")
                    .with_attr("type", "pc"),
            )
            .with_child(
                Element::new("identity", d)
                    .with_attr("xml:lang", "el")
                    .with_attr("category", "client")
                    .with_attr("name", "Ψ 0.11")
                    .with_attr("type", "pc"),
            );
        for f in [
            "http://jabber.org/protocol/caps",
            "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/disco#items",
            "http://jabber.org/protocol/muc",
        ] {
            q.push_child(Element::new("feature", d).with_attr("var", f));
        }
        q.push_child(
            Element::new("x", x)
                .with_attr("type", "result")
                .with_child(field("FORM_TYPE", &["urn:xmpp:dataforms:softwareinfo"]))
                .with_child(field("ip_version", &["ipv6", "ipv4"]))
                .with_child(field("os", &["Mac"]))
                .with_child(field("os_version", &["10.5.1"]))
                .with_child(field("software", &["Psi"]))
                .with_child(field("software_version", &["0.11"])),
        );
        assert_eq!(
            verification_string_hash(&q, "sha-1").as_deref(),
            Some("q07IKJEyjvHSyhy//CH0CxmKi8w=")
        );
    }
}
