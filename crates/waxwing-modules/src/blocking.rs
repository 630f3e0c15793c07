//! XEP-0191: Blocking Command.
//!
//! Block, unblock and list, with pushes to the resources that asked for the
//! list (§3.2–3.4). Enforcement runs first in both stanza chains
//! ([`Priority::EARLY`]), so nothing else (presence engine, offline storage,
//! carbons) ever sees a blocked stanza:
//!
//! - **Inbound**, from a blocked JID to the user (§3.3): presence and
//!   messages are dropped without an answer — an error would tell the sender
//!   it is blocked, as an offline user with offline storage never bounces;
//!   IQ get/set get `service-unavailable`; other IQs are dropped.
//! - **From the user to a blocked JID**: stanzas the client sent get
//!   `not-acceptable` + `<blocked xmlns='urn:xmpp:blocking:errors'/>`;
//!   presence the server emits for the user (broadcasts, probe answers) is
//!   dropped silently. Messages and presence are caught on
//!   [`Hook::Outbound`]; IQs, which skip that chain, on [`Hook::Inbound`]
//!   of a local recipient.
//!
//! Error replies for blocked traffic go straight to the sender's session,
//! not through the router: routed, they would be swallowed by the very
//! block they report on.
//!
//! **Spam reports** (XEP-0377): a `<report xmlns='urn:xmpp:reporting:1'/>`
//! with reason `spam` or `abuse` inside a `<block><item/>` counts against
//! the reported JID's domain when it is remote (the federation reputation
//! in `waxwing_core::s2s::reputation`). Only items not already blocked are
//! counted, so re-sending a block does not repeat the report.
//!
//! Every stanza consults the blocklist of its sender or recipient, so lists
//! are cached in memory. A generation counter keeps a slow read that raced
//! a write from caching the old list. In a cluster other nodes change lists
//! too: every write is announced (`Cx::announce_change`) and the other
//! nodes drop their copy (`Event::SharedDataChanged`), or all of them when
//! they may have missed announcements. (Reading the store for every stanza
//! instead cost two PostgreSQL round trips per message: 50 times the CPU
//! of the message itself.)

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use waxwing_core::fast_map::FastMap;
use waxwing_core::hooks::{
    Cx, Event, EventHandler, FanoutCopy, Flow, Hook, Iq, IqHandler, IqResult, IqTarget, Module,
    Priority, RegisterError, Registrar, StanzaHook,
};
use waxwing_core::s2s::reputation::Offence;
use waxwing_core::session::{AccountFact, SessionHandle};
use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError, error_reply};
use waxwing_proto::xml::Element;
use waxwing_store::{StoreError, Subscription};

use crate::{internal, stanza_id};

/// XEP-0191 namespace.
pub const BLOCKING: &str = "urn:xmpp:blocking";
/// XEP-0191 application error namespace.
pub const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";

/// The cache's name in cluster announcements.
const TOPIC: &str = "blocking";

/// Above this many cached lists the cache starts over: a bound on memory,
/// not a policy (a reload is one indexed query).
const CACHE_LIMIT: usize = 50_000;

/// The blocking command.
#[derive(Default)]
pub struct Blocking {
    cache: Mutex<Cache>,
    /// Sessions (by id) that retrieved the blocklist and so get pushes (§3.2).
    interested: Mutex<HashSet<u64>>,
}

#[derive(Default)]
struct Cache {
    /// Looked up for every message, up to three times: see `FastMap`.
    lists: FastMap<BareJid, Arc<Vec<Jid>>>,
    generation: u64,
}

impl Blocking {
    pub fn new() -> Self {
        Self::default()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn interested(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.interested.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The owner's blocklist, from the cache or the store.
    async fn list(&self, cx: &Cx, owner: &BareJid) -> Result<Arc<Vec<Jid>>, StoreError> {
        let generation = {
            let cache = self.cache();
            if let Some(list) = cache.lists.get(owner) {
                return Ok(list.clone());
            }
            cache.generation
        };
        let list = Arc::new(cx.stores().blocklist.list(owner).await?);
        let mut cache = self.cache();
        if cache.generation == generation {
            if cache.lists.len() >= CACHE_LIMIT {
                cache.lists.clear();
            }
            cache.lists.insert(owner.clone(), list.clone());
        }
        Ok(list)
    }

    /// Forgets a cached list after a write, and any read that started
    /// before it, and withdraws the account's "blocks nobody" (under the
    /// cache's lock, where it is set: see [`Self::decide_now`]).
    fn invalidate(&self, cx: &Cx, owner: &BareJid) {
        let mut cache = self.cache();
        cache.generation += 1;
        cache.lists.remove(owner);
        cx.withdraw_account_fact(owner, AccountFact::BlocksNobody);
    }

    /// [`Self::invalidate`] for every owner.
    fn invalidate_all(&self, cx: &Cx) {
        let mut cache = self.cache();
        cache.generation += 1;
        cache.lists.clear();
        cx.withdraw_account_fact_everywhere(AccountFact::BlocksNobody);
    }

    /// [`Self::invalidate`] here and on the other nodes of a cluster.
    async fn invalidate_everywhere(&self, cx: &Cx, owner: &BareJid) {
        self.invalidate(cx, owner);
        cx.announce_change(TOPIC, &owner.to_string()).await;
    }
}

impl Module for Blocking {
    fn name(&self) -> &'static str {
        "blocking"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.server_feature(BLOCKING);
        reg.server_feature(REPORTING);
        reg.iq(IqTarget::Account, BLOCKING, self.clone())?;
        reg.hook(Hook::Outbound, Priority::EARLY, self.clone());
        reg.hook(Hook::Inbound, Priority::EARLY, self.clone());
        reg.on_events(self);
        Ok(())
    }
}

/// XEP-0191 §6 (the XEP-0016 order): a full JID item matches only itself,
/// a bare JID any of its resources, `domain/resource` only itself, and a
/// domain everything at that domain.
pub fn matches(item: &Jid, who: &Jid) -> bool {
    match (item.local().is_some(), item.resource()) {
        (true, Some(_)) | (false, Some(_)) => item == who,
        (true, None) => item.bare() == who.bare(),
        (false, None) => item.domain() == who.domain(),
    }
}

/// What a blocking IQ asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    List,
    Block(Vec<Jid>),
    /// An empty list means "unblock everything" (§3.4).
    Unblock(Vec<Jid>),
}

fn parse_request(payload: &Element, is_set: bool) -> Result<Request, StanzaError> {
    if payload.ns != BLOCKING {
        return Err(StanzaError::modify(Condition::BadRequest));
    }
    let items = || -> Result<Vec<Jid>, StanzaError> {
        let mut out = Vec::new();
        for c in payload.children() {
            if !c.is("item", BLOCKING) {
                return Err(StanzaError::modify(Condition::BadRequest));
            }
            let jid = c
                .attr("jid")
                .and_then(|j| Jid::parse(j).ok())
                .ok_or_else(|| StanzaError::modify(Condition::JidMalformed))?;
            if !out.contains(&jid) {
                out.push(jid);
            }
        }
        Ok(out)
    };
    match (is_set, payload.name.as_str()) {
        (false, "blocklist") => Ok(Request::List),
        (true, "block") => {
            let items = items()?;
            if items.is_empty() {
                return Err(StanzaError::modify(Condition::BadRequest)
                    .with_text("<block/> needs at least one <item/>"));
            }
            Ok(Request::Block(items))
        }
        (true, "unblock") => Ok(Request::Unblock(items()?)),
        _ => Err(StanzaError::modify(Condition::BadRequest)),
    }
}

/// XEP-0377 namespace.
pub const REPORTING: &str = "urn:xmpp:reporting:1";

/// Items of a `<block/>` that carry a XEP-0377 spam or abuse report.
fn spam_reported(payload: &Element) -> Vec<Jid> {
    payload
        .children()
        .filter(|item| {
            item.child("report", REPORTING).is_some_and(|r| {
                matches!(
                    r.attr("reason"),
                    Some("urn:xmpp:reporting:spam" | "urn:xmpp:reporting:abuse")
                )
            })
        })
        .filter_map(|item| item.attr("jid").and_then(|j| Jid::parse(j).ok()))
        .collect()
}

fn item_list(name: &str, items: &[Jid]) -> Element {
    let mut el = Element::new(name, BLOCKING);
    for j in items {
        el.push_child(Element::new("item", BLOCKING).with_attr("jid", j.to_string()));
    }
    el
}

#[async_trait]
impl IqHandler for Blocking {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult {
        let Some(origin) = cx.origin().cloned() else {
            return Err(StanzaError::cancel(Condition::NotAllowed));
        };
        let owner = origin.jid.bare().clone();
        if iq.to.as_ref().is_some_and(|t| t.bare() != &owner) {
            return Err(StanzaError::cancel(Condition::Forbidden));
        }
        match parse_request(&iq.payload, iq.is_set)? {
            Request::List => {
                let list = self.list(cx, &owner).await.map_err(internal)?;
                self.interested().insert(origin.id);
                Ok(Some(item_list("blocklist", &list)))
            }
            Request::Block(items) => {
                // Before the block takes effect, or our own enforcement
                // would swallow the goodbye (§3.3: MUST send unavailable).
                for p in unavailable_for(cx, &owner, &items).await {
                    cx.route(p).await;
                }
                let reported = spam_reported(&iq.payload);
                let before = if reported.is_empty() {
                    Arc::new(Vec::new())
                } else {
                    self.list(cx, &owner).await.map_err(internal)?
                };
                let stored = cx.stores().blocklist.block(&owner, &items).await;
                self.invalidate_everywhere(cx, &owner).await;
                stored.map_err(internal)?;
                for j in reported.iter().filter(|j| !before.contains(j)) {
                    tracing::info!(reporter = %owner, reported = %j, "spam report");
                    cx.record_offence(j.domain(), Offence::SpamReport).await;
                }
                self.push(cx, &owner, item_list("block", &items));
                Ok(None)
            }
            Request::Unblock(items) => {
                let unblocked = if items.is_empty() {
                    cx.stores().blocklist.unblock_all(&owner).await
                } else {
                    cx.stores()
                        .blocklist
                        .unblock(&owner, &items)
                        .await
                        .map(|()| items.clone())
                };
                self.invalidate_everywhere(cx, &owner).await;
                let unblocked = unblocked.map_err(internal)?;
                self.push(cx, &owner, item_list("unblock", &items));
                // §3.4: MUST send current presence to those entitled to it.
                for p in presence_for(cx, &owner, &unblocked).await {
                    cx.route(p).await;
                }
                Ok(None)
            }
        }
    }
}

impl Blocking {
    /// A block/unblock push to every resource that retrieved the list.
    fn push(&self, cx: &Cx, owner: &BareJid, payload: Element) {
        let interested = self.interested().clone();
        for s in cx.sessions_of(owner) {
            if interested.contains(&s.id) {
                s.send(
                    Element::new("iq", ns::CLIENT)
                        .with_attr("type", "set")
                        .with_attr("id", stanza_id("block"))
                        .with_attr("to", s.jid.to_string())
                        .with_child(payload.clone()),
                );
            }
        }
    }
}

/// Contacts in `owner`'s roster that get its presence (`from`/`both`) and
/// match one of `items`.
async fn entitled_contacts(cx: &Cx, owner: &BareJid, items: &[Jid]) -> Vec<BareJid> {
    let roster = match cx.stores().roster.items(owner).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, %owner, "roster read failed while (un)blocking");
            return Vec::new();
        }
    };
    roster
        .into_iter()
        .filter(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
        .map(|i| i.contact)
        .filter(|c| {
            let c = Jid::Bare(c.clone());
            items.iter().any(|item| matches(item, &c))
        })
        .collect()
}

/// Unavailable presence from each available resource of `owner` to the
/// blocked contacts that could see it, including directed-presence
/// recipients (which stop being tracked).
async fn unavailable_for(cx: &Cx, owner: &BareJid, items: &[Jid]) -> Vec<Element> {
    let contacts = entitled_contacts(cx, owner, items).await;
    let mut out = Vec::new();
    for s in cx.sessions_of(owner) {
        if !s.is_available() {
            continue;
        }
        let directed: Vec<Jid> = s.with_presence(|st| {
            let hit: Vec<Jid> = st
                .directed
                .iter()
                .filter(|d| items.iter().any(|item| matches(item, d)))
                .cloned()
                .collect();
            for d in &hit {
                st.directed.remove(d);
            }
            hit
        });
        let targets = contacts
            .iter()
            .map(ToString::to_string)
            .chain(directed.iter().map(ToString::to_string));
        for to in targets {
            out.push(
                Element::new("presence", ns::CLIENT)
                    .with_attr("type", "unavailable")
                    .with_attr("from", s.jid.to_string())
                    .with_attr("to", to),
            );
        }
    }
    out
}

/// Current presence of each available resource of `owner` to the unblocked
/// contacts entitled to it.
async fn presence_for(cx: &Cx, owner: &BareJid, unblocked: &[Jid]) -> Vec<Element> {
    if unblocked.is_empty() {
        return Vec::new();
    }
    let contacts = entitled_contacts(cx, owner, unblocked).await;
    let mut out = Vec::new();
    for s in cx.sessions_of(owner) {
        let Some(last) = s.with_presence(|st| st.last.clone()) else {
            continue;
        };
        for c in &contacts {
            let mut p = last.clone();
            p.set_attr("from", s.jid.to_string());
            p.set_attr("to", c.to_string());
            out.push(p);
        }
    }
    out
}

/// Sends an error for `stanza` straight to the local session that sent it
/// (see the module docs for why not through the router).
fn reply_to_sender(cx: &Cx, stanza: &Element, err: StanzaError, blocked: bool) {
    let Some(mut reply) = error_reply(stanza, &err) else {
        return;
    };
    if blocked && let Some(e) = reply.child_mut("error", &stanza.ns) {
        e.push_child(Element::new("blocked", BLOCKING_ERRORS));
    }
    let Some(to) = reply.attr("to").and_then(|t| Jid::parse(t).ok()) else {
        return;
    };
    if let Some(session) = to.as_full().and_then(|f| cx.session(f)) {
        session.send(reply);
    }
}

fn not_acceptable() -> StanzaError {
    StanzaError::cancel(Condition::NotAcceptable)
}

/// A stanza's sender as the blocking rules read it: the local session
/// that sent it (its address already prepared), or `from` parsed.
enum Sender<'a> {
    Session(&'a FullJid),
    Parsed(Jid),
}

impl Sender<'_> {
    fn bare(&self) -> &BareJid {
        match self {
            Sender::Session(f) => f.bare(),
            Sender::Parsed(j) => j.bare(),
        }
    }

    /// As a [`Jid`] for [`matches`]; a copy only for a session's address,
    /// and only made when a non-empty blocklist is checked.
    fn jid(&self) -> std::borrow::Cow<'_, Jid> {
        match self {
            Sender::Session(f) => std::borrow::Cow::Owned(Jid::Full((*f).clone())),
            Sender::Parsed(j) => std::borrow::Cow::Borrowed(j),
        }
    }
}

impl Blocking {
    /// The list cached for `owner`, if any.
    fn cached(&self, owner: &BareJid) -> Option<Arc<Vec<Jid>>> {
        self.cache().lists.get(owner).cloned()
    }

    /// [`Self::list`], a store failure read as an empty list: losing a
    /// stanza to a database hiccup would be worse than letting one through.
    async fn list_or_empty(&self, cx: &Cx, owner: &BareJid) -> Arc<Vec<Jid>> {
        self.list(cx, owner).await.unwrap_or_else(|e| {
            tracing::error!(error = %e, %owner, "reading the blocklist failed");
            Arc::default()
        })
    }

    /// The decision on `stanza` (see the module docs), with `list` giving
    /// the blocklists it needs: `Err(owner)` when `owner`'s is needed and
    /// `list` does not have it. Nothing is sent before every list needed
    /// was found, so a caller may ask again once it has read that one.
    ///
    /// Addresses come from the router where it has them (`Cx::to_of`,
    /// `Cx::sender_of`) and are parsed only otherwise; a sender's address
    /// is copied only to check a non-empty list.
    fn decide<'l>(
        &self,
        cx: &Cx,
        hook: Hook,
        stanza: &Element,
        list: &mut dyn FnMut(&BareJid) -> Option<&'l [Jid]>,
    ) -> Result<Flow, BareJid> {
        let mut need = |owner: &BareJid| list(owner).ok_or_else(|| owner.clone());
        // Without `to` (a presence broadcast) there is nothing to decide
        // (on `Inbound`, `Cx::to_of` says so below).
        match hook {
            Hook::Outbound => {
                if stanza.attr("to").is_none() {
                    return Ok(Flow::Continue);
                }
                // Client-sent message or presence to a JID it blocks. An
                // account that blocks nobody, the common case, is decided
                // without looking at an address.
                let Some(origin) = cx.origin() else {
                    return Ok(Flow::Continue);
                };
                let mine = need(origin.jid.bare())?;
                if mine.is_empty() {
                    return Ok(Flow::Continue);
                }
                let Some(to) = cx.to_of(stanza) else {
                    return Ok(Flow::Continue);
                };
                let Some(from) = stanza.attr("from").and_then(|f| Jid::parse(f).ok()) else {
                    return Ok(Flow::Continue);
                };
                // An account never blocks its own resources (§5 note).
                if from.bare() == to.bare() || !mine.iter().any(|item| matches(item, &to)) {
                    return Ok(Flow::Continue);
                }
                reply_to_sender(cx, stanza, not_acceptable(), true);
                Ok(Flow::Handled)
            }
            Hook::Inbound => {
                let Some(to) = cx.to_of(stanza) else {
                    return Ok(Flow::Continue);
                };
                let from = match cx.sender_of(stanza) {
                    Some(s) => Sender::Session(&s.jid),
                    None => match stanza.attr("from").and_then(|f| Jid::parse(f).ok()) {
                        Some(f) => Sender::Parsed(f),
                        None => return Ok(Flow::Continue),
                    },
                };
                if from.bare() == to.bare() {
                    return Ok(Flow::Continue);
                }
                // The server itself (IQ results, announcements) is never
                // blocked: a user blocking their own domain would cut
                // themselves off.
                let from_host = cx.is_local_host(from.bare().domain());
                let from_server = from.bare().local().is_none() && from_host;
                if to.local().is_some() && !from_server {
                    let theirs = need(to.bare())?;
                    if !theirs.is_empty() && theirs.iter().any(|item| matches(item, &from.jid())) {
                        if stanza.name == "iq" && matches!(stanza.attr("type"), Some("get" | "set"))
                        {
                            reply_to_sender(
                                cx,
                                stanza,
                                StanzaError::cancel(Condition::ServiceUnavailable),
                                false,
                            );
                        }
                        return Ok(Flow::Handled);
                    }
                }
                let from_local = from.bare().local().is_some() && from_host;
                if from_local {
                    let mine = need(from.bare())?;
                    if mine.iter().any(|item| matches(item, &to)) {
                        // Server-made presence for the user is dropped
                        // silently; a request the user's client sent is refused.
                        if stanza.name != "presence" {
                            reply_to_sender(cx, stanza, not_acceptable(), true);
                        }
                        return Ok(Flow::Handled);
                    }
                }
                Ok(Flow::Continue)
            }
            Hook::Undeliverable => Ok(Flow::Continue),
        }
    }
}

#[async_trait]
impl StanzaHook for Blocking {
    /// A room's message to an occupant: dropped when the occupant blocks
    /// the room (or the occupant's JID in it), decided from the cached list
    /// (the occupant's own stanzas, its join included, read it). The rest
    /// (an uncached list, a sender that is a local account, whose list may
    /// call for an error reply) takes [`Self::handle_stanza`].
    fn decide_copy(&self, cx: &Cx, copy: &FanoutCopy<'_>) -> Option<Flow> {
        let (from, to) = (copy.from, copy.to);
        if from.bare() == to.bare() || to.local().is_none() {
            return Some(Flow::Continue);
        }
        if cx.is_local_host(from.domain()) {
            return None;
        }
        let list = self.cached(to.bare())?;
        Some(if list.iter().any(|item| matches(item, from)) {
            Flow::Handled
        } else {
            Flow::Continue
        })
    }

    /// Decided here whenever the lists involved are cached (nearly always),
    /// under one lock of the cache for the up to two lists a stanza needs,
    /// read in place: no reference count touched (the same lists are read
    /// by every thread that routes a message of these accounts).
    ///
    /// Most accounts block nobody. An empty list read here from the cache
    /// is recorded on the account's sessions ([`AccountFact::BlocksNobody`]),
    /// under the cache's lock, where [`Self::invalidate`] withdraws it: a
    /// fact read is never older than the last write to the list. When every
    /// list a stanza needs is known empty that way, it goes on without the
    /// lock (see [`blocks_nobody_involved`]).
    fn decide_now(&self, cx: &Cx, hook: Hook, stanza: &Element) -> Option<Flow> {
        if blocks_nobody_involved(cx, hook, stanza) {
            return Some(Flow::Continue);
        }
        let cache = self.cache();
        self.decide(cx, hook, stanza, &mut |owner| {
            let list = cache.lists.get(owner)?;
            if list.is_empty() {
                note_blocks_nobody(cx, stanza, owner);
            }
            Some(list.as_slice())
        })
        .ok()
    }

    async fn handle_stanza(&self, cx: &Cx, hook: Hook, stanza: &mut Element) -> Flow {
        // The lists not cached are read (at most the sender's and the
        // recipient's), then decided as `decide_now` would.
        let mut read: Vec<(BareJid, Arc<Vec<Jid>>)> = Vec::new();
        loop {
            // The lock is let go before the store is read.
            let decided = {
                let cache = self.cache();
                self.decide(cx, hook, stanza, &mut |owner| {
                    read.iter()
                        .find(|(o, _)| o == owner)
                        .map(|(_, l)| l.as_slice())
                        .or_else(|| cache.lists.get(owner).map(|l| l.as_slice()))
                })
            };
            match decided {
                Ok(flow) => return flow,
                Err(owner) => {
                    let list = self.list_or_empty(cx, &owner).await;
                    read.push((owner, list));
                }
            }
        }
    }
}

/// Whether `decide` needs only lists known empty for `stanza` (from the
/// facts of the sessions at hand), so that it would go on: on `Outbound`
/// the sender's; on `Inbound`, from a local session to a local session,
/// the recipient's and the sender's. Anything else is left to `decide`.
fn blocks_nobody_involved(cx: &Cx, hook: Hook, stanza: &Element) -> bool {
    let blocks_nobody = |s: &SessionHandle| s.account_fact(AccountFact::BlocksNobody);
    match hook {
        Hook::Outbound => cx.origin().is_some_and(|o| blocks_nobody(o)),
        Hook::Inbound => {
            cx.recipient().is_some_and(|r| blocks_nobody(r))
                && cx.sender_of(stanza).is_some_and(|s| blocks_nobody(s))
        }
        Hook::Undeliverable => false,
    }
}

/// Records that `owner` blocks nobody on whichever of the stanza's
/// sessions at hand belongs to `owner`. Called with the cache locked.
fn note_blocks_nobody(cx: &Cx, stanza: &Element, owner: &BareJid) {
    let at_hand = [cx.origin(), cx.sender_of(stanza), cx.recipient()];
    for s in at_hand.into_iter().flatten() {
        if s.jid.bare() == owner {
            s.set_account_fact(AccountFact::BlocksNobody);
        }
    }
}

#[async_trait]
impl EventHandler for Blocking {
    async fn on_event(&self, cx: &Cx, event: &Event) {
        match event {
            Event::SessionClosed(s) => {
                self.interested().remove(&s.id);
            }
            Event::UserDeleted(user) => {
                if let Err(e) = cx.stores().blocklist.remove_user(user).await {
                    tracing::error!(error = %e, %user, "removing a deleted account's blocklist failed");
                }
                self.invalidate_everywhere(cx, user).await;
            }
            Event::SharedDataChanged { topic, key } => match (topic.as_deref(), key) {
                (Some(TOPIC), Some(key)) => {
                    if let Ok(owner) = BareJid::parse(key) {
                        self.invalidate(cx, &owner);
                    }
                }
                (None, _) => self.invalidate_all(cx),
                _ => {}
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> Jid {
        Jid::parse(s).unwrap()
    }

    #[test]
    fn jid_matching_follows_xep_0016_order() {
        let full = j("romeo@montague.example/orchard");
        let other_res = j("romeo@montague.example/home");
        let bare = j("romeo@montague.example");
        let server = j("montague.example");
        let server_res = j("montague.example/x");
        assert!(matches(&full, &full));
        assert!(!matches(&full, &other_res));
        assert!(!matches(&full, &bare));
        assert!(matches(&bare, &full));
        assert!(matches(&bare, &bare));
        assert!(!matches(&bare, &j("tybalt@montague.example")));
        assert!(matches(&server_res, &server_res));
        assert!(!matches(&server_res, &server));
        assert!(!matches(&server_res, &full));
        assert!(matches(&server, &full));
        assert!(matches(&server, &server));
        assert!(matches(&server, &server_res));
        assert!(!matches(&server, &j("juliet@capulet.example")));
    }

    #[test]
    fn parses_requests() {
        let list = Element::new("blocklist", BLOCKING);
        assert_eq!(parse_request(&list, false), Ok(Request::List));
        let block = Element::new("block", BLOCKING)
            .with_child(Element::new("item", BLOCKING).with_attr("jid", "a@b"))
            .with_child(Element::new("item", BLOCKING).with_attr("jid", "a@b"));
        assert_eq!(
            parse_request(&block, true),
            Ok(Request::Block(vec![j("a@b")]))
        );
        let unblock_all = Element::new("unblock", BLOCKING);
        assert_eq!(
            parse_request(&unblock_all, true),
            Ok(Request::Unblock(vec![]))
        );
    }

    #[test]
    fn finds_spam_reports() {
        let report = |reason: &str| Element::new("report", REPORTING).with_attr("reason", reason);
        let block = Element::new("block", BLOCKING)
            .with_child(
                Element::new("item", BLOCKING)
                    .with_attr("jid", "spammer@spam.example")
                    .with_child(report("urn:xmpp:reporting:spam")),
            )
            .with_child(Element::new("item", BLOCKING).with_attr("jid", "quiet@b.example"))
            .with_child(
                Element::new("item", BLOCKING)
                    .with_attr("jid", "x@c.example")
                    .with_child(report("urn:xmpp:reporting:other")),
            );
        assert_eq!(spam_reported(&block), vec![j("spammer@spam.example")]);
        // The request itself still parses: reports ride on ordinary items.
        assert!(matches!(parse_request(&block, true), Ok(Request::Block(v)) if v.len() == 3));
    }

    #[test]
    fn rejects_bad_requests() {
        let empty_block = Element::new("block", BLOCKING);
        assert_eq!(
            parse_request(&empty_block, true).unwrap_err().condition,
            Condition::BadRequest
        );
        let bad_jid = Element::new("block", BLOCKING)
            .with_child(Element::new("item", BLOCKING).with_attr("jid", "a@@b"));
        assert_eq!(
            parse_request(&bad_jid, true).unwrap_err().condition,
            Condition::JidMalformed
        );
        let no_jid = Element::new("unblock", BLOCKING).with_child(Element::new("item", BLOCKING));
        assert_eq!(
            parse_request(&no_jid, true).unwrap_err().condition,
            Condition::JidMalformed
        );
        let stray = Element::new("block", BLOCKING).with_child(Element::new("x", "urn:x"));
        assert_eq!(
            parse_request(&stray, true).unwrap_err().condition,
            Condition::BadRequest
        );
        // get on a set element and vice versa
        assert!(parse_request(&Element::new("blocklist", BLOCKING), true).is_err());
        assert!(parse_request(&Element::new("unblock", BLOCKING), false).is_err());
    }

    #[test]
    fn item_lists_serialize() {
        assert_eq!(
            item_list("block", &[j("a@b")]).to_xml(),
            "<block xmlns='urn:xmpp:blocking'><item jid='a@b'/></block>"
        );
    }
}
