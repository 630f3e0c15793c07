//! RFC 6120 §7 resource binding and session bookkeeping.

mod support;

use support::*;
use waxwing_proto::ns;

#[tokio::test]
async fn bind_conflict_closes_the_old_session_and_the_new_one_works() {
    let s = TestServer::start().await;
    s.user("juliet").await;
    let mut old = s.login("juliet", "balcony").await;
    let mut new = s.login("juliet", "balcony").await;
    assert_eq!(new.full(), "juliet@localhost/balcony");
    old.expect_stream_error("conflict").await;
    new.send("<message to='juliet@localhost/balcony'><body>still here</body></message>")
        .await;
    new.expect("<message from='juliet@localhost/balcony'><body>still here</body></message>")
        .await;
    assert_eq!(s.running.server.sessions.count(), 1);
}

/// A client's connection remembers the session its latest `to` named
/// (the router's `ClientMemo`): messages to one full JID must still find
/// the session that replaced that one, and, once it is gone, the account.
#[tokio::test]
async fn messages_to_one_full_jid_follow_its_session_through_replacement_and_logout() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut romeo = s.online("romeo", "desk").await;
    let mut old = s.online("juliet", "balcony").await;
    let message = |id: &str| {
        format!(
            "<message to='juliet@localhost/balcony' type='chat' id='{id}'><body>{id}</body></message>"
        )
    };
    romeo.send(&message("m1")).await;
    old.expect("<message id='m1'><body>m1</body></message>")
        .await;

    let mut new = s.online("juliet", "balcony").await;
    old.expect_stream_error("conflict").await;
    romeo.send(&message("m2")).await;
    new.expect("<message id='m2'><body>m2</body></message>")
        .await;

    new.close_stream().await;
    new.expect_closed().await;
    // The session's end is processed after the socket closes, and nothing
    // tells another client when: look after each server round trip, within
    // the harness's deadline.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while s.running.server.sessions.count() != 1 && tokio::time::Instant::now() < deadline {
        romeo
            .iq("get", Some("localhost"), "<ping xmlns='urn:xmpp:ping'/>")
            .await;
    }
    assert_eq!(s.running.server.sessions.count(), 1);
    // No session left: offline storage, delivered at the next login.
    romeo.send(&message("m3")).await;
    romeo.expect_nothing().await;
    let mut back = s.login("juliet", "balcony").await;
    let got = back.available(0).await;
    assert!(
        got.iter()
            .any(|e| e.name == "message" && e.attr("id") == Some("m3")),
        "{got:?}"
    );
}

#[tokio::test]
async fn server_generates_a_resource_when_none_is_requested() {
    let s = TestServer::start().await;
    s.user("juliet").await;
    let mut c = Client::connect_plain(s.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    c.auth_plain("juliet", &password("juliet")).await;
    let jid = c.bind(None).await;
    let resource = jid
        .strip_prefix("juliet@localhost/")
        .unwrap_or_else(|| panic!("{jid}"));
    assert!(!resource.is_empty());
    // A second one gets a different resource.
    let mut d = Client::connect_plain(s.c2s).await;
    d.open_stream().await;
    d.starttls().await;
    d.auth_plain("juliet", &password("juliet")).await;
    assert_ne!(d.bind(None).await, jid);
    c.expect_nothing().await;
}

#[tokio::test]
async fn legacy_session_iq_is_answered() {
    let s = TestServer::start().await;
    s.user("juliet").await;
    let mut c = s.login("juliet", "r").await;
    c.send(&format!(
        "<iq type='set' id='sess'><session xmlns='{}'/></iq>",
        ns::SESSION
    ))
    .await;
    let r = c.expect("<iq type='result' id='sess'/>").await;
    assert!(!r.has_children(), "{r}");
    c.send(&format!(
        "<iq type='set' id='sess2' to='localhost'><session xmlns='{}'/></iq>",
        ns::SESSION
    ))
    .await;
    c.expect("<iq type='result' id='sess2'/>").await;
}

#[tokio::test]
async fn too_many_resources_is_resource_constraint() {
    let s = TestServer::start_with("[limits]\nmax_resources = 2\n").await;
    s.user("juliet").await;
    let _a = s.login("juliet", "a").await;
    let _b = s.login("juliet", "b").await;
    let mut c = Client::connect_plain(s.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    c.auth_plain("juliet", &password("juliet")).await;
    c.send(&format!(
        "<iq type='set' id='b3'><bind xmlns='{}'><resource>c</resource></bind></iq>",
        ns::BIND
    ))
    .await;
    c.expect(&format!(
        "<iq type='error' id='b3'><error type='wait'><resource-constraint xmlns='{}'/></error></iq>",
        ns::STANZAS
    ))
    .await;
    // Rebinding an existing resource is a replacement, not a new one.
    let mut a2 = Client::connect_plain(s.c2s).await;
    a2.open_stream().await;
    a2.starttls().await;
    a2.auth_plain("juliet", &password("juliet")).await;
    assert_eq!(a2.bind(Some("a")).await, "juliet@localhost/a");
}

/// RFC 6120 §4.9.3.16: after a password change the account's other
/// sessions must authenticate again; the one that changed it carries on.
#[tokio::test]
async fn password_change_resets_the_other_sessions() {
    let server = TestServer::start().await;
    server.user("romeo").await;
    let mut desk = server.login("romeo", "desk").await;
    let mut phone = server.login("romeo", "phone").await;
    phone.sync().await;
    desk.send(
        "<iq type='set' id='pw'><query xmlns='jabber:iq:register'>\
         <username>romeo</username><password>a-brand-new-password</password></query></iq>",
    )
    .await;
    desk.expect("<iq type='result' id='pw'/>").await;
    phone.expect_stream_error("reset").await;
    desk.sync().await;
}
