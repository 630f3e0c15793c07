//! The scenarios of issue 5. Each returns one [`Record`] (a JSON line).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::client::{self, Got, Io, Reader, Session, Target};
use crate::measure::{self, Record, Window, percentiles};
use crate::scan;

/// Settings shared by every scenario.
pub struct Ctx {
    pub target: Arc<Target>,
    /// Cluster runs: where odd-numbered accounts log in (`--peer-addr`).
    pub peer: Option<Arc<Target>>,
    pub server_pid: Option<String>,
    /// Logins in flight at once.
    pub concurrency: usize,
}

impl Ctx {
    fn rss(&self) -> Option<u64> {
        self.server_pid.as_deref().and_then(measure::rss_kb)
    }
    fn rss_peak(&self) -> Option<u64> {
        self.server_pid.as_deref().and_then(measure::rss_peak_kb)
    }
    /// RSS once it has settled: after `settle`, read every second until a
    /// reading is no more than 1 % below the one before, for at most
    /// `MAX_SETTLE` more. An allocator may give back the memory of a wave
    /// of logins only seconds after it (purge delays, glibc trimming when
    /// a thread next frees): a single reading at a fixed time would catch
    /// some servers in the middle of it and not others. Returns the
    /// reading and the seconds waited in all.
    async fn settled_rss(&self, settle: Duration) -> (Option<u64>, f64) {
        const MAX_SETTLE: Duration = Duration::from_secs(30);
        let t0 = Instant::now();
        tokio::time::sleep(settle).await;
        let mut last = self.rss();
        while t0.elapsed() < settle + MAX_SETTLE {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.rss();
            // Settled: not falling by more than 1 % per second.
            let falling = matches!((last, now), (Some(a), Some(b)) if b * 100 < a * 99);
            last = now;
            if !falling {
                break;
            }
        }
        (last, t0.elapsed().as_secs_f64())
    }
    fn window(&self) -> Window {
        Window::start(self.server_pid.as_deref())
    }
}

/// Runs `f(i)` for each `i` in `0..n`, at most `concurrency` at once, and
/// returns the successes and the number of failures (first error kept).
async fn for_each<T, F, Fut>(
    n: usize,
    concurrency: usize,
    f: F,
) -> (Vec<(usize, T)>, usize, Option<String>)
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    let mut done_list = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.expect("never closed");
        let fut = f(i);
        set.spawn(async move {
            let r = fut.await;
            drop(permit);
            (i, r)
        });
        // Reap finished tasks as we go so a large run holds no dead tasks.
        while let Some(done) = set.try_join_next() {
            done_list.push(done);
        }
    }
    while let Some(r) = set.join_next().await {
        done_list.push(r);
    }
    let mut ok = Vec::new();
    let mut failed = 0;
    let mut first_err = None;
    for r in done_list {
        match r {
            Ok((i, Ok(v))) => ok.push((i, v)),
            Ok((_, Err(e))) => {
                failed += 1;
                first_err.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                failed += 1;
                first_err.get_or_insert_with(|| e.to_string());
            }
        }
    }
    ok.sort_by_key(|(i, _)| *i);
    (ok, failed, first_err)
}

fn note_failures(r: &mut Record, failed: usize, err: Option<String>) {
    r.num("failed", failed as f64);
    if let Some(e) = err {
        r.str("first_error", &e);
    }
}

/// Accounts `<prefix>0 … <prefix>N-1`, registered in-band, then logged into
/// once (with initial presence) so that the SCRAM cache holds their salted
/// passwords.
pub async fn register(cx: &Ctx, prefix: &str, count: usize) -> Record {
    let w = cx.window();
    let t = cx.target.clone();
    let prefix = prefix.to_string();
    let (ok, failed, err) = for_each_collect(count, cx.concurrency, move |i| {
        let t = t.clone();
        let user = format!("{prefix}{i}");
        async move {
            let mut s = client::register_and_login(&t, &user).await?;
            // Available once, as every real account has been: what a server
            // does only at an account's first presence ever (Waxwing stores
            // its avatar hash) then stays out of the `login` rows, which
            // measure returning users after a restart.
            s.io.write_all(b"<presence/>").await?;
            client::close(s).await;
            Ok(())
        }
    })
    .await;
    let u = w.stop();
    let mut r = Record::new("register");
    r.num("n", count as f64).num("ok", ok as f64);
    r.usage(&u, ok as f64);
    r.num("figure", ok as f64 / u.wall);
    note_failures(&mut r, failed, err);
    r
}

/// Like [`for_each`] but drops results: keeps memory flat for big N.
async fn for_each_collect<F, Fut>(
    n: usize,
    concurrency: usize,
    f: F,
) -> (usize, usize, Option<String>)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    let (mut ok, mut failed, mut first_err) = (0, 0, None);
    let mut tally = |r: Result<anyhow::Result<()>, tokio::task::JoinError>| match r {
        Ok(Ok(())) => ok += 1,
        Ok(Err(e)) => {
            failed += 1;
            first_err.get_or_insert_with(|| format!("{e:#}"));
        }
        Err(e) => {
            failed += 1;
            first_err.get_or_insert_with(|| e.to_string());
        }
    };
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.expect("never closed");
        let fut = f(i);
        set.spawn(async move {
            let r = fut.await;
            drop(permit);
            r
        });
        while let Some(done) = set.try_join_next() {
            tally(done);
        }
    }
    while let Some(done) = set.join_next().await {
        tally(done);
    }
    (ok, failed, first_err)
}

/// `login`: N full logins (TCP, STARTTLS, SASL, bind, initial presence),
/// each closed right after. `again` (`login-again`): the same N logins once
/// untimed first, so the measured ones are returning users'.
pub async fn login(cx: &Ctx, prefix: &str, count: usize, again: bool) -> Record {
    let one_round = || {
        let t = cx.target.clone();
        let prefix = prefix.to_string();
        for_each_collect(count, cx.concurrency, move |i| {
            let t = t.clone();
            let user = format!("{prefix}{i}");
            async move {
                let mut s = client::login(&t, &user).await?;
                s.io.write_all(b"<presence/>").await?;
                client::close(s).await;
                Ok(())
            }
        })
    };
    let mut first = (0, None);
    if again {
        // Untimed: after this every account has logged in since the
        // server started, as a returning user has.
        let (_, failed, err) = one_round().await;
        first = (failed, err.map(|e| format!("untimed first round: {e}")));
    }
    let w = cx.window();
    let (ok, failed, err) = one_round().await;
    let u = w.stop();
    let mut r = Record::new(if again { "login-again" } else { "login" });
    r.num("n", count as f64).num("ok", ok as f64);
    r.str("unit", "logins/s");
    r.num("figure", ok as f64 / u.wall);
    r.usage(&u, ok as f64);
    // A failure in the untimed round counts too: it left a measured login cold.
    let (failed, err) = (failed + first.0, err.or(first.1));
    note_failures(&mut r, failed, err);
    r
}

/// Logs in `users` and keeps the sessions (initial presence sent).
async fn hold(cx: &Ctx, users: Vec<String>) -> (Vec<Session>, usize, Option<String>) {
    let target = cx.target.clone();
    let peer = cx.peer.clone();
    let users = Arc::new(users);
    let n = users.len();
    let (ok, failed, err) = for_each(n, cx.concurrency, move |i| {
        let t = match &peer {
            Some(p) if i % 2 == 1 => p.clone(),
            _ => target.clone(),
        };
        let user = users[i].clone();
        async move {
            let mut s = client::login(&t, &user).await?;
            s.io.write_all(b"<presence/>").await?;
            Ok(s)
        }
    })
    .await;
    (ok.into_iter().map(|(_, s)| s).collect(), failed, err)
}

async fn close_all(sessions: Vec<Session>) {
    let mut set = JoinSet::new();
    for s in sessions {
        set.spawn(client::close(s));
        while set.try_join_next().is_some() {}
    }
    while set.join_next().await.is_some() {}
}

/// What `idle` does besides holding `count` sessions.
pub struct IdleParams {
    pub count: usize,
    /// Wait before reading RSS after the last login.
    pub settle: Duration,
    /// Keep the sessions this long after reading RSS (cluster runs).
    pub hold: Duration,
    /// Created once the sessions are held and RSS was read.
    pub ready_file: Option<String>,
}

/// `idle`: N sessions held; server RSS before and after.
pub async fn idle(cx: &Ctx, prefix: &str, p: IdleParams) -> Record {
    let IdleParams { count, settle, .. } = p;
    let before = cx.rss();
    let w = cx.window();
    let users = (0..count).map(|i| format!("{prefix}{i}")).collect();
    let (sessions, failed, err) = hold(cx, users).await;
    let u = w.stop();
    let (after, waited) = cx.settled_rss(settle).await;
    let peak = cx.rss_peak();
    let held = sessions.len();
    let name = match (&cx.target.websocket, cx.target.tls) {
        (Some(_), _) => "idle-ws",
        (None, true) => "idle",
        (None, false) => "idle-plain",
    };
    let mut r = Record::new(name);
    r.num("n", count as f64).num("ok", held as f64);
    r.str("unit", "KiB/session");
    if let (Some(b), Some(a)) = (before, after) {
        r.num("rss_before_kb", b as f64)
            .num("rss_after_kb", a as f64)
            .num("settled_s", (waited * 10.0).round() / 10.0);
        // The login wave's high-water mark: how much of it the allocator
        // kept shows as after ≈ peak.
        if let Some(p) = peak {
            r.num("rss_peak_kb", p as f64);
        }
        if held > 0 {
            r.num("figure", (a as f64 - b as f64) / held as f64);
        }
    }
    r.usage(&u, held as f64);
    note_failures(&mut r, failed, err);
    if let Some(path) = &p.ready_file
        && let Err(e) = std::fs::write(path, b"")
    {
        eprintln!("ready file {path}: {e}");
    }
    tokio::time::sleep(p.hold).await;
    close_all(sessions).await;
    r
}

/// Roster cliques: users `<prefix>i` in groups of `contacts + 1`, every
/// member subscribed both ways to every other. Returns (groups, group size).
fn cliques(count: usize, contacts: usize) -> (usize, usize) {
    let size = (contacts + 1).min(count.max(1));
    ((count / size).max(1), size)
}

/// `roster-setup`: builds the cliques with subscription handshakes. Not a
/// measurement; run once per server before `roster-login`.
pub async fn roster_setup(
    cx: &Ctx,
    prefix: &str,
    count: usize,
    contacts: usize,
    timeout: Duration,
) -> Record {
    let (groups, size) = cliques(count, contacts);
    let n = groups * size;
    let users: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let (sessions, failed, err) = hold(cx, users.clone()).await;
    let mut r = Record::new("roster-setup");
    r.num("n", n as f64).num("contacts", (size - 1) as f64);
    if failed > 0 {
        note_failures(&mut r, failed, err);
        r.str("status", "login failed");
        close_all(sessions).await;
        return r;
    }
    let domain = cx.target.domain.clone();
    let approved = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for (i, s) in sessions.into_iter().enumerate() {
        let g = i / size;
        let mut out = String::new();
        for (j, user) in users.iter().enumerate().take((g + 1) * size).skip(g * size) {
            if j != i {
                out.push_str(&format!(
                    "<presence type='subscribe' to='{user}@{domain}'/>"
                ));
            }
        }
        let approved = approved.clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let Session { io, mut reader, .. } = s;
            let (mut rh, mut wh) = tokio::io::split(io);
            // Roster pushes go only to resources that asked for the roster
            // (RFC 6121 §2.1.6), and Prosody forwards no <presence
            // type='subscribed'/>: completion is read from the pushes.
            wh.write_all(b"<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>").await?;
            wh.write_all(out.as_bytes()).await?;
            let mut both = std::collections::HashSet::new();
            loop {
                let reply = tokio::select! {
                    _ = stop.changed() => break,
                    got = reader.next(&mut rh) => match got? {
                        Got::Stanza(st) if scan::tag_name(st) == b"presence" => {
                            match scan::attr(st, b"type") {
                                Some(b"subscribe") => scan::attr(st, b"from").map(|f| {
                                    let bare = f.split(|&b| b == b'/').next().unwrap_or(f);
                                    format!("<presence type='subscribed' to='{}'/>", String::from_utf8_lossy(bare))
                                }),
                                _ => None,
                            }
                        }
                        Got::Stanza(st) if scan::tag_name(st) == b"iq" && scan::contains(st, b"jabber:iq:roster") => {
                            // The roster itself (type result) or a push (type set).
                            let mut rest = st;
                            while let Some(at) = scan::find(rest, b"<item") {
                                rest = &rest[at + 5..];
                                let item = &rest[..rest.iter().position(|&b| b == b'>').unwrap_or(rest.len())];
                                let tag = [b"<item".as_slice(), item, b">"].concat();
                                if scan::attr(&tag, b"subscription") == Some(b"both")
                                    && let Some(jid) = scan::attr(&tag, b"jid")
                                        && both.insert(jid.to_vec()) {
                                            approved.fetch_add(1, Ordering::Relaxed);
                                        }
                            }
                            match scan::attr(st, b"type") {
                                Some(b"set") => scan::attr(st, b"id")
                                    .map(|id| format!("<iq type='result' id='{}'/>", String::from_utf8_lossy(id))),
                                _ => None,
                            }
                        }
                        Got::Close => break,
                        _ => None,
                    },
                };
                if let Some(reply) = reply {
                    wh.write_all(reply.as_bytes()).await?;
                }
            }
            let _ = wh.write_all(b"</stream:stream>").await;
            anyhow::Ok(())
        });
    }
    let expected = (n * (size - 1)) as u64;
    let t0 = Instant::now();
    while approved.load(Ordering::Relaxed) < expected && t0.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the last roster writes land before the server is restarted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    let got = approved.load(Ordering::Relaxed);
    r.num("approved", got as f64)
        .num("expected", expected as f64);
    r.num("wall_s", t0.elapsed().as_secs_f64());
    r.str("status", if got >= expected { "ok" } else { "incomplete" });
    r
}

/// `roster-login`: every clique member logs in and sends initial presence;
/// done when each has seen available presence from all its contacts.
pub async fn roster_login(
    cx: &Ctx,
    prefix: &str,
    count: usize,
    contacts: usize,
    timeout: Duration,
) -> Record {
    let (groups, size) = cliques(count, contacts);
    let n = groups * size;
    let expected = (n * (size - 1)) as u64;
    let seen = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let w = cx.window();
    let t = cx.target.clone();
    let prefix_owned = prefix.to_string();
    let sem = Arc::new(Semaphore::new(cx.concurrency));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (t, seen, mut stop, sem) = (t.clone(), seen.clone(), stop_rx.clone(), sem.clone());
        let delivered = delivered.clone();
        let user = format!("{prefix_owned}{i}");
        tasks.spawn(async move {
            let permit = sem.acquire_owned().await?;
            let s = client::login(&t, &user).await?;
            drop(permit);
            let own = t.bare(&user);
            let Session { mut io, mut reader, .. } = s;
            io.write_all(b"<presence/>").await?;
            // A contact's presence may arrive twice (its broadcast and the
            // answer to our probe cross): completion counts contacts, the
            // CPU figure counts every delivery.
            let mut contacts = std::collections::HashSet::new();
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    got = reader.next(&mut io) => match got? {
                        Got::Stanza(st) if scan::tag_name(st) == b"presence" && scan::attr(st, b"type").is_none() => {
                            let from = scan::attr(st, b"from").unwrap_or(b"");
                            let bare = from.split(|&b| b == b'/').next().unwrap_or(from);
                            if bare != own.as_bytes() {
                                delivered.fetch_add(1, Ordering::Relaxed);
                                if contacts.insert(bare.to_vec()) {
                                    seen.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Got::Close => break,
                        _ => {}
                    },
                }
            }
            let _ = io.write_all(b"</stream:stream>").await;
            anyhow::Ok(())
        });
    }
    let t0 = Instant::now();
    while seen.load(Ordering::Relaxed) < expected && t0.elapsed() < timeout {
        if tasks.is_empty() {
            break;
        }
        while let Some(done) = tasks.try_join_next() {
            if let Ok(Err(e)) = done {
                eprintln!("roster-login: {e:#}");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let u = w.stop();
    let got = seen.load(Ordering::Relaxed);
    let presences = delivered.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        if !matches!(done, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let mut r = Record::new("roster-login");
    r.num("n", n as f64).num("contacts", (size - 1) as f64);
    r.num("contacts_online", got as f64)
        .num("expected", expected as f64);
    r.num("presences", presences as f64);
    r.str("unit", "logins/s");
    r.num("figure", n as f64 / u.wall);
    r.usage(&u, n as f64);
    if let Some(s) = u.server_cpu.filter(|s| *s > 0.0) {
        r.num("presences_per_server_cpu_s", presences as f64 / s);
    }
    r.num("failed", failed as f64);
    r.str("status", if got >= expected { "ok" } else { "incomplete" });
    r
}

/// Parameters of `chat` (and of the chat run after `churn`).
#[derive(Clone, Copy)]
pub struct ChatParams {
    pub pairs: usize,
    /// Total messages/s over all senders; 0 = saturation (closed loop).
    pub rate: f64,
    /// Messages in flight per sender at saturation.
    pub window: i64,
    pub warmup: Duration,
    pub duration: Duration,
    pub body_bytes: usize,
}

/// Shared state of one traffic run.
struct Traffic {
    base: Instant,
    measuring: AtomicBool,
    stop: AtomicBool,
    /// Per sender: messages sent but not yet seen by their receiver.
    inflight: Vec<AtomicI64>,
    wake: Vec<Notify>,
    sent: AtomicU64,
}

impl Traffic {
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
}

/// Counts of one receiver.
#[derive(Default)]
struct Received {
    delivered: u64,
    latencies: Vec<u32>,
}

/// Reads until stopped; counts messages with a `t=` body stamped during the
/// measurement window. A received message frees one slot of its sender's
/// window: in chat any message from the peer; in MUC only our own echo.
async fn receive(
    traffic: Arc<Traffic>,
    mut reader: Reader,
    mut rh: ReadHalf<Io>,
    mut stop: watch::Receiver<bool>,
    frees: Frees,
    half_window: i64,
) -> Received {
    let mut rec = Received::default();
    // The clock is read once per read from the connection: every stanza of
    // one read arrived at the same moment.
    let (mut now_us, mut now_read) = (0, u64::MAX);
    loop {
        let got = tokio::select! {
            _ = stop.changed() => break,
            got = reader.next(&mut rh) => got,
        };
        let st = match got {
            Ok(Got::Stanza(st)) => st,
            Ok(Got::Open) => continue,
            Ok(Got::Close) | Err(_) => break,
        };
        if scan::tag_name(st) != b"message" {
            continue;
        }
        let Some(body) = scan::child_text(st, b"body") else {
            continue;
        };
        let Some((t, s)) = parse_body(body) else {
            continue;
        };
        let sender = match frees {
            Frees::Peer(p) => Some(p),
            Frees::OwnEcho(me) => s.filter(|s| *s == me),
        };
        if let Some(sender) = sender
            && let Some(inf) = traffic.inflight.get(sender)
        {
            let prev = inf.fetch_sub(1, Ordering::AcqRel);
            if prev - 1 <= half_window && prev > half_window {
                traffic.wake[sender].notify_one();
            }
        }
        if traffic.measuring.load(Ordering::Relaxed) {
            if reader.reads() != now_read {
                (now_us, now_read) = (traffic.now_us(), reader.reads());
            }
            rec.delivered += 1;
            let lat = now_us.saturating_sub(t);
            rec.latencies.push(lat.min(u64::from(u32::MAX)) as u32);
        }
    }
    rec
}

/// Whose send window a received message frees.
#[derive(Clone, Copy)]
enum Frees {
    Peer(usize),
    OwnEcho(usize),
}

/// `t=<µs> s=<sender>` at the start of a body.
fn parse_body(body: &[u8]) -> Option<(u64, Option<usize>)> {
    let mut t = None;
    let mut s = None;
    for part in body.split(|&b| b == b' ').take(2) {
        if let Some(v) = part.strip_prefix(b"t=") {
            t = Some(decimal(v)?);
        } else if let Some(v) = part.strip_prefix(b"s=") {
            s = Some(usize::try_from(decimal(v)?).ok()?);
        }
    }
    Some((t?, s))
}

/// A non-empty run of ASCII digits as a number (what [`MessageTemplate`] writes).
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let d = d.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// One sender's messages, written without `fmt`: only the id's sequence
/// number and the body's timestamp change from one message to the next.
struct MessageTemplate {
    /// `<message to='…' type='…' id='m`
    head: Vec<u8>,
    /// ` s=<sender> <padding></body></message>`
    tail: Vec<u8>,
}

impl MessageTemplate {
    fn new(to: &str, kind: &str, sender: usize, body_bytes: usize) -> Self {
        let pad = "x".repeat(body_bytes.saturating_sub(24));
        MessageTemplate {
            head: format!("<message to='{to}' type='{kind}' id='m").into_bytes(),
            tail: format!(" s={sender} {pad}</body></message>").into_bytes(),
        }
    }

    fn write(&self, buf: &mut Vec<u8>, seq: u64, t_us: u64) {
        let mut num = itoa::Buffer::new();
        buf.extend_from_slice(&self.head);
        buf.extend_from_slice(num.format(seq).as_bytes());
        buf.extend_from_slice(b"'><body>t=");
        buf.extend_from_slice(num.format(t_us).as_bytes());
        buf.extend_from_slice(&self.tail);
    }
}

/// Sends to `to` (a JID) as sender `idx` until told to stop.
async fn send(
    traffic: Arc<Traffic>,
    mut wh: WriteHalf<Io>,
    idx: usize,
    to: String,
    kind: &'static str,
    p: ChatParams,
    senders: usize,
) -> anyhow::Result<()> {
    let template = MessageTemplate::new(&to, kind, idx, p.body_bytes);
    let mut buf = Vec::new();
    let mut seq = 0u64;
    let mut msg = |buf: &mut Vec<u8>, t_us: u64| {
        seq += 1;
        template.write(buf, seq, t_us);
    };
    if p.rate > 0.0 {
        let period = Duration::from_secs_f64(senders as f64 / p.rate);
        let offset = period.mul_f64(idx as f64 / senders as f64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while !traffic.stop.load(Ordering::Relaxed) {
            tick.tick().await;
            buf.clear();
            msg(&mut buf, traffic.now_us());
            traffic.inflight[idx].fetch_add(1, Ordering::Relaxed);
            wh.write_all(&buf).await?;
            traffic.sent.fetch_add(1, Ordering::Relaxed);
        }
    } else {
        let half = p.window / 2;
        while !traffic.stop.load(Ordering::Relaxed) {
            let inflight = traffic.inflight[idx].load(Ordering::Acquire);
            if inflight > half {
                let _ =
                    tokio::time::timeout(Duration::from_millis(50), traffic.wake[idx].notified())
                        .await;
                continue;
            }
            let k = p.window - inflight;
            buf.clear();
            // One write: the whole batch leaves at the same moment.
            let t_us = traffic.now_us();
            for _ in 0..k {
                msg(&mut buf, t_us);
            }
            traffic.inflight[idx].fetch_add(k, Ordering::AcqRel);
            wh.write_all(&buf).await?;
            traffic.sent.fetch_add(k as u64, Ordering::Relaxed);
        }
    }
    let _ = wh.write_all(b"</stream:stream>").await;
    Ok(())
}

/// Warmup, measurement window, stop; returns the record fields.
async fn run_traffic(
    cx: &Ctx,
    r: &mut Record,
    traffic: Arc<Traffic>,
    stop_tx: watch::Sender<bool>,
    receivers: JoinSet<Received>,
    senders: JoinSet<anyhow::Result<()>>,
    p: ChatParams,
) {
    let (mut receivers, mut senders) = (receivers, senders);
    tokio::time::sleep(p.warmup).await;
    let sent0 = traffic.sent.load(Ordering::Relaxed);
    traffic.measuring.store(true, Ordering::Relaxed);
    let w = cx.window();
    tokio::time::sleep(p.duration).await;
    traffic.measuring.store(false, Ordering::Relaxed);
    let u = w.stop();
    let sent = traffic.sent.load(Ordering::Relaxed) - sent0;
    traffic.stop.store(true, Ordering::Relaxed);
    for n in &traffic.wake {
        n.notify_one();
    }
    let mut send_errors = 0;
    while let Some(s) = senders.join_next().await {
        if !matches!(s, Ok(Ok(()))) {
            send_errors += 1;
        }
    }
    // Give in-flight messages a moment, then stop the readers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(true);
    let mut delivered = 0;
    let mut lat = Vec::new();
    while let Some(Ok(rec)) = receivers.join_next().await {
        delivered += rec.delivered;
        lat.extend(rec.latencies);
    }
    r.num("sent", sent as f64)
        .num("delivered", delivered as f64);
    r.str("unit", "msgs/s");
    r.num("figure", delivered as f64 / u.wall);
    r.usage(&u, delivered as f64);
    if let Some((p50, p99, max)) = percentiles(lat) {
        r.num("p50_ms", p50).num("p99_ms", p99).num("max_ms", max);
    }
    if send_errors > 0 {
        r.num("send_errors", send_errors as f64);
    }
}

/// `chat`: P pairs send each other 1:1 messages (to the full JID).
pub async fn chat(cx: &Ctx, prefix: &str, p: ChatParams, name: &str) -> Record {
    let n = p.pairs * 2;
    let users = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let mut r = Record::new(name);
    r.num("pairs", p.pairs as f64).num("rate", p.rate);
    let (sessions, failed, err) = hold(cx, users).await;
    if failed > 0 {
        note_failures(&mut r, failed, err);
        r.str("status", "login failed");
        close_all(sessions).await;
        return r;
    }
    // Let initial-presence traffic settle before measuring.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let jids: Vec<String> = sessions.iter().map(|s| s.jid.clone()).collect();
    let traffic = Arc::new(Traffic {
        base: Instant::now(),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        inflight: (0..n).map(|_| AtomicI64::new(0)).collect(),
        wake: (0..n).map(|_| Notify::new()).collect(),
        sent: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut receivers = JoinSet::new();
    let mut senders = JoinSet::new();
    for (i, s) in sessions.into_iter().enumerate() {
        let peer = i ^ 1;
        let Session { io, reader, .. } = s;
        let (rh, wh) = tokio::io::split(io);
        receivers.spawn(receive(
            traffic.clone(),
            reader,
            rh,
            stop_rx.clone(),
            Frees::Peer(peer),
            p.window / 2,
        ));
        senders.spawn(send(
            traffic.clone(),
            wh,
            i,
            jids[peer].clone(),
            "chat",
            p,
            n,
        ));
    }
    run_traffic(cx, &mut r, traffic, stop_tx, receivers, senders, p).await;
    r
}

/// `churn`: N logins each closed at once, twice; server RSS before, between
/// and after. The first round includes warm-up (caches filling, the
/// allocator's high-water mark); the second shows steady-state growth,
/// which is what a leak would look like.
pub async fn churn(cx: &Ctx, prefix: &str, count: usize, settle: Duration) -> Record {
    let before = cx.rss();
    let mut r = login(cx, prefix, count, false).await;
    let (between, _) = cx.settled_rss(settle).await;
    let _ = login(cx, prefix, count, false).await;
    let (after, _) = cx.settled_rss(settle).await;
    let mut out = Record::new("churn");
    // Reuse the first round's login figures under the churn name.
    for (k, v) in std::mem::take(&mut r).into_fields() {
        if k != "scenario" {
            out.raw(&k, v);
        }
    }
    if let (Some(b), Some(m), Some(a)) = (before, between, after) {
        out.num("rss_before_kb", b as f64)
            .num("rss_between_kb", m as f64)
            .num("rss_after_kb", a as f64);
        out.num("rss_growth_kb", m as f64 - b as f64);
        out.num("rss_growth_second_kb", a as f64 - m as f64);
    }
    out
}

/// Whether `conference.<domain>` advertises MUC in disco#info.
async fn has_muc(cx: &Ctx, user: &str) -> anyhow::Result<bool> {
    let mut s = client::login(&cx.target, user).await?;
    let service = format!("conference.{}", cx.target.domain);
    s.io.write_all(
        format!("<iq type='get' id='disco1' to='{service}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
            .as_bytes(),
    )
    .await?;
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let st = s.reader.stanza(&mut s.io).await?;
            if scan::attr(&st, b"id") == Some(b"disco1") {
                return anyhow::Ok(st);
            }
        }
    })
    .await;
    client::close(s).await;
    let Ok(Ok(st)) = answer else { return Ok(false) };
    Ok(scan::attr(&st, b"type") == Some(b"result")
        && (scan::contains(&st, b"var='http://jabber.org/protocol/muc'")
            || scan::contains(&st, b"var=\"http://jabber.org/protocol/muc\"")))
}

/// Joins the room; waits for our own presence (status 110), and makes the
/// room instant (XEP-0045 §10.1.2) when we created it (status 201).
async fn join(s: &mut Session, room: &str, nick: &str) -> anyhow::Result<()> {
    s.io.write_all(
        format!(
            "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>"
        )
        .as_bytes(),
    )
    .await?;
    loop {
        let st = s.reader.stanza(&mut s.io).await?;
        if scan::tag_name(&st) != b"presence" {
            continue;
        }
        let from = scan::attr(&st, b"from").unwrap_or(b"");
        if from != format!("{room}/{nick}").as_bytes() {
            continue;
        }
        if scan::attr(&st, b"type") == Some(b"error") {
            bail!("join refused: {}", String::from_utf8_lossy(&st));
        }
        if scan::contains(&st, b"code='201'") || scan::contains(&st, b"code=\"201\"") {
            s.io.write_all(
                format!(
                    "<iq type='set' id='cfg1' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"
                )
                .as_bytes(),
            )
            .await?;
            loop {
                let st = s.reader.stanza(&mut s.io).await?;
                if scan::attr(&st, b"id") == Some(b"cfg1") {
                    break;
                }
            }
        }
        return Ok(());
    }
}

/// `muc`: K occupants in one room, S of them sending at saturation.
pub async fn muc(
    cx: &Ctx,
    prefix: &str,
    occupants: usize,
    senders_n: usize,
    p: ChatParams,
    name: &str,
) -> Record {
    let mut r = Record::new(name);
    r.num("occupants", occupants as f64)
        .num("senders", senders_n as f64);
    match has_muc(cx, &format!("{prefix}0")).await {
        Ok(true) => {}
        Ok(false) => {
            r.str("status", "not supported");
            return r;
        }
        Err(e) => {
            r.str("status", "not supported");
            r.str("first_error", &format!("{e:#}"));
            return r;
        }
    }
    let users = (0..occupants).map(|i| format!("{prefix}{i}")).collect();
    let (mut sessions, failed, err) = hold(cx, users).await;
    if failed > 0 {
        note_failures(&mut r, failed, err);
        r.str("status", "login failed");
        close_all(sessions).await;
        return r;
    }
    let room = format!(
        "bench{}@conference.{}",
        std::process::id(),
        cx.target.domain
    );
    let mut first = sessions.remove(0);
    if let Err(e) = join(&mut first, &room, "n0").await {
        r.str("status", "join failed")
            .str("first_error", &format!("{e:#}"));
        sessions.push(first);
        close_all(sessions).await;
        return r;
    }
    // The others join concurrently; each must see its own presence.
    let mut set = JoinSet::new();
    for (i, mut s) in sessions.into_iter().enumerate().map(|(i, s)| (i + 1, s)) {
        let room = room.clone();
        set.spawn(async move {
            let res = join(&mut s, &room, &format!("n{i}")).await;
            (i, s, res)
        });
    }
    let mut joined: Vec<(usize, Session)> = vec![(0, first)];
    let mut join_err = None;
    while let Some(j) = set.join_next().await {
        match j {
            Ok((i, s, Ok(()))) => joined.push((i, s)),
            Ok((_, _, Err(e))) => {
                join_err.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                join_err.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if let Some(e) = join_err {
        r.str("status", "join failed").str("first_error", &e);
        close_all(joined.into_iter().map(|(_, s)| s).collect()).await;
        return r;
    }
    r.str("status", "ok");
    joined.sort_by_key(|(i, _)| *i);
    let n = occupants;
    let traffic = Arc::new(Traffic {
        base: Instant::now(),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        inflight: (0..n).map(|_| AtomicI64::new(0)).collect(),
        wake: (0..n).map(|_| Notify::new()).collect(),
        sent: AtomicU64::new(0),
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut receivers = JoinSet::new();
    let mut senders = JoinSet::new();
    for (i, s) in joined {
        let Session { io, reader, .. } = s;
        let (rh, wh) = tokio::io::split(io);
        receivers.spawn(receive(
            traffic.clone(),
            reader,
            rh,
            stop_rx.clone(),
            Frees::OwnEcho(i),
            p.window / 2,
        ));
        if i < senders_n {
            senders.spawn(send(
                traffic.clone(),
                wh,
                i,
                room.clone(),
                "groupchat",
                p,
                senders_n,
            ));
        } else {
            // Hold the write half so the connection stays open.
            senders.spawn(async move {
                let _wh = wh;
                anyhow::Ok(())
            });
        }
    }
    run_traffic(cx, &mut r, traffic, stop_tx, receivers, senders, p).await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_message_reads_back() {
        let template = MessageTemplate::new("u1@d/r", "chat", 7, 64);
        let mut buf = Vec::new();
        template.write(&mut buf, 12, 345_678);
        let pad = "x".repeat(40);
        assert_eq!(
            String::from_utf8(buf.clone()).unwrap(),
            format!(
                "<message to='u1@d/r' type='chat' id='m12'><body>t=345678 s=7 {pad}</body></message>"
            )
        );
        let body = scan::child_text(&buf, b"body").unwrap();
        assert_eq!(parse_body(body), Some((345_678, Some(7))));
    }

    #[test]
    fn bodies_not_ours_are_ignored() {
        assert_eq!(parse_body(b"t=5"), Some((5, None)));
        assert_eq!(parse_body(b"hello"), None);
        assert_eq!(parse_body(b"t= s=1"), None);
        assert_eq!(parse_body(b"t=1x s=1"), None);
        assert_eq!(parse_body(b"t=99999999999999999999"), None);
    }
}
