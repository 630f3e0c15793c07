//! `waxwing admin …`: the admin API of a running server from the command
//! line (`waxwing_core::admin`), and its tokens, which are managed straight
//! in the data directory.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use waxwing_core::Config;

#[derive(Subcommand)]
pub enum Action {
    /// Tokens for the admin API (stored hashed in the data directory).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Uptime, sessions, accounts.
    Stats,
    /// Bound client sessions.
    Sessions,
    /// Disconnect a full JID, or every session of a bare JID.
    Kick { jid: String },
    /// Accounts, optionally of one host.
    Users { host: Option<String> },
    /// Persistent group chat rooms.
    Rooms,
    /// Send a headline message to every available session.
    Announce {
        message: String,
        #[arg(long)]
        subject: Option<String>,
    },
    /// Cluster mode: send this node's clients to another node and refuse
    /// new ones (`<see-other-host/>` naming --to, or `<system-shutdown/>`
    /// so they reconnect through DNS or the load balancer). Stop the node
    /// afterwards.
    Drain {
        /// host or host:port of another node.
        #[arg(long)]
        to: Option<String>,
    },
    /// Set an account's password (its sessions are disconnected).
    Passwd {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Refuse federation with a domain.
    Block { domain: String },
    /// Allow federation with a domain again.
    Unblock { domain: String },
    /// Blocked domains.
    Blocked,
    /// Invitations (XEP-0401/0445): account invitations for friends.
    Invite {
        #[command(subcommand)]
        action: InviteAction,
    },
}

#[derive(Subcommand)]
pub enum InviteAction {
    /// Make an account invitation; prints its landing page, `xmpp:` URI
    /// and token (the token is shown only this once).
    Create {
        /// The host the account is made on (default: the first).
        #[arg(long)]
        host: Option<String>,
        /// The only username the account may take (default: the invitee chooses).
        #[arg(long)]
        username: Option<String>,
        /// A local account the new one becomes a mutual contact of.
        #[arg(long)]
        inviter: Option<String>,
        /// How long it stays valid, in seconds (default `[invites] expiry_secs`).
        #[arg(long)]
        valid_secs: Option<u64>,
        /// How many accounts it may make (default 1; more for a group invitation).
        #[arg(long)]
        max_uses: Option<u32>,
    },
    /// List invitations (never their tokens), optionally of one host.
    List { host: Option<String> },
    /// Revoke an invitation by its id (from `list` or `create`).
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum TokenAction {
    /// Create a token and print it (it is shown only this once).
    Create { name: String },
    /// List token names.
    List,
    /// Revoke a token.
    Revoke { name: String },
}

/// Where the API is, and with which token.
#[derive(clap::Args)]
pub struct Target {
    /// Base URL of the HTTP listener (default: the first `[listen] http`
    /// address, a wildcard one reached over loopback).
    #[arg(long, global = true)]
    url: Option<String>,
    /// The admin token.
    #[arg(
        long,
        global = true,
        env = "WAXWING_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

fn default_url(config: &Config) -> anyhow::Result<String> {
    let Some(addr) = config.http.listen.first() else {
        bail!("no plain HTTP listener in [listen] http: give --url");
    };
    if addr.port() == 0 {
        bail!("[listen] http has port 0 (chosen at start): give --url");
    }
    let ip = if addr.ip().is_unspecified() {
        if addr.is_ipv4() {
            "127.0.0.1".parse().expect("an address")
        } else {
            "::1".parse().expect("an address")
        }
    } else {
        addr.ip()
    };
    Ok(format!("http://{}", SocketAddr::new(ip, addr.port())))
}

fn client() -> anyhow::Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(std::time::Duration::from_secs(30))
        .build()?)
}

pub async fn run(config: &Config, target: Target, action: Action) -> anyhow::Result<()> {
    use waxwing_core::admin as api;
    let (method, path, body) = match action {
        Action::Token { action } => {
            match action {
                TokenAction::Create { name } => {
                    let t = api::create_token(&config.data_dir, &name)?;
                    println!("{t}");
                    eprintln!("admin token {name:?} created; it is not shown again");
                }
                TokenAction::List => {
                    for n in api::list_tokens(&config.data_dir)? {
                        println!("{n}");
                    }
                }
                TokenAction::Revoke { name } => {
                    if !api::revoke_token(&config.data_dir, &name)? {
                        bail!("no token named {name:?}");
                    }
                    println!("revoked {name}");
                }
            }
            return Ok(());
        }
        Action::Stats => ("GET", "/admin/api/stats".to_string(), None),
        Action::Sessions => ("GET", "/admin/api/sessions".into(), None),
        Action::Kick { jid } => ("DELETE", format!("/admin/api/sessions/{}", enc(&jid)), None),
        Action::Users { host } => (
            "GET",
            match host {
                Some(h) => format!("/admin/api/users?host={}", enc(&h)),
                None => "/admin/api/users".into(),
            },
            None,
        ),
        Action::Rooms => ("GET", "/admin/api/rooms".into(), None),
        Action::Announce { message, subject } => (
            "POST",
            "/admin/api/announce".into(),
            Some(json!({ "message": message, "subject": subject })),
        ),
        Action::Drain { to } => ("POST", "/admin/api/drain".into(), Some(json!({ "to": to }))),
        Action::Passwd { jid, password } => {
            let password = match password {
                Some(p) => p,
                None => rpassword::prompt_password("New password: ")?,
            };
            (
                "PUT",
                format!("/admin/api/users/{}/password", enc(&jid)),
                Some(json!({ "password": password })),
            )
        }
        Action::Block { domain } => (
            "PUT",
            format!("/admin/api/blocked-domains/{}", enc(&domain)),
            None,
        ),
        Action::Unblock { domain } => (
            "DELETE",
            format!("/admin/api/blocked-domains/{}", enc(&domain)),
            None,
        ),
        Action::Blocked => ("GET", "/admin/api/blocked-domains".into(), None),
        Action::Invite { action } => match action {
            InviteAction::Create {
                host,
                username,
                inviter,
                valid_secs,
                max_uses,
            } => (
                "POST",
                "/admin/api/invites".into(),
                Some(json!({
                    "host": host,
                    "username": username,
                    "inviter": inviter,
                    "valid_secs": valid_secs,
                    "max_uses": max_uses,
                })),
            ),
            InviteAction::List { host } => (
                "GET",
                match host {
                    Some(h) => format!("/admin/api/invites?host={}", enc(&h)),
                    None => "/admin/api/invites".into(),
                },
                None,
            ),
            InviteAction::Revoke { id } => {
                ("DELETE", format!("/admin/api/invites/{}", enc(&id)), None)
            }
        },
    };
    let base = match target.url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => default_url(config)?,
    };
    let token = target
        .token
        .context("an admin token is needed: --token or WAXWING_ADMIN_TOKEN (waxwing admin token create NAME)")?;
    let url = format!("{base}{path}");
    let mut req = client()?.request(method.parse()?, &url).bearer_auth(token);
    if let Some(b) = body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&b)?);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let why = value
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| value.to_string(), str::to_string);
        bail!("{method} {url}: {status}: {why}");
    }
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

/// Percent-encodes a path segment (JIDs carry `@` and `/`).
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
