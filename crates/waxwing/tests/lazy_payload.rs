//! Issue #21: a chat message is routed without its payload being parsed.
//! The framer keeps a message's content as validated bytes; every policy
//! on the way (blocking, carbons, archiving, CSI, offline hints, a room's
//! reflection and log) asks for child names only, so the bytes go out as
//! they came in, with what the server stamps appended.
//!
//! One test in this binary: the parse counter is per process.

mod support;

use support::*;
use waxwing_proto::ns;
use waxwing_proto::xml::raw_content_parses;

const CARBONS: &str = "urn:xmpp:carbons:2";
const BLOCKING: &str = "urn:xmpp:blocking";

#[tokio::test]
async fn a_chat_message_is_delivered_archived_and_copied_without_parsing_its_payload() {
    let s = TestServer::start().await;
    for u in ["romeo", "juliet", "tybalt"] {
        s.user(u).await;
    }
    let mut desk = s.online("romeo", "desk").await;
    let mut phone = s.online("romeo", "phone").await;
    let mut juliet = s.online("juliet", "balcony").await;
    let mut nurse = s.online("juliet", "nurse").await;
    for c in [&mut desk, &mut phone, &mut juliet, &mut nurse] {
        let r = c
            .iq("set", None, &format!("<enable xmlns='{CARBONS}'/>"))
            .await;
        assert!(is_result(&r), "{r}");
    }
    // A block list to consult, and a client that is inactive (CSI).
    let r = juliet
        .iq(
            "set",
            None,
            &format!("<block xmlns='{BLOCKING}'><item jid='tybalt@localhost'/></block>"),
        )
        .await;
    assert!(is_result(&r), "{r}");
    juliet.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    for c in [&mut desk, &mut phone, &mut juliet, &mut nurse] {
        c.sync().await;
    }

    let payload = "<body>Good night, good night! &lt;parting&gt; is such sweet sorrow</body>\
        <active xmlns='http://jabber.org/protocol/chatstates'/>\
        <request xmlns='urn:xmpp:receipts'/><origin-id xmlns='urn:xmpp:sid:0' id='o1'/>\
        <markable xmlns='urn:xmpp:chat-markers:0'/>";
    let before = raw_content_parses();
    desk.send(&format!(
        "<message to='juliet@localhost/balcony' type='chat' id='m1'>{payload}</message>"
    ))
    .await;
    let got = juliet
        .next("the message (a body is urgent for an inactive client)")
        .await;
    let sent_copy = phone.next("the sent carbon").await;
    let received_copy = nurse.next("the received carbon").await;
    assert_eq!(
        raw_content_parses(),
        before,
        "the payload was parsed on its way through the server (or by the test clients)"
    );

    // Delivered as it was sent, with the archive's stanza-id appended.
    let xml = got.to_xml_in(ns::CLIENT);
    assert!(xml.contains(payload), "{xml}");
    assert!(got.has_child("stanza-id", "urn:xmpp:sid:0"), "{xml}");
    assert_eq!(got.attr("from"), Some("romeo@localhost/desk"));
    for copy in [&sent_copy, &received_copy] {
        let xml = copy.to_xml_in(ns::CLIENT);
        assert!(xml.contains(payload), "{xml}");
    }
    assert!(sent_copy.has_child("sent", CARBONS));
    assert!(received_copy.has_child("received", CARBONS));
    // And it reads as the tree it is.
    assert_eq!(
        got.child("body", ns::CLIENT).unwrap().text(),
        "Good night, good night! <parting> is such sweet sorrow"
    );
    assert!(raw_content_parses() > before);

    // The policies still apply: juliet blocked tybalt (XEP-0191), so his
    // message is dropped and hers to him refused.
    let mut tybalt = s.online("tybalt", "street").await;
    tybalt
        .send("<message to='juliet@localhost/balcony' type='chat' id='t1'><body>draw</body></message>")
        .await;
    tybalt.expect_nothing().await;
    juliet.expect_nothing().await;
    juliet
        .send("<message to='tybalt@localhost/street' type='chat' id='j1'><body>no</body></message>")
        .await;
    let refused = juliet.next("the error for a blocked contact").await;
    assert_eq!(refused.attr("type"), Some("error"), "{refused}");
    tybalt.expect_nothing().await;

    // A room message: reflected to every occupant, logged, kept in the
    // history, without parsing either.
    juliet.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    let room = "verona@conference.localhost";
    for (c, nick) in [(&mut desk, "romeo"), (&mut juliet, "juliet")] {
        c.send(&format!(
            "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
        loop {
            let el = c.next("joining the room").await;
            assert_ne!(el.attr("type"), Some("error"), "{el}");
            if el.name == "message" && el.has_child("subject", ns::CLIENT) {
                break;
            }
        }
        if nick == "romeo" {
            let r = c
                .iq(
                    "set",
                    Some(room),
                    "<query xmlns='http://jabber.org/protocol/muc#owner'>\
                     <x xmlns='jabber:x:data' type='submit'/></query>",
                )
                .await;
            assert!(is_result(&r), "{r}");
        }
    }
    loop {
        let el = desk.next("juliet's join").await;
        if el.name == "presence" && el.attr("from") == Some("verona@conference.localhost/juliet") {
            break;
        }
    }
    let before = raw_content_parses();
    desk.send(&format!(
        "<message to='{room}' type='groupchat' id='g1'>{payload}</message>"
    ))
    .await;
    let mut reflected = Vec::new();
    for c in [&mut desk, &mut juliet] {
        reflected.push(c.next("the room message").await);
    }
    // Once per room message, not per occupant: the room's own stanza-id
    // is in every copy, and whether it claims the occupant's archive
    // (MAM strips such claims) takes its `by`. The copies share the
    // payload, so it is parsed once and left unchanged.
    assert_eq!(
        raw_content_parses() - before,
        1,
        "a room message is parsed once for all its copies"
    );
    for m in &reflected {
        let xml = m.to_xml_in(ns::CLIENT);
        assert_eq!(
            m.attr("from"),
            Some("verona@conference.localhost/romeo"),
            "{xml}"
        );
        assert!(xml.contains(payload), "{xml}");
        assert!(
            m.has_child("occupant-id", "urn:xmpp:occupant-id:0"),
            "{xml}"
        );
        assert!(m.has_child("stanza-id", "urn:xmpp:sid:0"), "{xml}");
    }
}
