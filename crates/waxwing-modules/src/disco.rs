//! XEP-0030: Service Discovery.
//!
//! The server answers for itself (`to` = a local domain) and, on behalf of
//! each account, for the account's bare JID (RFC 6121 §8.5.1: the server
//! handles an IQ to a bare JID for the account). Features come from what
//! every module registered, so this module knows no other XEP.
//!
//! An account's info is shown only to the account itself and to contacts
//! subscribed to its presence, as Prosody (`mod_disco`) and ejabberd
//! (`mod_disco:process_sm_iq_info`) do: what an account supports is about
//! as private as its presence. Everyone else gets `service-unavailable`,
//! the same answer as for an account that does not exist, so disco cannot
//! be used to probe for accounts either.
//!
//! The server's own XEP-0115 capabilities go in the stream features after
//! authentication (XEP-0115 §6.3), so a client can cache the server's
//! disco#info by `ver` instead of asking on every login; `node#ver` is
//! answered with that same info (§6.2).

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Iq, IqHandler, IqResult, IqTarget, Module, RegisterError, Registrar, StreamFeature,
};
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;
use waxwing_store::Subscription;

/// The disco module: registers the server and account handlers.
pub struct Disco;

/// One `<identity/>` of a disco#info answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    category: &'static str,
    kind: &'static str,
    name: Option<&'static str>,
}

/// XEP-0030 registry: an IM server.
const SERVER_IDENTITY: Identity = Identity {
    category: "server",
    kind: "im",
    name: Some("Waxwing"),
};

/// XEP-0030 registry: a registered account. Prosody adds `account/admin`
/// for admins; we don't, because it tells an attacker whom to target.
const ACCOUNT_IDENTITY: Identity = Identity {
    category: "account",
    kind: "registered",
    name: None,
};

/// XEP-0163 §6.1: an account with PEP is also a `pubsub/pep` entity.
const PEP_IDENTITY: Identity = Identity {
    category: "pubsub",
    kind: "pep",
    name: None,
};

impl Module for Disco {
    fn name(&self) -> &'static str {
        "disco"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.server_feature(ns::DISCO_INFO);
        reg.server_feature(ns::DISCO_ITEMS);
        reg.account_feature(ns::DISCO_INFO);
        reg.account_feature(ns::DISCO_ITEMS);
        // Gets only: XEP-0030 defines no `set`, so the router's default
        // `service-unavailable` is the right answer to one.
        let server = Arc::new(ServerDisco::default());
        reg.stream_feature(server.clone());
        reg.iq_get(IqTarget::Server, ns::DISCO_INFO, server.clone())?;
        reg.iq_get(IqTarget::Server, ns::DISCO_ITEMS, server)?;
        let account: Arc<dyn IqHandler> = Arc::new(AccountDisco);
        reg.iq_get(IqTarget::Account, ns::DISCO_INFO, account.clone())?;
        reg.iq_get(IqTarget::Account, ns::DISCO_ITEMS, account)?;
        Ok(())
    }
}

/// XEP-0115 `node` of the server's caps: the URI of the software (the
/// workspace's `repository`).
const CAPS_NODE: &str = env!("CARGO_PKG_REPOSITORY");
const _: () = assert!(!CAPS_NODE.is_empty(), "set `repository` in Cargo.toml");

/// Answers for the server's own domain, and announces its capabilities.
#[derive(Default)]
struct ServerDisco {
    /// The server's `<c/>`. Registered features and the configuration are
    /// fixed once the server runs, so it is computed once.
    caps: OnceLock<Element>,
}

impl ServerDisco {
    fn caps(&self, cx: &Cx) -> &Element {
        self.caps.get_or_init(|| caps_element(&server_info(cx)))
    }
}

/// The server's disco#info: identity, every registered server feature,
/// and (XEP-0128) the XEP-0157 contact addresses form.
fn server_info(cx: &Cx) -> Element {
    let mut info = info_result(&[SERVER_IDENTITY], cx.server_features());
    if let Some(form) = crate::contact_addresses::server_info_form(cx) {
        info.push_child(form);
    }
    info
}

/// XEP-0115 §4 `<c/>` for a disco#info answer: its `ver` is the SHA-1
/// verification string hash (§5), so it changes whenever the answer does.
fn caps_element(info: &Element) -> Element {
    let ver = crate::caps::verification_string_hash(info, "sha-1").unwrap_or_default();
    Element::new("c", crate::caps::NS_CAPS)
        .with_attr("hash", "sha-1")
        .with_attr("node", CAPS_NODE)
        .with_attr("ver", ver)
}

impl StreamFeature for ServerDisco {
    fn stream_features(&self, cx: &Cx) -> Vec<Element> {
        vec![self.caps(cx).clone()]
    }
}

#[async_trait]
impl IqHandler for ServerDisco {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult {
        // Nodes owned by other modules: ad-hoc commands (XEP-0050).
        if let Some(answer) = crate::adhoc::disco_node(cx, &iq.from, &iq.payload) {
            return answer;
        }
        // XEP-0115 §6.2: `node#ver` of our caps is our disco#info.
        if iq.payload.is("query", ns::DISCO_INFO)
            && let Some(node) = iq.payload.attr("node")
            && let Some(ver) = self.caps(cx).attr("ver")
            && node
                .strip_prefix(CAPS_NODE)
                .and_then(|r| r.strip_prefix('#'))
                == Some(ver)
        {
            let node = node.to_string();
            return Ok(Some(server_info(cx).with_attr("node", node)));
        }
        Ok(Some(match parse_request(&iq.payload)? {
            Query::Info => server_info(cx),
            // Services under this host (MUC, later PubSub), as their modules registered them.
            Query::Items => {
                let host = iq.to.as_ref().unwrap_or(&iq.from).domain();
                let mut items = items_result();
                for (jid, name) in cx.services_of(host) {
                    items.push_child(
                        Element::new("item", ns::DISCO_ITEMS)
                            .with_attr("jid", jid)
                            .with_attr("name", name),
                    );
                }
                items
            }
        }))
    }
}

/// Answers on behalf of an account's bare JID.
struct AccountDisco;

#[async_trait]
impl IqHandler for AccountDisco {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult {
        // Checked first so that a stranger learns nothing, not even
        // whether the request was well formed.
        let owner = iq.to.as_ref().unwrap_or(&iq.from).to_bare();
        if !may_discover(cx, &iq.from, &owner).await? {
            return Err(StanzaError::cancel(Condition::ServiceUnavailable));
        }
        Ok(Some(match parse_request(&iq.payload)? {
            Query::Info => {
                let pep = cx
                    .account_features()
                    .contains(&"http://jabber.org/protocol/pubsub#publish");
                let identities: &[Identity] = if pep {
                    &[ACCOUNT_IDENTITY, PEP_IDENTITY]
                } else {
                    &[ACCOUNT_IDENTITY]
                };
                info_result(identities, cx.account_features())
            }
            // XEP-0163: the account's PEP nodes, to the account itself
            // (whether a contact may see a node is the pubsub module's call).
            Query::Items => {
                let mut items = items_result();
                if iq.from.bare() == &owner {
                    let nodes = cx
                        .stores()
                        .pubsub
                        .nodes(&owner)
                        .await
                        .map_err(crate::internal)?;
                    for node in nodes {
                        items.push_child(
                            Element::new("item", ns::DISCO_ITEMS)
                                .with_attr("jid", owner.to_string())
                                .with_attr("node", node),
                        );
                    }
                }
                items
            }
        }))
    }
}

/// Whether `requester` may see `owner`'s disco: it is the owner, or the
/// owner's roster gives it a presence subscription (`from` or `both`).
/// A roster row implies the account exists: deleting an account deletes
/// its roster in the same transaction.
async fn may_discover(cx: &Cx, requester: &Jid, owner: &BareJid) -> Result<bool, StanzaError> {
    if requester.bare() == owner {
        return Ok(true);
    }
    match cx.stores().roster.get(owner, requester.bare()).await {
        Ok(item) => {
            Ok(item
                .is_some_and(|i| matches!(i.subscription, Subscription::From | Subscription::Both)))
        }
        Err(e) => Err(crate::internal(e)),
    }
}

/// What a disco request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Query {
    Info,
    Items,
}

/// Reads `<query xmlns='…disco#info|#items' [node='…']/>`.
///
/// No node is known yet (entity capabilities, ad-hoc commands and PEP will
/// add some), so any node is `item-not-found` (XEP-0030 §3.1, §4.1). An
/// empty `node` is treated as absent, as Prosody does, because some
/// clients send `node=''` for "no node".
fn parse_request(payload: &Element) -> Result<Query, StanzaError> {
    let query = match payload.ns.as_str() {
        ns::DISCO_INFO => Query::Info,
        ns::DISCO_ITEMS => Query::Items,
        _ => return Err(StanzaError::cancel(Condition::ServiceUnavailable)),
    };
    if payload.name != "query" {
        return Err(StanzaError::modify(Condition::BadRequest));
    }
    if payload.attr("node").is_some_and(|n| !n.is_empty()) {
        return Err(StanzaError::cancel(Condition::ItemNotFound));
    }
    Ok(query)
}

/// `<query xmlns='disco#info'>` with `identities` and `features`. Features
/// are sorted and deduplicated (XEP-0030 §3.1: each `var` at most once),
/// and disco#info itself is always included (XEP-0030 §3.1: an entity
/// answering disco#info MUST advertise it).
fn info_result(identities: &[Identity], features: &[&str]) -> Element {
    let mut query = Element::new("query", ns::DISCO_INFO);
    for id in identities {
        let mut el = Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", id.category)
            .with_attr("type", id.kind);
        if let Some(name) = id.name {
            el.set_attr("name", name);
        }
        query.push_child(el);
    }
    let mut vars: Vec<&str> = features.iter().copied().chain([ns::DISCO_INFO]).collect();
    vars.sort_unstable();
    vars.dedup();
    for var in vars {
        query.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", var));
    }
    query
}

/// An empty `<query xmlns='disco#items'/>`.
fn items_result() -> Element {
    Element::new("query", ns::DISCO_ITEMS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info_and_items_requests() {
        assert_eq!(
            parse_request(&Element::new("query", ns::DISCO_INFO)),
            Ok(Query::Info)
        );
        assert_eq!(
            parse_request(&Element::new("query", ns::DISCO_ITEMS)),
            Ok(Query::Items)
        );
        let empty_node = Element::new("query", ns::DISCO_INFO).with_attr("node", "");
        assert_eq!(parse_request(&empty_node), Ok(Query::Info));
    }

    #[test]
    fn unknown_node_is_item_not_found() {
        for ns in [ns::DISCO_INFO, ns::DISCO_ITEMS] {
            let req = Element::new("query", ns).with_attr("node", "http://example.org/caps#abc");
            let err = parse_request(&req).unwrap_err();
            assert_eq!(err.condition, Condition::ItemNotFound);
        }
    }

    #[test]
    fn wrong_element_or_namespace_is_refused() {
        let err = parse_request(&Element::new("info", ns::DISCO_INFO)).unwrap_err();
        assert_eq!(err.condition, Condition::BadRequest);
        let err = parse_request(&Element::new("query", ns::PING)).unwrap_err();
        assert_eq!(err.condition, Condition::ServiceUnavailable);
    }

    #[test]
    fn server_info_has_identity_and_sorted_unique_features() {
        let got = info_result(&[SERVER_IDENTITY], &[ns::PING, ns::DISCO_ITEMS, ns::PING]);
        assert_eq!(
            got.to_xml(),
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='server' type='im' name='Waxwing'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='urn:xmpp:ping'/>\
             </query>"
        );
    }

    #[test]
    fn caps_ver_is_the_hash_of_the_info_and_follows_the_features() {
        use base64::Engine as _;
        let info = info_result(&[SERVER_IDENTITY], &[ns::PING]);
        let c = caps_element(&info);
        assert_eq!(c.attr("hash"), Some("sha-1"));
        assert_eq!(c.attr("node"), Some(CAPS_NODE));
        // XEP-0115 §5.1: S = "server/im//Waxwing<" + sorted features, each with "<".
        let s = "server/im//Waxwing<http://jabber.org/protocol/disco#info<urn:xmpp:ping<";
        let expected = base64::engine::general_purpose::STANDARD
            .encode(<sha1::Sha1 as sha1::Digest>::digest(s.as_bytes()));
        assert_eq!(c.attr("ver"), Some(expected.as_str()));
        let more = caps_element(&info_result(&[SERVER_IDENTITY], &[ns::PING, ns::VERSION]));
        assert_ne!(more.attr("ver"), c.attr("ver"));
    }

    #[test]
    fn account_info_has_no_name() {
        let got = info_result(&[ACCOUNT_IDENTITY], &[ns::DISCO_INFO]);
        assert_eq!(
            got.to_xml(),
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='account' type='registered'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             </query>"
        );
    }

    #[test]
    fn items_are_empty_for_now() {
        assert_eq!(
            items_result().to_xml(),
            "<query xmlns='http://jabber.org/protocol/disco#items'/>"
        );
    }
}
