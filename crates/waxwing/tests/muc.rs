//! XEP-0045 Multi-User Chat against an in-process server, with XEP-0410
//! self-ping and XEP-0421 occupant ids: what a client observes.

mod support;

use support::*;
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

const MUC: &str = "http://jabber.org/protocol/muc";
const USER: &str = "http://jabber.org/protocol/muc#user";
const ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const OWNER: &str = "http://jabber.org/protocol/muc#owner";
const SERVICE: &str = "conference.localhost";

fn room(name: &str) -> String {
    format!("{name}@{SERVICE}")
}

/// Status codes of a MUC presence or message, in order.
fn codes(el: &Element) -> Vec<String> {
    el.child("x", USER)
        .map(|x| {
            x.children()
                .filter(|c| c.name == "status")
                .filter_map(|c| c.attr("code").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn item(el: &Element) -> &Element {
    el.child("x", USER)
        .and_then(|x| x.child("item", USER))
        .unwrap_or_else(|| panic!("no muc#user item in {el}"))
}

fn is_subject(el: &Element) -> bool {
    el.name == "message" && el.child("subject", ns::CLIENT).is_some()
}

async fn connect(s: &TestServer, user: &str) -> Client {
    s.user(user).await;
    s.login(user, "r").await
}

/// Sends a join and collects everything up to the subject, which ends a
/// successful join (§7.2.16). Panics on an error presence.
async fn join_with(c: &mut Client, room_jid: &str, nick: &str, x_inner: &str) -> Vec<Element> {
    c.send(&format!(
        "<presence to='{room_jid}/{nick}'><x xmlns='{MUC}'>{x_inner}</x></presence>"
    ))
    .await;
    let mut got = Vec::new();
    loop {
        let el = c.next(&format!("joining {room_jid} as {nick}")).await;
        assert_ne!(el.attr("type"), Some("error"), "join refused: {el}");
        let done = is_subject(&el);
        got.push(el);
        if done {
            return got;
        }
    }
}

async fn join(c: &mut Client, room_jid: &str, nick: &str) -> Vec<Element> {
    join_with(c, room_jid, nick, "").await
}

/// Sends a join that must fail; returns the error presence.
async fn join_refused(c: &mut Client, room_jid: &str, nick: &str, x_inner: &str) -> Element {
    c.send(&format!(
        "<presence to='{room_jid}/{nick}'><x xmlns='{MUC}'>{x_inner}</x></presence>"
    ))
    .await;
    c.expect_with("an error presence", |e| {
        e.name == "presence" && e.attr("type") == Some("error")
    })
    .await
}

/// Sends an IQ and returns the answer (any type).
async fn iq(c: &mut Client, to: &str, ty: &str, payload: &str) -> Element {
    let id = c.id("iq");
    c.send(&format!(
        "<iq type='{ty}' to='{to}' id='{id}'>{payload}</iq>"
    ))
    .await;
    c.expect_with(&format!("the answer to {id}"), |e| {
        e.name == "iq" && e.attr("id") == Some(id.as_str())
    })
    .await
}

/// Sends an IQ set that must succeed, returning everything that arrived
/// before its result (broadcasts it caused).
async fn iq_ok(c: &mut Client, to: &str, payload: &str) -> Vec<Element> {
    let id = c.id("iq");
    c.send(&format!(
        "<iq type='set' to='{to}' id='{id}'>{payload}</iq>"
    ))
    .await;
    let mut before = Vec::new();
    loop {
        let el = c.next(&format!("the result of {id}")).await;
        if el.name == "iq" && el.attr("id") == Some(id.as_str()) {
            assert_eq!(el.attr("type"), Some("result"), "{payload} failed: {el}");
            return before;
        }
        before.push(el);
    }
}

fn config_form(fields: &[(&str, &str)]) -> String {
    let mut f = format!(
        "<query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"
    );
    for (var, v) in fields {
        f.push_str(&format!("<field var='{var}'><value>{v}</value></field>"));
    }
    f.push_str("</x></query>");
    f
}

/// Creates a room as `nick`, accepting `fields` as its configuration (an
/// instant room when empty).
async fn create(c: &mut Client, room_jid: &str, nick: &str, fields: &[(&str, &str)]) {
    let got = join(c, room_jid, nick).await;
    assert_eq!(
        codes(&got[0]),
        ["110", "170", "201"],
        "new rooms log by default: {}",
        got[0]
    );
    iq_ok(c, room_jid, &config_form(fields)).await;
}

async fn say(c: &mut Client, room_jid: &str, id: &str, body: &str) {
    c.send(&format!(
        "<message to='{room_jid}' type='groupchat' id='{id}'><body>{body}</body></message>"
    ))
    .await;
}

async fn expect_body(c: &mut Client, from: &str, body: &str) -> Element {
    let el = c
        .expect_with(&format!("groupchat {body:?} from {from}"), |e| {
            e.name == "message"
        })
        .await;
    assert_eq!(el.attr("from"), Some(from), "{el}");
    assert_eq!(
        el.child("body", ns::CLIENT).map(Element::text).as_deref(),
        Some(body),
        "{el}"
    );
    el
}

// ---------------------------------------------------------------- basics

#[tokio::test]
async fn service_is_listed_and_instant_room_is_created() {
    let s = TestServer::start().await;
    let mut a = connect(&s, "crone").await;
    let items = iq(
        &mut a,
        DOMAIN,
        "get",
        &format!("<query xmlns='{}'/>", ns::DISCO_ITEMS),
    )
    .await;
    assert!(
        matches_pattern(
            &items,
            &format!(
                "<iq type='result'><query xmlns='{}'><item jid='{SERVICE}'/></query></iq>",
                ns::DISCO_ITEMS
            )
        ),
        "{items}"
    );
    let info = iq(
        &mut a,
        SERVICE,
        "get",
        &format!("<query xmlns='{}'/>", ns::DISCO_INFO),
    )
    .await;
    assert!(
        matches_pattern(
            &info,
            &format!(
                "<iq type='result'><query xmlns='{}'><identity category='conference' type='text'/>\
                 <feature var='{MUC}'/></query></iq>",
                ns::DISCO_INFO
            )
        ),
        "{info}"
    );

    let coven = room("coven");
    let got = join(&mut a, &coven, "crone").await;
    assert_eq!(got.len(), 2, "self presence and subject");
    assert_eq!(got[0].attr("from"), Some(format!("{coven}/crone").as_str()));
    // 170: new rooms log by default (`[muc] log_by_default`).
    assert_eq!(codes(&got[0]), ["110", "170", "201"]);
    assert_eq!(item(&got[0]).attr("affiliation"), Some("owner"));
    assert_eq!(item(&got[0]).attr("role"), Some("moderator"));
    // Locked until configured: others cannot enter.
    let mut b = connect(&s, "hag").await;
    let e = join_refused(&mut b, &coven, "hag", "").await;
    assert!(has_stanza_error(&e, "item-not-found"), "{e}");
    // The instant-room request unlocks it.
    iq_ok(&mut a, &coven, &config_form(&[])).await;
    join(&mut b, &coven, "hag").await;
    // Now a public room, listed by the service.
    let items = iq(
        &mut b,
        SERVICE,
        "get",
        &format!("<query xmlns='{}'/>", ns::DISCO_ITEMS),
    )
    .await;
    assert!(
        matches_pattern(
            &items,
            &format!(
                "<iq type='result'><query xmlns='{}'><item jid='{coven}'/></query></iq>",
                ns::DISCO_ITEMS
            )
        ),
        "{items}"
    );
}

#[tokio::test]
async fn presence_and_messages_are_reflected() {
    let s = TestServer::start().await;
    let mut a = connect(&s, "crone").await;
    let mut b = connect(&s, "hag").await;
    let coven = room("coven");
    create(&mut a, &coven, "crone", &[]).await;
    let got = join(&mut b, &coven, "hag").await;
    // The occupant already there, self presence with 110, subject.
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].attr("from"), Some(format!("{coven}/crone").as_str()));
    assert_eq!(codes(&got[1]), ["110", "170"]);
    let p = a.expect(&format!("<presence from='{coven}/hag'/>")).await;
    assert_eq!(item(&p).attr("role"), Some("participant"));
    // Semi-anonymous by default, but the owner is a moderator: it sees the JID.
    assert_eq!(item(&p).attr("jid"), Some(b.full()));

    say(&mut b, &coven, "m1", "Thrice the brinded cat hath mew'd.").await;
    for c in [&mut a, &mut b] {
        let m = expect_body(
            c,
            &format!("{coven}/hag"),
            "Thrice the brinded cat hath mew'd.",
        )
        .await;
        // muc#stable_id: the sender's id is kept; the room adds its stanza-id.
        assert_eq!(m.attr("id"), Some("m1"));
        assert_eq!(m.attr("type"), Some("groupchat"));
        let sid = m.child("stanza-id", "urn:xmpp:sid:0").expect("stanza-id");
        assert_eq!(sid.attr("by"), Some(coven.as_str()));
    }

    // Leaving: everyone hears unavailable; the leaver gets 110.
    b.send(&format!("<presence to='{coven}/hag' type='unavailable'/>"))
        .await;
    let p = b
        .expect(&format!(
            "<presence type='unavailable' from='{coven}/hag'/>"
        ))
        .await;
    assert_eq!(codes(&p), ["110"]);
    a.expect(&format!(
        "<presence type='unavailable' from='{coven}/hag'/>"
    ))
    .await;
    // A closed session leaves too.
    let mut c = connect(&s, "imp").await;
    join(&mut c, &coven, "imp").await;
    a.expect(&format!("<presence from='{coven}/imp'/>")).await;
    c.drop_abruptly();
    a.expect(&format!(
        "<presence type='unavailable' from='{coven}/imp'/>"
    ))
    .await;
}

/// A room message is routed to each occupant session as its own copy
/// (`Server::route_fanout`): addressed to that session, and through that
/// recipient's policies, so an occupant who blocks the sender's occupant
/// JID misses it while everyone else gets it.
#[tokio::test]
async fn each_occupant_gets_its_own_copy_through_its_policies() {
    let s = TestServer::start().await;
    let mut crone = connect(&s, "crone").await;
    let mut hag = connect(&s, "hag").await;
    let mut imp = connect(&s, "imp").await;
    let mut imp2 = s.login("imp", "second").await;
    let coven = room("coven");
    create(&mut crone, &coven, "crone", &[]).await;
    join(&mut hag, &coven, "hag").await;
    // Nicks sort before "crone": the room's fan-out reaches imp's two
    // sessions first, so once crone has a message imp's copies are decided.
    join(&mut imp, &coven, "a-imp").await;
    join(&mut imp2, &coven, "a-imp").await;
    imp.sync().await;
    iq_ok(
        &mut imp,
        &bare("imp"),
        &format!("<block xmlns='urn:xmpp:blocking'><item jid='{coven}/hag'/></block>"),
    )
    .await;
    imp.sync().await;
    imp2.sync().await;
    crone.sync().await;
    hag.sync().await;

    say(&mut hag, &coven, "m1", "Fillet of a fenny snake").await;
    for c in [&mut crone, &mut hag] {
        let m = expect_body(c, &format!("{coven}/hag"), "Fillet of a fenny snake").await;
        assert_eq!(
            m.attr("to"),
            Some(c.full()),
            "each copy is addressed to its session"
        );
    }
    say(&mut crone, &coven, "m2", "In the cauldron boil and bake").await;
    for c in [&mut imp, &mut imp2, &mut hag, &mut crone] {
        // For imp, the first message after the block: m1 was withheld.
        let m = expect_body(
            c,
            &format!("{coven}/crone"),
            "In the cauldron boil and bake",
        )
        .await;
        assert_eq!(m.attr("to"), Some(c.full()));
        assert_eq!(m.attr("id"), Some("m2"));
        assert!(
            m.child("occupant-id", "urn:xmpp:occupant-id:0").is_some(),
            "{m}"
        );
    }
    // imp's list is in memory now (read for m1): the next copies are
    // decided from it without an addressed copy each (`decide_copy`), and
    // a blocked one is still withheld.
    say(&mut hag, &coven, "m3", "Eye of newt and toe of frog").await;
    say(&mut crone, &coven, "m4", "Wool of bat and tongue of dog").await;
    for c in [&mut imp, &mut imp2] {
        let m = expect_body(
            c,
            &format!("{coven}/crone"),
            "Wool of bat and tongue of dog",
        )
        .await;
        assert_eq!(m.attr("to"), Some(c.full()));
    }
    for c in [&mut crone, &mut hag] {
        expect_body(c, &format!("{coven}/hag"), "Eye of newt and toe of frog").await;
        let m = expect_body(
            c,
            &format!("{coven}/crone"),
            "Wool of bat and tongue of dog",
        )
        .await;
        assert_eq!(
            m.attr("to"),
            Some(c.full()),
            "written from the shared bytes"
        );
    }
}

#[tokio::test]
async fn nick_conflict_and_change() {
    let s = TestServer::start().await;
    let mut a = connect(&s, "crone").await;
    let mut b = connect(&s, "hag").await;
    let coven = room("coven");
    create(&mut a, &coven, "crone", &[]).await;
    let e = join_refused(&mut b, &coven, "crone", "").await;
    assert!(has_stanza_error(&e, "conflict"), "{e}");
    assert_eq!(e.attr("from"), Some(format!("{coven}/crone").as_str()));
    join(&mut b, &coven, "hag").await;
    a.expect(&format!("<presence from='{coven}/hag'/>")).await;

    b.send(&format!("<presence to='{coven}/thirdwitch'/>"))
        .await;
    let gone = b
        .expect(&format!(
            "<presence type='unavailable' from='{coven}/hag'/>"
        ))
        .await;
    assert_eq!(codes(&gone), ["110", "303"]);
    assert_eq!(item(&gone).attr("nick"), Some("thirdwitch"));
    let back = b
        .expect(&format!("<presence from='{coven}/thirdwitch'/>"))
        .await;
    assert_eq!(codes(&back), ["110"]);
    let gone = a
        .expect(&format!(
            "<presence type='unavailable' from='{coven}/hag'/>"
        ))
        .await;
    assert_eq!(codes(&gone), ["303"]);
    a.expect(&format!("<presence from='{coven}/thirdwitch'/>"))
        .await;
    // Changing to a nick in use is refused, and nothing changes.
    b.send(&format!("<presence to='{coven}/crone'/>")).await;
    let e = b
        .expect_with("conflict", |e| e.attr("type") == Some("error"))
        .await;
    assert!(has_stanza_error(&e, "conflict"), "{e}");
    a.expect_nothing().await;
}

// ------------------------------------------------------- roles, affiliations

#[tokio::test]
async fn kick_and_ban() {
    let s = TestServer::start().await;
    let mut a = connect(&s, "crone").await;
    let mut b = connect(&s, "hag").await;
    let mut c = connect(&s, "imp").await;
    let coven = room("coven");
    create(&mut a, &coven, "crone", &[]).await;
    join(&mut b, &coven, "hag").await;
    a.expect(&format!("<presence from='{coven}/hag'/>")).await;
    join(&mut c, &coven, "imp").await;
    a.expect(&format!("<presence from='{coven}/imp'/>")).await;
    b.expect(&format!("<presence from='{coven}/imp'/>")).await;

    // A participant may not kick.
    let r = iq(
        &mut b,
        &coven,
        "set",
        &format!("<query xmlns='{ADMIN}'><item nick='imp' role='none'/></query>"),
    )
    .await;
    assert!(has_stanza_error(&r, "forbidden"), "{r}");

    let before = iq_ok(
        &mut a,
        &coven,
        &format!("<query xmlns='{ADMIN}'><item nick='imp' role='none'><reason>Avaunt</reason></item></query>"),
    )
    .await;
    let p = before
        .iter()
        .find(|e| e.attr("from") == Some(format!("{coven}/imp").as_str()))
        .expect("kick broadcast to the moderator");
    assert_eq!(codes(p), ["307"]);
    let kicked = c
        .expect(&format!(
            "<presence type='unavailable' from='{coven}/imp'/>"
        ))
        .await;
    assert_eq!(codes(&kicked), ["110", "307"]);
    assert_eq!(item(&kicked).attr("role"), Some("none"));
    assert_eq!(
        item(&kicked)
            .child("actor", USER)
            .and_then(|a| a.attr("nick")),
        Some("crone")
    );
    assert_eq!(
        item(&kicked)
            .child("reason", USER)
            .map(Element::text)
            .as_deref(),
        Some("Avaunt")
    );
    let p = b
        .expect(&format!(
            "<presence type='unavailable' from='{coven}/imp'/>"
        ))
        .await;
    assert_eq!(codes(&p), ["307"]);
    // Kicked, not banned: may come back.
    join(&mut c, &coven, "imp").await;
    a.expect(&format!("<presence from='{coven}/imp'/>")).await;
    b.expect(&format!("<presence from='{coven}/imp'/>")).await;

    iq_ok(
        &mut a,
        &coven,
        &format!("<query xmlns='{ADMIN}'><item jid='imp@localhost' affiliation='outcast'><reason>Treason</reason></item></query>"),
    )
    .await;
    let banned = c
        .expect(&format!(
            "<presence type='unavailable' from='{coven}/imp'/>"
        ))
        .await;
    assert_eq!(codes(&banned), ["110", "301"]);
    assert_eq!(item(&banned).attr("affiliation"), Some("outcast"));
    let p = b
        .expect(&format!(
            "<presence type='unavailable' from='{coven}/imp'/>"
        ))
        .await;
    assert_eq!(codes(&p), ["301"]);
    let e = join_refused(&mut c, &coven, "imp", "").await;
    assert!(has_stanza_error(&e, "forbidden"), "{e}");
    // The ban list, for admins only.
    let list = iq(
        &mut a,
        &coven,
        "get",
        &format!("<query xmlns='{ADMIN}'><item affiliation='outcast'/></query>"),
    )
    .await;
    assert!(
        matches_pattern(
            &list,
            &format!(
                "<iq type='result'><query xmlns='{ADMIN}'><item affiliation='outcast' jid='imp@localhost'><reason>Treason</reason></item></query></iq>"
            )
        ),
        "{list}"
    );
    let r = iq(
        &mut b,
        &coven,
        "get",
        &format!("<query xmlns='{ADMIN}'><item affiliation='outcast'/></query>"),
    )
    .await;
    assert!(has_stanza_error(&r, "forbidden"), "{r}");
}

#[tokio::test]
async fn members_only_and_password() {
    let s = TestServer::start().await;
    let mut a = connect(&s, "crone").await;
    let mut b = connect(&s, "hag").await;
    let coven = room("coven");
    create(
        &mut a,
        &coven,
        "crone",
        &[("muc#roomconfig_membersonly", "1")],
    )
    .await;
    let e = join_refused(&mut b, &coven, "hag", "").await;
    assert!(has_stanza_error(&e, "registration-required"), "{e}");
    iq_ok(
        &mut a,
        &coven,
        &format!("<query xmlns='{ADMIN}'><item jid='hag@localhost' affiliation='member'/></query>"),
    )
    .await;
    let got = join(&mut b, &coven, "hag").await;
    assert_eq!(item(&got[1]).attr("affiliation"), Some("member"));
    a.expect(&format!("<presence from='{coven}/hag'/>")).await;
    // Membership revoked: removed with 321.
    iq_ok(
        &mut a,
        &coven,
        &format!("<query xmlns='{ADMIN}'><item jid='hag@localhost' affiliation='none'/></query>"),
    )
    .await;
    let p = b
        .expect(&format!(
            "<presence type='unavailable' from='{coven}/hag'/>"
        ))
        .await;
    assert_eq!(codes(&p), ["110", "321"]);

    let cave = room("cave");
    create(
        &mut a,
        &cave,
        "crone",
        &[
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", "cauldronburn"),
        ],
    )
    .await;
    let e = join_refused(&mut b, &cave, "hag", "").await;
    assert!(has_stanza_error(&e, "not-authorized"), "{e}");
    let e = join_refused(&mut b, &cave, "hag", "<password>wrong</password>").await;
    assert!(has_stanza_error(&e, "not-authorized"), "{e}");
    join_with(&mut b, &cave, "hag", "<password>cauldronburn</password>").await;
}

#[tokio::test]
async fn moderated_room_and_voice() {
    let s = TestServer::start().await;
    let mut a = connect(&s, "crone").await;
    let mut b = connect(&s, "hag").await;
    let coven = room("coven");
    create(
        &mut a,
        &coven,
        "crone",
        &[("muc#roomconfig_moderatedroom", "1")],
    )
    .await;
    let got = join(&mut b, &coven, "hag").await;
    assert_eq!(item(&got[1]).attr("role"), Some("visitor"));
    a.expect(&format!("<presence from='{coven}/hag'/>")).await;
    say(&mut b, &coven, "v1", "may I?").await;
    let e = b
        .expect_with("forbidden", |e| e.attr("type") == Some("error"))
        .await;
    assert!(has_stanza_error(&e, "forbidden"), "{e}");
    // Grant voice.
    iq_ok(
        &mut a,
        &coven,
        &format!("<query xmlns='{ADMIN}'><item nick='hag' role='participant'/></query>"),
    )
    .await;
    let p = b.expect(&format!("<presence from='{coven}/hag'/>")).await;
    assert_eq!(item(&p).attr("role"), Some("participant"));
    say(&mut b, &coven, "v2", "now I may").await;
    expect_body(&mut b, &format!("{coven}/hag"), "now I may").await;
    expect_body(&mut a, &format!("{coven}/hag"), "now I may").await;
    // The moderator list.
    let list = iq(
        &mut a,
        &coven,
        "get",
        &format!("<query xmlns='{ADMIN}'><item role='participant'/></query>"),
    )
    .await;
    assert!(
        matches_pattern(
            &list,
            &format!(
                "<iq type='result'><query xmlns='{ADMIN}'><item nick='hag' role='participant'/></query></iq>"
            )
        ),
        "{list}"
    );
    // Revoke it again.
    iq_ok(
        &mut a,
        &coven,
        &format!("<query xmlns='{ADMIN}'><item nick='hag' role='visitor'/></query>"),
    )
    .await;
}

// ---------------------------------------------------- subject and history

#[tokio::test]
async fn subject_and_history_on_join() {
    let s = TestServer::start().await;
    let mut a = connect(&s, "crone").await;
    let coven = room("coven");
    create(&mut a, &coven, "crone", &[]).await;
    a.send(&format!(
        "<message to='{coven}' type='groupchat'><subject>Fire Burn and Cauldron Bubble!</subject></message>"
    ))
    .await;
    let subj = a.expect_with("subject", is_subject).await;
    assert_eq!(subj.attr("from"), Some(format!("{coven}/crone").as_str()));
    for i in 1..=5 {
        say(&mut a, &coven, &format!("h{i}"), &format!("line {i}")).await;
        expect_body(&mut a, &format!("{coven}/crone"), &format!("line {i}")).await;
    }
    let mut b = connect(&s, "hag").await;
    let got = join_with(&mut b, &coven, "hag", "<history maxstanzas='2'/>").await;
    let bodies: Vec<String> = got
        .iter()
        .filter_map(|e| e.child("body", ns::CLIENT).map(Element::text))
        .collect();
    assert_eq!(bodies, ["line 4", "line 5"]);
    for h in got.iter().filter(|e| e.child("body", ns::CLIENT).is_some()) {
        let d = h.child("delay", ns::DELAY).expect("history is delayed");
        assert_eq!(d.attr("from"), Some(coven.as_str()));
    }
    let subject = got.last().unwrap();
    assert_eq!(
        subject.child("subject", ns::CLIENT).unwrap().text(),
        "Fire Burn and Cauldron Bubble!"
    );
    // No history at all.
    let mut c = connect(&s, "imp").await;
    let got = join_with(&mut c, &coven, "imp", "<history maxstanzas='0'/>").await;
    assert!(got.iter().all(|e| e.child("body", ns::CLIENT).is_none()));
    b.expect(&format!("<presence from='{coven}/imp'/>")).await;
    // Participants may not change the subject by default.
    b.send(&format!(
        "<message to='{coven}' type='groupchat'><subject>mine</subject></message>"
    ))
    .await;
    let e = b
        .expect_with("forbidden", |e| e.attr("type") == Some("error"))
        .await;
    assert!(has_stanza_error(&e, "forbidden"), "{e}");
}

#[tokio::test]
async fn history_is_bounded_in_bytes() {
    // [muc] max_history_bytes: whatever max_history says, a room keeps no
    // more history than this many serialized bytes (each message here is
    // between 1000 and 1500 bytes with its delay and stanza-id: two fit).
    let s = TestServer::start_with("[muc]\nmax_history_bytes = 3000\n").await;
    let mut a = connect(&s, "crone").await;
    let coven = room("coven");
    create(&mut a, &coven, "crone", &[]).await;
    for i in 1..=5 {
        let body = format!("{i}{}", "x".repeat(1000));
        say(&mut a, &coven, &format!("h{i}"), &body).await;
        expect_body(&mut a, &format!("{coven}/crone"), &body).await;
    }
    let mut b = connect(&s, "hag").await;
    let got = join(&mut b, &coven, "hag").await;
    let firsts: Vec<String> = got
        .iter()
        .filter_map(|e| e.child("body", ns::CLIENT).map(Element::text))
        .map(|t| t[..1].to_string())
        .collect();
    assert_eq!(firsts, ["4", "5"]);
}

#[tokio::test]
async fn rooms_per_user_are_bounded() {
    // [muc] max_rooms_per_user (20 by default, was unlimited): one more
    // room is refused with not-allowed, XEP-0045's "room creation is
    // restricted"; joining existing rooms is not affected.
    let s = TestServer::start_with("[muc]\nmax_rooms_per_user = 2\n").await;
    let mut a = connect(&s, "crone").await;
    create(&mut a, &room("one"), "crone", &[]).await;
    create(&mut a, &room("two"), "crone", &[]).await;
    let refused = join_refused(&mut a, &room("three"), "crone", "").await;
    assert!(has_stanza_error(&refused, "not-allowed"), "{refused}");
    assert_eq!(
        refused
            .child("error", ns::CLIENT)
            .and_then(|e| e.attr("type")),
        Some("cancel"),
        "{refused}"
    );
    let mut b = connect(&s, "hag").await;
    create(&mut b, &room("three"), "hag", &[]).await;
    join(&mut a, &room("three"), "crone").await;
}

/// A MUC store whose writes fail while `failing` is set (reads pass).
struct FlakyMuc {
    inner: std::sync::Arc<dyn waxwing_store::MucStore>,
    failing: std::sync::atomic::AtomicBool,
}

impl FlakyMuc {
    fn check(&self) -> Result<(), waxwing_store::StoreError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(waxwing_store::StoreError::Backend("disk on fire".into()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl waxwing_store::MucStore for FlakyMuc {
    async fn replace_room(
        &self,
        room: &waxwing_store::StoredRoom,
    ) -> Result<(), waxwing_store::StoreError> {
        self.check()?;
        self.inner.replace_room(room).await
    }
    async fn save_room(
        &self,
        room: &waxwing_store::RoomRecord,
    ) -> Result<(), waxwing_store::StoreError> {
        self.check()?;
        self.inner.save_room(room).await
    }
    async fn set_affiliation(
        &self,
        room: &waxwing_proto::jid::BareJid,
        item: &waxwing_store::RoomAffiliation,
    ) -> Result<(), waxwing_store::StoreError> {
        self.check()?;
        self.inner.set_affiliation(room, item).await
    }
    async fn remove_affiliation(
        &self,
        room: &waxwing_proto::jid::BareJid,
        jid: &waxwing_proto::jid::BareJid,
    ) -> Result<(), waxwing_store::StoreError> {
        self.check()?;
        self.inner.remove_affiliation(room, jid).await
    }
    async fn rooms(
        &self,
        domain: &str,
    ) -> Result<Vec<waxwing_store::StoredRoom>, waxwing_store::StoreError> {
        self.inner.rooms(domain).await
    }
    async fn delete_room(
        &self,
        room: &waxwing_proto::jid::BareJid,
    ) -> Result<(), waxwing_store::StoreError> {
        self.check()?;
        self.inner.delete_room(room).await
    }
}

#[tokio::test]
async fn changes_are_persisted_before_they_are_announced() {
    // A configuration or affiliation change whose store write fails is not
    // announced, not kept in memory, and the requester gets
    // internal-server-error; once the store works again the same change
    // goes through as usual.
    let mut stores = waxwing_store::open("sqlite::memory:").await.unwrap();
    let flaky = std::sync::Arc::new(FlakyMuc {
        inner: stores.muc.clone(),
        failing: std::sync::atomic::AtomicBool::new(false),
    });
    stores.muc = flaky.clone();
    let s = TestServer::start_with_stores("", stores).await;
    let mut a = connect(&s, "crone").await;
    let mut b = connect(&s, "hag").await;
    let coven = room("coven");
    create(
        &mut a,
        &coven,
        "crone",
        &[("muc#roomconfig_persistentroom", "1")],
    )
    .await;
    join(&mut b, &coven, "hag").await;
    a.expect(&format!("<presence from='{coven}/hag'/>")).await;
    let stored = || async { s.running.server.stores.muc.rooms(SERVICE).await.unwrap() };
    let before = stored().await;
    assert_eq!(before.len(), 1);

    flaky
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Affiliation: hag becomes admin.
    let admin =
        format!("<query xmlns='{ADMIN}'><item affiliation='admin' jid='hag@localhost'/></query>");
    let r = iq(&mut a, &coven, "set", &admin).await;
    assert!(has_stanza_error(&r, "internal-server-error"), "{r}");
    // Configuration: a new room name (status 104 would announce it).
    let r = iq(
        &mut a,
        &coven,
        "set",
        &config_form(&[("muc#roomconfig_roomname", "Cauldron")]),
    )
    .await;
    assert!(has_stanza_error(&r, "internal-server-error"), "{r}");
    // Subject.
    a.send(&format!(
        "<message to='{coven}' type='groupchat' id='subj'><subject>Toil</subject></message>"
    ))
    .await;
    let r = a
        .expect_with("the subject refused", |e| e.attr("id") == Some("subj"))
        .await;
    assert!(has_stanza_error(&r, "internal-server-error"), "{r}");
    // Nobody heard of any of them.
    a.expect_nothing().await;
    b.expect_nothing().await;
    // Memory is unchanged: hag is still a plain participant, the name is unset.
    let items = iq(
        &mut a,
        &coven,
        "get",
        &format!("<query xmlns='{ADMIN}'><item affiliation='admin'/></query>"),
    )
    .await;
    assert!(is_result(&items), "{items}");
    assert!(
        !items.child("query", ADMIN).unwrap().has_children(),
        "{items}"
    );
    let info = iq(
        &mut b,
        &coven,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert!(!info.to_xml().contains("Cauldron"), "{info}");
    let mut c = connect(&s, "imp").await;
    let joined = join(&mut c, &coven, "imp").await;
    let subject = joined.last().unwrap().child("subject", ns::CLIENT).unwrap();
    assert_eq!(subject.text(), "", "the refused subject was kept");
    assert_eq!(stored().await, before);

    // The store is back: the same change is written, then announced.
    flaky
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let announced = iq_ok(&mut a, &coven, &admin).await;
    assert!(
        announced
            .iter()
            .any(|p| p.attr("from") == Some(format!("{coven}/hag").as_str())
                && item(p).attr("affiliation") == Some("admin")),
        "no affiliation change announced: {announced:?}"
    );
    let after = stored().await;
    assert!(
        after[0]
            .affiliations
            .iter()
            .any(|x| x.jid.to_string() == "hag@localhost"),
        "{after:?}"
    );
}

// ---------------------------------------------- private messages, invites

#[tokio::test]
async fn private_messages_and_invitations() {
    let s = TestServer::start().await;
    // Available: invitations and declines go to bare JIDs.
    s.user("crone").await;
    let mut a = s.login_available("crone", "r", 0).await;
    let mut b = connect(&s, "hag").await;
    let coven = room("coven");
    create(&mut a, &coven, "crone", &[]).await;
    join(&mut b, &coven, "hag").await;
    a.expect(&format!("<presence from='{coven}/hag'/>")).await;

    b.send(&format!(
        "<message to='{coven}/crone' type='chat'><body>psst</body></message>"
    ))
    .await;
    let pm = a
        .expect(&format!(
            "<message from='{coven}/hag' type='chat'><body>psst</body></message>"
        ))
        .await;
    assert!(pm.child("x", USER).is_some(), "{pm}");
    // To a nick that is not there.
    b.send(&format!(
        "<message to='{coven}/nobody' type='chat'><body>?</body></message>"
    ))
    .await;
    let e = b
        .expect_with("error", |e| e.attr("type") == Some("error"))
        .await;
    assert!(has_stanza_error(&e, "item-not-found"), "{e}");
    // Non-occupants cannot send private messages.
    s.user("imp").await;
    let mut c = s.login_available("imp", "r", 0).await;
    c.send(&format!(
        "<message to='{coven}/crone' type='chat'><body>hi</body></message>"
    ))
    .await;
    let e = c
        .expect_with("error", |e| e.attr("type") == Some("error"))
        .await;
    assert!(has_stanza_error(&e, "not-acceptable"), "{e}");

    // Mediated invitation (§7.8.2).
    a.send(&format!(
        "<message to='{coven}'><x xmlns='{USER}'><invite to='imp@localhost'><reason>Join us</reason></invite></x></message>"
    ))
    .await;
    let inv = c
        .expect(&format!(
            "<message from='{coven}'><x xmlns='{USER}'><invite><reason>Join us</reason></invite></x></message>"
        ))
        .await;
    let from = inv
        .child("x", USER)
        .and_then(|x| x.child("invite", USER))
        .and_then(|i| i.attr("from"));
    assert_eq!(from, Some(a.full()));
    // Declined: the inviter hears it from the room.
    c.send(&format!(
        "<message to='{coven}'><x xmlns='{USER}'><decline to='crone@localhost'><reason>Busy</reason></decline></x></message>"
    ))
    .await;
    a.expect(&format!(
        "<message from='{coven}'><x xmlns='{USER}'><decline from='imp@localhost'/></x></message>"
    ))
    .await;
}

// ------------------------------------------------------- destroy, disco

#[tokio::test]
async fn room_disco_info_and_destroy() {
    let s = TestServer::start().await;
    let mut a = connect(&s, "crone").await;
    let mut b = connect(&s, "hag").await;
    let coven = room("coven");
    create(
        &mut a,
        &coven,
        "crone",
        &[
            ("muc#roomconfig_roomname", "A Dark Cave"),
            ("muc#roomconfig_roomdesc", "The place for all good witches!"),
            ("muc#roomconfig_whois", "anyone"),
        ],
    )
    .await;
    let info = iq(
        &mut b,
        &coven,
        "get",
        &format!("<query xmlns='{}'/>", ns::DISCO_INFO),
    )
    .await;
    let want = format!(
        "<iq type='result'><query xmlns='{di}'>\
         <identity category='conference' type='text' name='A Dark Cave'/>\
         <feature var='{MUC}'/><feature var='muc_public'/><feature var='muc_temporary'/>\
         <feature var='muc_open'/><feature var='muc_unmoderated'/><feature var='muc_nonanonymous'/>\
         <feature var='muc_unsecured'/><feature var='urn:xmpp:occupant-id:0'/>\
         <feature var='http://jabber.org/protocol/muc#stable_id'/>\
         <x xmlns='jabber:x:data' type='result'>\
         <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roominfo</value></field>\
         <field var='muc#roominfo_description'><value>The place for all good witches!</value></field>\
         <field var='muc#roominfo_occupants'><value>1</value></field>\
         </x></query></iq>",
        di = ns::DISCO_INFO
    );
    assert!(matches_pattern(&info, &want), "{info}");
    // Non-anonymous: the join presence says so (100), and real JIDs are shown.
    let got = join(&mut b, &coven, "hag").await;
    assert_eq!(codes(&got[1]), ["110", "100", "170"]);
    assert_eq!(item(&got[0]).attr("jid"), Some(a.full()));
    a.expect(&format!("<presence from='{coven}/hag'/>")).await;

    // Only owners destroy.
    let r = iq(
        &mut b,
        &coven,
        "set",
        &format!("<query xmlns='{OWNER}'><destroy/></query>"),
    )
    .await;
    assert!(has_stanza_error(&r, "forbidden"), "{r}");
    iq_ok(
        &mut a,
        &coven,
        &format!("<query xmlns='{OWNER}'><destroy jid='{}'><reason>Macbeth doth come.</reason></destroy></query>", room("heath")),
    )
    .await;
    let p = b
        .expect(&format!(
            "<presence type='unavailable' from='{coven}/hag'/>"
        ))
        .await;
    let d = p
        .child("x", USER)
        .and_then(|x| x.child("destroy", USER))
        .expect("destroy");
    assert_eq!(d.attr("jid"), Some(room("heath").as_str()));
    assert_eq!(
        d.child("reason", USER).map(Element::text).as_deref(),
        Some("Macbeth doth come.")
    );
    // Gone: disco says so.
    let r = iq(
        &mut b,
        &coven,
        "get",
        &format!("<query xmlns='{}'/>", ns::DISCO_INFO),
    )
    .await;
    assert!(has_stanza_error(&r, "item-not-found"), "{r}");
}

// ------------------------------------------------- XEP-0410, XEP-0421

#[tokio::test]
async fn self_ping_and_occupant_ids() {
    let s = TestServer::start().await;
    let mut a = connect(&s, "crone").await;
    let mut b = connect(&s, "hag").await;
    let coven = room("coven");
    create(&mut a, &coven, "crone", &[]).await;
    let r = iq(
        &mut a,
        &format!("{coven}/crone"),
        "get",
        &format!("<ping xmlns='{}'/>", ns::PING),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(r.attr("from"), Some(format!("{coven}/crone").as_str()));
    // Not joined: not-acceptable (XEP-0410 §3).
    let r = iq(
        &mut b,
        &format!("{coven}/crone"),
        "get",
        &format!("<ping xmlns='{}'/>", ns::PING),
    )
    .await;
    assert!(has_stanza_error(&r, "not-acceptable"), "{r}");
    // Nor is anyone joined to a room that does not exist (not item-not-found,
    // which a self-pinging client reads as "joined, renamed").
    let r = iq(
        &mut b,
        &format!("{}/hag", room("vanished")),
        "get",
        &format!("<ping xmlns='{}'/>", ns::PING),
    )
    .await;
    assert!(has_stanza_error(&r, "not-acceptable"), "{r}");

    let got = join(&mut b, &coven, "hag").await;
    let crone_id = got[0]
        .child("occupant-id", "urn:xmpp:occupant-id:0")
        .and_then(|o| o.attr("id"))
        .expect("occupant-id on presence")
        .to_string();
    a.expect(&format!("<presence from='{coven}/hag'/>")).await;
    say(&mut a, &coven, "o1", "who am I").await;
    let m = expect_body(&mut b, &format!("{coven}/crone"), "who am I").await;
    assert_eq!(
        m.child("occupant-id", "urn:xmpp:occupant-id:0")
            .and_then(|o| o.attr("id")),
        Some(crone_id.as_str())
    );
    // A forged occupant-id from the client is replaced.
    a.send(&format!(
        "<message to='{coven}' type='groupchat'><body>forged</body><occupant-id xmlns='urn:xmpp:occupant-id:0' id='fake'/></message>"
    ))
    .await;
    let m = expect_body(&mut b, &format!("{coven}/crone"), "forged").await;
    let ids: Vec<_> = m
        .children()
        .filter(|c| c.is("occupant-id", "urn:xmpp:occupant-id:0"))
        .filter_map(|c| c.attr("id"))
        .collect();
    assert_eq!(ids, [crone_id.as_str()]);
}

// ------------------------------------------------------------ persistence

#[tokio::test]
async fn persistent_room_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let coven = room("coven");
    let sid;
    {
        let (running, port) = start_on(dir.path()).await;
        for u in ["crone", "hag"] {
            create_account(&running, u, DOMAIN).await;
        }
        let mut a = login_on(port, "crone").await;
        create(
            &mut a,
            &coven,
            "crone",
            &[
                ("muc#roomconfig_persistentroom", "1"),
                ("muc#roomconfig_roomname", "A Dark Cave"),
                ("muc#roomconfig_membersonly", "1"),
                ("muc#roomconfig_enablelogging", "1"),
            ],
        )
        .await;
        iq_ok(
            &mut a,
            &coven,
            &format!(
                "<query xmlns='{ADMIN}'><item jid='hag@localhost' affiliation='member'/></query>"
            ),
        )
        .await;
        a.send(&format!(
            "<message to='{coven}' type='groupchat'><subject>Spells</subject></message>"
        ))
        .await;
        a.expect_with("subject", is_subject).await;
        say(&mut a, &coven, "m1", "remember me").await;
        let said = expect_body(&mut a, &format!("{coven}/crone"), "remember me").await;
        sid = room_stanza_id(&said, &coven);
        // The subject write is done once a later stanza is answered.
        let r = iq(
            &mut a,
            &coven,
            "get",
            &format!("<query xmlns='{}'/>", ns::DISCO_INFO),
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"));
        running.stop().await;
    }
    let (running, port) = start_on(dir.path()).await;
    let mut b = login_on(port, "hag").await;
    let items = iq(
        &mut b,
        SERVICE,
        "get",
        &format!("<query xmlns='{}'/>", ns::DISCO_ITEMS),
    )
    .await;
    assert!(
        matches_pattern(
            &items,
            &format!(
                "<iq type='result'><query xmlns='{}'><item jid='{coven}' name='A Dark Cave'/></query></iq>",
                ns::DISCO_ITEMS
            )
        ),
        "{items}"
    );
    // Membership and subject survived; the room is empty but there.
    let got = join(&mut b, &coven, "hag").await;
    assert_eq!(
        codes(&got[0]),
        ["110", "170"],
        "no 201: the room already existed"
    );
    // History on join comes back from the room archive, with its stanza-id.
    let history: Vec<&Element> = got
        .iter()
        .filter(|e| e.child("body", ns::CLIENT).is_some())
        .collect();
    assert_eq!(history.len(), 1, "{got:?}");
    assert_eq!(room_stanza_id(history[0], &coven), sid);
    assert!(history[0].child("delay", ns::DELAY).is_some());
    let (page, _) = mam_query(&mut b, &coven, "").await;
    assert_eq!(page.len(), 1);
    assert_eq!(item(&got[0]).attr("affiliation"), Some("member"));
    assert_eq!(
        got.last()
            .unwrap()
            .child("subject", ns::CLIENT)
            .unwrap()
            .text(),
        "Spells"
    );
    let mut c = login_on(port, "crone").await;
    let got = join(&mut c, &coven, "crone").await;
    let me = got
        .iter()
        .find(|e| codes(e).contains(&"110".to_string()))
        .unwrap();
    assert_eq!(item(me).attr("affiliation"), Some("owner"));
    running.stop().await;
}

// ------------------------------------------- room archive (XEP-0313 MUC)

const MAM: &str = "urn:xmpp:mam:2";
const RSM: &str = "http://jabber.org/protocol/rsm";
const FORWARD: &str = "urn:xmpp:forward:0";
const SID: &str = "urn:xmpp:sid:0";
const MODERATE: &str = "urn:xmpp:message-moderate:1";
const RETRACT: &str = "urn:xmpp:message-retract:1";

/// The room's stanza-id of a reflected message.
fn room_stanza_id(el: &Element, room_jid: &str) -> String {
    el.children()
        .find(|c| c.is("stanza-id", SID) && c.attr("by") == Some(room_jid))
        .and_then(|c| c.attr("id"))
        .unwrap_or_else(|| panic!("no stanza-id by {room_jid} in {el}"))
        .to_string()
}

/// Runs a MAM query on `to` and returns the result messages and the IQ
/// result (or error).
async fn mam_query(c: &mut Client, to: &str, inner: &str) -> (Vec<Element>, Element) {
    let id = c.id("mam");
    c.send(&format!(
        "<iq type='set' to='{to}' id='{id}'><query xmlns='{MAM}' queryid='{id}'>{inner}</query></iq>"
    ))
    .await;
    let mut results = Vec::new();
    loop {
        let el = c.next(&format!("the results of {id}")).await;
        if el.name == "iq" && el.attr("id") == Some(id.as_str()) {
            return (results, el);
        }
        let r = el
            .child("result", MAM)
            .unwrap_or_else(|| panic!("not a MAM result: {el}"));
        assert_eq!(r.attr("queryid"), Some(id.as_str()), "{el}");
        assert_eq!(el.attr("from"), Some(to), "{el}");
        assert_eq!(el.attr("to"), Some(c.full()), "{el}");
        results.push(el);
    }
}

/// `(result id, forwarded message)` of a MAM result.
fn archived(el: &Element) -> (String, Element) {
    let r = el.child("result", MAM).unwrap();
    let m = r
        .child("forwarded", FORWARD)
        .and_then(|f| f.child("message", ns::CLIENT))
        .unwrap_or_else(|| panic!("nothing forwarded in {el}"));
    (r.attr("id").unwrap().to_string(), m.clone())
}

fn disco_features(info: &Element) -> Vec<String> {
    info.child("query", ns::DISCO_INFO)
        .map(|q| {
            q.children()
                .filter(|c| c.name == "feature")
                .filter_map(|c| c.attr("var").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn room_archive_stamps_pages_and_advertises() {
    let s = TestServer::start().await;
    let mut a = connect(&s, "crone").await;
    let mut b = connect(&s, "hag").await;
    let coven = room("coven");
    create(
        &mut a,
        &coven,
        "crone",
        &[("muc#roomconfig_enablelogging", "1")],
    )
    .await;
    let info = iq(
        &mut b,
        &coven,
        "get",
        &format!("<query xmlns='{}'/>", ns::DISCO_INFO),
    )
    .await;
    let features = disco_features(&info);
    assert!(features.iter().any(|f| f == MAM), "{info}");
    assert!(features.iter().any(|f| f == MODERATE), "{info}");
    join(&mut b, &coven, "hag").await;
    a.expect(&format!("<presence from='{coven}/hag'/>")).await;
    let mut ids = Vec::new();
    for i in 1..=3 {
        say(&mut a, &coven, &format!("m{i}"), &format!("spell {i}")).await;
        let seen = expect_body(&mut b, &format!("{coven}/crone"), &format!("spell {i}")).await;
        expect_body(&mut a, &format!("{coven}/crone"), &format!("spell {i}")).await;
        ids.push(room_stanza_id(&seen, &coven));
    }
    // A page of two, then the rest; result ids are the stanza-ids occupants saw.
    let (page, fin) = mam_query(
        &mut b,
        &coven,
        &format!("<set xmlns='{RSM}'><max>2</max></set>"),
    )
    .await;
    assert_eq!(fin.attr("type"), Some("result"), "{fin}");
    let got: Vec<(String, Element)> = page.iter().map(archived).collect();
    assert_eq!(
        got.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        ids[..2]
    );
    let (_, first) = &got[0];
    assert_eq!(first.attr("from"), Some(format!("{coven}/crone").as_str()));
    assert_eq!(first.child("body", ns::CLIENT).unwrap().text(), "spell 1");
    let fin_el = fin.child("fin", MAM).unwrap();
    assert_eq!(fin_el.attr("complete"), None, "{fin}");
    let set = fin_el.child("set", RSM).unwrap();
    assert_eq!(set.child("count", RSM).unwrap().text(), "3");
    let last = set.child("last", RSM).unwrap().text();
    let (page, fin) = mam_query(
        &mut b,
        &coven,
        &format!("<set xmlns='{RSM}'><max>2</max><after>{last}</after></set>"),
    )
    .await;
    assert_eq!(page.len(), 1);
    assert_eq!(archived(&page[0]).0, ids[2]);
    assert_eq!(
        fin.child("fin", MAM).unwrap().attr("complete"),
        Some("true")
    );
    // The same query features as the user archive: `with` and `ids`.
    let (page, _) = mam_query(
        &mut b,
        &coven,
        &format!(
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>\
             <field var='ids'><value>{}</value></field></x>",
            ids[1]
        ),
    )
    .await;
    assert_eq!(page.len(), 1);
    assert_eq!(
        archived(&page[0])
            .1
            .child("body", ns::CLIENT)
            .unwrap()
            .text(),
        "spell 2"
    );
    let (page, _) = mam_query(
        &mut b,
        &coven,
        &format!(
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>\
             <field var='with'><value>{coven}/hag</value></field></x>"
        ),
    )
    .await;
    assert!(page.is_empty());

    // A room that does not log has no archive, and says so.
    let quiet = room("quiet");
    create(
        &mut a,
        &quiet,
        "crone",
        &[("muc#roomconfig_enablelogging", "0")],
    )
    .await;
    let info = iq(
        &mut a,
        &quiet,
        "get",
        &format!("<query xmlns='{}'/>", ns::DISCO_INFO),
    )
    .await;
    assert!(!disco_features(&info).iter().any(|f| f == MAM), "{info}");
    let (page, e) = mam_query(&mut a, &quiet, "").await;
    assert!(page.is_empty());
    assert!(has_stanza_error(&e, "service-unavailable"), "{e}");
}

#[tokio::test]
async fn members_only_room_archive_is_for_members() {
    let s = TestServer::start().await;
    let mut a = connect(&s, "crone").await;
    let mut b = connect(&s, "hag").await;
    let coven = room("coven");
    create(
        &mut a,
        &coven,
        "crone",
        &[
            ("muc#roomconfig_enablelogging", "1"),
            ("muc#roomconfig_membersonly", "1"),
        ],
    )
    .await;
    say(&mut a, &coven, "m1", "secret").await;
    expect_body(&mut a, &format!("{coven}/crone"), "secret").await;
    let (page, e) = mam_query(&mut b, &coven, "").await;
    assert!(page.is_empty());
    assert!(has_stanza_error(&e, "forbidden"), "{e}");
    iq_ok(
        &mut a,
        &coven,
        &format!("<query xmlns='{ADMIN}'><item jid='hag@localhost' affiliation='member'/></query>"),
    )
    .await;
    let (page, fin) = mam_query(&mut b, &coven, "").await;
    assert_eq!(fin.attr("type"), Some("result"), "{fin}");
    assert_eq!(page.len(), 1);
}

#[tokio::test]
async fn moderator_retracts_a_message() {
    let s = TestServer::start().await;
    let mut a = connect(&s, "crone").await;
    let mut b = connect(&s, "oldhag").await;
    let coven = room("coven");
    create(
        &mut a,
        &coven,
        "crone",
        &[("muc#roomconfig_enablelogging", "1")],
    )
    .await;
    join(&mut b, &coven, "oldhag").await;
    a.expect(&format!("<presence from='{coven}/oldhag'/>"))
        .await;
    say(&mut b, &coven, "spam", "DM me for free magic potions!").await;
    let seen = expect_body(
        &mut a,
        &format!("{coven}/oldhag"),
        "DM me for free magic potions!",
    )
    .await;
    expect_body(
        &mut b,
        &format!("{coven}/oldhag"),
        "DM me for free magic potions!",
    )
    .await;
    let sid = room_stanza_id(&seen, &coven);
    let moderate = |id: &str| {
        format!(
            "<moderate xmlns='{MODERATE}' id='{id}'><retract xmlns='{RETRACT}'/>\
             <reason>inappropriate</reason></moderate>"
        )
    };
    // A participant may not moderate.
    let e = iq(&mut b, &coven, "set", &moderate(&sid)).await;
    assert!(has_stanza_error(&e, "forbidden"), "{e}");
    // Nor may anyone moderate what the room never said.
    let e = iq(&mut a, &coven, "set", &moderate("nope")).await;
    assert!(has_stanza_error(&e, "item-not-found"), "{e}");
    // The owner is a moderator: everyone gets the retraction.
    let before = iq_ok(&mut a, &coven, &moderate(&sid)).await;
    let check = |m: &Element| {
        assert_eq!(m.attr("from"), Some(coven.as_str()), "{m}");
        assert_eq!(m.attr("type"), Some("groupchat"), "{m}");
        let r = m.child("retract", RETRACT).unwrap_or_else(|| panic!("{m}"));
        assert_eq!(r.attr("id"), Some(sid.as_str()));
        assert_eq!(r.child("reason", RETRACT).unwrap().text(), "inappropriate");
        let by = r.child("moderated", MODERATE).unwrap();
        assert_eq!(by.attr("by"), Some(format!("{coven}/crone").as_str()));
    };
    assert_eq!(before.len(), 1, "{before:?}");
    check(&before[0]);
    let m = b
        .expect_with("the retraction", |e| e.name == "message")
        .await;
    check(&m);
    // The archive keeps a tombstone.
    let (page, _) = mam_query(&mut b, &coven, "").await;
    assert_eq!(page.len(), 1);
    let (id, t) = archived(&page[0]);
    assert_eq!(id, sid);
    assert!(t.child("body", ns::CLIENT).is_none(), "{t}");
    assert!(!t.to_xml().contains("potions"), "{t}");
    assert!(t.child("retracted", RETRACT).is_some(), "{t}");
    // And newcomers never see it in the history.
    let mut c = connect(&s, "imp").await;
    let got = join(&mut c, &coven, "imp").await;
    assert!(
        got.iter().all(|e| e.child("body", ns::CLIENT).is_none()),
        "{got:?}"
    );
}

// ------------------------------------ channel directory (XEP-0433)

const SEARCH: &str = "urn:xmpp:channel-search:0:search";
const SEARCH_PARAMS: &str = "urn:xmpp:channel-search:0:search-params";

fn search_form(fields: &str, rsm: &str) -> String {
    format!(
        "<search xmlns='{SEARCH}'>{rsm}<x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>{SEARCH_PARAMS}</value></field>\
         {fields}</x></search>"
    )
}

fn found(r: &Element) -> Vec<(String, String)> {
    r.child("result", SEARCH)
        .unwrap_or_else(|| panic!("no result in {r}"))
        .children()
        .filter(|c| c.name == "item")
        .map(|c| {
            (
                c.attr("address").unwrap().to_string(),
                c.child("nusers", SEARCH)
                    .map(Element::text)
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn directory_finds_public_rooms() {
    let s = TestServer::start().await;
    let mut a = connect(&s, "crone").await;
    let mut b = connect(&s, "hag").await;
    let coven = room("coven");
    create(
        &mut a,
        &coven,
        "crone",
        &[
            ("muc#roomconfig_roomname", "The Coven"),
            ("muc#roomconfig_roomdesc", "Cauldron recipes"),
            ("muc#roomconfig_lang", "en"),
        ],
    )
    .await;
    join(&mut b, &coven, "hag").await;
    a.expect(&format!("<presence from='{coven}/hag'/>")).await;
    let heath = room("heath");
    create(
        &mut a,
        &heath,
        "crone",
        &[
            ("muc#roomconfig_roomname", "Blasted Heath"),
            ("muc#roomconfig_lang", "de"),
        ],
    )
    .await;
    let hidden = room("hidden");
    create(
        &mut a,
        &hidden,
        "crone",
        &[
            ("muc#roomconfig_roomname", "Hidden cauldron"),
            ("muc#roomconfig_publicroom", "0"),
        ],
    )
    .await;
    let mut c = connect(&s, "seeker").await;
    let info = iq(
        &mut c,
        SERVICE,
        "get",
        &format!("<query xmlns='{}'/>", ns::DISCO_INFO),
    )
    .await;
    assert!(disco_features(&info).iter().any(|f| f == SEARCH), "{info}");
    let form = iq(
        &mut c,
        SERVICE,
        "get",
        &format!("<search xmlns='{SEARCH}'/>"),
    )
    .await;
    assert!(
        form.child("search", SEARCH)
            .and_then(|s| s.child("x", "jabber:x:data"))
            .is_some(),
        "{form}"
    );
    // By description; the hidden room is never listed.
    let r = iq(
        &mut c,
        SERVICE,
        "get",
        &search_form("<field var='q'><value>cauldron</value></field>", ""),
    )
    .await;
    assert_eq!(found(&r), [(coven.clone(), "2".to_string())], "{r}");
    // Everything, most occupants first, paged one at a time.
    let all = "<field var='all'><value>true</value></field>";
    let r = iq(
        &mut c,
        SERVICE,
        "get",
        &search_form(
            all,
            "<set xmlns='http://jabber.org/protocol/rsm'><max>1</max></set>",
        ),
    )
    .await;
    assert_eq!(found(&r), [(coven.clone(), "2".to_string())], "{r}");
    let r = iq(
        &mut c,
        SERVICE,
        "get",
        &search_form(all, &format!("<set xmlns='http://jabber.org/protocol/rsm'><max>1</max><after>{coven}</after></set>")),
    )
    .await;
    assert_eq!(found(&r), [(heath.clone(), "1".to_string())], "{r}");
    // By language.
    let r = iq(
        &mut c,
        SERVICE,
        "get",
        &search_form(&format!("{all}<field var='{{urn:xmpp:waxwing:channel-search:0}}language'><value>de</value></field>"), ""),
    )
    .await;
    assert_eq!(found(&r), [(heath.clone(), "1".to_string())], "{r}");
    // Neither terms nor `all`.
    let e = iq(&mut c, SERVICE, "get", &search_form("", "")).await;
    assert!(has_stanza_error(&e, "bad-request"), "{e}");
}

/// Issue #7: joining a room with more occupants than the session's
/// outbound queue. The joiner's presences of everyone, the history and the
/// subject arrive whole and in order, and the joiner stays connected.
#[tokio::test]
async fn join_burst_larger_than_the_outbound_queue() {
    const QUEUE: usize = 64;
    const CROWD: usize = 200;
    const HISTORY: usize = 20;
    let s = TestServer::start_with(&format!(
        "[limits]\noutbound_queue = {QUEUE}\nmax_connections_per_ip = 1000\nmax_resources = 1000\n"
    ))
    .await;
    s.user("crowd").await;
    let room_jid = room("stadium");
    let mut host = connect(&s, "host").await;
    create(&mut host, &room_jid, "host", &[]).await;
    // The crowd: one account, one session per nick, logged in and joined
    // a few at a time (each step has a deadline on a 2-core machine).
    let mut crowd = Vec::new();
    for chunk in (0..CROWD).collect::<Vec<_>>().chunks(20) {
        let mut tasks = tokio::task::JoinSet::new();
        for &i in chunk {
            let (port, room_jid) = (s.c2s, room_jid.clone());
            tasks.spawn(async move {
                let mut c = Client::connect_plain(port).await;
                c.open_stream().await;
                c.starttls().await;
                c.auth_scram_sha256("crowd", &password("crowd")).await;
                c.bind(Some(&format!("r{i}"))).await;
                join(&mut c, &room_jid, &format!("c{i}")).await;
                c
            });
        }
        while let Some(c) = tasks.join_next().await {
            crowd.push(c.expect("a crowd member joins"));
        }
    }
    let joined = host.sync().await;
    assert_eq!(joined.len(), CROWD, "the host saw every crowd member join");
    for i in 0..HISTORY {
        say(
            &mut host,
            &room_jid,
            &format!("h{i}"),
            &format!("history {i}"),
        )
        .await;
        expect_body(
            &mut host,
            &format!("{room_jid}/host"),
            &format!("history {i}"),
        )
        .await;
    }
    host.send(&format!(
        "<message to='{room_jid}' type='groupchat'><subject>Full house</subject></message>"
    ))
    .await;
    host.expect_with("the subject", is_subject).await;

    s.user("late").await;
    let mut late = s.login("late", "r").await;
    let got = join(&mut late, &room_jid, "late").await;
    // Everyone else (crowd and host), itself, the history, the subject.
    assert_eq!(got.len(), CROWD + 1 + 1 + HISTORY + 1, "join burst size");
    let others: std::collections::HashSet<&str> = got[..CROWD + 1]
        .iter()
        .map(|p| {
            assert_eq!(p.name, "presence", "{p}");
            p.attr("from").expect("from")
        })
        .collect();
    assert_eq!(others.len(), CROWD + 1, "one presence per other occupant");
    assert!(others.contains(format!("{room_jid}/host").as_str()));
    assert!(others.contains(format!("{room_jid}/c{}", CROWD - 1).as_str()));
    let own = &got[CROWD + 1];
    assert_eq!(own.attr("from"), Some(format!("{room_jid}/late").as_str()));
    assert!(codes(own).contains(&"110".to_string()), "{own}");
    for (i, m) in got[CROWD + 2..CROWD + 2 + HISTORY].iter().enumerate() {
        assert_eq!(
            m.child("body", ns::CLIENT).map(Element::text),
            Some(format!("history {i}")),
            "{m}"
        );
    }
    let subject = got.last().expect("subject");
    assert_eq!(
        subject
            .child("subject", ns::CLIENT)
            .map(Element::text)
            .as_deref(),
        Some("Full house")
    );
    // Still connected and usable, and live traffic follows the burst.
    late.sync().await;
    say(&mut host, &room_jid, "live", "after the burst").await;
    expect_body(&mut late, &format!("{room_jid}/host"), "after the burst").await;
    // With stream management the whole burst is in flight, unacknowledged,
    // at once: more than the queue, still within the limit.
    const SM: &str = "urn:xmpp:sm:3";
    s.user("acker").await;
    let mut acker = s.login("acker", "r").await;
    acker.send(&format!("<enable xmlns='{SM}'/>")).await;
    acker
        .expect_with("<enabled/>", |e| e.is("enabled", SM))
        .await;
    acker
        .send(&format!(
            "<presence to='{room_jid}/acker'><x xmlns='{MUC}'/></presence>"
        ))
        .await;
    let mut stanzas = 0;
    loop {
        let e = acker.next("the join burst, with SM").await;
        if e.ns == SM {
            continue;
        }
        assert_ne!(e.attr("type"), Some("error"), "{e}");
        stanzas += 1;
        if is_subject(&e) {
            break;
        }
    }
    // The crowd, host and late; itself; the history and the live message; the subject.
    assert_eq!(
        stanzas,
        (CROWD + 2) + 1 + (HISTORY + 1) + 1,
        "join burst size with SM"
    );
    acker
        .send(&format!("<a xmlns='{SM}' h='{stanzas}'/>"))
        .await;
    acker.sync().await;
    // A burst does not excuse a session that stops reading: the queue
    // bound still holds for ordinary stanzas (hardening.rs covers that).
    drop(crowd);
}

/// XEP-0045 §7.2.1: available presence without `<x/>` from a non-occupant
/// is a client out of sync, answered with a kick (110, 307, 333), never a
/// silent join nor the creation of a room.
#[tokio::test]
async fn presence_without_x_from_a_non_occupant_is_a_kick() {
    let s = TestServer::start().await;
    let mut a = connect(&s, "crone").await;
    let mut b = connect(&s, "hag").await;
    let coven = room("coven");
    create(&mut a, &coven, "crone", &[]).await;
    for target in [coven.clone(), room("nowhere")] {
        b.send(&format!(
            "<presence to='{target}/hag'><show>away</show></presence>"
        ))
        .await;
        let p = b.expect_with("the kick", |e| e.name == "presence").await;
        assert_eq!(p.attr("type"), Some("unavailable"), "{p}");
        assert_eq!(p.attr("from"), Some(format!("{target}/hag").as_str()));
        assert_eq!(codes(&p), ["110", "307", "333"], "{p}");
        assert_eq!(item(&p).attr("role"), Some("none"));
    }
    // Nothing happened in the room, and no room was created.
    b.sync().await;
    a.sync().await;
    let r = iq(
        &mut b,
        &room("nowhere"),
        "get",
        &format!("<query xmlns='{}'/>", ns::DISCO_INFO),
    )
    .await;
    assert!(has_stanza_error(&r, "item-not-found"), "{r}");
    // An occupant's own presence updates (no <x/>) are fine.
    join(&mut b, &coven, "hag").await;
    a.expect(&format!("<presence from='{coven}/hag'/>")).await;
    b.send(&format!(
        "<presence to='{coven}/hag'><show>away</show></presence>"
    ))
    .await;
    let p = a
        .expect_with("hag's update", |e| e.name == "presence")
        .await;
    assert_eq!(p.attr("type"), None, "{p}");
    assert!(p.child("show", ns::CLIENT).is_some(), "{p}");
}

/// Fan-out never waits for an occupant: one whose queue fills (here a
/// stream-managed session detached by a broken connection, which reads
/// nothing) is disconnected and leaves the room, while everyone else
/// gets every message.
#[tokio::test]
async fn a_stalled_occupant_does_not_stall_the_room() {
    const SM: &str = "urn:xmpp:sm:3";
    let s = TestServer::start_with("[limits]\noutbound_queue = 16\n").await;
    let mut a = connect(&s, "crone").await;
    let mut b = connect(&s, "hag").await;
    let coven = room("coven");
    create(&mut a, &coven, "crone", &[]).await;
    join(&mut b, &coven, "hag").await;
    a.expect(&format!("<presence from='{coven}/hag'/>")).await;
    let mut stalled = connect(&s, "imp").await;
    stalled
        .send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    stalled
        .expect_with("<enabled/>", |e| e.is("enabled", SM))
        .await;
    join(&mut stalled, &coven, "imp").await;
    a.expect(&format!("<presence from='{coven}/imp'/>")).await;
    b.expect(&format!("<presence from='{coven}/imp'/>")).await;
    // Detached, waiting for a resumption: its queue is no longer read.
    stalled.drop_abruptly();
    // Rounds of 10 (the test runtime has one thread: the readers' sessions
    // only drain their queues between rounds), 40 in all: more than the
    // stalled session's queue holds.
    let mut bodies = Vec::new();
    let mut imp_left = false;
    for round in 0..4 {
        for i in round * 10..round * 10 + 10 {
            say(&mut a, &coven, &format!("m{i}"), &format!("message {i}")).await;
        }
        while bodies.len() < round * 10 + 10 {
            let e = b.next("the round's messages").await;
            match e.name.as_str() {
                "message" => bodies.push(e.child("body", ns::CLIENT).map(Element::text).unwrap()),
                "presence" => {
                    assert_eq!(e.attr("from"), Some(format!("{coven}/imp").as_str()), "{e}");
                    assert_eq!(e.attr("type"), Some("unavailable"), "{e}");
                    imp_left = true;
                }
                _ => panic!("unexpected {e}"),
            }
        }
    }
    if !imp_left {
        let p = b
            .expect_with("imp's departure", |e| e.name == "presence")
            .await;
        assert_eq!(p.attr("from"), Some(format!("{coven}/imp").as_str()), "{p}");
        assert_eq!(p.attr("type"), Some("unavailable"), "{p}");
    }
    let expected: Vec<String> = (0..40).map(|i| format!("message {i}")).collect();
    assert_eq!(bodies, expected, "every message, in order");
}

/// A room message is queued for each occupant as the room's one shared
/// stanza plus the occupant's address (`shared_stanza`), and still gets
/// what any stanza gets: held back while the client is inactive (CSI),
/// counted and kept until acknowledged, and replayed on resumption
/// (stream management), addressed to the session each time.
#[tokio::test]
async fn shared_room_messages_are_held_counted_and_replayed() {
    const SM: &str = "urn:xmpp:sm:3";
    const CSI: &str = "urn:xmpp:csi:0";
    let s = TestServer::start().await;
    let mut crone = connect(&s, "crone").await;
    let coven = room("coven");
    create(&mut crone, &coven, "crone", &[]).await;
    let mut imp = connect(&s, "imp").await;
    imp.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    let enabled = imp.expect_with("<enabled/>", |e| e.is("enabled", SM)).await;
    let id = enabled.attr("id").expect("an SM id").to_string();
    let joined = join(&mut imp, &coven, "imp").await.len();
    crone
        .expect(&format!("<presence from='{coven}/imp'/>"))
        .await;
    imp.send(&format!("<inactive xmlns='{CSI}'/>")).await;
    imp.sync().await;
    // No body: not urgent, held while imp is inactive.
    crone
        .send(&format!(
            "<message to='{coven}' type='groupchat' id='cs'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
        ))
        .await;
    crone.sync().await;
    say(&mut crone, &coven, "m1", "Double, double toil and trouble").await;
    // The held chat state first, then the message that flushed it.
    let state = imp
        .expect_with("the held chat state", |e| e.name == "message")
        .await;
    assert_eq!(state.attr("id"), Some("cs"), "{state}");
    assert_eq!(state.attr("to"), Some(imp.full()));
    let m1 = expect_body(
        &mut imp,
        &format!("{coven}/crone"),
        "Double, double toil and trouble",
    )
    .await;
    assert_eq!(m1.attr("to"), Some(imp.full()));
    let full = imp.full().to_string();
    // Nothing acknowledged: the connection breaks, a message arrives while
    // the session waits detached, and the client resumes.
    imp.drop_abruptly();
    say(&mut crone, &coven, "m2", "Fire burn and cauldron bubble").await;
    expect_body(
        &mut crone,
        &format!("{coven}/crone"),
        "Double, double toil and trouble",
    )
    .await;
    expect_body(
        &mut crone,
        &format!("{coven}/crone"),
        "Fire burn and cauldron bubble",
    )
    .await;
    let mut again = Client::connect_plain(s.c2s).await;
    again.open_stream().await;
    again.starttls().await;
    again.auth_scram_sha256("imp", &password("imp")).await;
    again
        .send(&format!("<resume xmlns='{SM}' previd='{id}' h='0'/>"))
        .await;
    again
        .expect_with("<resumed/>", |e| e.is("resumed", SM))
        .await;
    // Everything since <enabled/> again: the join's stanzas, then the
    // three room messages, each still addressed to the session.
    let mut messages = Vec::new();
    for _ in 0..joined {
        again.next("the join, replayed").await;
    }
    while messages.len() < 3 {
        let e = again.next("the room messages, replayed").await;
        if e.name == "message" {
            assert_eq!(e.attr("to"), Some(full.as_str()), "{e}");
            messages.push(e.attr("id").unwrap_or_default().to_string());
        }
    }
    assert_eq!(messages, ["cs", "m1", "m2"]);
}
