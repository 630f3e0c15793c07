//! XMPP over WebSocket (RFC 7395), on the wire: the `<open/>` answer and
//! features in standalone messages, the framing errors (binary messages,
//! elements split across messages), the size limit before authentication,
//! the `see-other-uri` redirect and the ping that drops a silent peer.
//! Clients with a real library are in `tests/interop/test_websocket.py`.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{WebSocketStream, client_async};
use waxwing_core::listen::ListenerKind;
use waxwing_core::{Config, Running};
use waxwing_proto::xml::{Element, parse_stanza};

use support::TIMEOUT;

const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
const OPEN: &str =
    "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>";

struct Web {
    _running: Running,
    http: u16,
    _dir: tempfile::TempDir,
}

async fn start(extra: &str) -> Web {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "data_dir = {:?}\nhosts = [\"localhost\"]\n{extra}\n[listen]\nc2s = []\nc2s_direct_tls = []\n\
         http = [\"127.0.0.1:0\"]\n[storage]\ndatabase = \"sqlite::memory:\"\n",
        dir.path().display().to_string()
    );
    let config = Config::parse(&toml).unwrap();
    let modules = support::modules(&config);
    let running = waxwing_core::start(config, modules).await.unwrap();
    let http = support::listener_port(&running, ListenerKind::Http);
    Web {
        _running: running,
        http,
        _dir: dir,
    }
}

type Ws = WebSocketStream<TcpStream>;

async fn connect(port: u16) -> Ws {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut req = format!("ws://127.0.0.1:{port}/xmpp-websocket")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "xmpp".parse().unwrap());
    let (ws, resp) = tokio::time::timeout(TIMEOUT, client_async(req, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("xmpp")
    );
    ws
}

/// The next text message as an element (pings are answered by tungstenite).
async fn next_element(ws: &mut Ws) -> Element {
    loop {
        let msg = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("a message in time")
            .expect("the connection is open")
            .expect("a message");
        match msg {
            Message::Text(t) => {
                return parse_stanza(t.as_str(), "jabber:client")
                    .unwrap_or_else(|e| panic!("not one element: {t} ({e:?})"));
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Sends `<open/>`; returns our `<open/>` after checking the features follow.
async fn open(ws: &mut Ws) -> (Element, Element) {
    ws.send(Message::text(OPEN)).await.unwrap();
    let open = next_element(ws).await;
    assert!(open.is("open", FRAMING), "{open:?}");
    let features = next_element(ws).await;
    assert!(
        features.is("features", "http://etherx.jabber.org/streams"),
        "{features:?}"
    );
    (open, features)
}

async fn expect_stream_error(ws: &mut Ws, condition: &str) {
    let err = next_element(ws).await;
    assert!(
        err.is("error", "http://etherx.jabber.org/streams"),
        "{err:?}"
    );
    assert!(
        err.child(condition, "urn:ietf:params:xml:ns:xmpp-streams")
            .is_some(),
        "expected {condition}: {err:?}"
    );
    let close = next_element(ws).await;
    assert!(close.is("close", FRAMING), "{close:?}");
}

#[tokio::test]
async fn open_is_answered_with_open_and_features_in_standalone_messages() {
    let web = start("").await;
    let mut ws = connect(web.http).await;
    let (open, features) = open(&mut ws).await;
    assert_eq!(open.attr("from"), Some("localhost"));
    assert_eq!(open.attr("version"), Some("1.0"));
    assert!(open.attr("id").is_some_and(|id| !id.is_empty()));
    // Loopback counts as encrypted by default: SASL and SASL2 are offered,
    // STARTTLS and compression are not (they are TCP's).
    let mechanisms = features
        .child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
        .expect("SASL offered");
    assert!(mechanisms.children().any(|m| m.text() == "SCRAM-SHA-256"));
    assert!(
        !mechanisms.children().any(|m| m.text().ends_with("-PLUS")),
        "no channel binding over WebSocket: {features:?}"
    );
    assert!(
        features
            .child("authentication", "urn:xmpp:sasl:2")
            .is_some()
    );
    assert!(
        features
            .child("starttls", "urn:ietf:params:xml:ns:xmpp-tls")
            .is_none()
    );
    ws.send(Message::text(format!("<close xmlns='{FRAMING}'/>")))
        .await
        .unwrap();
    let close = next_element(&mut ws).await;
    assert!(close.is("close", FRAMING), "{close:?}");
}

#[tokio::test]
async fn plain_websocket_from_loopback_is_not_secure_when_so_configured() {
    let web = start("[websocket]\nloopback_is_secure = false\n").await;
    let mut ws = connect(web.http).await;
    let (_, features) = open(&mut ws).await;
    // require_encryption (the default) and no TLS: nothing to authenticate with.
    assert!(
        features
            .child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
            .is_none(),
        "{features:?}"
    );
}

#[tokio::test]
async fn a_binary_message_is_bad_format() {
    let web = start("").await;
    let mut ws = connect(web.http).await;
    open(&mut ws).await;
    ws.send(Message::binary(b"<presence/>".to_vec()))
        .await
        .unwrap();
    expect_stream_error(&mut ws, "bad-format").await;
}

#[tokio::test]
async fn an_element_split_across_messages_is_bad_format() {
    let web = start("").await;
    let mut ws = connect(web.http).await;
    open(&mut ws).await;
    ws.send(Message::text(
        "<iq xmlns='jabber:client' type='get' id='1'>",
    ))
    .await
    .unwrap();
    expect_stream_error(&mut ws, "bad-format").await;
}

#[tokio::test]
async fn before_authentication_the_small_size_limit_holds() {
    let web = start("[limits]\nmax_stanza_bytes_before_auth = 2000\n").await;
    let mut ws = connect(web.http).await;
    open(&mut ws).await;
    let big = format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        "A".repeat(4000)
    );
    ws.send(Message::text(big)).await.unwrap();
    expect_stream_error(&mut ws, "policy-violation").await;
}

#[tokio::test]
async fn see_other_uri_redirects_every_open() {
    let web = start("[websocket]\nsee_other_uri = \"wss://other.example/xmpp-websocket\"\n").await;
    let mut ws = connect(web.http).await;
    ws.send(Message::text(OPEN)).await.unwrap();
    let close = next_element(&mut ws).await;
    assert!(close.is("close", FRAMING), "{close:?}");
    assert_eq!(
        close.attr("see-other-uri"),
        Some("wss://other.example/xmpp-websocket")
    );
    // Then the WebSocket itself closes.
    let end = tokio::time::timeout(TIMEOUT, ws.next())
        .await
        .expect("closed in time");
    assert!(
        matches!(end, None | Some(Ok(Message::Close(_))) | Some(Err(_))),
        "{end:?}"
    );
}

/// A peer that never answers pings is dropped after two intervals; the
/// server's ping is on the wire before that.
#[tokio::test]
async fn a_peer_that_answers_no_ping_is_dropped() {
    let web = start("[websocket]\nping_interval_secs = 5\n").await;
    // Raw TCP: a WebSocket library would answer the ping by itself.
    let mut tcp = TcpStream::connect(("127.0.0.1", web.http)).await.unwrap();
    tcp.write_all(
        b"GET /xmpp-websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n",
    )
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(40), read_all)
        .await
        .expect("the server drops a silent peer");
    let elapsed = started.elapsed();
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response")
        + 4;
    assert!(got.starts_with(b"HTTP/1.1 101"), "{:?}", &got[..head_end]);
    // Server frames are unmasked: opcode 0x9 (ping) with FIN set.
    assert_eq!(got.get(head_end), Some(&0x89), "a ping first: {got:?}");
    assert!(
        elapsed >= Duration::from_secs(9),
        "dropped after {elapsed:?}, before two ping intervals"
    );
}
