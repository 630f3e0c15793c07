//! The `pubsub.<host>` service (XEP-0060): a [`DomainService`] answering
//! pubsub and disco requests addressed to its domain, and the IQ results of
//! the entity-capabilities queries sent from it.

use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::hooks::{Cx, DomainService};
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{self, Condition, StanzaError};
use waxwing_proto::xml::Element;

use super::{FEATURES, Kind, NS, NS_OWNER, Svc};
use crate::caps::Caps;
use crate::internal;

/// One `pubsub.<host>` service.
pub struct PubSubService {
    pub jid: BareJid,
    caps: Arc<Caps>,
}

impl PubSubService {
    pub fn new(jid: BareJid, caps: Arc<Caps>) -> Self {
        PubSubService { jid, caps }
    }

    fn svc<'a>(&'a self, cx: &'a Cx) -> Svc<'a> {
        Svc {
            cx,
            kind: Kind::Service,
            jid: self.jid.clone(),
            caps: &self.caps,
            extensions: &super::extension::NONE,
            deferred: Default::default(),
        }
    }

    /// The answer's payload, and stanzas to route after the answer.
    async fn handle_iq(
        &self,
        cx: &Cx,
        stanza: &Element,
    ) -> Result<(Option<Element>, Vec<Element>), StanzaError> {
        let from = stanza
            .attr("from")
            .and_then(|f| Jid::parse(f).ok())
            .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
        let to = stanza
            .attr("to")
            .and_then(|t| Jid::parse(t).ok())
            .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
        if to.local().is_some() || to.resource().is_some() {
            return Err(StanzaError::cancel(Condition::ServiceUnavailable));
        }
        let is_set = match stanza.attr("type") {
            Some("get") => false,
            Some("set") => true,
            _ => return Err(StanzaError::modify(Condition::BadRequest)),
        };
        let mut children = stanza.children();
        let (Some(payload), None) = (children.next(), children.next()) else {
            return Err(StanzaError::modify(Condition::BadRequest));
        };
        match (is_set, payload.ns.as_str()) {
            (_, NS | NS_OWNER) => {
                let svc = self.svc(cx);
                let r = svc.handle(&from, is_set, payload).await;
                Ok((r?, svc.deferred.into_inner().unwrap_or_default()))
            }
            (false, ns::DISCO_INFO) => {
                Ok((Some(self.disco_info(cx, &from, payload).await?), vec![]))
            }
            (false, ns::DISCO_ITEMS) => {
                Ok((Some(self.disco_items(cx, &from, payload).await?), vec![]))
            }
            _ => Err(StanzaError::cancel(Condition::ServiceUnavailable)),
        }
    }

    async fn disco_info(&self, cx: &Cx, from: &Jid, q: &Element) -> Result<Element, StanzaError> {
        let mut out = Element::new("query", ns::DISCO_INFO);
        let identity = |ty: &str| {
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "pubsub")
                .with_attr("type", ty)
        };
        match q.attr("node").filter(|n| !n.is_empty()) {
            None => {
                out.push_child(identity("service").with_attr("name", "Publish-Subscribe"));
                out.push_child(
                    Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO),
                );
                out.push_child(
                    Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_ITEMS),
                );
                for f in FEATURES {
                    out.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", *f));
                }
            }
            Some(node) => {
                let svc = self.svc(cx);
                let cfg = svc.config(node).await?;
                out.set_attr("node", node);
                out.push_child(identity(cfg.node_type.as_str()));
                out.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", NS));
                // XEP-0060 §5.4: node meta-data, to those who may see the node.
                let who = from.to_bare();
                let aff = svc.affiliation(node, &who).await?;
                if svc.may_access(node, &cfg, &who, aff).await? {
                    let mut form = cfg.to_form("result");
                    if let Some(ft) = form
                        .children_mut()
                        .find(|f| f.attr("var") == Some("FORM_TYPE"))
                    {
                        ft.children.clear();
                        ft.push_child(
                            Element::new("value", ns::DATA_FORMS)
                                .with_text("http://jabber.org/protocol/pubsub#meta-data"),
                        );
                    }
                    out.push_child(form);
                }
            }
        }
        Ok(out)
    }

    async fn disco_items(&self, cx: &Cx, from: &Jid, q: &Element) -> Result<Element, StanzaError> {
        let svc = self.svc(cx);
        let p = &cx.stores().pubsub;
        let who = from.to_bare();
        let mut out = Element::new("query", ns::DISCO_ITEMS);
        match q.attr("node").filter(|n| !n.is_empty()) {
            None => {
                for node in p.nodes(&self.jid).await.map_err(internal)? {
                    let cfg = svc.config(&node).await?;
                    // Nodes in a collection are listed under it (XEP-0248 §4).
                    if let Some(parent) = &cfg.collection
                        && svc.config(parent).await.is_ok()
                    {
                        continue;
                    }
                    let aff = svc.affiliation(&node, &who).await?;
                    if svc.may_access(&node, &cfg, &who, aff).await? {
                        let mut item = Element::new("item", ns::DISCO_ITEMS)
                            .with_attr("jid", self.jid.to_string())
                            .with_attr("node", node.as_str());
                        if !cfg.title.is_empty() {
                            item.set_attr("name", cfg.title.as_str());
                        }
                        out.push_child(item);
                    }
                }
            }
            Some(node) => {
                let cfg = svc.config(node).await?;
                let aff = svc.affiliation(node, &who).await?;
                if !svc.may_access(node, &cfg, &who, aff).await? {
                    return Err(StanzaError::auth(Condition::Forbidden));
                }
                out.set_attr("node", node);
                if cfg.node_type == super::config::NodeType::Collection {
                    // XEP-0248 §4: a collection's items are its child nodes.
                    for child in svc.children(node).await? {
                        let ccfg = svc.config(&child).await?;
                        let mut item = Element::new("item", ns::DISCO_ITEMS)
                            .with_attr("jid", self.jid.to_string())
                            .with_attr("node", child.as_str());
                        if !ccfg.title.is_empty() {
                            item.set_attr("name", ccfg.title.as_str());
                        }
                        out.push_child(item);
                    }
                    return Ok(out);
                }
                for item in p.items(&self.jid, node).await.map_err(internal)? {
                    out.push_child(
                        Element::new("item", ns::DISCO_ITEMS)
                            .with_attr("jid", self.jid.to_string())
                            .with_attr("name", item.id),
                    );
                }
            }
        }
        Ok(out)
    }
}

/// The submitted `pubsub#subscribe_authorization` form of a message, if any.
pub fn authorization_form(msg: &Element) -> Option<&Element> {
    // Asked of every message a client sends: by name first, so a routed
    // message's payload is not parsed for it.
    if !msg.has_child("x", ns::DATA_FORMS) {
        return None;
    }
    msg.children().find(|x| {
        x.is("x", ns::DATA_FORMS)
            && x.attr("type") == Some("submit")
            && super::config::form_type(x).as_deref() == Some(super::NS_SUBSCRIBE_AUTHORIZATION)
    })
}

/// `(node, subscriber, allow)` of a submitted authorization form.
pub fn authorization_answer(x: &Element) -> Result<(String, Jid, bool), StanzaError> {
    let values = super::config::fields(x);
    let value = |var: &str| {
        values
            .iter()
            .find(|(v, _)| v == var)
            .and_then(|(_, vals)| vals.first().cloned())
    };
    let node = value("pubsub#node").ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
    let subscriber = value("pubsub#subscriber_jid")
        .and_then(|j| Jid::parse(&j).ok())
        .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
    let allow = matches!(value("pubsub#allow").as_deref(), Some("1" | "true"));
    Ok((node, subscriber, allow))
}

impl PubSubService {
    /// XEP-0060 §8.6.2: the owner approves or denies a pending subscription.
    async fn authorize(&self, cx: &Cx, msg: &Element, x: &Element) -> Result<(), StanzaError> {
        let from = msg
            .attr("from")
            .and_then(|f| Jid::parse(f).ok())
            .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
        let (node, subscriber, allow) = authorization_answer(x)?;
        self.svc(cx)
            .answer_authorization(&from.to_bare(), &node, &subscriber, allow)
            .await
    }
}

#[async_trait]
impl DomainService for PubSubService {
    /// In a cluster each node of the service is served by one Waxwing node
    /// at a time, so that publications to it are handled (and notified) in
    /// one order. Requests naming no node (disco of the service, a
    /// subscription list) and answers go anywhere.
    fn owned_entity(&self, _to: &Jid, stanza: &Element) -> Option<String> {
        if stanza.name != "iq" || !matches!(stanza.attr("type"), Some("get" | "set")) {
            return None;
        }
        let pubsub = stanza
            .first_child()
            .filter(|p| p.name == "pubsub" && (p.ns == NS || p.ns == NS_OWNER))?;
        pubsub
            .children()
            .find_map(|c| c.attr("node"))
            .filter(|n| !n.is_empty())
            .map(str::to_string)
    }

    async fn handle_stanza(&self, cx: &Cx, stanza: Element) {
        if stanza.name != "iq" {
            // An owner's answer to a subscription authorization request
            // (XEP-0060 §8.6.2); other messages and presence mean nothing,
            // and errors are dropped.
            if stanza.name == "message" && stanza.attr("type") != Some("error") {
                if let Some(x) = authorization_form(&stanza) {
                    if let Err(e) = self.authorize(cx, &stanza, x).await {
                        cx.bounce(&stanza, e).await;
                    }
                    return;
                }
                cx.bounce(&stanza, StanzaError::cancel(Condition::ServiceUnavailable))
                    .await;
            }
            return;
        }
        if matches!(stanza.attr("type"), Some("result" | "error")) {
            if let Some(ready) = self.caps.answer(&stanza) {
                for jid in ready {
                    super::pep::deliver_last_items(cx, &self.caps, &jid).await;
                }
            }
            return;
        }
        match self.handle_iq(cx, &stanza).await {
            Ok((result, after)) => {
                let mut reply = stanza::iq_result(&stanza);
                if let Some(p) = result {
                    reply.push_child(p);
                }
                cx.route(reply).await;
                for s in after {
                    cx.route(s).await;
                }
            }
            Err(err) => cx.bounce(&stanza, err).await,
        }
    }

    fn name(&self) -> &str {
        "Publish-Subscribe"
    }
}
