//! XEP-0045: Multi-User Chat, with XEP-0410 (self-ping), XEP-0421
//! (occupant ids), XEP-0359 stanza ids (`muc#stable_id`) and XEP-0249
//! (direct invitations need nothing from the server but a room to join);
//! XEP-0313 on the room JID for rooms with `muc#roomconfig_enablelogging`
//! (the query code is `crate::mam`'s, over `ArchiveOwner::Room`), XEP-0425
//! moderation and the XEP-0433 channel directory of the public rooms —
//! ours, and those of remote services indexed by [`crawl`] over federation.
//!
//! A logged groupchat message is appended to the room archive *before* it
//! is reflected, and the archive id is its `<stanza-id by='room'/>`: the id
//! occupants see is the id a MAM query or a moderator names.
//!
//! One [`MucService`] per virtual host, on `<subdomain>.<host>`, registered
//! as a domain service: the router hands it every stanza addressed under
//! that domain. Rooms live in a `std` mutex-protected map. Each stanza
//! takes the lock once, runs the sans-IO rules of [`room::Room`] to get
//! [`room::Effects`], releases the lock, then writes the store and routes
//! — so no lock is held across an `.await` and a slow store never blocks
//! other rooms' traffic. The one async lock, `persist`, orders store writes
//! of changes that persist (config, affiliations, subject); it is taken
//! *before* the map lock so the write order is the change order. Such a
//! change is stored before it exists anywhere else: its rules run on a copy
//! of the room, the store writes follow, and only if they succeed does the
//! live room change and do occupants hear of it ([`MucService::change_persisted`]).

pub mod channel_search;
pub mod config;
pub mod crawl;
pub mod form;
pub mod history;
pub mod moderation;
pub mod roles;
pub mod room;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use waxwing_core::config::{Config, RoomCreation};
use waxwing_core::hooks::{
    Cx, DomainService, Event, EventHandler, Module, RegisterError, Registrar,
};
use waxwing_core::metrics::DomainLabel;
use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{self, Condition, StanzaError, StanzaKind};
use waxwing_proto::xml::Element;
use waxwing_store::StoreError;
use waxwing_store::archive::{ArchiveOwner, ArchiveQuery, NewItem};

use self::config::RoomConfig;
use self::roles::Affiliation;
use self::room::{
    AffEntry, Effects, Limits, NS_ADMIN, NS_MUC, NS_OCCUPANT_ID, NS_OWNER, Persist, Room,
};

/// The MUC module: one service per virtual host.
pub struct Muc {
    services: Vec<Arc<MucService>>,
}

impl Muc {
    pub fn new(config: &Config) -> Self {
        let m = &config.muc;
        let services = m
            .domains
            .iter()
            .zip(&config.hosts)
            .map(|(domain, host)| {
                Arc::new(MucService {
                    domain: domain.clone(),
                    host: host.clone(),
                    hosts: config.hosts.clone(),
                    limits: Limits {
                        max_history: m.max_history,
                        max_history_bytes: m.max_history_bytes,
                        max_occupants: m.max_occupants,
                    },
                    max_rooms_per_user: m.max_rooms_per_user,
                    log_by_default: m.log_by_default,
                    creation: m.room_creation,
                    rooms: Mutex::new(HashMap::new()),
                    loaded: tokio::sync::OnceCell::new(),
                    persist: tokio::sync::Mutex::new(()),
                    archive_order: Mutex::new(HashMap::new()),
                    crawler: Arc::new(crawl::Crawler::new(
                        domain,
                        m.crawl.clone(),
                        std::time::Duration::from_secs(m.crawl_interval_secs),
                        m.crawl_max_rooms,
                    )),
                })
            })
            .collect();
        Muc { services }
    }

    /// The services, for tests and benchmarks that drive them directly.
    pub fn services(&self) -> &[Arc<MucService>] {
        &self.services
    }
}

impl Module for Muc {
    fn name(&self) -> &'static str {
        "muc"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        for s in &self.services {
            reg.service(&s.domain, s.clone())?;
        }
        if !self.services.is_empty() {
            reg.on_events(self.clone());
        }
        Ok(())
    }
}

#[async_trait]
impl EventHandler for Muc {
    async fn on_event(&self, cx: &Cx, event: &Event) {
        if let Event::Started = event {
            self.export_metrics(cx);
        }
        // A session that ends leaves its rooms even if it never sent
        // presence (the presence module only tells rooms it has a record of).
        if let Event::SessionBound(_) = event {
            for s in &self.services {
                s.crawler.start(cx);
            }
        }
        if let Event::SessionClosed(session) = event {
            for s in &self.services {
                s.session_closed(cx, &session.jid).await;
            }
        }
        if let Event::ShuttingDown = event {
            for s in &self.services {
                s.shutting_down(cx).await;
            }
        }
    }
}

impl Muc {
    /// `waxwing_muc_rooms` and `waxwing_muc_occupants` per MUC domain,
    /// counted when scraped (one pass over the rooms, under their lock).
    fn export_metrics(&self, cx: &Cx) {
        let services: Vec<_> = self.services.iter().map(Arc::downgrade).collect();
        let rooms = cx.metrics().muc_rooms.clone();
        let occupants = cx.metrics().muc_occupants.clone();
        cx.metrics().on_scrape(move || {
            for s in services.iter().filter_map(std::sync::Weak::upgrade) {
                let (n, people) = {
                    let map = s.lock();
                    (
                        map.len(),
                        map.values().map(Room::occupant_count).sum::<usize>(),
                    )
                };
                let label = DomainLabel {
                    domain: s.domain.clone(),
                };
                rooms.get_or_create(&label).set(n as i64);
                occupants.get_or_create(&label).set(people as i64);
            }
        });
    }
}

/// The rooms of one MUC domain.
pub struct MucService {
    domain: String,
    host: String,
    hosts: Vec<String>,
    limits: Limits,
    max_rooms_per_user: usize,
    /// New rooms log (`[muc] log_by_default`).
    log_by_default: bool,
    creation: RoomCreation,
    /// Keyed by the room's bare JID. See the module docs for the locking rule.
    rooms: Mutex<HashMap<BareJid, Room>>,
    /// Persistent rooms are loaded on the first stanza: a domain service
    /// has no startup hook, and the store is only reachable through `Cx`.
    loaded: tokio::sync::OnceCell<()>,
    persist: tokio::sync::Mutex<()>,
    /// One async lock per logging room, held from the archive append to
    /// the reflection so that archive order is the order occupants saw.
    /// Per room, not the service-wide `persist`, so that a slow append
    /// stalls only its own room.
    archive_order: Mutex<HashMap<BareJid, Arc<tokio::sync::Mutex<()>>>>,
    /// Indexes the public rooms of remote MUC services for the directory.
    crawler: Arc<crawl::Crawler>,
}

/// Why a stanza is refused before any room sees it.
fn refuse(c: Condition) -> StanzaError {
    StanzaError::new(c)
}

impl MucService {
    fn lock(&self) -> MutexGuard<'_, HashMap<BareJid, Room>> {
        // A panic in the rules leaves at worst one room half-updated;
        // refusing all rooms afterwards would be worse.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn ensure_loaded(&self, cx: &Cx) -> Result<(), StoreError> {
        self.loaded
            .get_or_try_init(|| async {
                let stored = cx.stores().muc.rooms(&self.domain).await?;
                let mut loaded = Vec::new();
                for s in stored {
                    let jid = s.room.jid.clone();
                    match Room::from_stored(s, &self.limits) {
                        Ok(mut r) => {
                            self.restore_history(cx, &mut r).await;
                            loaded.push((jid, r));
                        }
                        Err(e) => {
                            tracing::error!(room = %jid, error = %e, "skipping a stored room")
                        }
                    }
                }
                let mut rooms = self.lock();
                rooms.extend(loaded);
                tracing::info!(domain = %self.domain, rooms = rooms.len(), "MUC rooms loaded");
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Refills the discussion history of a room that logs from the tail of
    /// its archive, so that history on join survives a restart. A failed
    /// read leaves the history empty: the room is still usable.
    async fn restore_history(&self, cx: &Cx, r: &mut Room) {
        let cap = r.config.history_length.min(self.limits.max_history);
        if !r.config.logging || cap == 0 {
            return;
        }
        let query = ArchiveQuery {
            before: Some(String::new()),
            max: cap,
            ..ArchiveQuery::default()
        };
        let page = match cx
            .stores()
            .archive
            .query(&ArchiveOwner::Room(r.jid.clone()), &query)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(room = %r.jid, error = %e, "reading the room archive for history failed");
                return;
            }
        };
        let room = r.jid.to_string();
        for item in page.items {
            let Ok(mut m) = waxwing_proto::xml::parse_stanza(&item.stanza, ns::CLIENT) else {
                continue;
            };
            // Tombstones of moderated messages are not history.
            if !m.has_child("body", ns::CLIENT) {
                continue;
            }
            m.push_child(
                Element::new("stanza-id", room::NS_SID)
                    .with_attr("id", item.id.clone())
                    .with_attr("by", room.clone()),
            );
            // Kept as the room reflected it; replay adds the delay.
            let chars = m.to_xml_in(ns::CLIENT).len() + history::delay_len(&room);
            r.history
                .push(m, chars, item.stamp, cap, self.limits.max_history_bytes);
        }
    }

    /// Runs `f` on the room under the lock, removing the room if it says so.
    fn with_room<F>(&self, room: &BareJid, f: F) -> Result<Effects, StanzaError>
    where
        F: FnOnce(&mut Room) -> Result<Effects, StanzaError>,
    {
        let mut rooms = self.lock();
        let r = rooms
            .get_mut(room)
            .ok_or_else(|| StanzaError::cancel(Condition::ItemNotFound))?;
        let fx = f(r)?;
        if fx.destroyed {
            rooms.remove(room);
        }
        Ok(fx)
    }

    /// A change to what outlives the process (configuration, affiliations,
    /// subject, destruction), made store first: the rules run on a copy of
    /// the room; if they ask for store writes, those are made before
    /// anything else, and only once they succeeded does the live room
    /// change (the rules run again, on it) and do occupants hear of it. A
    /// failed write leaves memory as it was, announces nothing and answers
    /// `internal-server-error`. Callers hold `persist`, so no other
    /// persisting change comes between the two runs; what can (a join, a
    /// leave, a message) does not touch what the first run wrote.
    async fn change_persisted<F>(&self, cx: &Cx, room: &BareJid, request: &Element, f: F)
    where
        F: Fn(&mut Room) -> Result<Effects, StanzaError>,
    {
        let dry = {
            let mut rooms = self.lock();
            match rooms.get(room).cloned() {
                None => Err(StanzaError::cancel(Condition::ItemNotFound)),
                Some(mut draft) => f(&mut draft).map(|fx| {
                    if !fx.persist.is_empty() {
                        return (fx, true);
                    }
                    // Nothing to write: the copy is the new room (the
                    // lock was held throughout).
                    if fx.destroyed {
                        rooms.remove(room);
                    } else {
                        rooms.insert(room.clone(), draft);
                    }
                    (fx, false)
                }),
            }
        };
        let planned = match dry {
            Err(e) => return cx.bounce(request, e).await,
            Ok((fx, false)) => return self.apply(cx, room, fx, request).await,
            Ok((fx, true)) => fx.persist,
        };
        if !self.write(cx, room, &planned).await {
            return cx
                .bounce(request, StanzaError::wait(Condition::InternalServerError))
                .await;
        }
        let live = self.with_room(room, &f);
        match live {
            Ok(mut fx) => {
                if fx.persist != planned {
                    // The room's occupants changed between the runs in a
                    // way the change depends on: store what memory holds.
                    tracing::warn!(%room, "MUC change differed on the live room; rewriting");
                    self.write(cx, room, &fx.persist).await;
                }
                fx.persist.clear();
                self.apply(cx, room, fx, request).await;
            }
            Err(e) => {
                tracing::error!(%room, error = %e.condition.as_str(), "MUC change stored but refused on the live room");
                cx.bounce(request, e).await;
            }
        }
    }

    /// Makes the store writes in order; false (logged) if any failed.
    async fn write(&self, cx: &Cx, room: &BareJid, persist: &[Persist]) -> bool {
        let mut ok = true;
        for p in persist {
            let store = &cx.stores().muc;
            let r = match &p {
                Persist::Replace(s) => store.replace_room(s).await,
                Persist::Record(r) => store.save_room(r).await,
                Persist::SetAffiliation(a) => store.set_affiliation(room, a).await,
                Persist::RemoveAffiliation(j) => store.remove_affiliation(room, j).await,
                Persist::Delete => match store.delete_room(room).await {
                    Err(StoreError::NotFound) => Ok(()),
                    r => r,
                },
            };
            if let Err(e) = r {
                tracing::error!(%room, error = %e, "MUC store write failed");
                ok = false;
            }
        }
        ok
    }

    /// Store writes, then the stanzas, then the IQ answer. If a write
    /// failed, nothing is announced or acknowledged and the requester gets
    /// `internal-server-error`. Changes that persist go through
    /// [`MucService::change_persisted`], which writes before it changes memory.
    async fn apply(&self, cx: &Cx, room: &BareJid, fx: Effects, request: &Element) {
        let ok = self.write(cx, room, &fx.persist).await;
        if !ok {
            return cx
                .bounce(request, StanzaError::wait(Condition::InternalServerError))
                .await;
        }
        if fx.destroyed {
            self.archive_order
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(room);
            // A room that is gone takes its archive along: a new room of the
            // same name must not inherit it.
            if let Err(e) = cx
                .stores()
                .archive
                .remove(&ArchiveOwner::Room(room.clone()))
                .await
            {
                tracing::error!(%room, error = %e, "removing a destroyed room's archive failed");
            }
        }
        Self::route_effects(cx, fx).await;
    }

    /// What the room made of a plain groupchat message `m` (no subject):
    /// its effects routed, or the refusal bounced with `m` as it came.
    /// Nothing to store, so no request to answer should a write fail,
    /// which is why `Room::groupchat` may take the message it accepts.
    async fn finish_plain(cx: &Cx, m: &Element, fx: Result<Effects, StanzaError>) {
        match fx {
            Ok(fx) => {
                debug_assert!(fx.persist.is_empty() && !fx.destroyed);
                Self::route_effects(cx, fx).await;
            }
            Err(e) => cx.bounce(m, e).await,
        }
    }

    /// Routes the stanzas of `fx`, in order: the burst, the others, the
    /// fan-out, the reply.
    async fn route_effects(cx: &Cx, fx: Effects) {
        if !fx.burst.is_empty() {
            cx.route_burst(fx.burst).await;
        }
        for s in fx.out {
            cx.route(s).await;
        }
        if let Some(f) = fx.fanout {
            cx.route_fanout(f.stanza, Jid::Full(f.from), f.to).await;
        }
        if let Some(r) = fx.reply {
            cx.route(r).await;
        }
    }

    /// XEP-0045 status 332: every occupant, local or remote, learns that it
    /// is out of its rooms because the service is going down. Remote
    /// occupants would otherwise think they are still joined until their
    /// self-ping fails. Rooms are not changed: persistent ones are stored,
    /// and the process is about to end.
    async fn shutting_down(&self, cx: &Cx) {
        let farewells: Vec<Element> = self
            .lock()
            .values()
            .flat_map(|r| r.shutdown_presences())
            .collect();
        for p in farewells {
            cx.route(p).await;
        }
    }

    async fn session_closed(&self, cx: &Cx, jid: &FullJid) {
        let mut work = Vec::new();
        {
            let mut rooms = self.lock();
            let mut gone = Vec::new();
            for (k, r) in rooms.iter_mut() {
                if r.occupant_of(jid).is_some() {
                    let fx = r.leave(jid, None);
                    if fx.destroyed {
                        gone.push(k.clone());
                    }
                    work.push((k.clone(), fx));
                }
            }
            for k in gone {
                rooms.remove(&k);
            }
        }
        let dummy = Element::new("presence", ns::CLIENT);
        for (room, fx) in work {
            self.apply(cx, &room, fx, &dummy).await;
        }
    }

    fn may_create(
        &self,
        cx: &Cx,
        creator: &BareJid,
        rooms: &HashMap<BareJid, Room>,
    ) -> Result<(), StanzaError> {
        let allowed = match self.creation {
            RoomCreation::Anyone => true,
            RoomCreation::Local => self.hosts.iter().any(|h| h == creator.domain()),
            // Server admins as of now: `admins` is reloadable, LDAP groups count.
            RoomCreation::Admins => cx.is_admin(creator),
        };
        if !allowed {
            return Err(StanzaError::cancel(Condition::NotAllowed)
                .with_text("you may not create rooms here"));
        }
        let owned = rooms
            .values()
            .filter(|r| r.affiliation(creator) == Affiliation::Owner)
            .count();
        // XEP-0045 §7.2 (error table): <not-allowed/> is "room creation is
        // restricted"; the limit holds until the user destroys a room.
        if owned >= self.max_rooms_per_user {
            return Err(
                StanzaError::cancel(Condition::NotAllowed).with_text(format!(
                    "you own {owned} rooms, the most allowed (max_rooms_per_user)"
                )),
            );
        }
        Ok(())
    }

    // ------------------------------------------------------------ stanzas

    async fn presence_to_occupant(
        &self,
        cx: &Cx,
        from: &FullJid,
        room: BareJid,
        nick: &str,
        p: Element,
    ) {
        let now = SystemTime::now();
        let ty = p.attr("type");
        if ty == Some("error") {
            // The occupant's client bounced something: it is gone (§16.1).
            let fx = self.with_room(&room, |r| Ok(r.remove_after_error(from)));
            if let Ok(fx) = fx {
                self.apply(cx, &room, fx, &p).await;
            }
            return;
        }
        if !matches!(ty, None | Some("unavailable")) {
            return;
        }
        if ty.is_none() && p.child("x", NS_MUC).is_none() {
            let joined = self
                .lock()
                .get(&room)
                .is_some_and(|r| r.occupant_of(from).is_some());
            if !joined {
                return cx.route(room::not_in_room(&room, nick, from)).await;
            }
        }
        let result = 'locked: {
            let mut rooms = self.lock();
            let created = if rooms.contains_key(&room) {
                false
            } else if ty.is_some() {
                break 'locked Ok(Effects::default());
            } else {
                match self.may_create(cx, from.bare(), &rooms) {
                    Ok(()) => {
                        let mut config =
                            RoomConfig::new(self.limits.max_history, waxwing_core::random_id());
                        config.logging = self.log_by_default;
                        let mut r = Room::new(room.clone(), config);
                        r.affiliations.insert(
                            from.bare().clone(),
                            AffEntry {
                                affiliation: Affiliation::Owner,
                                nick: None,
                                reason: None,
                            },
                        );
                        // §10.1.1: locked until the owner configures it (only a
                        // MUC-aware join, with <x/>, gets this far).
                        r.locked = true;
                        rooms.insert(room.clone(), r);
                        true
                    }
                    Err(e) => break 'locked Err(e),
                }
            };
            let r = rooms.get_mut(&room).expect("room exists");
            let res = r.handle_presence(from, nick, &p, created, &self.limits, now);
            match &res {
                Err(_) if created => {
                    rooms.remove(&room);
                }
                Ok(fx) if fx.destroyed => {
                    rooms.remove(&room);
                }
                _ => {}
            }
            res
        };
        match result {
            Ok(fx) => self.apply(cx, &room, fx, &p).await,
            Err(e) => cx.bounce(&p, e).await,
        }
    }

    async fn message_to_room(&self, cx: &Cx, from: &FullJid, room: BareJid, mut m: Element) {
        let ty = m.attr("type").unwrap_or("normal");
        if ty == "error" {
            return;
        }
        let groupchat = ty == "groupchat";
        let now = SystemTime::now();
        // A subject change (or a message to the room itself) may persist.
        let ordered = !groupchat || m.has_child("subject", ns::CLIENT);
        if !ordered {
            // The common case: in a room that does not log, a message
            // needs nothing but the room, found once.
            let unlogged = {
                let mut rooms = self.lock();
                match rooms.get_mut(&room) {
                    None => Some(Err(StanzaError::cancel(Condition::ItemNotFound))),
                    Some(r) if r.config.logging => None,
                    Some(r) => Some(r.groupchat(from, &mut m, &self.limits, now, None)),
                }
            };
            if let Some(fx) = unlogged {
                return Self::finish_plain(cx, &m, fx).await;
            }
        }
        let logged = groupchat && self.lock().get(&room).is_some_and(|r| r.config.logging);
        let _order = if ordered {
            Some(self.persist.lock().await)
        } else {
            None
        };
        let room_order = logged.then(|| {
            self.archive_order
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(room.clone())
                .or_default()
                .clone()
        });
        let _room_order = match &room_order {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        let archive_id = if logged {
            match self.archive(cx, from, &room, &m, now).await {
                Ok(id) => id,
                Err(e) => return cx.bounce(&m, e).await,
            }
        } else {
            None
        };
        if !ordered {
            let fx = self.with_room(&room, |r| {
                r.groupchat(from, &mut m, &self.limits, now, archive_id)
            });
            return Self::finish_plain(cx, &m, fx).await;
        }
        let rule = |r: &mut Room| {
            if groupchat {
                // Runs twice (see `change_persisted`), each time on a copy.
                r.groupchat(from, &mut m.clone(), &self.limits, now, archive_id.clone())
            } else {
                r.message_to_room(from, &m, &self.limits)
            }
        };
        self.change_persisted(cx, &room, &m, rule).await
    }

    /// Appends a groupchat message to the room archive before it is
    /// reflected, and returns the archive id that becomes its stanza-id.
    /// `None` when the room does not keep this message; a failed append
    /// is logged and the message still goes out (a message missing from
    /// history beats a lost message).
    async fn archive(
        &self,
        cx: &Cx,
        from: &FullJid,
        room: &BareJid,
        m: &Element,
        now: SystemTime,
    ) -> Result<Option<String>, StanzaError> {
        let entry = match self.lock().get(room) {
            Some(r) => r.to_archive(from, m)?,
            None => return Err(StanzaError::cancel(Condition::ItemNotFound)),
        };
        let Some((stanza, with)) = entry else {
            return Ok(None);
        };
        let stanza = stanza.to_xml();
        let item = NewItem {
            with: &with,
            stamp: now,
            stanza: &stanza,
        };
        match cx
            .stores()
            .archive
            .append(&ArchiveOwner::Room(room.clone()), item)
            .await
        {
            Ok(id) => Ok(Some(id)),
            Err(e) => {
                tracing::error!(%room, error = %e, "archiving a groupchat message failed");
                Ok(None)
            }
        }
    }

    /// XEP-0313 on the room JID: results to the requester's full JID, then
    /// the IQ result with `<fin/>`, routed in that order.
    async fn archive_query(&self, cx: &Cx, from: &FullJid, room: BareJid, iq: &Element) {
        let allowed = match self.lock().get(&room) {
            Some(r) => r.may_read_archive(from),
            None => Err(StanzaError::cancel(Condition::ItemNotFound)),
        };
        if let Err(e) = allowed {
            return cx.bounce(iq, e).await;
        }
        let Some(payload) = iq.first_child() else {
            return cx.bounce(iq, refuse(Condition::BadRequest)).await;
        };
        let owner = ArchiveOwner::Room(room);
        let set = iq.attr("type") == Some("set");
        let answer = match (set, payload.name.as_str()) {
            (true, "query") => {
                match crate::mam::run_query(cx, &owner, &Jid::Full(from.clone()), payload).await {
                    Ok((results, fin)) => {
                        for r in results {
                            cx.route(r).await;
                        }
                        Ok(Some(fin))
                    }
                    Err(e) => Err(e),
                }
            }
            (false, "query") => Ok(Some(crate::mam::query_form())),
            (false, "metadata") => crate::mam::metadata(cx, &owner).await,
            _ => Err(StanzaError::cancel(Condition::FeatureNotImplemented)),
        };
        match answer {
            Ok(el) => {
                let mut reply = stanza::iq_result(iq);
                if let Some(el) = el {
                    reply.push_child(el);
                }
                cx.route(reply).await;
            }
            Err(e) => cx.bounce(iq, e).await,
        }
    }

    /// XEP-0425: the tombstone replaces the archived message before the
    /// room announces the retraction, so that nothing is announced that
    /// the archive does not reflect.
    async fn moderate(&self, cx: &Cx, from: &FullJid, room: BareJid, iq: &Element) {
        let _order = self.persist.lock().await;
        let req = iq
            .first_child()
            .ok_or_else(|| refuse(Condition::BadRequest))
            .and_then(moderation::Request::parse);
        let checked = req.and_then(|req| match self.lock().get(&room) {
            Some(r) => r.moderator(from).map(|m| (req, m)),
            None => Err(StanzaError::cancel(Condition::ItemNotFound)),
        });
        let (req, (by, occupant_id)) = match checked {
            Ok(c) => c,
            Err(e) => return cx.bounce(iq, e).await,
        };
        let archived = match self.tombstone(cx, &room, &req, &by, &occupant_id).await {
            Ok(a) => a,
            Err(e) => return cx.bounce(iq, e).await,
        };
        let res = self.with_room(&room, |r| {
            r.moderate(from, &req, archived).map(|mut fx| {
                fx.reply = Some(stanza::iq_result(iq));
                fx
            })
        });
        match res {
            Ok(fx) => self.apply(cx, &room, fx, iq).await,
            Err(e) => cx.bounce(iq, e).await,
        }
    }

    /// Replaces message `req.id` in the room archive with its tombstone;
    /// false when the archive does not have it.
    async fn tombstone(
        &self,
        cx: &Cx,
        room: &BareJid,
        req: &moderation::Request,
        by: &str,
        occupant_id: &str,
    ) -> Result<bool, StanzaError> {
        let archive = &cx.stores().archive;
        let owner = ArchiveOwner::Room(room.clone());
        let query = ArchiveQuery {
            ids: vec![req.id.clone()],
            max: 1,
            ..ArchiveQuery::default()
        };
        let item = match archive.query(&owner, &query).await {
            Ok(page) => page.items.into_iter().next(),
            Err(StoreError::NotFound) => None,
            Err(e) => return Err(crate::internal(e)),
        };
        let Some(item) = item else {
            return Ok(false);
        };
        let original = waxwing_proto::xml::parse_stanza(&item.stanza, ns::CLIENT)
            .map_err(|_| StanzaError::wait(Condition::InternalServerError))?;
        let t = moderation::tombstone(
            &original,
            by,
            occupant_id,
            req.reason.as_deref(),
            SystemTime::now(),
        );
        archive
            .replace(&owner, &item.id, &t.to_xml())
            .await
            .map_err(crate::internal)?;
        Ok(true)
    }

    async fn message_to_occupant(
        &self,
        cx: &Cx,
        from: &FullJid,
        room: BareJid,
        nick: &str,
        m: Element,
    ) {
        if m.attr("type") == Some("error") {
            return;
        }
        let res = self.with_room(&room, |r| r.private_message(from, nick, &m));
        match res {
            Ok(fx) => self.apply(cx, &room, fx, &m).await,
            Err(e) => cx.bounce(&m, e).await,
        }
    }

    async fn iq_to_occupant(
        &self,
        cx: &Cx,
        from: &FullJid,
        room: BareJid,
        nick: &str,
        iq: Element,
    ) {
        let res = {
            let rooms = self.lock();
            match rooms.get(&room) {
                Some(r) => r.iq_to_occupant(from, nick, &iq),
                // Nobody is joined to a room that does not exist. Not
                // item-not-found: to a XEP-0410 self-ping that means "joined,
                // but renamed", and a client whose temporary room vanished
                // (a restart) would never rejoin.
                None => Err(StanzaError::modify(Condition::NotAcceptable)),
            }
        };
        match res {
            Ok(out) => cx.route(out).await,
            Err(e) => cx.bounce(&iq, e).await,
        }
    }

    async fn iq_to_room(&self, cx: &Cx, from: &FullJid, room: BareJid, iq: Element) {
        let ty = iq.attr("type").unwrap_or_default();
        if !matches!(ty, "get" | "set") {
            return;
        }
        let Some(payload) = iq.first_child().cloned() else {
            return cx.bounce(&iq, refuse(Condition::BadRequest)).await;
        };
        let set = ty == "set";
        if payload.ns == crate::mam::NS {
            return self.archive_query(cx, from, room, &iq).await;
        }
        if set && payload.is("moderate", moderation::NS) {
            return self.moderate(cx, from, room, &iq).await;
        }
        let _order = if set {
            Some(self.persist.lock().await)
        } else {
            None
        };
        let limits = self.limits;
        let rule = |r: &mut Room| {
            let answer = |el: Element| {
                let mut reply = stanza::iq_result(&iq);
                reply.push_child(el);
                Ok(Effects {
                    reply: Some(reply),
                    ..Effects::default()
                })
            };
            let with_ack = |fx: Result<Effects, StanzaError>| {
                fx.map(|mut fx| {
                    fx.reply = Some(stanza::iq_result(&iq));
                    fx
                })
            };
            match (payload.ns.as_str(), set) {
                (ns::DISCO_INFO, false) => {
                    answer(r.disco_info(from, payload.attr("node"), &limits)?)
                }
                (ns::DISCO_ITEMS, false) => {
                    if r.locked && r.affiliation(from.bare()) != Affiliation::Owner {
                        return Err(StanzaError::cancel(Condition::ItemNotFound));
                    }
                    answer(Element::new("query", ns::DISCO_ITEMS))
                }
                (NS_ADMIN, false) => answer(r.admin_get(from, &payload)?),
                (NS_ADMIN, true) => with_ack(r.admin_set(from, &payload, &limits)),
                (NS_OWNER, false) => answer(r.owner_get(from, &limits)?),
                (NS_OWNER, true) => with_ack(r.owner_set(from, &payload, &limits)),
                (ns::REGISTER, false) => answer(r.register_get(from)?),
                (ns::REGISTER, true) => with_ack(r.register_set(from, &payload)),
                (ns::PING, false) => Ok(Effects {
                    reply: Some(stanza::iq_result(&iq)),
                    ..Effects::default()
                }),
                _ => Err(StanzaError::cancel(Condition::ServiceUnavailable)),
            }
        };
        if set {
            return self.change_persisted(cx, &room, &iq, rule).await;
        }
        match self.with_room(&room, rule) {
            Ok(fx) => self.apply(cx, &room, fx, &iq).await,
            Err(e) => cx.bounce(&iq, e).await,
        }
    }

    async fn iq_to_service(&self, cx: &Cx, iq: Element) {
        let ty = iq.attr("type").unwrap_or_default();
        if !matches!(ty, "get" | "set") {
            return;
        }
        let Some(payload) = iq.first_child() else {
            return cx.bounce(&iq, refuse(Condition::BadRequest)).await;
        };
        let result = match (payload.ns.as_str(), ty) {
            (ns::DISCO_INFO, "get") if payload.attr("node").is_none_or(str::is_empty) => {
                let mut q = Element::new("query", ns::DISCO_INFO).with_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "conference")
                        .with_attr("type", "text")
                        .with_attr("name", "Chatrooms"),
                );
                for f in [
                    ns::DISCO_INFO,
                    ns::DISCO_ITEMS,
                    NS_MUC,
                    room::NS_STABLE_ID,
                    NS_OCCUPANT_ID,
                    ns::PING,
                    channel_search::NS,
                ] {
                    q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
                }
                Ok(q)
            }
            (ns::DISCO_ITEMS, "get") if payload.attr("node").is_none_or(str::is_empty) => {
                let mut listed: Vec<(String, String)> = self
                    .lock()
                    .values()
                    .filter(|r| r.is_listed())
                    .map(|r| (r.jid.to_string(), r.name().to_string()))
                    .collect();
                listed.sort();
                let mut q = Element::new("query", ns::DISCO_ITEMS);
                for (jid, name) in listed {
                    q.push_child(
                        Element::new("item", ns::DISCO_ITEMS)
                            .with_attr("jid", jid)
                            .with_attr("name", name),
                    );
                }
                Ok(q)
            }
            (ns::PING, "get") => Ok(Element::new("ping", ns::PING)),
            // XEP-0433: an empty <search/> asks for the form.
            (channel_search::NS, "get") if payload.first_child().is_none() => {
                Ok(channel_search::form())
            }
            (channel_search::NS, "get") => channel_search::parse(payload).and_then(|q| {
                let mut rooms: Vec<_> = self
                    .lock()
                    .values()
                    .filter(|r| r.is_listed())
                    .map(Room::listing)
                    .collect();
                // Remote listings, unless a local room has the same address.
                let remote = self.crawler.listings();
                rooms.extend(
                    remote
                        .into_iter()
                        .filter(|l| !l.address.ends_with(&format!("@{}", self.domain))),
                );
                channel_search::search(rooms, &q)
            }),
            (ns::DISCO_INFO | ns::DISCO_ITEMS, "get") => {
                Err(StanzaError::cancel(Condition::ItemNotFound))
            }
            _ => Err(StanzaError::cancel(Condition::ServiceUnavailable)),
        };
        match result {
            Ok(q) => {
                let mut reply = stanza::iq_result(&iq);
                if q.name != "ping" {
                    reply.push_child(q);
                }
                cx.route(reply).await;
            }
            Err(e) => cx.bounce(&iq, e).await,
        }
    }

    /// Number of rooms in memory (loaded persistent ones included).
    pub fn room_count(&self) -> usize {
        self.lock().len()
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }
}

#[async_trait]
impl DomainService for MucService {
    async fn handle_stanza(&self, cx: &Cx, stanza: Element) {
        self.crawler.start(cx);
        // Answers to the crawler's requests go to it, not to the rooms.
        let Some(stanza) = self.crawler.deliver(stanza) else {
            return;
        };
        let Some(kind) = stanza::kind(&stanza) else {
            return;
        };
        if let Err(e) = self.ensure_loaded(cx).await {
            tracing::error!(domain = %self.domain, error = %e, "cannot load MUC rooms");
            return cx
                .bounce(&stanza, StanzaError::wait(Condition::InternalServerError))
                .await;
        }
        // As the router parsed them, when it could: every room message
        // would otherwise parse both again.
        let from = match cx.sender_of(&stanza) {
            Some(session) => Jid::Full(session.jid.clone()),
            None => match stanza.attr("from").map(Jid::parse) {
                Some(Ok(from)) => from,
                _ => return,
            },
        };
        let Some(to) = cx.to_of(&stanza) else {
            return;
        };
        if to.local().is_none() {
            return match kind {
                StanzaKind::Iq => self.iq_to_service(cx, stanza).await,
                _ if to.resource().is_none() => {
                    cx.bounce(&stanza, refuse(Condition::ServiceUnavailable))
                        .await
                }
                _ => cx.bounce(&stanza, refuse(Condition::ItemNotFound)).await,
            };
        }
        // A server or service (a remote directory crawler) may discover a
        // room's public information; it is treated as an unaffiliated
        // requester, and the answer goes to the `from` it gave.
        if from.local().is_none()
            && from.resource().is_none()
            && to.resource().is_none()
            && kind == StanzaKind::Iq
            && stanza.attr("type") == Some("get")
            && stanza.first_child().is_some_and(|q| {
                q.is("query", ns::DISCO_INFO) && q.attr("node").is_none_or(str::is_empty)
            })
            && let Ok(asker) = FullJid::new(from.to_bare(), "disco")
        {
            return self.iq_to_room(cx, &asker, to.to_bare(), stanza).await;
        }
        // Occupants are client sessions; a bare `from` (a server) cannot be one.
        let Some(from) = from.as_full().cloned() else {
            return cx.bounce(&stanza, refuse(Condition::NotAcceptable)).await;
        };
        let room = to.to_bare();
        match (kind, to.resource()) {
            (StanzaKind::Presence, Some(nick)) => {
                let nick = nick.to_string();
                self.presence_to_occupant(cx, &from, room, &nick, stanza)
                    .await
            }
            (StanzaKind::Presence, None) => {
                // §7.2.1: entering without a nickname.
                if stanza.attr("type").is_none() {
                    cx.bounce(&stanza, StanzaError::modify(Condition::JidMalformed))
                        .await
                }
            }
            (StanzaKind::Message, Some(nick)) => {
                let nick = nick.to_string();
                self.message_to_occupant(cx, &from, room, &nick, stanza)
                    .await
            }
            (StanzaKind::Message, None) => self.message_to_room(cx, &from, room, stanza).await,
            (StanzaKind::Iq, Some(nick)) => {
                let nick = nick.to_string();
                self.iq_to_occupant(cx, &from, room, &nick, stanza).await
            }
            (StanzaKind::Iq, None) => self.iq_to_room(cx, &from, room, stanza).await,
        }
    }

    fn name(&self) -> &str {
        "Chatrooms"
    }

    /// In a cluster a room lives on one node: its occupants are in that
    /// process's memory.
    fn owned_entity(&self, to: &Jid, _stanza: &Element) -> Option<String> {
        to.local().is_some().then(|| to.to_bare().to_string())
    }

    /// Takes a room over (its previous owner died or left): the stored
    /// configuration, affiliations and history as they are now, with no
    /// occupants; a room that is not stored (temporary, or destroyed
    /// elsewhere) is forgotten and may be created again.
    async fn entity_acquired(&self, cx: &Cx, entity: &str) {
        let Ok(jid) = BareJid::parse(entity) else {
            return;
        };
        if self.ensure_loaded(cx).await.is_err() {
            // handle_stanza reports it and refuses the stanza.
            return;
        }
        let stored = match cx.stores().muc.rooms(&self.domain).await {
            Ok(rooms) => rooms.into_iter().find(|r| r.room.jid == jid),
            Err(e) => {
                tracing::error!(room = %jid, error = %e, "cannot reload a room taken over; keeping what memory holds");
                return;
            }
        };
        let fresh = match stored.map(|s| Room::from_stored(s, &self.limits)) {
            Some(Ok(mut r)) => {
                self.restore_history(cx, &mut r).await;
                Some(r)
            }
            Some(Err(e)) => {
                tracing::error!(room = %jid, error = %e, "skipping a stored room");
                None
            }
            None => None,
        };
        let mut rooms = self.lock();
        match fresh {
            Some(r) => rooms.insert(jid, r),
            None => rooms.remove(&jid),
        };
    }

    /// Another node serves the room now: our occupants are told they are
    /// out (XEP-0045 status 332), so their clients join again, reaching
    /// the new owner.
    async fn entity_released(&self, cx: &Cx, entity: &str) {
        let Ok(jid) = BareJid::parse(entity) else {
            return;
        };
        let farewells = self
            .lock()
            .remove(&jid)
            .map(|r| r.shutdown_presences())
            .unwrap_or_default();
        for p in farewells {
            cx.route(p).await;
        }
    }
}

impl std::fmt::Debug for MucService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MucService")
            .field("domain", &self.domain)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}
