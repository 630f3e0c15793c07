//! `waxwing cluster status`: what Redis says about the cluster, read
//! without a running node.

use redis::AsyncCommands;

use super::{ClusterError, key_cursor, key_heartbeat, key_nodes, key_registry, key_stream};
use crate::config::ClusterConfig;

/// One node as Redis sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    pub node: String,
    /// Its heartbeat is current.
    pub alive: bool,
    /// Milliseconds until its heartbeat expires (`None`: expired).
    pub heartbeat_ttl_ms: Option<u64>,
    /// Sessions it has published.
    pub sessions: u64,
    /// Envelopes in its stream not yet trimmed (about what it has not read).
    pub stream_lag: u64,
    /// The last stream entry it processed.
    pub cursor: Option<String>,
}

/// Reads every known node's state.
pub async fn status(config: &ClusterConfig) -> Result<Vec<NodeStatus>, ClusterError> {
    let client = redis::Client::open(config.redis_url.as_str())?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(super::RESPONSE_TIMEOUT))
        .set_response_timeout(Some(super::RESPONSE_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    let mut nodes: Vec<String> = conn.smembers(key_nodes()).await?;
    nodes.sort();
    let mut out = Vec::new();
    for node in nodes {
        let (ttl, sessions, len, cursor): (i64, u64, u64, Option<String>) = redis::pipe()
            .pttl(key_heartbeat(&node))
            .hlen(key_registry(&node))
            .xlen(key_stream(&node))
            .get(key_cursor(&node))
            .query_async(&mut conn)
            .await?;
        // XTRIM MINID keeps the last processed entry.
        let stream_lag = if cursor.is_some() {
            len.saturating_sub(1)
        } else {
            len
        };
        out.push(NodeStatus {
            alive: ttl > 0,
            heartbeat_ttl_ms: u64::try_from(ttl).ok().filter(|t| *t > 0),
            node,
            sessions,
            stream_lag,
            cursor,
        });
    }
    Ok(out)
}
