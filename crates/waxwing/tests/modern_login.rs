//! Issue #6: stream management with resumption, CSI, SASL2 + Bind2 with
//! inline features, FAST tokens, and push notifications.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::*;
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

const SM: &str = "urn:xmpp:sm:3";
const SASL2: &str = "urn:xmpp:sasl:2";
const BIND2: &str = "urn:xmpp:bind:0";
const FAST: &str = "urn:xmpp:fast:0";
const AGENT: &str = "d4565fa7-4d72-4749-b3d3-740edbf87770";

fn body(el: &Element) -> Option<String> {
    el.child("body", ns::CLIENT).map(|b| b.text())
}

/// Logs in and enables resumable stream management; returns the SM id.
async fn login_sm(server: &TestServer, user: &str, resource: &str) -> (Client, String) {
    let mut c = server.login_available(user, resource, 0).await;
    c.sync().await;
    c.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    let enabled = c.expect_with("<enabled/>", |e| e.is("enabled", SM)).await;
    assert_eq!(enabled.attr("resume"), Some("true"));
    (c, enabled.attr("id").expect("an SM id").to_string())
}

/// A fresh TLS connection authenticated as `user`, before binding.
async fn authenticated(server: &TestServer, user: &str) -> Client {
    let mut c = Client::connect_plain(server.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    c.auth_scram_sha256(user, &password(user)).await;
    c
}

#[tokio::test]
async fn sm_acks_count_handled_stanzas() {
    let server = TestServer::start().await;
    server.user("romeo").await;
    let (mut romeo, _) = login_sm(&server, "romeo", "r").await;
    romeo.sync().await; // one handled stanza (the ping)
    romeo.send(&format!("<r xmlns='{SM}'/>")).await;
    let a = romeo.expect_with("<a/>", |e| e.is("a", SM)).await;
    assert_eq!(a.attr("h"), Some("1"));
    // Acknowledging more than was sent is a protocol violation.
    romeo.send(&format!("<a xmlns='{SM}' h='1000'/>")).await;
    romeo.expect_stream_error("undefined-condition").await;
}

#[tokio::test]
async fn resumption_replays_unacknowledged_and_queued_stanzas() {
    let server = TestServer::start().await;
    server.user("romeo").await;
    server.user("juliet").await;
    let (romeo, id) = login_sm(&server, "romeo", "r").await;
    let mut juliet = server.login("juliet", "j").await;
    juliet
        .send("<message to='romeo@localhost/r' type='chat'><body>one</body></message>")
        .await;
    juliet.sync().await;
    // The connection breaks without a goodbye; then a message arrives while detached.
    romeo.drop_abruptly();
    juliet
        .send("<message to='romeo@localhost/r' type='chat'><body>two</body></message>")
        .await;
    juliet.sync().await;
    let mut again = authenticated(&server, "romeo").await;
    again
        .send(&format!("<resume xmlns='{SM}' previd='{id}' h='0'/>"))
        .await;
    let resumed = again
        .expect_with("<resumed/>", |e| e.is("resumed", SM))
        .await;
    assert_eq!(resumed.attr("previd"), Some(id.as_str()));
    let first = again
        .expect_with("message one", |e| e.name == "message")
        .await;
    assert_eq!(body(&first).as_deref(), Some("one"));
    let second = again
        .expect_with("message two", |e| e.name == "message")
        .await;
    assert_eq!(body(&second).as_deref(), Some("two"));
    // Same session: its resource and presence survived.
    juliet
        .send("<iq type='get' id='p' to='romeo@localhost/r'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let ping = again
        .expect_with("the forwarded ping", |e| e.name == "iq")
        .await;
    assert_eq!(ping.attr("to"), Some("romeo@localhost/r"));
}

#[tokio::test]
async fn resuming_someone_elses_session_fails() {
    let server = TestServer::start().await;
    server.user("romeo").await;
    server.user("mallory").await;
    let (romeo, id) = login_sm(&server, "romeo", "r").await;
    romeo.drop_abruptly();
    let mut mallory = authenticated(&server, "mallory").await;
    mallory
        .send(&format!("<resume xmlns='{SM}' previd='{id}' h='0'/>"))
        .await;
    let failed = mallory
        .expect_with("<failed/>", |e| e.is("failed", SM))
        .await;
    assert!(
        failed.child("item-not-found", ns::STANZAS).is_some(),
        "{failed}"
    );
}

#[tokio::test]
async fn unacknowledged_messages_go_offline_when_resumption_times_out() {
    let server = TestServer::start_with("[limits]\nresume_timeout_secs = 1\n").await;
    server.user("romeo").await;
    server.user("juliet").await;
    let mut juliet = server.login("juliet", "j").await;
    let (mut romeo, _) = login_sm(&server, "romeo", "r").await;
    // Directed presence, so that juliet hears when the session finally ends.
    romeo.send("<presence to='juliet@localhost/j'/>").await;
    romeo.sync().await;
    juliet
        .expect_with("romeo's presence", |e| e.name == "presence")
        .await;
    juliet
        .send("<message to='romeo@localhost/r' type='chat'><body>kept</body></message>")
        .await;
    juliet.sync().await;
    romeo.drop_abruptly();
    let gone = juliet
        .expect_with("unavailable once resumption timed out", |e| {
            e.name == "presence"
        })
        .await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
    // The message romeo never acknowledged waits in offline storage.
    let mut next = server.login("romeo", "later").await;
    next.send("<presence/>").await;
    // Our own presence comes back first (RFC 6121 §4.2.2), then the message.
    let got = loop {
        let el = next.next("the offline message").await;
        if el.name == "message" {
            break el;
        }
    };
    assert_eq!(body(&got).as_deref(), Some("kept"));
    assert!(got.child("delay", ns::DELAY).is_some(), "{got}");
}

#[tokio::test]
async fn inactive_clients_get_presence_late_and_messages_at_once() {
    let server = TestServer::start().await;
    for u in ["romeo", "juliet"] {
        server.user(u).await;
    }
    let mut romeo = server.login_available("romeo", "r", 0).await;
    romeo.sync().await;
    let mut juliet = server.login("juliet", "j").await;
    romeo.send("<presence to='juliet@localhost/j'/>").await;
    romeo.sync().await;
    juliet
        .expect_with("romeo's presence", |e| e.name == "presence")
        .await;
    juliet.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    romeo
        .send("<presence to='juliet@localhost/j'><show>away</show></presence>")
        .await;
    romeo
        .send("<message to='juliet@localhost/j' type='chat'><body>urgent</body></message>")
        .await;
    romeo.sync().await;
    // Held presence is flushed just before the urgent message, in order.
    let presence = juliet
        .expect_with("the held presence", |e| e.name == "presence")
        .await;
    let message = juliet
        .expect_with("the urgent message", |e| e.name == "message")
        .await;
    assert_eq!(
        presence
            .child("show", ns::CLIENT)
            .map(|s| s.text())
            .as_deref(),
        Some("away")
    );
    assert_eq!(body(&message).as_deref(), Some("urgent"));
    // While inactive, presence updates are held and coalesced: of three
    // updates only the last arrives, once the client is active again.
    juliet.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    for show in ["xa", "dnd", "chat"] {
        romeo
            .send(&format!(
                "<presence to='juliet@localhost/j'><show>{show}</show></presence>"
            ))
            .await;
    }
    romeo.sync().await;
    juliet.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    let got = juliet.sync().await;
    let shows: Vec<_> = got
        .iter()
        .filter(|e| e.name == "presence")
        .filter_map(|e| e.child("show", ns::CLIENT).map(|s| s.text()))
        .collect();
    assert_eq!(shows, vec!["chat".to_string()], "{got:?}");
}

/// SASL2 PLAIN with Bind2, inline SM enable and a FAST token request.
async fn sasl2_login(server: &TestServer, user: &str, extra: &str) -> (Client, Element) {
    let mut c = Client::connect_plain(server.c2s).await;
    c.open_stream().await;
    let features = c.starttls().await;
    let auth = features
        .child("authentication", SASL2)
        .expect("SASL2 offered");
    assert!(auth.children().any(|m| m.text() == "PLAIN"));
    let inline = auth.child("inline", SASL2).expect("inline features");
    assert!(inline.child("bind", BIND2).is_some());
    assert!(inline.child("fast", FAST).is_some());
    let ir = B64.encode(format!("\0{user}\0{}", password(user)));
    c.send(&format!(
        "<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>{ir}</initial-response>\
         <user-agent id='{AGENT}'><software>test</software></user-agent>{extra}\
         <bind xmlns='{BIND2}'><tag>Test</tag><enable xmlns='{SM}' resume='true'/></bind></authenticate>"
    ))
    .await;
    let success = c
        .expect_with("SASL2 success", |e| e.is("success", SASL2))
        .await;
    c.expect_with("features after SASL2", |e| e.is("features", ns::STREAM))
        .await;
    (c, success)
}

#[tokio::test]
async fn sasl2_binds_and_enables_stream_management_in_one_round_trip() {
    let server = TestServer::start().await;
    server.user("romeo").await;
    let (mut c, success) = sasl2_login(&server, "romeo", "").await;
    let jid = success
        .child("authorization-identifier", SASL2)
        .map(|e| e.text())
        .unwrap();
    assert!(jid.starts_with("romeo@localhost/Test."), "{jid}");
    let bound = success.child("bound", BIND2).expect("<bound/>");
    assert!(bound.child("enabled", SM).is_some(), "{success}");
    // The session is usable at once.
    c.jid = Some(jid);
    c.sync().await;
}

#[tokio::test]
async fn fast_token_logs_in_without_the_password() {
    let server = TestServer::start().await;
    server.user("romeo").await;
    let request = format!("<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>");
    let (_c, success) = sasl2_login(&server, "romeo", &request).await;
    let token = success
        .child("token", FAST)
        .expect("a FAST token")
        .attr("token")
        .unwrap()
        .to_string();
    let proof = |token: &str| {
        let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).unwrap();
        mac.update(b"Initiator");
        let mut ir = b"romeo\0".to_vec();
        ir.extend(mac.finalize().into_bytes());
        B64.encode(ir)
    };
    let fast_auth = |ir: String| {
        format!(
            "<authenticate xmlns='{SASL2}' mechanism='HT-SHA-256-NONE'><initial-response>{ir}</initial-response>\
             <user-agent id='{AGENT}'/><fast xmlns='{FAST}'/></authenticate>"
        )
    };
    // The right token: success, with the server's proof in additional-data.
    let mut c = Client::connect_plain(server.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    c.send(&fast_auth(proof(&token))).await;
    let ok = c
        .expect_with("FAST success", |e| e.is("success", SASL2))
        .await;
    let expected = {
        let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).unwrap();
        mac.update(b"Responder");
        B64.encode(mac.finalize().into_bytes())
    };
    assert_eq!(
        ok.child("additional-data", SASL2).map(|d| d.text()),
        Some(expected)
    );
    // A wrong token: failure.
    let mut c = Client::connect_plain(server.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    c.send(&fast_auth(proof("not-the-token"))).await;
    let failure = c
        .expect_with("FAST failure", |e| e.is("failure", SASL2))
        .await;
    assert!(
        failure.child("not-authorized", ns::SASL).is_some(),
        "{failure}"
    );
}

#[tokio::test]
async fn push_is_published_when_the_client_is_away() {
    let server = TestServer::start().await;
    for u in ["romeo", "juliet", "appserver"] {
        server.user(u).await;
    }
    // The "app server" is a plain account here: it just receives the publish.
    let mut app = server.login_available("appserver", "push", 0).await;
    app.sync().await;
    let mut romeo = server.login_available("romeo", "phone", 0).await;
    romeo
        .send("<iq type='set' id='en'><enable xmlns='urn:xmpp:push:0' jid='appserver@localhost/push' node='n1'/></iq>")
        .await;
    romeo
        .expect_with("enable result", |e| {
            e.attr("id") == Some("en") && e.attr("type") == Some("result")
        })
        .await;
    romeo.close_stream().await;
    romeo.expect_closed().await;
    let mut juliet = server.login("juliet", "j").await;
    juliet
        .send("<message to='romeo@localhost' type='chat'><body>wake up</body></message>")
        .await;
    juliet.sync().await;
    let publish = app
        .expect_with("the push publish", |e| e.name == "iq")
        .await;
    let xml = publish.to_xml();
    assert!(xml.contains("urn:xmpp:push:summary"), "{xml}");
    assert!(xml.contains("node='n1'"), "{xml}");
    assert!(
        !xml.contains("wake up"),
        "the body must not leak to the app server: {xml}"
    );
}
