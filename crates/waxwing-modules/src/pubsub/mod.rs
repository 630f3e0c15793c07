//! XEP-0060: Publish-Subscribe, shared by the `pubsub.<host>` services
//! (`service.rs`) and PEP on every account (`pep.rs`, XEP-0163).
//!
//! One engine answers `<pubsub/>` and `<pubsub xmlns='…#owner'/>` requests
//! for a node owner ([`Svc`]): an account's bare JID (PEP) or a service
//! domain. What differs is who may see a node (PEP nodes default to
//! presence access and judge by the owner's roster) and who gets
//! notifications (PEP: contacts whose entity capabilities ask for
//! `node+notify`; services: explicit subscribers).

pub mod config;
pub mod extension;
pub mod feeds;
pub mod options;
pub mod pep;
pub mod service;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::Config;
use waxwing_core::hooks::{
    Cx, Event, EventHandler, FanoutCopy, Flow, Hook, IqHandler, IqResult, IqTarget, Module,
    Priority, RegisterError, Registrar, StanzaHook,
};
use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::payload::rsm;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::{Element, parse_stanza};
use waxwing_store::{PubSubAffiliation, PubSubItem, StoreError, Subscription, SubscriptionState};

use crate::caps::{Caps, Observed};
use crate::internal;
use config::{
    AccessModel, NodeConfig, NodeType, PUBLISH_OPTIONS_FORM, PublishModel, fields, inner_form,
};
pub use extension::{Extension, Extensions};
use options::{NS_SUBSCRIBE_OPTIONS, SubOptions, SubscriptionType};

pub const NS: &str = "http://jabber.org/protocol/pubsub";
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
pub const NS_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub const NS_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
pub const NS_RSM: &str = rsm::NS;
pub const NS_SUBSCRIBE_AUTHORIZATION: &str =
    "http://jabber.org/protocol/pubsub#subscribe_authorization";

/// Deepest nesting of collections (XEP-0248); also bounds the walk up
/// from a leaf to its ancestors' subscribers.
pub const MAX_COLLECTION_DEPTH: usize = 16;

/// Features both kinds of service support (XEP-0060 §10).
pub const FEATURES: &[&str] = &[
    NS,
    "http://jabber.org/protocol/pubsub#access-authorize",
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#collections",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#instant-nodes",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#manage-subscriptions",
    "http://jabber.org/protocol/pubsub#modify-affiliations",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-affiliations",
    "http://jabber.org/protocol/pubsub#retrieve-default",
    "http://jabber.org/protocol/pubsub#retrieve-default-sub",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#retrieve-subscriptions",
    "http://jabber.org/protocol/pubsub#subscribe",
    "http://jabber.org/protocol/pubsub#subscription-notifications",
    "http://jabber.org/protocol/pubsub#subscription-options",
];

/// Whose nodes these are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An account's personal eventing service (XEP-0163).
    Pep,
    /// A `pubsub.<host>` service.
    Service,
}

/// The engine bound to one node owner for one request.
pub struct Svc<'a> {
    pub cx: &'a Cx,
    pub kind: Kind,
    /// The account (PEP) or the service domain as a domain-only JID.
    pub jid: BareJid,
    pub caps: &'a Caps,
    /// What reacts to PEP changes (see `extension.rs`).
    pub extensions: &'a Extensions,
    /// Stanzas to route after the IQ answer (the last item after a
    /// subscription result, XEP-0060 §6.5.7). PEP answers are routed by
    /// the router after the handler returns, so PEP routes these first.
    pub deferred: std::sync::Mutex<Vec<Element>>,
}

/// The whole feature: PEP on accounts, the `pubsub.<host>` services, and
/// the entity-capabilities cache both use.
pub struct PubSub {
    caps: Arc<Caps>,
    extensions: Arc<Extensions>,
    services: Vec<Arc<service::PubSubService>>,
    feeds: Arc<feeds::Feeds>,
}

impl PubSub {
    /// One service per virtual host, on `pubsub.<host>`.
    pub fn new(config: &Config) -> Self {
        let caps = Arc::new(Caps::default());
        let services = config
            .hosts
            .iter()
            .filter_map(|h| {
                let domain = format!("pubsub.{h}");
                let jid = BareJid::domain_only(&domain).ok()?;
                Some(Arc::new(service::PubSubService::new(jid, caps.clone())))
            })
            .collect();
        let feeds = Arc::new(feeds::Feeds::new(config.pubsub.clone(), caps.clone()));
        PubSub {
            caps,
            extensions: Default::default(),
            services,
            feeds,
        }
    }

    /// Plugs a feature into PEP (see `extension.rs`).
    pub fn extend(&self, e: Arc<dyn Extension>) {
        self.extensions.add(e);
    }

    /// The engine's extensions, for modules that publish to PEP themselves.
    pub fn extensions(&self) -> Arc<Extensions> {
        self.extensions.clone()
    }

    /// The entity-capabilities cache (PEP notifications made by other modules).
    pub fn caps(&self) -> Arc<Caps> {
        self.caps.clone()
    }

    /// The RSS/Atom feed poller, for the administrators' commands.
    pub fn feeds(&self) -> Arc<feeds::Feeds> {
        self.feeds.clone()
    }

    /// A presence from a remote contact's resource to one of our accounts:
    /// notes its caps (asking over s2s for unknown `ver`s) when the contact
    /// is in the account's roster with any subscription, so that it gets the
    /// account's PEP notifications (XEP-0163 §4.3 across federation) once,
    /// or as long as, it has a presence subscription to the account (checked
    /// when notifying). Strangers' directed presence is not followed up.
    async fn remote_presence(&self, cx: &Cx, stanza: &Element) {
        let from = match stanza.attr("from").map(Jid::parse) {
            Some(Ok(Jid::Full(f))) if !cx.is_local_host(f.domain()) => f,
            _ => return,
        };
        let Some(Ok(to)) = stanza.attr("to").map(Jid::parse) else {
            return;
        };
        let owner = to.to_bare();
        match stanza.attr("type") {
            None => {}
            Some("unavailable") => return self.caps.forget(&from),
            Some(_) => return,
        }
        if self.caps.remote_unchanged(&from, stanza, &owner) {
            return;
        }
        let Some(query_from) = self.query_from(owner.domain()) else {
            return;
        };
        match cx.stores().roster.get(&owner, from.bare()).await {
            Ok(Some(item)) if item.subscription != Subscription::None => {}
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, "reading the roster for remote caps failed");
                return;
            }
        }
        match self.caps.observe_remote(&from, stanza, &owner, &query_from) {
            Observed::Known => pep::deliver_last_items(cx, &self.caps, &from).await,
            Observed::Query(iq) => cx.route(iq).await,
            Observed::Unchanged | Observed::Waiting | Observed::None => {}
        }
    }

    /// A message error from a remote resource saying it is not there (a
    /// bounced notification, say, after its server lost its session without
    /// an unavailable presence reaching us): stop notifying it.
    fn remote_gone(&self, cx: &Cx, stanza: &Element) {
        // Sent by a session of ours: not from a remote entity, whatever
        // its type (known without reading the attributes).
        if cx.sender_of(stanza).is_some() || stanza.attr("type") != Some("error") {
            return;
        }
        let from = match stanza.attr("from").map(Jid::parse) {
            Some(Ok(Jid::Full(f))) if !cx.is_local_host(f.domain()) => f,
            _ => return,
        };
        let gone = stanza
            .children()
            .find(|c| c.name == "error")
            .and_then(StanzaError::from_element)
            .is_some_and(|e| {
                matches!(
                    e.condition,
                    Condition::ServiceUnavailable
                        | Condition::RecipientUnavailable
                        | Condition::ItemNotFound
                        | Condition::Gone
                        | Condition::RemoteServerNotFound
                        | Condition::RemoteServerTimeout
                )
            });
        if gone {
            self.caps.forget(&from);
        }
    }

    /// The domain caps queries are sent from: a service domain, because
    /// only services receive IQ results (the router drops results sent to
    /// accounts or hosts).
    fn query_from(&self, host: &str) -> Option<String> {
        let want = format!("pubsub.{host}");
        self.services
            .iter()
            .map(|s| s.jid.to_string())
            .find(|d| *d == want)
    }
}

impl Module for PubSub {
    fn name(&self) -> &'static str {
        "pubsub"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        for f in FEATURES {
            reg.account_feature(f);
        }
        for e in self.extensions.all() {
            for f in e.account_features() {
                reg.account_feature(f);
            }
        }
        let pep: Arc<dyn IqHandler> = Arc::new(pep::Pep {
            caps: self.caps.clone(),
            extensions: self.extensions.clone(),
        });
        reg.iq(IqTarget::Account, NS, pep.clone())?;
        reg.iq(IqTarget::Account, NS_OWNER, pep)?;
        for s in &self.services {
            reg.service(&s.jid.to_string(), s.clone())?;
        }
        reg.hook(Hook::Outbound, Priority::EARLY, self.clone());
        // Remote contacts' presence (and caps) before delivery consumes it.
        reg.hook(Hook::Inbound, Priority::EARLY, self.clone());
        reg.on_events(self);
        Ok(())
    }
}

#[async_trait]
impl StanzaHook for PubSub {
    fn wants(&self, _hook: Hook, name: &str) -> bool {
        name != "iq"
    }

    /// Messages, the hot path, are decided here unless one carries a PEP
    /// authorization form; presence takes `handle_stanza`.
    fn decide_now(&self, cx: &Cx, hook: Hook, stanza: &Element) -> Option<Flow> {
        if stanza.name != "message" {
            return None;
        }
        if hook == Hook::Inbound {
            self.remote_gone(cx, stanza);
            return Some(Flow::Continue);
        }
        // The form first: looked for by the children's names, which
        // settles nearly every message without reading its attributes.
        if service::authorization_form(stanza).is_none() || stanza.attr("type") == Some("error") {
            return Some(Flow::Continue);
        }
        None
    }

    /// Inbound, only error messages from remote entities concern it
    /// (`remote_gone`).
    fn decide_copy(&self, _cx: &Cx, copy: &FanoutCopy<'_>) -> Option<Flow> {
        (copy.stanza.name == "message" && copy.stanza.attr("type") != Some("error"))
            .then_some(Flow::Continue)
    }

    async fn handle_stanza(&self, cx: &Cx, hook: Hook, stanza: &mut Element) -> Flow {
        if stanza.name == "message" {
            if hook == Hook::Inbound {
                self.remote_gone(cx, stanza);
                return Flow::Continue;
            }
            return self.pep_authorization(cx, stanza).await;
        }
        if stanza.name != "presence" {
            return Flow::Continue;
        }
        if hook == Hook::Inbound {
            self.remote_presence(cx, stanza).await;
            return Flow::Continue;
        }
        if stanza.attr("to").is_some() {
            return Flow::Continue;
        }
        let Some(origin) = cx.origin().cloned() else {
            return Flow::Continue;
        };
        match stanza.attr("type") {
            None => {
                if let Some(from) = self.query_from(origin.jid.domain()) {
                    pep::on_available_presence(cx, &self.caps, &origin.jid, stanza, &from).await;
                }
            }
            Some("unavailable") => self.caps.forget(&origin.jid),
            _ => {}
        }
        Flow::Continue
    }
}

impl PubSub {
    /// XEP-0060 §8.6.2 for PEP: the account answers an authorization
    /// request of one of its own nodes (sent from its bare JID) with a
    /// message to its bare JID.
    async fn pep_authorization(&self, cx: &Cx, msg: &Element) -> Flow {
        // Every message a client sends comes through here: the form is
        // looked for first (a scan of the direct children), so that the
        // others cost no address parsing and no copies.
        if msg.attr("type") == Some("error") {
            return Flow::Continue;
        }
        let Some(x) = service::authorization_form(msg) else {
            return Flow::Continue;
        };
        let Some(origin) = cx.origin() else {
            return Flow::Continue;
        };
        let owner = origin.jid.bare().clone();
        let to_self = match msg.attr("to") {
            None => true,
            Some(t) => BareJid::parse(t).is_ok_and(|t| t == owner),
        };
        if !to_self {
            return Flow::Continue;
        }
        let svc = Svc {
            cx,
            kind: Kind::Pep,
            jid: owner.clone(),
            caps: &self.caps,
            extensions: &self.extensions,
            deferred: Default::default(),
        };
        let result = match service::authorization_answer(x) {
            Ok((node, subscriber, allow)) => {
                svc.answer_authorization(&owner, &node, &subscriber, allow)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let mut bounced = msg.clone();
            bounced.set_attr("from", origin.jid.to_string());
            bounced.set_attr("to", owner.to_string());
            cx.bounce(&bounced, e).await;
        }
        Flow::Handled
    }
}

#[async_trait]
impl EventHandler for PubSub {
    async fn on_event(&self, cx: &Cx, event: &Event) {
        match event {
            Event::Started => self.feeds.start(cx).await,
            Event::ConfigReloaded { previous } => {
                self.feeds.reconfigure(cx, &previous.pubsub.feeds).await;
            }
            Event::SessionClosed(s) => self.caps.forget(&s.jid),
            Event::UserDeleted(user) => {
                if let Err(e) = cx.stores().pubsub.remove_service(user).await {
                    tracing::error!(error = %e, %user, "removing PEP nodes failed");
                }
            }
            _ => {}
        }
    }
}

/// A request's `node` attribute, required.
fn node_attr(el: &Element) -> Result<String, StanzaError> {
    match el.attr("node") {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(StanzaError::modify(Condition::BadRequest)
            .with_app(Element::new("nodeid-required", NS_ERRORS))),
    }
}

fn not_subscribed() -> StanzaError {
    StanzaError::cancel(Condition::UnexpectedRequest)
        .with_app(Element::new("not-subscribed", NS_ERRORS))
}

fn item_not_found() -> StanzaError {
    StanzaError::cancel(Condition::ItemNotFound)
}

fn forbidden() -> StanzaError {
    StanzaError::auth(Condition::Forbidden)
}

fn store(e: StoreError) -> StanzaError {
    match e {
        StoreError::NotFound => item_not_found(),
        StoreError::AlreadyExists => StanzaError::cancel(Condition::Conflict),
        e => internal(e),
    }
}

impl Svc<'_> {
    fn default_config(&self) -> NodeConfig {
        match self.kind {
            Kind::Pep => NodeConfig::pep(),
            Kind::Service => NodeConfig::service(),
        }
    }

    /// The node's configuration, or `item-not-found`.
    pub async fn config(&self, node: &str) -> Result<NodeConfig, StanzaError> {
        match self
            .cx
            .stores()
            .pubsub
            .node_config(&self.jid, node)
            .await
            .map_err(internal)?
        {
            Some(xml) => Ok(NodeConfig::from_stored(&xml, self.default_config())),
            None => Err(item_not_found()),
        }
    }

    /// `who`'s affiliation with the node; the account owns its PEP nodes.
    pub async fn affiliation(
        &self,
        node: &str,
        who: &BareJid,
    ) -> Result<Option<PubSubAffiliation>, StanzaError> {
        if self.kind == Kind::Pep && *who == self.jid {
            return Ok(Some(PubSubAffiliation::Owner));
        }
        let affs = self
            .cx
            .stores()
            .pubsub
            .affiliations(&self.jid, node)
            .await
            .map_err(store)?;
        Ok(affs.into_iter().find(|(j, _)| j == who).map(|(_, a)| a))
    }

    /// The accounts whose rosters decide presence/roster access: the PEP
    /// account, or a service node's owners.
    async fn roster_owners(&self, node: &str) -> Result<Vec<BareJid>, StanzaError> {
        if self.kind == Kind::Pep {
            return Ok(vec![self.jid.clone()]);
        }
        let affs = self
            .cx
            .stores()
            .pubsub
            .affiliations(&self.jid, node)
            .await
            .map_err(store)?;
        Ok(affs
            .into_iter()
            .filter(|(_, a)| *a == PubSubAffiliation::Owner)
            .map(|(j, _)| j)
            .collect())
    }

    /// XEP-0060 §4.5: may `who` retrieve items and subscribe?
    pub async fn may_access(
        &self,
        node: &str,
        cfg: &NodeConfig,
        who: &BareJid,
        aff: Option<PubSubAffiliation>,
    ) -> Result<bool, StanzaError> {
        use PubSubAffiliation::*;
        match aff {
            Some(Owner | Publisher | Member) => return Ok(true),
            Some(Outcast | PublishOnly) => return Ok(false),
            None => {}
        }
        Ok(match cfg.access_model {
            AccessModel::Open => true,
            AccessModel::Whitelist => false,
            AccessModel::Authorize => self
                .cx
                .stores()
                .pubsub
                .subscriptions(&self.jid, node)
                .await
                .map_err(store)?
                .iter()
                .any(|(j, s)| j.bare() == who && *s == SubscriptionState::Subscribed),
            AccessModel::Presence | AccessModel::Roster => {
                let mut ok = false;
                for owner in self.roster_owners(node).await? {
                    let item = self
                        .cx
                        .stores()
                        .roster
                        .get(&owner, who)
                        .await
                        .map_err(internal)?;
                    ok |= match (cfg.access_model, item) {
                        (_, None) => false,
                        (AccessModel::Presence, Some(i)) => {
                            matches!(i.subscription, Subscription::From | Subscription::Both)
                        }
                        (_, Some(i)) => {
                            cfg.roster_groups_allowed.is_empty()
                                || i.groups
                                    .iter()
                                    .any(|g| cfg.roster_groups_allowed.contains(g))
                        }
                    };
                }
                ok
            }
        })
    }

    /// Answers one `<pubsub/>` or `<pubsub xmlns='…#owner'/>` request.
    pub async fn handle(&self, from: &Jid, is_set: bool, payload: &Element) -> IqResult {
        if payload.name != "pubsub" {
            return Err(StanzaError::modify(Condition::BadRequest));
        }
        let children: Vec<&Element> = payload.children().collect();
        let Some(first) = children.first() else {
            return Err(StanzaError::modify(Condition::BadRequest));
        };
        let who = from.to_bare();
        if payload.ns == NS_OWNER {
            if !is_set && first.name == "default" {
                // XEP-0060 §8.3: the default node configuration.
                return Ok(Some(
                    Element::new("pubsub", NS_OWNER).with_child(
                        Element::new("default", NS_OWNER)
                            .with_child(self.default_config().to_form("form")),
                    ),
                ));
            }
            return self.handle_owner(&who, is_set, first).await;
        }
        match (is_set, first.name.as_str()) {
            (true, "publish") => {
                let options = payload.child("publish-options", NS);
                self.publish(from, first, options).await
            }
            (true, "retract") => self.retract(&who, first).await,
            (true, "create") => {
                let configure = payload.child("configure", NS);
                self.create(&who, first, configure).await
            }
            (true, "subscribe") => {
                self.subscribe(from, first, payload.child("options", NS))
                    .await
            }
            (true, "unsubscribe") => self.unsubscribe(from, first).await,
            (false, "items") => self.items(&who, first, payload.child("set", NS_RSM)).await,
            (false, "subscriptions") => self.own_subscriptions(from, first).await,
            (false, "affiliations") => self.own_affiliations(&who, first).await,
            // XEP-0060 §6.4: the default subscription options.
            (false, "default") => {
                let mut default = Element::new("default", NS);
                if let Some(node) = first.attr("node") {
                    self.config(node).await?;
                    default.set_attr("node", node);
                }
                Ok(Some(Element::new("pubsub", NS).with_child(
                    default.with_child(SubOptions::default().to_form("form")),
                )))
            }
            (false, "options") => self.get_options(from, first).await,
            (true, "options") => self.set_options(from, first).await,
            _ => Err(StanzaError::modify(Condition::BadRequest)),
        }
    }

    async fn require_owner(&self, node: &str, who: &BareJid) -> Result<NodeConfig, StanzaError> {
        let cfg = self.config(node).await?;
        if self.affiliation(node, who).await? != Some(PubSubAffiliation::Owner) {
            return Err(forbidden());
        }
        Ok(cfg)
    }

    async fn handle_owner(&self, who: &BareJid, is_set: bool, el: &Element) -> IqResult {
        let node = node_attr(el)?;
        let p = &self.cx.stores().pubsub;
        match (is_set, el.name.as_str()) {
            (false, "configure") => {
                let cfg = self.require_owner(&node, who).await?;
                let mut form = cfg.to_form("form");
                if cfg.node_type == NodeType::Collection {
                    let mut f = Element::new("field", ns::DATA_FORMS)
                        .with_attr("var", "pubsub#children")
                        .with_attr("type", "text-multi");
                    for c in self.children(&node).await? {
                        f.push_child(Element::new("value", ns::DATA_FORMS).with_text(c));
                    }
                    form.push_child(f);
                }
                Ok(Some(
                    Element::new("pubsub", NS_OWNER).with_child(
                        Element::new("configure", NS_OWNER)
                            .with_attr("node", node)
                            .with_child(form),
                    ),
                ))
            }
            (true, "configure") => {
                let mut cfg = self.require_owner(&node, who).await?;
                let Some(x) = inner_form(el, NS_NODE_CONFIG)? else {
                    return Err(StanzaError::modify(Condition::BadRequest));
                };
                let before = cfg.clone();
                cfg.apply_form(&x)?;
                if cfg.node_type != before.node_type {
                    return Err(StanzaError::modify(Condition::NotAcceptable)
                        .with_text("pubsub#node_type is fixed at creation"));
                }
                if cfg.collection != before.collection
                    && let Some(parent) = &cfg.collection
                {
                    self.check_parent(&node, parent, who).await?;
                }
                let children = submitted_children(&x);
                if children.is_some() && cfg.node_type != NodeType::Collection {
                    return Err(StanzaError::modify(Condition::NotAcceptable)
                        .with_text("only collections have children"));
                }
                p.set_node_config(&self.jid, &node, &cfg.to_stored())
                    .await
                    .map_err(store)?;
                if let Some(children) = children {
                    self.set_children(&node, &children, who).await?;
                }
                Ok(None)
            }
            (true, "delete") => {
                let cfg = self.require_owner(&node, who).await?;
                let recipients = self.recipients(&node, &cfg).await?;
                let children = if cfg.node_type == NodeType::Collection {
                    self.children(&node).await?
                } else {
                    Vec::new()
                };
                p.delete_node(&self.jid, &node).await.map_err(store)?;
                for child in children {
                    self.set_collection(&child, None).await?;
                }
                if cfg.notify_delete {
                    let ev = Element::new("delete", NS_EVENT).with_attr("node", node.as_str());
                    self.send_event(&recipients, ev).await;
                }
                Ok(None)
            }
            (true, "purge") => {
                let cfg = self.require_owner(&node, who).await?;
                p.purge(&self.jid, &node).await.map_err(store)?;
                let recipients = self.recipients(&node, &cfg).await?;
                let ev = Element::new("purge", NS_EVENT).with_attr("node", node.as_str());
                self.send_event(&recipients, ev).await;
                self.after_change(&node).await;
                Ok(None)
            }
            (false, "subscriptions") => {
                self.require_owner(&node, who).await?;
                let mut out =
                    Element::new("subscriptions", NS_OWNER).with_attr("node", node.as_str());
                for (j, s) in p.subscriptions(&self.jid, &node).await.map_err(store)? {
                    out.push_child(
                        Element::new("subscription", NS_OWNER)
                            .with_attr("jid", j.to_string())
                            .with_attr("subscription", s.as_str()),
                    );
                }
                Ok(Some(Element::new("pubsub", NS_OWNER).with_child(out)))
            }
            (true, "subscriptions") => {
                let cfg = self.require_owner(&node, who).await?;
                for s in el.children().filter(|c| c.name == "subscription") {
                    let jid = s
                        .attr("jid")
                        .and_then(|j| Jid::parse(j).ok())
                        .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
                    let state = match s.attr("subscription") {
                        Some("none") => None,
                        Some(x) => Some(
                            SubscriptionState::parse(x)
                                .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?,
                        ),
                        None => return Err(StanzaError::modify(Condition::BadRequest)),
                    };
                    self.change_subscription(&node, &cfg, &jid, state).await?;
                }
                Ok(None)
            }
            (false, "affiliations") => {
                self.require_owner(&node, who).await?;
                let mut out =
                    Element::new("affiliations", NS_OWNER).with_attr("node", node.as_str());
                for (j, a) in p.affiliations(&self.jid, &node).await.map_err(store)? {
                    out.push_child(
                        Element::new("affiliation", NS_OWNER)
                            .with_attr("jid", j.to_string())
                            .with_attr("affiliation", a.as_str()),
                    );
                }
                Ok(Some(Element::new("pubsub", NS_OWNER).with_child(out)))
            }
            (true, "affiliations") => {
                self.require_owner(&node, who).await?;
                let mut changes = Vec::new();
                for a in el.children().filter(|c| c.name == "affiliation") {
                    let jid = a
                        .attr("jid")
                        .and_then(|j| BareJid::parse(j).ok())
                        .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
                    let aff = match a.attr("affiliation") {
                        Some("none") => None,
                        Some(x) => Some(
                            PubSubAffiliation::parse(x)
                                .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?,
                        ),
                        None => return Err(StanzaError::modify(Condition::BadRequest)),
                    };
                    changes.push((jid, aff));
                }
                // XEP-0060 §8.9.2.4: a node keeps at least one owner.
                let mut owners: HashSet<BareJid> = p
                    .affiliations(&self.jid, &node)
                    .await
                    .map_err(store)?
                    .into_iter()
                    .filter(|(_, a)| *a == PubSubAffiliation::Owner)
                    .map(|(j, _)| j)
                    .collect();
                for (j, a) in &changes {
                    if *a == Some(PubSubAffiliation::Owner) {
                        owners.insert(j.clone());
                    } else {
                        owners.remove(j);
                    }
                }
                if self.kind == Kind::Service && owners.is_empty() {
                    return Err(StanzaError::modify(Condition::NotAcceptable)
                        .with_text("a node needs an owner"));
                }
                for (j, a) in changes {
                    p.set_affiliation(&self.jid, &node, &j, a)
                        .await
                        .map_err(store)?;
                    if a == Some(PubSubAffiliation::Outcast) {
                        for (sub, _) in p.subscriptions(&self.jid, &node).await.map_err(store)? {
                            if *sub.bare() == j {
                                p.set_subscription(&self.jid, &node, &sub, None)
                                    .await
                                    .map_err(store)?;
                            }
                        }
                    }
                }
                Ok(None)
            }
            _ => Err(StanzaError::modify(Condition::BadRequest)),
        }
    }

    /// The nodes whose `pubsub#collection` is `node`, sorted. Reads every
    /// node's configuration: the store keeps the association in the
    /// configuration only.
    pub async fn children(&self, node: &str) -> Result<Vec<String>, StanzaError> {
        let mut out = Vec::new();
        for n in self
            .cx
            .stores()
            .pubsub
            .nodes(&self.jid)
            .await
            .map_err(internal)?
        {
            if n != node
                && let Ok(cfg) = self.config(&n).await
                && cfg.collection.as_deref() == Some(node)
            {
                out.push(n);
            }
        }
        Ok(out)
    }

    /// May `node` (owned by `who`) join the collection `parent`? It must
    /// be a collection `who` owns, and not `node` itself or below it.
    async fn check_parent(
        &self,
        node: &str,
        parent: &str,
        who: &BareJid,
    ) -> Result<(), StanzaError> {
        let pcfg = self.config(parent).await?;
        if pcfg.node_type != NodeType::Collection {
            return Err(StanzaError::modify(Condition::NotAcceptable)
                .with_text(format!("{parent} is not a collection")));
        }
        if self.affiliation(parent, who).await? != Some(PubSubAffiliation::Owner) {
            return Err(forbidden());
        }
        let mut cur = Some(parent.to_string());
        let mut depth = 0;
        while let Some(c) = cur {
            depth += 1;
            if c == node || depth > MAX_COLLECTION_DEPTH {
                return Err(StanzaError::modify(Condition::NotAcceptable)
                    .with_text("collections would loop or nest too deep"));
            }
            cur = self.config(&c).await.ok().and_then(|c| c.collection);
        }
        Ok(())
    }

    async fn set_collection(&self, node: &str, parent: Option<&str>) -> Result<(), StanzaError> {
        let mut cfg = self.config(node).await?;
        cfg.collection = parent.map(str::to_string);
        self.cx
            .stores()
            .pubsub
            .set_node_config(&self.jid, node, &cfg.to_stored())
            .await
            .map_err(store)
    }

    /// `pubsub#children` submitted on a collection: exactly these nodes
    /// (which `who` must own) belong to it afterwards.
    async fn set_children(
        &self,
        node: &str,
        children: &[String],
        who: &BareJid,
    ) -> Result<(), StanzaError> {
        for c in children {
            self.config(c).await?;
            if self.affiliation(c, who).await? != Some(PubSubAffiliation::Owner) {
                return Err(forbidden());
            }
            self.check_parent(c, node, who).await?;
        }
        for old in self.children(node).await? {
            if !children.contains(&old) {
                self.set_collection(&old, None).await?;
            }
        }
        for c in children {
            self.set_collection(c, Some(node)).await?;
        }
        Ok(())
    }

    /// Sets a subscription's state for an owner; the subscriber learns of
    /// the change (XEP-0060 §8.8.2.4), and an approved one gets the last item.
    async fn change_subscription(
        &self,
        node: &str,
        cfg: &NodeConfig,
        jid: &Jid,
        state: Option<SubscriptionState>,
    ) -> Result<(), StanzaError> {
        self.cx
            .stores()
            .pubsub
            .set_subscription(&self.jid, node, jid, state)
            .await
            .map_err(store)?;
        let sub = Element::new("subscription", NS_EVENT)
            .with_attr("node", node)
            .with_attr("jid", jid.to_string())
            .with_attr("subscription", state.map_or("none", |s| s.as_str()));
        self.send_event(std::slice::from_ref(jid), sub).await;
        if state == Some(SubscriptionState::Subscribed) {
            self.send_last_item(node, cfg, jid).await;
        }
        Ok(())
    }

    /// XEP-0060 §8.6.2: an owner's answer to an authorization request.
    /// Only a pending subscription is changed.
    pub async fn answer_authorization(
        &self,
        owner: &BareJid,
        node: &str,
        subscriber: &Jid,
        allow: bool,
    ) -> Result<(), StanzaError> {
        let cfg = self.require_owner(node, owner).await?;
        let pending = self
            .cx
            .stores()
            .pubsub
            .subscriptions(&self.jid, node)
            .await
            .map_err(store)?
            .into_iter()
            .any(|(j, s)| j == *subscriber && s == SubscriptionState::Pending);
        if !pending {
            return Err(StanzaError::cancel(Condition::UnexpectedRequest)
                .with_text("no pending subscription for that JID"));
        }
        let state = allow.then_some(SubscriptionState::Subscribed);
        self.change_subscription(node, &cfg, subscriber, state)
            .await
    }

    /// May `who` create nodes here? PEP: the account itself; services:
    /// accounts of the service's host.
    fn may_create(&self, who: &BareJid) -> bool {
        match self.kind {
            Kind::Pep => *who == self.jid,
            Kind::Service => {
                who.local().is_some()
                    && self
                        .jid
                        .domain()
                        .strip_prefix("pubsub.")
                        .is_some_and(|host| host == who.domain())
            }
        }
    }

    async fn create(&self, who: &BareJid, el: &Element, configure: Option<&Element>) -> IqResult {
        if !self.may_create(who) {
            return Err(forbidden());
        }
        let (node, instant) = match el.attr("node") {
            Some(n) if !n.is_empty() => (n.to_string(), false),
            _ if self.kind == Kind::Service => (crate::stanza_id("node"), true),
            _ => return Err(node_attr(el).unwrap_err()),
        };
        let mut cfg = self.default_config();
        let mut children = None;
        if let Some(c) = configure
            && let Some(x) = inner_form(c, NS_NODE_CONFIG)?
        {
            cfg.apply_form(&x)?;
            children = submitted_children(&x);
        }
        if let Some(parent) = &cfg.collection {
            self.check_parent(&node, parent, who).await?;
        }
        if children.is_some() && cfg.node_type != NodeType::Collection {
            return Err(StanzaError::modify(Condition::NotAcceptable)
                .with_text("only collections have children"));
        }
        self.create_node(&node, &cfg, who).await?;
        if let Some(children) = children {
            self.set_children(&node, &children, who).await?;
        }
        Ok(instant.then(|| {
            Element::new("pubsub", NS)
                .with_child(Element::new("create", NS).with_attr("node", node))
        }))
    }

    async fn create_node(
        &self,
        node: &str,
        cfg: &NodeConfig,
        owner: &BareJid,
    ) -> Result<(), StanzaError> {
        let p = &self.cx.stores().pubsub;
        // `[pubsub] max_pep_nodes`, for explicit creation and XEP-0163
        // auto-create alike. XEP-0060 has no section for it; its error
        // schema's <max-nodes-exceeded/> goes with <not-allowed/> as
        // <max-items-exceeded/> does (§7.1.3.6).
        if self.kind == Kind::Pep {
            let max = self.cx.config().pubsub.max_pep_nodes;
            if p.nodes(&self.jid).await.map_err(store)?.len() >= max {
                return Err(StanzaError::cancel(Condition::NotAllowed)
                    .with_app(Element::new("max-nodes-exceeded", NS_ERRORS))
                    .with_text(format!("an account may have {max} PEP nodes")));
            }
        }
        p.create_node(&self.jid, node, &cfg.to_stored())
            .await
            .map_err(store)?;
        if self.kind == Kind::Service {
            p.set_affiliation(&self.jid, node, owner, Some(PubSubAffiliation::Owner))
                .await
                .map_err(store)?;
        }
        Ok(())
    }

    async fn publish(&self, from: &Jid, el: &Element, options: Option<&Element>) -> IqResult {
        let who = from.to_bare();
        let node = node_attr(el)?;
        let options = match options {
            Some(o) => inner_form(o, PUBLISH_OPTIONS_FORM)?,
            None => None,
        };
        let cfg = match self.config(&node).await {
            Ok(cfg) => {
                if let Some(o) = &options {
                    cfg.check_preconditions(o)?;
                }
                cfg
            }
            // XEP-0163 §3: publishing to a PEP node that does not exist creates it.
            Err(e) if e.condition == Condition::ItemNotFound && self.kind == Kind::Pep => {
                if !self.may_create(&who) {
                    return Err(forbidden());
                }
                let mut cfg = self.default_config();
                if let Some(o) = &options {
                    cfg.apply_form(o)?;
                }
                if let Some(parent) = &cfg.collection {
                    self.check_parent(&node, parent, &who).await?;
                }
                match self.create_node(&node, &cfg, &who).await {
                    // Created concurrently: use what is there.
                    Err(e) if e.condition == Condition::Conflict => self.config(&node).await?,
                    r => {
                        r?;
                        cfg
                    }
                }
            }
            Err(e) => return Err(e),
        };
        if cfg.node_type == NodeType::Collection {
            // XEP-0248 §2: items live on leaves only.
            return Err(StanzaError::cancel(Condition::FeatureNotImplemented)
                .with_app(Element::new("unsupported", NS_ERRORS).with_attr("feature", "publish")));
        }
        let aff = self.affiliation(&node, &who).await?;
        let allowed = match aff {
            Some(
                PubSubAffiliation::Owner
                | PubSubAffiliation::Publisher
                | PubSubAffiliation::PublishOnly,
            ) => true,
            Some(PubSubAffiliation::Outcast) => false,
            _ => match cfg.publish_model {
                PublishModel::Publishers => false,
                PublishModel::Open => true,
                PublishModel::Subscribers => self
                    .cx
                    .stores()
                    .pubsub
                    .subscriptions(&self.jid, &node)
                    .await
                    .map_err(store)?
                    .iter()
                    .any(|(j, s)| *j.bare() == who && *s == SubscriptionState::Subscribed),
            },
        };
        if !allowed {
            return Err(forbidden());
        }
        let items: Vec<&Element> = el.children().filter(|c| c.name == "item").collect();
        if items.len() > 1 {
            return Err(StanzaError::modify(Condition::BadRequest)
                .with_app(Element::new("invalid-payload", NS_ERRORS)));
        }
        let item = items.first();
        let payloads: Vec<&Element> = item.map(|i| i.children().collect()).unwrap_or_default();
        if payloads.len() > 1 {
            return Err(StanzaError::modify(Condition::BadRequest)
                .with_app(Element::new("invalid-payload", NS_ERRORS)));
        }
        let Some(payload) = payloads.first() else {
            return Err(StanzaError::modify(Condition::BadRequest)
                .with_app(Element::new("payload-required", NS_ERRORS)));
        };
        let id = item
            .and_then(|i| i.attr("id"))
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| crate::stanza_id("item"));
        let stored = PubSubItem {
            id: id.clone(),
            publisher: from.clone(),
            payload: payload.to_xml(),
        };
        self.store_and_notify(&node, &cfg, &stored, payload).await?;
        Ok(Some(
            Element::new("pubsub", NS).with_child(
                Element::new("publish", NS)
                    .with_attr("node", node)
                    .with_child(Element::new("item", NS).with_attr("id", id)),
            ),
        ))
    }

    /// Stores a published item (already authorised) and notifies.
    pub async fn store_and_notify(
        &self,
        node: &str,
        cfg: &NodeConfig,
        stored: &PubSubItem,
        payload: &Element,
    ) -> Result<(), StanzaError> {
        self.cx
            .stores()
            .pubsub
            .publish(&self.jid, node, stored, Some(cfg.item_limit()))
            .await
            .map_err(store)?;
        let recipients = self.recipients(node, cfg).await?;
        let ev = Element::new("items", NS_EVENT)
            .with_attr("node", node)
            .with_child(self.event_item(cfg, stored, payload));
        self.send_event(&recipients, ev).await;
        self.after_change(node).await;
        Ok(())
    }

    fn event_item(&self, cfg: &NodeConfig, item: &PubSubItem, payload: &Element) -> Element {
        let mut el = Element::new("item", NS_EVENT)
            .with_attr("id", item.id.as_str())
            .with_attr("publisher", item.publisher.to_bare().to_string());
        if cfg.deliver_payloads {
            el.push_child(payload.clone());
        }
        el
    }

    async fn retract(&self, who: &BareJid, el: &Element) -> IqResult {
        let node = node_attr(el)?;
        let cfg = self.config(&node).await?;
        if !matches!(
            self.affiliation(&node, who).await?,
            Some(PubSubAffiliation::Owner | PubSubAffiliation::Publisher)
        ) {
            return Err(forbidden());
        }
        let Some(id) = el
            .children()
            .find(|c| c.name == "item")
            .and_then(|i| i.attr("id"))
        else {
            return Err(StanzaError::modify(Condition::BadRequest)
                .with_app(Element::new("item-required", NS_ERRORS)));
        };
        let removed = self
            .cx
            .stores()
            .pubsub
            .retract(&self.jid, &node, id)
            .await
            .map_err(store)?;
        if !removed {
            return Err(item_not_found());
        }
        let notify = el
            .attr("notify")
            .map_or(cfg.notify_retract, |n| n == "1" || n == "true");
        if notify {
            let recipients = self.recipients(&node, &cfg).await?;
            let ev = Element::new("items", NS_EVENT)
                .with_attr("node", node.as_str())
                .with_child(Element::new("retract", NS_EVENT).with_attr("id", id));
            self.send_event(&recipients, ev).await;
        }
        self.after_change(&node).await;
        Ok(None)
    }

    async fn items(&self, who: &BareJid, el: &Element, rsm: Option<&Element>) -> IqResult {
        let node = node_attr(el)?;
        let cfg = self.config(&node).await?;
        let aff = self.affiliation(&node, who).await?;
        if !self.may_access(&node, &cfg, who, aff).await? {
            return Err(access_error(&cfg));
        }
        let all = self
            .cx
            .stores()
            .pubsub
            .items(&self.jid, &node)
            .await
            .map_err(store)?;
        let wanted: Vec<&str> = el
            .children()
            .filter(|c| c.name == "item")
            .filter_map(|c| c.attr("id"))
            .collect();
        let mut selected: Vec<&PubSubItem> = if wanted.is_empty() {
            all.iter().collect()
        } else {
            all.iter()
                .filter(|i| wanted.contains(&i.id.as_str()))
                .collect()
        };
        if let Some(max) = el.attr("max_items").and_then(|m| m.parse::<usize>().ok()) {
            selected.truncate(max);
        }
        let limits = Bounds {
            items: self.cx.config().pubsub.max_items_per_reply,
            bytes: self.cx.config().max_stanza_bytes,
        };
        let (selected, set) = items_page(&selected, rsm, limits)?;
        let mut items = Element::new("items", NS).with_attr("node", node);
        for i in selected {
            let mut item = Element::new("item", NS).with_attr("id", i.id.as_str());
            if let Ok(p) = parse_stanza(&i.payload, ns::CLIENT) {
                item.push_child(p);
            }
            items.push_child(item);
        }
        let mut pubsub = Element::new("pubsub", NS).with_child(items);
        if let Some(set) = set {
            pubsub.push_child(set);
        }
        Ok(Some(pubsub))
    }

    async fn subscribe(&self, from: &Jid, el: &Element, options: Option<&Element>) -> IqResult {
        let node = node_attr(el)?;
        let jid = subscriber_jid(from, el)?;
        let who = from.to_bare();
        let cfg = self.config(&node).await?;
        // XEP-0060 §6.3.7: subscribe and configure in one request. A
        // repeated subscription keeps its options unless new ones come.
        let existing = self
            .cx
            .stores()
            .pubsub
            .subscription_options(&self.jid, &node, &jid)
            .await
            .map_err(store)?;
        let mut opts = existing
            .as_deref()
            .map(SubOptions::from_stored)
            .unwrap_or_default();
        let mut new_options = existing.is_none();
        if let Some(o) = options
            && let Some(x) = inner_form(o, NS_SUBSCRIBE_OPTIONS)?
        {
            opts.apply_form(&x)?;
            new_options = true;
        }
        let aff = self.affiliation(&node, &who).await?;
        let state = if aff == Some(PubSubAffiliation::Outcast) {
            return Err(forbidden());
        } else if self.may_access(&node, &cfg, &who, aff).await? {
            SubscriptionState::Subscribed
        } else if cfg.access_model == AccessModel::Authorize {
            SubscriptionState::Pending
        } else {
            return Err(access_error(&cfg));
        };
        self.cx
            .stores()
            .pubsub
            .set_subscription(&self.jid, &node, &jid, Some(state))
            .await
            .map_err(store)?;
        if new_options {
            self.cx
                .stores()
                .pubsub
                .set_subscription_options(&self.jid, &node, &jid, &opts.to_stored())
                .await
                .map_err(store)?;
        }
        if state == SubscriptionState::Pending {
            self.ask_owners(&node, &jid).await?;
        }
        let reply = Element::new("pubsub", NS).with_child(
            Element::new("subscription", NS)
                .with_attr("node", node.as_str())
                .with_attr("jid", jid.to_string())
                .with_attr("subscription", state.as_str()),
        );
        if state == SubscriptionState::Subscribed
            && opts.deliver
            && let Some(msg) = self.last_item_message(&node, &cfg, &jid).await
        {
            self.deferred
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(msg);
        }
        Ok(Some(reply))
    }

    /// XEP-0060 §6.3.2: a subscriber's options.
    async fn get_options(&self, from: &Jid, el: &Element) -> IqResult {
        let node = node_attr(el)?;
        let jid = subscriber_jid(from, el)?;
        let stored = self
            .cx
            .stores()
            .pubsub
            .subscription_options(&self.jid, &node, &jid)
            .await
            .map_err(store)?
            .ok_or_else(not_subscribed)?;
        Ok(Some(
            Element::new("pubsub", NS).with_child(
                Element::new("options", NS)
                    .with_attr("node", node)
                    .with_attr("jid", jid.to_string())
                    .with_child(SubOptions::from_stored(&stored).to_form("form")),
            ),
        ))
    }

    /// XEP-0060 §6.3.5: changes a subscriber's options.
    async fn set_options(&self, from: &Jid, el: &Element) -> IqResult {
        let node = node_attr(el)?;
        let jid = subscriber_jid(from, el)?;
        let p = &self.cx.stores().pubsub;
        let stored = p
            .subscription_options(&self.jid, &node, &jid)
            .await
            .map_err(store)?
            .ok_or_else(not_subscribed)?;
        let Some(x) = inner_form(el, NS_SUBSCRIBE_OPTIONS)? else {
            return Err(StanzaError::modify(Condition::BadRequest)
                .with_app(Element::new("invalid-options", NS_ERRORS)));
        };
        let mut opts = SubOptions::from_stored(&stored);
        opts.apply_form(&x).map_err(|_| {
            StanzaError::modify(Condition::BadRequest)
                .with_app(Element::new("invalid-options", NS_ERRORS))
        })?;
        p.set_subscription_options(&self.jid, &node, &jid, &opts.to_stored())
            .await
            .map_err(store)?;
        Ok(None)
    }

    /// XEP-0060 §8.6: the owners get an authorization form.
    async fn ask_owners(&self, node: &str, jid: &Jid) -> Result<(), StanzaError> {
        let owners = self.roster_owners(node).await?;
        let field = |var: &str, ty: &str, value: &str| {
            Element::new("field", ns::DATA_FORMS)
                .with_attr("var", var)
                .with_attr("type", ty)
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(value))
        };
        let form = Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "form")
            .with_child(field("FORM_TYPE", "hidden", NS_SUBSCRIBE_AUTHORIZATION))
            .with_child(field("pubsub#node", "text-single", node))
            .with_child(field(
                "pubsub#subscriber_jid",
                "jid-single",
                &jid.to_string(),
            ))
            .with_child(field("pubsub#allow", "boolean", "false"));
        for owner in owners {
            let msg = Element::new("message", ns::CLIENT)
                .with_attr("from", self.jid.to_string())
                .with_attr("to", owner.to_string())
                .with_attr("id", crate::stanza_id("auth"))
                .with_child(form.clone());
            self.cx.route(msg).await;
        }
        Ok(())
    }

    async fn unsubscribe(&self, from: &Jid, el: &Element) -> IqResult {
        let node = node_attr(el)?;
        let jid = subscriber_jid(from, el)?;
        self.config(&node).await?;
        let p = &self.cx.stores().pubsub;
        let subs = p.subscriptions(&self.jid, &node).await.map_err(store)?;
        if !subs.iter().any(|(j, _)| *j == jid) {
            return Err(not_subscribed());
        }
        p.set_subscription(&self.jid, &node, &jid, None)
            .await
            .map_err(store)?;
        Ok(None)
    }

    async fn own_subscriptions(&self, from: &Jid, el: &Element) -> IqResult {
        let p = &self.cx.stores().pubsub;
        let nodes = match el.attr("node") {
            Some(n) => vec![n.to_string()],
            None => p.nodes(&self.jid).await.map_err(internal)?,
        };
        let mut out = Element::new("subscriptions", NS);
        for node in nodes {
            for (j, s) in p.subscriptions(&self.jid, &node).await.map_err(store)? {
                if j.bare() == from.bare() {
                    out.push_child(
                        Element::new("subscription", NS)
                            .with_attr("node", node.as_str())
                            .with_attr("jid", j.to_string())
                            .with_attr("subscription", s.as_str()),
                    );
                }
            }
        }
        Ok(Some(Element::new("pubsub", NS).with_child(out)))
    }

    async fn own_affiliations(&self, who: &BareJid, el: &Element) -> IqResult {
        let p = &self.cx.stores().pubsub;
        let nodes = match el.attr("node") {
            Some(n) => vec![n.to_string()],
            None => p.nodes(&self.jid).await.map_err(internal)?,
        };
        let mut out = Element::new("affiliations", NS);
        for node in nodes {
            if let Some(a) = self.affiliation(&node, who).await? {
                out.push_child(
                    Element::new("affiliation", NS)
                        .with_attr("node", node.as_str())
                        .with_attr("affiliation", a.as_str()),
                );
            }
        }
        Ok(Some(Element::new("pubsub", NS).with_child(out)))
    }

    /// Who gets notifications of `node` now. Services: explicit
    /// subscribers. PEP: the account's and its presence subscribers'
    /// available resources whose caps ask for `node+notify` (XEP-0163
    /// §4.3), plus explicit subscribers.
    pub async fn recipients(&self, node: &str, cfg: &NodeConfig) -> Result<Vec<Jid>, StanzaError> {
        let mut out: Vec<Jid> = Vec::new();
        let mut seen = HashSet::new();
        self.subscriber_recipients(node, 0, &mut out, &mut seen)
            .await?;
        // XEP-0248 §5: subscribers of the collections above, by their
        // subscription depth.
        let mut parent = cfg.collection.clone();
        let mut level = 1;
        while let Some(p) = parent
            && level <= MAX_COLLECTION_DEPTH
        {
            let Ok(pcfg) = self.config(&p).await else {
                break;
            };
            self.subscriber_recipients(&p, level, &mut out, &mut seen)
                .await?;
            parent = pcfg.collection;
            level += 1;
        }
        if self.kind == Kind::Pep {
            let mut contacts = vec![self.jid.clone()];
            let roster = self
                .cx
                .stores()
                .roster
                .items(&self.jid)
                .await
                .map_err(internal)?;
            for item in roster {
                if matches!(item.subscription, Subscription::From | Subscription::Both) {
                    contacts.push(item.contact);
                }
            }
            for contact in contacts {
                // Local contacts: their available sessions; remote ones:
                // the resources whose presence (with caps) reached us.
                let resources: Vec<FullJid> = if self.cx.is_local_host(contact.domain()) {
                    let sessions: Vec<_> = self
                        .cx
                        .sessions_of(&contact)
                        .into_iter()
                        .filter(|s| s.is_available())
                        .collect();
                    for s in &sessions {
                        self.note_caps_seen_elsewhere(s).await;
                    }
                    sessions.into_iter().map(|s| s.jid.clone()).collect()
                } else {
                    self.caps.remote_resources(&contact)
                };
                let resources: Vec<FullJid> = resources
                    .into_iter()
                    .filter(|j| self.caps.wants(j, node) && !seen.contains(&j.to_string()))
                    .collect();
                if resources.is_empty() {
                    continue;
                }
                let aff = self.affiliation(node, &contact).await?;
                if !self.may_access(node, cfg, &contact, aff).await? {
                    continue;
                }
                for j in resources {
                    if seen.insert(j.to_string()) {
                        out.push(Jid::from(j));
                    }
                }
            }
        }
        Ok(out)
    }

    /// A session whose available presence this process did not see (in a
    /// cluster, one served by another node): its caps come from the
    /// presence the session registry holds. Known `ver`: it counts for
    /// this notification; unknown: asked now, and once answered the
    /// session gets the last items it wants (as after a login).
    async fn note_caps_seen_elsewhere(&self, s: &waxwing_core::session::SessionHandle) {
        if self.caps.noted(&s.jid) {
            return;
        }
        let Some(presence) = s.last_presence() else {
            return;
        };
        let from = format!("pubsub.{}", s.jid.domain());
        if !self
            .cx
            .services_of(s.jid.domain())
            .iter()
            .any(|(d, _)| *d == from)
        {
            return;
        }
        if let crate::caps::Observed::Query(iq) =
            self.caps.observe_elsewhere(&s.jid, &presence, &from)
        {
            self.cx.route(iq).await;
        }
    }

    /// The explicit subscribers of `node` who get item notifications now
    /// (`level` above the publishing leaf),
    /// by their options: `deliver` on, and for `show-values` only their
    /// available local resources showing one of the listed values.
    async fn subscriber_recipients(
        &self,
        node: &str,
        level: usize,
        out: &mut Vec<Jid>,
        seen: &mut HashSet<String>,
    ) -> Result<(), StanzaError> {
        let subs = self
            .cx
            .stores()
            .pubsub
            .subscriptions_with_options(&self.jid, node)
            .await
            .map_err(store)?;
        for (j, state, stored) in subs {
            if state != SubscriptionState::Subscribed {
                continue;
            }
            let opts = SubOptions::from_stored(&stored);
            if !opts.deliver || opts.subscription_type == SubscriptionType::Nodes {
                continue;
            }
            if level > 1 && opts.depth != options::Depth::All {
                continue;
            }
            if opts.show_values.is_empty() {
                if seen.insert(j.to_string()) {
                    out.push(j);
                }
                continue;
            }
            // Presence is known only for local sessions.
            for s in self.cx.sessions_of(j.bare()) {
                if j.resource().is_some() && Jid::from(s.jid.clone()) != j {
                    continue;
                }
                let show = s.with_presence(|p| {
                    p.last
                        .as_ref()
                        .map(|pres| pres.children().find(|c| c.name == "show").map(|c| c.text()))
                });
                let Some(show) = show else {
                    continue; // unavailable
                };
                if opts.accepts_show(show.as_deref()) && seen.insert(s.jid.to_string()) {
                    out.push(Jid::from(s.jid.clone()));
                }
            }
        }
        Ok(())
    }

    fn event_message(&self, to: &Jid, payload: Element) -> Element {
        Element::new("message", ns::CLIENT)
            .with_attr("from", self.jid.to_string())
            .with_attr("to", to.to_string())
            .with_attr("type", "headline")
            .with_attr("id", crate::stanza_id("ev"))
            .with_child(Element::new("event", NS_EVENT).with_child(payload))
    }

    /// Sends `<message><event>{payload}</event></message>` to each recipient.
    pub async fn send_event(&self, recipients: &[Jid], payload: Element) {
        for to in recipients {
            self.cx.route(self.event_message(to, payload.clone())).await;
        }
    }

    /// Routes what [`Svc::deferred`] collected.
    pub async fn flush_deferred(&self) {
        let msgs = std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|e| e.into_inner()));
        for m in msgs {
            self.cx.route(m).await;
        }
    }

    /// The newest item of `node` to `to`, unless the node says never.
    pub async fn send_last_item(&self, node: &str, cfg: &NodeConfig, to: &Jid) {
        if let Some(msg) = self.last_item_message(node, cfg, to).await {
            self.cx.route(msg).await;
        }
    }

    async fn last_item_message(&self, node: &str, cfg: &NodeConfig, to: &Jid) -> Option<Element> {
        if cfg.send_last_published_item == "never" {
            return None;
        }
        let items = match self.cx.stores().pubsub.items(&self.jid, node).await {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(error = %e, "reading the last pubsub item failed");
                return None;
            }
        };
        let last = items.first()?;
        let Ok(payload) = parse_stanza(&last.payload, ns::CLIENT) else {
            tracing::error!("dropping a corrupt stored pubsub item");
            return None;
        };
        let ev = Element::new("items", NS_EVENT)
            .with_attr("node", node)
            .with_child(self.event_item(cfg, last, &payload));
        Some(self.event_message(to, ev))
    }

    /// Side effects of a changed PEP node: the extensions (bookmarks
    /// `#compat` mirroring, avatar → vCard …) see it.
    async fn after_change(&self, node: &str) {
        if self.kind != Kind::Pep {
            return;
        }
        for e in self.extensions.all() {
            e.pep_changed(self.cx, &self.jid, node).await;
        }
    }
}

/// The `pubsub#children` of a submitted node configuration, if present.
fn submitted_children(x: &Element) -> Option<Vec<String>> {
    fields(x)
        .into_iter()
        .find(|(var, _)| var == "pubsub#children")
        .map(|(_, v)| v.into_iter().filter(|c| !c.is_empty()).collect())
}

/// The JID a (un)subscribe request names: it must be the sender's bare
/// JID or one of its full JIDs (XEP-0060 §6.1.3.1).
fn subscriber_jid(from: &Jid, el: &Element) -> Result<Jid, StanzaError> {
    let jid = el
        .attr("jid")
        .and_then(|j| Jid::parse(j).ok())
        .ok_or_else(|| {
            StanzaError::modify(Condition::BadRequest)
                .with_app(Element::new("jid-required", NS_ERRORS))
        })?;
    if jid.bare() != from.bare() {
        return Err(StanzaError::modify(Condition::BadRequest)
            .with_app(Element::new("invalid-jid", NS_ERRORS)));
    }
    Ok(jid)
}

/// XEP-0060 §6.1.3: the error for a refused subscription or retrieval.
fn access_error(cfg: &NodeConfig) -> StanzaError {
    match cfg.access_model {
        AccessModel::Presence => StanzaError::auth(Condition::NotAuthorized)
            .with_app(Element::new("presence-subscription-required", NS_ERRORS)),
        AccessModel::Roster => StanzaError::auth(Condition::NotAuthorized)
            .with_app(Element::new("not-in-roster-group", NS_ERRORS)),
        AccessModel::Whitelist => StanzaError::cancel(Condition::NotAllowed)
            .with_app(Element::new("closed-node", NS_ERRORS)),
        AccessModel::Authorize => StanzaError::auth(Condition::NotAuthorized)
            .with_app(Element::new("pending-subscription", NS_ERRORS)),
        AccessModel::Open => forbidden(),
    }
}

/// What one `<items/>` reply may carry.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// `[pubsub] max_items_per_reply`: also the largest RSM `<max/>`.
    items: usize,
    /// Stored payload bytes (`[limits] max_stanza_bytes`): a reply larger
    /// than what we accept ourselves would be refused by many peers. The
    /// first item always goes, whatever its size.
    bytes: usize,
}

/// The items one reply carries, newest first, and the RSM `<set/>` that
/// says where they sit in the whole selection. With a request `<set/>`
/// (XEP-0059: `max`, `after`, `before`, `index`) the reply always has one;
/// without, a selection within `bounds` goes whole and without `<set/>`,
/// and a larger one is truncated and signalled with one (XEP-0060 §6.5:
/// "the service MAY return some of the items", with RSM so that the
/// client can page through the rest).
fn items_page<'a>(
    items: &[&'a PubSubItem],
    rsm: Option<&Element>,
    bounds: Bounds,
) -> Result<(Vec<&'a PubSubItem>, Option<Element>), StanzaError> {
    let window = match rsm {
        Some(set) => {
            rsm::Request::parse(set, bounds.items)?.window(items.len(), bounds.items, |id| {
                items.iter().position(|i| i.id == id)
            })?
        }
        None => 0..items.len(),
    };
    let mut page = items[window.clone()].to_vec();
    let mut bytes = 0usize;
    let fits = page
        .iter()
        .take(bounds.items)
        .take_while(|i| {
            bytes = bytes.saturating_add(i.payload.len());
            bytes <= bounds.bytes
        })
        .count()
        .max(1);
    let truncated = page.len() > fits;
    page.truncate(fits);
    let set = (rsm.is_some() || truncated).then(|| {
        rsm::reply(
            page.first()
                .map(|f| (f.id.as_str(), Some(window.start as u64))),
            page.last().map(|l| l.id.as_str()),
            Some(items.len() as u64),
        )
    });
    Ok((page, set))
}

/// Parses a stored item payload back (for modules that read nodes).
pub fn item_payload(item: &PubSubItem) -> Option<Element> {
    parse_stanza(&item.payload, ns::CLIENT).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use waxwing_store::PubSubItem;

    fn items(ids: &[&str]) -> Vec<PubSubItem> {
        ids.iter()
            .map(|id| PubSubItem {
                id: (*id).into(),
                publisher: Jid::parse("a@b").unwrap(),
                payload: "<x/>".into(),
            })
            .collect()
    }

    fn rsm(children: &[(&str, &str)]) -> Element {
        let mut set = Element::new("set", NS_RSM);
        for (k, v) in children {
            set.push_child(Element::new(*k, NS_RSM).with_text(*v));
        }
        set
    }

    const WIDE: Bounds = Bounds {
        items: 100,
        bytes: usize::MAX,
    };

    fn rsm_page<'a>(
        items: &[&'a PubSubItem],
        set: &Element,
    ) -> Result<(Vec<&'a PubSubItem>, Element), StanzaError> {
        items_page(items, Some(set), WIDE).map(|(p, s)| (p, s.expect("a <set/> answers one")))
    }

    fn ids(p: &[&PubSubItem]) -> Vec<String> {
        p.iter().map(|i| i.id.clone()).collect()
    }

    #[test]
    fn rsm_pages_forward_and_backward() {
        let all = items(&["5", "4", "3", "2", "1"]);
        let refs: Vec<&PubSubItem> = all.iter().collect();
        let (p, set) = rsm_page(&refs, &rsm(&[("max", "2")])).unwrap();
        assert_eq!(ids(&p), ["5", "4"]);
        assert_eq!(set.child("count", NS_RSM).unwrap().text(), "5");
        assert_eq!(set.child("last", NS_RSM).unwrap().text(), "4");
        let (p, _) = rsm_page(&refs, &rsm(&[("max", "2"), ("after", "4")])).unwrap();
        assert_eq!(ids(&p), ["3", "2"]);
        let (p, _) = rsm_page(&refs, &rsm(&[("max", "2"), ("before", "")])).unwrap();
        assert_eq!(ids(&p), ["2", "1"]);
        let e = rsm_page(&refs, &rsm(&[("after", "nope")])).unwrap_err();
        assert_eq!(e.condition, Condition::ItemNotFound);
    }

    /// Issue 14: `<max>` of u64::MAX with `<after>` or `<index>` overflowed
    /// the window arithmetic (a panic in the handler).
    #[test]
    fn rsm_huge_max_is_clamped() {
        let all = items(&["5", "4", "3", "2", "1"]);
        let refs: Vec<&PubSubItem> = all.iter().collect();
        let huge = "18446744073709551615";
        let (p, _) = rsm_page(&refs, &rsm(&[("max", huge), ("after", "4")])).unwrap();
        assert_eq!(ids(&p), ["3", "2", "1"]);
        let (p, _) = rsm_page(&refs, &rsm(&[("max", huge), ("index", "2")])).unwrap();
        assert_eq!(ids(&p), ["3", "2", "1"]);
        let tight = Bounds { items: 2, ..WIDE };
        let (p, _) = items_page(&refs, Some(&rsm(&[("max", huge)])), tight).unwrap();
        assert_eq!(ids(&p), ["5", "4"], "max is clamped to max_items_per_reply");
    }

    /// Issue 14: `<items/>` without RSM returned the whole node in one reply.
    #[test]
    fn a_reply_without_rsm_is_bounded_and_says_so() {
        let all = items(&["5", "4", "3", "2", "1"]);
        let refs: Vec<&PubSubItem> = all.iter().collect();
        let (p, set) = items_page(&refs, None, WIDE).unwrap();
        assert_eq!((p.len(), set), (5, None), "within bounds: whole, no <set/>");
        let (p, set) = items_page(&refs, None, Bounds { items: 2, ..WIDE }).unwrap();
        assert_eq!(ids(&p), ["5", "4"]);
        let set = set.expect("a truncated reply carries a <set/>");
        assert_eq!(set.child("count", NS_RSM).unwrap().text(), "5");
        assert_eq!(set.child("first", NS_RSM).unwrap().attr("index"), Some("0"));
        assert_eq!(set.child("last", NS_RSM).unwrap().text(), "4");
        // The byte budget: each payload is "<x/>" (4 bytes).
        let bytes = |bytes| Bounds { items: 100, bytes };
        let (p, set) = items_page(&refs, None, bytes(9)).unwrap();
        assert_eq!(
            (ids(&p), set.is_some()),
            (vec!["5".into(), "4".into()], true)
        );
        let (p, _) = items_page(&refs, None, bytes(1)).unwrap();
        assert_eq!(ids(&p), ["5"], "the first item goes whatever its size");
        // The next page continues after the last one sent.
        let (p, _) = items_page(&refs, Some(&rsm(&[("after", "4")])), bytes(9)).unwrap();
        assert_eq!(ids(&p), ["3", "2"]);
    }

    #[test]
    fn subscriber_jid_must_be_the_sender() {
        let from = Jid::parse("a@b/r").unwrap();
        let ok = Element::new("subscribe", NS).with_attr("jid", "a@b");
        assert_eq!(subscriber_jid(&from, &ok).unwrap().to_string(), "a@b");
        let other = Element::new("subscribe", NS).with_attr("jid", "c@b");
        let e = subscriber_jid(&from, &other).unwrap_err();
        assert_eq!(e.app.unwrap().name, "invalid-jid");
    }

    #[test]
    fn refusals_name_the_access_model() {
        let mut cfg = NodeConfig::service();
        cfg.access_model = AccessModel::Whitelist;
        let e = access_error(&cfg);
        assert_eq!(e.condition, Condition::NotAllowed);
        assert_eq!(e.app.unwrap().name, "closed-node");
        cfg.access_model = AccessModel::Presence;
        assert_eq!(
            access_error(&cfg).app.unwrap().name,
            "presence-subscription-required"
        );
    }
}
