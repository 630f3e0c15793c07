//! Issue #14 (Hardening II), authentication: the failure throttle per
//! (account, address prefix), fake SCRAM salts and PLAIN timing for unknown
//! accounts, the in-band registration throttle, and the memory an
//! unauthenticated connection may hold.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::*;
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

const SASL2: &str = "urn:xmpp:sasl:2";
const BIND2: &str = "urn:xmpp:bind:0";
const FAST: &str = "urn:xmpp:fast:0";
const AGENT: &str = "0e1c2b34-7d6f-4c4e-9a51-6b8e3f0b2a11";

fn other_address() -> IpAddr {
    "127.0.0.2".parse().unwrap()
}

/// Opens a stream (from `source`, or 127.0.0.1) and upgrades to TLS.
async fn tls_client(port: u16, source: Option<IpAddr>) -> Client {
    let mut c = match source {
        Some(ip) => Client::connect_plain_from(port, ip).await,
        None => Client::connect_plain(port).await,
    };
    c.open_stream().await;
    c.starttls().await;
    c
}

/// One SASL PLAIN attempt; the failure condition, or `None` on success.
async fn plain_attempt(c: &mut Client, user: &str, pw: &str) -> Option<String> {
    c.send(&plain_auth(user, pw)).await;
    let el = c
        .expect_with("SASL outcome", |e| {
            e.ns == ns::SASL && e.name != "challenge"
        })
        .await;
    match el.name.as_str() {
        "success" => None,
        "failure" => Some(el.children().next().map(|c| c.name.to_string()).unwrap()),
        other => panic!("unexpected {other}: {el}"),
    }
}

/// Guessing from one address slows that address down for that account,
/// and only that: the owner elsewhere still logs in (before, ten failures
/// from anywhere locked the account for everyone).
#[tokio::test]
async fn issue_14_throttle_is_per_account_and_address_prefix() {
    let server = TestServer::start_with(
        "[auth]\nmax_failures_per_account = 2\nmax_failures_per_stream = 5\n",
    )
    .await;
    server.user("victim").await;
    let mut attacker = tls_client(server.c2s, None).await;
    for _ in 0..2 {
        let failure = plain_attempt(&mut attacker, "victim", "guess").await;
        assert_eq!(failure.as_deref(), Some("not-authorized"));
    }
    // From the guessing address even the right password waits.
    let failure = plain_attempt(&mut attacker, "victim", &password("victim")).await;
    assert_eq!(failure.as_deref(), Some("temporary-auth-failure"));
    // The owner, from another address, is not locked out.
    let mut owner = tls_client(server.c2s, Some(other_address())).await;
    assert_eq!(
        plain_attempt(&mut owner, "victim", &password("victim")).await,
        None,
        "the owner elsewhere logs in"
    );
}

/// Logs `user` in with SASL2 PLAIN from 127.0.0.1, asking for a FAST
/// token; returns the bound client and the token.
async fn login_with_fast_token(server: &TestServer, user: &str) -> (Client, String) {
    let mut c = tls_client(server.c2s, None).await;
    let ir = B64.encode(format!("\0{user}\0{}", password(user)));
    c.send(&format!(
        "<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>{ir}</initial-response>\
         <user-agent id='{AGENT}'/><request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>\
         <bind xmlns='{BIND2}'/></authenticate>"
    ))
    .await;
    let success = c
        .expect_with("SASL2 success", |e| e.is("success", SASL2))
        .await;
    let token = success
        .child("token", FAST)
        .and_then(|t| t.attr("token"))
        .expect("a FAST token")
        .to_string();
    (c, token)
}

/// One HT-SHA-256-NONE attempt with `token`; the SASL2 outcome element.
async fn fast_attempt(port: u16, user: &str, token: &str) -> Element {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(b"Initiator");
    let mut ir = format!("{user}\0").into_bytes();
    ir.extend(mac.finalize().into_bytes());
    let mut c = tls_client(port, None).await;
    c.send(&format!(
        "<authenticate xmlns='{SASL2}' mechanism='HT-SHA-256-NONE'><initial-response>{}</initial-response>\
         <user-agent id='{AGENT}'/><fast xmlns='{FAST}'/></authenticate>",
        B64.encode(ir)
    ))
    .await;
    c.expect_with("FAST outcome", |e| e.ns == SASL2 && e.name != "challenge")
        .await
}

/// A valid FAST token gets its owner in even from a throttled address.
#[tokio::test]
async fn issue_14_fast_token_bypasses_the_throttle() {
    let server = TestServer::start_with(
        "[auth]\nmax_failures_per_account = 2\nmax_failures_per_stream = 5\n",
    )
    .await;
    server.user("romeo").await;
    let (_c, token) = login_with_fast_token(&server, "romeo").await;
    // Someone at the same address guesses until throttled.
    let mut guesser = tls_client(server.c2s, None).await;
    for _ in 0..2 {
        plain_attempt(&mut guesser, "romeo", "guess").await;
    }
    assert_eq!(
        plain_attempt(&mut guesser, "romeo", &password("romeo"))
            .await
            .as_deref(),
        Some("temporary-auth-failure")
    );
    // The token still works from there.
    let outcome = fast_attempt(server.c2s, "romeo", &token).await;
    assert_eq!(outcome.name, "success", "{outcome}");
}

/// A password change revokes the FAST tokens issued before it: whoever
/// copied a token (from a stolen phone, or the database) is out as soon
/// as the owner sets a new password.
#[tokio::test]
async fn a_password_change_revokes_fast_tokens() {
    let server = TestServer::start().await;
    server.user("romeo").await;
    let (mut c, token) = login_with_fast_token(&server, "romeo").await;
    let outcome = fast_attempt(server.c2s, "romeo", &token).await;
    assert_eq!(outcome.name, "success", "the token works: {outcome}");

    let id = c.id("passwd");
    c.send(&format!(
        "<iq type='set' id='{id}'><query xmlns='jabber:iq:register'>\
         <username>romeo</username><password>a brand new secret</password></query></iq>"
    ))
    .await;
    // SASL2 without a stream restart: the features come first.
    let r = loop {
        let el = c.next("password change result").await;
        if el.attr("id") == Some(id.as_str()) {
            break el;
        }
    };
    assert!(is_result(&r), "{r}");

    let outcome = fast_attempt(server.c2s, "romeo", &token).await;
    assert_eq!(
        outcome.name, "failure",
        "the old token is revoked: {outcome}"
    );
    assert!(
        outcome.child("not-authorized", ns::SASL).is_some(),
        "{outcome}"
    );
}

/// `(salt, iterations)` the server offers `user` in SCRAM-SHA-256.
async fn scram_salt(port: u16, user: &str) -> (Vec<u8>, u32) {
    let mut c = tls_client(port, None).await;
    let first = format!("n,,n={user},r=clientnonce123");
    c.send(&format!(
        "<auth xmlns='{}' mechanism='SCRAM-SHA-256'>{}</auth>",
        ns::SASL,
        B64.encode(first)
    ))
    .await;
    let challenge = c
        .expect(&format!("<challenge xmlns='{}'/>", ns::SASL))
        .await;
    let text = String::from_utf8(B64.decode(challenge.text().trim()).unwrap()).unwrap();
    let field = |k: &str| {
        text.split(',')
            .find_map(|f| f.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in {text}"))
            .to_string()
    };
    (
        B64.decode(field("s=")).unwrap(),
        field("i=").parse().unwrap(),
    )
}

/// An unknown account's salt looks like a real one and survives a restart
/// (before, its key was drawn at every start).
#[tokio::test]
async fn issue_14_fake_salts_are_stable_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (running, port) = start_on(dir.path()).await;
    create_account(&running, "real", DOMAIN).await;
    let (real_salt, real_iterations) = scram_salt(port, "real").await;
    let (fake_salt, fake_iterations) = scram_salt(port, "nobody").await;
    assert_eq!(fake_salt.len(), real_salt.len());
    assert_eq!(fake_iterations, real_iterations);
    assert_eq!(scram_salt(port, "nobody").await.0, fake_salt, "stable");
    running.stop().await;
    let (running, port) = start_on(dir.path()).await;
    assert_eq!(
        scram_salt(port, "nobody").await,
        (fake_salt, fake_iterations),
        "the same salt after a restart"
    );
    assert_eq!(scram_salt(port, "real").await.0, real_salt);
    running.stop().await;
}

/// PLAIN for an unknown account runs the same PBKDF2 as for a known one
/// (before, it answered at once: a timing oracle for account existence).
/// The iteration count is high so that the derivation dominates.
#[tokio::test]
async fn issue_14_plain_costs_the_same_for_unknown_accounts() {
    const ITERATIONS: u32 = 100_000;
    let server =
        TestServer::start_with(&format!("[auth]\nscram_iterations = {ITERATIONS}\n")).await;
    let secrets = waxwing_core::credentials::make_secrets(&password("known"), ITERATIONS).unwrap();
    server
        .running
        .server
        .stores
        .accounts
        .create(&jid("known"), &secrets)
        .await
        .unwrap();
    let mut known = Duration::MAX;
    let mut unknown = Duration::MAX;
    for _ in 0..3 {
        for (user, best) in [("known", &mut known), ("ghost", &mut unknown)] {
            let mut c = tls_client(server.c2s, None).await;
            let start = Instant::now();
            let failure = plain_attempt(&mut c, user, "wrong-password").await;
            let took = start.elapsed();
            assert_eq!(failure.as_deref(), Some("not-authorized"));
            *best = (*best).min(took);
        }
    }
    assert!(
        unknown * 2 >= known,
        "unknown {unknown:?} vs known {known:?}: no derivation for unknown accounts"
    );
    assert!(
        known * 2 >= unknown,
        "unknown {unknown:?} vs known {known:?}"
    );
}

fn register_iq(id: &str, user: &str, pw: &str) -> String {
    format!(
        "<iq type='set' id='{id}'><query xmlns='{}'><username>{user}</username><password>{pw}</password></query></iq>",
        ns::REGISTER
    )
}

async fn register(c: &mut Client, id: &str, user: &str) -> Element {
    c.send(&register_iq(id, user, "long-enough-password")).await;
    c.expect_with("the registration answer", |e| e.attr("id") == Some(id))
        .await
}

/// One stream registers one account; one address a few per window
/// (before, a stream could register again and again).
#[tokio::test]
async fn issue_14_registration_is_limited_per_stream_and_address() {
    let server = TestServer::start_with(
        "[registration]\nopen = true\nmax_per_stream = 1\nmax_per_address = 2\n",
    )
    .await;
    let mut a = tls_client(server.c2s, None).await;
    assert!(is_result(&register(&mut a, "r1", "first").await));
    let refused = register(&mut a, "r2", "second").await;
    assert!(has_stanza_error(&refused, "policy-violation"), "{refused}");
    let mut b = tls_client(server.c2s, None).await;
    // A failed registration (taken name) gives its slot back.
    let taken = register(&mut b, "r3", "first").await;
    assert!(has_stanza_error(&taken, "conflict"), "{taken}");
    assert!(is_result(&register(&mut b, "r4", "third").await));
    let mut c = tls_client(server.c2s, None).await;
    let refused = register(&mut c, "r5", "fourth").await;
    assert!(has_stanza_error(&refused, "policy-violation"), "{refused}");
    // Another address has its own allowance.
    let mut d = tls_client(server.c2s, Some(other_address())).await;
    assert!(is_result(&register(&mut d, "r6", "fifth").await));
    for user in ["first", "third", "fifth"] {
        assert!(
            server
                .running
                .server
                .stores
                .accounts
                .exists(&jid(user))
                .await
                .unwrap()
        );
    }
    assert!(
        !server
            .running
            .server
            .stores
            .accounts
            .exists(&jid("second"))
            .await
            .unwrap()
    );
}

/// XEP-0077: a taken username is `<conflict/>` even with a password the
/// policy would refuse (before, the password check answered first).
#[tokio::test]
async fn issue_14_taken_username_is_conflict_before_password_policy() {
    let server = TestServer::start_with("[registration]\nopen = true\n").await;
    server.user("taken").await;
    let mut c = tls_client(server.c2s, None).await;
    c.send(&register_iq("r1", "taken", "short")).await;
    let reply = c
        .expect_with("the registration answer", |e| e.attr("id") == Some("r1"))
        .await;
    assert!(has_stanza_error(&reply, "conflict"), "{reply}");
}

/// Before authentication an element may be a few KiB; after it, the
/// ordinary limit holds again.
#[tokio::test]
async fn issue_14_elements_before_authentication_are_capped() {
    let server = TestServer::start().await;
    server.user("big").await;
    let text = "x".repeat(12_000);
    let mut c = Client::connect_plain(server.c2s).await;
    c.open_stream().await;
    c.send(&format!(
        "<iq type='set' id='r'><query xmlns='{}'><username>{text}",
        ns::REGISTER
    ))
    .await;
    c.expect_stream_error("policy-violation").await;
    let mut c = server.login("big", "r").await;
    c.send(&format!(
        "<message to='big@localhost/r' id='m'><body>{text}</body></message>"
    ))
    .await;
    let m = c
        .expect_with("the large message", |e| e.name == "message")
        .await;
    assert_eq!(m.child("body", ns::CLIENT).unwrap().text().len(), 12_000);
}

/// Partial stanzas of all connections share one budget: past it, the
/// connection that asks for more is closed with `resource-constraint`,
/// and closing the others gives their share back.
#[tokio::test]
async fn issue_14_partial_stanzas_share_a_server_wide_budget() {
    let server = TestServer::start_with(
        "[limits]\nmax_stanza_bytes = 10000\nmax_stanza_bytes_before_auth = 10000\n\
         partial_stanza_budget_bytes = 20000\n",
    )
    .await;
    let budget = server.running.server.partial_stanzas.clone();
    let partial = format!(
        "<iq type='set' id='r'><query xmlns='{}'><username>{}",
        ns::REGISTER,
        "x".repeat(8000)
    );
    let mut held = Vec::new();
    for n in 1..=2 {
        let mut c = Client::connect_plain(server.c2s).await;
        c.open_stream().await;
        c.send(&partial).await;
        wait_until("the partial stanza is charged", || {
            budget.held() >= n * 8000
        })
        .await;
        held.push(c);
    }
    let mut third = Client::connect_plain(server.c2s).await;
    third.open_stream().await;
    third.send(&partial).await;
    third.expect_stream_error("resource-constraint").await;
    drop(held);
    wait_until("closed connections give their share back", || {
        budget.held() == 0
    })
    .await;
}

/// Polls `cond` until it holds, failing after a generous deadline.
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + TIMEOUT * 4;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// Memory before authentication, measured on the real binary

/// The server process, killed when the test ends, even by a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Server-side TCP sockets on `port` (not the listener): how many, and the
/// bytes the server has not read yet.
fn server_sockets(port: u16) -> (usize, u64) {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let mut count = 0;
    let mut unread = 0;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local_port = f[1].rsplit(':').next().unwrap();
        if u16::from_str_radix(local_port, 16).unwrap() != port || f[3] == "0A" {
            continue;
        }
        count += 1;
        unread += u64::from_str_radix(f[4].split(':').nth(1).unwrap(), 16).unwrap();
    }
    (count, unread)
}

/// Issue 14: thousands of unauthenticated connections, each holding an
/// unfinished element as large as the pre-authentication limit allows,
/// against the real binary. Before, one such connection could trickle
/// 200 KB into a text node and hold about 470 KB (2,000 of them: RSS
/// 16 MB → 952 MB); now the 200 KB element is refused at 10,000 bytes and
/// each connection holds a few tens of KB. Prints baseline, held and
/// after-close RSS.
#[tokio::test]
async fn issue_14_unauthenticated_partial_stanzas_hold_little_memory() {
    const CONNECTIONS: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("waxwing.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = []\n\
             [limits]\nmax_connections_per_ip = {}\n[log]\nlevel = \"error\"\n",
            dir.path().join("data").display().to_string(),
            CONNECTIONS + 10
        ),
    )
    .unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_waxwing"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn waxwing"),
    );
    let port: u16 = {
        use std::io::BufRead;
        let mut port = None;
        for line in std::io::BufReader::new(child.0.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(addr) = line.strip_prefix("waxwing: listening c2s ") {
                port = Some(addr.rsplit(':').next().unwrap().parse().unwrap());
            }
            if line == "waxwing: ready" {
                break;
            }
        }
        port.expect("c2s port")
    };
    let pid = child.0.id();

    // The attack from the issue: a 200 KB text node before authentication.
    let mut c = Client::connect_plain(port).await;
    c.open_stream().await;
    let prefix = format!(
        "<iq type='set' id='r'><query xmlns='{}'><username>",
        ns::REGISTER
    );
    c.send(&format!("{prefix}{}", "x".repeat(200_000))).await;
    c.expect_stream_error("policy-violation").await;

    let baseline = rss_kib(pid);
    // Just under the limit (10,000 bytes from the end of the header).
    let partial = format!("{prefix}{}", "x".repeat(9_900 - prefix.len()));
    let held = hold_and_close(port, pid, &partial, CONNECTIONS).await;
    let after = rss_kib(pid);
    // A second wave reuses what the first freed (the allocator keeps freed
    // pages for a while, so RSS after close alone does not show a leak).
    let held_again = hold_and_close(port, pid, &partial, CONNECTIONS).await;
    let after_again = rss_kib(pid);
    drop(child);
    let per_connection = (held.saturating_sub(baseline)) * 1024 / CONNECTIONS as u64;
    println!(
        "RSS with {CONNECTIONS} unauthenticated connections, each holding a {}-byte \
         partial element: baseline {baseline} KiB, held {held} KiB, after close {after} KiB \
         ({per_connection} bytes per connection held); second wave: held {held_again} KiB, \
         after close {after_again} KiB",
        partial.len()
    );
    // A partial element costs about its size plus the connection's fixed
    // cost; before, an element could grow to 256 KiB and cost twice that.
    assert!(
        per_connection < 64 * 1024,
        "{per_connection} bytes per connection"
    );
    // Kept per connection, the second wave would need the first's memory
    // again on top (held + the whole spike). How much of the first wave's
    // pages the second finds free depends on which worker threads freed
    // and collected them (src/allocator.rs), which a loaded machine
    // decides: measured between +0 and +37 % of the spike, so the bound
    // sits between that and a leak.
    assert!(
        held_again < held + (held - baseline) * 3 / 4,
        "closed connections' memory was not reused: {held} KiB, then {held_again} KiB"
    );
}

/// Opens `n` connections that each send `partial` and wait, measures the
/// server's RSS once it has read everything, closes them and waits until
/// the server has too. Returns the RSS held, in KiB.
async fn hold_and_close(port: u16, pid: u32, partial: &str, n: usize) -> u64 {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = Client::connect_plain(port).await;
        c.open_stream().await;
        c.send(partial).await;
        clients.push(c);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (count, unread) = server_sockets(port);
        if count == n && unread == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not read everything: {count} sockets, {unread} bytes unread"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = rss_kib(pid);
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(120);
    while server_sockets(port).0 != 0 {
        assert!(Instant::now() < deadline, "connections did not close");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held
}
