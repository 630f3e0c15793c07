//! Federation between two in-process Waxwing servers, `a.localhost` and
//! `b.localhost`, with static routes to each other's s2s listener; and a raw
//! s2s peer that tries to spoof.

mod support;

use std::net::IpAddr;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use waxwing_core::listen::ListenerKind;
use waxwing_core::{Config, Running};
use waxwing_proto::jid::BareJid;
use waxwing_proto::ns;
use waxwing_proto::xml::{Element, Framer, Limits, StreamEvent};

const A: &str = "a.localhost";
const B: &str = "b.localhost";
const B_SECRET: &str = "b-dialback-secret";

/// A server listening for s2s on `s2s` (0: a port of the kernel's).
struct Node {
    running: Running,
    domain: &'static str,
    c2s: u16,
    s2s: u16,
    dir: tempfile::TempDir,
}

impl Node {
    async fn start(domain: &'static str, s2s: u16, extra: &str) -> Node {
        Self::try_start(domain, s2s, extra)
            .await
            .expect("server starts")
    }

    async fn try_start(
        domain: &'static str,
        s2s: u16,
        extra: &str,
    ) -> Result<Node, waxwing_core::StartError> {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "data_dir = {data:?}\nhosts = [\"{domain}\"]\nadmins = [\"admin@{domain}\"]\n\
             [listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = []\ns2s = [\"127.0.0.1:{s2s}\"]\n\
             [storage]\ndatabase = \"sqlite::memory:\"\n{extra}\n",
            data = dir.path().display().to_string(),
        );
        let config = Config::parse(&toml).unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
        let modules = support::modules(&config);
        let running = waxwing_core::start(config, modules).await?;
        let c2s = listener_port(&running, ListenerKind::C2s);
        let s2s = listener_port(&running, ListenerKind::S2s);
        Ok(Node {
            running,
            domain,
            c2s,
            s2s,
            dir,
        })
    }

    /// With `second`, or stopped if `second` did not start.
    async fn and(
        self,
        second: Result<Node, waxwing_core::StartError>,
    ) -> Result<(Node, Node), waxwing_core::StartError> {
        both_or_stop(self, second, |n: Node| n.running.stop()).await
    }

    /// `local` (here) and `contact` (a full bare JID, anywhere) are mutual
    /// contacts in `local`'s roster (subscription both).
    async fn contact(&self, local: &str, contact: &str) {
        let owner = BareJid::new(Some(local), self.domain).unwrap();
        let mut item = waxwing_store::RosterItem::new(BareJid::parse(contact).unwrap());
        item.subscription = waxwing_store::Subscription::Both;
        self.running
            .server
            .stores
            .roster
            .put(&owner, &item)
            .await
            .unwrap();
    }

    async fn user(&self, local: &str) {
        create_account(&self.running, local, self.domain).await;
    }

    /// Logs in, fetches the roster, sends initial presence and syncs.
    async fn login(&self, local: &str, resource: &str) -> Client {
        let mut c = self.login_nosync(local, resource).await;
        c.sync().await;
        c
    }

    /// As [`Node::login`] but returns right after initial presence.
    async fn login_nosync(&self, local: &str, resource: &str) -> Client {
        let mut c = Client::connect_plain(self.c2s).await;
        c.domain = self.domain.to_string();
        c.open_stream().await;
        c.starttls().await;
        c.auth_scram_sha256(local, &password(local)).await;
        c.bind(Some(resource)).await;
        c.get_roster().await;
        c.send("<presence/>").await;
        c
    }
}

/// Two servers routing to each other (and to each other's PubSub service
/// domains, which send caps queries). `a_extra`/`b_extra` are TOML
/// appended after `[storage]` (so: tables).
async fn pair_with(a_extra: &str, b_extra: &str) -> (Node, Node) {
    on_free_port(|pb| async move {
        let closed = free_port();
        let a = Node::start(
            A,
            0,
            &format!(
                "[s2s]\nconnect_timeout_secs = 5\n{a_extra}\n[s2s.routes]\n\"{B}\" = \"127.0.0.1:{pb}\"\n\"pubsub.{B}\" = \"127.0.0.1:{pb}\"\n\"evil.localhost\" = \"127.0.0.1:{closed}\"\n"
            ),
        )
        .await;
        let pa = a.s2s;
        let b = Node::try_start(
            B,
            pb,
            &format!(
                "[s2s]\nsecret = \"{B_SECRET}\"\nconnect_timeout_secs = 5\n{b_extra}\n[s2s.routes]\n\"{A}\" = \"127.0.0.1:{pa}\"\n\"pubsub.{A}\" = \"127.0.0.1:{pa}\"\n"
            ),
        )
        .await;
        a.and(b).await
    })
    .await
}

async fn pair() -> (Node, Node) {
    pair_with("", "").await
}

/// Reads until an element satisfies `pred`, skipping others.
async fn wait_for(c: &mut Client, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
    loop {
        let el = c.next(what).await;
        if pred(&el) {
            return el;
        }
    }
}

fn body(el: &Element) -> Option<String> {
    el.child("body", ns::CLIENT).map(|b| b.text())
}

#[tokio::test]
async fn messages_cross_both_ways_with_dialback() {
    let (a, b) = pair().await;
    a.user("alice").await;
    b.user("bob").await;
    let mut alice = a.login("alice", "pc").await;
    let mut bob = b.login("bob", "phone").await;

    alice
        .send(
            "<message to='bob@b.localhost' type='chat' id='m1'><body>hello from a</body></message>",
        )
        .await;
    let m = wait_for(&mut bob, "alice's message", |e| e.name == "message").await;
    assert_eq!(m.attr("from"), Some("alice@a.localhost/pc"), "{m}");
    assert_eq!(m.attr("to"), Some("bob@b.localhost"), "{m}");
    assert_eq!(body(&m).as_deref(), Some("hello from a"), "{m}");
    assert_eq!(m.ns, ns::CLIENT);

    bob.send("<message to='alice@a.localhost/pc' type='chat' id='m2'><body>hello from b</body></message>")
        .await;
    let m = wait_for(&mut alice, "bob's reply", |e| e.name == "message").await;
    assert_eq!(m.attr("from"), Some("bob@b.localhost/phone"), "{m}");
    assert_eq!(body(&m).as_deref(), Some("hello from b"), "{m}");

    // Both directions now have exactly one outgoing connection, reused.
    for i in 0..5 {
        alice
            .send(&format!(
                "<message to='bob@b.localhost' type='chat'><body>n{i}</body></message>"
            ))
            .await;
    }
    for i in 0..5 {
        let m = wait_for(&mut bob, "numbered message", |e| e.name == "message").await;
        assert_eq!(body(&m), Some(format!("n{i}")), "order is kept: {m}");
    }
    assert_eq!(a.running.server.s2s.outgoing_count(), 1);
    assert_eq!(b.running.server.s2s.outgoing_count(), 1);
}

#[tokio::test]
async fn subscription_and_presence_cross() {
    let (a, b) = pair().await;
    a.user("alice").await;
    b.user("bob").await;
    let mut alice = a.login("alice", "pc").await;
    let mut bob = b.login("bob", "phone").await;

    alice
        .send("<presence to='bob@b.localhost' type='subscribe'/>")
        .await;
    let s = wait_for(&mut bob, "the subscription request", |e| {
        e.name == "presence" && e.attr("type") == Some("subscribe")
    })
    .await;
    assert_eq!(s.attr("from"), Some("alice@a.localhost"), "{s}");

    bob.send("<presence to='alice@a.localhost' type='subscribed'/>")
        .await;
    let s = wait_for(&mut alice, "the approval", |e| {
        e.name == "presence" && e.attr("type") == Some("subscribed")
    })
    .await;
    assert_eq!(s.attr("from"), Some("bob@b.localhost"), "{s}");
    // RFC 6121 §3.1.6: then bob's current presence.
    let p = wait_for(&mut alice, "bob's presence", |e| {
        e.name == "presence" && e.attr("type").is_none()
    })
    .await;
    assert_eq!(p.attr("from"), Some("bob@b.localhost/phone"), "{p}");
    // Alice's roster says both.
    let roster = alice.get_roster().await.expect("roster");
    let item = roster
        .children()
        .find(|i| i.attr("jid") == Some("bob@b.localhost"))
        .unwrap_or_else(|| panic!("bob in roster: {roster}"));
    assert_eq!(item.attr("subscription"), Some("to"), "{item}");

    // Bob changes presence: alice sees it.
    bob.send("<presence><show>away</show></presence>").await;
    let p = wait_for(&mut alice, "bob's away presence", |e| {
        e.name == "presence" && e.child("show", ns::CLIENT).is_some()
    })
    .await;
    assert_eq!(p.attr("from"), Some("bob@b.localhost/phone"), "{p}");

    // A new session of alice probes bob across the federation.
    let mut alice2 = a.login_nosync("alice", "tablet").await;
    let p = wait_for(&mut alice2, "bob's presence via probe", |e| {
        e.name == "presence" && e.attr("from") == Some("bob@b.localhost/phone")
    })
    .await;
    assert!(p.child("show", ns::CLIENT).is_some(), "{p}");
}

#[tokio::test]
async fn iqs_cross_ping_disco_and_user_to_user() {
    let (a, b) = pair().await;
    a.user("alice").await;
    b.user("bob").await;
    let mut alice = a.login("alice", "pc").await;
    let mut bob = b.login("bob", "phone").await;

    alice
        .send(&format!(
            "<iq type='get' id='p1' to='b.localhost'><ping xmlns='{}'/></iq>",
            ns::PING
        ))
        .await;
    let r = wait_for(&mut alice, "ping result", |e| e.attr("id") == Some("p1")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(r.attr("from"), Some("b.localhost"), "{r}");

    alice
        .send(&format!(
            "<iq type='get' id='d1' to='b.localhost'><query xmlns='{}'/></iq>",
            ns::DISCO_INFO
        ))
        .await;
    let r = wait_for(&mut alice, "disco result", |e| e.attr("id") == Some("d1")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let q = r.child("query", ns::DISCO_INFO).expect("disco query");
    assert!(q.child("identity", ns::DISCO_INFO).is_some(), "{r}");

    // Full JID to full JID: bob's client answers.
    alice
        .send(&format!(
            "<iq type='get' id='v1' to='bob@b.localhost/phone'><query xmlns='{}'/></iq>",
            ns::VERSION
        ))
        .await;
    let q = wait_for(&mut bob, "alice's iq", |e| e.name == "iq").await;
    assert_eq!(q.attr("from"), Some("alice@a.localhost/pc"), "{q}");
    bob.send(&format!(
        "<iq type='result' id='v1' to='alice@a.localhost/pc'><query xmlns='{}'><name>bobclient</name></query></iq>",
        ns::VERSION
    ))
    .await;
    let r = wait_for(&mut alice, "bob's answer", |e| e.attr("id") == Some("v1")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(r.attr("from"), Some("bob@b.localhost/phone"), "{r}");

    // An error crosses too: unknown account on b.
    alice
        .send("<message to='nobody@b.localhost' id='e1'><body>?</body></message>")
        .await;
    let e = wait_for(&mut alice, "bounce", |e| e.attr("id") == Some("e1")).await;
    assert!(has_stanza_error(&e, "service-unavailable"), "{e}");
}

/// Panic isolation across federation: on `b`, the handler of a stanza from
/// `a` panics (the test module `support::panic::Panicker`, on demand). The
/// stanza is answered `internal-server-error`, the stream goes on carrying
/// traffic, and `a` loses no reputation for our bug.
#[tokio::test]
async fn a_panicking_handler_fails_the_remote_stanza_and_the_stream_goes_on() {
    let (a, b) = pair().await;
    a.user("alice").await;
    b.user("bob").await;
    let mut alice = a.login("alice", "pc").await;
    let mut bob = b.login("bob", "phone").await;

    alice
        .send(&format!(
            "<iq type='get' id='p1' to='{B}'><panic xmlns='{}'/></iq>",
            support::panic::NS
        ))
        .await;
    let r = wait_for(&mut alice, "the IQ's error", |e| e.attr("id") == Some("p1")).await;
    assert!(has_stanza_error(&r, "internal-server-error"), "{r}");
    alice
        .send(&format!(
            "<message to='bob@{B}' id='m1' type='chat'><body>x</body>{}</message>",
            support::panic::trigger("inbound")
        ))
        .await;
    let r = wait_for(&mut alice, "the message's error", |e| {
        e.attr("id") == Some("m1")
    })
    .await;
    assert!(has_stanza_error(&r, "internal-server-error"), "{r}");

    alice
        .send(&format!(
            "<message to='bob@{B}' id='m2' type='chat'><body>after</body></message>"
        ))
        .await;
    let m = wait_for(&mut bob, "the message after", |e| e.name == "message").await;
    assert_eq!(m.attr("id"), Some("m2"), "{m}");
    assert!(
        reputation_of(&b, A).is_none_or(|s| s.record.bounces == 0),
        "a bug of ours is not the remote's offence"
    );
}

#[tokio::test]
async fn unreachable_domains_bounce() {
    // c.localhost: nobody listens; d.localhost: accepts TCP but never speaks.
    let closed = free_port();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let a = Node::start(
        A,
        0,
        &format!(
            "[s2s]\nconnect_timeout_secs = 1\n[s2s.routes]\n\"c.localhost\" = \"127.0.0.1:{closed}\"\n\"d.localhost\" = \"127.0.0.1:{silent_port}\"\n"
        ),
    )
    .await;
    a.user("alice").await;
    let mut alice = a.login("alice", "pc").await;
    alice
        .send("<message to='x@c.localhost' id='c1' type='chat'><body>hi</body></message>")
        .await;
    let e = wait_for(&mut alice, "bounce", |e| e.attr("id") == Some("c1")).await;
    assert!(has_stanza_error(&e, "remote-server-not-found"), "{e}");
    assert_eq!(e.attr("from"), Some("x@c.localhost"), "{e}");

    alice
        .send("<message to='x@d.localhost' id='d1' type='chat'><body>1</body></message>")
        .await;
    alice
        .send("<message to='x@d.localhost' id='d2' type='chat'><body>2</body></message>")
        .await;
    for id in ["d1", "d2"] {
        let e = wait_for(&mut alice, "timeout bounce", |e| e.attr("id") == Some(id)).await;
        assert!(has_stanza_error(&e, "remote-server-timeout"), "{e}");
    }
}

#[tokio::test]
async fn refused_domain_is_never_contacted() {
    let (a, b) = pair_with("[s2s.domains.\"b.localhost\"]\ndialback = \"refuse\"\n", "").await;
    a.user("alice").await;
    b.user("bob").await;
    let mut alice = a.login("alice", "pc").await;
    alice
        .send("<message to='bob@b.localhost' id='r1'><body>hi</body></message>")
        .await;
    let e = wait_for(&mut alice, "bounce", |e| e.attr("id") == Some("r1")).await;
    assert!(has_stanza_error(&e, "remote-server-not-found"), "{e}");
    // And b cannot reach a either: a refuses b's dialback.
    let mut bob = b.login("bob", "phone").await;
    bob.send("<message to='alice@a.localhost' id='r2'><body>hi</body></message>")
        .await;
    let e = wait_for(&mut bob, "bounce", |e| e.attr("id") == Some("r2")).await;
    assert!(has_stanza_error(&e, "remote-server-not-found"), "{e}");
    alice.expect_nothing().await;
}

#[tokio::test]
async fn certificates_authenticate_with_sasl_external() {
    // a starts first so its self-signed certificate exists; b trusts it
    // and requires a valid certificate from a.
    let (a, b) = on_free_port(|pb| async move {
        let a = Node::start(
            A,
            0,
            &format!("[s2s]\nconnect_timeout_secs = 5\n[s2s.routes]\n\"{B}\" = \"127.0.0.1:{pb}\"\n"),
        )
        .await;
        let a_cert = a.dir.path().join("tls").join(format!("{A}.crt"));
        assert!(a_cert.exists());
        let b = Node::try_start(
            B,
            pb,
            &format!(
                "[s2s]\nconnect_timeout_secs = 5\nca_bundle = {:?}\n[s2s.routes]\n\"{A}\" = \"127.0.0.1:{}\"\n[s2s.domains.\"{A}\"]\ndialback = \"require-valid-certs\"\n",
                a_cert.display().to_string(),
                a.s2s
            ),
        )
        .await;
        a.and(b).await
    })
    .await;
    a.user("alice").await;
    b.user("bob").await;
    let mut alice = a.login("alice", "pc").await;
    let mut bob = b.login("bob", "phone").await;
    alice
        .send("<message to='bob@b.localhost' type='chat'><body>via certificate</body></message>")
        .await;
    let m = wait_for(&mut bob, "alice's message", |e| e.name == "message").await;
    assert_eq!(body(&m).as_deref(), Some("via certificate"));
    // b → a: a's certificate is valid for b (b trusts it), so b's outgoing
    // stream works; a verifies b by dialback.
    bob.send("<message to='alice@a.localhost' type='chat'><body>back</body></message>")
        .await;
    let m = wait_for(&mut alice, "bob's message", |e| e.name == "message").await;
    assert_eq!(body(&m).as_deref(), Some("back"));
}

#[tokio::test]
async fn untrusted_certificate_is_refused_when_required() {
    let (a, b) = pair_with(
        "",
        "[s2s.domains.\"a.localhost\"]\ndialback = \"require-valid-certs\"\n",
    )
    .await;
    a.user("alice").await;
    b.user("bob").await;
    let mut alice = a.login("alice", "pc").await;
    let mut bob = b.login("bob", "phone").await;
    alice
        .send("<message to='bob@b.localhost' id='x1'><body>hi</body></message>")
        .await;
    let e = wait_for(&mut alice, "bounce", |e| e.attr("id") == Some("x1")).await;
    assert!(has_stanza_error(&e, "remote-server-not-found"), "{e}");
    bob.expect_nothing().await;
}

// ---------------------------------------------------------------------------
// A raw s2s peer

struct RawPeer {
    io: tokio_rustls::client::TlsStream<TcpStream>,
    framer: Framer,
    stream_id: String,
    /// The features after TLS had XEP-0288 `<bidi/>`.
    features_offered_bidi: bool,
}

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A TCP connection to the loopback `port` from the local address `source`
/// (any of 127.0.0.0/8): to the server, another peer than 127.0.0.1.
async fn connect_from(source: IpAddr, port: u16) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    tokio::time::timeout(TIMEOUT, socket.connect((LOOPBACK, port).into()))
        .await
        .expect("connect timed out")
        .unwrap()
}

fn s2s_framer() -> Framer {
    Framer::new(Limits::default(), ns::SERVER)
}

fn s2s_header(from: &str, to: &str) -> String {
    format!(
        "<stream:stream xmlns='jabber:server' xmlns:stream='{}' xmlns:db='jabber:server:dialback' from='{from}' to='{to}' version='1.0'>",
        ns::STREAM
    )
}

async fn next_event(
    io: &mut (impl AsyncReadExt + Unpin),
    framer: &mut Framer,
) -> Option<StreamEvent> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(ev) = framer.next_event().expect("well-formed") {
            return Some(ev);
        }
        let n = tokio::time::timeout(TIMEOUT, io.read(&mut buf))
            .await
            .expect("read timed out")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        framer.feed(&buf[..n]);
    }
}

impl RawPeer {
    /// Connects to `port` claiming `from`, through STARTTLS, up to the features.
    async fn connect(port: u16, from: &str, to: &str) -> RawPeer {
        Self::connect_from(LOOPBACK, port, from, to).await
    }

    /// As [`RawPeer::connect`], from the local address `source`.
    async fn connect_from(source: IpAddr, port: u16, from: &str, to: &str) -> RawPeer {
        let mut tcp = connect_from(source, port).await;
        let mut framer = s2s_framer();
        tcp.write_all(s2s_header(from, to).as_bytes())
            .await
            .unwrap();
        assert!(matches!(
            next_event(&mut tcp, &mut framer).await,
            Some(StreamEvent::Open(_))
        ));
        let Some(StreamEvent::Stanza(f)) = next_event(&mut tcp, &mut framer).await else {
            panic!("features");
        };
        assert!(f.child("starttls", ns::TLS).is_some(), "{f}");
        tcp.write_all(format!("<starttls xmlns='{}'/>", ns::TLS).as_bytes())
            .await
            .unwrap();
        let Some(StreamEvent::Stanza(p)) = next_event(&mut tcp, &mut framer).await else {
            panic!("proceed");
        };
        assert!(p.is("proceed", ns::TLS));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(DangerousAcceptAnyCertForTests::new(
                provider,
            )))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(to.to_string()).unwrap();
        let mut io = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        let mut framer = s2s_framer();
        io.write_all(s2s_header(from, to).as_bytes()).await.unwrap();
        let Some(StreamEvent::Open(h)) = next_event(&mut io, &mut framer).await else {
            panic!("header after TLS");
        };
        let Some(StreamEvent::Stanza(f)) = next_event(&mut io, &mut framer).await else {
            panic!("features after TLS");
        };
        assert!(
            f.child("dialback", "urn:xmpp:features:dialback").is_some(),
            "{f}"
        );
        RawPeer {
            io,
            framer,
            stream_id: h.id.expect("stream id"),
            features_offered_bidi: f.child("bidi", "urn:xmpp:features:bidi").is_some(),
        }
    }

    async fn send(&mut self, xml: &str) {
        self.io.write_all(xml.as_bytes()).await.unwrap();
    }

    async fn next(&mut self) -> Option<Element> {
        match next_event(&mut self.io, &mut self.framer).await? {
            StreamEvent::Stanza(el) => Some(el),
            _ => None,
        }
    }

    async fn expect_stream_error(&mut self, condition: &str) {
        loop {
            let el = self
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended before <{condition}/>"));
            if el.is("error", ns::STREAM) {
                assert!(el.child(condition, ns::STREAMS_ERRORS).is_some(), "{el}");
                return;
            }
        }
    }

    /// Dialback as `from` (b.localhost) with the key b's secret gives.
    async fn dialback(&mut self, from: &str, to: &str, key: &str) -> Element {
        self.send(&format!(
            "<db:result from='{from}' to='{to}'>{key}</db:result>"
        ))
        .await;
        loop {
            let el = self.next().await.expect("dialback answer");
            if el.name == "result" {
                return el;
            }
        }
    }
}

fn key(secret: &str, receiving: &str, originating: &str, id: &str) -> String {
    let k = hex(&Sha256::digest(secret.as_bytes()));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(k.as_bytes()).unwrap();
    mac.update(format!("{receiving} {originating} {id}").as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn spoofing_is_refused() {
    let (a, _b) = pair().await;
    a.user("alice").await;
    let mut alice = a.login("alice", "pc").await;

    // 1. Stanzas before authentication.
    let mut p = RawPeer::connect(a.s2s, B, A).await;
    p.send("<message from='bob@b.localhost' to='alice@a.localhost'><body>early</body></message>")
        .await;
    p.expect_stream_error("not-authorized").await;

    // 2. A wrong dialback key: b (authoritative) says invalid.
    let mut p = RawPeer::connect(a.s2s, B, A).await;
    let r = p.dialback(B, A, &"0".repeat(64)).await;
    assert_eq!(r.attr("type"), Some("invalid"), "{r}");
    p.expect_stream_error("not-authorized").await;

    // 3. The right key authenticates b.localhost only.
    let mut p = RawPeer::connect(a.s2s, B, A).await;
    let k = key(B_SECRET, A, B, &p.stream_id.clone());
    let r = p.dialback(B, A, &k).await;
    assert_eq!(r.attr("type"), Some("valid"), "{r}");
    p.send("<message from='bob@b.localhost/x' to='alice@a.localhost' type='chat'><body>genuine</body></message>")
        .await;
    let m = wait_for(&mut alice, "the genuine message", |e| e.name == "message").await;
    assert_eq!(body(&m).as_deref(), Some("genuine"));
    // A stanza to a domain a does not serve.
    p.send(
        "<message from='bob@b.localhost/x' to='carol@c.localhost'><body>relay?</body></message>",
    )
    .await;
    p.expect_stream_error("host-unknown").await;

    // 4. Authenticated as b, spoofing another domain.
    let mut p = RawPeer::connect(a.s2s, B, A).await;
    let k = key(B_SECRET, A, B, &p.stream_id.clone());
    assert_eq!(p.dialback(B, A, &k).await.attr("type"), Some("valid"));
    p.send(
        "<message from='admin@a.localhost' to='alice@a.localhost'><body>spoofed</body></message>",
    )
    .await;
    p.expect_stream_error("invalid-from").await;
    let mut p = RawPeer::connect(a.s2s, B, A).await;
    let k = key(B_SECRET, A, B, &p.stream_id.clone());
    assert_eq!(p.dialback(B, A, &k).await.attr("type"), Some("valid"));
    p.send("<message from='mallory@evil.localhost' to='alice@a.localhost'><body>spoofed</body></message>")
        .await;
    p.expect_stream_error("invalid-from").await;
    // A key for another stream id is worthless.
    let mut p = RawPeer::connect(a.s2s, B, A).await;
    let k = key(B_SECRET, A, B, "some-other-stream");
    assert_eq!(p.dialback(B, A, &k).await.attr("type"), Some("invalid"));
    alice.expect_nothing().await;

    // 5. Claiming a domain whose server does not exist (no route, no DNS):
    // the dialback fails with an error, nothing is authenticated.
    let mut p = RawPeer::connect(a.s2s, "evil.localhost", A).await;
    let r = p.dialback("evil.localhost", A, &"1".repeat(64)).await;
    assert_eq!(r.attr("type"), Some("error"), "{r}");
    // XEP-0220 §2.4: the <error/> is in the stream's namespace, where
    // ejabberd's codec reads it.
    let e = r
        .child("error", ns::SERVER)
        .unwrap_or_else(|| panic!("{r}"));
    assert!(
        e.child("remote-server-not-found", ns::STANZAS).is_some(),
        "{r}"
    );
    p.send(
        "<message from='x@evil.localhost' to='alice@a.localhost'><body>spoofed</body></message>",
    )
    .await;
    p.expect_stream_error("not-authorized").await;
    alice.expect_nothing().await;
}

#[tokio::test]
async fn authoritative_role_answers_verify_requests() {
    let (_a, b) = pair().await;
    // Talk to b as "a.localhost" asking about a key b supposedly gave.
    let mut p = RawPeer::connect(b.s2s, A, B).await;
    let good = key(B_SECRET, A, B, "stream-123");
    p.send(&format!(
        "<db:verify from='{A}' to='{B}' id='stream-123'>{good}</db:verify>"
    ))
    .await;
    let v = p.next().await.unwrap();
    assert_eq!(v.name, "verify");
    assert_eq!(v.attr("type"), Some("valid"), "{v}");
    assert_eq!(v.attr("from"), Some(B));
    assert_eq!(v.attr("to"), Some(A));
    p.send(&format!(
        "<db:verify from='{A}' to='{B}' id='stream-124'>{good}</db:verify>"
    ))
    .await;
    let v = p.next().await.unwrap();
    assert_eq!(v.attr("type"), Some("invalid"), "{v}");
}

// ------------------------------------------------ abuse defences (item 5)

/// Sends an IQ and returns the answer with the same id.
async fn iq(c: &mut Client, ty: &str, to: &str, payload: &str) -> Element {
    let id = c.id("iq");
    c.send(&format!(
        "<iq type='{ty}' id='{id}' to='{to}'>{payload}</iq>"
    ))
    .await;
    wait_for(c, "the IQ answer", |e| {
        e.name == "iq" && e.attr("id") == Some(id.as_str())
    })
    .await
}

fn reputation_of(n: &Node, domain: &str) -> Option<waxwing_core::s2s::reputation::DomainStatus> {
    n.running
        .server
        .domain_reputations()
        .into_iter()
        .find(|s| s.record.domain == domain)
}

/// A raw peer authenticated as b.localhost by dialback.
async fn authenticated_peer(a: &Node) -> RawPeer {
    let mut p = RawPeer::connect(a.s2s, B, A).await;
    let k = key(B_SECRET, A, B, &p.stream_id.clone());
    assert_eq!(p.dialback(B, A, &k).await.attr("type"), Some("valid"));
    p
}

#[tokio::test]
async fn per_domain_rate_limit_refuses_the_excess_then_closes_the_stream() {
    let (a, _b) = pair_with("stanza_rate = 1\nstanza_burst = 5\n", "").await;
    a.user("alice").await;
    let mut alice = a.login("alice", "pc").await;
    let mut p = authenticated_peer(&a).await;
    for i in 0..6 {
        p.send(&format!(
            "<message from='bob@b.localhost/x' to='alice@a.localhost' type='chat' id='r{i}'><body>n{i}</body></message>"
        ))
        .await;
    }
    for i in 0..5 {
        let m = wait_for(&mut alice, "an admitted message", |e| e.name == "message").await;
        assert_eq!(body(&m), Some(format!("n{i}")), "{m}");
    }
    // The sixth: a policy-violation stanza error back to the sender.
    let e = loop {
        let el = p.next().await.expect("the error for r5");
        if el.attr("id") == Some("r5") {
            break el;
        }
    };
    assert_eq!(e.attr("type"), Some("error"), "{e}");
    let err = e.child("error", ns::SERVER).expect("error child");
    assert_eq!(err.attr("type"), Some("wait"), "{e}");
    assert!(err.child("policy-violation", ns::STANZAS).is_some(), "{e}");
    assert_eq!(e.attr("to"), Some("bob@b.localhost/x"), "{e}");
    alice.expect_nothing().await;
    let r = reputation_of(&a, B).expect("b has a record");
    assert_eq!(r.record.rate_limit_hits, 1, "one episode: {r:?}");
    // A peer that ignores the errors loses its stream.
    for i in 0..60 {
        p.send(&format!(
            "<message from='bob@b.localhost/x' to='alice@a.localhost' id='f{i}'><body>flood</body></message>"
        ))
        .await;
    }
    p.expect_stream_error("policy-violation").await;
    assert_eq!(reputation_of(&a, B).unwrap().record.rate_limit_hits, 1);
    // Persisted.
    let stored = a.running.server.stores.reputation.get(B).await.unwrap();
    assert_eq!(stored.map(|r| r.rate_limit_hits), Some(1));
}

#[tokio::test]
async fn configured_block_list_works_both_ways() {
    let (a, b) = pair_with("blocked_domains = [\"B.localhost\"]\n", "").await;
    a.user("alice").await;
    b.user("bob").await;
    let mut alice = a.login("alice", "pc").await;
    alice
        .send("<message to='bob@b.localhost' id='x1'><body>hi</body></message>")
        .await;
    let e = wait_for(&mut alice, "bounce", |e| e.attr("id") == Some("x1")).await;
    assert!(has_stanza_error(&e, "not-allowed"), "{e}");
    // b cannot authenticate to a.
    let mut p = RawPeer::connect(a.s2s, B, A).await;
    let k = key(B_SECRET, A, B, &p.stream_id.clone());
    let r = p.dialback(B, A, &k).await;
    assert_eq!(r.attr("type"), Some("error"), "{r}");
    let mut bob = b.login("bob", "phone").await;
    bob.send("<message to='alice@a.localhost' id='x2'><body>hi</body></message>")
        .await;
    let e = wait_for(&mut bob, "bounce", |e| e.attr("id") == Some("x2")).await;
    assert_eq!(e.attr("type"), Some("error"), "{e}");
    alice.expect_nothing().await;
    let r = reputation_of(&a, B).expect("listed");
    assert!(r.configured_block, "{r:?}");
}

#[tokio::test]
async fn admins_block_and_unblock_domains_with_ad_hoc_commands() {
    const CMD: &str = "http://jabber.org/protocol/commands";
    let (a, _b) = pair().await;
    a.user("admin").await;
    a.user("alice").await;
    let mut admin = a.login("admin", "console").await;
    let mut alice = a.login("alice", "pc").await;
    // An authenticated stream from b, open before the block.
    let mut p = authenticated_peer(&a).await;

    let form = |node: &str, domain: &str| {
        format!(
            "<command xmlns='{CMD}' node='urn:waxwing:admin#{node}' action='execute'>\
             <x xmlns='jabber:x:data' type='submit'><field var='domain'><value>{domain}</value></field></x></command>"
        )
    };
    // Only admins.
    let r = iq(&mut alice, "set", A, &form("block-domain", B)).await;
    assert!(has_stanza_error(&r, "forbidden"), "{r}");
    // Our own domain cannot be blocked.
    let r = iq(&mut admin, "set", A, &form("block-domain", A)).await;
    assert!(has_stanza_error(&r, "not-acceptable"), "{r}");

    let r = iq(&mut admin, "set", A, &form("block-domain", "B.Localhost")).await;
    let cmd = r.child("command", CMD).unwrap_or_else(|| panic!("{r}"));
    assert_eq!(cmd.attr("status"), Some("completed"), "{r}");
    // The open stream is closed at its next stanza.
    p.send("<message from='bob@b.localhost/x' to='alice@a.localhost'><body>after</body></message>")
        .await;
    p.expect_stream_error("policy-violation").await;
    alice.expect_nothing().await;
    // Persisted, and listed.
    let stored = a.running.server.stores.reputation.get(B).await.unwrap();
    assert!(stored.is_some_and(|r| r.blocked));
    let r = iq(
        &mut admin,
        "set",
        A,
        &format!(
            "<command xmlns='{CMD}' node='urn:waxwing:admin#domain-reputation' action='execute'/>"
        ),
    )
    .await;
    let x = r
        .child("command", CMD)
        .and_then(|c| c.child("x", "jabber:x:data"))
        .unwrap_or_else(|| panic!("{r}"));
    let row = x
        .children()
        .find(|i| i.name == "item")
        .unwrap_or_else(|| panic!("{r}"));
    let value = |var: &str| {
        row.children()
            .find(|f| f.attr("var") == Some(var))
            .and_then(|f| f.children().next())
            .map(|v| v.text())
    };
    assert_eq!(value("domain").as_deref(), Some(B), "{r}");
    assert_eq!(value("standing").as_deref(), Some("blocked"), "{r}");
    assert_eq!(value("blocked-by").as_deref(), Some("administrator"), "{r}");

    let r = iq(&mut admin, "set", A, &form("unblock-domain", B)).await;
    assert_eq!(
        r.child("command", CMD).and_then(|c| c.attr("status")),
        Some("completed"),
        "{r}"
    );
    let mut p = authenticated_peer(&a).await;
    p.send("<message from='bob@b.localhost/x' to='alice@a.localhost' type='chat'><body>welcome back</body></message>")
        .await;
    let m = wait_for(&mut alice, "the message", |e| e.name == "message").await;
    assert_eq!(body(&m).as_deref(), Some("welcome back"));
}

#[tokio::test]
async fn spam_reports_count_against_the_domain() {
    // Each report adds 1 and scores decay with time: thresholds just under
    // 1 and 2, so the seconds a loaded machine takes cannot decide it.
    let (a, _b) = pair_with("[s2s.reputation]\nthrottle_at = 0.9\nblock_at = 1.9\n", "").await;
    a.user("alice").await;
    let mut alice = a.login("alice", "pc").await;
    // A failed dialback (b, authoritative, says the key is wrong) proves
    // nothing about b: anyone may claim to be b (issue 14).
    let mut p = RawPeer::connect(a.s2s, B, A).await;
    let r = p.dialback(B, A, &"0".repeat(64)).await;
    assert_eq!(r.attr("type"), Some("invalid"), "{r}");
    assert!(reputation_of(&a, B).is_none());
    // A XEP-0377 spam report carried on a XEP-0191 block.
    let report = "<report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'/>";
    let r = iq(
        &mut alice,
        "set",
        "alice@a.localhost",
        &format!("<block xmlns='urn:xmpp:blocking'><item jid='spammer@b.localhost'>{report}</item></block>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let s = reputation_of(&a, B).expect("recorded");
    assert_eq!(s.standing.as_str(), "throttled");
    // Blocking again does not report twice; local JIDs are never counted.
    iq(
        &mut alice,
        "set",
        "alice@a.localhost",
        &format!("<block xmlns='urn:xmpp:blocking'><item jid='spammer@b.localhost'>{report}</item><item jid='x@a.localhost'>{report}</item></block>"),
    )
    .await;
    let s = reputation_of(&a, B).unwrap();
    assert_eq!(s.record.spam_reports, 1, "{s:?}");
    assert_eq!(s.standing.as_str(), "throttled", "{s:?}");
    // A second spammer of the domain.
    iq(
        &mut alice,
        "set",
        "alice@a.localhost",
        &format!(
            "<block xmlns='urn:xmpp:blocking'><item jid='other@b.localhost'>{report}</item></block>"
        ),
    )
    .await;
    let s = reputation_of(&a, B).unwrap();
    assert_eq!(s.record.spam_reports, 2, "{s:?}");
    assert_eq!(s.standing.as_str(), "blocked", "{s:?}");
    assert!(reputation_of(&a, A).is_none());
    // Past block_at, b cannot authenticate any more.
    let mut p = RawPeer::connect(a.s2s, B, A).await;
    let k = key(B_SECRET, A, B, &p.stream_id.clone());
    assert_eq!(p.dialback(B, A, &k).await.attr("type"), Some("error"));
}

#[tokio::test]
async fn federation_with_compression_on() {
    // As certificates_authenticate_with_sasl_external, with [compression]
    // on at both ends: a → b authenticates with SASL EXTERNAL, then
    // compresses (XEP-0138 needs the stream restart SASL gives).
    let (a, b) = on_free_port(|pb| async move {
        let a = Node::start(
            A,
            0,
            &format!(
                "[s2s]\nconnect_timeout_secs = 5\n[s2s.routes]\n\"{B}\" = \"127.0.0.1:{pb}\"\n[compression]\nenabled = true\n"
            ),
        )
        .await;
        let a_cert = a.dir.path().join("tls").join(format!("{A}.crt"));
        let b = Node::try_start(
            B,
            pb,
            &format!(
                "[s2s]\nconnect_timeout_secs = 5\nca_bundle = {:?}\n[s2s.routes]\n\"{A}\" = \"127.0.0.1:{}\"\n[compression]\nenabled = true\n",
                a_cert.display().to_string(),
                a.s2s
            ),
        )
        .await;
        a.and(b).await
    })
    .await;
    a.user("alice").await;
    b.user("bob").await;
    let mut alice = a.login("alice", "pc").await;
    let mut bob = b.login("bob", "phone").await;
    for i in 0..10 {
        alice
            .send(&format!(
                "<message to='bob@b.localhost' type='chat'><body>compressed {i}</body></message>"
            ))
            .await;
        let m = wait_for(&mut bob, "alice's message", |e| e.name == "message").await;
        assert_eq!(body(&m), Some(format!("compressed {i}")));
    }
    assert_eq!(
        a.running.server.s2s.compressed_streams(),
        1,
        "a's outgoing stream"
    );
    assert_eq!(
        b.running.server.s2s.compressed_streams(),
        1,
        "b's incoming stream"
    );
    // b → a comes back over a's (bidirectional, compressed) stream.
    bob.send("<message to='alice@a.localhost' type='chat'><body>back</body></message>")
        .await;
    let m = wait_for(&mut alice, "bob's message", |e| e.name == "message").await;
    assert_eq!(body(&m).as_deref(), Some("back"));
}

// ------------------------------------------------ XEP-0288 bidirectional streams

fn s2s_counts(n: &Node) -> (usize, usize, usize) {
    let s2s = &n.running.server.s2s;
    (
        s2s.outgoing_streams_opened(),
        s2s.bidi_streams(),
        s2s.outgoing_count(),
    )
}

/// alice@a and bob@b exchange a message each way.
async fn exchange(a: &Node, b: &Node) {
    a.user("alice").await;
    b.user("bob").await;
    let mut alice = a.login("alice", "pc").await;
    let mut bob = b.login("bob", "phone").await;
    alice
        .send("<message to='bob@b.localhost' type='chat'><body>there</body></message>")
        .await;
    let m = wait_for(&mut bob, "alice's message", |e| e.name == "message").await;
    assert_eq!(body(&m).as_deref(), Some("there"), "{m}");
    bob.send("<message to='alice@a.localhost/pc' type='chat'><body>and back</body></message>")
        .await;
    let m = wait_for(&mut alice, "bob's reply", |e| e.name == "message").await;
    assert_eq!(m.attr("from"), Some("bob@b.localhost/phone"), "{m}");
    assert_eq!(body(&m).as_deref(), Some("and back"), "{m}");
}

#[tokio::test]
async fn bidi_carries_both_directions_over_one_connection() {
    let (a, b) = pair().await;
    exchange(&a, &b).await;
    // a opened the one stream and made it bidirectional; b answered over
    // it (its route to a is the incoming stream) and opened none.
    assert_eq!(s2s_counts(&a), (1, 1, 1), "a: opened, bidi, routes");
    assert_eq!(s2s_counts(&b), (0, 1, 1), "b: opened, bidi, routes");
}

#[tokio::test]
async fn bidi_off_on_either_side_falls_back_to_two_connections() {
    for (a_extra, b_extra) in [("bidi = false\n", ""), ("", "bidi = false\n")] {
        let (a, b) = pair_with(a_extra, b_extra).await;
        exchange(&a, &b).await;
        assert_eq!(s2s_counts(&a), (1, 0, 1), "a ({a_extra}{b_extra})");
        assert_eq!(s2s_counts(&b), (1, 0, 1), "b ({a_extra}{b_extra})");
    }
}

#[tokio::test]
async fn bidi_incoming_stream_becomes_the_route_for_its_authenticated_pair_only() {
    let (a, b) = pair().await;
    a.user("alice").await;
    b.user("bob").await;
    let mut alice = a.login("alice", "pc").await;
    let mut bob = b.login("bob", "phone").await;

    // A peer (as b) asks for bidi, then authenticates by dialback.
    let mut p = RawPeer::connect(a.s2s, B, A).await;
    p.send("<bidi xmlns='urn:xmpp:bidi'/>").await;
    let k = key(B_SECRET, A, B, &p.stream_id.clone());
    assert_eq!(p.dialback(B, A, &k).await.attr("type"), Some("valid"));
    assert_eq!(a.running.server.s2s.bidi_streams(), 1);

    // a's stanzas for b now go out on that stream, in jabber:server.
    alice
        .send("<message to='bob@b.localhost' type='chat' id='x1'><body>over bidi</body></message>")
        .await;
    let m = p.next().await.expect("alice's message on the bidi stream");
    assert_eq!(m.name, "message", "{m}");
    assert_eq!(m.ns, ns::SERVER);
    assert_eq!(m.attr("from"), Some("alice@a.localhost/pc"), "{m}");
    assert_eq!(
        m.child("body", ns::SERVER).map(|b| b.text()).as_deref(),
        Some("over bidi"),
        "{m}"
    );
    assert_eq!(
        a.running.server.s2s.outgoing_streams_opened(),
        0,
        "no connection of a's own"
    );

    // Stanzas the peer sends still need an authenticated pair.
    p.send("<message from='bob@b.localhost/x' to='alice@a.localhost' type='chat'><body>reply</body></message>")
        .await;
    let m = wait_for(&mut alice, "the reply", |e| e.name == "message").await;
    assert_eq!(body(&m).as_deref(), Some("reply"));

    // When the peer goes, the route goes with it: the next message opens
    // a's own connection to the real b.
    p.send("</stream:stream>").await;
    while p.next().await.is_some() {}
    alice
        .send("<message to='bob@b.localhost' type='chat'><body>direct</body></message>")
        .await;
    let m = wait_for(&mut bob, "the message over a's own stream", |e| {
        e.name == "message"
    })
    .await;
    assert_eq!(body(&m).as_deref(), Some("direct"));
    assert_eq!(a.running.server.s2s.outgoing_streams_opened(), 1);
}

#[tokio::test]
async fn bidi_is_not_offered_when_off_and_refused_when_asked_anyway() {
    let (a, _b) = pair_with("bidi = false\n", "").await;
    let mut p = RawPeer::connect(a.s2s, B, A).await;
    assert!(!p.features_offered_bidi);
    p.send("<bidi xmlns='urn:xmpp:bidi'/>").await;
    p.expect_stream_error("unsupported-stanza-type").await;
    let (a, _b) = pair().await;
    let p = RawPeer::connect(a.s2s, B, A).await;
    assert!(p.features_offered_bidi);
}

// ------------------------------------------------ PEP across federation (XEP-0163 §4.3)

const TUNE: &str = "http://jabber.org/protocol/tune";
const NICK: &str = "http://jabber.org/protocol/nick";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";

/// XEP-0115 ver (sha-256) of a client with one identity and `features`.
fn caps_ver(features: &[&str]) -> String {
    use base64::Engine;
    // XEP-0115 §5.1: sorted on the bare values, then each gets its '<'.
    let mut f: Vec<String> = features.iter().map(|f| f.to_string()).collect();
    f.sort();
    let f: Vec<String> = f.into_iter().map(|f| format!("{f}<")).collect();
    let s = format!("client/pc//Remote<{}", f.concat());
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(s.as_bytes()))
}

impl Node {
    /// Logs in and sends available presence with caps for `features`; then
    /// answers the disco#info query `asker` sends for them (over s2s).
    async fn login_with_caps(
        &self,
        local: &str,
        resource: &str,
        features: &[&str],
        asker: &str,
    ) -> Client {
        let mut c = Client::connect_plain(self.c2s).await;
        c.domain = self.domain.to_string();
        c.open_stream().await;
        c.starttls().await;
        c.auth_scram_sha256(local, &password(local)).await;
        c.bind(Some(resource)).await;
        c.get_roster().await;
        let v = caps_ver(features);
        c.send(&format!(
            "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-256' \
             node='https://remote.test' ver='{v}'/></presence>"
        ))
        .await;
        // Our own server asks too (for its own PEP); answer every query
        // until `asker`'s.
        let node = format!("https://remote.test#{v}");
        let feats: String = features
            .iter()
            .map(|f| format!("<feature var='{f}'/>"))
            .collect();
        loop {
            let q = wait_for(&mut c, "the caps query", |e| {
                e.name == "iq" && e.child("query", ns::DISCO_INFO).is_some()
            })
            .await;
            assert_eq!(q.attr("type"), Some("get"), "{q}");
            assert_eq!(
                q.child("query", ns::DISCO_INFO).unwrap().attr("node"),
                Some(node.as_str()),
                "{q}"
            );
            let from = q.attr("from").unwrap().to_string();
            c.send(&format!(
                "<iq type='result' id='{}' to='{from}'><query xmlns='{}' node='{node}'>\
                 <identity category='client' type='pc' name='Remote'/>{feats}</query></iq>",
                q.attr("id").unwrap(),
                ns::DISCO_INFO
            ))
            .await;
            if from == asker {
                break;
            }
        }
        c
    }
}

fn pep_publish(node: &str, id: &str, payload: &str) -> String {
    format!(
        "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{node}'>\
         <item id='{id}'>{payload}</item></publish></pubsub>"
    )
}

/// The (node, item id) of a PEP event message from `from`.
async fn next_pep_event(c: &mut Client, from: &str) -> (String, String) {
    let m = wait_for(c, "a PEP event", |e| {
        e.name == "message" && e.child("event", EVENT).is_some()
    })
    .await;
    assert_eq!(m.attr("from"), Some(from), "{m}");
    let items = m
        .child("event", EVENT)
        .unwrap()
        .child("items", EVENT)
        .unwrap();
    let item = items.child("item", EVENT).unwrap_or_else(|| panic!("{m}"));
    (
        items.attr("node").unwrap().to_string(),
        item.attr("id").unwrap().to_string(),
    )
}

fn ev(node: &str, id: &str) -> (String, String) {
    (node.to_string(), id.to_string())
}

#[tokio::test]
async fn pep_notifications_reach_remote_contacts_by_their_caps() {
    let (a, b) = pair().await;
    a.user("alice").await;
    b.user("bob").await;
    b.user("carol").await;
    for (n, local, contact) in [
        (&a, "alice", "bob@b.localhost"),
        (&a, "alice", "carol@b.localhost"),
        (&b, "bob", "alice@a.localhost"),
        (&b, "carol", "alice@a.localhost"),
    ] {
        n.contact(local, contact).await;
    }
    let mut alice = a.login("alice", "pc").await;
    let tune = |title: &str| format!("<tune xmlns='{TUNE}'><title>{title}</title></tune>");
    let nick = |n: &str| format!("<nick xmlns='{NICK}'>{n}</nick>");
    for (node, id, payload) in [(TUNE, "t1", tune("one")), (NICK, "n1", nick("Alice"))] {
        let r = alice
            .iq("set", None, &pep_publish(node, id, &payload))
            .await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
    }

    // Bob's client wants tunes, carol's nicks. Their presence reaches
    // alice's server, which asks b's clients for their features (from its
    // PubSub service) and then sends each the last item it wants.
    let tune_notify = format!("{TUNE}+notify");
    let nick_notify = format!("{NICK}+notify");
    let mut bob = b
        .login_with_caps("bob", "phone", &[TUNE, &tune_notify], "pubsub.a.localhost")
        .await;
    assert_eq!(
        next_pep_event(&mut bob, "alice@a.localhost").await,
        ev(TUNE, "t1")
    );
    let mut carol = b
        .login_with_caps("carol", "tab", &[NICK, &nick_notify], "pubsub.a.localhost")
        .await;
    assert_eq!(
        next_pep_event(&mut carol, "alice@a.localhost").await,
        ev(NICK, "n1")
    );

    // Live notifications, each to the contacts whose caps ask for the node
    // only: over one s2s stream, so what a contact did not get first, it
    // will not get later.
    for (node, id, payload) in [
        (TUNE, "t2", tune("two")),
        (NICK, "n2", nick("Alice B.")),
        (TUNE, "t3", tune("three")),
    ] {
        let r = alice
            .iq("set", None, &pep_publish(node, id, &payload))
            .await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
    }
    assert_eq!(
        next_pep_event(&mut bob, "alice@a.localhost").await,
        ev(TUNE, "t2")
    );
    assert_eq!(
        next_pep_event(&mut bob, "alice@a.localhost").await,
        ev(TUNE, "t3")
    );
    assert_eq!(
        next_pep_event(&mut carol, "alice@a.localhost").await,
        ev(NICK, "n2")
    );

    // Bob goes offline: no more notifications for him (carol's next
    // event, after one that bob would have wanted, is hers).
    bob.send("<presence type='unavailable'/>").await;
    let _ = wait_for(&mut alice, "bob's unavailable presence", |e| {
        e.name == "presence" && e.attr("type") == Some("unavailable")
    })
    .await;
    for (node, id, payload) in [(TUNE, "t4", tune("four")), (NICK, "n3", nick("A."))] {
        let r = alice
            .iq("set", None, &pep_publish(node, id, &payload))
            .await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
    }
    assert_eq!(
        next_pep_event(&mut carol, "alice@a.localhost").await,
        ev(NICK, "n3")
    );
    bob.expect_nothing().await;

    // An error from carol's resource saying it is not there (as a bounced
    // notification would): a stops notifying it.
    let mut p = authenticated_peer(&a).await;
    p.send(
        "<message type='error' from='carol@b.localhost/tab' to='alice@a.localhost'>\
         <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
         </error></message>",
    )
    .await;
    // The stream is handled in order: once this reaches alice, so did the error.
    p.send(
        "<message type='chat' from='carol@b.localhost/tab' to='alice@a.localhost'>\
         <body>sync</body></message>",
    )
    .await;
    let m = wait_for(&mut alice, "the sync message", |e| {
        e.name == "message" && e.attr("type") == Some("chat")
    })
    .await;
    assert_eq!(body(&m).as_deref(), Some("sync"), "{m}");
    let r = alice
        .iq("set", None, &pep_publish(NICK, "n4", &nick("gone?")))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    carol.expect_nothing().await;
}

// ------------------------------------------------ vCard across federation (XEP-0054)

#[tokio::test]
async fn vcard_lookups_cross_servers() {
    let (a, b) = pair().await;
    a.user("alice").await;
    b.user("bob").await;
    let mut alice = a.login("alice", "pc").await;
    let mut bob = b.login("bob", "phone").await;
    let r = alice
        .iq(
            "set",
            None,
            "<vCard xmlns='vcard-temp'><FN>Alice Example</FN><NICKNAME>al</NICKNAME></vCard>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let r = bob
        .iq(
            "set",
            None,
            "<vCard xmlns='vcard-temp'><FN>Bob B.</FN></vCard>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");

    // bob@b asks for alice@a's vCard: answered by a, from alice's bare JID.
    let r = bob
        .iq(
            "get",
            Some("alice@a.localhost"),
            "<vCard xmlns='vcard-temp'/>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(r.attr("from"), Some("alice@a.localhost"), "{r}");
    let v = r
        .child("vCard", "vcard-temp")
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(
        v.child("FN", "vcard-temp").map(|f| f.text()).as_deref(),
        Some("Alice Example"),
        "{r}"
    );

    // And the other way.
    let r = alice
        .iq(
            "get",
            Some("bob@b.localhost"),
            "<vCard xmlns='vcard-temp'/>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(r.attr("from"), Some("bob@b.localhost"), "{r}");
    let v = r
        .child("vCard", "vcard-temp")
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(
        v.child("FN", "vcard-temp").map(|f| f.text()).as_deref(),
        Some("Bob B."),
        "{r}"
    );

    // A remote account without a vCard: an empty one; a remote account
    // that does not exist: an error, back across.
    b.user("dave").await;
    let r = alice
        .iq(
            "get",
            Some("dave@b.localhost"),
            "<vCard xmlns='vcard-temp'/>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let r = alice
        .iq(
            "get",
            Some("nobody@b.localhost"),
            "<vCard xmlns='vcard-temp'/>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("error"), "{r}");
    assert_eq!(r.attr("from"), Some("nobody@b.localhost"), "{r}");

    // Nobody may set someone else's vCard, across servers either.
    let r = alice
        .iq(
            "set",
            Some("bob@b.localhost"),
            "<vCard xmlns='vcard-temp'><FN>x</FN></vCard>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("error"), "{r}");
    let r = alice
        .iq(
            "get",
            Some("bob@b.localhost"),
            "<vCard xmlns='vcard-temp'/>",
        )
        .await;
    let v = r
        .child("vCard", "vcard-temp")
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(
        v.child("FN", "vcard-temp").map(|f| f.text()).as_deref(),
        Some("Bob B."),
        "{r}"
    );
}

/// A fake remote server for e.localhost (no TLS; the node must not require
/// it): offers bidi and dialback, accepts any key, then hands the test the
/// stream after the `<bidi/>` and `<db:result/>` it received.
async fn fake_bidi_peer(listener: tokio::net::TcpListener) -> (TcpStream, Framer, Vec<Element>) {
    let (mut tcp, _) = listener.accept().await.unwrap();
    let mut framer = s2s_framer();
    let Some(StreamEvent::Open(h)) = next_event(&mut tcp, &mut framer).await else {
        panic!("stream header");
    };
    assert_eq!(h.to.as_deref(), Some("e.localhost"));
    tcp.write_all(
        format!(
            "<stream:stream xmlns='jabber:server' xmlns:stream='{}' xmlns:db='jabber:server:dialback' \
             from='e.localhost' to='{A}' id='fake-1' version='1.0'><stream:features>\
             <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>\
             <bidi xmlns='urn:xmpp:features:bidi'/></stream:features>",
            ns::STREAM
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    loop {
        let Some(StreamEvent::Stanza(el)) = next_event(&mut tcp, &mut framer).await else {
            panic!("dialback request");
        };
        let done = el.name == "result";
        got.push(el);
        if done {
            break;
        }
    }
    tcp.write_all(format!("<db:result from='e.localhost' to='{A}' type='valid'/>").as_bytes())
        .await
        .unwrap();
    (tcp, framer, got)
}

/// A plain-TCP listener standing in for e.localhost, and node A routing
/// e.localhost to it (no TLS required, so a raw peer can speak there);
/// `extra` goes into A's `[s2s]` table.
async fn node_routing_e_to_a_listener(extra: &str) -> (tokio::net::TcpListener, Node) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let a = Node::start(
        A,
        0,
        &format!(
            "[s2s]\nrequire_encryption = false\n{extra}connect_timeout_secs = 5\n\
             [s2s.routes]\n\"e.localhost\" = \"127.0.0.1:{port}\"\n"
        ),
    )
    .await;
    (listener, a)
}

#[tokio::test]
async fn bidi_outgoing_stream_routes_the_peers_stanzas_for_its_pair_only() {
    let (listener, a) = node_routing_e_to_a_listener("").await;
    a.user("alice").await;
    let mut alice = a.login("alice", "pc").await;
    alice
        .send("<message to='eve@e.localhost' type='chat'><body>hello e</body></message>")
        .await;
    let (mut tcp, mut framer, got) = fake_bidi_peer(listener).await;
    // a asked for bidi before dialback (XEP-0288 §2).
    assert!(got[0].is("bidi", "urn:xmpp:bidi"), "{got:?}");
    assert_eq!(got.last().unwrap().name, "result");
    let Some(StreamEvent::Stanza(m)) = next_event(&mut tcp, &mut framer).await else {
        panic!("alice's message");
    };
    assert_eq!(m.attr("to"), Some("eve@e.localhost"), "{m}");

    // The peer answers on the same stream: routed to alice.
    tcp.write_all(
        b"<message from='eve@e.localhost/x' to='alice@a.localhost' type='chat'><body>hi alice</body></message>",
    )
    .await
    .unwrap();
    let r = wait_for(&mut alice, "eve's reply", |e| e.name == "message").await;
    assert_eq!(r.attr("from"), Some("eve@e.localhost/x"), "{r}");
    assert_eq!(body(&r).as_deref(), Some("hi alice"));
    assert_eq!(a.running.server.s2s.bidi_streams(), 1);

    // It may not authenticate further domains here...
    tcp.write_all(b"<db:result from='other.localhost' to='a.localhost'>00</db:result>")
        .await
        .unwrap();
    let Some(StreamEvent::Stanza(e)) = next_event(&mut tcp, &mut framer).await else {
        panic!("dialback error");
    };
    assert_eq!(e.attr("type"), Some("error"), "{e}");
    // ...nor send for a domain it did not authenticate.
    tcp.write_all(
        b"<message from='mallory@other.localhost' to='alice@a.localhost'><body>spoof</body></message>",
    )
    .await
    .unwrap();
    loop {
        match next_event(&mut tcp, &mut framer).await {
            Some(StreamEvent::Stanza(el)) if el.is("error", ns::STREAM) => {
                assert!(
                    el.child("invalid-from", ns::STREAMS_ERRORS).is_some(),
                    "{el}"
                );
                break;
            }
            Some(_) => {}
            None => panic!("stream closed without <invalid-from/>"),
        }
    }
    alice.expect_nothing().await;
}

/// Reads raw bytes until `needle` appears (or `TIMEOUT` passes); returns
/// all text read. For peers that, like ejabberd (fxml), match dialback
/// elements by their literal prefixed name, not by namespace.
async fn read_raw_until(tcp: &mut TcpStream, needle: &str) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => break,
        }
    }
    seen
}

/// A fake e.localhost (plain TCP; the node must not require TLS) that
/// answers a stream header with its own and dialback-only features.
async fn fake_prefix_matching_peer(listener: &tokio::net::TcpListener, id: &str) -> TcpStream {
    let (mut tcp, _) = listener.accept().await.unwrap();
    let head = read_raw_until(&mut tcp, ">").await;
    assert!(head.contains("<stream:stream"), "{head}");
    tcp.write_all(
        format!(
            "<stream:stream xmlns='jabber:server' xmlns:stream='{}' xmlns:db='jabber:server:dialback' \
             from='e.localhost' to='{A}' id='{id}' version='1.0'><stream:features>\
             <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>",
            ns::STREAM
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tcp
}

/// Originating role, against a peer that matches `db:result` literally
/// (ejabberd): the request carries the prefix, the peer's `valid` answer
/// authenticates the stream and the queued message follows.
#[tokio::test]
async fn dialback_request_carries_the_db_prefix() {
    let (listener, a) = node_routing_e_to_a_listener("bidi = false\n").await;
    a.user("alice").await;
    let mut alice = a.login("alice", "pc").await;
    alice
        .send("<message to='eve@e.localhost' type='chat'><body>hello e</body></message>")
        .await;
    let mut tcp = fake_prefix_matching_peer(&listener, "fake-2").await;
    let seen = read_raw_until(&mut tcp, "</db:result>").await;
    let start = seen
        .find("<db:result")
        .unwrap_or_else(|| panic!("no <db:result> on the wire: {seen}"));
    let end = seen.find("</db:result>").unwrap() + "</db:result>".len();
    let request = waxwing_proto::xml::parse_stanza(&seen[start..end], ns::SERVER).unwrap();
    assert!(request.is("result", "jabber:server:dialback"), "{request}");
    assert_eq!(request.attr("from"), Some(A));
    assert_eq!(request.attr("to"), Some("e.localhost"));
    tcp.write_all(format!("<db:result from='e.localhost' to='{A}' type='valid'/>").as_bytes())
        .await
        .unwrap();
    let m = read_raw_until(&mut tcp, "hello e").await;
    assert!(m.contains("to='eve@e.localhost'"), "{m}");
}

/// Receiving role: verifying e.localhost's key, the node's `<db:verify/>`
/// to the (fake) authoritative server carries the prefix, and the peer's
/// answer authenticates the raw peer's stream.
#[tokio::test]
async fn dialback_verification_carries_the_db_prefix() {
    let (listener, a) = node_routing_e_to_a_listener("").await;
    let mut p = RawPeer::connect(a.s2s, "e.localhost", A).await;
    p.send(&format!(
        "<db:result from='e.localhost' to='{A}'>0123abcd</db:result>"
    ))
    .await;
    let mut tcp = fake_prefix_matching_peer(&listener, "fake-3").await;
    let seen = read_raw_until(&mut tcp, "</db:verify>").await;
    let start = seen
        .find("<db:verify")
        .unwrap_or_else(|| panic!("no <db:verify> on the wire: {seen}"));
    let end = seen.find("</db:verify>").unwrap() + "</db:verify>".len();
    let v = waxwing_proto::xml::parse_stanza(&seen[start..end], ns::SERVER).unwrap();
    assert!(v.is("verify", "jabber:server:dialback"), "{v}");
    assert_eq!(v.attr("from"), Some(A));
    assert_eq!(v.attr("to"), Some("e.localhost"));
    assert_eq!(v.attr("id"), Some(p.stream_id.as_str()));
    assert_eq!(v.text().trim(), "0123abcd");
    tcp.write_all(
        format!(
            "<db:verify from='e.localhost' to='{A}' id='{}' type='valid'/>",
            p.stream_id
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let r = loop {
        let el = p.next().await.expect("dialback answer");
        if el.name == "result" {
            break el;
        }
    };
    assert_eq!(r.attr("type"), Some("valid"), "{r}");
}

// ------------------------------------- issue 14: unauthenticated s2s peers

/// A fake peer (another address than b's real server) sends 1,000 junk
/// dialback keys claiming b.localhost. The failures are charged to its
/// address: b's score stays 0 and b federates as before, while the fake
/// peer's keys soon stop being verified at all (each verification is a
/// connection a opens to b).
#[tokio::test]
async fn issue_14_junk_dialbacks_are_charged_to_the_address_not_the_claimed_domain() {
    let (a, b) = pair().await;
    a.user("alice").await;
    b.user("bob").await;
    let attacker = IpAddr::from([127, 0, 0, 2]);
    let junk = format!(
        "<db:result from='{B}' to='{A}'>{}</db:result>",
        "0".repeat(64)
    );
    let (mut sent, mut refused_unverified) = (0, 0);
    while sent < 1000 {
        // Eight per stream: as many as one stream may have verified at once.
        let mut p = RawPeer::connect_from(attacker, a.s2s, B, A).await;
        let n = (1000 - sent).min(8);
        p.send(&junk.repeat(n)).await;
        sent += n;
        let mut answers = 0;
        while answers < n {
            let Some(el) = p.next().await else { break };
            if el.name != "result" {
                continue;
            }
            answers += 1;
            assert_ne!(el.attr("type"), Some("valid"), "{el}");
            if el.to_xml().contains("policy-violation") {
                refused_unverified += 1;
            }
        }
    }
    let server = &a.running.server;
    assert!(refused_unverified > 900, "{refused_unverified}");
    let c = &server.config.s2s;
    let started = server.s2s.inbound.verifications_started();
    assert!(
        started <= (c.max_failed_dialbacks_per_ip + c.max_verifications_per_ip) as usize,
        "{started} verifications for one address"
    );
    let score = reputation_of(&a, B).map_or(0.0, |s| s.record.score);
    assert_eq!(score, 0.0, "{:?}", reputation_of(&a, B));
    // b's real server (127.0.0.1) still federates, both ways.
    let mut alice = a.login("alice", "pc").await;
    let mut bob = b.login("bob", "phone").await;
    bob.send("<message to='alice@a.localhost/pc' type='chat'><body>still here</body></message>")
        .await;
    let m = wait_for(&mut alice, "bob's message", |e| e.name == "message").await;
    assert_eq!(body(&m).as_deref(), Some("still here"), "{m}");
    alice
        .send("<message to='bob@b.localhost/phone' type='chat'><body>hello b</body></message>")
        .await;
    let m = wait_for(&mut bob, "alice's message", |e| e.name == "message").await;
    assert_eq!(body(&m).as_deref(), Some("hello b"), "{m}");
    assert_eq!(reputation_of(&a, B).map_or(0.0, |s| s.record.score), 0.0);
}

/// A peer that gets `<proceed/>` and then never finishes the TLS handshake
/// is cut off by `auth_timeout`.
#[tokio::test]
async fn issue_14_stalled_starttls_handshake_times_out() {
    let a = Node::start(A, 0, "[limits]\nauth_timeout_secs = 1\n").await;
    let mut tcp = TcpStream::connect(("127.0.0.1", a.s2s)).await.unwrap();
    let mut framer = s2s_framer();
    tcp.write_all(s2s_header(B, A).as_bytes()).await.unwrap();
    assert!(matches!(
        next_event(&mut tcp, &mut framer).await,
        Some(StreamEvent::Open(_))
    ));
    assert!(matches!(
        next_event(&mut tcp, &mut framer).await,
        Some(StreamEvent::Stanza(_))
    ));
    tcp.write_all(format!("<starttls xmlns='{}'/>", ns::TLS).as_bytes())
        .await
        .unwrap();
    let Some(StreamEvent::Stanza(p)) = next_event(&mut tcp, &mut framer).await else {
        panic!("proceed");
    };
    assert!(p.is("proceed", ns::TLS), "{p}");
    // The start of a ClientHello record, and then nothing.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(TIMEOUT, tcp.read(&mut buf))
        .await
        .expect("the server closes the stalled handshake")
        .unwrap_or(0);
    assert_eq!(n, 0, "EOF, nothing else");
}

/// Reads the server's header and the first element of a plain s2s stream.
async fn open_plain(source: IpAddr, port: u16) -> (TcpStream, Element) {
    let mut tcp = connect_from(source, port).await;
    let mut framer = s2s_framer();
    tcp.write_all(s2s_header(B, A).as_bytes()).await.unwrap();
    assert!(matches!(
        next_event(&mut tcp, &mut framer).await,
        Some(StreamEvent::Open(_))
    ));
    let Some(StreamEvent::Stanza(el)) = next_event(&mut tcp, &mut framer).await else {
        panic!("features or error");
    };
    (tcp, el)
}

#[tokio::test]
async fn issue_14_incoming_connections_per_address_are_limited() {
    let a = Node::start(A, 0, "[s2s]\nmax_incoming_per_ip = 2\n").await;
    let here = LOOPBACK;
    let (first, f) = open_plain(here, a.s2s).await;
    assert!(f.is("features", ns::STREAM), "{f}");
    let (_second, f) = open_plain(here, a.s2s).await;
    assert!(f.is("features", ns::STREAM), "{f}");
    let (_, e) = open_plain(here, a.s2s).await;
    assert!(e.is("error", ns::STREAM), "{e}");
    assert!(
        e.child("policy-violation", ns::STREAMS_ERRORS).is_some(),
        "{e}"
    );
    // Another address has its own allowance.
    let (_other, f) = open_plain(IpAddr::from([127, 0, 0, 3]), a.s2s).await;
    assert!(f.is("features", ns::STREAM), "{f}");
    // A closed connection gives its slot back.
    drop(first);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while a.running.server.s2s.inbound.connections_from(here) > 1 {
        assert!(tokio::time::Instant::now() < deadline, "slot not released");
        tokio::task::yield_now().await;
    }
    let (_third, f) = open_plain(here, a.s2s).await;
    assert!(f.is("features", ns::STREAM), "{f}");
}

#[tokio::test]
async fn issue_14_outgoing_routes_are_bounded() {
    let (a, b) = pair_with("max_outgoing_routes = 1\n", "").await;
    a.user("alice").await;
    b.user("bob").await;
    let mut alice = a.login("alice", "pc").await;
    let mut bob = b.login("bob", "phone").await;
    alice
        .send("<message to='bob@b.localhost/phone' type='chat'><body>hi</body></message>")
        .await;
    wait_for(&mut bob, "alice's message", |e| e.name == "message").await;
    assert_eq!(a.running.server.s2s.outgoing_count(), 1);
    // A second remote domain would need a second route.
    alice
        .send("<message to='x@evil.localhost' type='chat' id='second'><body>hi</body></message>")
        .await;
    let e = wait_for(&mut alice, "the bounce", |e| e.attr("id") == Some("second")).await;
    assert_eq!(e.attr("type"), Some("error"), "{e}");
    let err = e.child("error", ns::CLIENT).expect("error child");
    assert_eq!(err.attr("type"), Some("wait"), "{e}");
    assert!(
        err.child("resource-constraint", ns::STANZAS).is_some(),
        "{e}"
    );
    assert_eq!(a.running.server.s2s.routes_refused(), 1);
    // The live route is unharmed.
    alice
        .send("<message to='bob@b.localhost/phone' type='chat'><body>again</body></message>")
        .await;
    let m = wait_for(&mut bob, "alice's second message", |e| e.name == "message").await;
    assert_eq!(body(&m).as_deref(), Some("again"));
}

// ------------- issue 14: half-open TLS connections against the real binary

/// Raises this process's soft open-file limit to `n` when it is lower (the
/// server spawned next inherits it).
fn raise_open_file_limit(n: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    if l.current.is_none_or(|c| c >= n) {
        return;
    }
    let max = l.maximum.unwrap_or(u64::MAX);
    assert!(max >= n, "the hard open-file limit ({max}) is below {n}");
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(n),
            maximum: l.maximum,
        },
    )
    .expect("raise the open-file limit");
}

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Polls `f` every 20 ms until it holds, failing after `within`.
async fn poll_until(what: &str, within: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The real binary, killed when dropped.
struct Binary {
    child: std::process::Child,
    s2s_direct_tls: u16,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `waxwing serve` and waits for `waxwing: ready`.
fn spawn_binary(config: &std::path::Path) -> Binary {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_waxwing"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn waxwing");
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut port = None;
    for line in stdout.lines() {
        let line = line.expect("server stdout");
        if let Some(addr) = line.strip_prefix("waxwing: listening s2s_direct_tls ") {
            port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
        }
        if line == "waxwing: ready" {
            break;
        }
    }
    Binary {
        child,
        s2s_direct_tls: port.expect("the server printed its s2s_direct_tls port"),
    }
}

/// Opens `n` connections to `port`, each sending the start of a TLS
/// ClientHello and nothing more, from 100 connections per source address
/// (127.0.`subnet`.x: under the default `max_incoming_per_ip`); a few
/// hundred at a time, so a loaded machine still opens them all quickly.
async fn half_open_tls(port: u16, n: usize, subnet: u8) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(250) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            set.spawn(async move {
                let source = IpAddr::from([127, 0, subnet, 1 + (i / 100) as u8]);
                let mut tcp = connect_from(source, port).await;
                tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                    .await
                    .unwrap();
                tcp
            });
        }
        while let Some(tcp) = set.join_next().await {
            conns.push(tcp.unwrap());
        }
    }
    conns
}

/// Waits until the server closed every connection (EOF or reset).
async fn until_all_closed(conns: Vec<TcpStream>, within: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 256];
    for mut c in conns {
        let r = tokio::time::timeout_at(deadline, c.read(&mut buf))
            .await
            .expect("the server closes every half-open connection by the deadline");
        assert!(matches!(r, Ok(0) | Err(_)), "the server wrote {r:?}");
    }
}

/// 5,000 s2s connections that never finish their TLS handshake are closed
/// after `auth_timeout` (20 s here: opening them on a loaded machine takes
/// a while, and the peak must hold them all), twice over.
///
/// Each time, the spike's memory goes back to the OS (the workers give the
/// freed pages back when they park: src/allocator.rs; within 10 % of the
/// baseline when measured on a quiet machine, at least three quarters of
/// the spike asserted), and the second wave peaks no higher than the first.
#[tokio::test]
async fn issue_14_half_open_s2s_tls_connections_are_closed_by_the_deadline() {
    const N: usize = 5000;
    const AUTH_TIMEOUT_SECS: u64 = 20;
    let within = std::time::Duration::from_secs(AUTH_TIMEOUT_SECS + 30);
    raise_open_file_limit(2 * N as u64 + 1000);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("waxwing.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nhosts = [\"{A}\"]\n\
             [listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = []\ns2s = []\n\
             s2s_direct_tls = [\"127.0.0.1:0\"]\n\
             [limits]\nauth_timeout_secs = {AUTH_TIMEOUT_SECS}\n[log]\nlevel = \"warn\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let server = spawn_binary(&config);
    let pid = server.child.id();
    // Warm-up: the first connections build lazily made state (TLS
    // configuration, runtime buffers) that the baseline should include.
    let warm = half_open_tls(server.s2s_direct_tls, 200, 9).await;
    until_all_closed(warm, within).await;
    let fds = open_fds(pid);
    let baseline = rss_kib(pid);

    let mut waves = Vec::new();
    for wave in 0..2u8 {
        let started = std::time::Instant::now();
        let conns = half_open_tls(server.s2s_direct_tls, N, 1 + wave).await;
        let opened = started.elapsed();
        poll_until(
            &format!("the server accepts all 5,000 (opened in {opened:?}, {fds} fds before)"),
            within,
            || open_fds(pid) >= fds + N,
        )
        .await;
        let peak = rss_kib(pid);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(AUTH_TIMEOUT_SECS),
            "opening took longer than the deadline: the peak does not hold them all"
        );
        until_all_closed(conns, within).await;
        poll_until("the server closes its side", within, || {
            open_fds(pid) <= fds
        })
        .await;
        // The allocator gives the spike back as the workers collect, which
        // they do when they park, at most once a second (src/allocator.rs).
        // A server in use is never idle for long; this one gets a short
        // connection now and then, so its workers wake and park again while
        // RSS is read (the pause paces those connections; RSS is the
        // condition waited for). Measured alone and beside the interop
        // suite: back within 10 % of the baseline. Under the whole CI load
        // it once stopped at +37 % within the deadline, so the test asks for
        // three quarters of the spike back and prints the figure.
        let target = baseline + (peak - baseline) / 4;
        let deadline = tokio::time::Instant::now() + within;
        let after_close = loop {
            let rss = rss_kib(pid);
            if rss <= target {
                break rss;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "RSS {rss} KiB: not three quarters of the spike given back \
                 (baseline {baseline} KiB, peak {peak} KiB)"
            );
            drop(TcpStream::connect(("127.0.0.1", server.s2s_direct_tls)).await);
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        eprintln!(
            "wave {wave}: opened {N} half-open in {opened:?}; RSS KiB: baseline {baseline}, \
             peak {peak}, after close {after_close}"
        );
        waves.push(peak);
    }
    // Nothing is kept per connection: a second wave costs no more than the first.
    assert!(waves[1] <= waves[0] + waves[0] / 10, "peaks {waves:?}");
}

/// A port someone else took before the server bound it is told apart from
/// other reasons not to start: `on_free_port` draws another then.
#[tokio::test]
async fn a_taken_port_is_what_the_harness_draws_again_for() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let Err(e) = Node::try_start(A, port, "").await else {
        panic!("started on a port that is held");
    };
    assert!(port_taken(&e), "{e}");
}
