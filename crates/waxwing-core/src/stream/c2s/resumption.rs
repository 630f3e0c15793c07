//! Detached-but-resumable sessions (XEP-0198 §5), by stream-management id.
//! A slot belongs to the session's task, whatever transport it runs on; a
//! resuming connection over any transport hands itself over through it.

use std::collections::HashMap;

use tokio::sync::oneshot;
use waxwing_proto::jid::{BareJid, FullJid};

use super::Takeover;

/// Detached-but-resumable sessions, by stream-management id.
#[derive(Default)]
pub(crate) struct ResumptionTable {
    slots: std::sync::Mutex<HashMap<String, ResumeSlot>>,
}

struct ResumeSlot {
    jid: FullJid,
    session_id: u64,
    tx: oneshot::Sender<Takeover>,
}

impl ResumptionTable {
    pub(super) fn insert(
        &self,
        id: String,
        jid: FullJid,
        session_id: u64,
    ) -> oneshot::Receiver<Takeover> {
        let (tx, rx) = oneshot::channel();
        self.slots.lock().expect("resumption lock").insert(
            id,
            ResumeSlot {
                jid,
                session_id,
                tx,
            },
        );
        rx
    }

    /// The slot for `id`, if it belongs to `user` (never someone else's session).
    pub(super) fn take(
        &self,
        id: &str,
        user: &BareJid,
    ) -> Option<(oneshot::Sender<Takeover>, FullJid)> {
        let mut slots = self.slots.lock().expect("resumption lock");
        if slots.get(id).is_some_and(|s| s.jid.bare() == user) {
            return slots.remove(id).map(|s| (s.tx, s.jid));
        }
        None
    }

    pub(super) fn remove(&self, id: &str, session_id: u64) {
        let mut slots = self.slots.lock().expect("resumption lock");
        if slots.get(id).is_some_and(|s| s.session_id == session_id) {
            slots.remove(id);
        }
    }
}
