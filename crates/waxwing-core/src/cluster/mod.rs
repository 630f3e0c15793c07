//! Cluster mode: several nodes serving the same hosts, with the session
//! registry and the cross-node transport in Redis (PostgreSQL holds
//! everything persistent). `None` in `Server::cluster` on a single node, so
//! single-node paths cost nothing.
//!
//! - [`replica`]: every node keeps a copy of the others' sessions (JID,
//!   priority, last presence, flags), so the router and the modules see
//!   remote sessions through the ordinary `SessionRegistry` as handles
//!   whose queue is the cluster link. Modules do not know.
//! - [`publish`]: this node's sessions, written to its Redis hash and
//!   announced on a channel whenever their routing state changes.
//! - [`transport`]: one Redis Stream per node (`wx:in:<node>`), written by
//!   one task per sender node in order, read by the owner with
//!   `XREAD BLOCK`; [`envelope`] de-duplicates, so a session gets each
//!   stanza once and a sender's stanzas in order.
//! - [`membership`]: heartbeats (a key with a TTL per node) and the removal
//!   of a dead node's sessions by a survivor, which also tells the dead
//!   sessions' contacts they went offline and stores what was on its way
//!   to them as offline messages.
//! - [`handoff`]: XEP-0198 resumption of a session held by another node
//!   (the session's state moves over the two nodes' streams).
//!
//! Where the work is done: a stanza is routed, with the `Inbound` hooks
//! (MAM archiving, blocking, the presence engine), on the node where it
//! entered (the sender's); only the delivery to a session on another node
//! crosses Redis. So everything acknowledged to a sender is in PostgreSQL
//! (archive, offline store) before the hop, and an envelope lost with
//! Redis or with a dead node is still in the recipient's archive.
//!
//! Redis keys (all under `wx:`): `wx:nodes` (set of node names),
//! `wx:node:<n>` (heartbeat, value the incarnation, TTL `dead_after`),
//! `wx:reg:<n>` (hash: session id → [`replica::Record`] JSON), channel
//! `wx:reg` ([`replica::Event`] JSON), `wx:in:<n>` (stream of
//! [`envelope::Envelope`]s), `wx:cursor:<n>` (the last entry `n` has
//! processed), `wx:reap:<n>` (the lock of the survivor removing dead `n`),
//! `wx:lease:<kind>:…` (who owns a room, a pubsub node or an s2s route:
//! [`ownership`]) and `wx:leases:<n>` (the set of `n`'s leases).

pub mod envelope;
pub mod federation;
pub mod handoff;
pub mod membership;
pub mod ownership;
pub mod publish;
pub mod replica;
pub mod status;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use waxwing_proto::jid::FullJid;
use waxwing_proto::stanza::StreamError;
use waxwing_proto::xml::Element;

pub use envelope::{Body, Envelope};
pub use publish::Publisher;
pub use replica::Replica;

use crate::config::ClusterConfig;

/// How long a module's write waits for Redis to take its announcement.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(1);

/// Envelopes waiting for the sender task. While Redis is unreachable they
/// wait here; once it is full, remote sessions refuse stanzas and the
/// router treats them as gone (other resources, offline storage).
const OUTGOING_CAPACITY: usize = 16_384;

/// How long one Redis command may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The message never contains the URL (it may hold a password).
    #[error("Redis: {0}")]
    Redis(String),
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        // The error's own text names the command or the I/O failure, not the URL.
        ClusterError::Redis(e.to_string())
    }
}

pub(crate) fn key_nodes() -> &'static str {
    "wx:nodes"
}
pub(crate) fn key_heartbeat(node: &str) -> String {
    format!("wx:node:{node}")
}
pub(crate) fn key_registry(node: &str) -> String {
    format!("wx:reg:{node}")
}
pub(crate) const CHANNEL: &str = "wx:reg";
pub(crate) fn key_stream(node: &str) -> String {
    format!("wx:in:{node}")
}
pub(crate) fn key_cursor(node: &str) -> String {
    format!("wx:cursor:{node}")
}
pub(crate) fn key_reap(node: &str) -> String {
    format!("wx:reap:{node}")
}

/// What a remote session's handle hands its stanzas to: the queue of the
/// task that writes envelopes to the other nodes' streams.
#[derive(Debug, Clone)]
pub struct Link {
    tx: Option<mpsc::Sender<Outgoing>>,
    /// This node's name, for [`tag_request`].
    me: Arc<str>,
}

/// One envelope body for one node, before its sequence number.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) node: Arc<str>,
    pub(crate) body: Body,
}

impl Link {
    fn new(me: &str) -> (Link, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(OUTGOING_CAPACITY);
        (
            Link {
                tx: Some(tx),
                me: me.into(),
            },
            rx,
        )
    }

    /// A link that refuses everything (tests).
    #[cfg(test)]
    pub(crate) fn detached() -> Link {
        Link {
            tx: None,
            me: "test".into(),
        }
    }

    /// Queues `stanzas` for session `sid` (`to`) on `node`, without waiting;
    /// they come back when the queue is full.
    pub(crate) fn deliver(
        &self,
        node: &Arc<str>,
        to: &FullJid,
        sid: u64,
        stanzas: Vec<Element>,
    ) -> Result<(), Vec<Element>> {
        let Some(permit) = self.tx.as_ref().and_then(|tx| tx.try_reserve().ok()) else {
            tracing::debug!(%node, "cluster link full: a remote session refuses a stanza");
            return Err(stanzas);
        };
        permit.send(Outgoing {
            node: node.clone(),
            body: Body::Deliver {
                to: to.to_string(),
                sid,
                stanzas: stanzas
                    .into_iter()
                    .map(|s| tag_request(&self.me, s).to_xml())
                    .collect(),
            },
        });
        Ok(())
    }

    /// Queues any body for its node, without waiting; it comes back when
    /// the queue is full.
    pub(crate) fn send(&self, o: Outgoing) -> Result<(), Outgoing> {
        match &self.tx {
            Some(tx) => tx.try_send(o).map_err(|e| e.into_inner()),
            None => Err(o),
        }
    }

    /// Asks `node` to end session `sid` with `err`.
    pub(crate) fn close(&self, node: &Arc<str>, to: &FullJid, sid: u64, err: &StreamError) {
        let sent = self.tx.as_ref().is_some_and(|tx| {
            tx.try_send(Outgoing {
                node: node.clone(),
                body: Body::Close {
                    to: to.to_string(),
                    sid,
                    condition: err.condition.as_str().to_string(),
                    text: err.text.clone(),
                },
            })
            .is_ok()
        });
        if !sent {
            tracing::warn!(%node, jid = %to, "cluster link full: could not close a remote session");
        }
    }
}

/// The prefix of a request id tagged by [`tag_request`].
const TAG: &str = "wxq~";

/// An IQ request from the server or one of its services (a `from` without
/// a local part: a caps query from `pubsub.<host>` …) to a session on
/// another node: its id names this node, so that the answer, which
/// arrives on the session's node, comes back here, where the request is
/// waited for ([`untag_response`]). Requests from accounts and rooms
/// (a local part) are answered wherever their `to` is served.
fn tag_request(me: &str, mut stanza: Element) -> Element {
    let from_server = stanza.attr("from").is_some_and(|f| !f.contains('@'));
    if stanza.name == "iq" && from_server && matches!(stanza.attr("type"), Some("get" | "set")) {
        let id = stanza.attr("id").unwrap_or_default();
        let tagged = format!("{TAG}{me}~{id}");
        stanza.set_attr("id", tagged);
    }
    stanza
}

/// For an IQ answer to a request [`tag_request`] tagged: the node that
/// sent the request, and the id it gave it.
pub(crate) fn untag_response(stanza: &Element) -> Option<(&str, &str)> {
    if stanza.name != "iq" || !matches!(stanza.attr("type"), Some("result" | "error")) {
        return None;
    }
    stanza.attr("id")?.strip_prefix(TAG)?.split_once('~')
}

/// The cluster's parts a server holds; built with the server, started by
/// [`Cluster::start`] once the server exists.
pub struct Cluster {
    pub config: ClusterConfig,
    /// This process's incarnation: a random id per start.
    pub incarnation: String,
    pub replica: Arc<Replica>,
    pub publisher: Arc<Publisher>,
    /// The leases (rooms, pubsub nodes, s2s routes) this node holds.
    pub ownership: ownership::Ownership,
    /// XEP-0198 sessions moving to or from this node.
    pub handoffs: handoff::Handoffs,
    /// The other nodes Redis listed at our last heartbeat.
    peers: std::sync::RwLock<Vec<String>>,
    outgoing: std::sync::Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// Set by [`Cluster::start`].
    conn: std::sync::OnceLock<redis::aio::ConnectionManager>,
    /// Set by [`Cluster::drain`]: the stream error new client streams get.
    drain: std::sync::OnceLock<StreamError>,
    pub(crate) stats: transport::Stats,
}

impl Cluster {
    pub fn new(config: ClusterConfig) -> Cluster {
        let (link, rx) = Link::new(&config.node);
        Cluster {
            incarnation: crate::random_id(),
            replica: Arc::new(Replica::new(&config.node, link)),
            publisher: Arc::new(Publisher::default()),
            ownership: ownership::Ownership::default(),
            handoffs: handoff::Handoffs::default(),
            peers: std::sync::RwLock::default(),
            outgoing: std::sync::Mutex::new(Some(rx)),
            conn: std::sync::OnceLock::new(),
            drain: std::sync::OnceLock::new(),
            stats: transport::Stats::default(),
            config,
        }
    }

    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// Whether `node` is another member of the cluster (as of our last
    /// heartbeat): a name taken from a stanza is checked here before
    /// anything is written to that node's stream.
    pub(crate) fn is_peer(&self, node: &str) -> bool {
        self.peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|n| n == node)
    }

    /// [`Self::is_peer`], asking Redis when `node` is not in the list of
    /// our last heartbeat: a node that joined since then (a client resuming
    /// at a node that has just started) is a member all the same.
    pub(crate) async fn is_peer_now(&self, node: &str) -> bool {
        if self.is_peer(node) {
            return true;
        }
        if node == self.node() {
            return false;
        }
        let Some(conn) = self.conn.get() else {
            return false;
        };
        let mut conn = conn.clone();
        let lookup = redis::AsyncCommands::smembers::<_, Vec<String>>(&mut conn, key_nodes());
        match tokio::time::timeout(RESPONSE_TIMEOUT, lookup).await {
            Ok(Ok(nodes)) => {
                let me = self.node().to_string();
                self.set_peers(nodes.into_iter().filter(|n| *n != me).collect());
                self.is_peer(node)
            }
            _ => false,
        }
    }

    pub(crate) fn set_peers(&self, nodes: Vec<String>) {
        *self
            .peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = nodes;
    }

    /// This node's view, for the admin API's stats: envelopes sent,
    /// received and dropped as repeats, and the other nodes' sessions it knows.
    pub fn stats_json(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        serde_json::json!({
            "node": self.node(),
            "envelopes_sent": self.stats.sent.load(Relaxed),
            "envelopes_received": self.stats.received.load(Relaxed),
            "envelopes_repeated": self.stats.duplicates.load(Relaxed),
            "remote_sessions": self.replica.counts(),
        })
    }

    /// Publishes a [`replica::Event::Changed`] on the registry channel and
    /// waits (at most [`ANNOUNCE_TIMEOUT`]) until Redis took it, so that
    /// the other nodes hear of the change before anything the caller sends
    /// next (an IQ result, a presence) reaches them through the streams. A
    /// failure is logged: the receivers' resubscription covers what they
    /// missed.
    pub(crate) async fn announce_change(&self, topic: &str, key: &str) {
        let Some(conn) = self.conn.get() else {
            return;
        };
        let mut conn = conn.clone();
        let ev = replica::Event::Changed {
            node: self.node().to_string(),
            topic: topic.to_string(),
            key: key.to_string(),
        };
        let payload = serde_json::to_string(&ev).expect("serializes");
        let publish = redis::AsyncCommands::publish::<_, _, i64>(&mut conn, CHANNEL, payload);
        match tokio::time::timeout(ANNOUNCE_TIMEOUT, publish).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, topic, "cluster: could not announce a change of shared data")
            }
            Err(_) => {
                tracing::warn!(
                    topic,
                    "cluster: announcing a change of shared data timed out"
                )
            }
        }
    }

    /// `[cluster] advertise`: where clients reach this node.
    pub fn advertise(&self) -> Option<&str> {
        self.config.advertise.as_deref()
    }

    pub(crate) fn conn(&self) -> redis::aio::ConnectionManager {
        self.conn.get().expect("cluster started").clone()
    }

    /// Connects to Redis (failing the start when it cannot), announces this
    /// incarnation, and starts the tasks: heartbeat, registry copy,
    /// publication of our sessions, the sender and the receiver.
    pub async fn start(server: &Arc<crate::Server>) -> Result<(), ClusterError> {
        let Some(c) = server.cluster.as_ref() else {
            return Ok(());
        };
        let client = redis::Client::open(c.config.redis_url.as_str())?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(Duration::from_secs(2));
        let mut conn = tokio::time::timeout(
            RESPONSE_TIMEOUT * 2,
            client.get_connection_manager_with_config(cfg),
        )
        .await
        .map_err(|_| ClusterError::Redis("no answer from the server".into()))??;
        membership::join(c, &mut conn).await?;
        federation::share_at_start(server, &mut conn).await?;
        let _ = c.conn.set(conn);
        let rx = c
            .outgoing
            .lock()
            .expect("outgoing lock")
            .take()
            .expect("started once");
        let shutdown = server.shutdown.clone();
        // The receiver and the registry copy outlive the listeners a little:
        // stanzas for our sessions still arrive while they say goodbye.
        tokio::spawn(transport::send_loop(server.clone(), rx));
        tokio::spawn(transport::receive_loop(server.clone(), client.clone()));
        tokio::spawn(publish::publish_loop(server.clone()));
        tokio::spawn(membership::watch_loop(server.clone(), client));
        tokio::spawn(membership::heartbeat_loop(server.clone(), shutdown));
        tokio::spawn(ownership::renew_loop(server.clone()));
        tokio::spawn(federation::dialback_loop(server.clone()));
        tracing::info!(node = c.node(), incarnation = %c.incarnation, "joined the cluster");
        Ok(())
    }

    /// Drains this node: clients are sent elsewhere, with
    /// `<see-other-host/>` naming `to` (`host` or `host:port`, RFC 6120
    /// §4.9.3.19) or, without one, `<system-shutdown/>` so that they
    /// reconnect through DNS or the load balancer, which no longer sends
    /// them here; new client streams get the same. Returns the sessions
    /// closed. The node keeps running (stanzas for other nodes' sessions
    /// still pass through it) until it is stopped.
    pub fn drain(server: &crate::Server, to: Option<&str>) -> usize {
        let Some(c) = &server.cluster else { return 0 };
        let err = match to {
            Some(to) => {
                StreamError::new(waxwing_proto::stanza::StreamCondition::SeeOtherHost).with_text(to)
            }
            None => StreamError::new(waxwing_proto::stanza::StreamCondition::SystemShutdown)
                .with_text("this node is being drained; connect again"),
        };
        let err = c.drain.get_or_init(|| err).clone();
        let sessions = server.sessions.all();
        for s in &sessions {
            s.close(err.clone());
        }
        tracing::info!(sessions = sessions.len(), "cluster: node drained");
        sessions.len()
    }

    /// While draining: the error a new client stream gets.
    pub(crate) fn draining(&self) -> Option<StreamError> {
        self.drain.get().cloned()
    }

    /// Leaves the cluster after a graceful stop: the others forget our
    /// sessions at once instead of waiting for `dead_after`.
    pub async fn leave(&self) {
        let Some(conn) = self.conn.get() else {
            return;
        };
        let mut conn = conn.clone();
        let r = async {
            ownership::release_all(self, &mut conn).await;
            membership::leave(self, &mut conn).await;
        };
        if tokio::time::timeout(RESPONSE_TIMEOUT, r).await.is_err() {
            tracing::warn!("could not leave the cluster in time; the others will time us out");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iq(ty: &str, from: &str, id: &str) -> Element {
        Element::new("iq", waxwing_proto::ns::CLIENT)
            .with_attr("type", ty)
            .with_attr("from", from)
            .with_attr("id", id)
    }

    #[test]
    fn requests_from_services_come_back_to_their_node() {
        let tagged = tag_request("n1", iq("get", "pubsub.example.org", "caps-1"));
        assert_eq!(tagged.attr("id"), Some("wxq~n1~caps-1"));
        let mut answer = iq("result", "bob@example.org/b", "wxq~n1~caps-1");
        assert_eq!(untag_response(&answer), Some(("n1", "caps-1")));
        // An id with the separator inside survives the round trip.
        let tagged = tag_request("n-2", iq("set", "example.org", "a~b"));
        answer.set_attr("id", tagged.attr("id").unwrap_or_default());
        assert_eq!(untag_response(&answer), Some(("n-2", "a~b")));
    }

    #[test]
    fn other_stanzas_are_left_alone() {
        // From an account or a room: answered wherever `to` is served.
        let t = tag_request("n1", iq("get", "alice@example.org/a", "x"));
        assert_eq!(t.attr("id"), Some("x"));
        // Answers and messages are not requests.
        let t = tag_request("n1", iq("result", "pubsub.example.org", "x"));
        assert_eq!(t.attr("id"), Some("x"));
        assert_eq!(
            untag_response(&iq("get", "bob@example.org/b", "wxq~n1~x")),
            None
        );
        assert_eq!(
            untag_response(&iq("result", "bob@example.org/b", "plain")),
            None
        );
    }
}
