//! Issue #4: limits that hold under abuse, and durability across `kill -9`.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use support::*;
use waxwing_proto::ns;

/// A session that stops reading is disconnected once its queue is full;
/// the sender and the server carry on.
#[tokio::test]
async fn slow_reader_is_disconnected_not_buffered() {
    let server = TestServer::start_with(
        "[limits]\noutbound_queue = 16\nread_rate_bytes = 1000000000\nread_burst_bytes = 1000000000\n",
    )
    .await;
    for u in ["slow", "flood", "watch"] {
        server.user(u).await;
    }
    let mut watch = server.login_available("watch", "w", 0).await;
    watch.sync().await;
    let mut slow = server.login_available("slow", "s", 0).await;
    // Directed presence: the watcher hears when the slow session goes away.
    slow.send("<presence to='watch@localhost/w'/>").await;
    watch
        .expect_with("slow's directed presence", |e| {
            e.name == "presence" && e.attr("type").is_none()
        })
        .await;
    let mut flood = server.login("flood", "f").await;
    let body = "x".repeat(4000);
    // 16 MB: more than loopback socket buffers can absorb, so the server's
    // writes block and the session's queue fills.
    for batch in 0..80 {
        let mut out = String::new();
        for i in 0..50 {
            out.push_str(&format!("<message to='slow@localhost/s' type='chat' id='m{batch}-{i}'><body>{body}</body></message>"));
        }
        flood.send(&out).await;
        flood.sync().await;
    }
    let p = watch
        .expect_with("unavailable from slow", |e| e.name == "presence")
        .await;
    assert_eq!(p.attr("type"), Some("unavailable"), "{p}");
    assert_eq!(p.attr("from"), Some("slow@localhost/s"));
    // The flooder is unharmed and a fresh login works.
    flood.sync().await;
    let mut fresh = server.login("watch", "fresh").await;
    fresh.sync().await;
}

/// A stanza trickled forever (slowloris) ends the stream.
#[tokio::test]
async fn slowloris_stanza_times_out() {
    let server = TestServer::start_with("[limits]\nstanza_timeout_secs = 1\n").await;
    server.user("loris").await;
    let mut c = server.login("loris", "r").await;
    c.sync().await;
    c.send("<message to='loris@localhost'><bo").await;
    c.expect_stream_error("connection-timeout").await;
}

/// A connection that never authenticates is closed.
#[tokio::test]
async fn unauthenticated_connection_times_out() {
    let server = TestServer::start_with("[limits]\nauth_timeout_secs = 1\n").await;
    let mut c = Client::connect_plain(server.c2s).await;
    c.open_stream().await;
    c.expect_stream_error("connection-timeout").await;
}

/// An authenticated connection that sends nothing at all is closed.
#[tokio::test]
async fn idle_session_times_out() {
    let server = TestServer::start_with("[limits]\nidle_timeout_secs = 1\n").await;
    server.user("idle").await;
    let mut c = server.login("idle", "r").await;
    c.expect_stream_error("connection-timeout").await;
}

/// The idle timeout counts from the latest input, however often it comes:
/// keepalives far more frequent than the session loop's timer (every 50 ms,
/// so its timer fires before points that input has since moved later) keep
/// a session alive well past the timeout, and once they stop it ends.
#[tokio::test]
async fn keepalives_hold_off_the_idle_timeout() {
    let server = TestServer::start_with("[limits]\nidle_timeout_secs = 1\n").await;
    server.user("chatty").await;
    let mut c = server.login("chatty", "r").await;
    c.sync().await;
    // The pauses pace the client's input (what is tested is the server's
    // reaction to its timing), they synchronise nothing.
    for _ in 0..40 {
        c.send(" ").await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Two seconds after login, twice the timeout: still served.
    c.sync().await;
    c.expect_stream_error("connection-timeout").await;
}

/// Too many connections from one address are refused; closing one frees a slot.
#[tokio::test]
async fn connections_per_address_are_limited() {
    let server = TestServer::start_with("[limits]\nmax_connections_per_ip = 2\n").await;
    let mut a = Client::connect_plain(server.c2s).await;
    a.open_stream().await;
    let mut b = Client::connect_plain(server.c2s).await;
    b.open_stream().await;
    let mut c = Client::connect_plain(server.c2s).await;
    c.send(&stream_header(DOMAIN)).await;
    c.expect_stream_error("policy-violation").await;
    a.close_stream().await;
    a.expect_closed().await;
    let mut d = Client::connect_plain(server.c2s).await;
    d.open_stream().await;
}

/// Password guessing against one account is refused even with the right
/// password once the per-account limit is reached.
#[tokio::test]
async fn failed_logins_are_throttled_per_account() {
    let server = TestServer::start_with(
        "[auth]\nmax_failures_per_account = 2\nmax_failures_per_stream = 5\n",
    )
    .await;
    server.user("victim").await;
    for _ in 0..2 {
        let mut c = Client::connect_plain(server.c2s).await;
        c.open_stream().await;
        c.starttls().await;
        c.send(&plain_auth("victim", "wrong-password")).await;
        c.expect(&format!(
            "<failure xmlns='{}'><not-authorized/></failure>",
            ns::SASL
        ))
        .await;
    }
    let mut c = Client::connect_plain(server.c2s).await;
    c.open_stream().await;
    c.starttls().await;
    c.send(&plain_auth("victim", &password("victim"))).await;
    c.expect(&format!(
        "<failure xmlns='{}'><temporary-auth-failure/></failure>",
        ns::SASL
    ))
    .await;
}

// ---------------------------------------------------------------------------
// kill -9

struct Proc {
    child: Child,
    port: u16,
}

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("waxwing.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = []\n[log]\nlevel = \"warn\"\n",
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    path
}

/// Creates `users` (password: [`password`]) with `waxwing user add`.
fn add_users(config: &std::path::Path, users: &[&str]) {
    for u in users {
        let out = waxwing(
            &[
                "user",
                "add",
                &format!("{u}@localhost"),
                "--password",
                &password(u),
            ],
            config,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn waxwing(args: &[&str], config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_waxwing"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run waxwing")
}

/// Starts the real binary and waits for `waxwing: ready` on its stdout.
fn spawn(config: &std::path::Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_waxwing"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn waxwing");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut port = None;
    for line in lines.by_ref() {
        let line = line.expect("server stdout");
        if let Some(addr) = line.strip_prefix("waxwing: listening c2s ") {
            port = Some(addr.rsplit(':').next().unwrap().parse().unwrap());
        }
        if line == "waxwing: ready" {
            break;
        }
    }
    Proc {
        child,
        port: port.expect("the server printed its c2s port"),
    }
}

async fn login_external(port: u16, user: &str, pw: &str, resource: &str) -> Client {
    let mut c = Client::connect_plain(port).await;
    c.open_stream().await;
    c.starttls().await;
    c.auth_scram_sha256(user, pw).await;
    c.bind(Some(resource)).await;
    c
}

/// Messages to an offline user, each batch followed by a ping; the server
/// is killed with SIGKILL mid-load. Every message of a batch whose ping was
/// answered is delivered after restart, exactly once; nothing is duplicated.
#[tokio::test]
async fn acknowledged_offline_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    add_users(&config, &["sender", "recipient"]);
    let mut proc = spawn(&config);
    let mut sender = login_external(proc.port, "sender", &password("sender"), "s").await;
    const BATCH: usize = 20;
    let mut acknowledged = Vec::new();
    let mut sent_unacknowledged = Vec::new();
    for batch in 0..10 {
        let mut out = String::new();
        let ids: Vec<String> = (0..BATCH).map(|i| format!("b{batch}m{i}")).collect();
        for id in &ids {
            out.push_str(&format!("<message to='recipient@localhost' type='chat' id='{id}'><body>{id}</body></message>"));
        }
        sender.send(&out).await;
        if batch == 6 {
            // Kill while this batch is in flight: no ack for it.
            proc.child.kill().expect("SIGKILL");
            proc.child.wait().unwrap();
            sent_unacknowledged.extend(ids);
            break;
        }
        sender.sync().await;
        acknowledged.extend(ids);
    }
    drop(sender);
    let proc = spawn(&config);
    let mut recipient = login_external(proc.port, "recipient", &password("recipient"), "r").await;
    recipient.send("<presence/>").await;
    let received = recipient.sync().await;
    let bodies: Vec<String> = received
        .iter()
        .filter(|e| e.name == "message")
        .filter_map(|e| e.child("body", ns::CLIENT).map(|b| b.text()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for b in &bodies {
        assert!(seen.insert(b.clone()), "{b} delivered twice");
    }
    for id in &acknowledged {
        assert!(
            seen.contains(id),
            "acknowledged message {id} was lost; got {bodies:?}"
        );
    }
    // Acknowledged ones arrive first and in order.
    assert_eq!(&bodies[..acknowledged.len()], &acknowledged[..]);
    for extra in &bodies[acknowledged.len()..] {
        assert!(
            sent_unacknowledged.contains(extra),
            "unexpected message {extra}"
        );
    }
    let mut proc = proc;
    proc.child.kill().ok();
    proc.child.wait().ok();
}

/// Issue 14 item 9: offline messages are deleted only once the client has
/// them. A stream-managed client receives them but never acknowledges;
/// the server is killed with SIGKILL; after restart every one is still
/// there, once.
#[tokio::test]
async fn issue_14_unacknowledged_offline_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    add_users(&config, &["sender", "recipient"]);
    let mut proc = spawn(&config);
    let mut sender = login_external(proc.port, "sender", &password("sender"), "s").await;
    let ids: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    for id in &ids {
        sender
            .send(&format!("<message to='recipient@localhost' type='chat' id='{id}'><body>{id}</body></message>"))
            .await;
    }
    sender.sync().await;
    let mut recipient = login_external(proc.port, "recipient", &password("recipient"), "r").await;
    recipient.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    recipient
        .expect_with("<enabled/>", |e| e.name == "enabled")
        .await;
    recipient.send("<presence/>").await;
    // The messages arrive (with requests for acks, never answered); the
    // pong says the server is done with the initial presence.
    let got = recipient.sync().await;
    assert_eq!(
        got.iter()
            .filter(|e| e.name == "message")
            .filter_map(|e| e.child("body", ns::CLIENT).map(|b| b.text()))
            .collect::<Vec<_>>(),
        ids
    );
    proc.child.kill().expect("SIGKILL");
    proc.child.wait().unwrap();
    drop((sender, recipient));
    let mut proc = spawn(&config);
    let mut recipient = login_external(proc.port, "recipient", &password("recipient"), "r").await;
    recipient.send("<presence/>").await;
    let bodies: Vec<String> = recipient
        .sync()
        .await
        .iter()
        .filter(|e| e.name == "message")
        .filter_map(|e| e.child("body", ns::CLIENT).map(|b| b.text()))
        .collect();
    assert_eq!(bodies, ids, "unacknowledged offline messages were lost");
    proc.child.kill().ok();
    proc.child.wait().ok();
}
