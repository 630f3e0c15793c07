//! XEP-0313: Message Archive Management (`urn:xmpp:mam:2` and `#extended`),
//! paged with XEP-0059 Result Set Management, every archived message
//! stamped with a XEP-0359 stanza-id, preferences as in XEP-0441.
//!
//! A message is archived twice when both ends are local: in the sender's
//! archive at [`Hook::Outbound`] and in the recipient's at [`Hook::Inbound`].
//! Inbound runs before delivery *and* before offline storage
//! ([`Hook::Undeliverable`]), so one stamp covers the online recipient, the
//! offline copy and the carbons made from [`Event::MessageDelivered`].
//! Corrections (XEP-0308), retractions (XEP-0424) and encrypted messages
//! carry no `<body/>` that matters but are archived all the same, so that a
//! client syncing history replays them.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Event, EventHandler, FanoutCopy, Flow, Hook, Iq, IqHandler, IqResult, IqTarget, Module,
    Priority, RegisterError, Registrar, StanzaHook,
};
use waxwing_core::time::xep0082;
use waxwing_proto::datetime;
use waxwing_proto::jid::{BareJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::payload::rsm;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::{Element, parse_stanza};
use waxwing_store::StoreError;
use waxwing_store::archive::{
    ArchiveOwner, ArchivePrefs, ArchiveQuery, DefaultPolicy, Item, NewItem, OwnerKind, Page,
};

use crate::{internal, stanza_id};

/// XEP-0313 namespace (queries, results, prefs, metadata).
pub const NS: &str = "urn:xmpp:mam:2";
/// XEP-0313 `before-id`/`after-id`/`ids`, flipped pages and metadata.
pub const NS_EXTENDED: &str = "urn:xmpp:mam:2#extended";
/// XEP-0359: Unique and Stable Stanza IDs.
pub const NS_SID: &str = "urn:xmpp:sid:0";
/// XEP-0059: Result Set Management.
/// XEP-0297: Stanza Forwarding.
const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0334: Message Processing Hints.
const NS_HINTS: &str = "urn:xmpp:hints";
/// XEP-0122: Data Forms Validation (the open `ids` list).
const NS_XDATA_VALIDATE: &str = "http://jabber.org/protocol/xdata-validate";

/// Payloads that make a message without `<body/>` worth archiving: replaying
/// history without them would show edited or retracted messages as they
/// were, and lose encrypted ones altogether.
const ARCHIVED_PAYLOADS: &[(&str, &str)] = &[
    // XEP-0308 Last Message Correction.
    ("replace", "urn:xmpp:message-correct:0"),
    // XEP-0424 Message Retraction, current and 0.x (fastened) forms.
    ("retract", "urn:xmpp:message-retract:1"),
    ("apply-to", "urn:xmpp:fasten:0"),
    // XEP-0384 OMEMO, legacy and current.
    ("encrypted", "eu.siacs.conversations.axolotl"),
    ("encrypted", "urn:xmpp:omemo:2"),
    // XEP-0373/0027 OpenPGP.
    ("openpgp", "urn:xmpp:openpgp:0"),
    ("x", "jabber:x:encrypted"),
    // XEP-0444 Message Reactions.
    ("reactions", "urn:xmpp:reactions:0"),
    // XEP-0353 Jingle Message Initiation: a client that was offline sees
    // the missed call (propose/retract) and how it ended.
    ("propose", "urn:xmpp:jingle-message:0"),
    ("retract", "urn:xmpp:jingle-message:0"),
    ("accept", "urn:xmpp:jingle-message:0"),
    ("proceed", "urn:xmpp:jingle-message:0"),
    ("reject", "urn:xmpp:jingle-message:0"),
    ("finish", "urn:xmpp:jingle-message:0"),
    // XEP-0334: the sender asks for storage.
    ("store", NS_HINTS),
];

/// Page size when the client gives no `<max/>`.
const DEFAULT_PAGE: usize = 50;
/// Largest page sent, whatever the client asks: results are queued on the
/// session all at once, and its queue is bounded.
const MAX_PAGE: usize = 250;
/// Most ids accepted in the `ids` field.
const MAX_IDS: usize = 250;
/// How often retention runs.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);

/// After blocking (EARLY) and anything else that may drop a message
/// (NORMAL): what is dropped is not archived. Before LATE hooks (carbons),
/// so they see the stanza-id.
const ARCHIVE_PRIORITY: Priority = Priority(50);

/// Message archives for every account.
#[derive(Default)]
pub struct Mam {
    /// The retention task is started once, at the first bound session:
    /// registration has no runtime context to start it from.
    purge_started: AtomicBool,
}

impl Module for Mam {
    fn name(&self) -> &'static str {
        "mam"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.account_feature(NS);
        reg.account_feature(NS_EXTENDED);
        reg.account_feature(NS_SID);
        reg.iq(IqTarget::Account, NS, self.clone())?;
        reg.hook(Hook::Outbound, ARCHIVE_PRIORITY, self.clone());
        reg.hook(Hook::Inbound, ARCHIVE_PRIORITY, self.clone());
        reg.on_events(self);
        Ok(())
    }
}

// ------------------------------------------------------------------ archiving

/// Messages a user would want in their history (XEP-0313 §7 baseline):
/// chat and normal messages with content, unless hinted otherwise.
/// Groupchat lives in the room's archive; headlines and errors are not kept.
fn worth_archiving(msg: &Element) -> bool {
    if !matches!(msg.attr("type").unwrap_or("normal"), "chat" | "normal") {
        return false;
    }
    if msg.has_child("no-store", NS_HINTS) || msg.has_child("no-permanent-store", NS_HINTS) {
        return false;
    }
    msg.has_child("body", ns::CLIENT)
        || ARCHIVED_PAYLOADS
            .iter()
            .any(|(name, ns)| msg.has_child(name, ns))
}

/// Whether `entry` in an always/never list covers `with`: a bare JID covers
/// every resource, a full JID only itself.
fn covers(entry: &Jid, with: &Jid) -> bool {
    match entry {
        Jid::Bare(b) => with.bare() == b,
        Jid::Full(_) => entry == with,
    }
}

/// The policy for one contact; `never` wins over `always`.
fn policy_for(prefs: &ArchivePrefs, with: &Jid) -> DefaultPolicy {
    if prefs.never.iter().any(|e| covers(e, with)) {
        DefaultPolicy::Never
    } else if prefs.always.iter().any(|e| covers(e, with)) {
        DefaultPolicy::Always
    } else {
        prefs.default
    }
}

/// Removes the `stanza-id`s in `msg` that claim `owner`'s archive; without
/// parsing a routed message's payload when it has none (the usual case).
fn strip_claims(msg: &mut Element, owner: &BareJid) {
    if msg.has_child("stanza-id", NS_SID) {
        msg.remove_children(|c| claims_archive(c, owner));
    }
}

/// True when the stanza-id claims to come from `owner`'s archive.
fn claims_archive(el: &Element, owner: &BareJid) -> bool {
    el.is("stanza-id", NS_SID)
        && el
            .attr("by")
            .and_then(|b| Jid::parse(b).ok())
            .is_some_and(|by| by.bare() == owner)
}

impl Mam {
    /// Whether `owner`'s preferences let messages with `with` be archived.
    /// Fails closed: if the preferences cannot be read, nothing is archived
    /// rather than something the user asked us not to keep. Such a message
    /// counts as a write failure: it is delivered unarchived all the same
    /// (the database is unreachable, typically), and the operator must see it.
    async fn allowed(&self, cx: &Cx, owner: &BareJid, with: &Jid) -> bool {
        let prefs = match cx.stores().archive.prefs(owner).await {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => {
                cx.metrics().archive_write_failures.inc();
                tracing::error!(error = %e, %owner, "reading archive preferences failed; delivered without archiving");
                return false;
            }
        };
        match policy_for(&prefs, with) {
            DefaultPolicy::Always => true,
            DefaultPolicy::Never => false,
            DefaultPolicy::Roster if with.bare() == owner => true,
            DefaultPolicy::Roster => match cx.stores().roster.get(owner, with.bare()).await {
                Ok(item) => item.is_some_and(|i| i.in_roster),
                Err(e) => {
                    cx.metrics().archive_write_failures.inc();
                    tracing::error!(error = %e, %owner, "reading the roster for archiving failed; delivered without archiving");
                    false
                }
            },
        }
    }

    async fn append(&self, cx: &Cx, owner: &BareJid, with: &Jid, msg: &Element) -> Option<String> {
        let stanza = msg.to_xml();
        let item = NewItem {
            with,
            stamp: SystemTime::now(),
            stanza: &stanza,
        };
        match cx
            .stores()
            .archive
            .append(&ArchiveOwner::User(owner.clone()), item)
            .await
        {
            Ok(id) => Some(id),
            Err(e) => {
                // Delivery goes on and the sender is not told (SECURITY.md,
                // "Delivery guarantees"): a message missing from history
                // beats a lost or resent one. The recipient's copy has no
                // <stanza-id/>, which is how a client can tell.
                cx.metrics().archive_write_failures.inc();
                tracing::error!(error = %e, %owner, "archiving a message failed; delivered without it");
                None
            }
        }
    }

    /// A message from one of our clients, into the sender's archive.
    async fn on_outbound(&self, cx: &Cx, msg: &mut Element) {
        // The addresses the router already prepared, where it has them.
        let owner = match cx.sender_of(msg) {
            Some(s) => s.jid.bare().clone(),
            None => match msg.attr("from").and_then(|f| Jid::parse(f).ok()) {
                Some(from) => from.to_bare(),
                None => return,
            },
        };
        // A client cannot speak for its own archive (XEP-0359 §5).
        strip_claims(msg, &owner);
        let to = match cx.to_of(msg) {
            Some(t) => t,
            None if msg.attr("to").is_none() => Cow::Owned(Jid::Bare(owner.clone())),
            None => return,
        };
        // To oneself: archived once, on the way in, where it gets its stanza-id.
        if to.bare() == &owner || !worth_archiving(msg) {
            return;
        }
        if self.allowed(cx, &owner, &to).await {
            self.append(cx, &owner, &to, msg).await;
        }
    }

    /// A message to a local account, into the recipient's archive; stamped
    /// with the archive id before delivery or offline storage.
    async fn on_inbound(&self, cx: &Cx, msg: &mut Element) {
        let Some(to) = cx.to_of(msg) else {
            return;
        };
        let owner = to.to_bare();
        if owner.local().is_none() {
            return;
        }
        // XEP-0359 §5: only we may claim ids in this archive, whatever the
        // message turns out to be.
        strip_claims(msg, &owner);
        if !worth_archiving(msg) {
            return;
        }
        let from = match cx.sender_of(msg) {
            Some(s) => Jid::Full(s.jid.clone()),
            None => match msg.attr("from").and_then(|f| Jid::parse(f).ok()) {
                Some(from) => from,
                None => return,
            },
        };
        // Inbound runs before the router checks that the account exists.
        if cx.sessions_of(&owner).is_empty() {
            match cx.stores().accounts.exists(&owner).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::error!(error = %e, %owner, "account lookup failed while archiving");
                    return;
                }
            }
        }
        if !self.allowed(cx, &owner, &from).await {
            return;
        }
        if let Some(id) = self.append(cx, &owner, &from, msg).await {
            msg.push_child(
                Element::new("stanza-id", NS_SID)
                    .with_attr("by", owner.to_string())
                    .with_attr("id", id),
            );
        }
    }

    /// Retention: purges user archives every [`PURGE_INTERVAL`], first at once.
    fn start_purge(&self, cx: &Cx) {
        let Some(retention) = cx.config().mam_retention else {
            return;
        };
        if self.purge_started.swap(true, Ordering::AcqRel) {
            return;
        }
        // Weak: the task must not keep the stores of a stopped server alive.
        let archive = Arc::downgrade(&cx.stores().archive);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PURGE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(archive) = archive.upgrade() else {
                    return;
                };
                let Some(cutoff) = SystemTime::now().checked_sub(retention) else {
                    continue;
                };
                match archive.purge_before(OwnerKind::User, cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "expired archived messages removed"),
                    Err(e) => tracing::error!(error = %e, "purging the message archive failed"),
                }
            }
        });
    }
}

#[async_trait]
impl StanzaHook for Mam {
    fn wants(&self, _hook: Hook, name: &str) -> bool {
        name == "message"
    }

    /// A room's message to an occupant is not the occupant's to archive
    /// (`worth_archiving`: groupchat never is) and, unless it carries an id
    /// claiming the occupant's archive, is left as it is.
    fn decide_copy(&self, _cx: &Cx, copy: &FanoutCopy<'_>) -> Option<Flow> {
        let owner = copy.to.bare();
        if owner.local().is_none() {
            return Some(Flow::Continue);
        }
        if worth_archiving(copy.stanza)
            || (copy.stanza.has_child("stanza-id", NS_SID)
                && copy.stanza.children().any(|c| claims_archive(c, owner)))
        {
            return None;
        }
        Some(Flow::Continue)
    }

    async fn handle_stanza(&self, cx: &Cx, hook: Hook, stanza: &mut Element) -> Flow {
        if stanza.name == "message" {
            match hook {
                Hook::Outbound => self.on_outbound(cx, stanza).await,
                Hook::Inbound => self.on_inbound(cx, stanza).await,
                _ => {}
            }
        }
        Flow::Continue
    }
}

#[async_trait]
impl EventHandler for Mam {
    async fn on_event(&self, cx: &Cx, event: &Event) {
        match event {
            Event::SessionBound(_) => self.start_purge(cx),
            Event::UserDeleted(user) => {
                if let Err(e) = cx
                    .stores()
                    .archive
                    .remove(&ArchiveOwner::User(user.clone()))
                    .await
                {
                    tracing::error!(error = %e, %user, "removing a deleted account's archive failed");
                }
            }
            _ => {}
        }
    }
}

// ------------------------------------------------------------------ queries

#[async_trait]
impl IqHandler for Mam {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult {
        let owner = iq.from.to_bare();
        // XEP-0313 §9: a user archive is the user's alone.
        if iq.to.as_ref().is_some_and(|t| t.bare() != &owner) {
            return Err(StanzaError::cancel(Condition::Forbidden));
        }
        match (iq.is_set, iq.payload.name.as_str()) {
            (true, "query") => query(cx, &owner, &iq).await,
            (false, "query") => Ok(Some(query_form())),
            (false, "metadata") => metadata(cx, &ArchiveOwner::User(owner.clone())).await,
            (false, "prefs") => {
                let prefs = cx
                    .stores()
                    .archive
                    .prefs(&owner)
                    .await
                    .map_err(internal)?
                    .unwrap_or_default();
                Ok(Some(prefs_element(&prefs)))
            }
            (true, "prefs") => {
                let prefs = parse_prefs(&iq.payload)?;
                cx.stores()
                    .archive
                    .set_prefs(&owner, &prefs)
                    .await
                    .map_err(internal)?;
                Ok(Some(prefs_element(&prefs.normalized())))
            }
            _ => Err(StanzaError::cancel(Condition::FeatureNotImplemented)),
        }
    }
}

fn store_error(e: StoreError) -> StanzaError {
    match e {
        // XEP-0313 §4.1.5/§4.3.1: an unknown id in the query.
        StoreError::NotFound => StanzaError::cancel(Condition::ItemNotFound),
        e => internal(e),
    }
}

/// A parsed `<query/>`: the client's query id and the store query.
#[derive(Debug, PartialEq, Eq)]
struct ParsedQuery {
    queryid: Option<String>,
    query: ArchiveQuery,
}

async fn query(cx: &Cx, owner: &BareJid, iq: &Iq) -> IqResult {
    let (results, fin) = run_query(
        cx,
        &ArchiveOwner::User(owner.clone()),
        &iq.from,
        &iq.payload,
    )
    .await?;
    // Results go straight to the asking session, queued before the IQ
    // result that the router sends after we return: the client sees every
    // result before <fin/>, as XEP-0313 §4.2 requires.
    let session = cx
        .origin()
        .cloned()
        .or_else(|| iq.from.as_full().and_then(|f| cx.session(f)));
    if let Some(session) = session {
        for msg in results {
            if !session.send(msg) {
                break;
            }
        }
    }
    Ok(Some(fin))
}

/// Runs a `<query/>` on any archive, a user's or a room's: the result
/// messages addressed to `requester`, in order, and the `<fin/>` that the
/// IQ result carries. The caller delivers the results before the `<fin/>`.
pub(crate) async fn run_query(
    cx: &Cx,
    owner: &ArchiveOwner,
    requester: &Jid,
    payload: &Element,
) -> Result<(Vec<Element>, Element), StanzaError> {
    let ParsedQuery { queryid, query } = parse_query(payload)?;
    let page = cx
        .stores()
        .archive
        .query(owner, &query)
        .await
        .map_err(store_error)?;
    let results = page
        .items
        .iter()
        .filter_map(|item| result_message(owner.jid(), requester, queryid.as_deref(), item))
        .collect();
    Ok((results, fin(&page, queryid.as_deref(), query.flip_page)))
}

/// `<message><result><forwarded><delay/>original</forwarded></result></message>`.
fn result_message(
    owner: &BareJid,
    to: &Jid,
    queryid: Option<&str>,
    item: &Item,
) -> Option<Element> {
    let original = match parse_stanza(&item.stanza, ns::CLIENT) {
        Ok(el) => el,
        Err(e) => {
            tracing::error!(id = %item.id, %owner, error = ?e, "skipping a corrupt archived message");
            return None;
        }
    };
    let mut result = Element::new("result", NS).with_attr("id", item.id.clone());
    if let Some(q) = queryid {
        result.set_attr("queryid", q);
    }
    result.push_child(
        Element::new("forwarded", NS_FORWARD)
            .with_child(Element::new("delay", ns::DELAY).with_attr("stamp", xep0082(item.stamp)))
            .with_child(original),
    );
    Some(
        Element::new("message", ns::CLIENT)
            .with_attr("from", owner.to_string())
            .with_attr("to", to.to_string())
            .with_attr("id", stanza_id("mam"))
            .with_child(result),
    )
}

/// `<fin complete='true'><set>first, last, count</set></fin>`.
fn fin(page: &Page<Item>, queryid: Option<&str>, flipped: bool) -> Element {
    // The index is that of the first item *as sent*.
    let first = page.first_id().map(|first| {
        let index = page.first_index.map(|index| {
            if flipped {
                index + page.items.len() as u64 - 1
            } else {
                index
            }
        });
        (first, index)
    });
    let set = rsm::reply(first, page.last_id(), Some(page.count));
    let mut fin = Element::new("fin", NS);
    if let Some(q) = queryid {
        fin.set_attr("queryid", q);
    }
    if page.complete {
        fin.set_attr("complete", "true");
    }
    fin.with_child(set)
}

/// The form of XEP-0313 §4.1.6 (field discovery).
pub(crate) fn query_form() -> Element {
    let field = |var: &str, ty: &str| {
        Element::new("field", ns::DATA_FORMS)
            .with_attr("var", var)
            .with_attr("type", ty)
    };
    let form = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(
            field("FORM_TYPE", "hidden")
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(NS)),
        )
        .with_child(field("with", "jid-single"))
        .with_child(field("start", "text-single"))
        .with_child(field("end", "text-single"))
        .with_child(field("before-id", "text-single"))
        .with_child(field("after-id", "text-single"))
        .with_child(
            // XEP-0313 §4.1.6: an open list, never the list of all ids.
            field("ids", "list-multi").with_child(
                Element::new("validate", NS_XDATA_VALIDATE)
                    .with_attr("datatype", "xs:string")
                    .with_child(Element::new("open", NS_XDATA_VALIDATE)),
            ),
        );
    Element::new("query", NS).with_child(form)
}

/// XEP-0313 §6.2 `<metadata/>`: the first and last items of an archive.
pub(crate) async fn metadata(cx: &Cx, owner: &ArchiveOwner) -> IqResult {
    let archive = &cx.stores().archive;
    let owner = owner.clone();
    let one = |before: Option<String>| ArchiveQuery {
        before,
        max: 1,
        ..ArchiveQuery::default()
    };
    let first = archive.query(&owner, &one(None)).await.map_err(internal)?;
    let last = archive
        .query(&owner, &one(Some(String::new())))
        .await
        .map_err(internal)?;
    let mut md = Element::new("metadata", NS);
    if let (Some(first), Some(last)) = (first.items.first(), last.items.first()) {
        for (name, item) in [("start", first), ("end", last)] {
            md.push_child(
                Element::new(name, NS)
                    .with_attr("id", item.id.clone())
                    .with_attr("timestamp", xep0082(item.stamp)),
            );
        }
    }
    Ok(Some(md))
}

fn bad_request(text: &str) -> StanzaError {
    StanzaError::modify(Condition::BadRequest).with_text(text)
}

/// Parses `<query/>`: the XEP-0313 form, the RSM `<set/>` and `<flip-page/>`.
fn parse_query(payload: &Element) -> Result<ParsedQuery, StanzaError> {
    let mut q = ArchiveQuery::default();
    if let Some(form) = payload.child("x", ns::DATA_FORMS) {
        if form.attr("type").is_some_and(|t| t != "submit") {
            return Err(bad_request("the form must be of type submit"));
        }
        for field in form.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
            let var = field.attr("var").unwrap_or_default();
            let values: Vec<String> = field
                .children()
                .filter(|c| c.is("value", ns::DATA_FORMS))
                .map(|v| v.text().trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            let single = || values.first().cloned();
            match var {
                "FORM_TYPE" => {
                    if values.iter().any(|v| v != NS) {
                        return Err(bad_request("FORM_TYPE must be urn:xmpp:mam:2"));
                    }
                }
                "with" => {
                    q.with = single()
                        .map(|w| {
                            Jid::parse(&w).map_err(|_| {
                                StanzaError::modify(Condition::JidMalformed)
                                    .with_text("'with' is not a JID")
                            })
                        })
                        .transpose()?;
                }
                "start" | "end" => {
                    let t = single()
                        .map(|s| {
                            datetime::parse(&s)
                                .ok_or_else(|| bad_request("not a XEP-0082 date-time"))
                        })
                        .transpose()?;
                    if var == "start" {
                        q.start = t;
                    } else {
                        q.end = t;
                    }
                }
                "before-id" => q.before_id = single(),
                "after-id" => q.after_id = single(),
                "ids" => {
                    if values.len() > MAX_IDS {
                        return Err(StanzaError::modify(Condition::PolicyViolation)
                            .with_text(format!("at most {MAX_IDS} ids per query")));
                    }
                    q.ids = values;
                }
                // XEP-0313 §4.1.6: unknown fields are refused, not ignored.
                other => {
                    return Err(StanzaError::cancel(Condition::FeatureNotImplemented)
                        .with_text(format!("unsupported field {other:?}")));
                }
            }
        }
    }
    let mut max = None;
    if let Some(set) = rsm::Request::from_parent(payload, MAX_PAGE)? {
        if set.index.is_some() {
            return Err(StanzaError::cancel(Condition::FeatureNotImplemented)
                .with_text("paging by index is not supported; use after/before"));
        }
        (max, q.after, q.before) = (set.max, set.after, set.before);
    }
    q.max = match max {
        Some(m) => m.min(MAX_PAGE),
        // Asking for ids without a size means all of them.
        None if !q.ids.is_empty() => q.ids.len().min(MAX_PAGE),
        None => DEFAULT_PAGE,
    };
    q.flip_page = payload.child("flip-page", NS).is_some();
    Ok(ParsedQuery {
        queryid: payload.attr("queryid").map(str::to_string),
        query: q,
    })
}

fn prefs_element(p: &ArchivePrefs) -> Element {
    let list = |name: &str, jids: &[Jid]| {
        let mut el = Element::new(name, NS);
        for j in jids {
            el.push_child(Element::new("jid", NS).with_text(j.to_string()));
        }
        el
    };
    Element::new("prefs", NS)
        .with_attr("default", p.default.as_str())
        .with_child(list("always", &p.always))
        .with_child(list("never", &p.never))
}

fn parse_prefs(el: &Element) -> Result<ArchivePrefs, StanzaError> {
    let default = el
        .attr("default")
        .and_then(DefaultPolicy::parse)
        .ok_or_else(|| bad_request("default must be always, never or roster"))?;
    let list = |name: &str| -> Result<Vec<Jid>, StanzaError> {
        el.child(name, NS)
            .map(|l| {
                l.children()
                    .filter(|c| c.is("jid", NS))
                    .map(|c| {
                        Jid::parse(c.text().trim())
                            .map_err(|_| StanzaError::modify(Condition::JidMalformed))
                    })
                    .collect()
            })
            .unwrap_or(Ok(Vec::new()))
    };
    Ok(ArchivePrefs {
        default,
        always: list("always")?,
        never: list("never")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;
    use waxwing_proto::payload::rsm::NS as NS_RSM;

    fn el(xml: &str) -> Element {
        parse_stanza(xml, ns::CLIENT).unwrap()
    }

    fn jid(s: &str) -> Jid {
        Jid::parse(s).unwrap()
    }

    fn query_xml(inner: &str) -> Element {
        el(&format!(
            "<iq xmlns='jabber:client'><query xmlns='{NS}' queryid='q1'>{inner}</query></iq>"
        ))
        .first_child()
        .unwrap()
        .clone()
    }

    fn form(fields: &str) -> String {
        format!(
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{NS}</value></field>{fields}</x>"
        )
    }

    #[test]
    fn query_form_and_rsm_are_parsed() {
        let p = parse_query(&query_xml(&format!(
            "{}<set xmlns='{NS_RSM}'><max>10</max><before/></set><flip-page/>",
            form(
                "<field var='with'><value>juliet@capulet.lit</value></field>\
                 <field var='start'><value>2010-06-07T00:00:00Z</value></field>\
                 <field var='end'><value>2010-07-07T13:23:54Z</value></field>\
                 <field var='after-id'><value>a</value></field>\
                 <field var='before-id'><value>b</value></field>\
                 <field var='ids'><value>x</value><value>y</value></field>"
            )
        )))
        .unwrap();
        assert_eq!(p.queryid.as_deref(), Some("q1"));
        let q = p.query;
        assert_eq!(q.with, Some(jid("juliet@capulet.lit")));
        assert_eq!(q.start, datetime::parse("2010-06-07T00:00:00Z"));
        assert_eq!(q.end, datetime::parse("2010-07-07T13:23:54Z"));
        assert_eq!(
            (q.after_id.as_deref(), q.before_id.as_deref()),
            (Some("a"), Some("b"))
        );
        assert_eq!(q.ids, ["x", "y"]);
        assert_eq!(q.max, 10);
        assert_eq!(q.before.as_deref(), Some(""));
        assert!(q.backwards() && q.flip_page);
    }

    #[test]
    fn query_defaults_and_limits() {
        let q = parse_query(&query_xml("")).unwrap().query;
        assert_eq!(
            q,
            ArchiveQuery {
                max: DEFAULT_PAGE,
                ..ArchiveQuery::default()
            }
        );
        let q = parse_query(&query_xml(&format!(
            "<set xmlns='{NS_RSM}'><max>100000</max><after>z</after></set>"
        )))
        .unwrap()
        .query;
        assert_eq!((q.max, q.after.as_deref()), (MAX_PAGE, Some("z")));
        let q = parse_query(&query_xml(&form(
            "<field var='ids'><value>a</value><value>b</value><value>c</value></field>",
        )))
        .unwrap()
        .query;
        assert_eq!(q.max, 3);
        // Empty values are absent fields.
        let q = parse_query(&query_xml(&form("<field var='with'><value/></field>")))
            .unwrap()
            .query;
        assert_eq!(q.with, None);
    }

    /// Issue 14: an extreme year overflowed the date arithmetic (a panic
    /// in the handler), and a `<max/>` beyond u64 was refused instead of clamped.
    #[test]
    fn extreme_dates_and_sizes_are_no_panic() {
        for year in [
            "9223372036854775807",
            "99999999999999999999",
            "106751991167301",
        ] {
            let r = parse_query(&query_xml(&form(&format!(
                "<field var='start'><value>{year}-01-01T00:00:00Z</value></field>"
            ))));
            assert_eq!(r.unwrap_err().condition, Condition::BadRequest, "{year}");
        }
        let q = parse_query(&query_xml(&format!(
            "<set xmlns='{NS_RSM}'><max>99999999999999999999999</max><after>z</after></set>"
        )))
        .unwrap()
        .query;
        assert_eq!(q.max, MAX_PAGE);
    }

    #[test]
    fn bad_queries_are_refused() {
        let cond = |inner: &str| {
            parse_query(&query_xml(inner))
                .unwrap_err()
                .to_element()
                .children()
                .next()
                .map(|c| c.name.clone())
        };
        assert_eq!(
            cond(&form(
                "<field var='include-groupchat'><value>true</value></field>"
            ))
            .as_deref(),
            Some("feature-not-implemented")
        );
        assert_eq!(
            cond(&form("<field var='start'><value>yesterday</value></field>")).as_deref(),
            Some("bad-request")
        );
        assert_eq!(
            cond(&form("<field var='with'><value>@@</value></field>")).as_deref(),
            Some("jid-malformed")
        );
        assert_eq!(
            cond("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:1</value></field></x>")
                .as_deref(),
            Some("bad-request")
        );
        assert_eq!(
            cond(&format!("<set xmlns='{NS_RSM}'><max>-1</max></set>")).as_deref(),
            Some("bad-request")
        );
        assert_eq!(
            cond(&format!("<set xmlns='{NS_RSM}'><index>3</index></set>")).as_deref(),
            Some("feature-not-implemented")
        );
        let many: String = (0..=MAX_IDS)
            .map(|i| format!("<value>{i}</value>"))
            .collect();
        assert_eq!(
            cond(&form(&format!("<field var='ids'>{many}</field>"))).as_deref(),
            Some("policy-violation")
        );
    }

    #[test]
    fn what_is_archived() {
        let yes = [
            "<message type='chat'><body>hi</body></message>",
            "<message><body>normal</body></message>",
            "<message type='chat'><replace xmlns='urn:xmpp:message-correct:0' id='1'/><body>fixed</body></message>",
            "<message type='chat'><retract xmlns='urn:xmpp:message-retract:1' id='1'/></message>",
            "<message type='chat'><apply-to xmlns='urn:xmpp:fasten:0' id='1'><retract xmlns='urn:xmpp:message-retract:0'/></apply-to></message>",
            "<message type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>",
            "<message type='chat'><encrypted xmlns='urn:xmpp:omemo:2'/></message>",
            "<message type='chat'><reactions xmlns='urn:xmpp:reactions:0' id='1'/></message>",
            "<message type='chat'><store xmlns='urn:xmpp:hints'/></message>",
        ];
        for m in yes {
            assert!(worth_archiving(&el(m)), "{m}");
        }
        let no = [
            "<message type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<message type='chat'><received xmlns='urn:xmpp:receipts' id='1'/></message>",
            "<message type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='1'/></message>",
            "<message type='groupchat'><body>room</body></message>",
            "<message type='headline'><body>news</body></message>",
            "<message type='error'><body>oops</body></message>",
            "<message type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>",
            "<message type='chat'><body>x</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>",
        ];
        for m in no {
            assert!(!worth_archiving(&el(m)), "{m}");
        }
    }

    #[test]
    fn preference_lists() {
        let prefs = ArchivePrefs {
            default: DefaultPolicy::Roster,
            always: vec![jid("juliet@capulet.lit"), jid("nurse@capulet.lit/kitchen")],
            never: vec![jid("tybalt@capulet.lit"), jid("juliet@capulet.lit/tomb")],
        };
        let p = |w: &str| policy_for(&prefs, &jid(w));
        assert_eq!(p("juliet@capulet.lit/balcony"), DefaultPolicy::Always);
        assert_eq!(p("juliet@capulet.lit"), DefaultPolicy::Always);
        assert_eq!(p("juliet@capulet.lit/tomb"), DefaultPolicy::Never);
        assert_eq!(p("tybalt@capulet.lit/sword"), DefaultPolicy::Never);
        assert_eq!(p("nurse@capulet.lit/kitchen"), DefaultPolicy::Always);
        assert_eq!(p("nurse@capulet.lit/garden"), DefaultPolicy::Roster);
        assert_eq!(p("benvolio@montague.lit"), DefaultPolicy::Roster);
    }

    #[test]
    fn prefs_round_trip() {
        let xml = format!(
            "<iq xmlns='jabber:client'><prefs xmlns='{NS}' default='roster'>\
             <always><jid>romeo@montague.lit</jid></always>\
             <never><jid>montague@montague.lit/x</jid></never></prefs></iq>"
        );
        let p = parse_prefs(el(&xml).first_child().unwrap()).unwrap();
        assert_eq!(p.default, DefaultPolicy::Roster);
        assert_eq!(p.always, vec![jid("romeo@montague.lit")]);
        assert_eq!(p.never, vec![jid("montague@montague.lit/x")]);
        assert_eq!(parse_prefs(&prefs_element(&p)).unwrap(), p);
        let no_default = Element::new("prefs", NS);
        assert!(parse_prefs(&no_default).is_err());
    }

    #[test]
    fn stanza_id_claims() {
        let owner = BareJid::parse("juliet@capulet.lit").unwrap();
        let sid = |by: &str| Element::new("stanza-id", NS_SID).with_attr("by", by);
        assert!(claims_archive(&sid("juliet@capulet.lit"), &owner));
        assert!(claims_archive(&sid("Juliet@capulet.lit"), &owner));
        assert!(!claims_archive(&sid("capulet.lit"), &owner));
        assert!(!claims_archive(&sid("romeo@montague.lit"), &owner));
    }

    #[test]
    fn fin_reports_the_page() {
        let item = |id: &str| Item {
            id: id.into(),
            stamp: UNIX_EPOCH,
            with: jid("a@b"),
            stanza: "<message/>".into(),
        };
        let page = Page {
            items: vec![item("3"), item("4")],
            count: 10,
            first_index: Some(3),
            complete: false,
        };
        let f = fin(&page, Some("q"), false);
        assert_eq!(f.attr("complete"), None);
        assert_eq!(f.attr("queryid"), Some("q"));
        let set = f.child("set", NS_RSM).unwrap();
        let first = set.child("first", NS_RSM).unwrap();
        assert_eq!((first.text(), first.attr("index")), ("3".into(), Some("3")));
        assert_eq!(set.child("last", NS_RSM).unwrap().text(), "4");
        assert_eq!(set.child("count", NS_RSM).unwrap().text(), "10");
        let flipped = Page {
            items: vec![item("4"), item("3")],
            complete: true,
            ..page
        };
        let f = fin(&flipped, None, true);
        assert_eq!(f.attr("complete"), Some("true"));
        let first = f
            .child("set", NS_RSM)
            .unwrap()
            .child("first", NS_RSM)
            .unwrap();
        assert_eq!((first.text(), first.attr("index")), ("4".into(), Some("4")));
        let empty = Page {
            items: vec![],
            count: 0,
            first_index: None,
            complete: true,
        };
        let set = fin(&empty, None, false);
        let set = set.child("set", NS_RSM).unwrap();
        assert!(set.child("first", NS_RSM).is_none());
        assert_eq!(set.child("count", NS_RSM).unwrap().text(), "0");
    }
}
