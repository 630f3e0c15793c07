//! `[cluster]`: several nodes sharing one PostgreSQL database and one Redis
//! (see `crate::cluster`).

use std::time::Duration;

use super::{ConfigError, raw};

/// A validated `[cluster]` table; `None` in [`super::Config`] on a single node.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port/[db]` (or `rediss://` for TLS).
    pub redis_url: String,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// How often this node renews its heartbeat key.
    pub heartbeat: Duration,
    /// A node whose heartbeat is this old is dead: its sessions are removed.
    pub dead_after: Duration,
    /// Entries a node's inbound stream keeps at most (Redis `MAXLEN ~`).
    pub stream_max_len: usize,
    /// `host:port` clients can reach this very node at: sent as the
    /// XEP-0198 `location` of resumable sessions, so that a client resumes
    /// where its session is.
    pub advertise: Option<String>,
}

/// Whether `s` is a `host:port` (or `[v6]:port`) fit for an XML attribute
/// or a `<see-other-host/>`: letters, digits, `.-:[]`, at most 255 bytes.
pub fn is_host_port(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// Longest node name: it is part of every Redis key the node owns.
const MAX_NODE_NAME: usize = 64;

pub(super) fn cluster_config(
    c: &raw::Cluster,
    database_url: &str,
    source: &str,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let err = |key: &str, message: String| ConfigError::in_table(source, "cluster", key, message);
    let Some(url) = &c.redis else {
        if c.node.is_some() {
            return Err(err(
                "node",
                "[cluster] node is set but redis is not: a cluster needs both".into(),
            ));
        }
        return Ok(None);
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        // The scheme only: the rest may hold a password.
        let scheme = url.split(':').next().unwrap_or_default();
        return Err(err(
            "redis",
            format!(
                "unsupported Redis URL scheme {scheme:?}: expected redis://HOST:PORT/ or rediss://"
            ),
        ));
    }
    if redis::Client::open(url.as_str()).is_err() {
        return Err(err(
            "redis",
            "[cluster] redis is not a valid Redis URL".into(),
        ));
    }
    let Some(node) = &c.node else {
        return Err(err(
            "redis",
            "[cluster] redis is set but node is not: every node needs a unique name".into(),
        ));
    };
    let valid = !node.is_empty()
        && node.len() <= MAX_NODE_NAME
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(err(
            "node",
            format!("node name {node:?}: 1 to {MAX_NODE_NAME} letters, digits, '-', '_' or '.'"),
        ));
    }
    if waxwing_store::Backend::of_url(database_url) != Some(waxwing_store::Backend::Postgres) {
        return Err(err(
            "redis",
            "a cluster needs [storage] database = \"postgres://…\": every node must see the \
             same accounts, rosters and archives (SQLite and memory are local to one node)"
                .into(),
        ));
    }
    if c.dead_after_secs < 2 * c.heartbeat_secs {
        return Err(err(
            "dead_after_secs",
            format!(
                "dead_after_secs ({}) must be at least twice heartbeat_secs ({}): one late \
                 heartbeat must not make a live node dead",
                c.dead_after_secs, c.heartbeat_secs
            ),
        ));
    }
    if let Some(a) = &c.advertise
        && !is_host_port(a)
    {
        return Err(err(
            "advertise",
            format!("advertise {a:?}: expected host:port (or [IPv6]:port)"),
        ));
    }
    Ok(Some(ClusterConfig {
        advertise: c.advertise.clone(),
        redis_url: url.clone(),
        node: node.clone(),
        heartbeat: Duration::from_secs(c.heartbeat_secs),
        dead_after: Duration::from_secs(c.dead_after_secs),
        stream_max_len: c.stream_max_len,
    }))
}
