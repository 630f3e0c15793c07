//! What an operator's monitoring scrapes: one Prometheus registry per
//! server, rendered in the OpenMetrics text format (what Prometheus scrapes) at `/metrics`.
//!
//! `prometheus-client` rather than the `metrics` facade: its registry is a
//! value owned by [`Server`](crate::Server), not a process-wide global, so
//! two servers in one process (the in-process integration tests) keep
//! separate numbers, and every metric is a typed field here, where the
//! whole vocabulary can be read in one file.
//!
//! Counters move where events happen (a log line usually goes with them);
//! gauges of state the server already keeps (bound sessions, queue depths,
//! MUC rooms) are read when scraped, so the hot paths pay nothing for them.
//! Every label takes values from a closed set, so no client can make a
//! label series per value it sends.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::router::Server;
use crate::session::SessionFlag;

mod sharded;
pub use sharded::ShardedCounter;

/// The `Content-Type` of [`render`]'s output: OpenMetrics text, which
/// Prometheus scrapes natively (the older text format has no `info` type).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of stanza counters: its kind and which side of the server it
/// came from or went to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StanzaLabels {
    /// `message`, `presence`, `iq` or `other`.
    pub kind: &'static str,
    /// `c2s` or `s2s`.
    pub peer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    pub mechanism: &'static str,
    /// `success` or `failure`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct S2sLabels {
    /// `in` or `out`.
    pub direction: &'static str,
    /// `dialback` or `sasl_external`.
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    /// `tcp`, `websocket`, `bosh`.
    pub transport: &'static str,
    /// `active`, `inactive` (XEP-0352) or `detached` (XEP-0198, waiting
    /// to be resumed).
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// `c2s` (sessions' outbound queues) or `s2s` (domain pairs' queues).
    pub queue: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageLabels {
    /// The store trait (`accounts`, `roster`, …).
    pub store: &'static str,
    /// The operation, one of a fixed list per store.
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabel {
    /// A configured service domain (never a remote one).
    pub domain: String,
}

/// Labels of the TURN relay counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TurnDirection {
    /// `to_peer` or `from_peer`.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TurnReason {
    /// Dropped datagrams: `bandwidth` or `peer_refused`; refused
    /// requests: `quota`, `peer_refused` or `rate`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or `failure`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandoffLabels {
    /// `in` (a session resumed here from another node) or `out` (one of
    /// ours resumed on another node).
    pub direction: &'static str,
    /// `success` or `failure`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
}

pub(crate) type Histograms = Family<StorageLabels, Histogram, fn() -> Histogram>;

fn storage_histogram() -> Histogram {
    // 100 µs … about 3.3 s: SQLite on a local disk answers in the first
    // buckets; the last ones show a stalled disk or a locked database.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// A gauge read when scraped: a module registers a closure that sets it.
type Probe = Box<dyn Fn() + Send + Sync>;

/// The server's metrics, one field per metric; reached through
/// `Server::metrics` or `Cx::metrics`.
pub struct Metrics {
    registry: Registry,
    started: Instant,
    /// `waxwing_archive_write_failures_total`: messages that could not be
    /// written to a message archive (XEP-0313) and were delivered without
    /// being archived (see SECURITY.md, "Delivery guarantees").
    pub archive_write_failures: Counter,
    /// `waxwing_c2s_stalled_writes_total`: client connections dropped
    /// because one write blocked for `write_timeout_secs`.
    pub c2s_stalled_writes: Counter,
    /// `waxwing_queue_refusals_total`: stanzas a session refused because
    /// its queue was full (or it was closing), then delivered elsewhere,
    /// stored offline or bounced.
    pub queue_refusals: Counter,
    /// `waxwing_queue_overflows_total`: sessions closed because their
    /// outbound queue was full (they were not reading).
    pub queue_overflows: Counter,
    /// `waxwing_connections{listener}`: open connections per listener kind.
    pub connections: Family<ListenerLabel, Gauge>,
    /// `waxwing_stanzas_in_total{kind,peer}`: stanzas received from bound
    /// clients and authenticated peer servers. Sharded, like `stanzas_out`:
    /// every worker thread counts every stanza.
    pub stanzas_in: Family<StanzaLabels, ShardedCounter>,
    /// `waxwing_stanzas_out_total{kind,peer}`: stanzas written to clients
    /// and queued to peer servers.
    pub stanzas_out: Family<StanzaLabels, ShardedCounter>,
    /// The counters of `stanzas_in` and `stanzas_out`, created once.
    stanza_counters_in: StanzaCounters,
    stanza_counters_out: StanzaCounters,
    /// `waxwing_auth_total{mechanism,result}`: SASL exchanges by outcome.
    pub auth: Family<AuthLabels, Counter>,
    /// `waxwing_s2s_streams{direction,method}`: authenticated s2s streams.
    pub s2s_streams: Family<S2sLabels, Gauge>,
    /// `waxwing_storage_seconds{store,op}`: latency of the accounts, roster
    /// and offline stores' calls (`timed.rs`).
    pub storage_seconds: Histograms,
    /// `waxwing_muc_rooms{domain}`, `waxwing_muc_occupants{domain}`.
    pub muc_rooms: Family<DomainLabel, Gauge>,
    pub muc_occupants: Family<DomainLabel, Gauge>,
    /// `waxwing_turn_allocations`: TURN allocations held now.
    pub turn_allocations: Gauge,
    /// `waxwing_turn_relayed_bytes_total{direction}`.
    turn_relayed: Family<TurnDirection, Counter>,
    /// `waxwing_turn_dropped_datagrams_total{reason}`.
    turn_dropped: Family<TurnReason, Counter>,
    /// `waxwing_turn_refused_requests_total{reason}`.
    turn_refused: Family<TurnReason, Counter>,
    /// `waxwing_acme_orders_total{result}`: ACME certificate orders
    /// (issuance and renewal) by outcome; failures are retried with backoff.
    acme_orders: Family<ResultLabel, Counter>,
    /// `waxwing_cluster_handoffs_total{direction,result}`: XEP-0198
    /// sessions resumed on a node other than the one holding them.
    cluster_handoffs: Family<HandoffLabels, Counter>,
    sessions: Family<SessionLabels, Gauge>,
    /// `waxwing_certificate_not_after_seconds{domain}`: when each served
    /// certificate expires (Unix seconds), read from the certificate store.
    certificate_not_after: Family<DomainLabel, Gauge>,
    queued: Family<QueueLabel, Gauge>,
    s2s_routes: Gauge,
    uptime: Gauge<f64, AtomicU64>,
    probes: Mutex<Vec<Probe>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("waxwing");
        let m = Metrics {
            registry: Registry::default(),
            started: Instant::now(),
            archive_write_failures: Counter::default(),
            c2s_stalled_writes: Counter::default(),
            queue_refusals: Counter::default(),
            queue_overflows: Counter::default(),
            connections: Family::default(),
            stanzas_in: Family::default(),
            stanzas_out: Family::default(),
            stanza_counters_in: StanzaCounters::default(),
            stanza_counters_out: StanzaCounters::default(),
            auth: Family::default(),
            s2s_streams: Family::default(),
            storage_seconds: Family::new_with_constructor(storage_histogram),
            muc_rooms: Family::default(),
            muc_occupants: Family::default(),
            turn_allocations: Gauge::default(),
            turn_relayed: Family::default(),
            turn_dropped: Family::default(),
            turn_refused: Family::default(),
            acme_orders: Family::default(),
            cluster_handoffs: Family::default(),
            sessions: Family::default(),
            certificate_not_after: Family::default(),
            queued: Family::default(),
            s2s_routes: Gauge::default(),
            uptime: Gauge::default(),
            probes: Mutex::new(Vec::new()),
        };
        r.register(
            "build",
            "Version and git revision of the running binary",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                revision: crate::BUILD_REVISION,
            }),
        );
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let start_gauge = Gauge::<f64, AtomicU64>::default();
        start_gauge.set(start);
        r.register(
            "start_time_seconds",
            "Start of the process, seconds since the Unix epoch",
            start_gauge,
        );
        r.register(
            "uptime_seconds",
            "Seconds since the server started",
            m.uptime.clone(),
        );
        r.register(
            "archive_write_failures",
            "Messages delivered without being archived because the archive write failed",
            m.archive_write_failures.clone(),
        );
        r.register(
            "c2s_stalled_writes",
            "Client connections dropped because a write stalled for write_timeout_secs",
            m.c2s_stalled_writes.clone(),
        );
        r.register(
            "queue_refusals",
            "Stanzas a full or closing session queue refused (delivered elsewhere, stored or bounced)",
            m.queue_refusals.clone(),
        );
        r.register(
            "queue_overflows",
            "Sessions closed because their outbound queue was full",
            m.queue_overflows.clone(),
        );
        r.register(
            "queued_stanzas",
            "Entries waiting in outbound queues, summed over sessions or s2s routes",
            m.queued.clone(),
        );
        r.register(
            "connections",
            "Open connections by listener",
            m.connections.clone(),
        );
        r.register(
            "sessions",
            "Bound client sessions by transport and state",
            m.sessions.clone(),
        );
        r.register(
            "stanzas_in",
            "Stanzas received from bound clients (c2s) and peer servers (s2s)",
            m.stanzas_in.clone(),
        );
        r.register(
            "stanzas_out",
            "Stanzas written to clients (c2s) and queued to peer servers (s2s)",
            m.stanzas_out.clone(),
        );
        r.register(
            "auth",
            "SASL authentications by mechanism and result",
            m.auth.clone(),
        );
        r.register(
            "s2s_streams",
            "Authenticated server-to-server streams by direction and method",
            m.s2s_streams.clone(),
        );
        r.register(
            "s2s_routes",
            "Domain pairs with an outgoing route",
            m.s2s_routes.clone(),
        );
        r.register(
            "storage_seconds",
            "Latency of storage calls",
            m.storage_seconds.clone(),
        );
        r.register(
            "certificate_not_after_seconds",
            "Expiry of the certificate served for each name, seconds since the Unix epoch",
            m.certificate_not_after.clone(),
        );
        r.register(
            "muc_rooms",
            "Group chat rooms in memory",
            m.muc_rooms.clone(),
        );
        r.register(
            "muc_occupants",
            "Occupants of group chat rooms",
            m.muc_occupants.clone(),
        );
        r.register(
            "turn_allocations",
            "TURN allocations held now",
            m.turn_allocations.clone(),
        );
        r.register(
            "turn_relayed_bytes",
            "Bytes relayed by the built-in TURN server, by direction",
            m.turn_relayed.clone(),
        );
        r.register(
            "turn_dropped_datagrams",
            "Relayed datagrams dropped over a bandwidth limit or for a refused peer",
            m.turn_dropped.clone(),
        );
        r.register(
            "turn_refused_requests",
            "TURN requests refused for the allocation quota or a refused peer address",
            m.turn_refused.clone(),
        );
        r.register(
            "acme_orders",
            "ACME certificate orders (issuance and renewal) by result",
            m.acme_orders.clone(),
        );
        for result in ["success", "failure"] {
            let _ = m.acme_orders.get_or_create(&ResultLabel { result });
        }
        r.register(
            "cluster_handoffs",
            "XEP-0198 sessions resumed on another cluster node, by direction and result",
            m.cluster_handoffs.clone(),
        );
        for direction in ["in", "out"] {
            for result in ["success", "failure"] {
                let _ = m
                    .cluster_handoffs
                    .get_or_create(&HandoffLabels { direction, result });
            }
        }
        // Zero series from the start, so that dashboards and alerts see
        // "none" rather than "no data" before the first federation.
        for direction in ["in", "out"] {
            for method in ["dialback", "sasl_external"] {
                let _ = m
                    .s2s_streams
                    .get_or_create(&S2sLabels { direction, method });
            }
        }
        Metrics {
            registry: r,
            stanza_counters_in: StanzaCounters::of(&m.stanzas_in),
            stanza_counters_out: StanzaCounters::of(&m.stanzas_out),
            ..m
        }
    }

    /// Counts a stanza received from a bound client (`peer` = `c2s`) or a
    /// peer server (`s2s`).
    pub fn stanza_in(&self, name: &str, peer: &'static str) {
        self.stanza_counters_in.get(name, peer).inc();
    }

    /// Counts a stanza written to a client or queued to a peer server.
    pub fn stanza_out(&self, name: &str, peer: &'static str) {
        self.stanza_counters_out.get(name, peer).inc();
    }

    /// Counts `n` stanzas named `name` written at once: one atomic add per
    /// run of a batch rather than one per stanza.
    pub fn stanzas_out(&self, name: &str, peer: &'static str, n: u64) {
        if n > 0 {
            self.stanza_counters_out.get(name, peer).inc_by(n);
        }
    }

    /// Counts one session handoff between cluster nodes: `direction` `in`
    /// (resumed here) or `out` (given to another node).
    pub fn cluster_handoff(&self, direction: &'static str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.cluster_handoffs
            .get_or_create(&HandoffLabels { direction, result })
            .inc();
    }

    /// Counts one ACME order by its `result` (`success` or `failure`).
    pub fn acme_order(&self, result: &'static str) {
        self.acme_orders
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts one SASL outcome; a mechanism we do not offer counts as `other`.
    pub fn auth(&self, mechanism: Option<&str>, ok: bool) {
        self.auth
            .get_or_create(&AuthLabels {
                mechanism: known_mechanism(mechanism),
                result: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    /// Counts a connection on `listener` for as long as the guard lives.
    pub fn connection(&self, listener: &'static str) -> GaugeGuard {
        GaugeGuard::new(
            self.connections
                .get_or_create_owned(&ListenerLabel { listener }),
        )
    }

    /// Counts an authenticated s2s stream for as long as the guard lives.
    pub fn s2s_stream(&self, direction: &'static str, method: &'static str) -> GaugeGuard {
        GaugeGuard::new(
            self.s2s_streams
                .get_or_create_owned(&S2sLabels { direction, method }),
        )
    }

    /// The relayed-bytes counter of one direction (`to_peer`, `from_peer`).
    pub fn turn_relayed_bytes(&self, direction: &'static str) -> Counter {
        self.turn_relayed
            .get_or_create_owned(&TurnDirection { direction })
    }

    /// The dropped-datagrams counter of one reason.
    pub fn turn_dropped(&self, reason: &'static str) -> Counter {
        self.turn_dropped
            .get_or_create_owned(&TurnReason { reason })
    }

    /// The refused-requests counter of one reason.
    pub fn turn_refused(&self, reason: &'static str) -> Counter {
        self.turn_refused
            .get_or_create_owned(&TurnReason { reason })
    }

    /// Runs `probe` before every scrape, to set gauges from state a
    /// module keeps (MUC rooms …). It must be quick and must not block.
    pub fn on_scrape(&self, probe: impl Fn() + Send + Sync + 'static) {
        self.probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(probe));
    }
}

/// Increments a gauge now and decrements it when dropped.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(g: Gauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

const STANZA_KINDS: [&str; 4] = ["message", "presence", "iq", "other"];
const STANZA_PEERS: [&str; 2] = ["c2s", "s2s"];

/// Every (kind, peer) series of one stanza family, created up front: the
/// counters are bumped for every stanza, so they are reached by index
/// rather than by a label lookup under the family's lock each time (and
/// the series read zero, not "no data", before the first stanza).
#[derive(Default)]
struct StanzaCounters([ShardedCounter; STANZA_KINDS.len() * STANZA_PEERS.len()]);

impl StanzaCounters {
    fn of(family: &Family<StanzaLabels, ShardedCounter>) -> Self {
        StanzaCounters(std::array::from_fn(|i| {
            let labels = StanzaLabels {
                kind: STANZA_KINDS[i % STANZA_KINDS.len()],
                peer: STANZA_PEERS[i / STANZA_KINDS.len()],
            };
            family.get_or_create(&labels).clone()
        }))
    }

    fn get(&self, name: &str, peer: &str) -> &ShardedCounter {
        debug_assert!(STANZA_PEERS.contains(&peer), "unknown stanza peer {peer}");
        let peer = usize::from(peer == STANZA_PEERS[1]);
        &self.0[peer * STANZA_KINDS.len() + stanza_kind_index(name)]
    }
}

fn stanza_kind_index(name: &str) -> usize {
    match name {
        "message" => 0,
        "presence" => 1,
        "iq" => 2,
        _ => 3,
    }
}

pub(crate) fn stanza_kind(name: &str) -> &'static str {
    STANZA_KINDS[stanza_kind_index(name)]
}

fn known_mechanism(m: Option<&str>) -> &'static str {
    const KNOWN: &[&str] = &[
        "PLAIN",
        "SCRAM-SHA-1",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-512",
        "SCRAM-SHA-512-PLUS",
        "EXTERNAL",
        "HT-SHA-256-NONE",
        "HT-SHA-256-ENDP",
        "HT-SHA-256-EXPR",
        "HT-SHA-256-UNIQ",
    ];
    m.and_then(|m| KNOWN.iter().find(|k| **k == m).copied())
        .unwrap_or("other")
}

/// `GET /metrics` on the HTTP listener.
pub(crate) fn routes() -> axum::Router<Arc<Server>> {
    axum::Router::new().route("/metrics", axum::routing::get(scrape))
}

/// Answers only peers `[metrics]` allows (loopback unless configured
/// otherwise); everyone else gets 404, as if there were no such path.
async fn scrape(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let m = &server.config.metrics;
    if !m.enabled || !m.access.allows(peer.ip()) {
        return StatusCode::NOT_FOUND.into_response();
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&server)).into_response()
}

/// The OpenMetrics text exposition of `server`'s metrics, with the gauges
/// read at scrape time brought up to date first.
pub fn render(server: &Server) -> String {
    let m = &server.metrics;
    m.uptime.set(m.started.elapsed().as_secs_f64());

    let mut counts: std::collections::HashMap<SessionLabels, i64> = Default::default();
    let mut c2s_queued = 0i64;
    for s in server.sessions.all() {
        let state = if s.flag(SessionFlag::Detached) {
            "detached"
        } else if s.flag(SessionFlag::Inactive) {
            "inactive"
        } else {
            "active"
        };
        *counts
            .entry(SessionLabels {
                transport: s.transport().name(),
                state,
            })
            .or_default() += 1;
        c2s_queued += s.queued() as i64;
    }
    // Every combination is written, zeros too: a series that vanishes when
    // its count drops to zero breaks rate() and alerts.
    for transport in crate::session::Transport::ALL {
        for state in ["active", "inactive", "detached"] {
            let labels = SessionLabels {
                transport: transport.name(),
                state,
            };
            let n = counts.get(&labels).copied().unwrap_or(0);
            m.sessions.get_or_create(&labels).set(n);
        }
    }
    let (routes, s2s_queued) = server.s2s.route_stats();
    m.s2s_routes.set(routes as i64);
    m.queued
        .get_or_create(&QueueLabel { queue: "c2s" })
        .set(c2s_queued);
    m.queued
        .get_or_create(&QueueLabel { queue: "s2s" })
        .set(s2s_queued as i64);
    // A renewal (file change, reload, ACME) shows at the next scrape.
    for c in server.tls.certificates().status() {
        let secs = c
            .info
            .not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        m.certificate_not_after
            .get_or_create(&DomainLabel { domain: c.name })
            .set(secs);
    }
    for probe in m.probes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        probe();
    }

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &m.registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_closed_sets() {
        assert_eq!(stanza_kind("message"), "message");
        assert_eq!(stanza_kind("x".repeat(100).as_str()), "other");
        assert_eq!(known_mechanism(Some("SCRAM-SHA-256")), "SCRAM-SHA-256");
        assert_eq!(known_mechanism(Some("EVIL-<script>")), "other");
        assert_eq!(known_mechanism(None), "other");
    }

    /// The sharded stanza counters export the same series and totals a
    /// plain counter would: every kind and peer, zeros included, summed
    /// over the threads that counted.
    #[test]
    fn stanza_counters_export_totals_from_every_thread() {
        let m = Metrics::new();
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    m.stanza_in("message", "c2s");
                    m.stanza_in("iq", "s2s");
                    m.stanzas_out("message", "c2s", 2);
                });
            }
        });
        m.stanza_in("x-unknown", "c2s");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        for line in [
            "# TYPE waxwing_stanzas_in counter",
            "waxwing_stanzas_in_total{kind=\"message\",peer=\"c2s\"} 3",
            "waxwing_stanzas_in_total{kind=\"iq\",peer=\"s2s\"} 3",
            "waxwing_stanzas_in_total{kind=\"other\",peer=\"c2s\"} 1",
            "waxwing_stanzas_in_total{kind=\"presence\",peer=\"s2s\"} 0",
            "waxwing_stanzas_out_total{kind=\"message\",peer=\"c2s\"} 6",
            "waxwing_stanzas_out_total{kind=\"message\",peer=\"s2s\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
        }
    }

    #[test]
    fn gauge_guard_counts_while_alive() {
        let m = Metrics::new();
        let a = m.connection("c2s");
        let b = m.connection("c2s");
        let g = || {
            m.connections
                .get_or_create(&ListenerLabel { listener: "c2s" })
                .get()
        };
        assert_eq!(g(), 2);
        drop(a);
        assert_eq!(g(), 1);
        drop(b);
        assert_eq!(g(), 0);
    }
}
