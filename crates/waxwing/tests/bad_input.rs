//! Issue #4: a table of hostile inputs over raw sockets. Each case asserts
//! the exact RFC 6120 error, then that the server still serves a fresh
//! login and that an unrelated logged-in session still gets its messages.

mod support;

use support::*;
use waxwing_proto::ns;

/// Where in the stream the bad bytes are sent.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// As the very first bytes on a fresh TCP connection.
    Start,
    /// After a valid stream header and the server's features (plaintext).
    AfterHeader,
    /// After STARTTLS, SCRAM and bind.
    Bound,
}

/// What the server must answer.
#[derive(Clone, Copy, Debug)]
enum Expect {
    StreamError(&'static str),
    /// A stanza error with this condition comes back; the stream lives on.
    StanzaError(&'static str),
    /// The message reaches the bystander (`bob`).
    DeliveredToBob,
}

struct Case {
    name: &'static str,
    phase: Phase,
    input: Vec<u8>,
    expect: Expect,
}

fn case(name: &'static str, phase: Phase, input: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        name,
        phase,
        input: input.into(),
        expect,
    }
}

fn header_with(attrs: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{}' {attrs}>",
        ns::STREAM
    )
}

fn start_cases() -> Vec<Case> {
    use Expect::StreamError as E;
    use Phase::Start as S;
    vec![
        case(
            "garbage before the header",
            S,
            "hello world",
            E("not-well-formed"),
        ),
        case(
            "binary junk",
            S,
            b"\x16\x03\x01\x02\x00".to_vec(),
            E("not-well-formed"),
        ),
        case(
            "root in the wrong namespace",
            S,
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://example.com/streams' to='localhost' version='1.0'>",
            E("invalid-namespace"),
        ),
        case(
            "root prefix other than stream",
            S,
            format!(
                "<foo:stream xmlns='jabber:client' xmlns:foo='{}' to='localhost' version='1.0'>",
                ns::STREAM
            ),
            E("bad-namespace-prefix"),
        ),
        case(
            "unbound stream prefix",
            S,
            "<stream:stream xmlns='jabber:client' to='localhost' version='1.0'>",
            E("bad-namespace-prefix"),
        ),
        case(
            "jabber:server on the client port",
            S,
            format!(
                "<stream:stream xmlns='jabber:server' xmlns:stream='{}' to='localhost' version='1.0'>",
                ns::STREAM
            ),
            E("invalid-namespace"),
        ),
        case(
            "no 'to'",
            S,
            header_with("version='1.0'"),
            E("host-unknown"),
        ),
        case(
            "unknown host",
            S,
            header_with("to='example.net' version='1.0'"),
            E("host-unknown"),
        ),
        case(
            "host that is not a domain",
            S,
            header_with("to='a b' version='1.0'"),
            E("host-unknown"),
        ),
        case(
            "no version",
            S,
            header_with("to='localhost'"),
            E("unsupported-version"),
        ),
        case(
            "version 0.9",
            S,
            header_with("to='localhost' version='0.9'"),
            E("unsupported-version"),
        ),
        case(
            "DOCTYPE",
            S,
            "<?xml version='1.0'?><!DOCTYPE stream [ ]><stream:stream>",
            E("restricted-xml"),
        ),
        case(
            "billion laughs",
            S,
            "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;'>]><lolz>&lol2;</lolz>",
            E("restricted-xml"),
        ),
        case(
            "external entity (XXE)",
            S,
            "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]><x>&xxe;</x>",
            E("restricted-xml"),
        ),
        case(
            "processing instruction before the root",
            S,
            "<?php echo 1; ?>",
            E("restricted-xml"),
        ),
    ]
}

fn after_header_cases() -> Vec<Case> {
    use Expect::StreamError as E;
    use Phase::AfterHeader as H;
    vec![
        case(
            "undeclared entity reference",
            H,
            "<message>&foo;</message>",
            E("restricted-xml"),
        ),
        case("comment", H, "<!-- hi -->", E("restricted-xml")),
        case(
            "processing instruction",
            H,
            "<?pi data?>",
            E("restricted-xml"),
        ),
        case(
            "XML declaration inside the stream",
            H,
            "<?xml version='1.0'?>",
            E("restricted-xml"),
        ),
        case(
            "invalid UTF-8 sequence",
            H,
            b"<message><body>\xc3\x28</body></message>".to_vec(),
            E("not-well-formed"),
        ),
        case(
            "overlong UTF-8 encoding",
            H,
            b"<message><body>\xc0\xaf</body></message>".to_vec(),
            E("not-well-formed"),
        ),
        case(
            "UTF-8 encoded surrogate",
            H,
            b"<message><body>\xed\xa0\x80</body></message>".to_vec(),
            E("not-well-formed"),
        ),
        case(
            "NUL byte",
            H,
            b"<message><body>a\x00b</body></message>".to_vec(),
            E("not-well-formed"),
        ),
        case(
            "character reference to NUL",
            H,
            "<message><body>&#0;</body></message>",
            E("not-well-formed"),
        ),
        case(
            "mismatched tags",
            H,
            "<message></presence>",
            E("not-well-formed"),
        ),
        case(
            "'<' in an attribute value",
            H,
            "<message id='a<b'/>",
            E("not-well-formed"),
        ),
        case(
            "duplicate attribute",
            H,
            "<message id='a' id='b'/>",
            E("not-well-formed"),
        ),
        case(
            "stanza before authentication",
            H,
            "<message to='bob@localhost'><body>x</body></message>",
            E("not-authorized"),
        ),
        case(
            "iq before authentication",
            H,
            "<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>",
            E("not-authorized"),
        ),
        case(
            "text between stanzas",
            H,
            "this is not xml",
            E("bad-format"),
        ),
        case(
            "a second stream header",
            H,
            format!(
                "<stream:stream xmlns='jabber:client' xmlns:stream='{}' to='localhost' version='1.0'>",
                ns::STREAM
            ),
            E("bad-format"),
        ),
    ]
}

fn bound_cases() -> Vec<Case> {
    use Expect::{DeliveredToBob as D, StanzaError as Z, StreamError as E};
    use Phase::Bound as B;
    let deep = format!(
        "<message>{}{}</message>",
        "<a>".repeat(10_000),
        "</a>".repeat(10_000)
    );
    let attrs: String = (0..10_000).map(|i| format!(" a{i}='x'")).collect();
    let many_attrs = format!("<message{attrs}/>");
    let oversized = format!(
        "<message to='bob@localhost'><body>{}</body></message>",
        "x".repeat(300_000)
    );
    let endless_tag = format!("<message to='{}", "x".repeat(300_000));
    let long_local = format!(
        "<message to='{}@localhost'><body>x</body></message>",
        "a".repeat(1024)
    );
    let long_resource = format!(
        "<message to='bob@localhost/{}'><body>x</body></message>",
        "r".repeat(1024)
    );
    vec![
        case("oversized stanza", B, oversized, E("policy-violation")),
        case(
            "start tag that never ends",
            B,
            endless_tag,
            E("policy-violation"),
        ),
        case("10,000-deep nesting", B, deep, E("policy-violation")),
        case("10,000 attributes", B, many_attrs, E("policy-violation")),
        case(
            "stanza in jabber:server",
            B,
            "<message xmlns='jabber:server' to='bob@localhost'/>",
            E("invalid-namespace"),
        ),
        case(
            "unknown top-level element",
            B,
            "<foo/>",
            E("unsupported-stanza-type"),
        ),
        case(
            "spoofed from",
            B,
            "<message from='bob@localhost/x' to='bob@localhost'><body>x</body></message>",
            E("invalid-from"),
        ),
        case(
            "stream header inside the session",
            B,
            format!(
                "<stream:stream xmlns='jabber:client' xmlns:stream='{}' to='localhost' version='1.0'>",
                ns::STREAM
            ),
            E("bad-format"),
        ),
        case(
            "JID with two @ and a space",
            B,
            "<message to='a b@@localhost' id='m'><body>x</body></message>",
            Z("jid-malformed"),
        ),
        case("over-long localpart", B, long_local, Z("jid-malformed")),
        case(
            "over-long resourcepart",
            B,
            long_resource,
            Z("jid-malformed"),
        ),
        case(
            "forbidden code point in localpart",
            B,
            "<message to='\u{2603}snow@localhost' id='m'><body>x</body></message>",
            Z("jid-malformed"),
        ),
        case(
            "empty localpart",
            B,
            "<message to='@localhost' id='m'><body>x</body></message>",
            Z("jid-malformed"),
        ),
        case(
            "empty resourcepart",
            B,
            "<message to='bob@localhost/' id='m'><body>x</body></message>",
            Z("jid-malformed"),
        ),
        case(
            "fullwidth localpart is case-folded",
            B,
            "<message to='\u{ff22}\u{ff2f}\u{ff22}@localhost' type='chat'><body>bad-input-probe</body></message>",
            D,
        ),
        case(
            "upper-case domain and localpart are folded",
            B,
            "<message to='BOB@LOCALHOST' type='chat'><body>bad-input-probe</body></message>",
            D,
        ),
        case(
            "emoji resource is accepted",
            B,
            "<message to='bob@localhost/\u{1f600}' type='chat'><body>bad-input-probe</body></message>",
            D,
        ),
        case(
            "CDATA is just text",
            B,
            "<message to='bob@localhost' type='chat'><body><![CDATA[bad-input-probe]]></body></message>",
            D,
        ),
    ]
}

/// Opens the connection for `phase` and returns it ready for the bad bytes.
async fn connect(server: &TestServer, phase: Phase) -> Client {
    match phase {
        Phase::Start => Client::connect_plain(server.c2s).await,
        Phase::AfterHeader => {
            let mut c = Client::connect_plain(server.c2s).await;
            c.open_stream().await;
            c
        }
        Phase::Bound => {
            let mut c = server.login("mallory", "evil").await;
            c.send("<presence/>").await;
            c.sync().await;
            c
        }
    }
}

async fn run(cases: Vec<Case>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_default())
        .with_test_writer()
        .try_init();
    assert!(!cases.is_empty());
    let server = TestServer::start().await;
    for u in ["mallory", "bob", "carol"] {
        server.user(u).await;
    }
    // The bystander: logged in, available, must keep receiving throughout.
    let mut bob = server.login_available("bob", "desk", 0).await;
    bob.sync().await;
    let mut carol = server.login("carol", "phone").await;
    for (n, c) in cases.into_iter().enumerate() {
        let mut client = connect(&server, c.phase).await;
        client.send_bytes(&c.input).await;
        match c.expect {
            Expect::StreamError(cond) => {
                let el = client.expect_stream_error(cond).await;
                assert!(
                    el.child(cond, ns::STREAMS_ERRORS).is_some(),
                    "case {:?}",
                    c.name
                );
            }
            Expect::StanzaError(cond) => {
                let el = client
                    .expect_with(c.name, |e| {
                        e.attr("type") == Some("error") && e.name == "message"
                    })
                    .await;
                let err = el
                    .child("error", ns::CLIENT)
                    .unwrap_or_else(|| panic!("case {:?}: no <error/>: {el}", c.name));
                assert!(
                    err.child(cond, ns::STANZAS).is_some(),
                    "case {:?}: expected <{cond}/>, got {el}",
                    c.name
                );
                // The stream survives a stanza error.
                client.sync().await;
            }
            Expect::DeliveredToBob => {
                let el = bob.expect_with(c.name, |e| e.name == "message").await;
                assert_eq!(
                    el.child("body", ns::CLIENT).map(|b| b.text()).as_deref(),
                    Some("bad-input-probe"),
                    "case {:?}",
                    c.name
                );
            }
        }
        // The server is unharmed: a fresh login works and the bystander
        // still receives messages.
        let mut fresh = server.login("carol", &format!("probe{n}")).await;
        fresh.sync().await;
        let body = format!("still alive after {}", c.name);
        let escaped = body.replace('&', "&amp;").replace('<', "&lt;");
        carol
            .send(&format!(
                "<message to='bob@localhost/desk' type='chat'><body>{escaped}</body></message>"
            ))
            .await;
        let got = bob.expect_with(&body, |e| e.name == "message").await;
        assert_eq!(got.child("body", ns::CLIENT).map(|b| b.text()), Some(body));
        fresh.close_stream().await;
    }
}

#[tokio::test]
async fn hostile_stream_starts_get_the_right_stream_error() {
    run(start_cases()).await;
}

#[tokio::test]
async fn hostile_xml_before_authentication_gets_the_right_stream_error() {
    run(after_header_cases()).await;
}

#[tokio::test]
async fn hostile_stanzas_in_a_session_get_the_right_error() {
    run(bound_cases()).await;
}

#[test]
fn the_table_has_at_least_forty_cases() {
    let n = start_cases().len() + after_header_cases().len() + bound_cases().len();
    assert!(n >= 40, "only {n} cases");
}
