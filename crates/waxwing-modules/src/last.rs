//! XEP-0012: Last Activity.
//!
//! - To the server: its uptime (§5).
//! - To an account's bare JID (§3): 0 while it has a session, else the time
//!   since its last session ended with the status of its last unavailable
//!   presence; only for the account itself and contacts subscribed to its
//!   presence (`forbidden` for everyone else, and for blocked contacts).
//! - To a full JID: the router delivers it to that client, which answers
//!   with its idle time (§4).
//!
//! The logout time is recorded when the last session goes away: on
//! unavailable presence from the last available resource, and on
//! [`Event::SessionClosed`] when no session is left.
//!
//! Logouts are written by group commit: the first logout to arrive while no
//! writer is at work starts one (a background task) that waits
//! [`LINGER`] for others to join, writes every logout pending at that
//! moment in one statement, and keeps writing until none is left; logouts
//! arriving meanwhile only join the next batch. Under a wave of logins and
//! logouts this is a few commits a second instead of one per account or
//! two, which matters beyond the writes themselves: in SQLite's WAL mode
//! every commit makes each other connection drop its page cache before its
//! next read, so every cold login's read went back to the file (session
//! 27: 9.5 `pread`s per cold login). Nobody waits for the write: neither
//! the closing session nor the unavailable presence being routed. Queries
//! look at the pending batch before the store, so the answer never goes
//! back in time. Once the server begins to stop, the writer stops
//! lingering (what is pending is written at once, and every later logout
//! as it comes), and a graceful stop waits for it, so nothing is lost but
//! to a crash, which loses at most [`LINGER`] of logouts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Event, EventHandler, Flow, Hook, Iq, IqHandler, IqResult, IqTarget, Module, Priority,
    RegisterError, Registrar, StanzaHook,
};
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;
use waxwing_store::{LastActivity, LastActivityStore, Subscription};

use crate::blocking::matches;
use crate::internal;

/// XEP-0012 namespace.
pub const LAST: &str = "jabber:iq:last";

/// How long a writer waits for more logouts before it writes a batch.
pub const LINGER: Duration = Duration::from_millis(250);

/// Last activity.
#[derive(Default)]
pub struct Last {
    /// Status text of each account's latest unavailable presence, until the
    /// logout it belongs to is stored.
    status: Mutex<HashMap<BareJid, String>>,
    /// Logouts not yet in the store (see the module comment); shared with
    /// the writer task.
    pending: Arc<Mutex<Pending>>,
}

#[derive(Default)]
struct Pending {
    logouts: HashMap<BareJid, LastActivity>,
    /// Some call is writing batches and will take whatever is added here.
    writing: bool,
}

/// Hands the writer role back when the writer task ends, however it ends
/// (a panic, a runtime shutting down), so that the next logout starts a
/// new one instead of waiting on nobody.
struct WriterRole {
    pending: Arc<Mutex<Pending>>,
    /// False once the writer gave the role back itself.
    held: bool,
}

impl Drop for WriterRole {
    fn drop(&mut self) {
        if self.held {
            lock(&self.pending).writing = false;
        }
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

impl Last {
    pub fn new() -> Self {
        Self::default()
    }

    fn status(&self) -> std::sync::MutexGuard<'_, HashMap<BareJid, String>> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        lock(&self.pending)
    }

    /// Notes the logout; a writer task stores it (see the module comment).
    fn record_logout(&self, cx: &Cx, user: &BareJid) {
        let status = self.status().remove(user).unwrap_or_default();
        let last = LastActivity {
            at: unix_now(),
            status,
        };
        {
            let mut pending = self.pending();
            pending.logouts.insert(user.clone(), last);
            if pending.writing {
                return; // the writer at work picks it up
            }
            pending.writing = true;
        }
        let role = WriterRole {
            pending: self.pending.clone(),
            held: true,
        };
        let store = cx.stores().last_activity.clone();
        let stopping = cx.shutdown_token();
        cx.spawn_background(write_batches(role, store, stopping));
    }

    /// The newest logout of `user`: pending or stored.
    async fn last_logout(
        &self,
        cx: &Cx,
        user: &BareJid,
    ) -> Result<Option<LastActivity>, StanzaError> {
        if let Some(last) = self.pending().logouts.get(user) {
            return Ok(Some(last.clone()));
        }
        cx.stores().last_activity.get(user).await.map_err(internal)
    }
}

impl Module for Last {
    fn name(&self) -> &'static str {
        "last"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.server_feature(LAST);
        reg.account_feature(LAST);
        reg.iq_get(IqTarget::Server, LAST, self.clone())?;
        reg.iq_get(IqTarget::Account, LAST, self.clone())?;
        // Before the presence engine, which consumes broadcast presence.
        reg.hook(
            Hook::Outbound,
            Priority(Priority::NORMAL.0 - 1),
            self.clone(),
        );
        reg.on_events(self);
        Ok(())
    }
}

/// The writer: lingers (unless the server is stopping), then writes what
/// is pending, batch after batch, until nothing is; then gives up its role.
async fn write_batches(
    mut role: WriterRole,
    store: Arc<dyn LastActivityStore>,
    stopping: tokio_util::sync::CancellationToken,
) {
    tokio::select! {
        () = tokio::time::sleep(LINGER) => {}
        () = stopping.cancelled() => {}
    }
    loop {
        let batch: Vec<(BareJid, LastActivity)> = {
            let mut pending = lock(&role.pending);
            if pending.logouts.is_empty() {
                // Under the lock: a logout added after this sees no writer
                // and starts one (which this one's drop must not disturb).
                pending.writing = false;
                drop(pending);
                role.held = false;
                return;
            }
            pending.logouts.drain().collect()
        };
        if let Err(e) = store.set_many(&batch).await {
            tracing::error!(error = %e, accounts = batch.len(), "recording last activity failed");
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn answer(seconds: u64, status: &str) -> Element {
    Element::new("query", LAST)
        .with_attr("seconds", seconds.to_string())
        .with_text(status)
}

#[async_trait]
impl IqHandler for Last {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult {
        if !iq.payload.is("query", LAST) {
            return Err(StanzaError::modify(Condition::BadRequest));
        }
        let requester = iq.from.to_bare();
        let owner = match &iq.to {
            // The server: its uptime (§5).
            Some(to) if to.local().is_none() => {
                return Ok(Some(answer(cx.uptime().as_secs(), "")));
            }
            Some(to) => to.to_bare(),
            None => requester.clone(),
        };
        if owner != requester && !may_see(cx, &owner, &iq.from).await? {
            return Err(StanzaError::auth(Condition::Forbidden));
        }
        // §3: a connected account was last active now.
        if !cx.sessions_of(&owner).is_empty() {
            return Ok(Some(answer(0, "")));
        }
        match self.last_logout(cx, &owner).await? {
            Some(last) => Ok(Some(answer(
                unix_now().saturating_sub(last.at),
                &last.status,
            ))),
            // Never logged out since we started keeping track.
            None => Err(StanzaError::cancel(Condition::ItemNotFound)),
        }
    }
}

/// Whether `requester` may see `owner`'s presence: a `from`/`both`
/// subscription, and not blocked by `owner` (XEP-0191).
async fn may_see(cx: &Cx, owner: &BareJid, requester: &Jid) -> Result<bool, StanzaError> {
    let item = cx
        .stores()
        .roster
        .get(owner, requester.bare())
        .await
        .map_err(internal)?;
    if !item.is_some_and(|i| matches!(i.subscription, Subscription::From | Subscription::Both)) {
        return Ok(false);
    }
    let blocked = cx.stores().blocklist.list(owner).await.map_err(internal)?;
    Ok(!blocked.iter().any(|b| matches(b, requester)))
}

#[async_trait]
impl StanzaHook for Last {
    fn wants(&self, _hook: Hook, name: &str) -> bool {
        name == "presence"
    }

    async fn handle_stanza(&self, cx: &Cx, _hook: Hook, stanza: &mut Element) -> Flow {
        // Broadcast unavailable presence (no `to`) from a client.
        if stanza.name != "presence"
            || stanza.attr("type") != Some("unavailable")
            || stanza.attr("to").is_some()
        {
            return Flow::Continue;
        }
        let Some(origin) = cx.origin() else {
            return Flow::Continue;
        };
        let user = origin.jid.bare().clone();
        let status = stanza
            .child("status", ns::CLIENT)
            .map(Element::text)
            .unwrap_or_default();
        self.status().insert(user.clone(), status);
        let others_available = cx
            .sessions_of(&user)
            .iter()
            .any(|s| s.id != origin.id && s.is_available());
        if !others_available {
            self.record_logout(cx, &user);
            // Kept for the SessionClosed that usually follows.
            let status = stanza
                .child("status", ns::CLIENT)
                .map(Element::text)
                .unwrap_or_default();
            self.status().insert(user, status);
        }
        Flow::Continue
    }
}

#[async_trait]
impl EventHandler for Last {
    async fn on_event(&self, cx: &Cx, event: &Event) {
        match event {
            // Already out of the registry: no sessions left means logged out.
            Event::SessionClosed(session) => {
                let user = session.jid.bare();
                if cx.sessions_of(user).is_empty() {
                    self.record_logout(cx, user);
                }
            }
            Event::UserDeleted(user) => {
                self.status().remove(user);
                self.pending().logouts.remove(user);
                if let Err(e) = cx.stores().last_activity.remove_user(user).await {
                    tracing::error!(error = %e, %user, "removing last activity of a deleted account failed");
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_seconds_and_status() {
        assert_eq!(
            answer(903, "Heading Home").to_xml(),
            "<query xmlns='jabber:iq:last' seconds='903'>Heading Home</query>"
        );
        assert_eq!(
            answer(0, "").to_xml(),
            "<query xmlns='jabber:iq:last' seconds='0'/>"
        );
    }
}
