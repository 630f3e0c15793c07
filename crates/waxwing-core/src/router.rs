//! The router: the only path from a stanza to a destination, and the
//! RFC 6121 §8 delivery rules for local accounts.
//!
//! Routing table (modelled on Prosody's `doc/stanza_routing.txt`):
//!
//! | `to`                 | message                         | presence              | iq get/set                |
//! |----------------------|---------------------------------|-----------------------|---------------------------|
//! | local domain         | dropped                         | dropped               | `IqTarget::Server` owner  |
//! | local bare, exists   | Inbound hooks, then §8.5.2      | Inbound hooks, then all available resources | `IqTarget::Account` owner |
//! | local full, bound    | that session                    | that session          | that session              |
//! | local full, unbound  | chat/normal/headline as bare; groupchat bounced; error dropped | dropped | service-unavailable |
//! | no such account      | service-unavailable (error dropped) | dropped           | service-unavailable       |
//! | component domain (any JID under it) | the component's queue; while it is disconnected service-unavailable, when its queue is full resource-constraint (errors and IQ results dropped) |
//! | remote domain        | queued for the (local, remote) s2s connection; bounced with remote-server-not-found / -timeout if it fails |
//!
//! A session that is closing (asked to end: conflict, removal, a full
//! queue) counts as unbound for messages and presence; an IQ to it is
//! still queued while its queue takes it (the close writes what is queued
//! before the stream error, e.g. the result of an account removal). A session that refuses a stanza because its
//! queue is full is closed on the spot, so the stanza then takes the
//! "unbound" row: a message goes to the account's other resources or to
//! offline storage, an IQ is answered with service-unavailable, a
//! groupchat message bounces; only presence is dropped (the session is
//! ending anyway, and presence is state, not a message).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::stanza::{
    self, Condition, StanzaError, StanzaKind, StreamCondition, StreamError,
};
use waxwing_proto::xml::Element;
use waxwing_store::{StoreError, Stores};

use crate::abuse::{
    AuthThrottle, ConnectionCounter, PartialBudget, RegistrationLimit, ThrottleConfig,
};
use crate::boxed::boxed_in_place;
use crate::client_memo::ClientMemo;
use crate::cluster;
use crate::config::Config;
use crate::hooks::{
    Cx, Event, FanoutCopy, Flow, Hook, Iq, IqHandler, IqKind, IqResult, IqTarget, Registry,
};
use crate::isolate::{self, Panicked, isolated};
use crate::s2s::S2sManager;
use crate::session::{SessionHandle, SessionRegistry};
use crate::shared_stanza::{Addressed, SharedStanza};
use crate::stream::c2s::ResumptionTable;
use crate::tls::TlsContext;

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Everything shared by all connections of one server process.
pub struct Server {
    /// The configuration the server started with. Settings a reload can
    /// change (`config::reload::LIVE`) are read from [`Server::live`] instead.
    pub config: Config,
    /// The configuration as of the latest reload (`reload.rs`).
    pub(crate) live: arc_swap::ArcSwap<Config>,
    pub(crate) reload_hooks: std::sync::OnceLock<crate::reload::ReloadHooks>,
    /// One reload at a time (SIGHUP and the admin API may race).
    pub(crate) reloading: tokio::sync::Mutex<()>,
    pub stores: Stores,
    pub sessions: SessionRegistry,
    pub(crate) registry: Registry,
    pub(crate) tls: TlsContext,
    pub(crate) started: Instant,
    pub(crate) shutdown: CancellationToken,
    /// Modules' background tasks (feed pollers …), awaited on stop.
    pub(crate) background: tokio_util::task::TaskTracker,
    /// Keys the fake SCRAM salts of unknown users, so that they are stable,
    /// across restarts too (an attacker cannot tell "no such user" from
    /// "wrong password"); persisted under `data_dir`.
    pub(crate) fake_salt_key: [u8; 32],
    pub(crate) connections: Arc<ConnectionCounter>,
    pub(crate) auth_throttle: AuthThrottle,
    pub(crate) registrations: RegistrationLimit,
    /// Memory held by partially received stanzas, over all connections.
    pub partial_stanzas: Arc<PartialBudget>,
    pub(crate) resumption: ResumptionTable,
    /// Serialized c2s stream features per negotiation state.
    pub(crate) c2s_features: crate::stream::c2s::FeatureCache,
    /// Federation: outgoing connections per domain pair, dialback secret, s2s TLS.
    pub s2s: S2sManager,
    /// What `/metrics` shows (see `metrics.rs`).
    pub metrics: crate::metrics::Metrics,
    /// XEP-0114 external components, by domain.
    pub(crate) components: crate::component::Components,
    /// XEP-0065 SOCKS5 proxy: connections waiting for activation, relays.
    pub(crate) proxy65: crate::proxy65::Proxy,
    /// Per-host account sources (extauth pools, the anonymous login limit).
    pub(crate) auth: crate::auth::Authenticator,
    /// The HTTP listener's bound addresses and the URLs derived from them.
    pub http: crate::http::HttpState,
    /// BOSH sessions (XEP-0124/0206).
    pub bosh: crate::bosh::Bosh,
    /// Cluster mode (`[cluster]`); `None` on a single node.
    pub cluster: Option<crate::cluster::Cluster>,
}

impl Server {
    pub(crate) fn new(
        config: Config,
        stores: Stores,
        registry: Registry,
        tls: TlsContext,
        s2s: S2sManager,
        fake_salt_key: [u8; 32],
    ) -> Arc<Self> {
        let metrics = crate::metrics::Metrics::new();
        // Cache outside the timing: the histograms time the store itself.
        let stores = crate::timed::wrap(stores, &metrics.storage_seconds);
        let stores = crate::store_cache::wrap(stores, config.store_cache, &config.data_dir);
        let cluster = config.cluster.clone().map(crate::cluster::Cluster::new);
        let mut sessions = SessionRegistry::counting_overflows(metrics.queue_overflows.clone());
        if let Some(c) = &cluster {
            sessions = sessions.with_cluster(c.replica.clone(), c.publisher.clone());
        }
        Arc::new(Server {
            stores,
            sessions,
            cluster,
            registry,
            tls,
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            background: tokio_util::task::TaskTracker::new(),
            fake_salt_key,
            connections: Arc::new(ConnectionCounter::default()),
            auth_throttle: AuthThrottle::new(ThrottleConfig {
                max_per_prefix: config.max_auth_failures_per_ip,
                max_per_account: config.max_auth_failures_per_account,
                window: config.auth_failure_window,
                prefixes: config.auth_prefixes,
            }),
            partial_stanzas: PartialBudget::new(config.partial_stanza_budget_bytes),
            registrations: RegistrationLimit::new(
                config.registration_max_per_address,
                config.registration_window,
                config.auth_prefixes,
            ),
            resumption: ResumptionTable::default(),
            c2s_features: Default::default(),
            s2s,
            metrics,
            components: crate::component::Components::new(&config.components),
            proxy65: Default::default(),
            auth: crate::auth::Authenticator::start(&config),
            http: Default::default(),
            bosh: crate::bosh::Bosh::new(&config.bosh),
            live: arc_swap::ArcSwap::from_pointee(config.clone()),
            reload_hooks: std::sync::OnceLock::new(),
            reloading: tokio::sync::Mutex::new(()),
            config,
        })
    }

    /// Routes a stanza by its `to` address.
    pub fn route(self: Arc<Self>, stanza: Element) -> BoxFuture {
        boxed_in_place(|| async move {
            let Some(kind) = stanza::kind(&stanza) else {
                return;
            };
            let Some(to) = stanza.attr("to") else {
                tracing::debug!("dropping a stanza with no destination");
                return;
            };
            let to = match Jid::parse(to) {
                Ok(to) => to,
                Err(_) => {
                    return self
                        .bounce(&stanza, StanzaError::modify(Condition::JidMalformed))
                        .await;
                }
            };
            self.route_to(to, stanza, kind, None, None).await;
        })
    }

    /// [`Server::route`] for a stanza whose `to` is already parsed as `to`;
    /// `sender`: the local session it came from, if it did (see
    /// [`Cx::sender_of`]); `known`: the local session bound to `to`, if
    /// the caller has it at hand (see [`Server::deliver_local`]). Returns
    /// the local session bound to `to` if one was looked up, for the
    /// caller to keep.
    async fn route_to(
        self: &Arc<Self>,
        to: Jid,
        mut stanza: Element,
        kind: StanzaKind,
        sender: Option<Arc<SessionHandle>>,
        known: Option<Arc<SessionHandle>>,
    ) -> Option<Arc<SessionHandle>> {
        if let Some(c) = &self.cluster
            && let Some((node, id)) = cluster::untag_response(&stanza)
        {
            // The answer to a request a node of ours sent (see
            // `cluster::tag_request`): handled where it is waited for.
            if node != c.node() {
                if !c.is_peer(node) {
                    // Made up, or its node is gone: nobody waits for it.
                    return None;
                }
                let node: Arc<str> = node.into();
                let body = cluster::Body::Route {
                    stanzas: vec![stanza.to_xml()],
                    burst: false,
                    hops: 1,
                };
                if c.replica
                    .link()
                    .send(cluster::Outgoing { node, body })
                    .is_err()
                {
                    tracing::warn!("cluster link full: an IQ answer for another node dropped");
                }
                return None;
            }
            let id = id.to_string();
            stanza.set_attr("id", id);
        }
        if let Some(key) = self.lease_key(&to, &stanza) {
            // Boxed, cluster mode only: see `dispatch_iq`.
            Box::pin(cluster::ownership::route(
                self,
                key,
                vec![stanza],
                false,
                0,
                Self::route_owned,
            ))
            .await;
            return None;
        }
        self.route_unleased(to, stanza, kind, sender, known).await
    }

    /// In a cluster, the lease whose holder handles a stanza to `to`: a
    /// room (or whatever a domain service names,
    /// [`crate::hooks::DomainService::owned_entity`]) or the outgoing s2s
    /// route of the domain pair. `None` on a single node and for
    /// everything any node may handle.
    fn lease_key(&self, to: &Jid, stanza: &Element) -> Option<cluster::ownership::Key> {
        self.cluster.as_ref()?;
        if let Some((_, svc)) = self.registry.services.get(to.domain()) {
            let entity = svc.owned_entity(to, stanza)?;
            return Some(cluster::ownership::Key::Service {
                domain: to.domain().to_string(),
                entity,
            });
        }
        if self.components.contains(to.domain()) || self.config.is_local_host(to.domain()) {
            return None;
        }
        let from = stanza.attr("from").and_then(|f| Jid::parse(f).ok())?;
        Some(cluster::ownership::Key::S2s {
            local: from.domain().to_string(),
            remote: to.domain().to_string(),
        })
    }

    /// Handles stanzas whose lease this node holds (see
    /// [`cluster::ownership::route`]): to the domain service, or onto the
    /// s2s pair's queue (`burst`: as one entry).
    fn route_owned(self: Arc<Self>, stanzas: Vec<Element>, burst: bool) -> BoxFuture {
        boxed_in_place(|| async move {
            let remote = stanzas
                .first()
                .and_then(|s| s.attr("to"))
                .and_then(|t| Jid::parse(t).ok())
                .is_some_and(|to| !self.is_local_domain(to.domain()));
            if remote && burst {
                return self.s2s.send_burst(&self, stanzas);
            }
            for s in stanzas {
                let Some(kind) = stanza::kind(&s) else {
                    continue;
                };
                let Some(to) = s.attr("to").and_then(|t| Jid::parse(t).ok()) else {
                    continue;
                };
                self.route_unleased(to, s, kind, None, None).await;
            }
        })
    }

    /// Stanzas another node forwarded because this node owns their lease
    /// (as far as it knew): decided again here, since ownership may have
    /// moved on the way.
    pub(crate) fn route_forwarded(
        self: Arc<Self>,
        stanzas: Vec<Element>,
        burst: bool,
        hops: u8,
    ) -> BoxFuture {
        boxed_in_place(|| async move {
            let key = stanzas.first().and_then(|s| {
                let to = Jid::parse(s.attr("to")?).ok()?;
                self.lease_key(&to, s)
            });
            match key {
                Some(key) => {
                    cluster::ownership::route(&self, key, stanzas, burst, hops, Self::route_owned)
                        .await;
                }
                None => {
                    for s in stanzas {
                        self.clone().route(s).await;
                    }
                }
            }
        })
    }

    /// Routing once any lease is settled: domain services, components,
    /// local delivery, federation. `known` and what it returns: see
    /// [`Server::route_to`].
    async fn route_unleased(
        self: &Arc<Self>,
        to: Jid,
        stanza: Element,
        kind: StanzaKind,
        sender: Option<Arc<SessionHandle>>,
        known: Option<Arc<SessionHandle>>,
    ) -> Option<Arc<SessionHandle>> {
        if let Some((module, svc)) = self.registry.services.get(to.domain()) {
            // The addresses as parsed here, for the service (see
            // `DomainService::handle_stanza`): parsing a room message's
            // `from` and `to` again cost some 2,400 instructions.
            let cx = Cx::routing(self.clone(), None, to, sender);
            let reply_to = isolate::envelope(&stanza);
            if isolated(module, svc.handle_stanza(&cx, stanza))
                .await
                .is_err()
            {
                self.clone().answer_panic(&reply_to).await;
            }
        } else if self.components.contains(to.domain()) {
            if let crate::component::Offer::Bounce(stanza, err) =
                self.components.offer(to.domain(), stanza)
            {
                self.clone().bounce(&stanza, err).await;
            }
        } else if self.config.is_local_host(to.domain()) {
            return self.deliver_local(to, stanza, kind, sender, known).await;
        } else {
            // Never awaits the remote: the pair's s2s task owns the queue.
            self.s2s.send(self, stanza);
        }
        None
    }

    /// Routes stanzas that are all addressed to the same full JID and
    /// belong together (a group chat join: every occupant's presence, the
    /// history, the subject). To a local session they go as one burst
    /// ([`SessionHandle::send_burst`]) after the `Inbound` hooks, so a
    /// burst larger than the session's queue neither overflows it nor
    /// interleaves with other traffic; to a remote domain as one entry of
    /// the s2s pair's queue; anywhere else each is routed alone.
    pub fn route_burst(self: Arc<Self>, stanzas: Vec<Element>) -> BoxFuture {
        boxed_in_place(|| async move {
            let Some(first) = stanzas.first() else {
                return;
            };
            let to = first.attr("to").and_then(|t| Jid::parse(t).ok());
            let session = to
                .as_ref()
                .filter(|to| {
                    self.config.is_local_host(to.domain())
                        && !self.registry.services.contains_key(to.domain())
                })
                .and_then(Jid::as_full)
                .and_then(|f| self.sessions.get(f))
                .filter(|s| !s.is_closing());
            let same_to = stanzas.iter().all(|s| s.attr("to") == first.attr("to"));
            let remote = to
                .as_ref()
                .is_some_and(|to| !self.is_local_domain(to.domain()));
            if remote && same_to {
                // One entry of the pair's queue, like a session's burst
                // (in a cluster, the queue of the node holding the pair).
                if let Some(key) = to.as_ref().and_then(|to| self.lease_key(to, first)) {
                    return cluster::ownership::route(
                        &self,
                        key,
                        stanzas,
                        true,
                        0,
                        Self::route_owned,
                    )
                    .await;
                }
                return self.s2s.send_burst(&self, stanzas);
            }
            let Some(session) = session.filter(|_| same_to) else {
                for s in stanzas {
                    self.clone().route(s).await;
                }
                return;
            };
            let cx = Cx::new(self.clone(), None);
            let mut kept = Vec::with_capacity(stanzas.len());
            for mut s in stanzas {
                if stanza::kind(&s).is_some()
                    && self.run_hooks(Hook::Inbound, &cx, &mut s).await == Flow::Continue
                {
                    kept.push(s);
                }
            }
            let messages: Vec<Element> = kept
                .iter()
                .filter(|s| {
                    s.name == "message"
                        && self.delivery_wanted(&cx, s, std::slice::from_ref(&session))
                })
                .cloned()
                .collect();
            if let Err(refused) = session.offer_burst(kept) {
                self.metrics.queue_refusals.inc();
                // The session is closing now: as if it were not there.
                let to = to.expect("a session was found for it");
                for s in refused {
                    if let Some(kind) = stanza::kind(&s) {
                        self.deliver_hooked(&cx, to.clone(), s, kind).await;
                    }
                }
                return;
            }
            for message in messages {
                let recipients = vec![session.clone()];
                self.clone()
                    .emit(
                        None,
                        Event::MessageDelivered {
                            message,
                            recipients,
                        },
                    )
                    .await;
            }
        })
    }

    /// Routes one stanza to many full JIDs (a room's message to its
    /// occupants). `stanza` has no `to`; each copy gets one recipient's.
    /// Every copy takes the path [`Server::route`] gives it — `Inbound`
    /// hooks (blocking, archives …), then the session's queue or the
    /// unbound rules — but one for a local account skips what `route`
    /// spends on the address (serializing it, parsing it back, looking up
    /// where it lives), and a message to a bound session whose hooks all
    /// decide without it ([`StanzaHook::decide_copy`](crate::hooks::StanzaHook::decide_copy))
    /// and that no delivery handler wants is queued as the shared stanza
    /// plus its recipient (`shared_stanza`): no tree per occupant, and the
    /// stanza serialized once for the room. Other copies are made one at a
    /// time, so a large room never holds a tree per occupant at once. O(N)
    /// in the recipients; never waits for a session (a full queue refuses,
    /// see the table at the top).
    /// `from` is the stanza's `from`, as the caller (the room) has it
    /// parsed: parsing the attribute back cost more than the rest of the
    /// fan-out's fixed part. `to` is shared: a room keeps its list of
    /// sessions from one change of occupants to the next, rather than
    /// collecting it for every message.
    pub fn route_fanout(
        self: Arc<Self>,
        shared: Arc<SharedStanza>,
        from: Jid,
        to: Arc<[FullJid]>,
    ) -> BoxFuture {
        boxed_in_place(|| async move {
            let stanza = shared.element();
            debug_assert!(stanza.attr("from").is_some_and(|f| from.is_written_as(f)));
            let Some(kind) = stanza::kind(stanza) else {
                return;
            };
            // For every copy's hooks; other kinds take the general path.
            let from = (kind == StanzaKind::Message).then_some(from);
            let cx = Cx::new(self.clone(), None);
            // Whether the latest domain is local: a room's occupants are
            // nearly all of one domain, so it is asked once per run of
            // copies to the same domain rather than per copy (two hash
            // lookups and a scan of the hosts each).
            let mut last: Option<(&str, bool)> = None;
            for jid in to.iter() {
                let local = match last {
                    Some((domain, local)) if domain == jid.domain() => local,
                    _ => {
                        let local = self.is_plain_local_domain(jid.domain());
                        last = Some((jid.domain(), local));
                        local
                    }
                };
                let copy = Addressed {
                    stanza: shared.clone(),
                    to: jid.clone(),
                };
                if !local {
                    self.clone().route(copy.into_element()).await;
                    continue;
                }
                let copy = match from.as_ref() {
                    Some(from) => match self.offer_shared(&cx, from, copy) {
                        Shared::Done => continue,
                        Shared::Refused(tree) => {
                            // The session is closing now: as if it were not there.
                            let to = tree.attr("to").and_then(|t| Jid::parse(t).ok());
                            if let Some(to) = to {
                                self.clone().deliver_message_to_account(&cx, to, tree).await;
                            }
                            continue;
                        }
                        Shared::Undecided(copy) => copy,
                    },
                    None => copy,
                };
                let to = Jid::Full(copy.to.clone());
                self.deliver_local(to, copy.into_element(), kind, None, None)
                    .await;
            }
        })
    }

    /// Whether a stanza to `domain` is delivered to a local account here
    /// without a lease, a service or a component in between. In a cluster
    /// routing may concern another node (leases, tagged answers): never.
    fn is_plain_local_domain(&self, domain: &str) -> bool {
        self.cluster.is_none()
            && self.config.is_local_host(domain)
            && !self.registry.services.contains_key(domain)
            && !self.components.contains(domain)
    }

    /// Queues a fan-out's message for a bound local session as the shared
    /// stanza, if every `Inbound` hook decides without a tree and no
    /// delivery handler wants the message (see [`Server::route_fanout`]).
    fn offer_shared(self: &Arc<Self>, cx: &Cx, from: &Jid, copy: Addressed) -> Shared {
        let Some(session) = self.sessions.get(&copy.to).filter(|s| !s.is_closing()) else {
            return Shared::Undecided(copy);
        };
        let stanza = copy.stanza.element();
        let (chain, filtered) = self.registry.hooks.chain(Hook::Inbound, &stanza.name);
        let seen = FanoutCopy {
            stanza,
            from,
            to: &copy.to,
        };
        for (_, module, h) in chain {
            if !filtered && !h.wants(Hook::Inbound, &stanza.name) {
                continue;
            }
            match isolate::isolated_sync(module, || h.decide_copy(cx, &seen)) {
                Ok(Some(Flow::Continue)) => {}
                Ok(Some(Flow::Handled)) => return Shared::Done,
                // A panic here is met again, and answered, on the
                // general path.
                Ok(None) | Err(Panicked) => return Shared::Undecided(copy),
            }
        }
        if self.delivery_wanted(cx, stanza, std::slice::from_ref(&session)) {
            return Shared::Undecided(copy);
        }
        match session.offer_addressed(copy) {
            Ok(()) => Shared::Done,
            Err(tree) => {
                self.metrics.queue_refusals.inc();
                Shared::Refused(tree)
            }
        }
    }

    /// Answers `stanza` with an error, unless it is an error or an IQ result
    /// (errors about errors would loop).
    pub fn bounce(self: Arc<Self>, stanza: &Element, err: StanzaError) -> BoxFuture {
        let reply = stanza::error_reply(stanza, &err);
        // A remote domain whose messages bounce (spam to made-up accounts …)
        // loses a little reputation. IQs and presence are left out: IQs to
        // a resource that just went offline bounce in honest traffic.
        let remote = (stanza.name == "message")
            .then(|| stanza.attr("from"))
            .flatten()
            .and_then(|f| Jid::parse(f).ok())
            .map(|f| f.domain().to_string())
            .filter(|d| !self.is_local_domain(d));
        boxed_in_place(|| async move {
            if let Some(reply) = reply {
                if let Some(d) = remote {
                    self.record_offence(&d, crate::s2s::reputation::Offence::Bounce)
                        .await;
                }
                self.route(reply).await;
            }
        })
    }

    /// Answers a stanza whose handling panicked with `internal-server-error`
    /// (RFC 6120 §8.3.3.8). Unlike [`Server::bounce`], the sender's domain
    /// loses no reputation: the fault is ours.
    fn answer_panic(self: Arc<Self>, stanza: &Element) -> BoxFuture {
        let reply =
            stanza::error_reply(stanza, &StanzaError::cancel(Condition::InternalServerError));
        boxed_in_place(|| async move {
            if let Some(reply) = reply {
                self.route(reply).await;
            }
        })
    }

    /// A stanza from a bound client session, `from` already stamped. A
    /// panic anywhere in its handling fails this stanza, not the session:
    /// the registry must never keep a session whose task died.
    ///
    /// The stanza stays in `slot` while the router only reads it and runs
    /// the Outbound hooks, so a panic there is answered from it without a
    /// copy made in advance (a copy of every attribute of every stanza,
    /// for a panic that never comes). Once handed on (routed, dispatched),
    /// what it reaches is isolated on its own and answers its own panics
    /// (hooks, IQ handlers, domain services); a panic in the router's own
    /// delivery code after that point still fails only this stanza, unanswered.
    ///
    /// `kind`: the stanza's, as the session checked it. `memo`: what the
    /// connection remembers of its latest `to` (see [`ClientMemo`]).
    pub(crate) async fn handle_from_client(
        self: &Arc<Self>,
        origin: &Arc<SessionHandle>,
        stanza: Element,
        kind: StanzaKind,
        memo: &mut ClientMemo,
    ) {
        self.metrics.stanza_in(&stanza.name, "c2s");
        let mut slot = Some(stanza);
        let handled = self.handle_from_client_inner(origin, &mut slot, kind, memo);
        if isolated("router", handled).await.is_err()
            && let Some(stanza) = slot
        {
            self.clone().answer_panic(&stanza).await;
        }
    }

    /// A stanza from a peer server, admitted by its stream; isolated like
    /// [`Server::handle_from_client`], so a panic fails the stanza and the
    /// s2s stream goes on.
    pub(crate) async fn handle_from_peer(self: Arc<Self>, stanza: Element) {
        self.metrics.stanza_in(&stanza.name, "s2s");
        let reply_to = isolate::envelope(&stanza);
        if isolated("router", self.clone().route(stanza))
            .await
            .is_err()
        {
            self.answer_panic(&reply_to).await;
        }
    }

    /// [`Server::handle_from_client`]: `slot` holds the stanza until it is
    /// handed on.
    async fn handle_from_client_inner(
        self: &Arc<Self>,
        origin: &Arc<SessionHandle>,
        slot: &mut Option<Element>,
        kind: StanzaKind,
        memo: &mut ClientMemo,
    ) {
        let Some(stanza) = slot.as_mut() else {
            return;
        };
        debug_assert_eq!(stanza::kind(stanza), Some(kind));
        // With the session bound to `to` here, when the connection's
        // latest stanza had the same `to` and it is still bound.
        let to = match stanza.attr("to").map(|t| memo.parse_to(t)).transpose() {
            Ok(to) => to,
            Err(_) => {
                return self
                    .clone()
                    .bounce(stanza, StanzaError::modify(Condition::JidMalformed))
                    .await;
            }
        };
        match kind {
            StanzaKind::Iq => {
                let local_non_full = to.as_ref().is_none_or(|(t, _)| {
                    t.resource().is_none() && self.config.is_local_host(t.domain())
                });
                let Some(stanza) = slot.take() else { return };
                if local_non_full {
                    self.clone().dispatch_iq(Some(origin.clone()), stanza).await;
                } else {
                    self.clone().route(stanza).await;
                }
            }
            StanzaKind::Message | StanzaKind::Presence => {
                // The hooks read the parsed `to` from `cx` (`Cx::to_of`).
                let (mut cx, known) = match to {
                    Some((to, known)) => (
                        Cx::routing(self.clone(), Some(origin.clone()), to, None),
                        known,
                    ),
                    None => (Cx::new(self.clone(), Some(origin.clone())), None),
                };
                if self
                    .run_hooks_of(Hook::Outbound, Some(kind), &cx, stanza)
                    .await
                    == Flow::Handled
                {
                    return;
                }
                // No hook got the stanza to change: addressed as stamped.
                let untouched = cx.addressed();
                let to = cx.take_to();
                let Some(mut stanza) = slot.take() else {
                    return;
                };
                // Hooks may have readdressed the stanza; parse again only
                // then. `known` goes with the `to` it was found for.
                let (to, known) = match (to, stanza.attr("to")) {
                    (Some(to), Some(_)) if untouched => (to, known),
                    (Some(to), Some(now)) if to.is_written_as(now) => (to, known),
                    (_, Some(_)) => return self.clone().route(stanza).await,
                    (_, None) if kind == StanzaKind::Message => {
                        // RFC 6120 §10.3.1: no `to` means the sender's own bare JID.
                        let own = origin.jid.bare().clone();
                        stanza.set_attr("to", own.to_text());
                        (Jid::Bare(own), None)
                    }
                    (_, None) => return,
                };
                // The sender, for `Cx::sender_of`, while `from` names it.
                let sender = (untouched
                    || stanza
                        .attr("from")
                        .is_some_and(|f| origin.jid.is_written_as(f)))
                .then(|| origin.clone());
                if let Some(found) = self.route_to(to, stanza, kind, sender, known).await {
                    memo.remember_recipient(&found);
                }
            }
        }
    }

    async fn run_hooks(&self, hook: Hook, cx: &Cx, stanza: &mut Element) -> Flow {
        self.run_hooks_of(hook, None, cx, stanza).await
    }

    /// [`Server::run_hooks`]; `kind`: the stanza's kind if the caller has
    /// it (`stanza::kind` of it), which picks the chain without comparing
    /// names.
    async fn run_hooks_of(
        &self,
        hook: Hook,
        kind: Option<StanzaKind>,
        cx: &Cx,
        stanza: &mut Element,
    ) -> Flow {
        debug_assert!(kind.is_none() || kind == stanza::kind(stanza));
        let (chain, filtered) = match kind {
            Some(kind) => (self.registry.hooks.chain_of(hook, kind), true),
            None => self.registry.hooks.chain(hook, &stanza.name),
        };
        for (_, module, h) in chain {
            if !filtered && !h.wants(hook, &stanza.name) {
                continue;
            }
            let flow = match isolate::isolated_sync(module, || h.decide_now(cx, hook, stanza)) {
                Ok(Some(flow)) => Ok(flow),
                Ok(None) => {
                    cx.stanza_handed_over();
                    isolated(module, h.handle_stanza(cx, hook, stanza)).await
                }
                Err(Panicked) => Err(Panicked),
            };
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Handled) => {
                    tracing::trace!(module, ?hook, "stanza handled");
                    return Flow::Handled;
                }
                Err(Panicked) => {
                    cx.server.clone().answer_panic(stanza).await;
                    return Flow::Handled;
                }
            }
        }
        Flow::Continue
    }

    /// Delivery to a local address: `Inbound` hooks, then
    /// [`Server::deliver_found`]. `known`: the session bound to `to` if
    /// the caller kept it from an earlier lookup; it spares the lookup
    /// while it is still bound ([`SessionHandle::is_bound_here`]: then a
    /// lookup would find it). Returns the session a lookup found, if one
    /// was made, for the caller to keep.
    async fn deliver_local(
        self: &Arc<Self>,
        to: Jid,
        mut stanza: Element,
        kind: StanzaKind,
        sender: Option<Arc<SessionHandle>>,
        known: Option<Arc<SessionHandle>>,
    ) -> Option<Arc<SessionHandle>> {
        if to.local().is_none() {
            if kind == StanzaKind::Iq {
                self.clone().dispatch_iq(None, stanza).await;
            }
            return None;
        }
        // Looked up once, before the hooks: they read it (`Cx::recipient`),
        // and delivery uses it unless a hook awaited in between.
        debug_assert!(known.as_ref().is_none_or(|s| to.as_full() == Some(&s.jid)));
        let (recipient, looked_up) = match known.filter(|s| s.is_bound_here()) {
            Some(s) => (Some(s), None),
            None => {
                let found = to.as_full().and_then(|f| self.sessions.get(f));
                (found.clone(), found)
            }
        };
        let mut cx = Cx::routing(self.clone(), None, to, sender).with_recipient(recipient);
        if self
            .run_hooks_of(Hook::Inbound, Some(kind), &cx, &mut stanza)
            .await
            == Flow::Handled
        {
            return looked_up;
        }
        let to = cx.take_to().expect("given to the context above");
        let recipient = cx.take_recipient();
        if cx.addressed() {
            // Every hook decided without awaiting: nothing changed since
            // the lookup that a lookup now would see.
            self.deliver_found(&cx, to, stanza, kind, recipient).await;
        } else {
            self.deliver_hooked(&cx, to, stanza, kind).await;
        }
        looked_up
    }

    /// Delivery to a local account after the `Inbound` hooks (see the
    /// table at the top for sessions that are closing or refuse).
    pub(crate) async fn deliver_hooked(
        self: &Arc<Self>,
        cx: &Cx,
        to: Jid,
        stanza: Element,
        kind: StanzaKind,
    ) {
        let found = to.as_full().and_then(|f| self.sessions.get(f));
        self.deliver_found(cx, to, stanza, kind, found).await;
    }

    /// [`Server::deliver_hooked`] with the session a full `to` names
    /// already looked up (`found`).
    async fn deliver_found(
        self: &Arc<Self>,
        cx: &Cx,
        to: Jid,
        stanza: Element,
        kind: StanzaKind,
        found: Option<Arc<SessionHandle>>,
    ) {
        // An IQ answers that one session, even while it closes: what is
        // queued goes out before its stream error (the result of the
        // account removal that closes it, XEP-0077 §3.2); once its queue
        // is closed, the IQ bounces. Messages and presence skip it.
        let full = found.filter(|s| matches!(kind, StanzaKind::Iq) || !s.is_closing());
        match (kind, full) {
            (StanzaKind::Message, Some(session)) => {
                if let Err(stanza) = self
                    .offer_message(cx, std::slice::from_ref(&session), stanza, &mut Vec::new())
                    .await
                {
                    self.clone()
                        .deliver_message_to_account(cx, to, stanza)
                        .await;
                }
            }
            (StanzaKind::Message, None) => {
                self.clone()
                    .deliver_message_to_account(cx, to, stanza)
                    .await;
            }
            (StanzaKind::Iq, Some(session)) => {
                if let Err(stanza) = session.offer(stanza) {
                    self.metrics.queue_refusals.inc();
                    self.clone()
                        .bounce(&stanza, StanzaError::cancel(Condition::ServiceUnavailable))
                        .await;
                }
            }
            (StanzaKind::Iq, None) if to.resource().is_none() => {
                self.clone().dispatch_iq(None, stanza).await
            }
            (StanzaKind::Iq, None) => {
                self.clone()
                    .bounce(&stanza, StanzaError::cancel(Condition::ServiceUnavailable))
                    .await
            }
            (StanzaKind::Presence, Some(session)) => {
                session.send(stanza);
            }
            (StanzaKind::Presence, None) => {
                if to.resource().is_none() {
                    for s in self.sessions.resources(to.bare()) {
                        if s.is_available() && !s.is_closing() {
                            s.send(stanza.clone());
                        }
                    }
                }
            }
        }
    }

    /// Offers a message to `targets`; if any took it, `MessageDelivered`
    /// names them. Sessions that refused it (a full queue: they are closing
    /// now) are added to `refused`; when none took it, it comes back.
    ///
    /// When no delivery handler wants the event for this message (see
    /// [`EventHandler::wants_delivery`](crate::hooks::EventHandler::wants_delivery)),
    /// the last target gets the stanza itself rather than a copy.
    async fn offer_message(
        self: &Arc<Self>,
        cx: &Cx,
        targets: &[Arc<SessionHandle>],
        stanza: Element,
        refused: &mut Vec<u64>,
    ) -> Result<(), Element> {
        let wanted = self.delivery_wanted(cx, &stanza, targets);
        let last = targets.len().saturating_sub(1);
        // Collected only for the event: without it, nothing to allocate.
        let mut recipients = Vec::new();
        let mut delivered = false;
        let mut kept = Some(stanza);
        for (i, s) in targets.iter().enumerate() {
            let offered = match kept.take() {
                Some(el) if i == last && !wanted => el,
                Some(el) => {
                    let copy = el.clone();
                    kept = Some(el);
                    copy
                }
                None => break,
            };
            match s.offer(offered) {
                Ok(()) => {
                    delivered = true;
                    if wanted {
                        recipients.push(s.clone());
                    }
                }
                Err(back) => {
                    self.metrics.queue_refusals.inc();
                    refused.push(s.id);
                    kept.get_or_insert(back);
                }
            }
        }
        if !delivered {
            return Err(kept.expect("a refused offer gives the stanza back"));
        }
        if let Some(message) = kept.filter(|_| wanted) {
            self.clone()
                .emit(
                    None,
                    Event::MessageDelivered {
                        message,
                        recipients,
                    },
                )
                .await;
        }
        Ok(())
    }

    /// Whether any delivery handler wants [`Event::MessageDelivered`] for
    /// `message` handed to `targets`; a handler whose check panics does.
    /// `cx`: the routing context of the delivery (the handlers read only
    /// the server from it), so that none is made per message.
    fn delivery_wanted(&self, cx: &Cx, message: &Element, targets: &[Arc<SessionHandle>]) -> bool {
        self.registry.delivery_events.iter().any(|(module, h)| {
            isolate::isolated_sync(module, || h.wants_delivery(cx, message, targets))
                .unwrap_or(true)
        })
    }

    /// RFC 6121 §8.5.2 (bare JID) and §8.5.3.2 (full JID with no such resource).
    async fn deliver_message_to_account(self: Arc<Self>, cx: &Cx, to: Jid, mut stanza: Element) {
        let ty = stanza.attr("type").unwrap_or("normal").to_string();
        let full_miss = to.resource().is_some();
        match ty.as_str() {
            "error" => return,
            "groupchat" => {
                return self
                    .bounce(&stanza, StanzaError::cancel(Condition::ServiceUnavailable))
                    .await;
            }
            _ => {}
        }
        // Sessions that refused it (full queue: now closing) are skipped and
        // the rest tried, down to offline storage; each round refuses at
        // least one more session, so this ends.
        let mut refused: Vec<u64> = Vec::new();
        loop {
            let eligible: Vec<_> = self
                .sessions
                .resources(to.bare())
                .into_iter()
                .filter(|s| {
                    s.is_available()
                        && s.priority() >= 0
                        && !s.is_closing()
                        && !refused.contains(&s.id)
                })
                .collect();
            if eligible.is_empty() {
                break;
            }
            let targets: Vec<_> = if ty == "headline" {
                eligible
            } else {
                let top = eligible.iter().map(|s| s.priority()).max().unwrap_or(0);
                eligible
                    .into_iter()
                    .filter(|s| s.priority() == top)
                    .collect()
            };
            match self.offer_message(cx, &targets, stanza, &mut refused).await {
                Ok(()) => return,
                Err(back) => stanza = back,
            }
        }
        match self.stores.accounts.exists(to.bare()).await {
            Ok(true) => {}
            // An extauth/LDAP user who never logged in exists in the directory.
            // Boxed: a directory lookup's state (an LDAP connection, an
            // extauth exchange) would otherwise be part of every message's
            // future (see `dispatch_iq`).
            Ok(false) if Box::pin(self.auth.directory_knows(&self, to.bare())).await => {}
            Ok(false) => {
                return self
                    .bounce(&stanza, StanzaError::cancel(Condition::ServiceUnavailable))
                    .await;
            }
            Err(e) => {
                tracing::error!(error = %e, "account lookup failed while delivering");
                return self
                    .bounce(&stanza, StanzaError::wait(Condition::InternalServerError))
                    .await;
            }
        }
        if ty == "headline" {
            return;
        }
        let _ = full_miss;
        if self.run_hooks(Hook::Undeliverable, cx, &mut stanza).await == Flow::Continue {
            self.bounce(&stanza, StanzaError::cancel(Condition::ServiceUnavailable))
                .await;
        }
    }

    /// The last steps of a session that ended here (its connection, or its
    /// detached wait): what it never delivered goes to offline storage
    /// first, then everyone hears it ended, so a client that logs in again
    /// on that news finds it waiting.
    pub(crate) async fn session_ended(
        self: Arc<Self>,
        handle: &Arc<SessionHandle>,
        undelivered: Vec<Element>,
    ) {
        // XEP-0198 §5: what the client never acknowledged is not lost.
        self.clone()
            .store_undelivered(handle.jid.bare(), undelivered)
            .await;
        self.emit(Some(handle.clone()), Event::SessionClosed(handle.clone()))
            .await;
    }

    /// Stanzas a session received but never saw (unacknowledged, or still
    /// queued when its connection broke): messages worth keeping go to the
    /// account's offline store, the rest are bounced or dropped as if the
    /// resource had been unavailable all along.
    pub(crate) async fn store_undelivered(self: Arc<Self>, user: &BareJid, stanzas: Vec<Element>) {
        if stanzas.is_empty() {
            return;
        }
        let cx = Cx::new(self.clone(), None);
        for mut el in stanzas {
            let ty = el.attr("type").unwrap_or("normal");
            if el.name != "message" || matches!(ty, "error" | "groupchat" | "headline") {
                continue;
            }
            el.set_attr("to", user.to_string());
            if self.run_hooks(Hook::Undeliverable, &cx, &mut el).await == Flow::Continue {
                self.clone()
                    .bounce(&el, StanzaError::cancel(Condition::RecipientUnavailable))
                    .await;
            }
        }
    }

    /// Finds the module that owns an IQ's namespace and sends its answer.
    ///
    /// Boxed: its state (the `Iq`, the handler call, the reply) is large,
    /// and unboxed it would be part of every routed message's future,
    /// which the session moves onto the heap once per stanza.
    pub(crate) fn dispatch_iq(
        self: Arc<Self>,
        origin: Option<Arc<SessionHandle>>,
        stanza: Element,
    ) -> BoxFuture {
        boxed_in_place(|| self.dispatch_iq_now(origin, stanza))
    }

    async fn dispatch_iq_now(self: Arc<Self>, origin: Option<Arc<SessionHandle>>, stanza: Element) {
        let kind = match stanza.attr("type") {
            Some("get") => IqKind::Get,
            Some("set") => IqKind::Set,
            Some("result" | "error") => return, // no server-originated requests await answers yet
            _ => {
                return self
                    .bounce(&stanza, StanzaError::modify(Condition::BadRequest))
                    .await;
            }
        };
        let (Some(id), Some(payload)) = (stanza.attr("id"), stanza.first_child()) else {
            return self
                .bounce(&stanza, StanzaError::modify(Condition::BadRequest))
                .await;
        };
        if stanza.children().count() != 1 {
            return self
                .bounce(&stanza, StanzaError::modify(Condition::BadRequest))
                .await;
        }
        let from = match stanza.attr("from").map(Jid::parse) {
            Some(Ok(from)) => from,
            _ => return,
        };
        let to = stanza.attr("to").and_then(|t| Jid::parse(t).ok());
        // An IQ to someone else's account: the account must exist, or the
        // answer is the same as for an unknown namespace (RFC 6121 §8.5.1).
        if let Some(t) = to
            .as_ref()
            .filter(|t| t.local().is_some() && t.bare() != from.bare())
            && !self.stores.accounts.exists(t.bare()).await.unwrap_or(false)
        {
            return self
                .bounce(&stanza, StanzaError::cancel(Condition::ServiceUnavailable))
                .await;
        }
        let targets: &[IqTarget] = match &to {
            None => &[IqTarget::Account, IqTarget::Server],
            Some(t) if t.local().is_none() => &[IqTarget::Server],
            Some(_) => &[IqTarget::Account],
        };
        let handler = targets
            .iter()
            .find_map(|t| self.registry.iq.get(*t, kind, &payload.ns));
        let Some((module, handler)) = handler else {
            return self
                .bounce(&stanza, StanzaError::cancel(Condition::ServiceUnavailable))
                .await;
        };
        let iq = Iq {
            from: from.clone(),
            to: to.clone(),
            id: id.to_string(),
            is_set: kind == IqKind::Set,
            payload: payload.clone(),
            stanza: stanza.clone(),
            authenticated: true,
            preauth: None,
        };
        let cx = Cx::new(self.clone(), origin);
        tracing::trace!(module, ns = %payload.ns, "dispatching iq");
        match call_iq_handler(module, handler.as_ref(), &cx, iq).await {
            Ok(result) => {
                let mut reply = stanza::iq_result(&stanza);
                // An IQ sent without `to` was answered by the account itself.
                if to.is_none() {
                    reply.set_attr("from", from.bare().to_string());
                }
                if let Some(p) = result {
                    reply.push_child(p);
                }
                self.route(reply).await;
            }
            Err(err) => self.bounce(&stanza, err).await,
        }
    }

    pub(crate) fn emit(
        self: Arc<Self>,
        origin: Option<Arc<SessionHandle>>,
        event: Event,
    ) -> BoxFuture {
        boxed_in_place(|| async move {
            let handlers = match event {
                Event::MessageDelivered { .. } => &self.registry.delivery_events,
                _ => &self.registry.events,
            };
            if handlers.is_empty() {
                return;
            }
            let cx = Cx::new(self.clone(), origin);
            // A panicking handler misses this event; the others still get
            // it (a session's end must reach the presence engine).
            for (module, h) in handlers {
                let _ = isolated(module, h.on_event(&cx, &event)).await;
            }
        })
    }

    /// The elements modules add to `<stream:features/>` after
    /// authentication; a module whose feature panics adds none.
    pub(crate) fn stream_features(self: &Arc<Self>) -> Vec<Element> {
        let cx = Cx::new(self.clone(), None);
        let mut out = Vec::new();
        for (module, f) in &self.registry.stream_features {
            if let Ok(els) = isolate::isolated_sync(module, || f.stream_features(&cx)) {
                out.extend(els);
            }
        }
        out
    }

    /// Deletes an account, its data in every module, and its sessions.
    pub async fn delete_account(self: Arc<Self>, user: &BareJid) -> Result<(), StoreError> {
        self.stores.accounts.delete(user).await?;
        self.clone()
            .emit(None, Event::UserDeleted(user.clone()))
            .await;
        for s in self.sessions.resources(user) {
            s.close(StreamError::new(StreamCondition::NotAuthorized).with_text("account removed"));
        }
        Ok(())
    }

    /// Cancelled when the server stops (long-lived HTTP handlers watch it).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Starts a graceful stop: listeners close and every stream ends with `system-shutdown`.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

/// What became of a fan-out copy offered as the shared stanza.
enum Shared {
    /// Queued, or dropped by a hook.
    Done,
    /// The session refused it (it is closing now): the copy as a tree.
    Refused(Element),
    /// A hook or a delivery handler needs the tree: the general path.
    Undecided(Addressed),
}

/// Calls an IQ handler; a panic is answered `internal-server-error`.
pub(crate) async fn call_iq_handler(
    module: &str,
    handler: &dyn IqHandler,
    cx: &Cx,
    iq: Iq,
) -> IqResult {
    isolated(module, handler.handle_iq(cx, iq))
        .await
        .unwrap_or_else(|Panicked| Err(StanzaError::cancel(Condition::InternalServerError)))
}
