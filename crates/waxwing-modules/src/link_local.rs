//! XEP-0174 bridge: the LAN's serverless peers and the server's accounts.
//!
//! Accounts listed in `[link_local] users` appear on the LAN as
//! `localpart@machine` while they are online, with the presence of their
//! highest-priority resource in the TXT record. LAN peers appear to those
//! accounts as contacts of the gateway domain `lan.<host>`
//! (`user%machine@lan.<host>`, see `waxwing_core::link_local::name`):
//! their presence is sent to the account's resources, a subscription
//! request to one is approved at once, a probe is answered, and messages go
//! both ways with the gateway JID as `from`.
//!
//! Nothing from the LAN reaches anyone but the opted-in account it was
//! addressed to (the stream stamps `to`), so it never goes to federation
//! unless the user writes to a remote contact themselves; and only local
//! opted-in accounts may use the gateway (a remote server gets
//! `service-unavailable`, as for an account that does not exist).

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use tokio::sync::mpsc;
use waxwing_core::config::LinkLocalConfig;
use waxwing_core::hooks::{
    Cx, DomainService, Event, EventHandler, Flow, Hook, Module, Priority, RegisterError, Registrar,
    StanzaHook,
};
use waxwing_core::link_local::name::Instance;
use waxwing_core::link_local::txt::{Presence, Status};
use waxwing_core::link_local::{Endpoint, EndpointConfig, LinkEvent, Peer, SendError};
use waxwing_core::session::SessionHandle;
use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError, error_reply};
use waxwing_proto::xml::Element;

/// XEP-0172 user nickname, sent with a peer's presence.
const NICK: &str = "http://jabber.org/protocol/nick";

/// The bridge module.
pub struct LinkLocal {
    cfg: LinkLocalConfig,
    endpoint: OnceLock<Endpoint>,
}

impl LinkLocal {
    pub fn new(cfg: LinkLocalConfig) -> Self {
        LinkLocal {
            cfg,
            endpoint: OnceLock::new(),
        }
    }

    fn opted_in(&self, user: &BareJid) -> bool {
        self.cfg.users.contains(user)
    }

    /// The gateway domain of `user`'s host.
    fn gateway_of(&self, cx: &Cx, user: &BareJid) -> Option<String> {
        let i = cx.config().hosts.iter().position(|h| h == user.domain())?;
        self.cfg.gateways.get(i).cloned()
    }

    /// `user%machine@lan.<host>` for a peer, as seen by `user`.
    fn peer_jid(&self, cx: &Cx, user: &BareJid, peer: &Instance) -> Option<BareJid> {
        let gw = self.gateway_of(cx, user)?;
        BareJid::new(Some(&peer.gateway_local()), &gw).ok()
    }

    /// The presence of `user` to announce: their highest-priority available
    /// resource, with `changed` (a resource and its new presence, `None`
    /// for unavailable) applied, since the presence module records it
    /// only after this hook.
    fn best_presence(
        &self,
        cx: &Cx,
        user: &BareJid,
        changed: Option<(&FullJid, Option<&Element>)>,
    ) -> Option<Element> {
        let mut best: Option<(i8, Element)> = None;
        for s in cx.sessions_of(user) {
            let el = match changed {
                Some((jid, el)) if *jid == s.jid => el.cloned(),
                _ => s.with_presence(|p| p.last.clone()),
            };
            let Some(el) = el else { continue };
            let prio = priority(&el);
            if best.as_ref().is_none_or(|(p, _)| prio > *p) {
                best = Some((prio, el));
            }
        }
        best.map(|(_, el)| el)
    }

    /// Announces or withdraws `user` according to their presence now.
    fn follow(&self, cx: &Cx, user: &BareJid, changed: Option<(&FullJid, Option<&Element>)>) {
        let Some(ep) = self.endpoint.get() else {
            return;
        };
        let owner = user.to_string();
        match self.best_presence(cx, user, changed) {
            Some(el) => {
                let child_text = |name| el.child(name, ns::CLIENT).map(|c| c.text());
                let presence = Presence {
                    status: Status::from_show(child_text("show").as_deref().map(str::trim)),
                    msg: child_text("status").filter(|s| !s.is_empty()),
                    nick: user.local().map(str::to_string),
                    jid: self.cfg.publish_jid.then(|| user.to_string()),
                    ..Presence::default()
                };
                let local = user.local().unwrap_or_default();
                if ep.announce(&owner, local, &presence).is_none() {
                    tracing::warn!(%user, "link-local: could not announce");
                }
            }
            None => ep.withdraw(&owner),
        }
    }

    /// The presence stanza of a peer for `user`.
    fn peer_presence(&self, cx: &Cx, user: &BareJid, peer: &Peer, to: &str) -> Option<Element> {
        let from = self.peer_jid(cx, user, &peer.instance)?;
        let mut p = Element::new("presence", ns::CLIENT)
            .with_attr("from", from.to_string())
            .with_attr("to", to);
        if let Some(show) = peer.presence.status.show() {
            p.push_child(Element::new("show", ns::CLIENT).with_text(show));
        }
        if let Some(msg) = &peer.presence.msg {
            p.push_child(Element::new("status", ns::CLIENT).with_text(msg.clone()));
        }
        if let Some(nick) = &peer.presence.nick {
            p.push_child(Element::new("nick", NICK).with_text(nick.clone()));
        }
        Some(p)
    }

    fn unavailable(from: &BareJid, to: &str) -> Element {
        Element::new("presence", ns::CLIENT)
            .with_attr("type", "unavailable")
            .with_attr("from", from.to_string())
            .with_attr("to", to)
    }

    /// Opted-in accounts with at least one available resource.
    fn present_users(&self, cx: &Cx) -> Vec<BareJid> {
        self.cfg
            .users
            .iter()
            .filter(|u| {
                cx.sessions_of(u)
                    .iter()
                    .any(|s| s.with_presence(|p| p.last.is_some()))
            })
            .cloned()
            .collect()
    }

    async fn on_link_event(&self, cx: &Cx, ev: LinkEvent) {
        match ev {
            LinkEvent::PeerUp(peer) => {
                for user in self.present_users(cx) {
                    if let Some(p) = self.peer_presence(cx, &user, &peer, &user.to_string()) {
                        cx.route(p).await;
                    }
                }
            }
            LinkEvent::PeerDown(instance) => {
                for user in self.present_users(cx) {
                    if let Some(from) = self.peer_jid(cx, &user, &instance) {
                        cx.route(Self::unavailable(&from, &user.to_string())).await;
                    }
                }
            }
            LinkEvent::Message {
                from,
                owner,
                mut stanza,
            } => {
                let Ok(user) = BareJid::parse(&owner) else {
                    return;
                };
                let Some(jid) = self.peer_jid(cx, &user, &from) else {
                    tracing::info!(peer = %from, "link-local: a peer name no JID can hold");
                    return;
                };
                // Addressed to the account, whatever the peer wrote: a LAN
                // stanza never goes anywhere else.
                stanza.set_attr("from", jid.to_string());
                stanza.set_attr("to", user.to_string());
                cx.route(stanza).await;
            }
            LinkEvent::Undelivered {
                owner,
                to,
                stanza,
                origin,
            } => {
                let Ok(user) = BareJid::parse(&owner) else {
                    return;
                };
                let Some(jid) = self.peer_jid(cx, &user, &to) else {
                    return;
                };
                let mut original = stanza;
                // Back to the resource that sent it: an error message to a
                // bare JID would be dropped (RFC 6121 §8.5.2.1.1).
                original.set_attr("from", origin.unwrap_or_else(|| user.to_string()));
                original.set_attr("to", jid.to_string());
                let err = StanzaError::wait(Condition::RecipientUnavailable)
                    .with_text("the peer could not be reached on the local network");
                if let Some(reply) = error_reply(&original, &err) {
                    cx.route(reply).await;
                }
            }
        }
    }

    async fn start(self: Arc<Self>, cx: &Cx) {
        let cfg = EndpointConfig::from_config(&cx.config());
        let (ep, mut rx) = match Endpoint::start(cfg).await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "link-local: the endpoint did not start; the bridge is off");
                return;
            }
        };
        tracing::info!(
            port = ep.port(),
            machine = ep.machine(),
            "link-local: bridge started"
        );
        let _ = self.endpoint.set(ep);
        let this = self.clone();
        let cx2 = cx.clone();
        let stop = cx.shutdown_token();
        cx.spawn_background(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = rx.recv() => match ev {
                        Some(ev) => this.on_link_event(&cx2, ev).await,
                        None => break,
                    },
                }
            }
            drain(&mut rx);
        });
    }

    /// A stanza to `lan.<host>` or a peer there.
    async fn gateway(&self, cx: &Cx, stanza: Element) {
        let from = stanza.attr("from").and_then(|f| Jid::parse(f).ok());
        let to = stanza.attr("to").and_then(|t| Jid::parse(t).ok());
        let (Some(from), Some(to)) = (from, to) else {
            return;
        };
        let user = from.to_bare();
        if !cx.is_local_host(user.domain()) || !self.opted_in(&user) {
            // As for an account that does not exist (RFC 6121 §8.5.1).
            return cx
                .bounce(&stanza, StanzaError::cancel(Condition::ServiceUnavailable))
                .await;
        }
        let Some(local) = to.local() else {
            return self.gateway_itself(cx, &stanza).await;
        };
        let Some(instance) = Instance::from_gateway_local(local) else {
            return cx
                .bounce(&stanza, StanzaError::cancel(Condition::ItemNotFound))
                .await;
        };
        let ep = self.endpoint.get();
        let peer = ep.and_then(|e| e.peer(&instance));
        match (stanza.name.as_str(), stanza.attr("type")) {
            ("message", Some("error")) => {}
            ("message", _) => {
                let Some(ep) = ep else {
                    return cx
                        .bounce(&stanza, StanzaError::wait(Condition::RemoteServerTimeout))
                        .await;
                };
                let Some(peer) = peer else {
                    let err = StanzaError::wait(Condition::RecipientUnavailable)
                        .with_text("not on the local network now");
                    return cx.bounce(&stanza, err).await;
                };
                let origin = Some(from.to_string());
                if let Err(e) = ep.send(&user.to_string(), &peer.instance, stanza.clone(), origin) {
                    let err = match e {
                        SendError::NotAnnounced => StanzaError::cancel(Condition::NotAllowed)
                            .with_text(
                                "send available presence first: you are not on the local network",
                            ),
                        SendError::UnknownPeer => {
                            StanzaError::wait(Condition::RecipientUnavailable)
                        }
                        SendError::TooManyStreams | SendError::Busy => {
                            StanzaError::wait(Condition::ResourceConstraint)
                        }
                    };
                    cx.bounce(&stanza, err).await;
                }
            }
            ("presence", Some("probe" | "subscribe")) => {
                let to_user = user.to_string();
                if stanza.attr("type") == Some("subscribe") {
                    // The gateway approves every request: LAN presence is
                    // public on the LAN anyway.
                    let subscribed = Element::new("presence", ns::CLIENT)
                        .with_attr("type", "subscribed")
                        .with_attr("from", to.to_bare().to_string())
                        .with_attr("to", to_user.clone());
                    cx.route(subscribed).await;
                }
                let reply = match &peer {
                    Some(p) => self.peer_presence(cx, &user, p, &to_user),
                    None => Some(Self::unavailable(&to.to_bare(), &to_user)),
                };
                if let Some(r) = reply {
                    cx.route(r).await;
                }
            }
            ("presence", Some("unsubscribe")) => {
                let unsubscribed = Element::new("presence", ns::CLIENT)
                    .with_attr("type", "unsubscribed")
                    .with_attr("from", to.to_bare().to_string())
                    .with_attr("to", user.to_string());
                cx.route(unsubscribed).await;
            }
            ("presence", _) => {}
            // IQs are not bridged: a serverless peer has no server to
            // answer for it, and our peers' IQs are not routed inward.
            _ => {
                cx.bounce(&stanza, StanzaError::cancel(Condition::ServiceUnavailable))
                    .await
            }
        }
    }

    /// disco#info on the gateway domain; anything else is unavailable.
    async fn gateway_itself(&self, cx: &Cx, stanza: &Element) {
        let disco = stanza.name == "iq"
            && stanza.attr("type") == Some("get")
            && stanza
                .first_child()
                .is_some_and(|q| q.is("query", ns::DISCO_INFO) && q.attr("node").is_none());
        if disco {
            let query = Element::new("query", ns::DISCO_INFO)
                .with_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "gateway")
                        .with_attr("type", "xmpp")
                        .with_attr("name", "Local network (XEP-0174)"),
                )
                .with_child(
                    Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO),
                );
            let reply = waxwing_proto::stanza::iq_result(stanza).with_child(query);
            return cx.route(reply).await;
        }
        if stanza.name != "presence" {
            cx.bounce(stanza, StanzaError::cancel(Condition::ServiceUnavailable))
                .await;
        }
    }
}

fn drain(rx: &mut mpsc::Receiver<LinkEvent>) {
    rx.close();
    while rx.try_recv().is_ok() {}
}

fn priority(p: &Element) -> i8 {
    p.child("priority", ns::CLIENT)
        .and_then(|e| e.text().trim().parse::<i64>().ok())
        .map(|v| v.clamp(i64::from(i8::MIN), i64::from(i8::MAX)) as i8)
        .unwrap_or(0)
}

impl Module for LinkLocal {
    fn name(&self) -> &'static str {
        "link_local"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        for gw in &self.cfg.gateways {
            reg.service(gw, Arc::new(Gateway(self.clone())))?;
        }
        // Before the presence module, which consumes broadcast presence.
        reg.hook(Hook::Outbound, Priority(-50), self.clone());
        reg.on_events(Arc::new(Events(self)));
        Ok(())
    }
}

struct Gateway(Arc<LinkLocal>);

#[async_trait]
impl DomainService for Gateway {
    async fn handle_stanza(&self, cx: &Cx, stanza: Element) {
        self.0.gateway(cx, stanza).await;
    }

    fn name(&self) -> &str {
        "Local network (XEP-0174)"
    }
}

#[async_trait]
impl StanzaHook for LinkLocal {
    async fn handle_stanza(&self, cx: &Cx, _hook: Hook, stanza: &mut Element) -> Flow {
        let Some(origin) = cx.origin() else {
            return Flow::Continue;
        };
        if stanza.attr("to").is_some() || !self.opted_in(origin.jid.bare()) {
            return Flow::Continue;
        }
        match stanza.attr("type") {
            None => self.follow(cx, origin.jid.bare(), Some((&origin.jid, Some(stanza)))),
            Some("unavailable") => self.follow(cx, origin.jid.bare(), Some((&origin.jid, None))),
            _ => {}
        }
        Flow::Continue
    }

    fn wants(&self, hook: Hook, name: &str) -> bool {
        hook == Hook::Outbound && name == "presence"
    }
}

struct Events(Arc<LinkLocal>);

#[async_trait]
impl EventHandler for Events {
    async fn on_event(&self, cx: &Cx, event: &Event) {
        let this = &self.0;
        match event {
            Event::Started => this.clone().start(cx).await,
            Event::InitialPresence(session) if this.opted_in(session.jid.bare()) => {
                this.peers_to(cx, session).await;
            }
            Event::SessionClosed(session) if this.opted_in(session.jid.bare()) => {
                this.follow(cx, session.jid.bare(), None);
            }
            Event::ShuttingDown => {
                if let Some(ep) = this.endpoint.get() {
                    ep.clone().stop().await;
                }
            }
            _ => {}
        }
    }
}

impl LinkLocal {
    /// Every peer's presence to a session that just became available.
    async fn peers_to(&self, cx: &Cx, session: &Arc<SessionHandle>) {
        let Some(ep) = self.endpoint.get() else {
            return;
        };
        let user = session.jid.bare();
        for peer in ep.peers() {
            if let Some(p) = self.peer_presence(cx, user, &peer, &session.jid.to_string()) {
                cx.route(p).await;
            }
        }
    }
}
