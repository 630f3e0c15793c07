//! XEP-0160: offline messages, stamped with XEP-0203 delay and delivered in
//! order at the next available presence.
//!
//! The module keeps the set of accounts that may have stored messages
//! (loaded at start, added to on every store), so that the initial presence
//! of an account without any, nearly every login, costs no storage read.
//!
//! Delivery is flow-controlled and loses nothing: a background task per
//! login with messages waiting reads a page of [`PAGE`] messages, queues
//! it as one tracked entry ([`SessionHandle::send_tracked`]), waits until
//! the client has it (acknowledged under XEP-0198, otherwise written to its
//! socket), deletes exactly that page and reads the next, until none is
//! left. A page never takes more than one slot of the session's queue, so
//! any number of messages arrives in one login without overflowing it, and
//! a crash or a broken connection before the client has a page leaves the
//! page stored for the next login.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use waxwing_core::session::SessionHandle;

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Event, EventHandler, Flow, Hook, Module, Priority, RegisterError, Registrar, StanzaHook,
};
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::{Element, parse_stanza};

/// XEP-0334 message processing hints.
const HINTS: &str = "urn:xmpp:hints";

/// Messages read, queued and deleted at a time (capped by `outbound_burst`).
/// One queue slot whatever its size; big enough that a default quota's
/// worth arrives in a few round trips.
const PAGE: u32 = 256;

/// Offline storage.
#[derive(Default)]
pub struct Offline {
    waiting: Arc<Mutex<Waiting>>,
}

/// Which accounts may have messages stored.
#[derive(Default)]
struct Waiting {
    /// The store's owners were read at start. Until then (or if that read
    /// failed) every initial presence reads the store.
    loaded: bool,
    owners: HashSet<BareJid>,
    /// Accounts whose messages a delivery task is sending now. It reads
    /// until nothing is left, so a second login does not start another.
    delivering: HashSet<BareJid>,
}

impl Offline {
    pub fn new() -> Self {
        Self::default()
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        lock(&self.waiting)
    }

    async fn load_owners(&self, cx: &Cx) {
        match cx.stores().offline.owners().await {
            // Other nodes store messages too: every login looks.
            Ok(_) if cx.storage_shared() => {}
            Ok(owners) => {
                let mut w = self.waiting();
                w.owners.extend(owners);
                w.loaded = true;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading who has offline messages failed; every login will look")
            }
        }
    }

    /// Whether a delivery of `user`'s messages must start now; if so, it is
    /// marked as running. The account leaves the set before the read, so a
    /// message stored during the delivery puts it back.
    fn take(&self, user: &BareJid) -> bool {
        let mut w = self.waiting();
        if w.delivering.contains(user) {
            return false;
        }
        let start = w.owners.remove(user) || !w.loaded;
        if start {
            w.delivering.insert(user.clone());
        }
        start
    }

    /// A message was stored: look next time.
    fn keep(&self, user: &BareJid) {
        self.waiting().owners.insert(user.clone());
    }
}

fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

/// One page handed to the session.
enum Page {
    /// Nothing (more) is stored.
    Empty,
    /// Queued up to message `last`; the receiver resolves once the client
    /// has the page (`None`: every message of it was corrupt).
    Sent(i64, Option<oneshot::Receiver<()>>),
    /// The session refused it, or the store failed.
    Failed,
}

/// Reads the page after message `after` and queues it as one tracked entry.
async fn send_page(cx: &Cx, session: &SessionHandle, after: i64) -> Page {
    let user = session.jid.bare();
    let size = PAGE.min(u32::try_from(cx.config().outbound_burst).unwrap_or(u32::MAX));
    let page = match cx
        .stores()
        .offline
        .list_page(user, after, size.max(1))
        .await
    {
        Ok(page) => page,
        Err(e) => {
            tracing::error!(error = %e, %user, "reading offline messages failed");
            return Page::Failed;
        }
    };
    let Some(last) = page.last().map(|m| m.id) else {
        return Page::Empty;
    };
    let mut stanzas = Vec::with_capacity(page.len());
    for m in page {
        match parse_stanza(&m.stanza, ns::CLIENT) {
            Ok(mut el) => {
                el.set_attr("to", session.jid.to_string());
                stanzas.push(el);
            }
            // Deleted with its page: it can never be delivered.
            Err(e) => tracing::error!(id = m.id, error = %e, "dropping a corrupt offline message"),
        }
    }
    if stanzas.is_empty() {
        return Page::Sent(last, None);
    }
    match session.send_tracked(stanzas) {
        Some(receipt) => Page::Sent(last, Some(receipt)),
        None => Page::Failed,
    }
}

/// Waits for each page to reach the client, deletes it and sends the next,
/// until nothing is left or the session ends.
async fn follow(waiting: Arc<Mutex<Waiting>>, cx: Cx, session: Arc<SessionHandle>, mut page: Page) {
    let user = session.jid.bare();
    let shutdown = cx.shutdown_token();
    let finished = loop {
        let (last, receipt) = match page {
            Page::Empty => break true,
            Page::Failed => break false,
            Page::Sent(last, receipt) => (last, receipt),
        };
        if let Some(receipt) = receipt {
            let delivered = tokio::select! {
                r = receipt => r.is_ok(),
                _ = shutdown.cancelled() => false,
            };
            if !delivered {
                break false;
            }
        }
        if let Err(e) = cx.stores().offline.remove_up_to(user, last).await {
            tracing::error!(error = %e, %user, "removing delivered offline messages failed");
            break false;
        }
        page = send_page(&cx, &session, last).await;
    };
    let mut w = lock(&waiting);
    w.delivering.remove(user);
    if !finished {
        // Stopped short (the session ended first, or a store error): the
        // rest is still stored; look again at the next login.
        w.owners.insert(user.clone());
    }
}

impl Module for Offline {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.server_feature(ns::OFFLINE);
        reg.hook(Hook::Undeliverable, Priority::NORMAL, self.clone());
        reg.on_events(self);
        Ok(())
    }
}

/// Chat states and receipts alone are not worth keeping (XEP-0160 §3, XEP-0334).
fn worth_storing(msg: &Element) -> bool {
    if msg.has_child("no-store", HINTS) {
        return false;
    }
    msg.has_child("body", ns::CLIENT) || msg.has_child("store", HINTS)
}

#[async_trait]
impl StanzaHook for Offline {
    fn wants(&self, _hook: Hook, name: &str) -> bool {
        name == "message"
    }

    async fn handle_stanza(&self, cx: &Cx, _hook: Hook, msg: &mut Element) -> Flow {
        if msg.name != "message" {
            return Flow::Continue;
        }
        if !worth_storing(msg) {
            return Flow::Handled;
        }
        let Some(to) = msg.attr("to").and_then(|t| Jid::parse(t).ok()) else {
            return Flow::Continue;
        };
        let user = to.to_bare();
        let mut stored = msg.clone();
        stored
            .remove_children(|c| c.is("delay", ns::DELAY) && c.attr("from") == Some(user.domain()));
        stored.push_child(
            Element::new("delay", ns::DELAY)
                .with_attr("from", user.domain())
                .with_attr("stamp", waxwing_core::time::now())
                .with_text("Offline Storage"),
        );
        match cx
            .stores()
            .offline
            .push(&user, &stored.to_xml(), cx.config().offline_quota)
            .await
        {
            // Into the set once stored: whichever login comes next reads it.
            Ok(true) => self.keep(&user),
            Ok(false) => {
                cx.bounce(
                    msg,
                    StanzaError::cancel(Condition::ServiceUnavailable)
                        .with_text("offline storage is full"),
                )
                .await;
            }
            Err(e) => {
                tracing::error!(error = %e, %user, "storing an offline message failed");
                cx.bounce(msg, StanzaError::wait(Condition::InternalServerError))
                    .await;
            }
        }
        Flow::Handled
    }
}

#[async_trait]
impl EventHandler for Offline {
    async fn on_event(&self, cx: &Cx, event: &Event) {
        let session = match event {
            Event::InitialPresence(session) => session,
            Event::Started => return self.load_owners(cx).await,
            Event::UserDeleted(user) => {
                self.waiting().owners.remove(user);
                return;
            }
            _ => return,
        };
        // Negative priority: the resource never gets bare-JID messages (RFC 6121 §8.5.2.1.1).
        if session.priority() < 0 {
            return;
        }
        if !self.take(session.jid.bare()) {
            return;
        }
        // The first page is queued before the initial presence is answered
        // (a client's next request finds its messages ahead of the answer);
        // the rest is not awaited here: this runs in the session's own
        // task, which must be free to write what is queued.
        let first = send_page(cx, session, 0).await;
        cx.spawn_background(follow(
            self.waiting.clone(),
            cx.clone(),
            session.clone(),
            first,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_meaningful_messages_are_stored() {
        let body = Element::new("message", ns::CLIENT)
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"));
        assert!(worth_storing(&body));
        let state = Element::new("message", ns::CLIENT).with_child(Element::new(
            "composing",
            "http://jabber.org/protocol/chatstates",
        ));
        assert!(!worth_storing(&state));
        let hinted = state.clone().with_child(Element::new("store", HINTS));
        assert!(worth_storing(&hinted));
        let no_store = body.with_child(Element::new("no-store", HINTS));
        assert!(!worth_storing(&no_store));
    }
}
