//! The module API: what a protocol module may register and what it sees.
//!
//! A module registers, once at startup, the IQ payloads it answers, the
//! disco features it adds, and the hooks it wants for messages and presence.
//! Handlers receive a [`Cx`], never a socket or session internals, so the
//! same module works whatever the stanza arrived over.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::stanza::{StanzaError, StanzaKind};
use waxwing_proto::xml::Element;
use waxwing_store::Stores;

use crate::config::Config;
use crate::fast_map::FastMap;
use crate::router::Server;
use crate::session::SessionHandle;
use crate::shared_stanza::SharedStanza;

/// What a stanza hook tells the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Let later hooks, then the default behaviour, see the stanza.
    Continue,
    /// The stanza was consumed; nothing else runs.
    Handled,
}

/// Where in a stanza's life a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Sent by one of our own client sessions, after `from` was stamped and
    /// before it is routed (RFC 6121 "outbound" presence processing lives here).
    Outbound,
    /// Addressed to an account on a local host (bare or full JID), before
    /// default delivery ("inbound" presence processing lives here).
    Inbound,
    /// A message for a local account that no available resource can take
    /// (RFC 6121 §8.5.2.1.1 "offline"): offline storage lives here.
    Undeliverable,
}

/// Order within a hook chain: lower runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Priority(pub i32);

impl Priority {
    pub const EARLY: Priority = Priority(-100);
    pub const NORMAL: Priority = Priority(0);
    pub const LATE: Priority = Priority(100);
}

/// Which address an IQ handler serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IqTarget {
    /// The server itself: `to` is one of our domains.
    Server,
    /// An account: `to` is a local bare JID, or absent (RFC 6120 §10.3.3:
    /// an IQ without `to` is handled on behalf of the sender's account).
    Account,
}

/// Non-stanza events. Closed on purpose: the whole vocabulary is here.
#[derive(Debug, Clone)]
pub enum Event {
    /// The server finished starting (listeners bound); emitted once, before
    /// any connection is accepted. Modules start background tasks here.
    Started,
    /// A resource was bound.
    SessionBound(Arc<SessionHandle>),
    /// A session sent its first available presence (RFC 6121 §4.2 initial presence).
    InitialPresence(Arc<SessionHandle>),
    /// A session ended, cleanly or not. It is already out of the registry.
    SessionClosed(Arc<SessionHandle>),
    /// The server is about to stop: emitted before any stream is closed, so
    /// what modules send now (a room's 332 presences) still goes out,
    /// locally and over s2s. Handlers get a bounded time.
    ShuttingDown,
    /// An account was deleted; every module storing per-user data cleans up.
    UserDeleted(BareJid),
    /// A message addressed to a local account was handed to these of its
    /// sessions (after the RFC 6121 §8.5 choice). Carbons copy it to the others.
    /// The sessions themselves, not their addresses: handlers read their
    /// flags (push: detached, inactive) without a registry lookup, and the
    /// router copies no JID per delivered message.
    MessageDelivered {
        message: Element,
        recipients: Vec<Arc<SessionHandle>>,
    },
    /// A reload applied live settings; `Cx::config` has the new ones, and
    /// `previous` the ones before (to start or stop what changed).
    ConfigReloaded { previous: Arc<Config> },
    /// An account was created with an invitation from `inviter` that asks
    /// for a mutual subscription (XEP-0401): the presence engine makes the
    /// two contacts of each other.
    InviteRedeemed { invitee: BareJid, inviter: BareJid },
    /// Cluster only: another node changed shared data that modules may
    /// cache, as it announced with [`Cx::announce_change`]: `topic` is the
    /// announcing module's cache, `key` what in it. Both `None`: anything
    /// may have changed (this node missed announcements while Redis was
    /// unreachable); drop every cached copy of shared data.
    SharedDataChanged {
        topic: Option<String>,
        key: Option<String>,
    },
}

/// One IQ request of type get or set, already addressed and validated.
#[derive(Debug, Clone)]
pub struct Iq {
    pub from: Jid,
    /// Absent when the client sent no `to` (meaning its own account).
    pub to: Option<Jid>,
    pub id: String,
    pub is_set: bool,
    /// The single child element of the IQ.
    pub payload: Element,
    /// The whole stanza, for handlers that need its attributes (`xml:lang`).
    pub stanza: Element,
    /// False only for the IQs a client may send before SASL (in-band
    /// registration); `from` is then the host, not an account.
    pub authenticated: bool,
    /// The invitation token this unauthenticated stream presented with
    /// XEP-0445 `<preauth/>` and the server accepted.
    pub preauth: Option<crate::invites::PreAuth>,
}

/// An IQ handler's answer: the result payload (if any) or a stanza error.
pub type IqResult = Result<Option<Element>, StanzaError>;

/// Answers IQs for the `(target, namespace)` pairs it was registered for.
#[async_trait]
pub trait IqHandler: Send + Sync {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult;
}

/// A message/presence hook.
#[async_trait]
pub trait StanzaHook: Send + Sync {
    async fn handle_stanza(&self, cx: &Cx, hook: Hook, stanza: &mut Element) -> Flow;

    /// Whether stanzas named `name` (`message`, `presence`, `iq`) on `hook`
    /// concern this hook at all; the router does not call it for the rest.
    /// Asked once per hook and stanza name when the registry is frozen
    /// ([`HookChains`]), so the answer must depend on `hook` and `name`
    /// only: every routed stanza then walks a chain of the hooks that want
    /// it, without a call per hook that would only return `Continue`.
    fn wants(&self, _hook: Hook, _name: &str) -> bool {
        true
    }

    /// The hook's decision on `stanza` when it can be made without
    /// waiting (what it needs is in memory, nothing to store), or `None`
    /// to have [`StanzaHook::handle_stanza`] called. The router asks this
    /// first for every stanza the hook [wants](StanzaHook::wants): most
    /// stanzas concern most hooks only to be passed on, and answering
    /// here spares each of them a boxed future per hook. It must decide
    /// exactly as `handle_stanza` would, side effects included; a panic
    /// here is answered like one in `handle_stanza`.
    fn decide_now(&self, _cx: &Cx, _hook: Hook, _stanza: &Element) -> Option<Flow> {
        None
    }

    /// An `Inbound` hook's decision on one copy of a fan-out (a room's
    /// message to one occupant, [`Cx::route_fanout`]) made without the
    /// copy: the router writes the room's stanza once for all occupants
    /// and builds an addressed tree per occupant only for those a hook
    /// needs one for. `Some(flow)`: decided, and the hook would neither
    /// change the stanza nor do anything else with it (`Handled` drops the
    /// copy silently). `None` (the default): the router builds the copy and
    /// calls [`handle_stanza`](Self::handle_stanza), as for any routed stanza.
    /// Sync and cheap: say `None` whenever the answer needs I/O.
    fn decide_copy(&self, _cx: &Cx, _copy: &FanoutCopy<'_>) -> Option<Flow> {
        None
    }
}

/// One copy of a fan-out as [`StanzaHook::decide_copy`] sees it.
pub struct FanoutCopy<'a> {
    /// The stanza every recipient gets, without `to`.
    pub stanza: &'a Element,
    /// Its `from`, parsed.
    pub from: &'a Jid,
    /// This copy's recipient.
    pub to: &'a FullJid,
}

/// Receives [`Event`]s.
#[async_trait]
pub trait EventHandler: Send + Sync {
    async fn on_event(&self, cx: &Cx, event: &Event);

    /// Whether [`Event::MessageDelivered`] (one per routed message) is
    /// wanted. Handlers that leave this `false` are not called for it,
    /// which keeps the message path free of a dozen calls that do nothing.
    fn wants_deliveries(&self) -> bool {
        false
    }

    /// For a handler that [wants deliveries](EventHandler::wants_deliveries):
    /// whether this one, `message` about to be handed to `recipients`, may
    /// concern it. A cheap sync check made before the message is queued:
    /// when no handler wants it, the router queues the message itself
    /// instead of a copy kept for the event, and emits nothing. Say `true`
    /// when unsure; the event handler still makes the real decision.
    fn wants_delivery(
        &self,
        _cx: &Cx,
        _message: &Element,
        _recipients: &[Arc<SessionHandle>],
    ) -> bool {
        true
    }
}

/// A service living on its own domain (MUC on `conference.example.org`,
/// PubSub on `pubsub.example.org`): receives every stanza addressed to that
/// domain or any JID under it, like hickory's `Catalog` keys zones by name.
#[async_trait]
pub trait DomainService: Send + Sync {
    /// Handles one stanza; `stanza`'s `from` is already authenticated.
    /// `cx` has the `to` the router parsed to get here and, when one of
    /// our clients sent the stanza, that session ([`Cx::to_of`],
    /// [`Cx::sender_of`]): read them from `cx` before changing the stanza,
    /// rather than parse its addresses again.
    async fn handle_stanza(&self, cx: &Cx, stanza: Element);
    /// disco#items name for the server's item list.
    fn name(&self) -> &str;

    /// In a cluster, the entity `stanza` (addressed to `to`) is for, when
    /// its state lives in one node's memory and must be served by one node
    /// at a time (a MUC room): the router then hands it to the entity's
    /// owner (`crate::cluster::ownership`). `None` (the default): any node
    /// may handle it. Never called on a single node.
    fn owned_entity(&self, to: &Jid, stanza: &Element) -> Option<String> {
        let _ = (to, stanza);
        None
    }

    /// This node has just become the owner of `entity` (named by
    /// [`DomainService::owned_entity`]): forget any copy held in memory and
    /// load it from the store, where its previous owner left it. Called
    /// before the first stanza for it is handled.
    async fn entity_acquired(&self, cx: &Cx, entity: &str) {
        let _ = (cx, entity);
    }

    /// This node no longer owns `entity` (another node holds it now): drop
    /// what is held in memory for it.
    async fn entity_released(&self, cx: &Cx, entity: &str) {
        let _ = (cx, entity);
    }
}

/// Adds elements to `<stream:features/>` after authentication.
///
/// Asked only when a kind of stream (transport, compression offered) first
/// needs its post-authentication features: their bytes are cached
/// (`stream/c2s/features.rs`), so the answer must not change while the
/// server runs (derive it from the startup configuration only).
pub trait StreamFeature: Send + Sync {
    fn stream_features(&self, cx: &Cx) -> Vec<Element>;
}

/// A protocol module.
pub trait Module: Send + Sync + 'static {
    /// Log target and config key.
    fn name(&self) -> &'static str;
    /// Declares everything the module handles. Called once at startup.
    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError>;
}

/// A registration mistake, found at startup, never at run time.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("module {module} claims IQ {ns} ({target:?}) already claimed by {owner}")]
    DuplicateIq {
        module: &'static str,
        owner: &'static str,
        ns: String,
        target: IqTarget,
    },
    #[error("module {module} claims domain {domain}, already served by {owner}")]
    DuplicateService {
        module: &'static str,
        owner: &'static str,
        domain: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum IqKind {
    Get,
    Set,
}

/// Collects what modules declare; frozen into [`Registry`] before serving.
#[derive(Default)]
pub struct Registrar {
    current: &'static str,
    pub(crate) registry: Registry,
}

/// An IQ handler and the module that registered it.
pub(crate) type IqEntry = (&'static str, Arc<dyn IqHandler>);

/// Who answers an IQ, by its payload namespace, then its target and type:
/// looked up with the payload's namespace as it stands, without a key
/// built (a `String` allocated) per IQ.
#[derive(Default)]
pub(crate) struct IqHandlers(HashMap<String, [Option<IqEntry>; 4]>);

impl IqHandlers {
    fn slot(target: IqTarget, kind: IqKind) -> usize {
        match (target, kind) {
            (IqTarget::Server, IqKind::Get) => 0,
            (IqTarget::Server, IqKind::Set) => 1,
            (IqTarget::Account, IqKind::Get) => 2,
            (IqTarget::Account, IqKind::Set) => 3,
        }
    }

    /// The handler of IQs of type `kind` to `target` whose payload is in `ns`.
    pub(crate) fn get(&self, target: IqTarget, kind: IqKind, ns: &str) -> Option<&IqEntry> {
        self.0.get(ns)?[Self::slot(target, kind)].as_ref()
    }
}
/// One entry of a hook chain: priority, owning module, handler.
pub(crate) type HookEntry = (Priority, &'static str, Arc<dyn StanzaHook>);

/// The stanza hooks, per [`Hook`] in priority order, and for each the
/// chain every stanza kind walks: only the hooks that
/// [want](StanzaHook::wants) it, picked once when the registry is frozen
/// rather than asked of every hook for every routed stanza.
#[derive(Default)]
pub(crate) struct HookChains {
    /// Every hook registered, by [`Hook::index`].
    all: [Vec<HookEntry>; 3],
    /// `[hook][kind as usize]`: the entries of `all[hook]` that want
    /// stanzas of that kind.
    by_kind: [[Vec<HookEntry>; 3]; 3],
}

impl Hook {
    fn index(self) -> usize {
        match self {
            Hook::Outbound => 0,
            Hook::Inbound => 1,
            Hook::Undeliverable => 2,
        }
    }
}

impl HookChains {
    /// Sorts each chain by priority and splits it by stanza kind.
    fn freeze(&mut self) {
        for (i, hook) in [Hook::Outbound, Hook::Inbound, Hook::Undeliverable]
            .into_iter()
            .enumerate()
        {
            debug_assert_eq!(hook.index(), i);
            // Stable: hooks of equal priority keep their registration order.
            self.all[i].sort_by_key(|(p, ..)| *p);
            for kind in StanzaKind::ALL {
                self.by_kind[i][kind as usize] = self.all[i]
                    .iter()
                    .filter(|(_, _, h)| h.wants(hook, kind.name()))
                    .cloned()
                    .collect();
            }
        }
    }

    /// The hooks to run on `hook` for a stanza named `name`, and whether
    /// they are already filtered by [`StanzaHook::wants`] (they are for
    /// the three stanza names; anything else gets the whole chain, and the
    /// caller asks each hook).
    pub(crate) fn chain(&self, hook: Hook, name: &str) -> (&[HookEntry], bool) {
        match StanzaKind::ALL.into_iter().find(|k| k.name() == name) {
            Some(kind) => (self.chain_of(hook, kind), true),
            None => (&self.all[hook.index()], false),
        }
    }

    /// [`HookChains::chain`] for a stanza whose kind the caller already
    /// knows: indexed, where the name is compared with each kind's (twice
    /// per routed message, on its hot path).
    pub(crate) fn chain_of(&self, hook: Hook, kind: StanzaKind) -> &[HookEntry] {
        &self.by_kind[hook.index()][kind as usize]
    }
}

/// The frozen result of registration, read by the router.
#[derive(Default)]
pub struct Registry {
    pub(crate) iq: IqHandlers,
    /// `services` is read for every routed stanza: hashed with
    /// [`FastMap`]'s hasher (its keys come from the configuration).
    pub(crate) hooks: HookChains,
    pub(crate) events: Vec<(&'static str, Arc<dyn EventHandler>)>,
    /// The subset of `events` that wants [`Event::MessageDelivered`].
    pub(crate) delivery_events: Vec<(&'static str, Arc<dyn EventHandler>)>,
    pub(crate) stream_features: Vec<(&'static str, Arc<dyn StreamFeature>)>,
    pub(crate) services: FastMap<String, (&'static str, Arc<dyn DomainService>)>,
    pub(crate) server_features: Vec<&'static str>,
    pub(crate) account_features: Vec<&'static str>,
    /// Routes of the HTTP listener (`http/mod.rs`).
    pub(crate) http: crate::http::HttpRoutes,
}

impl Registrar {
    /// Registers every module, in order.
    pub fn build(modules: Vec<Arc<dyn ModuleLoader>>) -> Result<Registry, RegisterError> {
        let mut reg = Registrar::default();
        for m in modules {
            reg.current = m.module_name();
            m.load(&mut reg)?;
        }
        reg.registry.hooks.freeze();
        reg.registry.server_features.sort_unstable();
        reg.registry.server_features.dedup();
        reg.registry.account_features.sort_unstable();
        reg.registry.account_features.dedup();
        Ok(reg.registry)
    }

    fn claim(
        &mut self,
        target: IqTarget,
        kind: IqKind,
        ns: &str,
        h: Arc<dyn IqHandler>,
    ) -> Result<(), RegisterError> {
        let slot = &mut self.registry.iq.0.entry(ns.to_string()).or_default()
            [IqHandlers::slot(target, kind)];
        if let Some((owner, _)) = slot {
            return Err(RegisterError::DuplicateIq {
                module: self.current,
                owner,
                ns: ns.into(),
                target,
            });
        }
        *slot = Some((self.current, h));
        Ok(())
    }

    /// Claims IQ gets whose payload is in `ns`. A second claim is a startup error.
    pub fn iq_get(
        &mut self,
        target: IqTarget,
        ns: &str,
        h: Arc<dyn IqHandler>,
    ) -> Result<(), RegisterError> {
        self.claim(target, IqKind::Get, ns, h)
    }

    /// Claims IQ sets whose payload is in `ns`.
    pub fn iq_set(
        &mut self,
        target: IqTarget,
        ns: &str,
        h: Arc<dyn IqHandler>,
    ) -> Result<(), RegisterError> {
        self.claim(target, IqKind::Set, ns, h)
    }

    /// Claims both gets and sets.
    pub fn iq(
        &mut self,
        target: IqTarget,
        ns: &str,
        h: Arc<dyn IqHandler>,
    ) -> Result<(), RegisterError> {
        self.iq_get(target, ns, h.clone())?;
        self.iq_set(target, ns, h)
    }

    /// Serves `domain` (already prepared, lower case). A domain served twice,
    /// or one of the virtual hosts, is a startup error.
    pub fn service(
        &mut self,
        domain: &str,
        svc: Arc<dyn DomainService>,
    ) -> Result<(), RegisterError> {
        if let Some((owner, _)) = self.registry.services.get(domain) {
            return Err(RegisterError::DuplicateService {
                module: self.current,
                owner,
                domain: domain.into(),
            });
        }
        self.registry
            .services
            .insert(domain.to_string(), (self.current, svc));
        Ok(())
    }

    pub fn hook(&mut self, hook: Hook, priority: Priority, h: Arc<dyn StanzaHook>) {
        self.registry.hooks.all[hook.index()].push((priority, self.current, h));
    }

    pub fn on_events(&mut self, h: Arc<dyn EventHandler>) {
        if h.wants_deliveries() {
            self.registry
                .delivery_events
                .push((self.current, h.clone()));
        }
        self.registry.events.push((self.current, h));
    }

    pub fn stream_feature(&mut self, h: Arc<dyn StreamFeature>) {
        self.registry.stream_features.push((self.current, h));
    }

    /// A disco#info feature of the server (XEP-0030).
    pub fn server_feature(&mut self, var: &'static str) {
        self.registry.server_features.push(var);
    }

    /// Adds routes to the HTTP listener, with the common request timeout and
    /// body limit (see `crate::http`). Handlers get `State<Arc<Server>>`.
    pub fn http_routes(&mut self, routes: axum::Router<Arc<crate::router::Server>>) {
        let r = &mut self.registry.http;
        r.ordinary = std::mem::take(&mut r.ordinary).merge(routes);
    }

    /// Adds routes that stream large bodies or hold requests long (upload,
    /// BOSH, WebSocket upgrade): no common timeout or body limit, the
    /// handler enforces its own. Security headers still apply.
    pub fn http_routes_unlimited(&mut self, routes: axum::Router<Arc<crate::router::Server>>) {
        let r = &mut self.registry.http;
        r.unlimited = std::mem::take(&mut r.unlimited).merge(routes);
    }

    /// Announces an XEP-0156 connection method at `path` (e.g.
    /// `/xmpp-websocket`) in `/.well-known/host-meta`.
    pub fn alt_connection(&mut self, kind: crate::http::AltConnection, path: &str) {
        self.registry
            .http
            .alt_connections
            .push((kind, path.to_string()));
    }

    /// A disco#info feature of every account.
    pub fn account_feature(&mut self, var: &'static str) {
        self.registry.account_features.push(var);
    }
}

/// Type-erases a [`Module`] so that the module list can be a `Vec`.
pub trait ModuleLoader: Send + Sync {
    fn module_name(&self) -> &'static str;
    fn load(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError>;
}

impl<M: Module> ModuleLoader for M {
    fn module_name(&self) -> &'static str {
        self.name()
    }
    fn load(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        Module::register(self, reg)
    }
}

/// Wraps a module for the module list.
pub fn load<M: Module>(m: M) -> Arc<dyn ModuleLoader> {
    Arc::new(m)
}

/// What a handler may use: configuration, stores, routing and the sessions
/// of an account. Cheap to clone.
pub struct Cx {
    pub(crate) server: Arc<Server>,
    origin: Option<Arc<SessionHandle>>,
    /// The `to` the router parsed to route the stanza the hooks see
    /// ([`Cx::to_of`]), so that hooks do not parse it again.
    to: Option<Jid>,
    /// On the `Inbound` hooks: the local session that sent the stanza,
    /// when the router knows it ([`Cx::sender_of`]).
    sender: Option<Arc<SessionHandle>>,
    /// On the `Inbound` hooks: the session `to` names, when it is a full
    /// JID and the router found it before the hooks ([`Cx::recipient`]).
    recipient: Option<Arc<SessionHandle>>,
    /// Whether the stanza's `to` and `from` still read as the router
    /// addressed it: set by [`Cx::routing`], whose caller vouches for
    /// both, and cleared before any hook may change the stanza
    /// ([`StanzaHook::handle_stanza`] gets it mutably). While it is set,
    /// [`Cx::to_of`] and [`Cx::sender_of`] answer without reading or
    /// comparing the attributes (several hooks ask for every message).
    addressed: AtomicBool,
}

impl Clone for Cx {
    fn clone(&self) -> Self {
        Cx {
            server: self.server.clone(),
            origin: self.origin.clone(),
            to: self.to.clone(),
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            addressed: AtomicBool::new(self.addressed.load(Ordering::Relaxed)),
        }
    }
}

impl Cx {
    pub(crate) fn new(server: Arc<Server>, origin: Option<Arc<SessionHandle>>) -> Self {
        Cx {
            server,
            origin,
            to: None,
            sender: None,
            recipient: None,
            addressed: AtomicBool::new(false),
        }
    }

    /// A context for hooks (or the domain service) on a stanza the router
    /// routes to `to` (already prepared), sent by the local session
    /// `sender` if it came from one.
    /// The caller vouches that the stanza's `to` attribute parses as `to`
    /// and, with a `sender` (else an `origin`), that its `from` reads as
    /// that session's address (see [`Cx::addressed`]).
    pub(crate) fn routing(
        server: Arc<Server>,
        origin: Option<Arc<SessionHandle>>,
        to: Jid,
        sender: Option<Arc<SessionHandle>>,
    ) -> Self {
        Cx {
            server,
            origin,
            to: Some(to),
            sender,
            recipient: None,
            addressed: AtomicBool::new(true),
        }
    }

    /// Gives the hooks the session the routed `to` (a full JID) names,
    /// as the router just found it ([`Cx::recipient`]).
    pub(crate) fn with_recipient(mut self, recipient: Option<Arc<SessionHandle>>) -> Self {
        self.recipient = recipient;
        self
    }

    /// Takes back the session [`Cx::with_recipient`] was given, once the
    /// hooks are done.
    pub(crate) fn take_recipient(&mut self) -> Option<Arc<SessionHandle>> {
        self.recipient.take()
    }

    /// Takes back the address [`Cx::routing`] was given, once the hooks are done.
    pub(crate) fn take_to(&mut self) -> Option<Jid> {
        self.to.take()
    }

    /// Whether no hook was given the stanza to change since [`Cx::routing`]
    /// (its `to` and `from` are as the router addressed them).
    pub(crate) fn addressed(&self) -> bool {
        self.addressed.load(Ordering::Relaxed)
    }

    /// Called before a hook gets the stanza mutably: from then on its
    /// addresses are read from the attributes again.
    pub(crate) fn stanza_handed_over(&self) {
        self.addressed.store(false, Ordering::Relaxed);
    }

    /// The stanza's `to`, prepared (`None` when absent or malformed). While
    /// no hook could have changed the stanza, or the attribute still reads
    /// as the address the router parsed to route it, that address is
    /// returned without parsing it again (parsing the canonical text gives
    /// the same address back).
    pub fn to_of(&self, stanza: &Element) -> Option<Cow<'_, Jid>> {
        if let Some(to) = &self.to
            && self.addressed()
        {
            return Some(Cow::Borrowed(to));
        }
        let text = stanza.attr("to")?;
        match &self.to {
            Some(to) if to.is_written_as(text) => Some(Cow::Borrowed(to)),
            _ => Jid::parse(text).ok().map(Cow::Owned),
        }
    }

    /// The local session that sent `stanza` (on the `Outbound` hooks the
    /// origin, on the `Inbound` hooks the sender when the router knows
    /// it): known when one of our clients sent it and its `from` still
    /// names that session, so a hook reads the sender's prepared address
    /// instead of parsing `from`. `None` otherwise (parse `from`).
    pub fn sender_of(&self, stanza: &Element) -> Option<&Arc<SessionHandle>> {
        let s = self.sender.as_ref().or(self.origin.as_ref())?;
        if self.addressed() {
            return Some(s);
        }
        stanza
            .attr("from")
            .is_some_and(|f| s.jid.is_written_as(f))
            .then_some(s)
    }

    /// On the `Inbound` hooks, the session the stanza is addressed to,
    /// when its `to` is a full JID bound (here or, in a cluster, on
    /// another node) and the stanza is still addressed as routed (see
    /// [`Cx::to_of`]). `None` does not mean there is none: look it up.
    pub fn recipient(&self) -> Option<&Arc<SessionHandle>> {
        self.recipient.as_ref().filter(|_| self.addressed())
    }

    /// The configuration as of the latest reload (see `Server::live`): read
    /// it where it is used, don't keep it, so that a reload reaches the module.
    pub fn config(&self) -> Arc<Config> {
        self.server.live()
    }

    /// Whether `user` is a server admin: in `admins`, or in its LDAP
    /// directory's `admin_group` (as of its latest login).
    pub fn is_admin(&self, user: &BareJid) -> bool {
        self.server.auth.is_admin(&self.server.live(), user)
    }

    pub fn stores(&self) -> &Stores {
        &self.server.stores
    }

    /// Whether `user` is an account of ours: a local record, or, on an
    /// extauth/LDAP host, a user the directory knows who never logged in
    /// (the answer then creates the record, `Authenticator::directory_knows`).
    /// A failing store counts as no.
    pub async fn account_exists(&self, user: &BareJid) -> bool {
        match self.server.stores.accounts.exists(user).await {
            Ok(true) => true,
            Ok(false) => self.server.auth.directory_knows(&self.server, user).await,
            Err(e) => {
                tracing::error!(%user, error = %e, "account lookup failed");
                false
            }
        }
    }

    /// Whether other server processes write the same stores (the nodes of a
    /// cluster): a module must not keep in memory, as the truth, what they
    /// may change behind its back, unless it announces its writes with
    /// [`Cx::announce_change`] and drops its copies on
    /// [`Event::SharedDataChanged`].
    pub fn storage_shared(&self) -> bool {
        self.server.cluster.is_some()
    }

    /// Tells the other nodes of a cluster that this module changed `key`
    /// (an account, say) of what it caches under `topic` (its name), after
    /// the write reached the store: they get [`Event::SharedDataChanged`]
    /// and drop their copies. Nothing on a single node. Returns once Redis
    /// took the announcement (at most a second): what the caller sends
    /// next reaches the other nodes after it. An announcement lost to a
    /// Redis outage is covered by the `SharedDataChanged` without a key
    /// that every node gets when it subscribes again.
    pub async fn announce_change(&self, topic: &str, key: &str) {
        if let Some(c) = &self.server.cluster {
            c.announce_change(topic, key).await;
        }
    }

    /// The server's counters (see `metrics.rs`).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.server.metrics
    }

    /// The local client session the stanza came from, if it came from one.
    pub fn origin(&self) -> Option<&Arc<SessionHandle>> {
        self.origin.as_ref()
    }

    /// Routes a stanza to its `to` address (the only way to reach anything).
    pub async fn route(&self, stanza: Element) {
        self.server.clone().route(stanza).await;
    }

    /// Routes `stanza` (its `to` removed, see [`SharedStanza::new`]) from
    /// `from` (its `from` attribute, parsed) to each of `to`, as
    /// [`Server::route_fanout`]: a room's message to its occupants.
    pub async fn route_fanout(&self, stanza: Arc<SharedStanza>, from: Jid, to: Arc<[FullJid]>) {
        self.server.clone().route_fanout(stanza, from, to).await;
    }

    /// Routes stanzas to one full JID that must arrive together and in
    /// order (see [`Server::route_burst`]).
    pub async fn route_burst(&self, stanzas: Vec<Element>) {
        self.server.clone().route_burst(stanzas).await;
    }

    /// Answers `stanza` with an error, unless it is itself an error.
    pub async fn bounce(&self, stanza: &Element, err: StanzaError) {
        self.server.clone().bounce(stanza, err).await;
    }

    /// The bound sessions of a local account.
    pub fn sessions_of(&self, user: &BareJid) -> Vec<Arc<SessionHandle>> {
        self.server.sessions.resources(user)
    }

    /// Whether any session of `member`'s account has `flag` set, other
    /// than those `skip` picks; see [`SessionRegistry::any_flagged`](crate::session::SessionRegistry::any_flagged)
    /// (`skip` must take no lock).
    pub fn any_session_flagged(
        &self,
        member: &SessionHandle,
        flag: crate::session::SessionFlag,
        skip: impl Fn(&SessionHandle) -> bool,
    ) -> bool {
        self.server.sessions.any_flagged(member, flag, skip)
    }

    /// False when surely no session of `member`'s account has `flag`, read
    /// without a lock (see [`SessionRegistry::may_be_flagged`](crate::session::SessionRegistry::may_be_flagged)):
    /// the question to ask before anything costlier that only matters
    /// if some session has it.
    pub fn session_may_be_flagged(
        &self,
        member: &SessionHandle,
        flag: crate::session::SessionFlag,
    ) -> bool {
        self.server.sessions.may_be_flagged(member, flag)
    }

    /// Withdraws `fact` for `user`'s account on this node (see
    /// [`AccountFact`](crate::session::AccountFact)).
    pub fn withdraw_account_fact(&self, user: &BareJid, fact: crate::session::AccountFact) {
        self.server.sessions.withdraw_account_fact(user, fact);
    }

    /// Withdraws `fact` for every account on this node.
    pub fn withdraw_account_fact_everywhere(&self, fact: crate::session::AccountFact) {
        self.server.sessions.withdraw_account_fact_everywhere(fact);
    }

    /// Every local account with at least one bound session, in no order.
    pub fn online_accounts(&self) -> Vec<BareJid> {
        self.server.sessions.accounts()
    }

    /// One bound session.
    pub fn session(&self, jid: &FullJid) -> Option<Arc<SessionHandle>> {
        self.server.sessions.get(jid)
    }

    pub fn is_local_host(&self, domain: &str) -> bool {
        self.server.config.is_local_host(domain)
    }

    /// Domains of the services under `host` (`conference.host` …), with their names,
    /// for the server's disco#items.
    pub fn services_of(&self, host: &str) -> Vec<(String, String)> {
        let suffix = format!(".{host}");
        let mut out: Vec<_> = self
            .server
            .registry
            .services
            .iter()
            .filter(|(d, _)| d.ends_with(&suffix))
            .map(|(d, (_, s))| (d.clone(), s.name().to_string()))
            .collect();
        // XEP-0114 components: those under `host`, and the others under
        // the first host, so that every one is discoverable somewhere.
        let first = self.server.config.hosts.first().map(String::as_str) == Some(host);
        out.extend(
            self.server
                .components
                .names()
                .filter(|(d, _)| {
                    d.ends_with(&suffix)
                        || (first
                            && !self
                                .server
                                .config
                                .hosts
                                .iter()
                                .any(|h| d.ends_with(&format!(".{h}"))))
                })
                .map(|(d, n)| (d.to_string(), n.to_string())),
        );
        out.sort();
        out
    }

    /// Features for disco#info on the server.
    pub fn server_features(&self) -> &[&'static str] {
        &self.server.registry.server_features
    }

    /// Features for disco#info on an account.
    pub fn account_features(&self) -> &[&'static str] {
        &self.server.registry.account_features
    }

    /// Delivers an event to every module.
    pub async fn emit(&self, event: Event) {
        self.server.clone().emit(self.origin.clone(), event).await;
    }

    /// Deletes an account and tells every module (ejabberd's `remove_user`).
    /// The invitation service (XEP-0401/0379/0445).
    pub fn invites(&self) -> crate::invites::Invites {
        crate::invites::Invites::new(self.server.clone())
    }

    pub async fn delete_account(&self, user: &BareJid) -> Result<(), waxwing_store::StoreError> {
        self.server.clone().delete_account(user).await
    }

    /// Counts an offence against a remote domain's reputation (ignored for
    /// local domains).
    pub async fn record_offence(&self, domain: &str, offence: crate::s2s::reputation::Offence) {
        self.server.record_offence(domain, offence).await;
    }

    /// Blocks or unblocks a remote domain for federation (persisted).
    pub async fn set_domain_blocked(
        &self,
        domain: &str,
        blocked: bool,
    ) -> Result<(), waxwing_store::StoreError> {
        self.server.set_domain_blocked(domain, blocked).await
    }

    /// Reputation of every known remote domain.
    pub fn domain_reputations(&self) -> Vec<crate::s2s::reputation::DomainStatus> {
        self.server.domain_reputations()
    }

    /// Ends the account's sessions (but `keep`) with `<reset/>`: their
    /// credentials changed, so they must authenticate again (RFC 6120
    /// §4.9.3.16).
    pub fn reset_sessions(&self, user: &BareJid, keep: Option<&FullJid>) {
        for s in self.server.sessions.resources(user) {
            if Some(&s.jid) != keep {
                s.close(
                    waxwing_proto::stanza::StreamError::new(
                        waxwing_proto::stanza::StreamCondition::Reset,
                    )
                    .with_text("the account's password changed"),
                );
            }
        }
    }

    /// Spawns a module's background task. The task must end soon after
    /// [`Cx::shutdown_token`] is cancelled; a graceful stop waits for it
    /// (bounded).
    pub fn spawn_background<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.server.background.spawn(task);
    }

    /// Cancelled when the server begins a graceful stop.
    /// The base URL of the HTTP listener for `host` (see `HttpState::base_url`).
    pub fn http_base_url(&self, host: &str) -> Option<String> {
        self.server.http.base_url(&self.server.config, host)
    }

    pub fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.server.shutdown.child_token()
    }

    /// Seconds since the server started (XEP-0012 server uptime).
    pub fn uptime(&self) -> std::time::Duration {
        self.server.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wants only stanzas named `name`, on every hook.
    struct Only(&'static str);

    #[async_trait]
    impl StanzaHook for Only {
        async fn handle_stanza(&self, _: &Cx, _: Hook, _: &mut Element) -> Flow {
            Flow::Continue
        }
        fn wants(&self, _: Hook, name: &str) -> bool {
            name == self.0
        }
    }

    #[test]
    fn the_chain_of_a_kind_is_the_chain_of_its_name() {
        let mut chains = HookChains::default();
        for (i, name) in ["iq", "message", "presence", "message"]
            .into_iter()
            .enumerate()
        {
            for hook in [Hook::Outbound, Hook::Inbound, Hook::Undeliverable] {
                let h: Arc<dyn StanzaHook> = Arc::new(Only(name));
                chains.all[hook.index()].push((Priority(i as i32), name, h));
            }
        }
        chains.freeze();
        for hook in [Hook::Outbound, Hook::Inbound, Hook::Undeliverable] {
            for (kind, name) in [
                (StanzaKind::Message, "message"),
                (StanzaKind::Presence, "presence"),
                (StanzaKind::Iq, "iq"),
            ] {
                let (by_name, filtered) = chains.chain(hook, name);
                let by_kind = chains.chain_of(hook, kind);
                assert!(filtered);
                let modules = |c: &[HookEntry]| c.iter().map(|e| e.1).collect::<Vec<_>>();
                assert_eq!(modules(by_kind), modules(by_name));
                assert!(modules(by_kind).iter().all(|m| *m == name), "{name}");
                assert!(!by_kind.is_empty());
            }
        }
    }
}
