//! One room's state and every rule of XEP-0045 that changes it.
//!
//! Sans-IO on purpose: each operation takes the request and the time and
//! returns [`Effects`] — the stanzas to route and the store writes to make —
//! so the service can apply it under a short `std` lock and do the I/O
//! after releasing it, and the rules are unit-tested without a server.
//!
//! Fan-out cost: an outgoing presence or message is built once per
//! *visibility class* (with or without real JIDs, self or not), then cloned
//! once per occupant session with only `to` set: O(N) per event, never O(N²).
//! A groupchat message, the common case by far, is not even cloned here:
//! it leaves as one [`Fanout`], and the router makes each session's copy
//! as it delivers it.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use waxwing_core::shared_stanza::SharedStanza;
use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::{Element, escape_attr};
use waxwing_store::{RoomAffiliation, RoomRecord, StoredRoom};

use super::config::{self, RoomConfig, Whois};
use super::form::{Form, Submitted};
use super::history::{self, History, HistoryRequest};
use super::moderation;
use super::roles::{Affiliation, Role, may_change_affiliation, may_change_role};

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_REQUEST: &str = "http://jabber.org/protocol/muc#request";
pub const NS_ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";
pub const NS_STABLE_ID: &str = "http://jabber.org/protocol/muc#stable_id";
pub const NS_REGISTER_FORM: &str = "http://jabber.org/protocol/muc#register";
/// XEP-0421: Anonymous unique occupant identifiers.
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
/// XEP-0359: Unique and Stable Stanza IDs.
pub const NS_SID: &str = "urn:xmpp:sid:0";
/// XEP-0334: Message Processing Hints.
const NS_HINTS: &str = "urn:xmpp:hints";
/// XEP-0249: Direct MUC Invitations.
pub const NS_CONFERENCE: &str = "jabber:x:conference";
/// XEP-0410: MUC Self-Ping (Schrödinger's Chat).
pub const NS_SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";

/// Service-wide limits a room obeys.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_history: usize,
    /// `[muc] max_history_bytes`: serialized bytes of history per room.
    pub max_history_bytes: usize,
    pub max_occupants: usize,
}

/// A store write the service makes after releasing the lock.
#[derive(Debug, Clone, PartialEq)]
pub enum Persist {
    /// The room became persistent (or its whole state must be rewritten).
    Replace(StoredRoom),
    Record(RoomRecord),
    SetAffiliation(RoomAffiliation),
    RemoveAffiliation(BareJid),
    Delete,
}

/// What an operation asks the service to do.
#[derive(Debug, Default)]
pub struct Effects {
    /// Stanzas to route, in order.
    pub out: Vec<Element>,
    /// Stanzas for one session that go out together, before `out`: a
    /// joiner's presences of everyone, history and subject (one queue
    /// entry however large the room, see `Cx::route_burst`).
    pub burst: Vec<Element>,
    /// One stanza for many sessions, routed after `out` (see [`Fanout`]).
    pub fanout: Option<Fanout>,
    /// The answer to an IQ: routed after the store writes succeed.
    pub reply: Option<Element>,
    pub persist: Vec<Persist>,
    /// The room is gone: remove it from the service.
    pub destroyed: bool,
}

/// A stanza for every session in `to`, without a `to` of its own: the
/// router gives each copy its recipient (`Cx::route_fanout`), so the room
/// neither builds nor holds a copy per occupant.
///
/// The stanza is already shared: the room's history measures it by the
/// serialization the sessions then reuse ([`SharedStanza::written_len`]).
#[derive(Debug)]
pub struct Fanout {
    pub stanza: Arc<SharedStanza>,
    /// The stanza's `from` (the sender's occupant JID), so that the router
    /// need not parse it back.
    pub from: FullJid,
    /// The room's sessions, shared with the room until it changes.
    pub to: Arc<[FullJid]>,
}

impl Fanout {
    /// The copies as they will be routed, each with its `to` (for tests).
    pub fn addressed(&self) -> impl Iterator<Item = Element> + '_ {
        addressed(self.stanza.element(), &self.to)
    }
}

/// One nickname in the room, possibly joined from several sessions of the
/// same account (multi-session nicks).
#[derive(Debug, Clone)]
pub struct Occupant {
    pub nick: String,
    /// `room@service/nick`, what the occupant's stanzas are sent from.
    pub jid: FullJid,
    pub bare: BareJid,
    /// Non-empty while the occupant exists; the first one is its "real JID".
    pub sessions: Vec<FullJid>,
    /// The latest available presence, stripped of addressing and MUC payloads.
    pub presence: Element,
    pub role: Role,
    pub occupant_id: String,
    /// Its `<occupant-id/>` as written (XEP-0421), made once at entry:
    /// every message the occupant sends carries it.
    occupant_id_xml: String,
}

/// The occupants by nickname, and every session a room message goes to,
/// listed from them when first needed after a change: a room says far
/// more than its occupants come and go, and the list is shared with the
/// fan-out rather than collected per message. Any mutable access (join,
/// leave, nick or role change …) drops the list, so it cannot go stale.
#[derive(Debug, Clone, Default)]
struct Occupants {
    by_nick: BTreeMap<String, Occupant>,
    recipients: OnceCell<Arc<[FullJid]>>,
}

impl Occupants {
    /// Every occupant session, by nickname.
    fn recipients(&self) -> Arc<[FullJid]> {
        self.recipients
            .get_or_init(|| {
                self.by_nick
                    .values()
                    .flat_map(|o| o.sessions.iter().cloned())
                    .collect()
            })
            .clone()
    }
}

impl Deref for Occupants {
    type Target = BTreeMap<String, Occupant>;
    fn deref(&self) -> &Self::Target {
        &self.by_nick
    }
}

impl DerefMut for Occupants {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.recipients.take();
        &mut self.by_nick
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffEntry {
    pub affiliation: Affiliation,
    pub nick: Option<String>,
    pub reason: Option<String>,
}

/// A room.
#[derive(Debug, Clone)]
pub struct Room {
    pub jid: BareJid,
    pub config: RoomConfig,
    pub affiliations: BTreeMap<BareJid, AffEntry>,
    occupants: Occupants,
    by_session: HashMap<FullJid, String>,
    pub history: History,
    pub subject: String,
    pub subject_by: Option<String>,
    /// Created and awaiting its owner's configuration (XEP-0045 §10.1):
    /// nobody else may enter yet.
    pub locked: bool,
    /// Whether the store has it (persistent rooms).
    pub stored: bool,
}

/// `msg` as the room reflects it from `sender`: from its occupant JID,
/// with its occupant id, without `to` and without the room's stanza-id.
/// `room` is the room's JID as text.
fn reflection(sender: &Occupant, mut m: Element, room: &str) -> Element {
    m.remove_attr("to");
    m.set_attr("from", sender.jid.to_text());
    // Nobody else may speak for the room (XEP-0359 §5, XEP-0421 §4,
    // XEP-0425 §6: moderation comes from the room itself).
    let claims = |name: &str, ns: &str| {
        (name == "stanza-id" && ns == NS_SID) || ns == NS_OCCUPANT_ID || ns == moderation::NS
    };
    if m.child_names().any(|(name, ns)| claims(name, ns)) {
        m.remove_children(|c| {
            (c.is("stanza-id", NS_SID) && c.attr("by") == Some(room))
                || c.ns == NS_OCCUPANT_ID
                || c.ns == moderation::NS
        });
    }
    m.push_child_xml("occupant-id", NS_OCCUPANT_ID, &sender.occupant_id_xml);
    m
}

/// `<occupant-id xmlns='urn:xmpp:occupant-id:0' id='{id}'/>` as a stanza
/// carries it.
fn occupant_id_xml(id: &str) -> String {
    let mut xml = String::new();
    Element::new("occupant-id", NS_OCCUPANT_ID)
        .with_attr("id", id)
        .write_to(&mut xml, ns::CLIENT);
    xml
}

/// Stamps `m` with the room's `<stanza-id/>` (XEP-0359): `id` if the
/// archive gave one, else a fresh random one (unpredictable, as §3 asks,
/// and telling nothing of the archive). Written from a template rather
/// than built and serialized: every room message gets one.
fn push_stanza_id(m: &mut Element, id: Option<&str>, room: &str) {
    let mut xml = String::with_capacity(64 + room.len());
    xml.push_str("<stanza-id xmlns='");
    xml.push_str(NS_SID);
    xml.push_str("' id='");
    match id {
        Some(id) => escape_attr(&mut xml, id),
        None => waxwing_core::push_random_id(&mut xml),
    }
    xml.push_str("' by='");
    escape_attr(&mut xml, room);
    xml.push_str("'/>");
    m.push_child_xml("stanza-id", NS_SID, &xml);
}

/// Presence children a client may set; everything MUC-specific is ours to add.
fn clean_presence(p: &Element) -> Element {
    let mut c = p.clone();
    c.attrs
        .retain(|(k, _)| !matches!(k.as_str(), "to" | "from" | "id" | "type"));
    c.remove_children(|e| e.ns == NS_MUC || e.ns == NS_USER || e.ns == NS_OCCUPANT_ID);
    c
}

/// The answer to available presence without `<x xmlns=muc/>` from someone
/// who is not in the room: a client out of sync with the room (it missed
/// its removal, or the room was restarted) rather than a join. XEP-0045
/// §7.2.1 (since 1.32) recommends this explicit kick over a silent
/// groupchat 1.0 join, which would leave the client half in the room.
pub fn not_in_room(room: &BareJid, nick: &str, to: &FullJid) -> Element {
    let mut p = out_of_room(
        room,
        nick,
        "none",
        Some("You are not in the room."),
        [110, 307, 333].map(status),
    );
    p.set_attr("to", to.to_string());
    p
}

/// Unavailable presence from `nick` in `room` for an occupant who is out
/// (role none): `<x/>` with its item (`affiliation`, an optional reason),
/// then `after` (status codes, `<destroy/>`).
fn out_of_room(
    room: &BareJid,
    nick: &str,
    affiliation: &str,
    reason: Option<&str>,
    after: impl IntoIterator<Item = Element>,
) -> Element {
    let mut item = Element::new("item", NS_USER)
        .with_attr("affiliation", affiliation)
        .with_attr("role", "none");
    if let Some(r) = reason {
        item.push_child(text_child("reason", NS_USER, r));
    }
    let mut x = Element::new("x", NS_USER).with_child(item);
    for c in after {
        x.push_child(c);
    }
    Element::new("presence", ns::CLIENT)
        .with_attr("type", "unavailable")
        .with_attr("from", room.text_with_resource(nick))
        .with_child(x)
}

/// One copy of `stanza` per session, each addressed to it. The copies share
/// the payload (`Children` is copy-on-write), so a room's fan-out clones
/// envelopes only.
fn addressed<'a>(
    stanza: &'a Element,
    sessions: &'a [FullJid],
) -> impl Iterator<Item = Element> + 'a {
    sessions.iter().map(move |s| {
        let mut c = stanza.clone();
        c.set_attr("to", s.to_string());
        c
    })
}

fn status(code: u16) -> Element {
    Element::new("status", NS_USER).with_attr("code", code.to_string())
}

fn text_child(name: &str, ns: &str, t: &str) -> Element {
    Element::new(name, ns).with_text(t)
}

impl Room {
    pub fn new(jid: BareJid, config: RoomConfig) -> Self {
        Room {
            jid,
            config,
            affiliations: BTreeMap::new(),
            occupants: Occupants::default(),
            by_session: HashMap::new(),
            history: History::default(),
            subject: String::new(),
            subject_by: None,
            locked: false,
            stored: false,
        }
    }

    pub fn from_stored(s: StoredRoom, limits: &Limits) -> Result<Self, String> {
        let config = RoomConfig::from_stored(&s.room.config, limits.max_history)?;
        let mut room = Room::new(s.room.jid, config);
        room.subject = s.room.subject;
        room.subject_by = s.room.subject_by;
        room.stored = true;
        for a in s.affiliations {
            room.affiliations.insert(
                a.jid,
                AffEntry {
                    affiliation: Affiliation::from_store(a.affiliation),
                    nick: a.nick,
                    reason: a.reason,
                },
            );
        }
        Ok(room)
    }

    pub fn record(&self, limits: &Limits) -> RoomRecord {
        RoomRecord {
            jid: self.jid.clone(),
            config: self.config.to_stored(limits.max_history),
            subject: self.subject.clone(),
            subject_by: self.subject_by.clone(),
        }
    }

    pub fn to_stored(&self, limits: &Limits) -> StoredRoom {
        StoredRoom {
            room: self.record(limits),
            affiliations: self
                .affiliations
                .iter()
                .filter_map(|(j, a)| self.stored_affiliation(j, a))
                .collect(),
        }
    }

    fn stored_affiliation(&self, jid: &BareJid, a: &AffEntry) -> Option<RoomAffiliation> {
        Some(RoomAffiliation {
            jid: jid.clone(),
            affiliation: a.affiliation.to_store()?,
            nick: a.nick.clone(),
            reason: a.reason.clone(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }

    pub fn occupant_count(&self) -> usize {
        self.occupants.len()
    }

    pub fn occupant(&self, nick: &str) -> Option<&Occupant> {
        self.occupants.get(nick)
    }

    pub fn occupant_of(&self, session: &FullJid) -> Option<&Occupant> {
        self.occupants.get(self.by_session.get(session)?)
    }

    pub fn owners(&self) -> impl Iterator<Item = &BareJid> {
        self.affiliations
            .iter()
            .filter(|(_, a)| a.affiliation == Affiliation::Owner)
            .map(|(j, _)| j)
    }

    /// The affiliation of a user: its own entry, else its domain's (a
    /// server-wide ban or membership).
    pub fn affiliation(&self, j: &BareJid) -> Affiliation {
        if let Some(a) = self.affiliations.get(j) {
            return a.affiliation;
        }
        if j.local().is_some()
            && let Ok(d) = BareJid::domain_only(j.domain())
            && let Some(a) = self.affiliations.get(&d)
        {
            return a.affiliation;
        }
        Affiliation::None
    }

    /// Who registered `nick`, if anyone.
    fn nick_owner(&self, nick: &str) -> Option<&BareJid> {
        self.affiliations
            .iter()
            .find(|(_, a)| a.nick.as_deref() == Some(nick))
            .map(|(j, _)| j)
    }

    fn persist_affiliation(&self, jid: &BareJid, fx: &mut Effects) {
        if !self.stored {
            return;
        }
        match self.affiliations.get(jid) {
            Some(a) => {
                if let Some(r) = self.stored_affiliation(jid, a) {
                    fx.persist.push(Persist::SetAffiliation(r));
                }
            }
            None => fx.persist.push(Persist::RemoveAffiliation(jid.clone())),
        }
    }

    fn persist_record(&self, limits: &Limits, fx: &mut Effects) {
        if self.stored {
            fx.persist.push(Persist::Record(self.record(limits)));
        }
    }

    fn sees_real_jids(&self, o: &Occupant) -> bool {
        self.config.whois == Whois::Anyone || o.role == Role::Moderator
    }

    fn occupant_id(&self, bare: &BareJid) -> String {
        let mut h = Sha256::new();
        h.update(self.config.occupant_id_salt.as_bytes());
        h.update([0]);
        h.update(self.jid.to_string().as_bytes());
        h.update([0]);
        h.update(bare.to_string().as_bytes());
        h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    // ------------------------------------------------------------ presence

    /// `occ`'s presence as others see it: `base` (available presence or an
    /// unavailable one) from its room JID, with the `<x/>` item and codes.
    fn presence_of(
        &self,
        occ: &Occupant,
        base: &Element,
        with_jid: bool,
        codes: &[u16],
        tweak: &dyn Fn(&mut Element),
    ) -> Element {
        let mut p = base.clone();
        p.set_attr("from", self.jid.text_with_resource(&occ.nick));
        let mut item = Element::new("item", NS_USER)
            .with_attr("affiliation", self.affiliation(&occ.bare).as_str())
            .with_attr("role", occ.role.as_str());
        if with_jid {
            item.set_attr("jid", occ.sessions[0].to_string());
        }
        let mut x = Element::new("x", NS_USER).with_child(item);
        tweak(&mut x);
        for c in codes {
            x.push_child(status(*c));
        }
        p.push_child(x);
        p.push_child(Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", &occ.occupant_id));
        p
    }

    /// Sends `occ`'s presence to every occupant: its own sessions get
    /// `self_codes` (with 110) and their real JID; others see the real JID
    /// only if the room lets them.
    fn broadcast_presence(
        &self,
        occ: &Occupant,
        base: &Element,
        codes: &[u16],
        self_codes: &[u16],
        tweak: &dyn Fn(&mut Element),
        out: &mut Vec<Element>,
    ) {
        let mut own: Vec<u16> = vec![110];
        own.extend_from_slice(codes);
        own.extend_from_slice(self_codes);
        let mine = self.presence_of(occ, base, true, &own, tweak);
        out.extend(addressed(&mine, &occ.sessions));
        if !self.config.presence_broadcast.contains(&occ.role)
            && base.attr("type") != Some("unavailable")
        {
            return;
        }
        let with = self.presence_of(occ, base, true, codes, tweak);
        let without = self.presence_of(occ, base, false, codes, tweak);
        for o in self.occupants.values().filter(|o| o.nick != occ.nick) {
            let p = if self.sees_real_jids(o) {
                &with
            } else {
                &without
            };
            out.extend(addressed(p, &o.sessions));
        }
    }

    /// Everything that happens when `from` sends presence to `room/nick`.
    /// `created`: the room was made for this presence.
    pub fn handle_presence(
        &mut self,
        from: &FullJid,
        nick: &str,
        presence: &Element,
        created: bool,
        limits: &Limits,
        now: SystemTime,
    ) -> Result<Effects, StanzaError> {
        let unavailable = presence.attr("type") == Some("unavailable");
        match self.by_session.get(from).cloned() {
            None if unavailable => Ok(Effects::default()),
            None => self.join(from, nick, presence, created, limits, now),
            Some(_) if unavailable => Ok(self.leave(from, Some(presence))),
            Some(current) if current == nick => Ok(self.update_presence(&current, presence)),
            Some(current) => self.change_nick(from, &current, nick, presence),
        }
    }

    fn join(
        &mut self,
        from: &FullJid,
        nick: &str,
        presence: &Element,
        created: bool,
        limits: &Limits,
        now: SystemTime,
    ) -> Result<Effects, StanzaError> {
        let bare = from.bare();
        let aff = self.affiliation(bare);
        if self.locked && aff != Affiliation::Owner {
            return Err(StanzaError::cancel(Condition::ItemNotFound)
                .with_text("this room is awaiting its configuration"));
        }
        if aff == Affiliation::Outcast {
            return Err(StanzaError::auth(Condition::Forbidden).with_text("you are banned"));
        }
        if self.config.members_only && aff < Affiliation::Member {
            return Err(StanzaError::auth(Condition::RegistrationRequired)
                .with_text("this room is members-only"));
        }
        let x = presence.child("x", NS_MUC);
        if let Some(pw) = &self.config.password
            && aff < Affiliation::Owner
        {
            let given = x
                .and_then(|x| x.child("password", NS_MUC))
                .map(Element::text);
            if given.as_deref() != Some(pw.as_str()) {
                return Err(
                    StanzaError::auth(Condition::NotAuthorized).with_text("a password is required")
                );
            }
        }
        if let Some(owner) = self.nick_owner(nick)
            && owner != bare
        {
            return Err(StanzaError::cancel(Condition::Conflict)
                .with_text("that nickname is registered by someone else"));
        }
        let clean = clean_presence(presence);
        let mut fx = Effects::default();
        let history = HistoryRequest::parse(x.and_then(|x| x.child("history", NS_MUC)));
        if let Some(existing) = self.occupants.get_mut(nick) {
            if existing.bare != *bare {
                return Err(
                    StanzaError::cancel(Condition::Conflict).with_text("that nickname is in use")
                );
            }
            // Another session of the same account: it joins the nick.
            existing.sessions.push(from.clone());
            existing.presence = clean;
            self.by_session.insert(from.clone(), nick.to_string());
        } else {
            if self.occupants.len() >= self.config.max_users(limits.max_occupants)
                && aff < Affiliation::Admin
            {
                return Err(
                    StanzaError::wait(Condition::ServiceUnavailable).with_text("the room is full")
                );
            }
            let jid = FullJid::new(self.jid.clone(), nick)
                .map_err(|_| StanzaError::modify(Condition::JidMalformed))?;
            let occupant_id = self.occupant_id(bare);
            let occ = Occupant {
                nick: nick.to_string(),
                jid,
                bare: bare.clone(),
                sessions: vec![from.clone()],
                presence: clean,
                role: aff.default_role(self.config.moderated),
                occupant_id_xml: occupant_id_xml(&occupant_id),
                occupant_id,
            };
            self.occupants.insert(nick.to_string(), occ);
            self.by_session.insert(from.clone(), nick.to_string());
        }
        let occ = &self.occupants[nick];
        // 1. Everyone already here, as the newcomer may see them.
        let sees = self.sees_real_jids(occ);
        for o in self.occupants.values().filter(|o| o.nick != nick) {
            if !self.config.presence_broadcast.contains(&o.role) && !sees {
                continue;
            }
            let mut p = self.presence_of(o, &o.presence, sees, &[], &|_| {});
            p.set_attr("to", from.to_string());
            fx.out.push(p);
        }
        // 2. The newcomer, to everyone else; 3. to itself, with 110 & co.
        let mut self_codes = Vec::new();
        if self.config.whois == Whois::Anyone {
            self_codes.push(100);
        }
        if self.config.logging {
            self_codes.push(170);
        }
        if created {
            self_codes.push(201);
        }
        let first_session = occ.sessions.len() == 1;
        if first_session {
            self.broadcast_presence(occ, &occ.presence, &[], &self_codes, &|_| {}, &mut fx.out);
        } else {
            let mut codes = vec![110];
            codes.extend(self_codes);
            let mut p = self.presence_of(occ, &occ.presence, true, &codes, &|_| {});
            p.set_attr("to", from.to_string());
            fx.out.push(p);
        }
        // 4. History, 5. the subject (§7.2.15–7.2.16).
        let room = self.jid.to_text();
        for e in self.history.select(&history, now) {
            fx.out.push(e.replay(&room, from.to_string()));
        }
        let mut subject = Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr(
                "from",
                match &self.subject_by {
                    Some(n) => self.jid.text_with_resource(n),
                    None => self.jid.to_string(),
                },
            )
            .with_attr("to", from.to_string())
            .with_attr("id", crate::stanza_id("subject"));
        subject.push_child(text_child("subject", ns::CLIENT, &self.subject));
        fx.out.push(subject);
        // What the joiner gets is one burst; the others' copies fan out.
        let to = from.to_string();
        let (burst, others) = std::mem::take(&mut fx.out)
            .into_iter()
            .partition(|s| s.attr("to") == Some(to.as_str()));
        fx.burst = burst;
        fx.out = others;
        Ok(fx)
    }

    fn update_presence(&mut self, nick: &str, presence: &Element) -> Effects {
        let mut fx = Effects::default();
        if let Some(o) = self.occupants.get_mut(nick) {
            o.presence = clean_presence(presence);
        }
        let occ = &self.occupants[nick];
        self.broadcast_presence(occ, &occ.presence, &[], &[], &|_| {}, &mut fx.out);
        fx
    }

    fn change_nick(
        &mut self,
        from: &FullJid,
        old: &str,
        new: &str,
        presence: &Element,
    ) -> Result<Effects, StanzaError> {
        let bare = from.bare().clone();
        if self.occupants.contains_key(new) || self.nick_owner(new).is_some_and(|o| *o != bare) {
            return Err(
                StanzaError::cancel(Condition::Conflict).with_text("that nickname is in use")
            );
        }
        let new_jid = FullJid::new(self.jid.clone(), new)
            .map_err(|_| StanzaError::modify(Condition::JidMalformed))?;
        let mut fx = Effects::default();
        let occ = self.occupants[old].clone();
        let unavailable = Element::new("presence", ns::CLIENT).with_attr("type", "unavailable");
        let new_nick = new.to_string();
        self.broadcast_presence(
            &occ,
            &unavailable,
            &[303],
            &[],
            &|x| {
                if let Some(item) = x.child_mut("item", NS_USER) {
                    item.set_attr("nick", new_nick.clone());
                }
            },
            &mut fx.out,
        );
        let mut occ = self.occupants.remove(old).expect("occupant present");
        occ.nick = new.to_string();
        occ.jid = new_jid;
        occ.presence = clean_presence(presence);
        for s in &occ.sessions {
            self.by_session.insert(s.clone(), new.to_string());
        }
        self.occupants.insert(new.to_string(), occ);
        let occ = &self.occupants[new];
        self.broadcast_presence(occ, &occ.presence, &[], &[], &|_| {}, &mut fx.out);
        Ok(fx)
    }

    /// A session leaves (unavailable presence, disconnect, or a bounce).
    pub fn leave(&mut self, from: &FullJid, presence: Option<&Element>) -> Effects {
        let mut fx = Effects::default();
        let Some(nick) = self.by_session.remove(from) else {
            return fx;
        };
        let mut base = presence
            .map(clean_presence)
            .unwrap_or_else(|| Element::new("presence", ns::CLIENT));
        base.set_attr("type", "unavailable");
        let occ = self.occupants.get_mut(&nick).expect("indexed occupant");
        if occ.sessions.len() > 1 {
            // One of several sessions: only it hears that it left.
            occ.sessions.retain(|s| s != from);
            let occ = &self.occupants[&nick];
            let mut p = self.presence_of(occ, &base, true, &[110], &|_| {});
            if let Some(item) = p
                .child_mut("x", NS_USER)
                .and_then(|x| x.child_mut("item", NS_USER))
            {
                item.set_attr("jid", from.to_string());
                item.set_attr("role", "none");
            }
            p.set_attr("to", from.to_string());
            fx.out.push(p);
            return fx;
        }
        let mut occ = self.occupants.remove(&nick).expect("indexed occupant");
        occ.role = Role::None;
        // Broadcast after removal: the leaver gets its own copy via `sessions`.
        self.broadcast_presence(&occ, &base, &[], &[], &|_| {}, &mut fx.out);
        if self.occupants.is_empty() && !self.config.persistent {
            fx.destroyed = true;
        }
        fx
    }

    /// A session of an occupant answered with an error: it is gone
    /// (a broken link, a client that left without saying). Removed with
    /// status 333 for everyone (XEP-0045 §16.1); one of several sessions
    /// of a nick just leaves quietly.
    pub fn remove_after_error(&mut self, from: &FullJid) -> Effects {
        let Some(nick) = self.by_session.get(from).cloned() else {
            return Effects::default();
        };
        if self.occupants[&nick].sessions.len() > 1 {
            return self.leave(from, None);
        }
        let mut fx = Effects::default();
        self.remove_occupant(&nick, &[333], None, None, &mut fx.out);
        if self.occupants.is_empty() && !self.config.persistent {
            fx.destroyed = true;
        }
        fx
    }

    /// Removes an occupant for a reason given by `codes` (kick 307, ban
    /// 301, membership lost 321, members-only 322), telling everyone.
    fn remove_occupant(
        &mut self,
        nick: &str,
        codes: &[u16],
        actor: Option<&str>,
        reason: Option<&str>,
        out: &mut Vec<Element>,
    ) {
        let Some(mut occ) = self.occupants.remove(nick) else {
            return;
        };
        for s in &occ.sessions {
            self.by_session.remove(s);
        }
        occ.role = Role::None;
        let unavailable = Element::new("presence", ns::CLIENT).with_attr("type", "unavailable");
        let actor = actor.map(str::to_string);
        let reason = reason.map(str::to_string);
        self.broadcast_presence(
            &occ,
            &unavailable,
            codes,
            &[],
            &|x| {
                if let Some(item) = x.child_mut("item", NS_USER) {
                    if let Some(a) = &actor {
                        item.push_child(
                            Element::new("actor", NS_USER).with_attr("nick", a.clone()),
                        );
                    }
                    if let Some(r) = &reason {
                        item.push_child(text_child("reason", NS_USER, r));
                    }
                }
            },
            out,
        );
    }

    // ------------------------------------------------------------ messages

    /// The occupant `from` speaks as, if it may send this groupchat
    /// message: a subject change (a subject without a body) needs the
    /// right to change the subject, anything else a voice.
    fn speaker(&self, from: &FullJid, subject_change: bool) -> Result<&Occupant, StanzaError> {
        let Some(occ) = self.occupant_of(from) else {
            return Err(StanzaError::modify(Condition::NotAcceptable)
                .with_text("only occupants may send messages to the room"));
        };
        let role = occ.role;
        if subject_change {
            if !(role == Role::Moderator
                || (self.config.change_subject && role >= Role::Participant))
            {
                return Err(StanzaError::auth(Condition::Forbidden)
                    .with_text("you may not change the subject"));
            }
        } else if role < Role::Participant {
            return Err(
                StanzaError::auth(Condition::Forbidden).with_text("you have no voice in this room")
            );
        }
        Ok(occ)
    }

    /// What the room archive keeps of this message, if the room logs it
    /// (XEP-0313 on the room JID): the reflected message, filed under the
    /// sender's occupant JID. Subject changes and `no-store` messages are
    /// not kept.
    pub fn to_archive(
        &self,
        from: &FullJid,
        msg: &Element,
    ) -> Result<Option<(Element, Jid)>, StanzaError> {
        if !self.config.logging
            || !msg.has_child("body", ns::CLIENT)
            || msg.has_child("no-store", NS_HINTS)
            || msg.has_child("no-permanent-store", NS_HINTS)
        {
            return Ok(None);
        }
        // With a body, not a subject change.
        let sender = self.speaker(from, false)?;
        let m = reflection(sender, msg.clone(), &self.jid.to_text());
        Ok(Some((m, Jid::Full(sender.jid.clone()))))
    }

    /// A `groupchat` message to the room: reflected to every occupant.
    /// `archive_id` is the id the room archive gave it, used as its
    /// stanza-id; without one (not logged, or the append failed) the room
    /// draws a fresh id.
    ///
    /// Once the room accepts the message it takes it from `msg` (leaving
    /// an empty element) and reflects it as it is, without a copy; a
    /// refused message is left as it came, for the error reply.
    pub fn groupchat(
        &mut self,
        from: &FullJid,
        msg: &mut Element,
        limits: &Limits,
        now: SystemTime,
        archive_id: Option<String>,
    ) -> Result<Effects, StanzaError> {
        // By name: a room message's payload is not parsed on its way
        // through the room (see `waxwing_proto::xml::Children`).
        let has_body = msg.has_child("body", ns::CLIENT);
        // A subject without a body changes the subject (XEP-0045 §8.1).
        let subject_change = !has_body && msg.has_child("subject", ns::CLIENT);
        let sender = self.speaker(from, subject_change)?;
        let room = self.jid.to_text();
        let sender_jid = sender.jid.clone();
        let new_subject = subject_change.then(|| {
            let subject = msg.child("subject", ns::CLIENT);
            (
                sender.nick.clone(),
                subject.map(Element::text).unwrap_or_default(),
            )
        });
        let taken = std::mem::replace(msg, Element::new("", ""));
        let mut m = reflection(sender, taken, &room);
        let mut fx = Effects::default();
        if let Some((nick, subject)) = new_subject {
            self.subject = subject;
            self.subject_by = Some(nick);
            self.persist_record(limits, &mut fx);
        }
        if !subject_change {
            push_stanza_id(&mut m, archive_id.as_deref(), &room);
        }
        let stanza = SharedStanza::new(m);
        if has_body {
            // Kept without its delay, which replay adds (`Entry::replay`),
            // sharing the payload with the occupants' copies.
            let chars = stanza.written_len() + history::delay_len(&room);
            let cap = self.config.history_length.min(limits.max_history);
            self.history.push(
                stanza.element().clone(),
                chars,
                now,
                cap,
                limits.max_history_bytes,
            );
        }
        fx.fanout = Some(Fanout {
            stanza,
            from: sender_jid,
            to: self.occupants.recipients(),
        });
        Ok(fx)
    }

    /// One copy of `m` per occupant session, addressed to it.
    fn reflect(&self, m: &Element, out: &mut Vec<Element>) {
        for o in self.occupants.values() {
            out.extend(addressed(m, &o.sessions));
        }
    }

    /// Whether `from` may query the room archive (XEP-0313 §7 on a room):
    /// only when the room logs; in a members-only room only members; never
    /// outcasts.
    pub fn may_read_archive(&self, from: &FullJid) -> Result<(), StanzaError> {
        let aff = self.affiliation(from.bare());
        if self.locked && aff != Affiliation::Owner {
            return Err(StanzaError::cancel(Condition::ItemNotFound));
        }
        if !self.config.logging {
            return Err(StanzaError::cancel(Condition::ServiceUnavailable)
                .with_text("this room keeps no archive"));
        }
        if aff == Affiliation::Outcast || (self.config.members_only && aff < Affiliation::Member) {
            return Err(StanzaError::auth(Condition::Forbidden)
                .with_text("only members may read this room's archive"));
        }
        Ok(())
    }

    /// The moderator `from` as the moderation message names it (XEP-0425):
    /// its occupant JID and occupant id. Only moderators may moderate.
    pub fn moderator(&self, from: &FullJid) -> Result<(String, String), StanzaError> {
        match self.occupant_of(from) {
            Some(o) if o.role == Role::Moderator => {
                Ok((self.jid.text_with_resource(&o.nick), o.occupant_id.clone()))
            }
            _ => Err(StanzaError::auth(Condition::Forbidden)
                .with_text("only moderators may moderate messages")),
        }
    }

    /// XEP-0425: retracts message `id` (the room's stanza-id) on behalf of
    /// a moderator. `archived` says whether the room archive had it (and
    /// already holds its tombstone). The message leaves the history, and
    /// the moderation message goes to every occupant.
    pub fn moderate(
        &mut self,
        from: &FullJid,
        req: &moderation::Request,
        archived: bool,
    ) -> Result<Effects, StanzaError> {
        let (by, occupant_id) = self.moderator(from)?;
        let room = self.jid.to_string();
        let in_history = self.history.remove_by_stanza_id(&room, &req.id).is_some();
        if !archived && !in_history {
            return Err(StanzaError::cancel(Condition::ItemNotFound)
                .with_text("no such message in this room"));
        }
        let m = moderation::announcement(&room, &req.id, &by, &occupant_id, req.reason.as_deref());
        let mut fx = Effects::default();
        self.reflect(&m, &mut fx.out);
        Ok(fx)
    }

    /// A private message to `room/nick` (XEP-0045 §7.5).
    pub fn private_message(
        &self,
        from: &FullJid,
        nick: &str,
        msg: &Element,
    ) -> Result<Effects, StanzaError> {
        let Some(sender) = self.occupant_of(from) else {
            return Err(StanzaError::modify(Condition::NotAcceptable)
                .with_text("only occupants may send private messages"));
        };
        if msg.attr("type") == Some("groupchat") {
            return Err(StanzaError::modify(Condition::BadRequest));
        }
        if !self.config.allow_pm.allows(sender.role) {
            return Err(StanzaError::auth(Condition::Forbidden)
                .with_text("private messages are not allowed in this room"));
        }
        let Some(target) = self.occupants.get(nick) else {
            return Err(StanzaError::cancel(Condition::ItemNotFound));
        };
        let mut m = msg.clone();
        m.set_attr("from", self.jid.text_with_resource(&sender.nick));
        m.remove_children(|c| c.ns == NS_OCCUPANT_ID || c.is("x", NS_USER));
        m.push_child(Element::new("x", NS_USER));
        m.push_child(
            Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", &sender.occupant_id),
        );
        let mut fx = Effects::default();
        fx.out.extend(addressed(&m, &target.sessions));
        Ok(fx)
    }

    /// A non-groupchat message to the room itself: mediated invitations
    /// and declines (§7.8.2), voice requests and their approval (§7.13, §8.6).
    pub fn message_to_room(
        &mut self,
        from: &FullJid,
        msg: &Element,
        limits: &Limits,
    ) -> Result<Effects, StanzaError> {
        if let Some(x) = msg.child("x", NS_USER) {
            let mut fx = Effects::default();
            for inv in x.children().filter(|c| c.is("invite", NS_USER)) {
                self.invite(from, inv, limits, &mut fx)?;
            }
            for d in x.children().filter(|c| c.is("decline", NS_USER)) {
                let to = d
                    .attr("to")
                    .and_then(|t| Jid::parse(t).ok())
                    .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
                let mut decline =
                    Element::new("decline", NS_USER).with_attr("from", from.bare().to_string());
                if let Some(r) = d.child("reason", NS_USER) {
                    decline.push_child(r.clone());
                }
                fx.out.push(
                    Element::new("message", ns::CLIENT)
                        .with_attr("from", self.jid.to_string())
                        .with_attr("to", to.to_string())
                        .with_child(Element::new("x", NS_USER).with_child(decline)),
                );
            }
            return Ok(fx);
        }
        if let Some(form) = msg.children().find(|c| c.is("x", ns::DATA_FORMS)) {
            let s = Submitted::parse(form);
            if s.form_type.as_deref() == Some(NS_REQUEST) {
                return self.voice_request(from, &s, form);
            }
        }
        Err(StanzaError::modify(Condition::BadRequest))
    }

    fn invite(
        &mut self,
        from: &FullJid,
        inv: &Element,
        limits: &Limits,
        fx: &mut Effects,
    ) -> Result<(), StanzaError> {
        let Some(inviter) = self.occupant_of(from) else {
            return Err(StanzaError::modify(Condition::NotAcceptable)
                .with_text("only occupants may invite"));
        };
        let aff = self.affiliation(&inviter.bare);
        let role = inviter.role;
        let to = inv
            .attr("to")
            .and_then(|t| Jid::parse(t).ok())
            .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
        if self.config.members_only {
            let may = aff >= Affiliation::Admin
                || (self.config.allow_invites && role >= Role::Participant);
            if !may {
                return Err(StanzaError::auth(Condition::Forbidden)
                    .with_text("only admins may invite to this room"));
            }
            // §7.8.2: in a members-only room the invitee becomes a member.
            let invitee = to.to_bare();
            if self.affiliation(&invitee) < Affiliation::Member
                && self.affiliation(&invitee) != Affiliation::Outcast
            {
                self.affiliations.insert(
                    invitee.clone(),
                    AffEntry {
                        affiliation: Affiliation::Member,
                        nick: None,
                        reason: None,
                    },
                );
                self.persist_affiliation(&invitee, fx);
            }
        } else if role < Role::Visitor {
            return Err(StanzaError::auth(Condition::Forbidden));
        }
        let _ = limits;
        let mut out_inv = Element::new("invite", NS_USER).with_attr("from", from.to_string());
        let reason = inv.child("reason", NS_USER).map(Element::text);
        if let Some(r) = &reason {
            out_inv.push_child(text_child("reason", NS_USER, r));
        }
        let mut x = Element::new("x", NS_USER).with_child(out_inv);
        if let Some(pw) = &self.config.password {
            x.push_child(text_child("password", NS_USER, pw));
        }
        let body = format!(
            "{} invites you to the room {}{}",
            from.bare(),
            self.jid,
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        );
        fx.out.push(
            Element::new("message", ns::CLIENT)
                .with_attr("from", self.jid.to_string())
                .with_attr("to", to.to_string())
                .with_attr("id", crate::stanza_id("invite"))
                .with_child(x)
                .with_child(text_child("body", ns::CLIENT, &body)),
        );
        Ok(())
    }

    fn voice_request(
        &mut self,
        from: &FullJid,
        s: &Submitted,
        form: &Element,
    ) -> Result<Effects, StanzaError> {
        let Some(occ) = self.occupant_of(from).cloned() else {
            return Err(StanzaError::modify(Condition::NotAcceptable));
        };
        let mut fx = Effects::default();
        if occ.role == Role::Moderator && s.single("muc#roomnick").is_some() {
            // A moderator's answer to a voice request (§8.6).
            if s.boolean("muc#request_allow") == Ok(Some(true)) {
                let nick = s.single("muc#roomnick").unwrap_or_default().to_string();
                if let Some(t) = self.occupants.get_mut(&nick)
                    && t.role == Role::Visitor
                {
                    t.role = Role::Participant;
                    let t = &self.occupants[&nick];
                    self.broadcast_presence(t, &t.presence, &[], &[], &|_| {}, &mut fx.out);
                }
            }
            return Ok(fx);
        }
        if !self.config.voice_requests || occ.role != Role::Visitor {
            return Err(StanzaError::modify(Condition::NotAcceptable));
        }
        let _ = form;
        let mut f = Form::new("form", NS_REQUEST).title("Voice request");
        f.field(
            "muc#role",
            Some("list-single"),
            Some("Requested role"),
            &["participant"],
        );
        f.field(
            "muc#jid",
            Some("jid-single"),
            Some("User ID"),
            &[&occ.sessions[0].to_string()],
        );
        f.field(
            "muc#roomnick",
            Some("text-single"),
            Some("Room Nickname"),
            &[&occ.nick],
        );
        f.boolean("muc#request_allow", "Grant voice to this person?", false);
        let form = f.into_element();
        for m in self
            .occupants
            .values()
            .filter(|o| o.role == Role::Moderator)
        {
            for sess in &m.sessions {
                fx.out.push(
                    Element::new("message", ns::CLIENT)
                        .with_attr("from", self.jid.to_string())
                        .with_attr("to", sess.to_string())
                        .with_child(form.clone()),
                );
            }
        }
        Ok(fx)
    }

    /// A status-code-only message to every occupant (config changes, §10.2.1).
    fn notify(&self, codes: &[u16], out: &mut Vec<Element>) {
        if codes.is_empty() {
            return;
        }
        let mut x = Element::new("x", NS_USER);
        for c in codes {
            x.push_child(status(*c));
        }
        let m = Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("from", self.jid.to_string())
            .with_attr("id", crate::stanza_id("config"))
            .with_child(x);
        self.reflect(&m, out);
    }

    // ---------------------------------------------------------------- admin

    /// `muc#admin` get: an affiliation or role list (§9.5, §9.8, §10.5, §8.5).
    pub fn admin_get(&self, from: &FullJid, query: &Element) -> Result<Element, StanzaError> {
        let item = query
            .children()
            .find(|c| c.is("item", NS_ADMIN))
            .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
        let actor_aff = self.affiliation(from.bare());
        let actor_role = self.occupant_of(from).map_or(Role::None, |o| o.role);
        let mut out = Element::new("query", NS_ADMIN);
        if let Some(aff) = item.attr("affiliation") {
            let aff = Affiliation::parse(aff)
                .filter(|a| *a != Affiliation::None)
                .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
            let allowed = actor_aff >= Affiliation::Admin
                || (aff == Affiliation::Member
                    && actor_role != Role::None
                    && self.config.get_member_list.contains(&actor_role));
            if !allowed {
                return Err(StanzaError::auth(Condition::Forbidden));
            }
            for (j, a) in self
                .affiliations
                .iter()
                .filter(|(_, a)| a.affiliation == aff)
            {
                let mut it = Element::new("item", NS_ADMIN)
                    .with_attr("affiliation", aff.as_str())
                    .with_attr("jid", j.to_string());
                if let Some(n) = &a.nick {
                    it.set_attr("nick", n.clone());
                }
                if let Some(r) = &a.reason {
                    it.push_child(text_child("reason", NS_ADMIN, r));
                }
                out.push_child(it);
            }
        } else if let Some(role) = item.attr("role") {
            let role = Role::parse(role)
                .filter(|r| *r != Role::None)
                .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
            if actor_role != Role::Moderator {
                return Err(StanzaError::auth(Condition::Forbidden));
            }
            for o in self.occupants.values().filter(|o| o.role == role) {
                out.push_child(
                    Element::new("item", NS_ADMIN)
                        .with_attr("role", role.as_str())
                        .with_attr("affiliation", self.affiliation(&o.bare).as_str())
                        .with_attr("nick", o.nick.clone())
                        .with_attr("jid", o.sessions[0].to_string()),
                );
            }
        } else {
            return Err(StanzaError::modify(Condition::BadRequest));
        }
        Ok(out)
    }

    /// `muc#admin` set: role changes by nick, affiliation changes by JID.
    /// Every item is checked before any is applied (§9: all or nothing).
    pub fn admin_set(
        &mut self,
        from: &FullJid,
        query: &Element,
        limits: &Limits,
    ) -> Result<Effects, StanzaError> {
        let actor_aff = self.affiliation(from.bare());
        let actor = self.occupant_of(from).cloned();
        let actor_role = actor.as_ref().map_or(Role::None, |o| o.role);
        let actor_nick = actor.as_ref().map(|o| o.nick.clone());
        let items: Vec<&Element> = query
            .children()
            .filter(|c| c.is("item", NS_ADMIN))
            .collect();
        if items.is_empty() {
            return Err(StanzaError::modify(Condition::BadRequest));
        }
        enum Change {
            Role(String, Role),
            Aff(BareJid, Affiliation),
        }
        let mut changes = Vec::new();
        for it in &items {
            let reason = it.child("reason", NS_ADMIN).map(Element::text);
            if let Some(role) = it.attr("role") {
                let role =
                    Role::parse(role).ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
                let nick = it
                    .attr("nick")
                    .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
                let target = self
                    .occupants
                    .get(nick)
                    .ok_or_else(|| StanzaError::cancel(Condition::ItemNotFound))?;
                // An admin or owner acts with moderator rights even when not joined.
                let acting_role = if actor_aff >= Affiliation::Admin {
                    Role::Moderator
                } else {
                    actor_role
                };
                may_change_role(
                    acting_role,
                    actor_aff,
                    self.affiliation(&target.bare),
                    target.role,
                    role,
                )?;
                changes.push((Change::Role(nick.to_string(), role), reason));
            } else if let Some(aff) = it.attr("affiliation") {
                let aff = Affiliation::parse(aff)
                    .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
                let jid = it
                    .attr("jid")
                    .and_then(|j| Jid::parse(j).ok())
                    .map(|j| j.to_bare())
                    .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
                let current = self
                    .affiliations
                    .get(&jid)
                    .map_or(Affiliation::None, |a| a.affiliation);
                may_change_affiliation(actor_aff, current, aff)?;
                changes.push((Change::Aff(jid, aff), reason));
            } else {
                return Err(StanzaError::modify(Condition::BadRequest));
            }
        }
        // The last owner stays (§10.6).
        let mut owners: Vec<BareJid> = self.owners().cloned().collect();
        for (c, _) in &changes {
            if let Change::Aff(j, a) = c {
                owners.retain(|o| o != j);
                if *a == Affiliation::Owner {
                    owners.push(j.clone());
                }
            }
        }
        if owners.is_empty() && self.owners().next().is_some() {
            return Err(StanzaError::cancel(Condition::Conflict)
                .with_text("a room needs at least one owner"));
        }
        let mut fx = Effects::default();
        for (c, reason) in changes {
            match c {
                Change::Role(nick, role) => self.set_role(
                    &nick,
                    role,
                    actor_nick.as_deref(),
                    reason.as_deref(),
                    &mut fx,
                ),
                Change::Aff(jid, aff) => {
                    self.set_affiliation(&jid, aff, actor_nick.as_deref(), reason, &mut fx)
                }
            }
        }
        let _ = limits;
        Ok(fx)
    }

    fn set_role(
        &mut self,
        nick: &str,
        role: Role,
        actor: Option<&str>,
        reason: Option<&str>,
        fx: &mut Effects,
    ) {
        if role == Role::None {
            self.remove_occupant(nick, &[307], actor, reason, &mut fx.out);
            self.destroy_if_empty(fx);
            return;
        }
        let Some(o) = self.occupants.get_mut(nick) else {
            return;
        };
        o.role = role;
        let o = &self.occupants[nick];
        let reason = reason.map(str::to_string);
        self.broadcast_presence(
            o,
            &o.presence,
            &[],
            &[],
            &|x| {
                if let (Some(r), Some(item)) = (&reason, x.child_mut("item", NS_USER)) {
                    item.push_child(text_child("reason", NS_USER, r));
                }
            },
            &mut fx.out,
        );
    }

    fn set_affiliation(
        &mut self,
        jid: &BareJid,
        aff: Affiliation,
        actor: Option<&str>,
        reason: Option<String>,
        fx: &mut Effects,
    ) {
        let nick = self.affiliations.get(jid).and_then(|a| a.nick.clone());
        if aff == Affiliation::None {
            self.affiliations.remove(jid);
        } else {
            self.affiliations.insert(
                jid.clone(),
                AffEntry {
                    affiliation: aff,
                    nick: if aff == Affiliation::Outcast {
                        None
                    } else {
                        nick
                    },
                    reason: reason.clone(),
                },
            );
        }
        self.persist_affiliation(jid, fx);
        let affected: Vec<String> = self
            .occupants
            .values()
            .filter(|o| o.bare == *jid || (jid.is_domain() && o.bare.domain() == jid.domain()))
            .map(|o| o.nick.clone())
            .collect();
        for nick in affected {
            let effective = self.affiliation(&self.occupants[&nick].bare);
            if effective == Affiliation::Outcast {
                self.remove_occupant(&nick, &[301], actor, reason.as_deref(), &mut fx.out);
            } else if self.config.members_only && effective < Affiliation::Member {
                self.remove_occupant(&nick, &[321], actor, reason.as_deref(), &mut fx.out);
            } else {
                let role = effective.default_role(self.config.moderated);
                let o = self.occupants.get_mut(&nick).expect("affected occupant");
                // Keep a moderator granted by role unless the affiliation says more.
                if !(o.role == Role::Moderator
                    && role < Role::Moderator
                    && effective >= Affiliation::Member)
                    || role > o.role
                {
                    o.role = role;
                }
                let o = &self.occupants[&nick];
                self.broadcast_presence(o, &o.presence, &[], &[], &|_| {}, &mut fx.out);
            }
        }
        self.destroy_if_empty(fx);
    }

    fn destroy_if_empty(&self, fx: &mut Effects) {
        if self.occupants.is_empty() && !self.config.persistent && !self.locked {
            fx.destroyed = true;
        }
    }

    // ---------------------------------------------------------------- owner

    /// `muc#owner` get: the configuration form (§10.2).
    pub fn owner_get(&self, from: &FullJid, limits: &Limits) -> Result<Element, StanzaError> {
        if self.affiliation(from.bare()) != Affiliation::Owner {
            return Err(StanzaError::auth(Condition::Forbidden));
        }
        let mut f = self.config.to_form("form", limits.max_history, false);
        let list = |a: Affiliation| -> Vec<String> {
            self.affiliations
                .iter()
                .filter(|(_, e)| e.affiliation == a)
                .map(|(j, _)| j.to_string())
                .collect()
        };
        let owners = list(Affiliation::Owner);
        let admins = list(Affiliation::Admin);
        let owners: Vec<&str> = owners.iter().map(String::as_str).collect();
        let admins: Vec<&str> = admins.iter().map(String::as_str).collect();
        f.field(
            "muc#roomconfig_roomowners",
            Some("jid-multi"),
            Some("Room owners"),
            &owners,
        );
        f.field(
            "muc#roomconfig_roomadmins",
            Some("jid-multi"),
            Some("Room admins"),
            &admins,
        );
        Ok(Element::new("query", NS_OWNER).with_child(f.into_element()))
    }

    /// `muc#owner` set: submit or cancel the form, or destroy the room.
    pub fn owner_set(
        &mut self,
        from: &FullJid,
        query: &Element,
        limits: &Limits,
    ) -> Result<Effects, StanzaError> {
        if self.affiliation(from.bare()) != Affiliation::Owner {
            return Err(StanzaError::auth(Condition::Forbidden));
        }
        if let Some(d) = query.child("destroy", NS_OWNER) {
            return Ok(self.destroy(d));
        }
        let Some(x) = query.children().find(|c| c.is("x", ns::DATA_FORMS)) else {
            return Err(StanzaError::modify(Condition::BadRequest));
        };
        let mut fx = Effects::default();
        if x.attr("type") == Some("cancel") {
            // §10.1.3: cancelling the initial configuration destroys the room.
            if self.locked {
                return Ok(self.destroy(&Element::new("destroy", NS_OWNER)));
            }
            return Ok(fx);
        }
        let s = config::parse_submission(x);
        let new = self.config.apply(&s, limits.max_history)?;
        let owners = s
            .multi("muc#roomconfig_roomowners")
            .map(parse_jids)
            .transpose()?;
        let admins = s
            .multi("muc#roomconfig_roomadmins")
            .map(parse_jids)
            .transpose()?;
        if let Some(o) = &owners
            && o.is_empty()
        {
            return Err(StanzaError::modify(Condition::NotAcceptable)
                .with_text("a room needs at least one owner"));
        }
        let old = std::mem::replace(&mut self.config, new);
        let was_locked = std::mem::replace(&mut self.locked, false);
        self.history.truncate(self.config.history_length);
        let mut codes = Vec::new();
        if !was_locked {
            codes.push(104);
        }
        match (old.whois, self.config.whois) {
            (Whois::Moderators, Whois::Anyone) => codes.push(172),
            (Whois::Anyone, Whois::Moderators) => codes.push(173),
            _ => {}
        }
        match (old.logging, self.config.logging) {
            (false, true) => codes.push(170),
            (true, false) => codes.push(171),
            _ => {}
        }
        let mut aff_changes: Vec<(BareJid, Affiliation)> = Vec::new();
        for (list, aff) in [(owners, Affiliation::Owner), (admins, Affiliation::Admin)] {
            let Some(list) = list else { continue };
            for (j, e) in &self.affiliations {
                if e.affiliation == aff && !list.contains(j) {
                    aff_changes.push((j.clone(), Affiliation::None));
                }
            }
            for j in list {
                if self.affiliations.get(&j).map(|e| e.affiliation) != Some(aff) {
                    aff_changes.push((j, aff));
                }
            }
        }
        // Persistence first, so that affiliation writes find the room row.
        match (self.stored, self.config.persistent) {
            (false, true) => {
                self.stored = true;
            }
            (true, false) => {
                self.stored = false;
                fx.persist.push(Persist::Delete);
            }
            _ => {}
        }
        let actor = self.occupant_of(from).map(|o| o.nick.clone());
        for (j, a) in aff_changes {
            self.set_affiliation(&j, a, actor.as_deref(), None, &mut fx);
        }
        if self.config.members_only && !old.members_only {
            let outsiders: Vec<String> = self
                .occupants
                .values()
                .filter(|o| self.affiliation(&o.bare) < Affiliation::Member)
                .map(|o| o.nick.clone())
                .collect();
            for n in outsiders {
                self.remove_occupant(&n, &[322], None, None, &mut fx.out);
            }
        }
        if self.stored {
            // Rewrite everything: cheap next to a config change, and it
            // covers a room that just became persistent.
            fx.persist.retain(|p| {
                !matches!(
                    p,
                    Persist::SetAffiliation(_) | Persist::RemoveAffiliation(_)
                )
            });
            fx.persist.push(Persist::Replace(self.to_stored(limits)));
        }
        self.notify(&codes, &mut fx.out);
        self.destroy_if_empty(&mut fx);
        Ok(fx)
    }

    /// One unavailable self-presence (110, 332) for every occupant session:
    /// removed because the service is shutting down.
    pub fn shutdown_presences(&self) -> Vec<Element> {
        let mut out = Vec::new();
        for o in self.occupants.values() {
            let affiliation = self.affiliation(&o.bare);
            let p = out_of_room(
                &self.jid,
                &o.nick,
                affiliation.as_str(),
                None,
                [110, 332].map(status),
            );
            out.extend(addressed(&p, &o.sessions));
        }
        out
    }

    /// Destroys the room (§10.9): every occupant is told, with the
    /// alternate venue and reason if the owner gave them.
    pub fn destroy(&mut self, d: &Element) -> Effects {
        let mut fx = Effects::default();
        let mut destroy = Element::new("destroy", NS_USER);
        if let Some(alt) = d.attr("jid") {
            destroy.set_attr("jid", alt);
        }
        if let Some(r) = d.child("reason", NS_OWNER) {
            destroy.push_child(text_child("reason", NS_USER, &r.text()));
        }
        if let Some(pw) = d.child("password", NS_OWNER) {
            destroy.push_child(text_child("password", NS_USER, &pw.text()));
        }
        for o in self.occupants.values() {
            let p = out_of_room(&self.jid, &o.nick, "none", None, [destroy.clone()]);
            fx.out.extend(addressed(&p, &o.sessions));
        }
        self.occupants.clear();
        self.by_session.clear();
        if self.stored {
            fx.persist.push(Persist::Delete);
        }
        fx.destroyed = true;
        fx
    }

    // ------------------------------------------------------ registration

    /// `jabber:iq:register` get (§7.10).
    pub fn register_get(&self, from: &FullJid) -> Result<Element, StanzaError> {
        let mut q = Element::new("query", ns::REGISTER);
        if let Some(nick) = self
            .affiliations
            .get(from.bare())
            .and_then(|a| a.nick.as_ref())
        {
            q.push_child(Element::new("registered", ns::REGISTER));
            q.push_child(text_child("username", ns::REGISTER, nick));
            return Ok(q);
        }
        if self.affiliation(from.bare()) == Affiliation::Outcast {
            return Err(StanzaError::auth(Condition::Forbidden));
        }
        let mut f = Form::new("form", NS_REGISTER_FORM).title("Nickname registration");
        f.field(
            "muc#register_roomnick",
            Some("text-single"),
            Some("Desired nickname"),
            &[],
        );
        q.push_child(f.into_element());
        Ok(q)
    }

    /// `jabber:iq:register` set: reserves a nick, making the user a member.
    pub fn register_set(
        &mut self,
        from: &FullJid,
        query: &Element,
    ) -> Result<Effects, StanzaError> {
        let bare = from.bare().clone();
        let aff = self.affiliation(&bare);
        if aff == Affiliation::Outcast {
            return Err(StanzaError::auth(Condition::Forbidden));
        }
        let mut fx = Effects::default();
        if query.child("remove", ns::REGISTER).is_some() {
            match self.affiliations.get_mut(&bare) {
                Some(e) if e.affiliation == Affiliation::Member => {
                    self.affiliations.remove(&bare);
                }
                Some(e) => e.nick = None,
                None => return Err(StanzaError::cancel(Condition::ItemNotFound)),
            }
            self.persist_affiliation(&bare, &mut fx);
            return Ok(fx);
        }
        let x = query
            .children()
            .find(|c| c.is("x", ns::DATA_FORMS))
            .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
        let s = Submitted::parse(x);
        let nick = s
            .single("muc#register_roomnick")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| StanzaError::modify(Condition::NotAcceptable))?;
        let nick = self
            .jid
            .with_resource(nick)
            .map_err(|_| StanzaError::modify(Condition::JidMalformed))?
            .resource()
            .to_string();
        if self.nick_owner(&nick).is_some_and(|o| *o != bare)
            || self.occupants.get(&nick).is_some_and(|o| o.bare != bare)
        {
            return Err(StanzaError::cancel(Condition::Conflict));
        }
        if self.config.members_only && aff < Affiliation::Member {
            return Err(StanzaError::cancel(Condition::NotAllowed)
                .with_text("only members may register in a members-only room"));
        }
        let entry = self.affiliations.entry(bare.clone()).or_insert(AffEntry {
            affiliation: Affiliation::Member,
            nick: None,
            reason: None,
        });
        entry.nick = Some(nick);
        self.persist_affiliation(&bare, &mut fx);
        // A newly made member in the room gets its new affiliation shown.
        if aff < Affiliation::Member {
            let nicks: Vec<String> = self
                .occupants
                .values()
                .filter(|o| o.bare == bare)
                .map(|o| o.nick.clone())
                .collect();
            for n in nicks {
                let o = self.occupants.get_mut(&n).expect("occupant");
                if o.role < Role::Participant {
                    o.role = Role::Participant;
                }
                let o = &self.occupants[&n];
                self.broadcast_presence(o, &o.presence, &[], &[], &|_| {}, &mut fx.out);
            }
        }
        Ok(fx)
    }

    // ---------------------------------------------------------------- disco

    /// Room disco#info with `muc#roominfo` (§6.4).
    pub fn disco_info(
        &self,
        from: &FullJid,
        node: Option<&str>,
        limits: &Limits,
    ) -> Result<Element, StanzaError> {
        let mut q = Element::new("query", ns::DISCO_INFO);
        if self.locked && self.affiliation(from.bare()) != Affiliation::Owner {
            return Err(StanzaError::cancel(Condition::ItemNotFound));
        }
        match node {
            None | Some("") => {}
            // §7.12: discovering one's reserved nickname.
            Some("x-roomuser-item") => {
                q.set_attr("node", "x-roomuser-item");
                if let Some(nick) = self
                    .affiliations
                    .get(from.bare())
                    .and_then(|a| a.nick.clone())
                {
                    q.push_child(
                        Element::new("identity", ns::DISCO_INFO)
                            .with_attr("category", "conference")
                            .with_attr("type", "text")
                            .with_attr("name", nick),
                    );
                }
                return Ok(q);
            }
            Some(_) => return Err(StanzaError::cancel(Condition::ItemNotFound)),
        }
        let name = if self.config.name.is_empty() {
            self.jid.local().unwrap_or_default().to_string()
        } else {
            self.config.name.clone()
        };
        q.push_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("type", "text")
                .with_attr("name", name),
        );
        let c = &self.config;
        let mut features = vec![
            ns::DISCO_INFO,
            NS_MUC,
            NS_STABLE_ID,
            NS_OCCUPANT_ID,
            NS_SELF_PING,
            ns::REGISTER,
            if c.public { "muc_public" } else { "muc_hidden" },
            if c.persistent {
                "muc_persistent"
            } else {
                "muc_temporary"
            },
            if c.members_only {
                "muc_membersonly"
            } else {
                "muc_open"
            },
            if c.moderated {
                "muc_moderated"
            } else {
                "muc_unmoderated"
            },
            if c.whois == Whois::Anyone {
                "muc_nonanonymous"
            } else {
                "muc_semianonymous"
            },
            if c.password.is_some() {
                "muc_passwordprotected"
            } else {
                "muc_unsecured"
            },
        ];
        if c.voice_requests {
            features.push(NS_REQUEST);
        }
        if c.logging {
            features.push(crate::mam::NS);
            features.push(crate::mam::NS_EXTENDED);
        }
        features.push(moderation::NS);
        features.push(moderation::NS_RETRACT);
        features.sort_unstable();
        for f in features {
            q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        let mut f = Form::new("result", NS_ROOMINFO);
        // Any muc#roomconfig field may appear here (§6.4); the name is
        // what clients show for a room they have not joined.
        f.field(
            "muc#roomconfig_roomname",
            None,
            Some("Natural-Language Room Name"),
            &[self.name()],
        );
        f.field(
            "muc#roominfo_description",
            None,
            Some("Description"),
            &[&c.description],
        );
        f.field(
            "muc#roominfo_subject",
            None,
            Some("Current subject"),
            &[&self.subject],
        );
        f.field(
            "muc#roominfo_occupants",
            None,
            Some("Number of occupants"),
            &[&self.occupants.len().to_string()],
        );
        if !c.lang.is_empty() {
            f.field(
                "muc#roominfo_lang",
                None,
                Some("Language of discussion"),
                &[&c.lang],
            );
        }
        let subjectmod = if c.change_subject { "1" } else { "0" };
        f.field(
            "muc#roomconfig_changesubject",
            None,
            Some("Occupants may change the subject"),
            &[subjectmod],
        );
        f.field(
            "muc#roominfo_subjectmod",
            Some("boolean"),
            Some("The room subject can be modified by participants"),
            &[subjectmod],
        );
        f.field(
            "muc#maxhistoryfetch",
            None,
            Some("Maximum number of history messages returned by room"),
            &[&c.history_length.min(limits.max_history).to_string()],
        );
        if c.public {
            let owners: Vec<String> = self.owners().map(|j| j.to_string()).collect();
            let owners: Vec<&str> = owners.iter().map(String::as_str).collect();
            f.field(
                "muc#roominfo_contactjid",
                None,
                Some("Contact addresses"),
                &owners,
            );
        }
        q.push_child(f.into_element());
        Ok(q)
    }

    /// What the channel directory (XEP-0433) shows of this room.
    pub fn listing(&self) -> super::channel_search::Listing {
        let c = &self.config;
        super::channel_search::Listing {
            address: self.jid.to_string(),
            name: self.name().to_string(),
            description: c.description.clone(),
            language: c.lang.clone(),
            nusers: self.occupants.len(),
            is_open: !c.members_only && c.password.is_none(),
            anonymity: if c.whois == Whois::Anyone {
                "non-anonymous"
            } else {
                "semi-anonymous"
            },
        }
    }

    /// Whether disco#items of the service lists this room.
    pub fn is_listed(&self) -> bool {
        self.config.public && !self.locked
    }

    pub fn name(&self) -> &str {
        if self.config.name.is_empty() {
            self.jid.local().unwrap_or_default()
        } else {
            &self.config.name
        }
    }

    /// An IQ to `room/nick` (§7.5 ends; XEP-0410). Returns the stanza to
    /// route: the answer to a self-ping, or the IQ forwarded to the occupant.
    pub fn iq_to_occupant(
        &self,
        from: &FullJid,
        nick: &str,
        iq: &Element,
    ) -> Result<Element, StanzaError> {
        let Some(sender) = self.occupant_of(from) else {
            // XEP-0410 §3: "not joined" is exactly this answer.
            return Err(StanzaError::modify(Condition::NotAcceptable));
        };
        let Some(target) = self.occupants.get(nick) else {
            return Err(StanzaError::cancel(Condition::ItemNotFound));
        };
        let is_request = matches!(iq.attr("type"), Some("get" | "set"));
        if is_request && sender.nick == nick && iq.child("ping", ns::PING).is_some() {
            let mut r = waxwing_proto::stanza::iq_result(iq);
            r.set_attr("from", self.jid.text_with_resource(nick));
            return Ok(r);
        }
        let mut f = iq.clone();
        f.set_attr("from", self.jid.text_with_resource(&sender.nick));
        f.set_attr("to", target.sessions[0].to_string());
        Ok(f)
    }
}

fn parse_jids(v: &[String]) -> Result<Vec<BareJid>, StanzaError> {
    v.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            Jid::parse(s.trim())
                .map(|j| j.to_bare())
                .map_err(|_| StanzaError::modify(Condition::JidMalformed))
        })
        .collect()
}

#[cfg(test)]
mod tests;
