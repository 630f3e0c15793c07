//! RFC 6120 stream negotiation: features at each stage, SASL outcomes and
//! the stream errors that guard the parser and the session.

mod support;

use support::*;
use waxwing_proto::ns;

const SASL2: &str = "urn:xmpp:sasl:2";
const SM: &str = "urn:xmpp:sm:3";
const CSI: &str = "urn:xmpp:csi:0";

fn feature(ns: &str, name: &str) -> String {
    format!("{{{ns}}}{name}")
}

#[tokio::test]
async fn features_before_tls_are_only_required_starttls() {
    let s = TestServer::start().await;
    let mut c = Client::connect_plain(s.c2s).await;
    let f = c.open_stream().await;
    assert_eq!(child_names(&f), vec![feature(ns::TLS, "starttls")], "{f}");
    let starttls = f.child("starttls", ns::TLS).unwrap();
    assert!(starttls.child("required", ns::TLS).is_some(), "{f}");
    let h = c.header.as_ref().unwrap();
    assert_eq!(h.from.as_deref(), Some(DOMAIN));
    assert_eq!(h.version.as_deref(), Some("1.0"));
    assert!(h.id.as_deref().is_some_and(|id| !id.is_empty()));
}

#[tokio::test]
async fn features_after_tls_offer_scram_plus_and_plain() {
    let s = TestServer::start().await;
    let mut c = Client::connect_plain(s.c2s).await;
    c.open_stream().await;
    let f = c.starttls().await;
    assert_eq!(
        child_names(&f),
        vec![
            feature(ns::SASL, "mechanisms"),
            feature(ns::SASL_CB, "sasl-channel-binding"),
            // XEP-0445 pre-authenticated registration (and XEP-0401 0.3's name for it).
            feature("urn:xmpp:ibr-token:0", "register"),
            feature("urn:xmpp:invite", "register"),
            feature(SASL2, "authentication"),
        ],
        "{f}"
    );
    let mechs: Vec<String> = f
        .child("mechanisms", ns::SASL)
        .unwrap()
        .children()
        .map(|m| m.text())
        .collect();
    assert_eq!(
        mechs,
        [
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-256",
            "SCRAM-SHA-1",
            "PLAIN"
        ]
    );
    let cb: Vec<&str> = f
        .child("sasl-channel-binding", ns::SASL_CB)
        .unwrap()
        .children()
        .filter_map(|c| c.attr("type"))
        .collect();
    assert_eq!(cb, ["tls-exporter", "tls-server-end-point"]);
}

#[tokio::test]
async fn features_after_auth_are_bind_session_and_roster_features() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    let mut c = Client::connect_plain(s.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    let f = c.auth_scram_sha256("romeo", &password("romeo")).await;
    assert_eq!(
        child_names(&f),
        vec![
            feature(ns::BIND, "bind"),
            feature(SM, "sm"),
            feature(CSI, "csi"),
            feature(ns::SESSION, "session"),
            feature(ns::ROSTER_VER, "ver"),
            feature(ns::PRE_APPROVAL, "sub"),
            feature("http://jabber.org/protocol/caps", "c"),
        ],
        "{f}"
    );
    assert!(
        f.child("session", ns::SESSION)
            .unwrap()
            .child("optional", ns::SESSION)
            .is_some()
    );
    let jid = c.bind(Some("balcony")).await;
    assert_eq!(jid, "romeo@localhost/balcony");
    c.expect_nothing().await;
}

/// The features are written from a per-server cache keyed by the
/// negotiation state (`stream/c2s/features.rs`): every connection in one
/// state gets the same features, and no state gets another's.
#[tokio::test]
async fn cached_features_follow_each_connections_state() {
    let s = TestServer::start_with("[auth]\nallow_plain = false\n").await;
    s.user("romeo").await;
    let mut seen: Vec<Vec<String>> = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect_plain(s.c2s).await;
        let before_tls = c.open_stream().await.to_xml();
        let after_tls = c.starttls().await.to_xml();
        let after_auth = c
            .auth_scram_sha256("romeo", &password("romeo"))
            .await
            .to_xml();
        let mut d = Client::connect_direct_tls(s.direct_tls).await;
        let direct = d.open_stream().await.to_xml();
        seen.push(vec![before_tls, after_tls, after_auth, direct]);
    }
    assert_eq!(seen[0], seen[1], "the second round differs from the first");
    let [before_tls, after_tls, after_auth, direct] = &seen[0][..] else {
        unreachable!()
    };
    assert!(
        before_tls.contains("starttls") && !before_tls.contains("mechanism"),
        "{before_tls}"
    );
    assert!(
        after_tls.contains("SCRAM-SHA-256-PLUS") && !after_tls.contains("starttls"),
        "{after_tls}"
    );
    // The configuration is read: PLAIN is off.
    assert!(!after_tls.contains(">PLAIN<"), "{after_tls}");
    assert!(
        after_auth.contains("urn:ietf:params:xml:ns:xmpp-bind"),
        "{after_auth}"
    );
    assert!(!after_auth.contains("mechanism"), "{after_auth}");
    assert!(
        direct.contains("SCRAM-SHA-256-PLUS") && !direct.contains("starttls"),
        "{direct}"
    );
}

#[tokio::test]
async fn scram_sha256_plus_with_tls_exporter_over_starttls() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    let mut c = Client::connect_plain(s.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    c.auth_scram_sha256_plus("romeo", &password("romeo")).await;
    c.bind(Some("r")).await;
    c.expect_nothing().await;
}

#[tokio::test]
async fn sasl_failure_is_not_authorized_and_a_retry_succeeds() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    let mut c = Client::connect_plain(s.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    c.send(&plain_auth("romeo", "wrong")).await;
    c.expect(&format!(
        "<failure xmlns='{sasl}'><not-authorized/></failure>",
        sasl = ns::SASL
    ))
    .await;
    // An unknown user looks exactly like a wrong password.
    c.send(&plain_auth("nobody", "wrong")).await;
    c.expect(&format!(
        "<failure xmlns='{sasl}'><not-authorized/></failure>",
        sasl = ns::SASL
    ))
    .await;
    c.auth_plain("romeo", &password("romeo")).await;
    c.bind(Some("r")).await;
    c.expect_nothing().await;
}

#[tokio::test]
async fn three_sasl_failures_end_the_stream_with_policy_violation() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    let mut c = Client::connect_plain(s.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    for _ in 0..3 {
        c.send(&plain_auth("romeo", "wrong")).await;
        c.expect(&format!(
            "<failure xmlns='{sasl}'><not-authorized/></failure>",
            sasl = ns::SASL
        ))
        .await;
    }
    c.expect_stream_error("policy-violation").await;
}

#[tokio::test]
async fn stanza_before_auth_is_not_authorized() {
    let s = TestServer::start().await;
    // Before TLS …
    let mut c = Client::connect_plain(s.c2s).await;
    c.open_stream().await;
    c.send("<message to='juliet@localhost'><body>hi</body></message>")
        .await;
    c.expect_stream_error("not-authorized").await;
    // … and after it.
    let mut c = Client::connect_plain(s.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    c.send("<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    c.expect_stream_error("not-authorized").await;
}

#[tokio::test]
async fn header_for_unknown_host_is_host_unknown() {
    let s = TestServer::start().await;
    let mut c = Client::connect_plain(s.c2s).await;
    c.send(&stream_header("example.net")).await;
    c.expect_stream_error("host-unknown").await;
    assert!(c.header.is_some(), "a stream header precedes the error");
}

#[tokio::test]
async fn header_without_version_is_unsupported_version() {
    let s = TestServer::start().await;
    let mut c = Client::connect_plain(s.c2s).await;
    c.send(&format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' to='{DOMAIN}'>",
        ns::CLIENT,
        ns::STREAM
    ))
    .await;
    c.expect_stream_error("unsupported-version").await;
}

#[tokio::test]
async fn dtd_entities_comments_and_pis_are_restricted_xml() {
    let s = TestServer::start().await;
    let header = stream_header(DOMAIN);
    let open = header.trim_start_matches("<?xml version='1.0'?>");
    let cases = [
        (
            "DTD before the root",
            format!("<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY x 'y'>]>{open}"),
        ),
        ("DTD inside the stream", format!("{header}<!DOCTYPE foo>")),
        (
            "undeclared entity reference",
            format!("{header}<message to='a@localhost'><body>&x;</body></message>"),
        ),
        (
            "comment",
            format!("{header}<message to='a@localhost'><!-- hi --><body>x</body></message>"),
        ),
        (
            "processing instruction",
            format!("{header}<message to='a@localhost'><?pi data?><body>x</body></message>"),
        ),
    ];
    for (what, xml) in cases {
        let mut c = Client::connect_plain(s.c2s).await;
        c.send(&xml).await;
        let err = c.next(&format!("stream error for {what}")).await;
        let err = if err.is("features", ns::STREAM) {
            c.next(&format!("stream error for {what}")).await
        } else {
            err
        };
        assert!(
            err.is("error", ns::STREAM)
                && err.child("restricted-xml", ns::STREAMS_ERRORS).is_some(),
            "{what}: expected <restricted-xml/>, got {err}"
        );
        c.expect_closed().await;
    }
}

#[tokio::test]
async fn oversized_stanza_is_policy_violation() {
    let s = TestServer::start_with("[limits]\nmax_stanza_bytes = 10000\n").await;
    s.user("romeo").await;
    let mut c = s.login("romeo", "r").await;
    // Just under the limit is fine.
    c.send(&format!(
        "<message to='romeo@localhost/r' type='chat'><body>{}</body></message>",
        "a".repeat(9000)
    ))
    .await;
    c.expect_with("the 9000-byte message", |m| m.name == "message")
        .await;
    let body = "a".repeat(20_000);
    c.send(&format!(
        "<message to='romeo@localhost/r'><body>{body}</body></message>"
    ))
    .await;
    c.expect_stream_error("policy-violation").await;
}

#[tokio::test]
async fn invalid_utf8_is_not_well_formed() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    let mut c = s.login("romeo", "r").await;
    c.send_bytes(b"<message to='romeo@localhost/r'><body>\xc3\x28</body></message>")
        .await;
    c.expect_stream_error("not-well-formed").await;
}

#[tokio::test]
async fn spoofed_from_is_invalid_from() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut c = s.login("romeo", "r").await;
    // Our own bare and full JIDs are fine.
    c.send("<message from='romeo@localhost' to='romeo@localhost/r'><body>1</body></message>")
        .await;
    c.expect("<message from='romeo@localhost/r'><body>1</body></message>")
        .await;
    c.send(
        "<message from='juliet@localhost/balcony' to='romeo@localhost/r'><body>2</body></message>",
    )
    .await;
    c.expect_stream_error("invalid-from").await;
}

#[tokio::test]
async fn unauthenticated_connection_times_out() {
    let s = TestServer::start_with("[limits]\nauth_timeout_secs = 1\n").await;
    let mut c = Client::connect_plain(s.c2s).await;
    c.open_stream().await;
    c.expect_stream_error("connection-timeout").await;
}

#[tokio::test]
async fn direct_tls_listener_negotiates_without_starttls() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    let mut c = Client::connect_direct_tls(s.direct_tls).await;
    let f = c.open_stream().await;
    assert!(f.child("starttls", ns::TLS).is_none(), "{f}");
    let mechs: Vec<String> = f
        .child("mechanisms", ns::SASL)
        .expect("mechanisms on direct TLS")
        .children()
        .map(|m| m.text())
        .collect();
    assert!(mechs.iter().any(|m| m == "SCRAM-SHA-256-PLUS"), "{mechs:?}");
    assert!(mechs.iter().any(|m| m == "PLAIN"), "{mechs:?}");
    c.auth_scram_sha256_plus("romeo", &password("romeo")).await;
    assert_eq!(c.bind(Some("r")).await, "romeo@localhost/r");
    c.expect_nothing().await;
}

#[tokio::test]
async fn data_pipelined_after_starttls_is_refused() {
    let s = TestServer::start().await;
    let mut c = Client::connect_plain(s.c2s).await;
    c.open_stream().await;
    c.send(&format!(
        "<starttls xmlns='{}'/><iq type='get' id='x'><query xmlns='jabber:iq:roster'/></iq>",
        ns::TLS
    ))
    .await;
    c.expect_stream_error("policy-violation").await;
}
