//! XEP-0160 offline storage with XEP-0203 delay stamps.

mod support;

use support::*;
use waxwing_proto::ns;

#[tokio::test]
async fn messages_to_offline_user_arrive_in_order_with_delay_at_next_presence() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut romeo = s.login_available("romeo", "r", 0).await;
    for i in 1..=3 {
        romeo
            .send(&format!(
                "<message to='juliet@localhost' type='chat' id='m{i}'><body>msg {i}</body></message>"
            ))
            .await;
    }
    romeo.expect_nothing().await;
    // Binding alone delivers nothing; initial presence does.
    let mut juliet = s.login("juliet", "j").await;
    juliet.expect_nothing().await;
    let got = juliet.available(0).await;
    let msgs: Vec<_> = got.iter().filter(|e| e.name == "message").collect();
    assert_eq!(msgs.len(), 3, "{got:?}");
    for (i, m) in msgs.iter().enumerate() {
        let n = i + 1;
        assert!(
            matches_pattern(
                m,
                &format!(
                    "<message from='romeo@localhost/r' to='juliet@localhost/j' type='chat' id='m{n}'>\
                     <body>msg {n}</body><delay xmlns='{}' from='localhost' stamp='{{any}}'/></message>",
                    ns::DELAY
                )
            ),
            "{m}"
        );
        let stamp = m.child("delay", ns::DELAY).unwrap().attr("stamp").unwrap();
        assert!(
            stamp.ends_with('Z') && stamp.contains('T'),
            "XEP-0082 stamp: {stamp}"
        );
    }
    // Delivered once: a second resource gets nothing.
    let mut phone = s.login("juliet", "phone").await;
    let got = phone.available(0).await;
    assert!(got.iter().all(|e| e.name != "message"), "{got:?}");
}

#[tokio::test]
async fn offline_quota_bounces_the_excess_with_service_unavailable() {
    let s = TestServer::start_with("[limits]\noffline_quota = 2\n").await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut romeo = s.login_available("romeo", "r", 0).await;
    for i in 1..=2 {
        romeo
            .send(&format!(
                "<message to='juliet@localhost' id='q{i}'><body>{i}</body></message>"
            ))
            .await;
    }
    romeo.expect_nothing().await;
    romeo
        .send("<message to='juliet@localhost' id='q3'><body>3</body></message>")
        .await;
    romeo
        .expect(&format!(
            "<message type='error' id='q3' from='juliet@localhost'><error type='cancel'><service-unavailable xmlns='{}'/></error></message>",
            ns::STANZAS
        ))
        .await;
    let mut juliet = s.login("juliet", "j").await;
    let got = juliet.available(0).await;
    let bodies: Vec<String> = got
        .iter()
        .filter(|e| e.name == "message")
        .map(|m| m.child("body", ns::CLIENT).unwrap().text())
        .collect();
    assert_eq!(bodies, ["1", "2"]);
}

#[tokio::test]
async fn chat_state_only_message_is_not_stored() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut romeo = s.login_available("romeo", "r", 0).await;
    romeo
        .send("<message to='juliet@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    romeo
        .send("<message to='juliet@localhost' type='chat'><body>real</body></message>")
        .await;
    // Neither is bounced.
    romeo.expect_nothing().await;
    let mut juliet = s.login("juliet", "j").await;
    let got = juliet.available(0).await;
    let msgs: Vec<_> = got.iter().filter(|e| e.name == "message").collect();
    assert_eq!(msgs.len(), 1, "{got:?}");
    assert!(matches_pattern(
        msgs[0],
        "<message><body>real</body></message>"
    ));
}

/// Messages stored before a restart reach the account at its first login
/// after it: the server learns at start who has messages waiting.
#[tokio::test]
async fn messages_stored_before_a_restart_arrive_after_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (running, port) = start_on(dir.path()).await;
        for u in ["romeo", "juliet", "nurse"] {
            create_account(&running, u, DOMAIN).await;
        }
        let mut romeo = login_on(port, "romeo").await;
        romeo
            .send("<message to='juliet@localhost' type='chat' id='m1'><body>wherefore</body></message>")
            .await;
        // The nurse logs in without messages, before and after: no read needed.
        let mut nurse = login_on(port, "nurse").await;
        let got = nurse.available(0).await;
        assert!(got.iter().all(|e| e.name != "message"), "{got:?}");
        romeo.expect_nothing().await;
        running.stop().await;
    }
    let (running, port) = start_on(dir.path()).await;
    let mut juliet = login_on(port, "juliet").await;
    let got = juliet.available(0).await;
    let msgs: Vec<_> = got.iter().filter(|e| e.name == "message").collect();
    assert_eq!(msgs.len(), 1, "{got:?}");
    assert_eq!(msgs[0].attr("id"), Some("m1"));
    // Delivered once.
    let mut again = login_on(port, "juliet").await;
    let got = again.available(0).await;
    assert!(got.iter().all(|e| e.name != "message"), "{got:?}");
    running.stop().await;
}
