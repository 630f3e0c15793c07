//! `ServerTlsStream` against rustls' buffered client (under tokio-rustls)
//! over loopback TCP, with the server's real configuration
//! (`TlsContext::load`: generated certificate, SNI resolver, key log).

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream as ClientStream;

use super::*;
use crate::config::Config;
// Trusts whatever certificate the server shows (the generated one), but
// checks the handshake signatures like a real client.
use crate::s2s::tls::AcceptAnyCert;
use crate::tls::TlsContext;

struct Setup {
    tls: TlsContext,
    _dir: tempfile::TempDir,
}

fn server(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&format!(
        "data_dir = {:?}\nhosts = [\"localhost\"]\n{extra}",
        dir.path().display().to_string()
    ))
    .unwrap();
    Setup {
        tls: TlsContext::load(&config).unwrap(),
        _dir: dir,
    }
}

fn client_config(
    suites: Option<Vec<rustls::SupportedCipherSuite>>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suites) = suites {
        provider.cipher_suites = suites;
    }
    let provider = Arc::new(provider);
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), server.unwrap().0)
}

/// A finished handshake: our server stream, its channel binding, the client.
async fn connect_with(
    setup: &Setup,
    client: Arc<rustls::ClientConfig>,
) -> (ServerTlsStream, ChannelBindingData, ClientStream<TcpStream>) {
    let (client_tcp, server_tcp) = tcp_pair().await;
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from("localhost").unwrap();
    let (server, client) = tokio::join!(
        setup.tls.accept_client(server_tcp),
        connector.connect(name, client_tcp)
    );
    let (server, cb) = server.unwrap();
    (server, cb, client.unwrap())
}

async fn connect(setup: &Setup) -> (ServerTlsStream, ClientStream<TcpStream>) {
    let (server, _, client) =
        connect_with(setup, client_config(None, rustls::DEFAULT_VERSIONS)).await;
    (server, client)
}

use waxwing_proto::sasl::ChannelBindingData;

/// The idle state this type exists for: nothing buffered, nothing held.
fn assert_holds_no_buffer(server: &ServerTlsStream) {
    assert_eq!(server.incoming.capacity(), 0, "read buffer kept");
    assert_eq!(server.plaintext.capacity(), 0, "plaintext buffer kept");
    assert_eq!(server.outgoing.capacity(), 0, "write buffer kept");
}

#[tokio::test]
async fn tls_exporter_matches_the_clients_for_every_tls13_suite() {
    let setup = server("");
    let suites: Vec<_> = rustls::crypto::ring::default_provider()
        .cipher_suites
        .into_iter()
        .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_)))
        .collect();
    assert_eq!(suites.len(), 3, "ring's TLS 1.3 suites");
    for suite in suites {
        let (server, cb, client) = connect_with(
            &setup,
            client_config(Some(vec![suite]), &[&rustls::version::TLS13]),
        )
        .await;
        assert_eq!(
            server.connection().negotiated_cipher_suite(),
            Some(suite),
            "{suite:?}"
        );
        let expected = client
            .get_ref()
            .1
            .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
            .unwrap();
        assert_eq!(cb.tls_exporter.as_deref(), Some(&expected[..]), "{suite:?}");
        // tls-server-end-point: the certificate the client was shown.
        let shown = &client.get_ref().1.peer_certificates().unwrap()[0];
        assert_eq!(
            cb.tls_server_end_point,
            waxwing_proto::sasl::tls_server_end_point_hash(shown)
        );
    }
}

/// Many handshakes at once on several threads: each connection's binding
/// is its own (the capture slot is per thread and per handshake step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handshakes_each_get_their_own_exporter() {
    let setup = Arc::new(server(""));
    let client = client_config(None, rustls::DEFAULT_VERSIONS);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (setup, client) = (setup.clone(), client.clone());
        tasks.spawn(async move {
            let (_server, cb, client) = connect_with(&setup, client).await;
            let expected = client
                .get_ref()
                .1
                .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
                .unwrap();
            assert_eq!(cb.tls_exporter.as_deref(), Some(&expected[..]));
            expected
        });
    }
    let mut seen = std::collections::HashSet::new();
    while let Some(done) = tasks.join_next().await {
        assert!(seen.insert(done.unwrap()), "two sessions with one binding");
    }
    assert_eq!(seen.len(), 40);
}

/// A client that fragments its handshake messages over many small records
/// (rustls joins them inside our `incoming` buffer, whose front is then no
/// record header) and sends data in small records.
#[tokio::test]
async fn fragmented_handshake_and_small_records() {
    let setup = server("");
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut config = (*client_config(None, &[version])).clone();
        config.max_fragment_size = Some(64);
        let (mut server, cb, mut client) = connect_with(&setup, Arc::new(config)).await;
        if std::ptr::eq(version, &rustls::version::TLS13) {
            let expected = client
                .get_ref()
                .1
                .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
                .unwrap();
            assert_eq!(cb.tls_exporter.as_deref(), Some(&expected[..]));
        }
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 241) as u8).collect();
        let writer = async {
            client.write_all(&payload).await.unwrap();
            client.flush().await.unwrap();
        };
        let reader = async {
            let mut got = vec![0u8; payload.len()];
            server.read_exact(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(writer, reader);
        assert!(got == payload, "data differs");
        assert_holds_no_buffer(&server);
    }
}

#[tokio::test]
async fn tls12_has_no_exporter_binding_but_works() {
    let setup = server("");
    let (mut server, cb, mut client) =
        connect_with(&setup, client_config(None, &[&rustls::version::TLS12])).await;
    assert_eq!(
        server.connection().protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(cb.tls_exporter, None);
    let shown = &client.get_ref().1.peer_certificates().unwrap()[0];
    assert_eq!(
        cb.tls_server_end_point,
        waxwing_proto::sasl::tls_server_end_point_hash(shown)
    );
    client.write_all(b"<stream:stream>").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 15];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"<stream:stream>");
    server.write_all(b"<stream:features/>").await.unwrap();
    server.flush().await.unwrap();
    let mut buf = [0u8; 18];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"<stream:features/>");
    assert_holds_no_buffer(&server);
}

#[tokio::test]
async fn many_small_records_then_idle_with_no_buffer() {
    let setup = server("");
    let (mut server, mut client) = connect(&setup).await;
    let mut sent = Vec::new();
    let writer = async {
        for i in 0..2000 {
            let stanza = format!("<message id='{i}'><body>hello {i}</body></message>");
            // One record each.
            client.write_all(stanza.as_bytes()).await.unwrap();
            client.flush().await.unwrap();
            sent.extend_from_slice(stanza.as_bytes());
        }
        client
    };
    let reader = async {
        let mut got = Vec::new();
        // The session's read size.
        let mut buf = [0u8; 2048];
        loop {
            let n = server.read(&mut buf).await.unwrap();
            assert_ne!(n, 0);
            got.extend_from_slice(&buf[..n]);
            if got.ends_with(b"<body>hello 1999</body></message>") {
                return got;
            }
        }
    };
    let (mut client, got) = tokio::join!(writer, reader);
    assert_eq!(got, sent);
    assert_holds_no_buffer(&server);
    // And the other way.
    server
        .write_all(b"<r xmlns='urn:xmpp:sm:3'/>")
        .await
        .unwrap();
    server.flush().await.unwrap();
    assert_holds_no_buffer(&server);
    let mut buf = [0u8; 26];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"<r xmlns='urn:xmpp:sm:3'/>");
}

#[tokio::test]
async fn large_records_read_through_a_small_buffer() {
    let setup = server("");
    let (mut server, mut client) = connect(&setup).await;
    // Full 16 KiB records, and one record split over TCP segments.
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let writer = async {
        client.write_all(&payload).await.unwrap();
        client.flush().await.unwrap();
        client
    };
    let reader = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 100];
        while got.len() < payload.len() {
            let n = server.read(&mut buf).await.unwrap();
            assert_ne!(n, 0);
            got.extend_from_slice(&buf[..n]);
            // Never more than one record waits decrypted, one unfinished
            // record as ciphertext.
            assert!(
                server.plaintext.len() <= 16384,
                "{}",
                server.plaintext.len()
            );
            assert!(
                server.incoming.len() <= MAX_RECORD + MIN_READ,
                "{}",
                server.incoming.len()
            );
        }
        got
    };
    let (_client, got) = tokio::join!(writer, reader);
    assert_eq!(got, payload);
    assert_holds_no_buffer(&server);
}

#[tokio::test]
async fn large_writes_to_a_slow_reader_stay_bounded() {
    let setup = server("");
    let (mut server, mut client) = connect(&setup).await;
    let payload: Vec<u8> = (0..8_000_000u32).map(|i| (i % 253) as u8).collect();
    // Write while the client reads nothing, until the socket pushes back.
    let mut cx = Context::from_waker(Waker::noop());
    let mut accepted = 0;
    loop {
        match Pin::new(&mut server).poll_write(&mut cx, &payload[accepted..]) {
            Poll::Ready(Ok(n)) => {
                assert!(n > 0 && n <= WRITE_CHUNK);
                accepted += n;
                assert!(
                    server.outgoing.len() <= WRITE_CHUNK + 2 * RECORD_OVERHEAD,
                    "write buffer grew to {}",
                    server.outgoing.len()
                );
                assert!(accepted < payload.len(), "the socket never pushed back");
            }
            Poll::Ready(Err(e)) => panic!("{e}"),
            Poll::Pending => break,
        }
    }
    assert!(
        !server.outgoing.is_empty(),
        "pushed back with nothing waiting"
    );
    // Now the client reads slowly, a little at a time.
    let writer = async {
        server.write_all(&payload[accepted..]).await.unwrap();
        server.flush().await.unwrap();
        server
    };
    let reader = async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1000];
        while got.len() < payload.len() {
            let n = client.read(&mut buf).await.unwrap();
            assert_ne!(n, 0);
            got.extend_from_slice(&buf[..n]);
            tokio::task::yield_now().await;
        }
        got
    };
    let (server, got) = tokio::join!(writer, reader);
    assert!(got == payload, "data differs");
    assert_holds_no_buffer(&server);
}

#[tokio::test]
async fn peer_close_notify_is_a_clean_end_and_we_answer_with_ours() {
    let setup = server("");
    let (mut server, mut client) = connect(&setup).await;
    client.write_all(b"</stream:stream>").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"</stream:stream>");
    // Further reads stay at the end.
    assert_eq!(server.read(&mut [0u8; 10]).await.unwrap(), 0);
    // Writing after the peer's close is still allowed (our closing tag).
    server.write_all(b"</stream:stream>").await.unwrap();
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"</stream:stream>");
    // read_to_end succeeding means the client saw our close_notify: a
    // truncation is an error in rustls' reader.
    assert!(server.write_all(b"x").await.is_err());
}

#[tokio::test]
async fn abrupt_close_is_a_truncation() {
    let setup = server("");
    let (mut server, mut client) = connect(&setup).await;
    client.write_all(b"<presence/>").await.unwrap();
    client.flush().await.unwrap();
    // TCP ends without close_notify.
    let (tcp, _) = client.into_inner();
    drop(tcp);
    let mut buf = [0u8; 11];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"<presence/>");
    let err = server.read(&mut [0u8; 10]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn key_updates_from_the_client() {
    let setup = server("");
    let (mut server, mut client) = connect(&setup).await;
    for round in 0..5 {
        // Asks for our KeyUpdate in return (update_requested).
        client.get_mut().1.refresh_traffic_keys().unwrap();
        let ping = format!("<iq id='{round}'/>");
        client.write_all(ping.as_bytes()).await.unwrap();
        client.flush().await.unwrap();
        let mut buf = vec![0u8; ping.len()];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, ping.as_bytes());
        let pong = format!("<iq type='result' id='{round}'/>");
        server.write_all(pong.as_bytes()).await.unwrap();
        server.flush().await.unwrap();
        let mut buf = vec![0u8; pong.len()];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, pong.as_bytes());
    }
    assert_holds_no_buffer(&server);
}

#[tokio::test]
async fn a_non_tls_client_gets_an_alert() {
    let setup = server("");
    let (mut client, server_tcp) = tcp_pair().await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let err = setup.tls.accept_client(server_tcp).await.err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply.first(), Some(&0x15), "an alert record: {reply:?}");
}

#[tokio::test]
async fn client_eof_during_handshake_fails_the_handshake() {
    let setup = server("");
    let (client, server_tcp) = tcp_pair().await;
    drop(client);
    let err = setup.tls.accept_client(server_tcp).await.err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn session_tickets_when_resumption_is_on() {
    let setup = server("[tls]\nresumption_cache = 16\n");
    let client = client_config(None, &[&rustls::version::TLS13]);
    let (mut server, _, mut first) = connect_with(&setup, client.clone()).await;
    // The ticket went out after the handshake; the client takes it in with
    // the first data it reads.
    server.write_all(b"<a/>").await.unwrap();
    server.flush().await.unwrap();
    let mut buf = [0u8; 4];
    first.read_exact(&mut buf).await.unwrap();
    let (_server, cb, second) = connect_with(&setup, client).await;
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    // A resumed session binds to its own exporter secret.
    let expected = second
        .get_ref()
        .1
        .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
        .unwrap();
    assert_eq!(cb.tls_exporter.as_deref(), Some(&expected[..]));
}

#[tokio::test]
async fn starttls_upgrade_of_the_transport() {
    use crate::stream::transport::Transport;
    let setup = server("");
    let (mut client_tcp, server_tcp) = tcp_pair().await;
    let mut transport = Transport::Plain(server_tcp);
    client_tcp.write_all(b"<starttls/>").await.unwrap();
    let mut buf = [0u8; 11];
    transport.read_exact(&mut buf).await.unwrap();
    transport.write_all(b"<proceed/>").await.unwrap();
    let mut buf = [0u8; 10];
    client_tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"<proceed/>");
    let connector = tokio_rustls::TlsConnector::from(client_config(None, rustls::DEFAULT_VERSIONS));
    let name = ServerName::try_from("localhost").unwrap();
    let (upgraded, client) = tokio::join!(
        transport.upgrade(&setup.tls),
        connector.connect(name, client_tcp)
    );
    let cb = upgraded.unwrap();
    let mut client = client.unwrap();
    assert!(transport.is_tls());
    assert!(cb.tls_exporter.is_some());
    assert_eq!(transport.peer_certificate(), None);
    client.write_all(b"<stream:stream>").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 15];
    transport.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"<stream:stream>");
}

#[tokio::test]
async fn a_write_the_socket_takes_whole_never_allocates_outgoing() {
    let setup = server("");
    let (mut server, mut client) = connect(&setup).await;
    // Sizes around a record's: one byte, a stanza, exactly a record, and
    // one record and a bit (two writes).
    for (round, len) in [1usize, 300, WRITE_CHUNK, WRITE_CHUNK + 100]
        .into_iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..len).map(|i| b'a' + ((i + round) % 26) as u8).collect();
        let mut cx = Context::from_waker(Waker::noop());
        let mut sent = 0;
        while sent < data.len() {
            match Pin::new(&mut server).poll_write(&mut cx, &data[sent..]) {
                Poll::Ready(Ok(n)) => sent += n,
                other => panic!("an idle socket refused a write: {other:?}"),
            }
            // The socket took the records from the thread's scratch buffer.
            assert_eq!(server.outgoing.capacity(), 0, "{len} bytes");
        }
        let mut got = vec![0u8; len];
        client.read_exact(&mut got).await.unwrap();
        assert!(got == data, "{len} bytes arrived changed");
    }
    assert_holds_no_buffer(&server);
}
