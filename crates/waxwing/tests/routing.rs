//! RFC 6121 §8.5 delivery rules for local accounts, and the errors the
//! router answers with (RFC 6120 §8.3, §10).

mod support;

use support::*;
use waxwing_proto::ns;

fn error_pattern(name: &str, from: &str, ty: &str, condition: &str) -> String {
    format!(
        "<{name} type='error' from='{from}'><error type='{ty}'><{condition} xmlns='{}'/></error></{name}>",
        ns::STANZAS
    )
}

/// juliet with four resources: a and b at priority 5, c at 1, d at -1; and romeo.
async fn juliet_with_four_resources(s: &TestServer) -> (Client, [Client; 4]) {
    s.user("romeo").await;
    s.user("juliet").await;
    let romeo = s.login_available("romeo", "r", 0).await;
    let a = s.login_available("juliet", "a", 5).await;
    let b = s.login_available("juliet", "b", 5).await;
    let c = s.login_available("juliet", "c", 1).await;
    let d = s.login_available("juliet", "d", -1).await;
    let mut all = [a, b, c, d];
    // Siblings saw each other come online; forget that.
    for j in &mut all {
        let got = j.sync().await;
        if std::env::var("DEBUG_SYNC").is_ok() {
            eprintln!(
                "{} drained {:?}",
                j.full(),
                got.iter().map(|e| e.to_string()).collect::<Vec<_>>()
            );
        }
    }
    (romeo, all)
}

#[tokio::test]
async fn message_to_bare_jid_reaches_highest_non_negative_priority_resources() {
    let s = TestServer::start().await;
    let (mut romeo, [mut a, mut b, mut c, mut d]) = juliet_with_four_resources(&s).await;
    for ty in ["chat", "normal"] {
        romeo
            .send(&format!(
                "<message to='juliet@localhost' type='{ty}'><body>hi {ty}</body></message>"
            ))
            .await;
        romeo.expect_nothing().await;
        let want = format!(
            "<message from='romeo@localhost/r' to='juliet@localhost' type='{ty}'><body>hi {ty}</body></message>"
        );
        a.expect(&want).await;
        b.expect(&want).await;
        c.expect_nothing().await;
        d.expect_nothing().await;
    }
}

#[tokio::test]
async fn negative_priority_resources_never_get_bare_jid_messages() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut romeo = s.login_available("romeo", "r", 0).await;
    let mut neg = s.login_available("juliet", "neg", -1).await;
    romeo
        .send("<message to='juliet@localhost' type='chat'><body>stored</body></message>")
        .await;
    // Not an error: with only negative-priority resources the message is
    // handled as if none were available (RFC 6121 §8.5.2.1.1), i.e. stored.
    romeo.expect_nothing().await;
    neg.expect_nothing().await;
    let mut later = s.login("juliet", "later").await;
    let got = later.available(0).await;
    assert!(
        got.iter()
            .any(|m| matches_pattern(m, "<message type='chat'><body>stored</body></message>")),
        "{got:?}"
    );
    neg.expect("<presence from='juliet@localhost/later'/>")
        .await;
    neg.expect_nothing().await;
}

#[tokio::test]
async fn message_to_full_jid_reaches_exactly_that_resource() {
    let s = TestServer::start().await;
    let (mut romeo, [mut a, mut b, mut c, mut d]) = juliet_with_four_resources(&s).await;
    // Even the negative-priority one and the low-priority one.
    for (target, who) in [("d", 3), ("c", 2)] {
        romeo
            .send(&format!(
                "<message to='juliet@localhost/{target}' type='chat'><body>only {target}</body></message>"
            ))
            .await;
        romeo.expect_nothing().await;
        let want =
            format!("<message to='juliet@localhost/{target}'><body>only {target}</body></message>");
        for (i, j) in [&mut a, &mut b, &mut c, &mut d].into_iter().enumerate() {
            if i == who {
                j.expect(&want).await;
            } else {
                j.expect_nothing().await;
            }
        }
    }
}

#[tokio::test]
async fn chat_to_unavailable_full_jid_follows_bare_jid_rules() {
    let s = TestServer::start().await;
    let (mut romeo, [mut a, mut b, mut c, mut d]) = juliet_with_four_resources(&s).await;
    romeo
        .send("<message to='juliet@localhost/gone' type='chat'><body>where</body></message>")
        .await;
    romeo.expect_nothing().await;
    a.expect("<message from='romeo@localhost/r' type='chat'><body>where</body></message>")
        .await;
    b.expect("<message from='romeo@localhost/r' type='chat'><body>where</body></message>")
        .await;
    c.expect_nothing().await;
    d.expect_nothing().await;
}

#[tokio::test]
async fn groupchat_to_bare_or_unavailable_full_jid_is_service_unavailable() {
    let s = TestServer::start().await;
    let (mut romeo, [mut a, mut b, mut c, mut d]) = juliet_with_four_resources(&s).await;
    for to in ["juliet@localhost", "juliet@localhost/gone"] {
        romeo
            .send(&format!(
                "<message to='{to}' type='groupchat' id='gc'><body>x</body></message>"
            ))
            .await;
        romeo
            .expect(&error_pattern(
                "message",
                to,
                "cancel",
                "service-unavailable",
            ))
            .await;
    }
    for j in [&mut a, &mut b, &mut c, &mut d] {
        j.expect_nothing().await;
    }
}

#[tokio::test]
async fn message_of_type_error_is_dropped() {
    let s = TestServer::start().await;
    let (mut romeo, [mut a, mut b, mut c, mut d]) = juliet_with_four_resources(&s).await;
    for to in [
        "juliet@localhost",
        "juliet@localhost/gone",
        "nobody@localhost",
    ] {
        romeo
            .send(&format!(
                "<message to='{to}' type='error'><error type='cancel'><item-not-found xmlns='{}'/></error></message>",
                ns::STANZAS
            ))
            .await;
    }
    romeo.expect_nothing().await;
    for j in [&mut a, &mut b, &mut c, &mut d] {
        j.expect_nothing().await;
    }
}

#[tokio::test]
async fn message_to_nonexistent_user_is_service_unavailable() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    let mut romeo = s.login_available("romeo", "r", 0).await;
    for to in ["nobody@localhost", "nobody@localhost/res"] {
        romeo
            .send(&format!(
                "<message to='{to}' type='chat' id='m1'><body>anyone?</body></message>"
            ))
            .await;
        romeo
            .expect(&error_pattern(
                "message",
                to,
                "cancel",
                "service-unavailable",
            ))
            .await;
    }
}

#[tokio::test]
async fn iq_to_full_jid_reaches_that_resource_and_to_unavailable_one_is_service_unavailable() {
    let s = TestServer::start().await;
    let (mut romeo, [mut a, mut b, mut c, mut d]) = juliet_with_four_resources(&s).await;
    romeo
        .send(&format!(
            "<iq type='get' id='v1' to='juliet@localhost/c'><query xmlns='{}'/></iq>",
            ns::VERSION
        ))
        .await;
    c.expect(&format!(
        "<iq type='get' id='v1' from='romeo@localhost/r' to='juliet@localhost/c'><query xmlns='{}'/></iq>",
        ns::VERSION
    ))
    .await;
    c.send(&format!(
        "<iq type='result' id='v1' to='romeo@localhost/r'><query xmlns='{}'><name>x</name></query></iq>",
        ns::VERSION
    ))
    .await;
    romeo
        .expect("<iq type='result' id='v1' from='juliet@localhost/c'/>")
        .await;
    romeo
        .send(&format!(
            "<iq type='get' id='v2' to='juliet@localhost/gone'><query xmlns='{}'/></iq>",
            ns::VERSION
        ))
        .await;
    romeo
        .expect(&error_pattern(
            "iq",
            "juliet@localhost/gone",
            "cancel",
            "service-unavailable",
        ))
        .await;
    for j in [&mut a, &mut b, &mut d] {
        j.expect_nothing().await;
    }
}

#[tokio::test]
async fn iq_in_unknown_namespace_is_service_unavailable() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut romeo = s.login_available("romeo", "r", 0).await;
    for (to, from) in [
        (" to='localhost'", "localhost"),
        (" to='juliet@localhost'", "juliet@localhost"),
        ("", "romeo@localhost"),
    ] {
        romeo
            .send(&format!(
                "<iq type='get' id='u'{to}><query xmlns='urn:example:unknown'/></iq>"
            ))
            .await;
        let e = romeo
            .expect_with("service-unavailable for an unknown namespace", |e| {
                e.name == "iq"
                    && e.attr("id") == Some("u")
                    && has_stanza_error(e, "service-unavailable")
            })
            .await;
        if !to.is_empty() {
            assert_eq!(e.attr("from"), Some(from), "{e}");
        }
    }
}

#[tokio::test]
async fn stanzas_to_remote_domains_are_remote_server_not_found() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    let mut romeo = s.login_available("romeo", "r", 0).await;
    romeo
        .send("<message to='mercutio@example.org' type='chat' id='r1'><body>hi</body></message>")
        .await;
    romeo
        .expect(&error_pattern(
            "message",
            "mercutio@example.org",
            "cancel",
            "remote-server-not-found",
        ))
        .await;
    romeo
        .send(&format!(
            "<iq type='get' id='r2' to='example.org'><ping xmlns='{}'/></iq>",
            ns::PING
        ))
        .await;
    romeo
        .expect(&error_pattern(
            "iq",
            "example.org",
            "cancel",
            "remote-server-not-found",
        ))
        .await;
}
