//! The public room directory indexes the rooms of a remote MUC service
//! through federation: two in-process servers, `a.localhost` crawling
//! `conference.b.localhost` over static s2s routes.

mod support;

use std::time::{Duration, Instant};

use support::*;
use waxwing_core::listen::ListenerKind;
use waxwing_core::{Config, Running};
use waxwing_proto::xml::Element;

const A: &str = "a.localhost";
const B: &str = "b.localhost";
const MUC: &str = "http://jabber.org/protocol/muc";
const OWNER: &str = "http://jabber.org/protocol/muc#owner";
const SEARCH: &str = "urn:xmpp:channel-search:0:search";
const SEARCH_PARAMS: &str = "urn:xmpp:channel-search:0:search-params";

/// A server listening for s2s on `s2s` (0: a port of the kernel's).
struct Node {
    running: Running,
    domain: &'static str,
    c2s: u16,
    s2s: u16,
    _dir: tempfile::TempDir,
}

impl Node {
    /// `extra` is TOML appended after `[storage]` (so: tables).
    async fn try_start(
        domain: &'static str,
        s2s: u16,
        extra: &str,
    ) -> Result<Node, waxwing_core::StartError> {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "data_dir = {data:?}\nhosts = [\"{domain}\"]\n\
             [listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = []\ns2s = [\"127.0.0.1:{s2s}\"]\n\
             [storage]\ndatabase = \"sqlite::memory:\"\n{extra}\n",
            data = dir.path().display().to_string(),
        );
        let config = Config::parse(&toml).unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
        let modules = waxwing::modules::all(&config);
        let running = waxwing_core::start(config, modules).await?;
        let c2s = listener_port(&running, ListenerKind::C2s);
        let s2s = listener_port(&running, ListenerKind::S2s);
        Ok(Node {
            running,
            domain,
            c2s,
            s2s,
            _dir: dir,
        })
    }

    async fn login(&self, local: &str) -> Client {
        create_account(&self.running, local, self.domain).await;
        let mut c = Client::connect_plain(self.c2s).await;
        c.domain = self.domain.to_string();
        c.open_stream().await;
        c.starttls().await;
        c.auth_scram_sha256(local, &password(local)).await;
        c.bind(Some("r")).await;
        c.get_roster().await;
        c.send("<presence/>").await;
        c.sync().await;
        c
    }
}

/// Sends an IQ and returns its answer (any type).
/// Node A, with `a_extra(pb)` (TOML tables that route B to `pb`), on an
/// s2s port of the kernel's, and node B on `pb` routing A and A's MUC
/// service to A.
async fn pair(a_extra: impl Fn(u16) -> String) -> (Node, Node) {
    on_free_port(|pb| {
        let a_extra = a_extra(pb);
        async move {
            let a = Node::try_start(A, 0, &a_extra).await?;
            let pa = a.s2s;
            let b = Node::try_start(
                B,
                pb,
                &format!(
                    "[s2s]\nsecret = \"b-dialback-secret\"\nconnect_timeout_secs = 5\n[s2s.routes]\n\
                     \"{A}\" = \"127.0.0.1:{pa}\"\n\"conference.{A}\" = \"127.0.0.1:{pa}\"\n"
                ),
            )
            .await;
            both_or_stop(a, b, |n: Node| n.running.stop()).await
        }
    })
    .await
}

/// The owner accepts the default configuration: an instant room (§10.1.2).
async fn make_instant(owner: &mut Client, room: &str) {
    let r = iq(
        owner,
        room,
        "set",
        &format!("<query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='submit'/></query>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "instant room: {r}");
}

async fn iq(c: &mut Client, to: &str, ty: &str, payload: &str) -> Element {
    let id = c.id("iq");
    c.send(&format!(
        "<iq type='{ty}' to='{to}' id='{id}'>{payload}</iq>"
    ))
    .await;
    c.expect_with(&format!("the answer to {id}"), |e| {
        e.name == "iq" && e.attr("id") == Some(id.as_str())
    })
    .await
}

/// Searches the whole directory of `service`: (address, name, nusers).
async fn search_all(c: &mut Client, service: &str) -> Vec<(String, String, String)> {
    let r = iq(
        c,
        service,
        "get",
        &format!(
            "<search xmlns='{SEARCH}'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{SEARCH_PARAMS}</value></field>\
             <field var='all'><value>true</value></field></x></search>"
        ),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    r.child("result", SEARCH)
        .unwrap_or_else(|| panic!("no result in {r}"))
        .children()
        .filter(|i| i.name == "item")
        .map(|i| {
            let text = |n: &str| i.child(n, SEARCH).map(Element::text).unwrap_or_default();
            (
                i.attr("address").unwrap_or_default().to_string(),
                text("name"),
                text("nusers"),
            )
        })
        .collect()
}

#[tokio::test]
async fn directory_lists_public_rooms_of_a_crawled_remote_service() {
    let (a, b) = pair(|pb| {
        format!(
            "[muc]\ncrawl = [\"conference.{B}\"]\ncrawl_interval_secs = 1\n\
             [s2s]\nconnect_timeout_secs = 5\n[s2s.routes]\n\
             \"{B}\" = \"127.0.0.1:{pb}\"\n\"conference.{B}\" = \"127.0.0.1:{pb}\"\n"
        )
    })
    .await;
    let _b = {
        // A public room and a hidden one on B.
        let mut bob = b.login("bob").await;
        for (room, public) in [("lounge", "1"), ("backroom", "0")] {
            let jid = format!("{room}@conference.{B}");
            bob.send(&format!(
                "<presence to='{jid}/bob'><x xmlns='{MUC}'/></presence>"
            ))
            .await;
            // Everything up to the subject ends a successful join.
            loop {
                let e = bob.next("joining the room").await;
                assert_ne!(e.attr("type"), Some("error"), "join refused: {e}");
                if e.name == "message" && e.child("subject", "jabber:client").is_some() {
                    break;
                }
            }
            let r = iq(
                &mut bob,
                &jid,
                "set",
                &format!(
                    "<query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='submit'>\
                     <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
                     <field var='muc#roomconfig_roomname'><value>The {room}</value></field>\
                     <field var='muc#roomconfig_roomdesc'><value>Talk on b</value></field>\
                     <field var='muc#roomconfig_publicroom'><value>{public}</value></field>\
                     </x></query>"
                ),
            )
            .await;
            assert_eq!(r.attr("type"), Some("result"), "{r}");
        }
        // Bob stays: a temporary room ends with its last occupant.
        (b, bob)
    };

    let mut alice = a.login("alice").await;
    // The crawl runs in the background on a timer (every second here) and
    // nothing announces it: search the directory until the room shows up,
    // within the harness's generous deadline. The pause between searches
    // only paces the questions; the answer is what the test waits for.
    let service = format!("conference.{A}");
    let lounge = format!("lounge@conference.{B}");
    let deadline = Instant::now() + TIMEOUT;
    let found = loop {
        let rooms = search_all(&mut alice, &service).await;
        if let Some(r) = rooms.iter().find(|r| r.0 == lounge) {
            break (r.clone(), rooms);
        }
        assert!(
            Instant::now() < deadline,
            "the remote room never showed up in the directory: {rooms:?}"
        );
        let pong = iq(&mut alice, A, "get", "<ping xmlns='urn:xmpp:ping'/>").await;
        assert_eq!(pong.attr("type"), Some("result"), "{pong}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ((_, name, nusers), rooms) = found;
    assert_eq!(name, "The lounge");
    assert_eq!(nusers, "1");
    assert!(
        !rooms.iter().any(|r| r.0.starts_with("backroom@")),
        "a hidden room is listed: {rooms:?}"
    );
}

/// Issue #7 over federation: a remote user joining a room with more
/// occupants than the s2s queue (`[s2s] max_queue`) gets every presence,
/// its own and the subject, and stays in the room (the burst is one entry
/// of the pair's queue, not bounced in part).
#[tokio::test]
async fn a_remote_joiner_gets_a_join_burst_larger_than_the_s2s_queue() {
    const CROWD: usize = 40;
    let (a, b) = pair(|pb| {
        format!(
            "[limits]\nmax_resources = 100\nmax_connections_per_ip = 200\n\
             [s2s]\nmax_queue = 16\nconnect_timeout_secs = 5\n[s2s.routes]\n\
             \"{B}\" = \"127.0.0.1:{pb}\"\n"
        )
    })
    .await;
    let room = format!("crowded@conference.{A}");
    let mut crowd = vec![a.login("crowd").await];
    for i in 1..CROWD {
        let mut c = Client::connect_plain(a.c2s).await;
        c.domain = A.to_string();
        c.open_stream().await;
        c.starttls().await;
        c.auth_scram_sha256("crowd", &password("crowd")).await;
        c.bind(Some(&format!("r{i}"))).await;
        crowd.push(c);
    }
    for (i, c) in crowd.iter_mut().enumerate() {
        c.send(&format!(
            "<presence to='{room}/c{i}'><x xmlns='{MUC}'/></presence>"
        ))
        .await;
        loop {
            let e = c.next("joining the room").await;
            assert_ne!(e.attr("type"), Some("error"), "join refused: {e}");
            if e.name == "message" && e.child("subject", "jabber:client").is_some() {
                break;
            }
        }
        if i == 0 {
            make_instant(c, &room).await;
        }
    }

    let mut bob = b.login("bob").await;
    bob.send(&format!(
        "<presence to='{room}/bob'><x xmlns='{MUC}'/></presence>"
    ))
    .await;
    let mut presences = Vec::new();
    loop {
        let e = bob.next("the join burst from the remote room").await;
        assert_ne!(e.attr("type"), Some("error"), "join failed: {e}");
        if e.name == "message" && e.child("subject", "jabber:client").is_some() {
            break;
        }
        assert_eq!(e.name, "presence", "{e}");
        presences.push(e);
    }
    assert_eq!(presences.len(), CROWD + 1, "every occupant and itself");
    let own = presences.last().expect("self-presence");
    assert_eq!(own.attr("from"), Some(format!("{room}/bob").as_str()));
    assert!(own.to_xml().contains("code='110'"), "{own}");
    // Still an occupant: its message is reflected.
    bob.send(&format!(
        "<message to='{room}' type='groupchat' id='m1'><body>hello from b</body></message>"
    ))
    .await;
    let m = bob
        .expect_with("the reflection", |e| e.name == "message")
        .await;
    assert_eq!(m.attr("type"), Some("groupchat"), "{m}");
    assert_eq!(m.attr("from"), Some(format!("{room}/bob").as_str()), "{m}");
}

/// XEP-0045 status 332: when the service goes down, its occupants are
/// told they are out of the room, the remote one over s2s before the
/// stream closes, the local one before its `system-shutdown`.
#[tokio::test]
async fn shutdown_tells_occupants_local_and_remote_with_332() {
    let (a, b) = pair(|pb| {
        format!("[s2s]\nconnect_timeout_secs = 5\n[s2s.routes]\n\"{B}\" = \"127.0.0.1:{pb}\"\n")
    })
    .await;
    let room = format!("closing@conference.{A}");
    let join = |nick: &str| format!("<presence to='{room}/{nick}'><x xmlns='{MUC}'/></presence>");
    let until_subject =
        |e: &Element| e.name == "message" && e.child("subject", "jabber:client").is_some();

    let mut alice = a.login("alice").await;
    alice.send(&join("alice")).await;
    skip_until(&mut alice, "alice's join", until_subject).await;
    make_instant(&mut alice, &room).await;
    let mut bob = b.login("bob").await;
    bob.send(&join("bob")).await;
    skip_until(&mut bob, "bob's join over s2s", until_subject).await;
    let bob_in_room = format!("{room}/bob");
    skip_until(&mut alice, "bob's arrival", |e| {
        e.attr("from") == Some(bob_in_room.as_str())
    })
    .await;

    a.running.stop().await;

    let is_332 = |e: &Element| {
        e.name == "presence"
            && e.attr("type") == Some("unavailable")
            && e.to_xml().contains("code='332'")
            && e.to_xml().contains("code='110'")
    };
    let gone = skip_until(&mut bob, "332 from the remote room", is_332).await;
    assert_eq!(
        gone.attr("from"),
        Some(format!("{room}/bob").as_str()),
        "{gone}"
    );
    // Alice's next stanza is the farewell, then the stream error.
    let gone = alice
        .expect_with("332 before the stream ends", is_332)
        .await;
    assert_eq!(
        gone.attr("from"),
        Some(format!("{room}/alice").as_str()),
        "{gone}"
    );
    alice.expect_stream_error("system-shutdown").await;
}

/// Reads until an element matches `pred` and returns it.
async fn skip_until(c: &mut Client, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
    loop {
        let e = c.next(what).await;
        if pred(&e) {
            return e;
        }
    }
}
