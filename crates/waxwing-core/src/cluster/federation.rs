//! Federation in a cluster.
//!
//! - Outgoing: one s2s stream per (local domain, remote domain) pair for
//!   the whole cluster. The pair is a lease like a room
//!   ([`super::ownership::Key::S2s`]): the first node with a stanza for
//!   the remote domain takes it and opens the stream; the others forward
//!   their stanzas for that domain to it over the cluster transport. A
//!   remote server thus sees one stream per pair, as from a single server
//!   (XEP-0288 bidirectional use and its rate limits keep working). When
//!   Redis cannot be reached, a node sends from itself rather than holding
//!   mail back: two streams for a pair are allowed by RFC 6120 §8.1.
//! - Incoming: a peer may connect to any node (DNS names them all); its
//!   stanzas are routed there through the session registry like a local
//!   client's.
//! - Dialback (XEP-0220): the peer checks a key by connecting back to our
//!   domain, reaching any node, so every node needs the same secret.
//!   `[s2s] secret` set identically on every node does it; left unset,
//!   the nodes share one in Redis (`wx:dialback`, the HMAC key derived
//!   from a secret): the first node puts its own (`SET NX`), every node
//!   uses what is there, and does so again every heartbeat, so that after
//!   Redis restarted empty they agree again within one heartbeat (the
//!   first to look puts back the key all of them use). A key a peer checks
//!   across such a change may fail once; the peer dials back again.

use std::sync::Arc;

use crate::Server;
use crate::s2s::dialback::DialbackSecret;

/// The Redis key of the shared dialback secret.
pub(crate) const KEY_DIALBACK: &str = "wx:dialback";

/// Puts the key this node uses in Redis unless one is there, and uses the
/// one there. What is shared is the HMAC key derived from a secret, which
/// is all a node needs to make and check dialback keys.
async fn share_dialback_secret(
    server: &Arc<Server>,
    conn: &mut redis::aio::ConnectionManager,
) -> redis::RedisResult<()> {
    let mine = server.s2s.secret().hmac_key().to_string();
    let (shared,): (String,) = redis::pipe()
        .cmd("SET")
        .arg(KEY_DIALBACK)
        .arg(&mine)
        .arg("NX")
        .ignore()
        .get(KEY_DIALBACK)
        .query_async(conn)
        .await?;
    if shared != mine {
        match DialbackSecret::from_hmac_key(&shared) {
            Some(secret) => {
                tracing::info!("cluster: using the dialback secret shared in Redis");
                server.s2s.set_secret(secret);
            }
            None => {
                tracing::error!("cluster: {KEY_DIALBACK} in Redis is not a dialback key; ignored")
            }
        }
    }
    Ok(())
}

/// Shares the dialback secret at start and keeps it in step (and in
/// Redis) every heartbeat, until shutdown. Nothing to do when
/// `[s2s] secret` is configured: every node has it.
pub(crate) async fn dialback_loop(server: Arc<Server>) {
    let c = server.cluster.as_ref().expect("cluster mode");
    if server.config.s2s.secret.is_some() {
        return;
    }
    let mut tick = tokio::time::interval(c.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = server.shutdown.cancelled() => return,
        }
        let mut conn = c.conn();
        if let Err(e) = share_dialback_secret(&server, &mut conn).await {
            tracing::debug!(error = %e, "cluster: could not share the dialback secret now");
        }
    }
}

/// Shares the secret before the node takes traffic (start-up).
pub(crate) async fn share_at_start(
    server: &Arc<Server>,
    conn: &mut redis::aio::ConnectionManager,
) -> redis::RedisResult<()> {
    if server.config.s2s.secret.is_some() {
        return Ok(());
    }
    share_dialback_secret(server, conn).await
}
