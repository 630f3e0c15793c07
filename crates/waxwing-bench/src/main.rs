//! `waxwing-bench`: load generator for XMPP servers, and the hardware-floor
//! server it is compared with (issue 5). See `bench/README.md`.
//!
//! One tokio runtime, one task (or two: reader and writer) per connection,
//! no thread per connection. Each scenario prints one JSON line; `report`
//! turns a run's lines into the markdown table.

mod client;
mod floor;
mod measure;
mod report;
mod scan;
mod scenarios;
mod ws;

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::client::Target;
use crate::scenarios::{ChatParams, Ctx};

#[derive(Parser)]
#[command(
    name = "waxwing-bench",
    about = "XMPP load generator and hardware-floor server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Server address (loopback only unless --allow-remote).
    #[arg(long, default_value = "127.0.0.1:5222")]
    addr: String,
    /// XMPP domain of the accounts.
    #[arg(long, default_value = "bench.localhost")]
    domain: String,
    /// Plain TCP: no STARTTLS.
    #[arg(long)]
    no_tls: bool,
    /// Password of every benchmark account.
    #[arg(long, default_value = "benchpass1")]
    password: String,
    /// Force a SASL mechanism (SCRAM-SHA-256, SCRAM-SHA-1, PLAIN); default: best offered.
    #[arg(long)]
    mechanism: Option<String>,
    /// Server process to read CPU time and RSS from.
    #[arg(long)]
    server_pid: Option<String>,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Account name prefix: accounts are <prefix>0, <prefix>1, …
    #[arg(long, default_value = "u")]
    prefix: String,
    /// Labels copied into the JSON record.
    #[arg(long, default_value = "server")]
    system: String,
    #[arg(long, default_value = "shared")]
    variant: String,
    /// Append the JSON line to this file as well as printing it.
    #[arg(long)]
    out: Option<String>,
    /// File caching SCRAM salted passwords between runs (see client.rs).
    #[arg(long)]
    scram_cache: Option<String>,
    /// Worker threads (default: the CPUs this process may use).
    #[arg(long)]
    threads: Option<usize>,
    /// Allow a non-loopback address. Never benchmark someone else's server.
    #[arg(long)]
    allow_remote: bool,
    /// XMPP over WebSocket (RFC 7395): the `ws://` URL, reached at --addr.
    #[arg(long)]
    websocket: Option<String>,
    /// Cluster benchmarks: odd-numbered accounts (the second of each chat
    /// pair) log in at this address (another node), so every pair's
    /// messages cross nodes. Same node: leave it out.
    #[arg(long)]
    peer_addr: Option<String>,
}

#[derive(Args, Clone, Copy)]
struct ChatArgs {
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Total messages/s over all senders; 0 = saturation (closed loop).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Messages in flight per sender at saturation.
    #[arg(long, default_value_t = 32)]
    window: i64,
    /// Seconds of traffic before the measurement window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds of the measurement window.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Body length in bytes (including the timestamp).
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
}

impl ChatArgs {
    fn params(self) -> ChatParams {
        ChatParams {
            pairs: self.pairs,
            rate: self.rate,
            window: self.window.max(1),
            warmup: Duration::from_secs_f64(self.warmup),
            duration: Duration::from_secs_f64(self.duration),
            body_bytes: self.body_bytes,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create accounts by in-band registration (XEP-0077) and log in once.
    Register {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// N logins (STARTTLS, SASL, bind, presence), each closed at once.
    Login {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Returning logins (scenario `login-again`): every account logs in
        /// once untimed, then the same N logins are measured, so each is the
        /// account's second since the server started (whatever the server
        /// keeps of recently seen accounts is warm).
        #[arg(long)]
        again: bool,
    },
    /// Hold N sessions; server RSS before/after (needs --server-pid).
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Seconds to wait before reading RSS after the last login.
        #[arg(long, default_value_t = 3.0)]
        settle: f64,
        /// Cluster runs: keep the sessions this many seconds after reading
        /// RSS, so that other generators can log in and traffic can flow
        /// while all of them are held.
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
        /// Created (empty) once every session is held and RSS was read.
        #[arg(long)]
        ready_file: Option<String>,
    },
    /// Build rosters: cliques of contacts+1 users subscribed both ways.
    RosterSetup {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1010)]
        count: usize,
        #[arg(long, default_value_t = 100)]
        contacts: usize,
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
    },
    /// Log in every roster user; wait for all presence fan-out.
    RosterLogin {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1010)]
        count: usize,
        #[arg(long, default_value_t = 100)]
        contacts: usize,
        #[arg(long, default_value_t = 300.0)]
        timeout: f64,
    },
    /// P pairs exchange 1:1 messages, at saturation or at --rate.
    Chat {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        chat: ChatArgs,
        /// Scenario name in the record (e.g. chat-rate).
        #[arg(long, default_value = "chat")]
        name: String,
    },
    /// N connect/login/disconnect cycles, RSS growth, then `chat`.
    Churn {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value_t = 3.0)]
        settle: f64,
        #[command(flatten)]
        chat: ChatArgs,
    },
    /// K occupants in one room, S senders (needs MUC on conference.DOMAIN).
    Muc {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        occupants: usize,
        #[arg(long, default_value_t = 10)]
        senders: usize,
        #[command(flatten)]
        chat: ChatArgs,
        /// Scenario name in the record (e.g. muc-1000 for another room size).
        #[arg(long, default_value = "muc")]
        name: String,
    },
    /// The hardware floor: minimal TLS router speaking just enough XMPP.
    FloorServer {
        #[arg(long, default_value = "127.0.0.1")]
        listen: IpAddr,
        #[arg(long, default_value_t = 35222)]
        port: u16,
        #[arg(long, default_value = "bench.localhost")]
        domain: String,
        #[arg(long)]
        cert: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Render JSON lines (a file, or - for stdin) as the markdown table.
    Report {
        input: String,
        #[arg(long, default_value = "Waxwing benchmark")]
        title: String,
        /// Free text printed under the title (parameters of the run).
        #[arg(long, default_value = "")]
        params: String,
    },
}

fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    b.worker_threads(threads.unwrap_or_else(measure::my_cpus).max(1));
    Ok(b.build()?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (common, job): (Common, Job) = match cli.command {
        Command::FloorServer {
            listen,
            port,
            domain,
            cert,
            key,
            threads,
        } => {
            return runtime(threads)?.block_on(floor::serve(
                SocketAddr::new(listen, port),
                domain,
                &cert,
                &key,
            ));
        }
        Command::Report {
            input,
            title,
            params,
        } => {
            let text = if input == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&input).with_context(|| format!("reading {input}"))?
            };
            print!("{}", report::render(&text, &title, &params));
            return Ok(());
        }
        Command::Register { common, count } => (common, Job::Register(count)),
        Command::Login {
            common,
            count,
            again,
        } => (common, Job::Login(count, again)),
        Command::Idle {
            common,
            count,
            settle,
            hold,
            ready_file,
        } => (
            common,
            Job::Idle(scenarios::IdleParams {
                count,
                settle: Duration::from_secs_f64(settle),
                hold: Duration::from_secs_f64(hold),
                ready_file,
            }),
        ),
        Command::RosterSetup {
            common,
            count,
            contacts,
            timeout,
        } => (common, Job::RosterSetup(count, contacts, timeout)),
        Command::RosterLogin {
            common,
            count,
            contacts,
            timeout,
        } => (common, Job::RosterLogin(count, contacts, timeout)),
        Command::Chat { common, chat, name } => (common, Job::Chat(chat.params(), name)),
        Command::Churn {
            common,
            count,
            settle,
            chat,
        } => (common, Job::Churn(count, settle, chat.params())),
        Command::Muc {
            common,
            occupants,
            senders,
            chat,
            name,
        } => (common, Job::Muc(occupants, senders, chat.params(), name)),
    };
    check_loopback(&common)?;
    let rt = runtime(common.threads)?;
    rt.block_on(run(common, job))
}

enum Job {
    Register(usize),
    Login(usize, bool),
    Idle(scenarios::IdleParams),
    RosterSetup(usize, usize, f64),
    RosterLogin(usize, usize, f64),
    Chat(ChatParams, String),
    Churn(usize, f64, ChatParams),
    Muc(usize, usize, ChatParams, String),
}

fn check_loopback(c: &Common) -> anyhow::Result<()> {
    if c.allow_remote {
        return Ok(());
    }
    for addr in std::iter::once(&c.addr).chain(c.peer_addr.as_ref()) {
        for a in addr
            .to_socket_addrs()
            .with_context(|| format!("resolving {addr}"))?
        {
            if !a.ip().is_loopback() {
                bail!(
                    "{addr} is not a loopback address; pass --allow-remote to benchmark a remote server you own",
                );
            }
        }
    }
    Ok(())
}

async fn run(c: Common, job: Job) -> anyhow::Result<()> {
    let mut target = Target::new(
        c.addr.clone(),
        c.domain.clone(),
        !c.no_tls && c.websocket.is_none(),
        c.password.clone(),
        c.mechanism.clone(),
    );
    target.websocket = c.websocket.clone();
    if let Some(path) = &c.scram_cache {
        target.scram_cache.load(path);
    }
    let peer = c.peer_addr.as_ref().map(|addr| {
        let mut peer = Target::new(
            addr.clone(),
            c.domain.clone(),
            !c.no_tls && c.websocket.is_none(),
            c.password.clone(),
            c.mechanism.clone(),
        );
        peer.websocket = c.websocket.clone();
        peer.scram_cache = target.scram_cache.clone();
        Arc::new(peer)
    });
    let cx = Ctx {
        peer,
        target: Arc::new(target),
        server_pid: c.server_pid.clone(),
        concurrency: c.concurrency,
    };
    let secs = Duration::from_secs_f64;
    let mut records = match job {
        Job::Register(n) => vec![scenarios::register(&cx, &c.prefix, n).await],
        Job::Login(n, again) => vec![scenarios::login(&cx, &c.prefix, n, again).await],
        Job::Idle(p) => vec![scenarios::idle(&cx, &c.prefix, p).await],
        Job::RosterSetup(n, k, t) => {
            vec![scenarios::roster_setup(&cx, &c.prefix, n, k, secs(t)).await]
        }
        Job::RosterLogin(n, k, t) => {
            vec![scenarios::roster_login(&cx, &c.prefix, n, k, secs(t)).await]
        }
        Job::Chat(p, name) => vec![scenarios::chat(&cx, &c.prefix, p, &name).await],
        Job::Churn(n, settle, p) => {
            let churn = scenarios::churn(&cx, &c.prefix, n, secs(settle)).await;
            let chat = scenarios::chat(&cx, &c.prefix, p, "chat-after-churn").await;
            vec![churn, chat]
        }
        Job::Muc(k, s, p, name) => vec![scenarios::muc(&cx, &c.prefix, k, s, p, &name).await],
    };
    if let Some(path) = &c.scram_cache {
        let _ = cx.target.scram_cache.save(path);
    }
    let mut file = match &c.out {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {p}"))?,
        ),
        None => None,
    };
    for r in &mut records {
        r.str("system", &c.system).str("variant", &c.variant);
        r.num("gen_threads", measure::my_cpus() as f64);
        let line = r.to_json();
        println!("{line}");
        if let Some(f) = &mut file {
            writeln!(f, "{line}")?;
        }
    }
    Ok(())
}
