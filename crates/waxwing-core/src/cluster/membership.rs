//! Who is in the cluster: heartbeats, the copy of the others' sessions,
//! and the removal of dead nodes.
//!
//! Each node renews `wx:node:<node>` (its incarnation, with a TTL of
//! `dead_after`) every `heartbeat`. Every node watches the others' keys; a
//! node whose key has been missing for `dead_after`, as seen by a node
//! that could reach Redis all that time, is dead. The first survivor to
//! take `wx:reap:<node>` (`SET NX` with a TTL: Redis' own primitive, no
//! consensus of ours) removes it: tells its sessions' contacts they are
//! offline (the presence engine's `SessionClosed`, run for each remote
//! handle), delivers what was still in its stream as to ended sessions
//! (offline storage), deletes its keys and announces `Dead`.
//!
//! When Redis restarts empty, every node finds its heartbeat key gone at
//! its next beat and publishes all its sessions again; the others rebuild
//! their copies when their subscription comes back. Nobody is taken for
//! dead meanwhile: the clock of a node's absence starts again whenever the
//! watcher itself could not reach Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::streams::StreamRangeReply;
use tokio_util::sync::CancellationToken;

use super::replica::{Event, Record};
use super::{
    CHANNEL, Cluster, ClusterError, key_cursor, key_heartbeat, key_nodes, key_reap, key_registry,
    key_stream,
};
use crate::Server;
use crate::hooks::Event as HookEvent;

/// Announces this incarnation: a previous one's sessions (this node was
/// killed) are dropped everywhere.
pub(super) async fn join(
    c: &Cluster,
    conn: &mut redis::aio::ConnectionManager,
) -> Result<(), ClusterError> {
    let me = c.node();
    let held: Option<String> = conn.get(key_heartbeat(me)).await?;
    if held.is_some() {
        // Either our previous life, killed less than dead_after ago, or
        // another process with the same name: the latter would fight us.
        tracing::warn!(
            node = me,
            "the heartbeat of node {me:?} is still alive: restarting after a crash, or another \
             node has the same name (every node needs its own)"
        );
    }
    let dead = Event::Dead {
        node: me.to_string(),
        keep: Some(c.incarnation.clone()),
    };
    redis::pipe()
        .del(key_registry(me))
        .ignore()
        .sadd(key_nodes(), me)
        .ignore()
        .set_options(
            key_heartbeat(me),
            &c.incarnation,
            redis::SetOptions::default()
                .with_expiration(redis::SetExpiry::PX(c.config.dead_after.as_millis() as u64)),
        )
        .ignore()
        .publish(CHANNEL, serde_json::to_string(&dead).expect("serializes"))
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// A graceful stop: the others drop our sessions now.
pub(super) async fn leave(c: &Cluster, conn: &mut redis::aio::ConnectionManager) {
    let me = c.node();
    let dead = Event::Dead {
        node: me.to_string(),
        keep: None,
    };
    let r = redis::pipe()
        .del(key_registry(me))
        .ignore()
        .del(key_heartbeat(me))
        .ignore()
        .srem(key_nodes(), me)
        .ignore()
        .publish(CHANNEL, serde_json::to_string(&dead).expect("serializes"))
        .ignore()
        .query_async::<()>(conn)
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "could not announce leaving the cluster");
    }
}

/// Renews our heartbeat and watches the others', until the server stops.
pub(crate) async fn heartbeat_loop(server: Arc<Server>, shutdown: CancellationToken) {
    let c = server.cluster.as_ref().expect("cluster mode");
    let me = c.node().to_string();
    let ttl = c.config.dead_after.as_millis() as u64;
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(c.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reachable = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let mut conn = c.conn();
        let beat: redis::RedisResult<(Option<String>, (), Vec<String>)> = redis::pipe()
            .cmd("SET")
            .arg(key_heartbeat(&me))
            .arg(&c.incarnation)
            .arg("PX")
            .arg(ttl)
            .arg("GET")
            .sadd(key_nodes(), &me)
            .ignore()
            .smembers(key_nodes())
            .query_async(&mut conn)
            .await
            .map(|(old, nodes): (Option<String>, Vec<String>)| (old, (), nodes));
        let (old, (), nodes) = match beat {
            Ok(b) => b,
            Err(e) => {
                if reachable {
                    tracing::warn!(error = %e, "cluster: heartbeat failed (Redis unreachable?)");
                }
                reachable = false;
                continue;
            }
        };
        if !reachable {
            tracing::info!("cluster: Redis reachable again");
            // Nobody's absence counts while we could not look.
            let now = Instant::now();
            seen.values_mut().for_each(|t| *t = now);
            reachable = true;
        }
        match old {
            None => {
                // Redis lost our keys (restarted) or a survivor removed us
                // after a long absence: publish every session again.
                tracing::info!(
                    "cluster: our registry entry was gone; publishing our sessions again"
                );
                c.publisher.mark_all(&server.sessions.all());
            }
            Some(inc) if inc != c.incarnation => {
                tracing::error!(
                    node = %me,
                    "another process uses node name {me:?}: give every node its own name"
                );
            }
            Some(_) => {}
        }
        // Sessions a snapshot could not confirm (Redis came back empty) and
        // their node did not publish again within `dead_after` have ended.
        for s in c.replica.prune_unconfirmed(c.config.dead_after) {
            server
                .clone()
                .emit(Some(s.clone()), HookEvent::SessionClosed(s))
                .await;
        }
        let others: Vec<String> = nodes.into_iter().filter(|n| *n != me).collect();
        c.set_peers(others.clone());
        if others.is_empty() {
            continue;
        }
        let keys: Vec<String> = others.iter().map(|n| key_heartbeat(n)).collect();
        let Ok(alive): redis::RedisResult<Vec<Option<String>>> = conn.mget(&keys).await else {
            continue;
        };
        let now = Instant::now();
        seen.retain(|n, _| others.contains(n));
        for (node, beat) in others.iter().zip(alive) {
            let last = seen.entry(node.clone()).or_insert(now);
            if beat.is_some() {
                *last = now;
            } else if now.duration_since(*last) >= c.config.dead_after {
                seen.remove(node);
                reap(&server, node).await;
            }
        }
    }
}

/// Removes dead `node`, if no other survivor is doing it.
async fn reap(server: &Arc<Server>, node: &str) {
    let c = server.cluster.as_ref().expect("cluster mode");
    let mut conn = c.conn();
    let lock = redis::SetOptions::default()
        .conditional_set(redis::ExistenceCheck::NX)
        .with_expiration(redis::SetExpiry::PX(
            (c.config.dead_after * 3).as_millis() as u64
        ));
    let won: redis::RedisResult<Option<String>> =
        conn.set_options(key_reap(node), c.node(), lock).await;
    if !matches!(won, Ok(Some(_))) {
        return;
    }
    tracing::warn!(node, "cluster: node is dead; removing its sessions");
    let gone = c.replica.remove_node(node, None);
    // Its sessions' contacts hear they went offline, as when a session ends.
    for s in &gone {
        server
            .clone()
            .emit(Some(s.clone()), HookEvent::SessionClosed(s.clone()))
            .await;
    }
    // Its rooms and routes are free now: what its stream still held for
    // them goes to their next owner.
    super::ownership::forget_node(c, node, &mut conn).await;
    drain_stream(server, node, &mut conn).await;
    let dead = Event::Dead {
        node: node.to_string(),
        keep: None,
    };
    let r = redis::pipe()
        .del(key_registry(node))
        .ignore()
        .del(key_stream(node))
        .ignore()
        .del(key_cursor(node))
        .ignore()
        .srem(key_nodes(), node)
        .ignore()
        .publish(CHANNEL, serde_json::to_string(&dead).expect("serializes"))
        .ignore()
        .query_async::<()>(&mut conn)
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, node, "cluster: could not finish removing a dead node");
    }
    tracing::info!(node, sessions = gone.len(), "cluster: dead node removed");
}

/// Delivers what a dead node had not read of its stream, as to ended sessions.
async fn drain_stream(server: &Arc<Server>, node: &str, conn: &mut redis::aio::ConnectionManager) {
    let key = key_stream(node);
    let cursor: Option<String> = conn.get(key_cursor(node)).await.unwrap_or(None);
    // Exclusive start: after the last entry the node processed.
    let mut from = cursor.map_or_else(|| "-".to_string(), |c| format!("({c}"));
    let mut dedup = super::envelope::Dedup::default();
    let mut n = 0usize;
    loop {
        let page: redis::RedisResult<StreamRangeReply> =
            conn.xrange_count(&key, &from, "+", 256).await;
        let Ok(page) = page else { break };
        let Some(last) = page.ids.last().map(|e| e.id.clone()) else {
            break;
        };
        for entry in page.ids {
            let Some(env) = entry
                .map
                .get("e")
                .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
                .and_then(|b| super::Envelope::decode(&b))
            else {
                continue;
            };
            if !dedup.accept(&env) {
                continue;
            }
            if let super::Body::Route { .. } = env.body {
                n += 1;
                super::transport::handle(server, env.body).await;
                continue;
            }
            if let super::Body::Deliver { to, stanzas, .. } = env.body
                && let Ok(to) = waxwing_proto::jid::FullJid::parse(&to)
            {
                let stanzas = stanzas
                    .iter()
                    .filter_map(|x| {
                        waxwing_proto::xml::parse_stanza(x, waxwing_proto::ns::CLIENT).ok()
                    })
                    .collect();
                n += 1;
                super::transport::undeliverable(server, to, stanzas).await;
            }
        }
        from = format!("({last}");
    }
    if n > 0 {
        tracing::info!(
            node,
            envelopes = n,
            "cluster: delivered what a dead node had not read"
        );
    }
}

/// Keeps [`super::Replica`] in step with the others' announcements:
/// subscribe, take a snapshot of every node's hash, then apply events;
/// again from the start whenever the subscription breaks.
pub(crate) async fn watch_loop(server: Arc<Server>, client: redis::Client) {
    let c = server.cluster.as_ref().expect("cluster mode");
    let mut backoff = Duration::from_millis(100);
    loop {
        if server.shutdown.is_cancelled() && c.replica.counts().is_empty() {
            return;
        }
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "cluster: cannot subscribe to the registry yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if pubsub.subscribe(CHANNEL).await.is_err() {
            continue;
        }
        let mut events = pubsub.into_on_message();
        let mut conn = c.conn();
        match snapshot(c, &mut conn).await {
            Ok(records) => c.replica.reset(records),
            Err(e) => {
                tracing::warn!(error = %e, "cluster: could not read the registry; retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
        }
        backoff = Duration::from_millis(100);
        tracing::debug!("cluster: registry copy up to date");
        // Changes announced while we were not subscribed are lost: whatever
        // the modules cache from the shared stores may be stale now.
        server
            .clone()
            .emit(
                None,
                HookEvent::SharedDataChanged {
                    topic: None,
                    key: None,
                },
            )
            .await;
        while let Some(msg) = events.next().await {
            let Ok(ev) = serde_json::from_slice::<Event>(msg.get_payload_bytes()) else {
                continue;
            };
            apply(&server, ev).await;
        }
        tracing::warn!("cluster: lost the registry channel; subscribing again");
    }
}

async fn apply(server: &Arc<Server>, ev: Event) {
    let c = server.cluster.as_ref().expect("cluster mode");
    match ev {
        Event::Dead { node, keep } if node != c.node() => {
            c.ownership.forget_remote(&node);
            let gone = c.replica.remove_node(&node, keep.as_deref());
            // A node started again: its previous life's sessions ended
            // without a goodbye. One survivor tells their contacts.
            if let Some(keep) = keep
                && !gone.is_empty()
            {
                let mut conn = c.conn();
                let lock = redis::SetOptions::default()
                    .conditional_set(redis::ExistenceCheck::NX)
                    .with_expiration(redis::SetExpiry::PX(60_000));
                let won: redis::RedisResult<Option<String>> = conn
                    .set_options(format!("{}:{keep}", key_reap(&node)), c.node(), lock)
                    .await;
                if matches!(won, Ok(Some(_))) {
                    for s in gone {
                        server
                            .clone()
                            .emit(Some(s.clone()), HookEvent::SessionClosed(s))
                            .await;
                    }
                }
            }
        }
        Event::Dead { .. } => {}
        Event::Changed { node, topic, key } if node != c.node() => {
            server
                .clone()
                .emit(
                    None,
                    HookEvent::SharedDataChanged {
                        topic: Some(topic),
                        key: Some(key),
                    },
                )
                .await;
        }
        Event::Changed { .. } => {}
        ev => c.replica.apply(ev),
    }
}

/// Every other node's published sessions.
async fn snapshot(
    c: &Cluster,
    conn: &mut redis::aio::ConnectionManager,
) -> redis::RedisResult<Vec<Record>> {
    let nodes: Vec<String> = conn.smembers(key_nodes()).await?;
    let mut out = Vec::new();
    for n in nodes.iter().filter(|n| *n != c.node()) {
        let values: Vec<String> = conn.hvals(key_registry(n)).await?;
        out.extend(
            values
                .iter()
                .filter_map(|v| serde_json::from_str::<Record>(v).ok()),
        );
    }
    Ok(out)
}
