//! XEP-0138 stream compression on c2s: offered only when enabled and only
//! after authentication, a whole session compressed, and a decompression
//! bomb ended with `policy-violation`.

mod support;

use support::*;
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

const FEATURE: &str = "http://jabber.org/features/compress";
const PROTOCOL: &str = "http://jabber.org/protocol/compress";

async fn server() -> TestServer {
    let s = TestServer::start_with("[compression]\nenabled = true\n").await;
    s.user("juliet").await;
    s.user("romeo").await;
    s
}

fn offers_zlib(features: &Element) -> bool {
    features.child("compression", FEATURE).is_some_and(|c| {
        c.children()
            .any(|m| m.name == "method" && m.text() == "zlib")
    })
}

/// Connects and authenticates; returns the client and the post-auth features.
async fn authenticated(s: &TestServer, user: &str) -> (Client, Element) {
    let mut c = Client::connect_plain(s.c2s).await;
    let f = c.open_stream().await;
    assert!(!offers_zlib(&f), "never before authentication: {f}");
    let f = c.starttls().await;
    assert!(!offers_zlib(&f), "never before authentication: {f}");
    c.auth_scram_sha256(user, &password(user)).await;
    let f = c.features.clone().expect("features after SASL");
    (c, f)
}

#[tokio::test]
async fn a_whole_session_runs_compressed() {
    let s = server().await;
    let (mut juliet, f) = authenticated(&s, "juliet").await;
    assert!(offers_zlib(&f), "{f}");
    let f = juliet.compress().await;
    assert!(!offers_zlib(&f), "not offered twice: {f}");
    assert!(f.child("bind", ns::BIND).is_some(), "{f}");
    juliet.bind(Some("balcony")).await;
    juliet.get_roster().await;
    juliet.available(0).await;
    let mut romeo = s.login_available("romeo", "orchard", 0).await;
    romeo.sync().await;
    juliet.sync().await;

    for i in 0..20 {
        juliet
            .send(&format!(
                "<message to='romeo@localhost' type='chat' id='j{i}'><body>Wherefore art thou, Romeo? ({i})</body>\
                 <active xmlns='http://jabber.org/protocol/chatstates'/></message>"
            ))
            .await;
        let m = romeo
            .expect_with("juliet's message", |e| e.name == "message")
            .await;
        assert!(
            m.child("body", ns::CLIENT)
                .is_some_and(|b| b.text().ends_with(&format!("({i})")))
        );
        romeo
            .send(&format!(
                "<message to='juliet@localhost/balcony' type='chat' id='r{i}'><body>Here, fair one ({i})</body></message>"
            ))
            .await;
        let m = juliet
            .expect_with("romeo's answer", |e| e.name == "message")
            .await;
        assert_eq!(m.attr("from"), Some("romeo@localhost/orchard"), "{m}");
    }
    let (out, inn) = juliet.wire_bytes().expect("compressed");
    assert!(out > 0 && inn > 0);
    assert!(juliet.sync().await.is_empty());
}

#[tokio::test]
async fn off_by_default_and_only_zlib() {
    let s = TestServer::start().await;
    s.user("juliet").await;
    let (mut c, f) = authenticated(&s, "juliet").await;
    assert!(!offers_zlib(&f), "{f}");
    c.send(&format!(
        "<compress xmlns='{PROTOCOL}'><method>zlib</method></compress>"
    ))
    .await;
    c.expect(&format!(
        "<failure xmlns='{PROTOCOL}'><setup-failed/></failure>"
    ))
    .await;

    let s = server().await;
    let (mut c, _) = authenticated(&s, "juliet").await;
    c.send(&format!(
        "<compress xmlns='{PROTOCOL}'><method>lzw</method></compress>"
    ))
    .await;
    c.expect(&format!(
        "<failure xmlns='{PROTOCOL}'><unsupported-method/></failure>"
    ))
    .await;
    // The stream goes on uncompressed.
    c.bind(Some("r")).await;
}

#[tokio::test]
async fn a_decompression_bomb_ends_the_stream_with_policy_violation() {
    let s = server().await;
    let (mut c, _) = authenticated(&s, "juliet").await;
    c.compress().await;
    c.bind(Some("r")).await;
    // 32 MiB of whitespace (valid between stanzas) in about 32 KiB of zlib.
    c.send_bytes(&vec![b' '; 32 << 20]).await;
    c.expect_stream_error("policy-violation").await;
}
