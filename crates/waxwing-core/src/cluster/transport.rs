//! The cross-node transport: one Redis Stream per node (`wx:in:<node>`).
//!
//! Sending: remote sessions' handles put [`Outgoing`] bodies on one bounded
//! queue ([`super::Link`]); one task numbers them, writes them with
//! `XADD … MAXLEN ~ stream_max_len` in one pipeline per batch, and on a
//! failure retries the same batch with the same numbers until Redis takes
//! it. So a node's envelopes reach each stream in the order they were
//! queued, possibly twice, never reordered.
//!
//! Receiving: the owner reads its stream with `XREAD BLOCK` from its
//! cursor, drops repeats ([`super::envelope::Dedup`]), delivers, then
//! stores the cursor (`wx:cursor:<node>`) and trims what it has read. The
//! cursor is what a survivor starts from when this node dies
//! ([`super::membership`]), and what this node starts from when it starts
//! again under the same name: what was on its way to a previous life's
//! sessions is delivered as to a session that ended (other resources,
//! offline storage).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio::sync::mpsc;
use waxwing_proto::jid::{FullJid, Jid};
use waxwing_proto::stanza::{
    self, Condition, StanzaError, StanzaKind, StreamCondition, StreamError,
};
use waxwing_proto::xml::Element;

use super::envelope::{Body, Dedup, Envelope};
use super::{Outgoing, key_cursor, key_stream};
use crate::Server;
use crate::hooks::Cx;

/// Envelopes written or read per round trip at most.
const BATCH: usize = 256;

/// How long one `XREAD` waits for entries.
const BLOCK: Duration = Duration::from_secs(2);

/// The stream entry's field holding the envelope.
const FIELD: &str = "e";

/// Counters for `waxwing cluster status` and the logs.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
}

/// Writes queued envelopes to their nodes' streams, in order, forever.
pub(crate) async fn send_loop(server: Arc<Server>, mut rx: mpsc::Receiver<Outgoing>) {
    let c = server.cluster.as_ref().expect("cluster mode");
    let max_len = c.config.stream_max_len;
    let mut seq = 0u64;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        let n = batch.len() as u64;
        for o in batch.drain(..) {
            seq += 1;
            let env = Envelope {
                node: c.node().to_string(),
                inc: c.incarnation.clone(),
                seq,
                body: o.body,
            };
            pipe.cmd("XADD")
                .arg(key_stream(&o.node))
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len)
                .arg("*")
                .arg(FIELD)
                .arg(env.encode())
                .ignore();
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut conn = c.conn();
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => break,
                Err(e) => {
                    // The same batch again, same numbers: the receivers drop
                    // whatever of it did get through.
                    tracing::warn!(error = %e, "cluster: could not send to other nodes; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        c.stats.sent.fetch_add(n, Ordering::Relaxed);
    }
}

async fn connect_blocking(
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    // No response timeout: XREAD BLOCK answers when it has entries or after BLOCK.
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(super::RESPONSE_TIMEOUT))
        .set_response_timeout(Some(BLOCK + super::RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// Reads this node's stream and delivers what it carries, forever.
pub(crate) async fn receive_loop(server: Arc<Server>, client: redis::Client) {
    let c = server.cluster.as_ref().expect("cluster mode");
    let key = key_stream(c.node());
    let cursor_key = key_cursor(c.node());
    let mut dedup = Dedup::default();
    let mut cursor: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    'connect: loop {
        let mut conn = match connect_blocking(&client).await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot reach Redis to read our stream; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if cursor.is_none() {
            match conn.get::<_, Option<String>>(&cursor_key).await {
                Ok(c) => cursor = Some(c.unwrap_or_else(|| "0-0".into())),
                Err(_) => continue 'connect,
            }
        }
        loop {
            let from = cursor.clone().expect("cursor read");
            let opts = StreamReadOptions::default()
                .count(BATCH)
                .block(BLOCK.as_millis() as usize);
            let reply: Option<StreamReadReply> = match conn
                .xread_options(&[&key], &[&from], &opts)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: reading our stream failed; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue 'connect;
                }
            };
            backoff = Duration::from_millis(100);
            let Some(reply) = reply else { continue };
            let mut last = None;
            for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
                last = Some(entry.id.clone());
                let Some(env) = entry
                    .map
                    .get(FIELD)
                    .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
                    .and_then(|b| Envelope::decode(&b))
                else {
                    tracing::warn!(id = %entry.id, "cluster: unreadable stream entry skipped");
                    continue;
                };
                if dedup.accept(&env) {
                    c.stats.received.fetch_add(1, Ordering::Relaxed);
                    handle(&server, env.body).await;
                } else {
                    c.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Some(last) = last {
                let mut pipe = redis::pipe();
                pipe.set(&cursor_key, &last).ignore();
                pipe.cmd("XTRIM")
                    .arg(&key)
                    .arg("MINID")
                    .arg("~")
                    .arg(&last)
                    .ignore();
                // Best effort: a lost cursor means envelopes read again,
                // which the de-duplication drops.
                let _ = pipe.query_async::<()>(&mut conn).await;
                cursor = Some(last);
            }
        }
    }
}

/// Does what an envelope asks, on this node.
pub(crate) async fn handle(server: &Arc<Server>, body: Body) {
    match body {
        Body::Deliver { to, sid, stanzas } => {
            let Ok(to) = FullJid::parse(&to) else { return };
            let stanzas: Vec<Element> = stanzas
                .iter()
                .filter_map(|x| waxwing_proto::xml::parse_stanza(x, waxwing_proto::ns::CLIENT).ok())
                .collect();
            if stanzas.is_empty() {
                return;
            }
            let session = server
                .sessions
                .get_local(&to)
                .filter(|s| s.id == sid && !s.is_closing());
            let refused = match session {
                Some(s) if stanzas.len() == 1 => s
                    .offer(stanzas.into_iter().next().expect("one"))
                    .map_err(|e| vec![e]),
                Some(s) => s.offer_burst(stanzas),
                // Resumed on another node meanwhile: they follow it there.
                None => super::handoff::follow(server, &to, sid, stanzas),
            };
            if let Err(stanzas) = refused {
                undeliverable(server, to, stanzas).await;
            }
        }
        Body::Route {
            stanzas,
            burst,
            hops,
        } => {
            let stanzas: Vec<Element> = stanzas
                .iter()
                .filter_map(|x| waxwing_proto::xml::parse_stanza(x, waxwing_proto::ns::CLIENT).ok())
                .collect();
            if !stanzas.is_empty() {
                server.clone().route_forwarded(stanzas, burst, hops).await;
            }
        }
        Body::HandoffAsk(ask) => crate::stream::c2s::hand_away(server, *ask).await,
        Body::HandoffGive(give) => super::handoff::on_give(server, give).await,
        Body::Close {
            to,
            sid,
            condition,
            text,
        } => {
            let Ok(to) = FullJid::parse(&to) else { return };
            if let Some(s) = server.sessions.get_local(&to).filter(|s| s.id == sid) {
                let condition =
                    StreamCondition::from_name(&condition).unwrap_or(StreamCondition::Conflict);
                s.close(StreamError { condition, text });
            }
        }
    }
}

/// Stanzas for a session that is not here (any more): as on one node when
/// a full JID's session is gone. Messages go to the account's other
/// resources or offline storage, IQ requests get `service-unavailable`,
/// presence is dropped. The sender ran the `Inbound` hooks already.
pub(crate) async fn undeliverable(server: &Arc<Server>, to: FullJid, stanzas: Vec<Element>) {
    let cx = Cx::new(server.clone(), None);
    for s in stanzas {
        match stanza::kind(&s) {
            Some(StanzaKind::Message) => {
                server
                    .clone()
                    .deliver_hooked(&cx, Jid::Full(to.clone()), s, StanzaKind::Message)
                    .await;
            }
            Some(StanzaKind::Iq) if matches!(s.attr("type"), Some("get" | "set")) => {
                server
                    .clone()
                    .bounce(&s, StanzaError::cancel(Condition::ServiceUnavailable))
                    .await;
            }
            _ => {}
        }
    }
}
