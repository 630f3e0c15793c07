//! Modern IM (issue 6): carbons (XEP-0280), blocking (XEP-0191), vCard-temp
//! (XEP-0054), private XML storage (XEP-0049), last activity (XEP-0012),
//! contact addresses (XEP-0157), ad-hoc admin commands (XEP-0050/0133),
//! and receipts/markers passing through untouched (XEP-0184/0333).

mod support;

use support::*;
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

const CARBONS: &str = "urn:xmpp:carbons:2";
const BLOCKING: &str = "urn:xmpp:blocking";
const COMMANDS: &str = "http://jabber.org/protocol/commands";

// ------------------------------------------------------------------ carbons

#[tokio::test]
async fn carbons_copy_sent_and_received_and_honour_private() {
    let s = TestServer::start().await;
    for u in ["romeo", "juliet"] {
        s.user(u).await;
    }
    let mut desk = s.online("romeo", "desk").await;
    let mut phone = s.online("romeo", "phone").await;
    let mut juliet = s.online("juliet", "balcony").await;
    desk.sync().await;
    for c in [&mut desk, &mut phone] {
        let r = c
            .iq("set", None, &format!("<enable xmlns='{CARBONS}'/>"))
            .await;
        assert!(is_result(&r), "{r}");
    }
    // Enabling twice is not an error (XEP-0280 §8.1).
    let r = phone
        .iq("set", None, &format!("<enable xmlns='{CARBONS}'/>"))
        .await;
    assert!(is_result(&r), "{r}");

    // Received: to desk's full JID; phone gets a <received/> copy.
    juliet
        .send("<message to='romeo@localhost/desk' type='chat' id='m1'><body>hi</body></message>")
        .await;
    desk.expect("<message from='juliet@localhost/balcony' type='chat'><body>hi</body></message>")
        .await;
    phone
        .expect(&format!(
            "<message from='romeo@localhost' to='romeo@localhost/phone' type='chat'>\
             <received xmlns='{CARBONS}'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:client' from='juliet@localhost/balcony' \
             to='romeo@localhost/desk' id='m1'><body>hi</body></message>\
             </forwarded></received></message>"
        ))
        .await;
    desk.expect_nothing().await;

    // Sent: desk writes to juliet; phone gets a <sent/> copy, desk none.
    desk.send("<message to='juliet@localhost' type='chat' id='m2'><body>hello</body></message>")
        .await;
    juliet
        .expect("<message from='romeo@localhost/desk'><body>hello</body></message>")
        .await;
    phone
        .expect(&format!(
            "<message from='romeo@localhost' to='romeo@localhost/phone' type='chat'>\
             <sent xmlns='{CARBONS}'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:client' from='romeo@localhost/desk' to='juliet@localhost' \
             id='m2'><body>hello</body></message></forwarded></sent></message>"
        ))
        .await;
    desk.expect_nothing().await;

    // Private + no-copy (XEP-0280 §7, XEP-0334): no copies either way.
    let private = format!("<private xmlns='{CARBONS}'/><no-copy xmlns='urn:xmpp:hints'/>");
    desk.send(&format!(
        "<message to='juliet@localhost' type='chat'><body>secret</body>{private}</message>"
    ))
    .await;
    juliet
        .expect("<message><body>secret</body></message>")
        .await;
    juliet
        .send(&format!(
            "<message to='romeo@localhost/desk' type='chat'><body>shh</body>{private}</message>"
        ))
        .await;
    desk.expect("<message><body>shh</body></message>").await;
    phone.expect_nothing().await;

    // Disabled: no more copies.
    let r = phone
        .iq("set", None, &format!("<disable xmlns='{CARBONS}'/>"))
        .await;
    assert!(is_result(&r), "{r}");
    juliet
        .send("<message to='romeo@localhost/desk' type='chat'><body>again</body></message>")
        .await;
    desk.expect("<message><body>again</body></message>").await;
    phone.expect_nothing().await;
}

#[tokio::test]
async fn receipts_and_markers_pass_through_untouched() {
    let s = TestServer::start().await;
    for u in ["romeo", "juliet"] {
        s.user(u).await;
    }
    let mut romeo = s.online("romeo", "desk").await;
    let mut juliet = s.online("juliet", "balcony").await;
    romeo
        .send(
            "<message to='juliet@localhost' type='chat' id='r1'><body>hi</body>\
             <request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/></message>",
        )
        .await;
    juliet
        .expect(
            "<message id='r1'><body>hi</body><request xmlns='urn:xmpp:receipts'/>\
             <markable xmlns='urn:xmpp:chat-markers:0'/></message>",
        )
        .await;
    juliet
        .send(
            "<message to='romeo@localhost/desk' type='chat' id='r2'>\
             <received xmlns='urn:xmpp:receipts' id='r1'/></message>",
        )
        .await;
    romeo
        .expect("<message id='r2'><received xmlns='urn:xmpp:receipts' id='r1'/></message>")
        .await;
    juliet
        .send(
            "<message to='romeo@localhost/desk' type='chat' id='r3'>\
             <displayed xmlns='urn:xmpp:chat-markers:0' id='r1'/></message>",
        )
        .await;
    romeo
        .expect("<message id='r3'><displayed xmlns='urn:xmpp:chat-markers:0' id='r1'/></message>")
        .await;
}

// ----------------------------------------------------------------- blocking

fn push(kind: &str, jid: &str) -> String {
    format!("<iq type='set'><{kind} xmlns='{BLOCKING}'><item jid='{jid}'/></{kind}></iq>")
}

#[tokio::test]
async fn blocking_pushes_drops_and_hides_presence_both_ways() {
    let s = TestServer::start().await;
    for u in ["romeo", "juliet"] {
        s.user(u).await;
    }
    s.befriend("romeo", "juliet").await;
    let mut desk = s.online("romeo", "desk").await;
    let mut phone = s.online("romeo", "phone").await;
    let mut juliet = s.online("juliet", "balcony").await;
    desk.sync().await;
    phone.sync().await;
    for c in [&mut desk, &mut phone] {
        let r = c
            .iq("get", None, &format!("<blocklist xmlns='{BLOCKING}'/>"))
            .await;
        assert!(
            r.child("blocklist", BLOCKING)
                .is_some_and(|b| !b.has_children()),
            "{r}"
        );
    }

    // Block: result, pushes to every resource that fetched the list, and
    // unavailable presence to the blocked contact.
    desk.send(&format!(
        "<iq type='set' id='b1'><block xmlns='{BLOCKING}'><item jid='juliet@localhost'/></block></iq>"
    ))
    .await;
    desk.expect_unordered(&[
        "<iq type='result' id='b1'/>",
        &push("block", "juliet@localhost"),
    ])
    .await;
    phone.expect(&push("block", "juliet@localhost")).await;
    juliet
        .expect_unordered(&[
            "<presence type='unavailable' from='romeo@localhost/desk'/>",
            "<presence type='unavailable' from='romeo@localhost/phone'/>",
        ])
        .await;
    let r = phone
        .iq("get", None, &format!("<blocklist xmlns='{BLOCKING}'/>"))
        .await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><blocklist xmlns='{BLOCKING}'><item jid='juliet@localhost'/></blocklist></iq>"
            )
        ),
        "{r}"
    );

    // Inbound from the blocked contact: messages and presence vanish, IQs
    // get service-unavailable.
    juliet
        .send("<message to='romeo@localhost' type='chat'><body>let me in</body></message>")
        .await;
    juliet.send("<presence><show>away</show></presence>").await;
    juliet.sync().await;
    let r = juliet
        .iq(
            "get",
            Some("romeo@localhost/desk"),
            "<query xmlns='jabber:iq:version'/>",
        )
        .await;
    assert!(has_stanza_error(&r, "service-unavailable"), "{r}");
    desk.expect_nothing().await;
    phone.expect_nothing().await;
    juliet.expect_nothing().await;

    // Outbound to the blocked contact: not-acceptable + <blocked/>; and
    // romeo's presence changes no longer reach her.
    desk.send("<message to='juliet@localhost' type='chat' id='o1'><body>hm</body></message>")
        .await;
    let err = desk
        .expect("<message type='error' id='o1' from='juliet@localhost'/>")
        .await;
    let e = err.child("error", ns::CLIENT).expect("error child");
    assert!(e.child("not-acceptable", ns::STANZAS).is_some(), "{err}");
    assert!(
        e.child("blocked", "urn:xmpp:blocking:errors").is_some(),
        "{err}"
    );
    phone.send("<presence><show>dnd</show></presence>").await;
    phone.sync().await;
    desk.sync().await;
    juliet.expect_nothing().await;

    // Unblock: pushes, and she sees romeo's current presence again.
    desk.send(&format!(
        "<iq type='set' id='u1'><unblock xmlns='{BLOCKING}'><item jid='juliet@localhost'/></unblock></iq>"
    ))
    .await;
    desk.expect_unordered(&[
        "<iq type='result' id='u1'/>",
        &push("unblock", "juliet@localhost"),
    ])
    .await;
    phone.expect(&push("unblock", "juliet@localhost")).await;
    juliet
        .expect_unordered(&[
            "<presence from='romeo@localhost/desk'/>",
            "<presence from='romeo@localhost/phone'><show>dnd</show></presence>",
        ])
        .await;
    juliet
        .send("<message to='romeo@localhost/desk' type='chat'><body>there you are</body></message>")
        .await;
    desk.expect("<message><body>there you are</body></message>")
        .await;
}

/// The router hands the blocking rules the addresses it already prepared
/// (the recipient, the sending session); an address written in another
/// case must still be caught, on the way out and on the way in, and an
/// account with a list must still reach those it does not block.
#[tokio::test]
async fn blocking_holds_for_addresses_written_in_any_case() {
    let s = TestServer::start().await;
    for u in ["romeo", "juliet", "nurse"] {
        s.user(u).await;
    }
    let mut romeo = s.online("romeo", "desk").await;
    let mut juliet = s.online("juliet", "balcony").await;
    let mut nurse = s.online("nurse", "hall").await;
    blocklist_set(&mut romeo, "block", Some("juliet@localhost")).await;

    // Out: to the blocked account, written in capitals.
    romeo
        .send("<message to='JULIET@LocalHost/balcony' type='chat' id='o1'><body>x</body></message>")
        .await;
    let err = romeo.expect("<message type='error' id='o1'/>").await;
    assert!(has_stanza_error(&err, "not-acceptable"), "{err}");
    // In: from the blocked account, addressed in capitals.
    juliet
        .send("<message to='Romeo@LOCALHOST' type='chat'><body>in</body></message>")
        .await;
    // An IQ from the blocker to the blocked (IQs are caught on the way in).
    let r = romeo
        .iq(
            "get",
            Some("juliet@localhost/balcony"),
            "<query xmlns='jabber:iq:version'/>",
        )
        .await;
    assert!(has_stanza_error(&r, "not-acceptable"), "{r}");
    juliet.sync().await;
    romeo.expect_nothing().await;
    juliet.expect_nothing().await;

    // Others are not blocked, whatever the spelling, both ways.
    romeo
        .send("<message to='NURSE@localhost' type='chat'><body>to nurse</body></message>")
        .await;
    nurse
        .expect("<message from='romeo@localhost/desk'><body>to nurse</body></message>")
        .await;
    nurse
        .send("<message to='romeo@LOCALHOST/desk' type='chat'><body>to romeo</body></message>")
        .await;
    romeo
        .expect("<message from='nurse@localhost/hall'><body>to romeo</body></message>")
        .await;
}

/// A hook that readdresses a message on `Outbound` (the test module's
/// `<readdress/>`): the hooks after it, blocking's included, and the
/// router decide by the new address, never the one the router parsed
/// before the hook ran.
#[tokio::test]
async fn blocking_judges_the_address_a_hook_gave_the_message() {
    let s = TestServer::start().await;
    for u in ["romeo", "juliet", "nurse"] {
        s.user(u).await;
    }
    let mut romeo = s.online("romeo", "desk").await;
    let mut juliet = s.online("juliet", "balcony").await;
    let mut nurse = s.online("nurse", "hall").await;
    romeo
        .send(&format!(
            "<iq type='set' id='b1'><block xmlns='{BLOCKING}'><item jid='juliet@localhost'/></block></iq>"
        ))
        .await;
    romeo.expect("<iq type='result' id='b1'/>").await;
    juliet.sync().await;

    // Sent to the nurse, readdressed to juliet, whom romeo blocks: refused
    // as if sent to juliet, and neither of them gets it.
    romeo
        .send(&format!(
            "<message to='nurse@localhost/hall' type='chat' id='r1'><body>psst</body>{}</message>",
            panic::readdress("juliet@localhost/balcony")
        ))
        .await;
    let err = romeo
        .expect("<message type='error' id='r1' from='juliet@localhost/balcony'/>")
        .await;
    assert!(has_stanza_error(&err, "not-acceptable"), "{err}");
    juliet.expect_nothing().await;
    nurse.expect_nothing().await;

    // Sent to juliet (blocked), readdressed to the nurse: delivered to the
    // nurse, with the sender's address as stamped.
    romeo
        .send(&format!(
            "<message to='juliet@localhost/balcony' type='chat' id='r2'><body>for you</body>{}</message>",
            panic::readdress("nurse@localhost/hall")
        ))
        .await;
    nurse
        .expect("<message from='romeo@localhost/desk' to='nurse@localhost/hall' id='r2'><body>for you</body></message>")
        .await;
    juliet.expect_nothing().await;
    romeo.expect_nothing().await;
}

/// A blocking command (XEP-0191) `verb` (`block`, `unblock`) for `jid`, or
/// for nobody in particular (`unblock` all), which must succeed.
async fn blocklist_set(c: &mut Client, verb: &str, jid: Option<&str>) {
    let payload = match jid {
        Some(jid) => format!("<{verb} xmlns='{BLOCKING}'><item jid='{jid}'/></{verb}>"),
        None => format!("<{verb} xmlns='{BLOCKING}'/>"),
    };
    let r = c.iq("set", None, &payload).await;
    assert!(is_result(&r), "{r}");
}

/// Romeo's and juliet's messages of round `i`, to each other's full JID.
fn chat_pair(i: usize) -> (String, String) {
    (
        format!(
            "<message to='juliet@localhost/balcony' type='chat' id='r{i}'><body>r{i}</body></message>"
        ),
        format!(
            "<message to='romeo@localhost/desk' type='chat' id='j{i}'><body>j{i}</body></message>"
        ),
    )
}

/// One message each way, each arriving.
async fn chat_round(romeo: &mut Client, juliet: &mut Client, round: usize) {
    let (to_juliet, to_romeo) = chat_pair(round);
    romeo.send(&to_juliet).await;
    juliet
        .expect(&format!(
            "<message from='romeo@localhost/desk' id='r{round}'/>"
        ))
        .await;
    juliet.send(&to_romeo).await;
    romeo
        .expect(&format!(
            "<message from='juliet@localhost/balcony' id='j{round}'/>"
        ))
        .await;
}

/// Accounts that block nobody are remembered as such on their sessions,
/// so that their messages skip the blocklist cache; a block (or unblock)
/// must end that at once, on both sides of a conversation.
#[tokio::test]
async fn blocking_takes_effect_at_once_after_blocking_nobody() {
    let s = TestServer::start().await;
    for u in ["romeo", "juliet"] {
        s.user(u).await;
    }
    let mut romeo = s.online("romeo", "desk").await;
    let mut juliet = s.online("juliet", "balcony").await;
    // Enough messages both ways, to full JIDs, for each list to be read,
    // cached and then known empty.
    for round in 0..3 {
        chat_round(&mut romeo, &mut juliet, round).await;
    }

    // Romeo blocks juliet: his messages to her are refused, hers vanish.
    blocklist_set(&mut romeo, "block", Some("juliet@localhost")).await;
    let (to_juliet, to_romeo) = chat_pair(10);
    romeo.send(&to_juliet).await;
    let err = romeo.expect("<message type='error' id='r10'/>").await;
    assert!(has_stanza_error(&err, "not-acceptable"), "{err}");
    juliet.send(&to_romeo).await;
    juliet.sync().await;
    romeo.sync().await;
    romeo.expect_nothing().await;
    juliet.expect_nothing().await;

    // Unblocked: both ways again, and again known empty after a while.
    blocklist_set(&mut romeo, "unblock", None).await;
    for round in 20..23 {
        chat_round(&mut romeo, &mut juliet, round).await;
    }

    // Now the recipient blocks: juliet blocks romeo, whose own list is
    // still known empty. His messages to her vanish; hers to him are refused.
    blocklist_set(&mut juliet, "block", Some("romeo@localhost")).await;
    let (to_juliet, to_romeo) = chat_pair(30);
    romeo.send(&to_juliet).await;
    romeo.sync().await;
    juliet.send(&to_romeo).await;
    let err = juliet.expect("<message type='error' id='j30'/>").await;
    assert!(has_stanza_error(&err, "not-acceptable"), "{err}");
    juliet.sync().await;
    juliet.expect_nothing().await;
    romeo.expect_nothing().await;
    blocklist_set(&mut juliet, "unblock", Some("romeo@localhost")).await;
    chat_round(&mut romeo, &mut juliet, 40).await;
}

#[tokio::test]
async fn blocking_a_domain_and_unblock_all() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    let mut c = s.online("romeo", "desk").await;
    let r = c
        .iq("set", None, &format!("<block xmlns='{BLOCKING}'/>"))
        .await;
    assert!(has_stanza_error(&r, "bad-request"), "{r}");
    let r = c.iq("set",
        None,
        &format!(
            "<block xmlns='{BLOCKING}'><item jid='evil.example'/><item jid='x@y.example'/></block>"
        ),
    )
    .await;
    assert!(is_result(&r), "{r}");
    // Sending to anyone at a blocked domain is refused.
    c.send("<message to='someone@evil.example' id='d1'><body>x</body></message>")
        .await;
    let err = c.expect("<message type='error' id='d1'/>").await;
    assert!(has_stanza_error(&err, "not-acceptable"), "{err}");
    blocklist_set(&mut c, "unblock", None).await;
    let r = c
        .iq("get", None, &format!("<blocklist xmlns='{BLOCKING}'/>"))
        .await;
    assert!(
        r.child("blocklist", BLOCKING)
            .is_some_and(|b| !b.has_children()),
        "{r}"
    );
}

// -------------------------------------------------------------------- vcard

#[tokio::test]
async fn vcard_set_by_owner_read_by_anyone() {
    let s = TestServer::start().await;
    for u in ["romeo", "juliet"] {
        s.user(u).await;
    }
    let mut romeo = s.online("romeo", "desk").await;
    let mut juliet = s.online("juliet", "balcony").await;
    let card = "<vCard xmlns='vcard-temp'><FN>Romeo Montague</FN><PHOTO><TYPE>image/png</TYPE>\
                <BINVAL>iVBORw0KGgo=</BINVAL></PHOTO></vCard>";
    // Before any set: an empty vCard.
    let r = romeo.iq("get", None, "<vCard xmlns='vcard-temp'/>").await;
    assert!(
        r.child("vCard", "vcard-temp")
            .is_some_and(|v| !v.has_children()),
        "{r}"
    );
    let r = romeo.iq("set", None, card).await;
    assert!(is_result(&r), "{r}");
    for (c, to) in [(&mut romeo, None), (&mut juliet, Some("romeo@localhost"))] {
        let r = c.iq("get", to, "<vCard xmlns='vcard-temp'/>").await;
        assert!(
            matches_pattern(
                &r,
                "<iq type='result'><vCard xmlns='vcard-temp'><FN>Romeo Montague</FN>\
                 <PHOTO><BINVAL>iVBORw0KGgo=</BINVAL></PHOTO></vCard></iq>"
            ),
            "{r}"
        );
    }
    // Someone else's vCard cannot be written; a missing account has none.
    let r = juliet.iq("set", Some("romeo@localhost"), card).await;
    assert!(has_stanza_error(&r, "forbidden"), "{r}");
    let r = juliet
        .iq(
            "get",
            Some("nobody@localhost"),
            "<vCard xmlns='vcard-temp'/>",
        )
        .await;
    assert!(has_stanza_error(&r, "service-unavailable"), "{r}");
    // XEP-0153: the avatar hash in presence goes through untouched.
    s.befriend("romeo", "juliet").await;
    romeo
        .send("<presence><x xmlns='vcard-temp:x:update'><photo>abc123</photo></x></presence>")
        .await;
    juliet
        .expect("<presence from='romeo@localhost/desk'><x xmlns='vcard-temp:x:update'><photo>abc123</photo></x></presence>")
        .await;
}

// ------------------------------------------------------------------ private

#[tokio::test]
async fn private_storage_is_private() {
    let s = TestServer::start().await;
    for u in ["romeo", "juliet"] {
        s.user(u).await;
    }
    let mut romeo = s.online("romeo", "desk").await;
    let mut juliet = s.online("juliet", "balcony").await;
    let q = |inner: &str| format!("<query xmlns='jabber:iq:private'>{inner}</query>");
    let prefs = "<prefs xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></prefs>";
    let r = romeo.iq("set", None, &q(prefs)).await;
    assert!(is_result(&r), "{r}");
    let r = romeo
        .iq("get", None, &q("<prefs xmlns='exodus:prefs'/>"))
        .await;
    assert!(
        matches_pattern(
            &r,
            "<iq type='result'><query xmlns='jabber:iq:private'><prefs xmlns='exodus:prefs'>\
             <defaultnick>Hamlet</defaultnick></prefs></query></iq>"
        ),
        "{r}"
    );
    // Nothing stored: the empty element comes back.
    let r = romeo
        .iq("get", None, &q("<storage xmlns='storage:bookmarks'/>"))
        .await;
    let st = r
        .child("query", "jabber:iq:private")
        .and_then(|q| q.child("storage", "storage:bookmarks"))
        .expect("storage element");
    assert!(!st.has_children(), "{r}");
    // Other users: forbidden both ways; reserved namespaces refused.
    let r = juliet
        .iq(
            "get",
            Some("romeo@localhost"),
            &q("<prefs xmlns='exodus:prefs'/>"),
        )
        .await;
    assert!(has_stanza_error(&r, "forbidden"), "{r}");
    let r = juliet.iq("set", Some("romeo@localhost"), &q(prefs)).await;
    assert!(has_stanza_error(&r, "forbidden"), "{r}");
    let r = juliet
        .iq("get", None, &q("<prefs xmlns='exodus:prefs'/>"))
        .await;
    assert!(
        r.child("query", "jabber:iq:private")
            .and_then(|q| q.child("prefs", "exodus:prefs"))
            .is_some_and(|p| !p.has_children()),
        "juliet sees only her own (empty) data: {r}"
    );
    let r = romeo
        .iq("set", None, &q("<query xmlns='jabber:iq:roster'/>"))
        .await;
    assert!(has_stanza_error(&r, "not-acceptable"), "{r}");
}

// ------------------------------------------------------------ last activity

#[tokio::test]
async fn last_activity_of_offline_contact_and_server_uptime() {
    let s = TestServer::start().await;
    for u in ["romeo", "juliet", "tybalt"] {
        s.user(u).await;
    }
    s.befriend("romeo", "juliet").await;
    let mut romeo = s.online("romeo", "desk").await;

    let r = romeo
        .iq("get", Some(DOMAIN), "<query xmlns='jabber:iq:last'/>")
        .await;
    let secs = r
        .child("query", "jabber:iq:last")
        .and_then(|q| q.attr("seconds"))
        .and_then(|s| s.parse::<u64>().ok());
    assert!(secs.is_some(), "{r}");

    let mut juliet = s.online("juliet", "balcony").await;
    romeo.sync().await;
    // Online: 0 seconds.
    let r = romeo
        .iq(
            "get",
            Some("juliet@localhost"),
            "<query xmlns='jabber:iq:last'/>",
        )
        .await;
    assert!(
        matches_pattern(
            &r,
            "<iq type='result'><query xmlns='jabber:iq:last' seconds='0'/></iq>"
        ),
        "{r}"
    );

    juliet
        .send("<presence type='unavailable'><status>Heading Home</status></presence>")
        .await;
    juliet.close_stream().await;
    juliet.expect_closed().await;
    // The session's end is processed after the socket closes, and nothing
    // tells another client when: ask until the answer shows the logout, each
    // question a server round trip, within the harness's generous deadline.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut answer = None;
    while answer.is_none() && tokio::time::Instant::now() < deadline {
        let r = romeo
            .iq(
                "get",
                Some("juliet@localhost"),
                "<query xmlns='jabber:iq:last'/>",
            )
            .await;
        answer = r
            .child("query", "jabber:iq:last")
            .filter(|q| q.text() == "Heading Home")
            .cloned();
    }
    let q = answer.expect("last activity of the offline contact");
    let secs: u64 = q.attr("seconds").unwrap().parse().unwrap();
    assert!(secs < 60, "{q}");

    // Not subscribed: forbidden.
    let mut tybalt = s.online("tybalt", "street").await;
    let r = tybalt
        .iq(
            "get",
            Some("juliet@localhost"),
            "<query xmlns='jabber:iq:last'/>",
        )
        .await;
    assert!(has_stanza_error(&r, "forbidden"), "{r}");
}

/// Logouts are written in batches after a linger (`last.rs`): a graceful
/// stop must still store the ones pending, with their status.
#[tokio::test]
async fn a_graceful_stop_stores_pending_logouts() {
    let stores = waxwing_store::open("sqlite::memory:")
        .await
        .expect("in-memory database");
    let s = TestServer::start_with_stores("", stores.clone()).await;
    s.user("juliet").await;
    let mut juliet = s.online("juliet", "balcony").await;
    juliet
        .send("<presence type='unavailable'><status>Heading Home</status></presence>")
        .await;
    // Answered after the presence was processed: the logout is noted.
    juliet.sync().await;
    s.running.stop().await;
    let last = stores
        .last_activity
        .get(&jid("juliet"))
        .await
        .expect("store readable")
        .expect("the logout was stored by the stop");
    assert_eq!(last.status, "Heading Home");
}

// ------------------------------------------------------------------ disco

#[tokio::test]
async fn server_disco_lists_features_and_contact_addresses() {
    let s = TestServer::start_with(
        "[contact]\nabuse = [\"mailto:abuse@localhost\", \"xmpp:abuse@localhost\"]\n",
    )
    .await;
    s.user("romeo").await;
    let mut c = s.online("romeo", "desk").await;
    let r = c
        .iq(
            "get",
            Some(DOMAIN),
            &format!("<query xmlns='{}'/>", ns::DISCO_INFO),
        )
        .await;
    let q = r.child("query", ns::DISCO_INFO).expect("query");
    let features: Vec<&str> = q
        .children()
        .filter(|f| f.name == "feature")
        .filter_map(|f| f.attr("var"))
        .collect();
    for f in [
        CARBONS,
        BLOCKING,
        "vcard-temp",
        "jabber:iq:private",
        "jabber:iq:last",
        COMMANDS,
    ] {
        assert!(features.contains(&f), "{f} missing from {r}");
    }
    assert!(
        matches_pattern(
            &r,
            "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'>\
             <x xmlns='jabber:x:data' type='result'>\
             <field var='FORM_TYPE'><value>http://jabber.org/network/serverinfo</value></field>\
             <field var='abuse-addresses'><value>mailto:abuse@localhost</value>\
             <value>xmpp:abuse@localhost</value></field></x></query></iq>"
        ),
        "{r}"
    );
}

// -------------------------------------------------------- ad-hoc / admin

const ADMIN_NODE: &str = "http://jabber.org/protocol/admin";

fn submit(node: &str, sessionid: Option<&str>, fields: &[(&str, &[&str])]) -> String {
    let sid = sessionid
        .map(|s| format!(" sessionid='{s}'"))
        .unwrap_or_default();
    let mut x = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{ADMIN_NODE}</value></field>"
    );
    for (var, values) in fields {
        x.push_str(&format!("<field var='{var}'>"));
        for v in *values {
            x.push_str(&format!("<value>{v}</value>"));
        }
        x.push_str("</field>");
    }
    x.push_str("</x>");
    format!(
        "<command xmlns='{COMMANDS}' node='{ADMIN_NODE}#{node}' action='complete'{sid}>{x}</command>"
    )
}

#[tokio::test]
async fn admin_commands_for_admins_only() {
    let s = TestServer::start_with("admins = [\"admin@localhost\"]").await;
    for u in ["admin", "juliet"] {
        s.user(u).await;
    }
    let mut admin = s.online("admin", "console").await;
    let mut juliet = s.online("juliet", "balcony").await;
    let items = format!("<query xmlns='{}' node='{COMMANDS}'/>", ns::DISCO_ITEMS);

    // The command list: full for the admin, empty for anyone else.
    let r = admin.iq("get", Some(DOMAIN), &items).await;
    let nodes: Vec<&str> = r
        .child("query", ns::DISCO_ITEMS)
        .map(|q| q.children().filter_map(|i| i.attr("node")).collect())
        .unwrap_or_default();
    for n in [
        "add-user",
        "delete-user",
        "change-user-password",
        "get-online-users-list",
        "announce",
        "get-registered-users-num",
        "get-online-users-num",
    ] {
        assert!(
            nodes.contains(&format!("{ADMIN_NODE}#{n}").as_str()),
            "{n} missing: {r}"
        );
    }
    // A user sees the commands for everyone (XEP-0401's contact invitation)
    // and none of the admin ones.
    let r = juliet.iq("get", Some(DOMAIN), &items).await;
    let nodes: Vec<&str> = r
        .child("query", ns::DISCO_ITEMS)
        .map(|q| q.children().filter_map(|i| i.attr("node")).collect())
        .unwrap_or_default();
    assert!(!nodes.is_empty(), "{r}");
    assert!(nodes.iter().all(|n| !n.starts_with(ADMIN_NODE)), "{r}");
    let r = juliet.iq("set",
        Some(DOMAIN),
        &format!("<command xmlns='{COMMANDS}' node='{ADMIN_NODE}#get-registered-users-num' action='execute'/>"),
    )
    .await;
    assert!(has_stanza_error(&r, "forbidden"), "{r}");

    // Add a user in two stages (form, then submission); the user can log in.
    let r = admin
        .iq(
            "set",
            Some(DOMAIN),
            &format!("<command xmlns='{COMMANDS}' node='{ADMIN_NODE}#add-user' action='execute'/>"),
        )
        .await;
    let cmd = r.child("command", COMMANDS).expect("command");
    assert_eq!(cmd.attr("status"), Some("executing"), "{r}");
    assert!(cmd.child("x", "jabber:x:data").is_some(), "{r}");
    let sid = cmd.attr("sessionid").expect("sessionid").to_string();
    let pw = password("newbie");
    let r = admin
        .iq(
            "set",
            Some(DOMAIN),
            &submit(
                "add-user",
                Some(&sid),
                &[
                    ("accountjid", &["newbie@localhost"]),
                    ("password", &[pw.as_str()]),
                    ("password-verify", &[pw.as_str()]),
                ],
            ),
        )
        .await;
    assert!(
        r.child("command", COMMANDS).and_then(|c| c.attr("status")) == Some("completed"),
        "{r}"
    );
    let mut newbie = s.online("newbie", "first").await;

    // Counts.
    let r = admin.iq("set",
        Some(DOMAIN),
        &format!("<command xmlns='{COMMANDS}' node='{ADMIN_NODE}#get-registered-users-num' action='execute'/>"),
    )
    .await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><command xmlns='{COMMANDS}' status='completed'><x xmlns='jabber:x:data'>\
             <field var='registeredusersnum'><value>3</value></field></x></command></iq>"
            )
        ),
        "{r}"
    );
    let r = admin.iq("set",
        Some(DOMAIN),
        &format!("<command xmlns='{COMMANDS}' node='{ADMIN_NODE}#get-online-users-list' action='execute'/>"),
    )
    .await;
    let online_jids: Vec<String> = r
        .child("command", COMMANDS)
        .and_then(|c| c.child("x", "jabber:x:data"))
        .and_then(|x| {
            x.children()
                .find(|f| f.attr("var") == Some("onlineuserjids"))
        })
        .map(|f| f.children().map(Element::text).collect())
        .unwrap_or_default();
    assert_eq!(online_jids.len(), 3, "{r}");

    // Announce in one stage: every online user gets it.
    let r = admin
        .iq(
            "set",
            Some(DOMAIN),
            &submit(
                "announce",
                None,
                &[
                    ("subject", &["Maintenance"]),
                    ("announcement", &["Back in 5"]),
                ],
            ),
        )
        .await;
    assert!(
        r.child("command", COMMANDS).and_then(|c| c.attr("status")) == Some("completed"),
        "{r}"
    );
    for c in [&mut juliet, &mut newbie] {
        c.expect("<message from='localhost' type='headline'><subject>Maintenance</subject><body>Back in 5</body></message>")
            .await;
    }

    // Change the password and delete the account.
    let r = admin
        .iq(
            "set",
            Some(DOMAIN),
            &submit(
                "change-user-password",
                None,
                &[
                    ("accountjid", &["juliet@localhost"]),
                    ("password", &["brand-new-pw"]),
                ],
            ),
        )
        .await;
    assert!(
        r.child("command", COMMANDS).and_then(|c| c.attr("status")) == Some("completed"),
        "{r}"
    );
    let r = admin
        .iq(
            "set",
            Some(DOMAIN),
            &submit(
                "delete-user",
                None,
                &[("accountjids", &["newbie@localhost"])],
            ),
        )
        .await;
    assert!(
        r.child("command", COMMANDS).and_then(|c| c.attr("status")) == Some("completed"),
        "{r}"
    );
    newbie.expect_stream_error("not-authorized").await;
    assert_eq!(
        s.running
            .server
            .stores
            .accounts
            .exists(&jid("newbie"))
            .await,
        Ok(false)
    );
}
