//! Ownership in a cluster: each MUC room, each pubsub service node and
//! each outgoing federation route (local domain → remote domain) is owned
//! by one node at a time, so that the state that lives in one process's
//! memory (a room's occupants, an s2s stream) exists once.
//!
//! The record is a Redis lease: `wx:lease:<key>` holds the owner's token
//! (`"<node> <incarnation>"`) with a TTL of `[cluster] lease_secs`. One Lua
//! script reads and, when nobody (or a previous life of this node) holds
//! it, takes the lease in the same round trip: the stanza that finds a
//! room without an owner makes its node the owner. The owner renews its
//! leases every third of the TTL (compare-and-extend, again in Lua); a
//! lease it finds taken by another node is lost, and the service is told
//! ([`crate::hooks::DomainService::entity_released`]). No consensus of our
//! own: Redis' single-threaded script execution is the only arbiter.
//!
//! Routing ([`route`]): the router asks for the owner of the stanza's key;
//! ours → handled here (after the service has loaded the entity from the
//! store, [`crate::hooks::DomainService::entity_acquired`], once per
//! acquisition); another node's → forwarded on that node's stream as
//! [`Body::Route`], where the router decides again (at most [`MAX_HOPS`]
//! times, in case ownership moved meanwhile).
//!
//! When an owner dies its leases expire (or the survivor removing it
//! deletes them at once, [`forget_node`]), and the next stanza for each
//! room makes its node the new owner, which loads the room from
//! PostgreSQL: the occupants' presence was in the dead process only, so
//! they are not in the room any more; a message they send is answered
//! `not-acceptable`, which XEP-0045 §7.2.1/XEP-0410 clients take as the
//! signal to join again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;

use super::{Body, Cluster, Outgoing};
use crate::Server;
use crate::hooks::Cx;

/// Forwards of one stanza between nodes at most: ownership moving twice
/// while a stanza travels is not worth chasing further.
pub const MAX_HOPS: u8 = 3;

/// How long another node is remembered as a key's owner without asking
/// Redis again. Short: a move is noticed quickly, and a dead owner's
/// entries are dropped as soon as its death is announced.
const REMOTE_CACHE: Duration = Duration::from_secs(2);

/// Remote owners remembered at most (the cache is cleared when full).
const MAX_REMOTE_CACHE: usize = 100_000;

/// Leases renewed per script call.
const RENEW_BATCH: usize = 500;

/// What a lease is for: the part of the router that handles it once the
/// owner is known.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// An entity of the domain service on `domain` (a room's bare JID,
    /// a pubsub node), as the service names it.
    Service { domain: String, entity: String },
    /// The outgoing federation route from `local` to `remote`.
    S2s { local: String, remote: String },
}

impl Key {
    /// The Redis key of the lease.
    pub fn redis_key(&self) -> String {
        match self {
            Key::Service { domain, entity } => format!("wx:lease:svc:{domain}:{entity}"),
            Key::S2s { local, remote } => format!("wx:lease:s2s:{local}:{remote}"),
        }
    }
}

/// Who owns a key, as far as this node knows right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Here,
    Node(Arc<str>),
}

/// This node's leases and its memory of other nodes' leases.
#[derive(Default)]
pub struct Ownership {
    /// Keys we hold; the cell is set once the service has loaded the
    /// entity for this acquisition.
    owned: Mutex<HashMap<Key, Arc<OnceCell<()>>>>,
    /// Keys another node held when we last asked.
    remote: Mutex<HashMap<Key, (Arc<str>, Instant)>>,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("owned", &self.owned_count())
            .finish()
    }
}

impl Ownership {
    /// Leases this node holds.
    pub fn owned_count(&self) -> usize {
        self.owned.lock().expect("ownership lock").len()
    }

    /// Whether this node holds `key` now.
    pub fn is_owner(&self, key: &Key) -> bool {
        self.owned.lock().expect("ownership lock").contains_key(key)
    }

    fn cached(&self, key: &Key) -> Option<Arc<str>> {
        let remote = self.remote.lock().expect("ownership lock");
        remote
            .get(key)
            .filter(|(_, at)| at.elapsed() < REMOTE_CACHE)
            .map(|(n, _)| n.clone())
    }

    fn remember(&self, key: Key, node: Arc<str>) {
        let mut remote = self.remote.lock().expect("ownership lock");
        if remote.len() >= MAX_REMOTE_CACHE {
            remote.clear();
        }
        remote.insert(key, (node, Instant::now()));
    }

    /// Forgets what `node` held (it died or left): the next stanza asks Redis.
    pub fn forget_remote(&self, node: &str) {
        self.remote
            .lock()
            .expect("ownership lock")
            .retain(|_, (n, _)| &**n != node);
    }

    fn cell(&self, key: &Key) -> Arc<OnceCell<()>> {
        self.owned
            .lock()
            .expect("ownership lock")
            .entry(key.clone())
            .or_default()
            .clone()
    }

    fn drop_owned(&self, key: &Key) -> bool {
        self.owned
            .lock()
            .expect("ownership lock")
            .remove(key)
            .is_some()
    }

    fn owned_keys(&self) -> Vec<Key> {
        self.owned
            .lock()
            .expect("ownership lock")
            .keys()
            .cloned()
            .collect()
    }
}

/// Our token in a lease.
fn token(c: &Cluster) -> String {
    format!("{} {}", c.node(), c.incarnation)
}

/// The Redis set listing a node's leases (for the survivor removing it,
/// and for `waxwing cluster status`).
pub(crate) fn key_leases(node: &str) -> String {
    format!("wx:leases:{node}")
}

/// Returns the holder's token, taking the lease first when nobody holds it
/// or when the holder is a previous incarnation of this node (killed and
/// started again before the lease ran out).
/// KEYS: lease, our lease set. ARGV: token, TTL ms, "<node> ".
const ACQUIRE: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] or string.sub(v, 1, string.len(ARGV[3])) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SADD', KEYS[2], KEYS[1])
  return ARGV[1]
end
return v
";

/// Extends our leases; takes back those that vanished (Redis restarted
/// empty: nobody else can have loaded the entity since); returns the
/// indices of the keys another node holds now.
/// KEYS: leases…. ARGV: token, TTL ms, our lease set.
const RENEW: &str = r"
local lost = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v == ARGV[1] then
    redis.call('PEXPIRE', k, ARGV[2])
  elseif v == false then
    redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
    redis.call('SADD', ARGV[3], k)
  else
    redis.call('SREM', ARGV[3], k)
    table.insert(lost, i - 1)
  end
end
return lost
";

/// Deletes the leases in set KEYS[1] whose value starts with ARGV[1]
/// (a dead node's, or ours when leaving), then the set.
const RELEASE_ALL: &str = r"
local n = 0
for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', k)
  if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
    redis.call('DEL', k)
    n = n + 1
  end
end
redis.call('DEL', KEYS[1])
return n
";

/// `EVAL script numkeys keys… args…` (Redis caches the compiled script by
/// its digest; the text is a few hundred bytes).
fn eval(script: &str, keys: &[String], args: &[String]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
    cmd
}

/// Who owns `key`, taking it when nobody does.
async fn resolve(c: &Cluster, key: &Key) -> redis::RedisResult<Owner> {
    if c.ownership.is_owner(key) {
        return Ok(Owner::Here);
    }
    // A node that left the membership since is not asked again: Redis
    // knows whether its leases were freed.
    if let Some(node) = c.ownership.cached(key).filter(|n| c.is_peer(n)) {
        return Ok(Owner::Node(node));
    }
    let mut conn = c.conn();
    let me = token(c);
    let holder: String = eval(
        ACQUIRE,
        &[key.redis_key(), key_leases(c.node())],
        &[
            me.clone(),
            c.config.lease.as_millis().to_string(),
            format!("{} ", c.node()),
        ],
    )
    .query_async(&mut conn)
    .await?;
    if holder == me {
        return Ok(Owner::Here);
    }
    let node: Arc<str> = holder.split(' ').next().unwrap_or_default().into();
    c.ownership.remember(key.clone(), node.clone());
    Ok(Owner::Node(node))
}

/// What the router does with stanzas once this node owns their key.
pub(crate) type Handle = fn(Arc<Server>, Vec<Element>, bool) -> crate::router::BoxFuture;

/// Routes `stanzas` (all for `key`; `burst`: they go out together) to
/// `key`'s owner: handled here by `here` when that is us, forwarded
/// otherwise. `hops`: how often they were forwarded already.
pub(crate) async fn route(
    server: &Arc<Server>,
    key: Key,
    stanzas: Vec<Element>,
    burst: bool,
    hops: u8,
    here: Handle,
) {
    let c = server.cluster.as_ref().expect("cluster mode");
    let owner = match resolve(c, &key).await {
        Ok(o) => o,
        Err(e) => {
            // Redis unreachable: federation goes out from here (a second
            // stream to a peer is allowed); a room we do not hold cannot
            // be served without risking two copies of it.
            if matches!(key, Key::S2s { .. }) {
                tracing::debug!(error = %e, "cluster: lease unknown; sending from this node");
                return here(server.clone(), stanzas, burst).await;
            }
            tracing::warn!(error = %e, ?key, "cluster: cannot find the owner (Redis unreachable)");
            return bounce_all(server, stanzas, Condition::ServiceUnavailable).await;
        }
    };
    match owner {
        Owner::Here => {
            let cell = c.ownership.cell(&key);
            cell.get_or_init(|| acquired(server, &key)).await;
            here(server.clone(), stanzas, burst).await;
        }
        Owner::Node(node) if hops < MAX_HOPS => {
            let body = Body::Route {
                stanzas: stanzas.iter().map(Element::to_xml).collect(),
                burst,
                hops: hops + 1,
            };
            if c.replica.link().send(Outgoing { node, body }).is_err() {
                bounce_all(server, stanzas, Condition::ResourceConstraint).await;
            }
        }
        Owner::Node(node) => {
            tracing::warn!(?key, %node, "cluster: ownership keeps moving; giving up on a stanza");
            bounce_all(server, stanzas, Condition::RemoteServerTimeout).await;
        }
    }
}

async fn bounce_all(server: &Arc<Server>, stanzas: Vec<Element>, condition: Condition) {
    for s in stanzas {
        server
            .clone()
            .bounce(&s, StanzaError::wait(condition))
            .await;
    }
}

/// This node has just taken `key`: the service loads the entity from the
/// store (another node may have changed it since we last had it).
async fn acquired(server: &Arc<Server>, key: &Key) {
    tracing::debug!(?key, "cluster: lease taken");
    if let Key::Service { domain, entity } = key
        && let Some((_, svc)) = server.registry.services.get(domain)
    {
        let cx = Cx::new(server.clone(), None);
        svc.entity_acquired(&cx, entity).await;
    }
}

async fn released(server: &Arc<Server>, key: &Key) {
    if let Key::Service { domain, entity } = key
        && let Some((_, svc)) = server.registry.services.get(domain)
    {
        let cx = Cx::new(server.clone(), None);
        svc.entity_released(&cx, entity).await;
    }
}

/// Renews this node's leases every third of their TTL, until shutdown.
pub(crate) async fn renew_loop(server: Arc<Server>) {
    let c = server.cluster.as_ref().expect("cluster mode");
    let mut tick = tokio::time::interval(c.config.lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = server.shutdown.cancelled() => return,
        }
        let keys = c.ownership.owned_keys();
        for chunk in keys.chunks(RENEW_BATCH) {
            let keys: Vec<String> = chunk.iter().map(Key::redis_key).collect();
            let args = [
                token(c),
                c.config.lease.as_millis().to_string(),
                key_leases(c.node()),
            ];
            let mut conn = c.conn();
            let lost: Vec<usize> = match eval(RENEW, &keys, &args).query_async(&mut conn).await {
                Ok(l) => l,
                Err(e) => {
                    // Not lost yet: nobody else can take them while Redis
                    // cannot be reached either, and we retry next tick.
                    tracing::warn!(error = %e, "cluster: could not renew our leases");
                    break;
                }
            };
            for i in lost {
                let Some(k) = chunk.get(i) else { continue };
                if c.ownership.drop_owned(k) {
                    tracing::warn!(key = ?k, "cluster: lease lost to another node");
                    released(&server, k).await;
                }
            }
        }
    }
}

/// Gives up our leases when leaving the cluster gracefully, so that the
/// others take our rooms at once instead of after `lease_secs`.
pub(crate) async fn release_all(c: &Cluster, conn: &mut redis::aio::ConnectionManager) {
    let r: redis::RedisResult<u64> = eval(RELEASE_ALL, &[key_leases(c.node())], &[token(c)])
        .query_async(conn)
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "cluster: could not release our leases");
    }
    c.ownership.owned.lock().expect("ownership lock").clear();
}

/// Deletes a dead node's leases (the survivor removing it does this), so
/// its rooms move on their next stanza instead of after `lease_secs`.
pub(crate) async fn forget_node(c: &Cluster, node: &str, conn: &mut redis::aio::ConnectionManager) {
    let r: redis::RedisResult<u64> = eval(RELEASE_ALL, &[key_leases(node)], &[format!("{node} ")])
        .query_async(conn)
        .await;
    match r {
        Ok(n) if n > 0 => tracing::info!(node, leases = n, "cluster: a dead node's leases freed"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, node, "cluster: could not free a dead node's leases"),
    }
    c.ownership.forget_remote(node);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_keep_kinds_apart() {
        let room = Key::Service {
            domain: "conference.example.org".into(),
            entity: "lobby@conference.example.org".into(),
        };
        let s2s = Key::S2s {
            local: "example.org".into(),
            remote: "example.net".into(),
        };
        assert_eq!(
            room.redis_key(),
            "wx:lease:svc:conference.example.org:lobby@conference.example.org"
        );
        assert_eq!(s2s.redis_key(), "wx:lease:s2s:example.org:example.net");
    }

    #[test]
    fn remote_owners_are_forgotten_with_their_node() {
        let o = Ownership::default();
        let k = Key::S2s {
            local: "a".into(),
            remote: "b".into(),
        };
        o.remember(k.clone(), "n2".into());
        assert_eq!(o.cached(&k).as_deref(), Some("n2"));
        o.forget_remote("n3");
        assert!(o.cached(&k).is_some());
        o.forget_remote("n2");
        assert!(o.cached(&k).is_none());
    }
}
