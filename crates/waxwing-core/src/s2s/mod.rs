//! Federation: outgoing server-to-server connections, one per (local,
//! remote) domain pair, each with a bounded queue that holds stanzas while
//! the connection is resolved, opened and authenticated.
//!
//! The router hands remote-bound stanzas to [`S2sManager::send`], which
//! never waits for the remote: the pair's task (`stream::s2s_out`) owns the
//! queue, and when it cannot connect in time it bounces what it holds with
//! `remote-server-not-found` or `remote-server-timeout`.
//!
//! Inbound streams (`stream::s2s_in`) authenticate each remote domain
//! separately (SASL EXTERNAL or dialback) and only then route its stanzas.
//!
//! XEP-0288 bidirectional streams: an outgoing stream that asked for
//! `<bidi/>` also reads the peer's stanzas for the pair it authenticated;
//! the incoming side registers itself here as the outgoing route of each
//! pair it authenticated, so the peer never opens a second connection.

pub mod dialback;
pub mod identity;
pub mod limits;
pub mod reputation;
pub mod resolve;
pub mod tls;
pub(crate) mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use waxwing_proto::jid::Jid;
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::{Element, Node};

use crate::config::{Config, DialbackPolicy};
use crate::queue::{Outbox, Outq, Refused, outbound};
use crate::router::Server;
use crate::stream::s2s_out;
use crate::tls::TlsContext;

use self::dialback::DialbackSecret;
use self::limits::InboundLimits;
use self::reputation::{Defences, DomainStatus, Offence, Standing};
use self::tls::S2sTls;

/// A (local, remote) domain pair.
pub(crate) type Pair = (String, String);

/// XEP-0288: the stream feature an incoming stream offers.
pub const BIDI_FEATURE_NS: &str = "urn:xmpp:features:bidi";
/// XEP-0288: `<bidi/>`, sent by the initiating server to enable it.
pub const BIDI_NS: &str = "urn:xmpp:bidi";

/// Stanzas written in one batch.
const WRITE_BATCH: usize = 64;

/// `batch` (one queue entry) and whatever else is queued, up to
/// [`WRITE_BATCH`] stanzas, serialized for an s2s stream. A burst may be
/// larger than a batch: it goes out whole.
pub(crate) fn write_batch(mut batch: Vec<Element>, rx: &mut Outbox) -> String {
    while batch.len() < WRITE_BATCH && rx.try_recv_into(&mut batch) {}
    serialize(batch)
}

fn serialize(batch: Vec<Element>) -> String {
    let mut out = String::new();
    for el in batch {
        to_server_ns(el).write_to(&mut out, ns::SERVER);
    }
    out
}

/// How long the last write at shutdown may take.
const SHUTDOWN_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// At shutdown, before the stream error: writes everything still queued
/// (bounded by the queue's own limits), within [`SHUTDOWN_FLUSH`], so what
/// modules sent on their way out (a room's 332 presences) reaches the peer.
pub(crate) async fn flush_at_shutdown(wire: &mut wire::Wire, rx: &mut Outbox) {
    let mut batch = Vec::new();
    while rx.try_recv_into(&mut batch) {}
    if !batch.is_empty() {
        let _ = tokio::time::timeout(SHUTDOWN_FLUSH, wire.write(&serialize(batch))).await;
    }
}

/// Outgoing federation state, owned by the [`Server`].
pub struct S2sManager {
    /// Replaced once in a cluster by the secret all nodes share
    /// (`crate::cluster::federation`).
    secret: std::sync::RwLock<DialbackSecret>,
    pub(crate) tls: S2sTls,
    /// Rate limits, block list and reputation of remote domains.
    pub defences: Defences,
    /// What unauthenticated incoming peers may cost, by address.
    pub inbound: InboundLimits,
    /// Stanzas bounced because `max_outgoing_routes` domain pairs already
    /// had a route (for tests and status).
    pub(crate) routes_refused: AtomicUsize,
    /// Streams (either direction) switched to XEP-0138 compression so far.
    pub(crate) compressed: AtomicUsize,
    /// Authenticated outgoing streams opened so far (not counting dialback
    /// verification connections).
    pub(crate) opened: AtomicUsize,
    /// Streams (either direction) on which XEP-0288 was enabled so far.
    pub(crate) bidi: AtomicUsize,
    /// The route per domain pair: an outgoing task's queue, or the queue of
    /// an incoming bidirectional stream.
    outgoing: Mutex<HashMap<Pair, Outq>>,
}

impl S2sManager {
    /// Loads (or creates) the dialback secret and the s2s TLS setup.
    pub fn new(config: &Config, tls: &TlsContext) -> Result<Self, crate::StartError> {
        let secret = DialbackSecret::load(config.s2s.secret.as_deref(), &config.data_dir)?;
        let tls = S2sTls::new(tls, &config.hosts, config.s2s.ca_bundle.as_deref())?;
        Ok(S2sManager {
            secret: std::sync::RwLock::new(secret),
            tls,
            defences: Defences::new(&config.s2s),
            inbound: InboundLimits::new(&config.s2s),
            routes_refused: AtomicUsize::new(0),
            compressed: AtomicUsize::new(0),
            opened: AtomicUsize::new(0),
            bidi: AtomicUsize::new(0),
            outgoing: Mutex::new(HashMap::new()),
        })
    }

    /// The dialback secret keys are made and checked with.
    pub(crate) fn secret(&self) -> DialbackSecret {
        self.secret
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Uses `secret` from now on (the cluster's shared one).
    pub(crate) fn set_secret(&self, secret: DialbackSecret) {
        *self.secret.write().unwrap_or_else(|e| e.into_inner()) = secret;
    }

    /// Queues `stanza` (addressed to a remote domain, `from` one of ours)
    /// for its domain pair's connection, starting one if needed.
    pub fn send(&self, server: &Arc<Server>, stanza: Element) {
        self.enqueue(server, vec![stanza], false);
    }

    /// Queues stanzas for one remote destination that belong together (a
    /// group chat join) as one entry: a burst larger than `max_queue` is
    /// not bounced in part. Bounded by `limits.outbound_burst` per pair.
    pub fn send_burst(&self, server: &Arc<Server>, stanzas: Vec<Element>) {
        self.enqueue(server, stanzas, true);
    }

    fn enqueue(&self, server: &Arc<Server>, stanzas: Vec<Element>, burst: bool) {
        let bounce_all = |stanzas: Vec<Element>, err: StanzaError| {
            for s in stanzas {
                tokio::spawn(server.clone().bounce(&s, err.clone()));
            }
        };
        let Some(first) = stanzas.first() else {
            return;
        };
        if !server.config.s2s.enabled {
            return bounce_all(
                stanzas,
                StanzaError::cancel(Condition::RemoteServerNotFound)
                    .with_text("federation is disabled on this server"),
            );
        }
        let (Some(from), Some(to)) = (
            first.attr("from").and_then(|f| Jid::parse(f).ok()),
            first.attr("to").and_then(|t| Jid::parse(t).ok()),
        ) else {
            tracing::debug!("dropping a remote-bound stanza without valid addresses");
            return;
        };
        let local = from.domain().to_string();
        let remote = to.domain().to_string();
        let same_pair = |s: &Element| {
            let domain = |a| {
                s.attr(a)
                    .and_then(|j| Jid::parse(j).ok())
                    .map(|j| j.domain().to_string())
            };
            domain("from").as_deref() == Some(local.as_str())
                && domain("to").as_deref() == Some(remote.as_str())
        };
        if burst && !stanzas.iter().all(same_pair) {
            // Not one destination: each goes on its own.
            for s in stanzas {
                self.send(server, s);
            }
            return;
        }
        if !server.is_local_domain(&local) {
            // Never relay between two remote domains.
            tracing::debug!(%local, %remote, "refusing to relay a stanza from a remote domain");
            return;
        }
        if self.defences.standing(&remote) == Standing::Blocked {
            return bounce_all(
                stanzas,
                StanzaError::cancel(Condition::NotAllowed)
                    .with_text("federation with this domain is blocked"),
            );
        }
        if server.config.s2s.policy(&remote) == DialbackPolicy::Refuse {
            return bounce_all(
                stanzas,
                StanzaError::cancel(Condition::RemoteServerNotFound)
                    .with_text("federation with this domain is not allowed"),
            );
        }
        let push = |q: &Outq, stanzas: Vec<Element>| {
            if burst {
                q.push_burst(stanzas)
            } else {
                let mut it = stanzas.into_iter();
                match it.next() {
                    Some(s) => q.push(s),
                    None => Ok(()),
                }
            }
        };
        // Kinds noted before the queue takes the stanzas; counted once queued.
        let kinds: Vec<&'static str> = stanzas
            .iter()
            .map(|s| crate::metrics::stanza_kind(&s.name))
            .collect();
        let count_out = || {
            for k in &kinds {
                server.metrics.stanza_out(k, "s2s");
            }
        };
        let pair = (local, remote);
        let mut map = self.outgoing.lock().expect("s2s map lock");
        let mut stanzas = stanzas;
        if let Some(q) = map.get(&pair) {
            match push(q, stanzas) {
                Ok(()) => return count_out(),
                Err(Refused::Full(s)) => {
                    drop(map);
                    return bounce_all(
                        s,
                        StanzaError::wait(Condition::ResourceConstraint)
                            .with_text("too many stanzas queued for this domain"),
                    );
                }
                // The pair's task ended (idle, failure): start a new one.
                Err(Refused::Closed(s)) => stanzas = s,
            }
        }
        if !map.contains_key(&pair) && map.len() >= server.config.s2s.max_outgoing_routes {
            // Every route costs a task, a queue and a connection (and local
            // users choose the remote domains): refuse rather than grow.
            drop(map);
            self.routes_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(local = %pair.0, remote = %pair.1, "too many remote domains in contact; bouncing");
            return bounce_all(
                stanzas,
                StanzaError::wait(Condition::ResourceConstraint)
                    .with_text("this server is in contact with too many remote domains"),
            );
        }
        let (q, rx) = outbound(server.config.s2s.max_queue, server.live().outbound_burst);
        if let Err(Refused::Full(s) | Refused::Closed(s)) = push(&q, stanzas) {
            drop(map);
            return bounce_all(
                s,
                StanzaError::wait(Condition::ResourceConstraint)
                    .with_text("too many stanzas queued for this domain"),
            );
        }
        map.insert(pair.clone(), q.clone());
        drop(map);
        count_out();
        tracing::debug!(local = %pair.0, remote = %pair.1, "starting an outgoing s2s connection");
        tokio::spawn(s2s_out::run(server.clone(), pair, q, rx));
    }
}

impl Server {
    /// One of our virtual hosts or a domain served by a module (MUC …).
    pub(crate) fn is_local_domain(&self, domain: &str) -> bool {
        self.config.is_local_host(domain)
            || self.registry.services.contains_key(domain)
            || self.components.contains(domain)
    }

    /// Counts `offence` against a remote domain and persists its record
    /// (local domains are never counted).
    pub async fn record_offence(&self, domain: &str, offence: Offence) {
        if self.is_local_domain(domain) {
            return;
        }
        let r = self
            .s2s
            .defences
            .record_at(domain, offence, reputation::unix_now());
        if let Err(e) = self.stores.reputation.put(&r).await {
            tracing::warn!(%domain, error = %e, "could not store a domain's reputation");
        }
    }

    /// Blocks or unblocks a remote domain (administrators), persisted.
    pub async fn set_domain_blocked(
        &self,
        domain: &str,
        blocked: bool,
    ) -> Result<(), waxwing_store::StoreError> {
        let r = self
            .s2s
            .defences
            .set_blocked_at(domain, blocked, reputation::unix_now());
        self.stores.reputation.put(&r).await?;
        tracing::info!(%domain, blocked, "domain block changed by an administrator");
        Ok(())
    }

    /// Reputation of every known remote domain, for administrators.
    pub fn domain_reputations(&self) -> Vec<DomainStatus> {
        self.s2s.defences.report_at(reputation::unix_now())
    }
}

impl S2sManager {
    /// Removes the pair's entry if it is still `tx` (a newer task may have replaced it).
    pub(crate) fn forget(&self, pair: &Pair, tx: &Outq) {
        let mut map = self.outgoing.lock().expect("s2s map lock");
        if map.get(pair).is_some_and(|cur| cur.same_channel(tx)) {
            map.remove(pair);
        }
    }

    /// XEP-0288: makes an incoming bidirectional stream's queue `tx` the
    /// route for `pair`, unless a live route (an outgoing connection) exists
    /// or `max_routes` pairs already have one.
    pub(crate) fn register_bidi(&self, pair: &Pair, tx: &Outq, max_routes: usize) -> bool {
        let mut map = self.outgoing.lock().expect("s2s map lock");
        if map.get(pair).is_some_and(|cur| !cur.is_closed()) {
            return false;
        }
        if !map.contains_key(pair) && map.len() >= max_routes {
            return false;
        }
        map.insert(pair.clone(), tx.clone());
        true
    }

    /// Streams switched to XEP-0138 compression since start (for tests and status).
    pub fn compressed_streams(&self) -> usize {
        self.compressed.load(Ordering::Relaxed)
    }

    /// Authenticated outgoing streams this server opened since start (for
    /// tests and status); dialback verification connections are not counted.
    pub fn outgoing_streams_opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }

    /// Streams on which XEP-0288 bidirectionality was enabled since start,
    /// as the initiating or the receiving side (for tests and status).
    pub fn bidi_streams(&self) -> usize {
        self.bidi.load(Ordering::Relaxed)
    }

    /// Remote-bound stanzas bounced since start because `max_outgoing_routes`
    /// pairs already had a route.
    pub fn routes_refused(&self) -> usize {
        self.routes_refused.load(Ordering::Relaxed)
    }

    /// Live routes and the entries waiting in their queues, for `/metrics`.
    pub(crate) fn route_stats(&self) -> (usize, usize) {
        let map = self.outgoing.lock().expect("s2s map lock");
        (map.len(), map.values().map(Outq::depth).sum())
    }

    /// Number of live routes to domain pairs, over outgoing connections or
    /// incoming bidirectional ones (for tests and admin status).
    pub fn outgoing_count(&self) -> usize {
        self.outgoing.lock().expect("s2s map lock").len()
    }
}

/// Moves a stanza from namespace `from` to `to`, with its descendants in
/// `from` reached through elements in `from` (`<body/>`, `<error/>` …).
/// Stanzas cross between `jabber:client` (how sessions and modules see
/// them) and `jabber:server` (how s2s streams carry them).
///
/// Foreign payloads are not descended into: a `jabber:client` message
/// forwarded inside `<forwarded xmlns='urn:xmpp:forward:0'/>` (carbons,
/// MAM) keeps its namespace on the wire, as XEP-0297 §3 requires.
pub fn renamespace(el: &mut Element, from: &str, to: &str) {
    if el.ns != from {
        return;
    }
    el.ns = to.into();
    for child in &mut el.children {
        if let Node::Element(c) = child {
            renamespace(c, from, to);
        }
    }
}

/// A stanza as an s2s stream carries it.
pub fn to_server_ns(mut el: Element) -> Element {
    renamespace(&mut el, ns::CLIENT, ns::SERVER);
    el
}

/// A stanza from an s2s stream as the router sees it.
pub fn to_client_ns(mut el: Element) -> Element {
    renamespace(&mut el, ns::SERVER, ns::CLIENT);
    el
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renamespace_moves_stanza_and_its_content_children() {
        let el = Element::new("message", ns::CLIENT)
            .with_attr("to", "a@b")
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"))
            .with_child(
                Element::new("error", ns::CLIENT)
                    .with_child(Element::new("item-not-found", ns::STANZAS)),
            )
            .with_child(
                Element::new("x", "jabber:x:data")
                    .with_child(Element::new("field", "jabber:x:data")),
            );
        let s = to_server_ns(el.clone());
        assert_eq!(
            s.to_xml_in(ns::SERVER),
            "<message to='a@b'><body>hi</body><error><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error><x xmlns='jabber:x:data'><field/></x></message>"
        );
        assert_eq!(
            s.child("body", ns::SERVER).map(|b| b.text()),
            Some("hi".into())
        );
        assert_eq!(to_client_ns(s), el);
    }

    #[test]
    fn forwarded_client_stanzas_keep_their_namespace() {
        // XEP-0297: a forwarded message stays jabber:client on any stream.
        let inner = Element::new("message", ns::CLIENT)
            .with_child(Element::new("body", ns::CLIENT).with_text("x"));
        let el = Element::new("message", ns::CLIENT)
            .with_child(Element::new("forwarded", "urn:xmpp:forward:0").with_child(inner.clone()));
        let s = to_server_ns(el.clone());
        let fwd = s.child("forwarded", "urn:xmpp:forward:0").unwrap();
        assert_eq!(fwd.child("message", ns::CLIENT), Some(&inner));
        assert!(
            s.to_xml_in(ns::SERVER)
                .contains("<message xmlns='jabber:client'>")
        );
        assert_eq!(to_client_ns(s), el);
    }
}
