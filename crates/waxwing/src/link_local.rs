//! `waxwing link-local`: a standalone XEP-0174 peer, no server at all.
//!
//! Two machines on a LAN chat with it. Input lines are messages to the
//! current peer; `/to user@machine` picks the peer, `/peers` lists them,
//! `/status avail|away|dnd [text]` changes our presence, `/quit` leaves.
//! Output lines (stdout) are meant for people and scripts alike:
//!
//! ```text
//! waxwing: link-local alice@laptop on 192.168.1.20:5298
//! waxwing: ready
//! presence bob@desk available [away] [text]
//! presence bob@desk unavailable
//! message bob@desk text (newlines as \n)
//! error bob@desk text
//! ```

use anyhow::Context;
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use waxwing_core::Config;
use waxwing_core::link_local::name::{Instance, valid_machine};
use waxwing_core::link_local::txt::{Presence, Status};
use waxwing_core::link_local::{Endpoint, EndpointConfig, LinkEvent, Peer};
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

/// Flags of `waxwing link-local`; limits come from `[link_local]` and
/// `[limits]` of the configuration (or their defaults).
#[derive(Args)]
pub struct Opts {
    /// The user part of our `user@machine` name.
    #[arg(long)]
    user: String,
    /// The machine part (default: `[link_local] machine`, else the host name).
    #[arg(long)]
    machine: Option<String>,
    /// Interface name or address to announce on and listen on (default:
    /// `[link_local] interface`, else every interface).
    #[arg(long)]
    interface: Option<String>,
    /// TCP port of serverless streams (default: `[link_local] port`; 0: any).
    #[arg(long)]
    port: Option<u16>,
    /// Nickname published in the TXT record.
    #[arg(long)]
    nick: Option<String>,
    /// Neither offer nor use TLS.
    #[arg(long)]
    no_tls: bool,
    /// Refuse streams without TLS.
    #[arg(long, conflicts_with = "no_tls")]
    require_tls: bool,
}

pub async fn run(config: &Config, opts: Opts) -> anyhow::Result<()> {
    let mut cfg = EndpointConfig::from_config(config);
    if let Some(m) = opts.machine {
        anyhow::ensure!(
            valid_machine(&m),
            "--machine {m:?}: letters, digits and '-' only"
        );
        cfg.machine = m;
    }
    if opts.interface.is_some() {
        cfg.interface = opts.interface;
    }
    if let Some(p) = opts.port {
        cfg.port = p;
    }
    if opts.no_tls {
        cfg.tls = false;
    }
    cfg.require_tls |= opts.require_tls;
    anyhow::ensure!(
        Instance::new(&opts.user, &cfg.machine).is_some(),
        "--user {:?}: not a usable link-local name",
        opts.user
    );
    let (endpoint, mut events) = Endpoint::start(cfg).await.context("link-local endpoint")?;
    let mut presence = Presence {
        nick: opts.nick,
        ..Presence::default()
    };
    let me = endpoint
        .announce("me", &opts.user, &presence)
        .context("announcing on mDNS")?;
    let at = match endpoint.addrs() {
        [] => format!("*:{}", endpoint.port()),
        [a, ..] => format!("{a}:{}", endpoint.port()),
    };
    println!("waxwing: link-local {me} on {at}");
    println!("waxwing: ready");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut to: Option<Instance> = None;
    let stop = crate::shutdown_signal()?;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = events.recv() => match ev {
                Some(ev) => print_event(ev),
                None => break,
            },
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                match command(&endpoint, &mut to, &mut presence, &opts.user, line.trim_end()) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => println!("error {} {e}", to.as_ref().map(|t| t.to_string()).unwrap_or("-".into())),
                }
            }
        }
    }
    endpoint.stop().await;
    Ok(())
}

/// One input line; `Ok(false)` to quit.
fn command(
    ep: &Endpoint,
    to: &mut Option<Instance>,
    presence: &mut Presence,
    user: &str,
    line: &str,
) -> Result<bool, String> {
    if let Some(rest) = line.strip_prefix('/') {
        let (cmd, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        match cmd {
            "quit" => return Ok(false),
            "to" => {
                let i = Instance::parse(arg.trim()).ok_or("usage: /to user@machine")?;
                *to = Some(ep.peer(&i).map(|p| p.instance).unwrap_or(i));
            }
            "peers" => {
                for p in ep.peers() {
                    println!("{}", presence_line(&p));
                }
                println!("peers end");
            }
            "status" => {
                let (s, msg) = arg.split_once(' ').unwrap_or((arg, ""));
                presence.status = match s {
                    "avail" | "" => Status::Avail,
                    "away" => Status::Away,
                    "dnd" => Status::Dnd,
                    _ => return Err("usage: /status avail|away|dnd [text]".into()),
                };
                presence.msg = Some(msg.to_string()).filter(|m| !m.is_empty());
                ep.announce("me", user, presence)
                    .ok_or("announcing failed")?;
            }
            _ => return Err(format!("unknown command /{cmd}")),
        }
        return Ok(true);
    }
    if line.is_empty() {
        return Ok(true);
    }
    let peer = to.as_ref().ok_or("no recipient: use /to user@machine")?;
    let msg = Element::new("message", ns::CLIENT)
        .with_attr("type", "chat")
        .with_attr("id", waxwing_core::random_id())
        .with_child(Element::new("body", ns::CLIENT).with_text(line));
    ep.send("me", peer, msg, None).map_err(|e| e.to_string())?;
    Ok(true)
}

fn presence_line(p: &Peer) -> String {
    let mut s = format!("presence {} available", p.instance);
    if let Some(show) = p.presence.status.show() {
        s.push_str(&format!(" [{show}]"));
    }
    if let Some(m) = &p.presence.msg {
        s.push_str(&format!(" {}", one_line(m)));
    }
    s
}

fn one_line(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\r', "")
}

fn print_event(ev: LinkEvent) {
    match ev {
        LinkEvent::PeerUp(p) => println!("{}", presence_line(&p)),
        LinkEvent::PeerDown(i) => println!("presence {i} unavailable"),
        LinkEvent::Message { from, stanza, .. } => {
            if stanza.attr("type") == Some("error") {
                println!("error {from} the peer returned an error");
            } else if let Some(body) = stanza.child("body", ns::CLIENT) {
                println!("message {from} {}", one_line(&body.text()));
            }
        }
        LinkEvent::Undelivered { to, .. } => println!("error {to} not delivered"),
    }
}
