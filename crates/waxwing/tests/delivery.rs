//! Issue #14, delivery: a full queue never drops a message, offline
//! messages flow at any count, every client write has a deadline, and a
//! failed archive write is counted.

mod support;

use std::time::Duration;

use support::*;
use waxwing_core::session::SessionFlag;
use waxwing_proto::jid::FullJid;
use waxwing_proto::ns;

const SM: &str = "urn:xmpp:sm:3";

/// Polls `f` until it holds; panics after a generous deadline.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn full(s: &str) -> FullJid {
    FullJid::parse(s).expect("full JID")
}

fn bodies(els: &[waxwing_proto::xml::Element]) -> Vec<String> {
    els.iter()
        .filter(|e| e.name == "message")
        .filter_map(|e| e.child("body", ns::CLIENT).map(|b| b.text()))
        .collect()
}

/// Logs `user/resource` in with resumable stream management and initial
/// presence, then drops the connection: the session waits detached and
/// nobody reads its queue.
async fn detached(s: &TestServer, user: &str, resource: &str, priority: i8) {
    let mut c = s.login_available(user, resource, priority).await;
    c.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    c.expect_with("<enabled/>", |e| e.name == "enabled").await;
    c.drop_abruptly();
    let jid = full(&format!("{user}@localhost/{resource}"));
    let sessions = &s.running.server.sessions;
    eventually("the session is detached", || async {
        sessions
            .get(&jid)
            .is_some_and(|h| h.flag(SessionFlag::Detached))
    })
    .await;
}

/// Issue 14 item 7: the message that finds a session's queue full, and
/// those sent while it closes, go to offline storage like those it had
/// queued; the next login gets every one, once.
#[tokio::test]
async fn issue_14_a_message_refused_by_a_full_queue_is_stored_offline() {
    let s = TestServer::start_with("[limits]\noutbound_queue = 4\n").await;
    s.user("alice").await;
    s.user("bob").await;
    let mut alice = s.online("alice", "a").await;
    detached(&s, "bob", "phone", 0).await;
    let sent: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    for id in &sent {
        alice
            .send(&format!(
                "<message to='bob@localhost/phone' type='chat' id='{id}'><body>{id}</body></message>"
            ))
            .await;
    }
    let answers = alice.sync().await;
    assert!(answers.is_empty(), "nothing bounces: {answers:?}");
    let offline = &s.running.server.stores.offline;
    eventually("all ten messages are stored offline", || async {
        offline.count(&jid("bob")).await == Ok(10)
    })
    .await;
    let mut bob = s.login("bob", "desk").await;
    let mut got = bodies(&bob.available(0).await);
    got.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(got, want, "every message exactly once");
}

/// Issue 14 item 7: when the resource a bare-JID message is for refuses it
/// (full queue), RFC 6121 delivery goes on to the account's other resource.
#[tokio::test]
async fn issue_14_a_full_queue_passes_the_message_to_another_resource() {
    let s = TestServer::start_with("[limits]\noutbound_queue = 4\n").await;
    s.user("alice").await;
    s.user("bob").await;
    let mut alice = s.online("alice", "a").await;
    let mut desk = s.online("bob", "desk").await;
    // Higher priority: bare-JID messages go to the phone while it takes them.
    detached(&s, "bob", "phone", 5).await;
    desk.sync().await;
    for i in 0..10 {
        alice
            .send(&format!(
                "<message to='bob@localhost' type='chat' id='m{i}'><body>m{i}</body></message>"
            ))
            .await;
    }
    alice.sync().await;
    // m0..m3 filled the phone's queue; m4 closed it and went on to the desk.
    let mut got = Vec::new();
    while got.len() < 6 {
        let el = desk.next("messages for the desk").await;
        got.extend(bodies(std::slice::from_ref(&el)));
    }
    assert_eq!(got, ["m4", "m5", "m6", "m7", "m8", "m9"]);
    // What the phone had queued is not lost either.
    let offline = &s.running.server.stores.offline;
    eventually("the phone's queued messages are stored", || async {
        offline.count(&jid("bob")).await == Ok(4)
    })
    .await;
}

/// Issue 14 item 10: more offline messages than the outbound queue holds
/// all arrive in one login, in order, and are then deleted.
#[tokio::test]
async fn issue_14_three_thousand_offline_messages_arrive_in_one_login() {
    const N: usize = 3000;
    let s = TestServer::start_with("[limits]\noffline_quota = 5000\n").await;
    s.user("alice").await;
    s.user("bob").await;
    let mut alice = s.online("alice", "a").await;
    for batch in 0..N / 100 {
        let mut out = String::new();
        for i in batch * 100..(batch + 1) * 100 {
            out.push_str(&format!(
                "<message to='bob@localhost' type='chat' id='m{i}'><body>m{i}</body></message>"
            ));
        }
        alice.send(&out).await;
        let answers = alice.sync().await;
        assert!(answers.is_empty(), "nothing bounces: {answers:?}");
    }
    let offline = &s.running.server.stores.offline;
    assert_eq!(offline.count(&jid("bob")).await, Ok(N as u64));
    let mut bob = s.login("bob", "r").await;
    bob.send("<presence/>").await;
    let mut got = Vec::with_capacity(N);
    while got.len() < N {
        let el = bob.next("offline messages").await;
        got.extend(bodies(std::slice::from_ref(&el)));
    }
    let want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
    eventually("delivered messages are deleted", || async {
        offline.count(&jid("bob")).await == Ok(0)
    })
    .await;
    bob.expect_nothing().await;
}

/// Issue 14 item 16: a client that sends `<r/>` but never reads the `<a/>`
/// answers stalls the server's writes; after `write_timeout_secs` it is
/// dropped and its session unbound, instead of wedging its task.
#[tokio::test]
async fn issue_14_a_client_that_stops_reading_is_dropped_and_unbound() {
    let s = TestServer::start_with(
        "[limits]\nwrite_timeout_secs = 1\nread_rate_bytes = 1000000000\nread_burst_bytes = 1000000000\n",
    )
    .await;
    s.user("stall").await;
    s.user("watch").await;
    let mut watch = s.online("watch", "w").await;
    let mut stall = s.login_available("stall", "s", 0).await;
    stall.send(&format!("<enable xmlns='{SM}'/>")).await;
    stall
        .expect_with("<enabled/>", |e| e.name == "enabled")
        .await;
    // Directed presence: the watcher hears when the session goes away.
    stall.send("<presence to='watch@localhost/w'/>").await;
    watch
        .expect_with("stall's directed presence", |e| {
            e.name == "presence" && e.attr("type").is_none()
        })
        .await;
    let sent = stall
        .send_without_reading(&format!("<r xmlns='{SM}'/>"), 512 << 20)
        .await;
    assert!(sent > 0);
    let p = watch
        .expect_with("unavailable from the stalled session", |e| {
            e.name == "presence"
        })
        .await;
    assert_eq!(p.attr("type"), Some("unavailable"), "{p}");
    assert_eq!(p.attr("from"), Some("stall@localhost/s"));
    assert!(
        s.running
            .server
            .sessions
            .get(&full("stall@localhost/s"))
            .is_none()
    );
    assert!(s.running.server.metrics.c2s_stalled_writes.get() >= 1);
}

/// Issue 14 item 11: a message whose archive writes fail is still
/// delivered (without a stanza-id), and each failure is counted.
#[tokio::test]
async fn issue_14_a_failed_archive_write_is_counted_and_delivery_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (running, port) = start_on(dir.path()).await;
    for u in ["alice", "bob"] {
        create_account(&running, u, DOMAIN).await;
    }
    // A second connection to the same database makes every archive insert fail.
    let db = format!("sqlite://{}", dir.path().join("waxwing.db").display());
    let pool = sqlx::SqlitePool::connect(&db).await.expect("database");
    sqlx::query(
        "CREATE TRIGGER fail_archive BEFORE INSERT ON archive_items \
         BEGIN SELECT RAISE(ABORT, 'archive unavailable'); END",
    )
    .execute(&pool)
    .await
    .expect("trigger");
    let mut alice = login_on(port, "alice").await;
    alice.available(0).await;
    let mut bob = login_on(port, "bob").await;
    bob.available(0).await;
    assert_eq!(running.server.metrics.archive_write_failures.get(), 0);
    alice
        .send("<message to='bob@localhost/r' type='chat' id='x'><body>hi</body></message>")
        .await;
    let m = bob
        .expect_with("the message", |e| e.name == "message")
        .await;
    assert_eq!(bodies(std::slice::from_ref(&m)), ["hi"]);
    assert!(
        m.child("stanza-id", "urn:xmpp:sid:0").is_none(),
        "not archived, so no archive id: {m}"
    );
    // The sender's copy and the recipient's copy.
    assert_eq!(running.server.metrics.archive_write_failures.get(), 2);
    assert!(alice.sync().await.is_empty(), "the sender is told nothing");
}
