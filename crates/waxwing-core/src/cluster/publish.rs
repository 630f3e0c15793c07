//! This node's sessions, announced to the others.
//!
//! A session whose routing state changes (bound, presence, priority,
//! carbons/CSI flags, roster interest, unbound) marks itself dirty here;
//! one task writes the dirty ones to `wx:reg:<node>` and announces them on
//! `wx:reg`, in one pipeline per batch. Marks coalesce: a session that
//! changes ten times while a write is in flight is written once more, with
//! its state at that moment. The set is bounded by the number of local
//! sessions. When Redis cannot be reached, the batch goes back into the
//! set and is written when it can.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use waxwing_proto::jid::FullJid;

use super::replica::{Event, Record};
use super::{CHANNEL, key_registry};
use crate::Server;
use crate::session::SessionHandle;

/// Sessions (by id) whose state the others have not seen yet.
#[derive(Default)]
pub struct Publisher {
    dirty: Mutex<HashMap<u64, (FullJid, Weak<SessionHandle>)>>,
    notify: Notify,
    /// Version of the next record (per incarnation).
    version: AtomicU64,
    /// What was last written per session (a hash of its state), so that a
    /// mark that changed nothing (a module reading the presence) costs no write.
    written: Mutex<HashMap<u64, u64>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher")
    }
}

impl Publisher {
    /// Session `id` (`jid`) changed; `handle` is dangling once it is unbound.
    pub fn mark(&self, jid: &FullJid, id: u64, handle: Weak<SessionHandle>) {
        self.dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, (jid.clone(), handle));
        self.notify.notify_one();
    }

    /// Every local session again (Redis lost our hash: restarted, or it
    /// took us for dead).
    pub fn mark_all(&self, sessions: &[Arc<SessionHandle>]) {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        for s in sessions {
            self.mark(&s.jid, s.id, Arc::downgrade(s));
        }
    }

    fn take(&self) -> HashMap<u64, (FullJid, Weak<SessionHandle>)> {
        std::mem::take(
            &mut *self
                .dirty
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Puts back a batch that could not be written, unless newer marks replaced its entries.
    fn restore(&self, batch: HashMap<u64, (FullJid, Weak<SessionHandle>)>) {
        let mut dirty = self
            .dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (id, v) in batch {
            dirty.entry(id).or_insert(v);
        }
    }

    /// Whether `rec` differs from what was last written for its session
    /// (and remembers it); `None` forgets the session.
    fn changed(&self, sid: u64, rec: Option<&Record>) -> bool {
        use std::hash::{Hash, Hasher};
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(rec) = rec else {
            return written.remove(&sid).is_some();
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&rec.jid, rec.priority, &rec.last, rec.flags, rec.interested).hash(&mut h);
        written.insert(sid, h.finish()) != Some(h.finish())
    }

    /// Forgets what was written for these sessions: their write failed.
    fn forget<'a>(&self, ids: impl Iterator<Item = &'a u64>) {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in ids {
            written.remove(id);
        }
    }

    fn record(&self, node: &str, inc: &str, s: &SessionHandle) -> Record {
        let (last, priority) = s.with_presence_quiet(|p| {
            (
                p.last
                    .as_ref()
                    .map(|e| e.to_xml_in(waxwing_proto::ns::CLIENT)),
                p.priority,
            )
        });
        Record {
            jid: s.jid.to_string(),
            node: node.to_string(),
            inc: inc.to_string(),
            sid: s.id,
            ver: self.version.fetch_add(1, Ordering::Relaxed) + 1,
            priority,
            last,
            flags: s.flag_bits(),
            interested: s.is_interested(),
        }
    }
}

/// Writes what is dirty, until the server stops (then once more, so that
/// the ends of the last sessions are announced).
pub(crate) async fn publish_loop(server: Arc<Server>) {
    let c = server.cluster.as_ref().expect("cluster mode");
    let node = c.node().to_string();
    let reg = key_registry(&node);
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            () = c.publisher.notify.notified() => {}
            () = server.shutdown.cancelled() => {}
        }
        let batch = c.publisher.take();
        if batch.is_empty() {
            if server.shutdown.is_cancelled() {
                return;
            }
            continue;
        }
        let mut pipe = redis::pipe();
        let mut writes = 0;
        for (id, (jid, weak)) in &batch {
            let live = weak
                .upgrade()
                .filter(|h| server.sessions.get_local(jid).is_some_and(|s| s.id == h.id));
            let ev = match live {
                Some(h) => {
                    let rec = c.publisher.record(&node, &c.incarnation, &h);
                    if !c.publisher.changed(*id, Some(&rec)) {
                        continue;
                    }
                    let json = serde_json::to_string(&rec).expect("a record serializes");
                    pipe.hset(&reg, id, json).ignore();
                    Event::Up(rec)
                }
                None => {
                    c.publisher.changed(*id, None);
                    pipe.hdel(&reg, id).ignore();
                    Event::Down {
                        jid: jid.to_string(),
                        node: node.clone(),
                        inc: c.incarnation.clone(),
                        sid: *id,
                    }
                }
            };
            let ev = serde_json::to_string(&ev).expect("an event serializes");
            pipe.publish(CHANNEL, ev).ignore();
            writes += 1;
        }
        if writes == 0 {
            continue;
        }
        let mut conn = c.conn();
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, "cluster: could not publish session changes; retrying");
                c.publisher.forget(batch.keys());
                c.publisher.restore(batch);
                if server.shutdown.is_cancelled() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                c.publisher.notify.notify_one();
            }
        }
    }
}
