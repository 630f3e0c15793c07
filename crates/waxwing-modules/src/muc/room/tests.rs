//! The room rules without a server: joins, roles, affiliations, history.

use std::time::{Duration, UNIX_EPOCH};

use super::*;

const LIMITS: Limits = Limits {
    max_history: 50,
    max_history_bytes: 262_144,
    max_occupants: 100,
};

fn t(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
}

fn full(s: &str) -> FullJid {
    FullJid::parse(s).unwrap()
}

fn bare(s: &str) -> BareJid {
    BareJid::parse(s).unwrap()
}

fn presence() -> Element {
    Element::new("presence", ns::CLIENT).with_child(Element::new("x", NS_MUC))
}

/// A room `coven@chat.example` owned by crone, unlocked.
fn room() -> Room {
    let mut r = Room::new(
        bare("coven@chat.example"),
        RoomConfig::new(20, "salt".into()),
    );
    r.affiliations.insert(
        bare("crone@example"),
        AffEntry {
            affiliation: Affiliation::Owner,
            nick: None,
            reason: None,
        },
    );
    r
}

fn join(r: &mut Room, who: &str, nick: &str) -> Effects {
    r.handle_presence(&full(who), nick, &presence(), false, &LIMITS, t(0))
        .unwrap_or_else(|e| panic!("{who} joining as {nick}: {e}"))
}

fn codes(p: &Element) -> Vec<String> {
    p.child("x", NS_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.name == "status")
                .filter_map(|c| c.attr("code").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every stanza `fx` sends to `who`, in order (a fan-out's copy included).
fn to(fx: &Effects, who: &str) -> Vec<Element> {
    fx.burst
        .iter()
        .chain(&fx.out)
        .cloned()
        .chain(fx.fanout.iter().flat_map(|f| f.addressed()))
        .filter(|e| e.attr("to") == Some(who))
        .collect()
}

fn item(p: &Element) -> &Element {
    p.child("x", NS_USER)
        .unwrap()
        .child("item", NS_USER)
        .unwrap()
}

#[test]
fn join_order_and_status_codes() {
    let mut r = room();
    let fx = r
        .handle_presence(
            &full("crone@example/a"),
            "crone",
            &presence(),
            true,
            &LIMITS,
            t(0),
        )
        .unwrap();
    let mine = to(&fx, "crone@example/a");
    // Self presence (110 + 201), then the (empty) subject.
    assert_eq!(mine.len(), 2);
    assert_eq!(codes(&mine[0]), ["110", "201"]);
    assert_eq!(item(&mine[0]).attr("affiliation"), Some("owner"));
    assert_eq!(item(&mine[0]).attr("role"), Some("moderator"));
    assert!(mine[0].child("occupant-id", NS_OCCUPANT_ID).is_some());
    assert!(mine[1].child("subject", ns::CLIENT).is_some());

    let fx = join(&mut r, "hag@example/b", "hag");
    let hag = to(&fx, "hag@example/b");
    // crone's presence, own presence, subject.
    assert_eq!(hag.len(), 3);
    assert_eq!(hag[0].attr("from"), Some("coven@chat.example/crone"));
    // Semi-anonymous: a participant does not see real JIDs.
    assert_eq!(item(&hag[0]).attr("jid"), None);
    assert_eq!(codes(&hag[1]), ["110"]);
    let crone = to(&fx, "crone@example/a");
    assert_eq!(crone.len(), 1);
    // The moderator does see the real JID.
    assert_eq!(item(&crone[0]).attr("jid"), Some("hag@example/b"));
    assert_eq!(item(&crone[0]).attr("role"), Some("participant"));
}

#[test]
fn nick_conflict_and_multi_session() {
    let mut r = room();
    join(&mut r, "crone@example/a", "crone");
    let e = r
        .handle_presence(
            &full("hag@example/b"),
            "crone",
            &presence(),
            false,
            &LIMITS,
            t(0),
        )
        .unwrap_err();
    assert_eq!(e.condition, Condition::Conflict);
    // The same account from another resource shares the nick, silently for others.
    let fx = join(&mut r, "crone@example/phone", "crone");
    assert!(to(&fx, "crone@example/a").is_empty());
    assert_eq!(r.occupant("crone").unwrap().sessions.len(), 2);
    assert_eq!(r.occupant_count(), 1);
    // Leaving from one session keeps the occupant.
    let fx = r.leave(&full("crone@example/phone"), None);
    assert_eq!(fx.out.len(), 1);
    assert_eq!(r.occupant_count(), 1);
}

#[test]
fn nick_change_announces_303() {
    let mut r = room();
    join(&mut r, "crone@example/a", "crone");
    join(&mut r, "hag@example/b", "hag");
    let fx = r
        .handle_presence(
            &full("hag@example/b"),
            "witch",
            &presence(),
            false,
            &LIMITS,
            t(0),
        )
        .unwrap();
    let crone = to(&fx, "crone@example/a");
    assert_eq!(crone.len(), 2);
    assert_eq!(crone[0].attr("type"), Some("unavailable"));
    assert_eq!(codes(&crone[0]), ["303"]);
    assert_eq!(item(&crone[0]).attr("nick"), Some("witch"));
    assert_eq!(crone[1].attr("from"), Some("coven@chat.example/witch"));
    let hag = to(&fx, "hag@example/b");
    assert_eq!(codes(&hag[0]), ["110", "303"]);
    assert!(r.occupant("hag").is_none());
    assert!(r.occupant("witch").is_some());
    // Taking a nick in use is a conflict.
    let e = r
        .handle_presence(
            &full("hag@example/b"),
            "crone",
            &presence(),
            false,
            &LIMITS,
            t(0),
        )
        .unwrap_err();
    assert_eq!(e.condition, Condition::Conflict);
}

#[test]
fn entry_rules() {
    let mut r = room();
    r.config.members_only = true;
    let e = r
        .handle_presence(
            &full("hag@example/b"),
            "hag",
            &presence(),
            false,
            &LIMITS,
            t(0),
        )
        .unwrap_err();
    assert_eq!(e.condition, Condition::RegistrationRequired);
    r.config.members_only = false;
    r.config.password = Some("pw".into());
    let e = r
        .handle_presence(
            &full("hag@example/b"),
            "hag",
            &presence(),
            false,
            &LIMITS,
            t(0),
        )
        .unwrap_err();
    assert_eq!(e.condition, Condition::NotAuthorized);
    let with_pw = Element::new("presence", ns::CLIENT).with_child(
        Element::new("x", NS_MUC).with_child(Element::new("password", NS_MUC).with_text("pw")),
    );
    r.handle_presence(
        &full("hag@example/b"),
        "hag",
        &with_pw,
        false,
        &LIMITS,
        t(0),
    )
    .unwrap();
    // Bans by domain.
    r.affiliations.insert(
        bare("evil.example"),
        AffEntry {
            affiliation: Affiliation::Outcast,
            nick: None,
            reason: None,
        },
    );
    let e = r
        .handle_presence(
            &full("x@evil.example/r"),
            "x",
            &with_pw,
            false,
            &LIMITS,
            t(0),
        )
        .unwrap_err();
    assert_eq!(e.condition, Condition::Forbidden);
    // Locked rooms admit only owners.
    let mut r = room();
    r.locked = true;
    let e = r
        .handle_presence(
            &full("hag@example/b"),
            "hag",
            &presence(),
            false,
            &LIMITS,
            t(0),
        )
        .unwrap_err();
    assert_eq!(e.condition, Condition::ItemNotFound);
    // Full rooms admit only admins and owners.
    let mut r = room();
    r.config.max_users = Some(1);
    join(&mut r, "hag@example/b", "hag");
    let e = r
        .handle_presence(&full("x@example/b"), "x", &presence(), false, &LIMITS, t(0))
        .unwrap_err();
    assert_eq!(e.condition, Condition::ServiceUnavailable);
    join(&mut r, "crone@example/a", "crone");
}

fn admin_item(attrs: &[(&str, &str)]) -> Element {
    let mut it = Element::new("item", NS_ADMIN);
    for (k, v) in attrs {
        it.set_attr(*k, *v);
    }
    Element::new("query", NS_ADMIN).with_child(it)
}

#[test]
fn kick_ban_and_voice() {
    let mut r = room();
    join(&mut r, "crone@example/a", "crone");
    join(&mut r, "hag@example/b", "hag");
    join(&mut r, "imp@example/c", "imp");
    // A participant may not kick.
    let e = r
        .admin_set(
            &full("hag@example/b"),
            &admin_item(&[("nick", "imp"), ("role", "none")]),
            &LIMITS,
        )
        .unwrap_err();
    assert_eq!(e.condition, Condition::Forbidden);
    // Voice revoked: visitor.
    let fx = r
        .admin_set(
            &full("crone@example/a"),
            &admin_item(&[("nick", "imp"), ("role", "visitor")]),
            &LIMITS,
        )
        .unwrap();
    assert_eq!(
        item(&to(&fx, "hag@example/b")[0]).attr("role"),
        Some("visitor")
    );
    let e = r
        .groupchat(
            &full("imp@example/c"),
            &mut Element::new("message", ns::CLIENT)
                .with_attr("type", "groupchat")
                .with_child(Element::new("body", ns::CLIENT).with_text("hi")),
            &LIMITS,
            t(1),
            None,
        )
        .unwrap_err();
    assert_eq!(e.condition, Condition::Forbidden);
    // Kick: 307 to everyone.
    let fx = r
        .admin_set(
            &full("crone@example/a"),
            &admin_item(&[("nick", "imp"), ("role", "none")]),
            &LIMITS,
        )
        .unwrap();
    assert_eq!(codes(&to(&fx, "imp@example/c")[0]), ["110", "307"]);
    assert_eq!(codes(&to(&fx, "hag@example/b")[0]), ["307"]);
    assert!(r.occupant("imp").is_none());
    // Ban: 301, stored as outcast, cannot come back.
    let fx = r
        .admin_set(
            &full("crone@example/a"),
            &admin_item(&[("jid", "hag@example"), ("affiliation", "outcast")]),
            &LIMITS,
        )
        .unwrap();
    assert_eq!(codes(&to(&fx, "hag@example/b")[0]), ["110", "301"]);
    assert_eq!(r.affiliation(&bare("hag@example")), Affiliation::Outcast);
    let e = r
        .handle_presence(
            &full("hag@example/b"),
            "hag",
            &presence(),
            false,
            &LIMITS,
            t(0),
        )
        .unwrap_err();
    assert_eq!(e.condition, Condition::Forbidden);
    // The owner cannot be kicked.
    let e = r
        .admin_set(
            &full("crone@example/a"),
            &admin_item(&[("nick", "crone"), ("role", "none")]),
            &LIMITS,
        )
        .unwrap_err();
    assert_eq!(e.condition, Condition::NotAllowed);
}

#[test]
fn last_owner_stays() {
    let mut r = room();
    join(&mut r, "crone@example/a", "crone");
    let e = r
        .admin_set(
            &full("crone@example/a"),
            &admin_item(&[("jid", "crone@example"), ("affiliation", "admin")]),
            &LIMITS,
        )
        .unwrap_err();
    assert_eq!(e.condition, Condition::Conflict);
}

#[test]
fn membership_loss_in_members_only_room_removes() {
    let mut r = room();
    r.config.members_only = true;
    r.affiliations.insert(
        bare("hag@example"),
        AffEntry {
            affiliation: Affiliation::Member,
            nick: None,
            reason: None,
        },
    );
    join(&mut r, "crone@example/a", "crone");
    join(&mut r, "hag@example/b", "hag");
    let fx = r
        .admin_set(
            &full("crone@example/a"),
            &admin_item(&[("jid", "hag@example"), ("affiliation", "none")]),
            &LIMITS,
        )
        .unwrap();
    assert_eq!(codes(&to(&fx, "crone@example/a")[0]), ["321"]);
    assert!(r.occupant("hag").is_none());
}

#[test]
fn history_is_bounded_and_delayed() {
    let mut r = room();
    r.config.history_length = 3;
    join(&mut r, "crone@example/a", "crone");
    for i in 0..5 {
        let mut m = Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("id", format!("m{i}"))
            .with_child(Element::new("body", ns::CLIENT).with_text(format!("{i}")));
        let fx = r
            .groupchat(&full("crone@example/a"), &mut m, &LIMITS, t(i), None)
            .unwrap();
        // Reflected with the id kept (stable_id), a stanza-id and an occupant-id.
        let back = to(&fx, "crone@example/a").remove(0);
        assert_eq!(back.attr("id"), Some(format!("m{i}").as_str()));
        assert_eq!(
            back.child("stanza-id", NS_SID).unwrap().attr("by"),
            Some("coven@chat.example")
        );
        assert!(back.child("delay", ns::DELAY).is_none());
    }
    assert_eq!(r.history.len(), 3);
    let p = Element::new("presence", ns::CLIENT).with_child(
        Element::new("x", NS_MUC)
            .with_child(Element::new("history", NS_MUC).with_attr("maxstanzas", "2")),
    );
    let fx = r
        .handle_presence(&full("hag@example/b"), "hag", &p, false, &LIMITS, t(10))
        .unwrap();
    let hag = to(&fx, "hag@example/b");
    let bodies: Vec<String> = hag
        .iter()
        .filter_map(|e| e.child("body", ns::CLIENT).map(Element::text))
        .collect();
    assert_eq!(bodies, ["3", "4"]);
    assert!(
        hag.iter()
            .filter(|e| e.child("body", ns::CLIENT).is_some())
            .all(|e| e.child("delay", ns::DELAY).is_some())
    );
    // The subject comes last.
    assert!(hag.last().unwrap().child("subject", ns::CLIENT).is_some());
}

#[test]
fn subject_rules() {
    let mut r = room();
    join(&mut r, "crone@example/a", "crone");
    join(&mut r, "hag@example/b", "hag");
    let subj = |s: &str| {
        Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_child(Element::new("subject", ns::CLIENT).with_text(s))
    };
    let e = r
        .groupchat(&full("hag@example/b"), &mut subj("x"), &LIMITS, t(0), None)
        .unwrap_err();
    assert_eq!(e.condition, Condition::Forbidden);
    r.groupchat(
        &full("crone@example/a"),
        &mut subj("Spells"),
        &LIMITS,
        t(0),
        None,
    )
    .unwrap();
    assert_eq!(r.subject, "Spells");
    assert_eq!(r.subject_by.as_deref(), Some("crone"));
    assert_eq!(r.history.len(), 0, "subjects are not history");
    r.config.change_subject = true;
    r.groupchat(
        &full("hag@example/b"),
        &mut subj("Potions"),
        &LIMITS,
        t(0),
        None,
    )
    .unwrap();
    assert_eq!(r.subject, "Potions");
}

#[test]
fn persistence_round_trip() {
    let mut r = room();
    r.config.persistent = true;
    r.subject = "Spells".into();
    r.affiliations.insert(
        bare("hag@example"),
        AffEntry {
            affiliation: Affiliation::Member,
            nick: Some("hag".into()),
            reason: None,
        },
    );
    let stored = r.to_stored(&LIMITS);
    let back = Room::from_stored(stored, &LIMITS).unwrap();
    assert_eq!(back.config, r.config);
    assert_eq!(back.affiliations, r.affiliations);
    assert_eq!(back.subject, "Spells");
    assert!(back.stored);
}

#[test]
fn configuring_persistence_writes_or_deletes() {
    let mut r = room();
    r.locked = true;
    join(&mut r, "crone@example/a", "crone");
    let form = |v: &str| {
        let mut f = Form::new("submit", config::FORM_TYPE);
        f.field("muc#roomconfig_persistentroom", None, None, &[v]);
        Element::new("query", NS_OWNER).with_child(f.into_element())
    };
    let fx = r
        .owner_set(&full("crone@example/a"), &form("1"), &LIMITS)
        .unwrap();
    assert!(!r.locked);
    assert!(matches!(fx.persist.as_slice(), [Persist::Replace(_)]));
    let fx = r
        .owner_set(&full("crone@example/a"), &form("0"), &LIMITS)
        .unwrap();
    assert_eq!(fx.persist, vec![Persist::Delete]);
    // Status 104 announces a change to an unlocked room.
    assert_eq!(codes(&to(&fx, "crone@example/a")[0]), ["104"]);
    // Only owners configure.
    join(&mut r, "hag@example/b", "hag");
    let e = r
        .owner_set(&full("hag@example/b"), &form("1"), &LIMITS)
        .unwrap_err();
    assert_eq!(e.condition, Condition::Forbidden);
}

#[test]
fn temporary_room_goes_when_empty() {
    let mut r = room();
    join(&mut r, "crone@example/a", "crone");
    let fx = r.leave(&full("crone@example/a"), None);
    assert!(fx.destroyed);
    let mut r = room();
    r.config.persistent = true;
    join(&mut r, "crone@example/a", "crone");
    assert!(!r.leave(&full("crone@example/a"), None).destroyed);
}

#[test]
fn self_ping() {
    let mut r = room();
    join(&mut r, "crone@example/a", "crone");
    join(&mut r, "hag@example/b", "hag");
    let ping = Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("id", "p")
        .with_attr("from", "crone@example/a")
        .with_attr("to", "coven@chat.example/crone")
        .with_child(Element::new("ping", ns::PING));
    let reply = r
        .iq_to_occupant(&full("crone@example/a"), "crone", &ping)
        .unwrap();
    assert_eq!(reply.attr("type"), Some("result"));
    assert_eq!(reply.attr("to"), Some("crone@example/a"));
    let e = r
        .iq_to_occupant(&full("x@example/a"), "crone", &ping)
        .unwrap_err();
    assert_eq!(e.condition, Condition::NotAcceptable);
    // A ping to someone else is forwarded from the sender's room JID.
    let fwd = r
        .iq_to_occupant(&full("crone@example/a"), "hag", &ping)
        .unwrap();
    assert_eq!(fwd.attr("to"), Some("hag@example/b"));
    assert_eq!(fwd.attr("from"), Some("coven@chat.example/crone"));
}

#[test]
fn occupant_ids_are_stable_per_account_and_opaque() {
    let mut r = room();
    join(&mut r, "crone@example/a", "crone");
    let id = r.occupant("crone").unwrap().occupant_id.clone();
    r.leave(&full("crone@example/a"), None);
    join(&mut r, "crone@example/b", "other");
    assert_eq!(r.occupant("other").unwrap().occupant_id, id);
    assert!(!id.contains("crone"));
    join(&mut r, "hag@example/b", "hag");
    assert_ne!(r.occupant("hag").unwrap().occupant_id, id);
}

#[test]
fn fan_out_is_linear() {
    let mut r = room();
    for i in 0..90 {
        join(&mut r, &format!("u{i}@example/r"), &format!("u{i}"));
    }
    let mut m = Element::new("message", ns::CLIENT)
        .with_attr("type", "groupchat")
        .with_child(Element::new("body", ns::CLIENT).with_text("hi"));
    let fx = r
        .groupchat(&full("u0@example/r"), &mut m, &LIMITS, t(0), None)
        .unwrap();
    assert!(fx.out.is_empty(), "one fan-out, no copy per occupant");
    assert_eq!(fx.fanout.as_ref().map(|f| f.to.len()), Some(90));
    assert_eq!(fx.fanout.unwrap().stanza.element().attr("to"), None);
    let fx = r.leave(&full("u1@example/r"), None);
    assert_eq!(fx.out.len(), 90, "89 others and the leaver itself");
}

#[test]
fn join_burst_is_everything_for_the_joiner_only() {
    let mut r = room();
    for i in 0..10 {
        join(&mut r, &format!("u{i}@example/r"), &format!("u{i}"));
    }
    let fx = join(&mut r, "late@example/r", "late");
    // 10 presences of the others, the own presence, the subject: in order.
    assert_eq!(fx.burst.len(), 12);
    assert!(
        fx.burst
            .iter()
            .all(|s| s.attr("to") == Some("late@example/r"))
    );
    assert_eq!(codes(&fx.burst[10]), ["110"]);
    assert!(fx.burst[11].child("subject", ns::CLIENT).is_some());
    // Each other occupant gets the newcomer's presence, and only that.
    assert_eq!(fx.out.len(), 10);
    assert!(
        fx.out
            .iter()
            .all(|s| s.attr("to") != Some("late@example/r"))
    );
}

#[test]
fn an_error_from_an_occupant_removes_it_with_333() {
    let mut r = room();
    join(&mut r, "crone@example/a", "crone");
    join(&mut r, "hag@example/b", "hag");
    let fx = r.remove_after_error(&full("hag@example/b"));
    assert!(r.occupant("hag").is_none());
    let seen = to(&fx, "crone@example/a");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].attr("type"), Some("unavailable"));
    assert_eq!(codes(&seen[0]), ["333"]);
    let own = to(&fx, "hag@example/b");
    assert_eq!(codes(&own[0]), ["110", "333"]);
    // Not an occupant: nothing happens.
    assert!(r.remove_after_error(&full("hag@example/b")).out.is_empty());
}

/// The sessions a room message goes to, as the room lists them now.
fn recipients(r: &mut Room, who: &str) -> Vec<String> {
    let mut m = Element::new("message", ns::CLIENT)
        .with_attr("type", "groupchat")
        .with_child(Element::new("body", ns::CLIENT).with_text("hi"));
    let fx = r
        .groupchat(&full(who), &mut m, &LIMITS, t(0), None)
        .unwrap();
    let mut to: Vec<String> = fx
        .fanout
        .unwrap()
        .to
        .iter()
        .map(FullJid::to_string)
        .collect();
    to.sort();
    to
}

#[test]
fn recipients_follow_joins_sessions_nick_changes_and_leaves() {
    let mut r = room();
    join(&mut r, "crone@example/a", "crone");
    assert_eq!(recipients(&mut r, "crone@example/a"), ["crone@example/a"]);
    join(&mut r, "hag@example/b", "hag");
    join(&mut r, "crone@example/c", "crone");
    assert_eq!(
        recipients(&mut r, "hag@example/b"),
        ["crone@example/a", "crone@example/c", "hag@example/b"]
    );
    // A nick change keeps the sessions; the list is made again all the same.
    join(&mut r, "hag@example/b", "witch");
    assert_eq!(r.occupant_of(&full("hag@example/b")).unwrap().nick, "witch");
    assert_eq!(
        recipients(&mut r, "hag@example/b"),
        ["crone@example/a", "crone@example/c", "hag@example/b"]
    );
    r.leave(&full("crone@example/a"), None);
    assert_eq!(
        recipients(&mut r, "hag@example/b"),
        ["crone@example/c", "hag@example/b"]
    );
    r.leave(&full("hag@example/b"), None);
    assert_eq!(recipients(&mut r, "crone@example/c"), ["crone@example/c"]);
}

#[test]
fn groupchat_takes_the_message_only_when_it_accepts_it() {
    let mut r = room();
    join(&mut r, "crone@example/a", "crone");
    let sent = Element::new("message", ns::CLIENT)
        .with_attr("type", "groupchat")
        .with_attr("to", "coven@chat.example")
        .with_child(Element::new("body", ns::CLIENT).with_text("hi"));
    // Refused (not an occupant): left as it came, for the error reply.
    let mut m = sent.clone();
    r.groupchat(&full("imp@example/c"), &mut m, &LIMITS, t(0), None)
        .unwrap_err();
    assert_eq!(m, sent);
    let fx = r
        .groupchat(&full("crone@example/a"), &mut m, &LIMITS, t(0), None)
        .unwrap();
    assert!(m.attrs.is_empty() && m.children().next().is_none());
    let out = fx.fanout.unwrap().stanza.element().clone();
    assert_eq!(out.attr("from"), Some("coven@chat.example/crone"));
    assert_eq!(out.attr("to"), None);
    assert_eq!(out.child("body", ns::CLIENT).unwrap().text(), "hi");
}

#[test]
fn stanza_and_occupant_ids_are_written_as_the_element_writer_writes_them() {
    // As a client's message comes: its content kept raw, which the
    // templates are appended to.
    let message = || {
        waxwing_proto::xml::parse_stanza(
            "<message type='groupchat'><body>hi</body></message>",
            ns::CLIENT,
        )
        .unwrap()
    };
    assert!(message().children.is_unparsed());
    // An archive id is the store's: escaped like any attribute value.
    for id in ["a1", "it's <&>"] {
        let mut by_template = message();
        push_stanza_id(&mut by_template, Some(id), "coven@chat.example");
        let mut built = message();
        built.push_child(
            Element::new("stanza-id", NS_SID)
                .with_attr("id", id)
                .with_attr("by", "coven@chat.example"),
        );
        assert_eq!(
            by_template.to_xml_in(ns::CLIENT),
            built.to_xml_in(ns::CLIENT)
        );
    }
    // A fresh id: 96 random bits in 16 characters, never the same twice.
    let fresh = || {
        let mut m = message();
        push_stanza_id(&mut m, None, "coven@chat.example");
        m.child("stanza-id", NS_SID)
            .unwrap()
            .attr("id")
            .unwrap()
            .to_string()
    };
    let (a, b) = (fresh(), fresh());
    assert!(a.len() == 16 && a != b);
    let mut by_template = message();
    by_template.push_child_xml("occupant-id", NS_OCCUPANT_ID, &occupant_id_xml("0f"));
    let mut built = message();
    built.push_child(Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", "0f"));
    assert_eq!(
        by_template.to_xml_in(ns::CLIENT),
        built.to_xml_in(ns::CLIENT)
    );
}
