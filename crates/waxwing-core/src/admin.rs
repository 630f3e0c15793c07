//! The admin API: JSON over the HTTP listener under `/admin/api/`, for
//! `waxwing admin …` and operators' scripts.
//!
//! Off by default (`[admin] enabled`); when on, only loopback and
//! `[admin] allowed_networks` reach it (everyone else gets 404, as if it did
//! not exist), and every request needs `Authorization: Bearer <token>`
//! with a token made by `waxwing admin token create`. Tokens are stored
//! hashed (SHA-256; they are 32 random bytes, so no slow hash is needed) in
//! `<data_dir>/admin-tokens`, one `name hash` per line, read at each
//! request: a token made or removed while the server runs counts at once.
//!
//! | method | path | does |
//! | --- | --- | --- |
//! | GET | `/admin/api/stats` | uptime, sessions, accounts, s2s routes |
//! | GET | `/admin/api/sessions` | bound sessions |
//! | DELETE | `/admin/api/sessions/{jid}` | kicks a full JID, or every session of a bare JID |
//! | GET | `/admin/api/users[?host=]` | accounts |
//! | PUT | `/admin/api/users/{jid}/password` | `{"password"}`: sets it, ends the account's sessions |
//! | GET | `/admin/api/rooms` | persistent group chat rooms |
//! | POST | `/admin/api/announce` | `{"message", "subject"?}`: a headline to every available session |
//! | PUT/DELETE | `/admin/api/blocked-domains/{domain}` | blocks / unblocks federation with a domain |
//! | GET | `/admin/api/blocked-domains` | blocked domains |
//! | GET | `/admin/api/invites[?host=]` | invitations (never their tokens) |
//! | POST | `/admin/api/invites` | `{"host"?, "username"?, "inviter"?, "valid_secs"?, "max_uses"?}`: an account invitation; its token, URI and landing page |
//! | DELETE | `/admin/api/invites/{id}` | revokes an invitation |

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Path as UrlPath, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::stanza::{StreamCondition, StreamError};
use waxwing_proto::xml::Element;
use waxwing_store::StoreError;

use crate::router::Server;
use crate::session::SessionFlag;

/// The token file under `data_dir`.
pub fn tokens_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin-tokens")
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Makes a token named `name`, stores its hash, and returns the token (the
/// only time it is ever seen). Names are one word; a name in use is refused.
pub fn create_token(data_dir: &Path, name: &str) -> std::io::Result<String> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace()) {
        return Err(std::io::Error::other("a token name is one word"));
    }
    if list_tokens(data_dir)?.iter().any(|n| n == name) {
        return Err(std::io::Error::other(format!(
            "a token named {name:?} exists"
        )));
    }
    let secret: [u8; 32] = rand::random();
    let token = format!(
        "wxa_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    std::fs::create_dir_all(data_dir)?;
    let path = tokens_path(data_dir);
    let mut f = open_private_append(&path)?;
    writeln!(f, "{name} {}", hash(&token))?;
    f.sync_all()?;
    Ok(token)
}

/// The tokens file is appended to (and rewritten) with mode 0600.
fn open_private_append(path: &Path) -> std::io::Result<std::fs::File> {
    crate::private_file::open(path, std::fs::OpenOptions::new().append(true))
}

fn read_tokens(data_dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    match std::fs::read_to_string(tokens_path(data_dir)) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, h)| (n.to_string(), h.trim().to_string()))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The names of the tokens.
pub fn list_tokens(data_dir: &Path) -> std::io::Result<Vec<String>> {
    Ok(read_tokens(data_dir)?.into_iter().map(|(n, _)| n).collect())
}

/// Removes the token `name`; false if there was none.
pub fn revoke_token(data_dir: &Path, name: &str) -> std::io::Result<bool> {
    let tokens = read_tokens(data_dir)?;
    let kept: Vec<_> = tokens.iter().filter(|(n, _)| n != name).collect();
    if kept.len() == tokens.len() {
        return Ok(false);
    }
    let path = tokens_path(data_dir);
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = open_private_append(&tmp)?;
    for (n, h) in kept {
        writeln!(f, "{n} {h}")?;
    }
    f.sync_all()?;
    std::fs::rename(tmp, path)?;
    Ok(true)
}

/// The name of the token `presented` matches, if any.
fn token_name(data_dir: &Path, presented: &str) -> Option<String> {
    let h = hash(presented);
    let tokens = match read_tokens(data_dir) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the admin token file");
            return None;
        }
    };
    // Comparing digests: equal time per candidate, and a timing leak would
    // tell about a hash, not about a token.
    tokens
        .into_iter()
        .find(|(_, stored)| *stored == h)
        .map(|(n, _)| n)
}

/// The API's routes (registered on the HTTP listener).
pub(crate) fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route("/admin/api/stats", get(stats))
        .route("/admin/api/sessions", get(sessions))
        .route("/admin/api/sessions/{jid}", axum::routing::delete(kick))
        .route("/admin/api/users", get(users))
        .route("/admin/api/users/{jid}/password", put(set_password))
        .route("/admin/api/rooms", get(rooms))
        .route("/admin/api/announce", axum::routing::post(announce))
        .route("/admin/api/drain", axum::routing::post(drain))
        .route("/admin/api/blocked-domains", get(blocked_domains))
        .route(
            "/admin/api/blocked-domains/{domain}",
            put(block_domain).delete(unblock_domain),
        )
        .route("/admin/api/invites", get(list_invites).post(create_invite))
        .route(
            "/admin/api/invites/{id}",
            axum::routing::delete(revoke_invite),
        )
}

/// A refused or failed request, as JSON `{"error": …}`.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"waxwing admin\""),
            );
        }
        r
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Failure(StatusCode::NOT_FOUND, "not found".into()),
            e => {
                tracing::error!(error = %e, "admin API: storage failed");
                Failure(StatusCode::INTERNAL_SERVER_ERROR, "storage failed".into())
            }
        }
    }
}

type Reply = Result<Json<Value>, Failure>;

/// The gate every handler goes through: enabled, allowed peer, valid token.
fn authorize(server: &Server, peer: SocketAddr, headers: &HeaderMap) -> Result<String, Failure> {
    let a = &server.config.admin;
    if !a.enabled || !a.access.allows(peer.ip()) {
        return Err(Failure(StatusCode::NOT_FOUND, "not found".into()));
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            Failure(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required".into(),
            )
        })?;
    match token_name(&server.config.data_dir, presented) {
        Some(name) => Ok(name),
        None => {
            tracing::warn!(%peer, "admin API: a wrong token was presented");
            Err(Failure(StatusCode::UNAUTHORIZED, "invalid token".into()))
        }
    }
}

/// The name of the token a request was authorized with. Extracting it is
/// the gate every handler goes through ([`authorize`]), before the path or
/// body is looked at, so that a refused request learns nothing else.
struct Admin(String);

impl FromRequestParts<Arc<Server>> for Admin {
    type Rejection = Failure;

    async fn from_request_parts(
        parts: &mut Parts,
        server: &Arc<Server>,
    ) -> Result<Self, Self::Rejection> {
        let ConnectInfo(peer) = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .copied()
            .ok_or_else(|| Failure(StatusCode::NOT_FOUND, "not found".into()))?;
        authorize(server, peer, &parts.headers).map(Admin)
    }
}

async fn stats(State(server): State<Arc<Server>>, _: Admin) -> Reply {
    let mut hosts = serde_json::Map::new();
    for h in &server.config.hosts {
        hosts.insert(
            h.clone(),
            json!({ "accounts": server.stores.accounts.count(Some(h)).await? }),
        );
    }
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": crate::BUILD_REVISION,
        "uptime_seconds": server.started.elapsed().as_secs(),
        "sessions": server.sessions.count(),
        "online_accounts": server.sessions.accounts().len(),
        "s2s_routes": server.s2s.outgoing_count(),
        "hosts": hosts,
        "cluster": server.cluster.as_ref().map(|c| c.stats_json()),
    })))
}

async fn sessions(State(server): State<Arc<Server>>, _: Admin) -> Reply {
    let mut list: Vec<Value> = server
        .sessions
        .all()
        .iter()
        .map(|s| {
            json!({
                "jid": s.jid.to_string(),
                "transport": s.transport().name(),
                "available": s.is_available(),
                "detached": s.flag(SessionFlag::Detached),
                "inactive": s.flag(SessionFlag::Inactive),
                "queued": s.queued(),
            })
        })
        .collect();
    list.sort_by(|a, b| a["jid"].as_str().cmp(&b["jid"].as_str()));
    Ok(Json(json!({ "sessions": list })))
}

async fn kick(
    State(server): State<Arc<Server>>,
    Admin(who): Admin,
    UrlPath(jid): UrlPath<String>,
) -> Reply {
    let jid = Jid::parse(&jid).map_err(|_| Failure(StatusCode::BAD_REQUEST, "not a JID".into()))?;
    let targets = match jid.resource() {
        Some(_) => FullJid::parse(&jid.to_string())
            .ok()
            .and_then(|f| server.sessions.get(&f))
            .into_iter()
            .collect::<Vec<_>>(),
        None => {
            let bare = BareJid::parse(&jid.to_string())
                .map_err(|_| Failure(StatusCode::BAD_REQUEST, "not a JID".into()))?;
            server.sessions.resources(&bare)
        }
    };
    if targets.is_empty() {
        return Err(Failure(StatusCode::NOT_FOUND, "no such session".into()));
    }
    for s in &targets {
        s.close(
            StreamError::new(StreamCondition::PolicyViolation)
                .with_text("disconnected by an administrator"),
        );
    }
    tracing::info!(token = %who, %jid, sessions = targets.len(), "admin API: kicked");
    Ok(Json(json!({ "kicked": targets.len() })))
}

#[derive(Deserialize)]
struct HostQuery {
    host: Option<String>,
}

async fn users(State(server): State<Arc<Server>>, _: Admin, Query(q): Query<HostQuery>) -> Reply {
    let list = server.stores.accounts.list(q.host.as_deref()).await?;
    let list: Vec<String> = list.iter().map(ToString::to_string).collect();
    Ok(Json(json!({ "users": list })))
}

#[derive(Deserialize)]
struct NewPassword {
    password: String,
}

async fn set_password(
    State(server): State<Arc<Server>>,
    Admin(who): Admin,
    UrlPath(jid): UrlPath<String>,
    Json(body): Json<NewPassword>,
) -> Reply {
    let user = BareJid::parse(&jid)
        .ok()
        .filter(|j| j.local().is_some() && server.config.is_local_host(j.domain()))
        .ok_or_else(|| Failure(StatusCode::BAD_REQUEST, "not a local account".into()))?;
    if body.password.chars().count() < server.config.min_password_length {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            format!(
                "the password must have at least {} characters",
                server.config.min_password_length
            ),
        ));
    }
    let iterations = server.config.scram_iterations;
    let password = body.password;
    // PBKDF2 takes milliseconds: off the async workers.
    let secrets = tokio::task::spawn_blocking(move || {
        crate::credentials::make_secrets(&password, iterations)
    })
    .await
    .map_err(|_| Failure(StatusCode::INTERNAL_SERVER_ERROR, "failed".into()))?
    .map_err(|_| Failure(StatusCode::BAD_REQUEST, "unusable password".into()))?;
    server.stores.accounts.set_secrets(&user, &secrets).await?;
    // Whoever logged in with the old password is out.
    let sessions = server.sessions.resources(&user);
    for s in &sessions {
        s.close(StreamError::new(StreamCondition::Reset).with_text("the password was changed"));
    }
    tracing::info!(token = %who, %user, "admin API: password reset");
    Ok(Json(
        json!({ "user": user.to_string(), "sessions_closed": sessions.len() }),
    ))
}

async fn rooms(State(server): State<Arc<Server>>, _: Admin) -> Reply {
    let mut list = Vec::new();
    for domain in &server.config.muc.domains {
        for r in server.stores.muc.rooms(domain).await? {
            list.push(json!({
                "jid": r.room.jid.to_string(),
                "subject": r.room.subject,
                "affiliations": r.affiliations.len(),
            }));
        }
    }
    Ok(Json(json!({ "rooms": list })))
}

#[derive(Deserialize)]
struct Announcement {
    message: String,
    subject: Option<String>,
}

async fn announce(
    State(server): State<Arc<Server>>,
    Admin(who): Admin,
    Json(body): Json<Announcement>,
) -> Reply {
    if body.message.trim().is_empty() {
        return Err(Failure(StatusCode::BAD_REQUEST, "message is empty".into()));
    }
    let mut sent = 0usize;
    for s in server.sessions.all() {
        if !s.is_available() {
            continue;
        }
        let mut msg = Element::new("message", ns::CLIENT)
            .with_attr("from", s.jid.domain())
            .with_attr("to", s.jid.to_string())
            .with_attr("type", "headline")
            .with_attr("id", crate::random_id());
        if let Some(subject) = body.subject.as_deref().filter(|s| !s.is_empty()) {
            msg.push_child(Element::new("subject", ns::CLIENT).with_text(subject));
        }
        msg.push_child(Element::new("body", ns::CLIENT).with_text(body.message.as_str()));
        server.clone().route(msg).await;
        sent += 1;
    }
    tracing::info!(token = %who, sessions = sent, "admin API: announcement sent");
    Ok(Json(json!({ "sent": sent })))
}

#[derive(serde::Deserialize)]
struct Drain {
    /// `host` or `host:port` for `<see-other-host/>`; none: `<system-shutdown/>`.
    to: Option<String>,
}

/// Cluster mode: sends this node's clients elsewhere (`Cluster::drain`).
async fn drain(
    State(server): State<Arc<Server>>,
    Admin(who): Admin,
    Json(body): Json<Drain>,
) -> Reply {
    if server.cluster.is_none() {
        return Err(Failure(
            StatusCode::CONFLICT,
            "not a cluster node: there is nowhere else to send clients".into(),
        ));
    }
    let to = body.to.filter(|t| !t.trim().is_empty());
    // The text goes into a stream error: one host[:port], nothing else.
    if let Some(t) = &to
        && !crate::config::cluster::is_host_port(t)
    {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "to: expected host or host:port".into(),
        ));
    }
    let closed = crate::cluster::Cluster::drain(&server, to.as_deref());
    tracing::info!(token = %who, sessions = closed, "admin API: node drained");
    Ok(Json(json!({ "closed": closed })))
}

async fn blocked_domains(State(server): State<Arc<Server>>, _: Admin) -> Reply {
    let list: Vec<String> = server
        .domain_reputations()
        .into_iter()
        .filter(|d| d.record.blocked || d.configured_block)
        .map(|d| d.record.domain)
        .collect();
    Ok(Json(json!({ "blocked": list })))
}

async fn set_blocked(server: Arc<Server>, who: String, domain: String, blocked: bool) -> Reply {
    let domain = BareJid::domain_only(&domain)
        .map_err(|_| Failure(StatusCode::BAD_REQUEST, "not a domain".into()))?
        .to_string();
    if server.is_local_domain(&domain) {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "that domain is ours".into(),
        ));
    }
    server.set_domain_blocked(&domain, blocked).await?;
    tracing::info!(token = %who, %domain, blocked, "admin API: domain block changed");
    Ok(Json(json!({ "domain": domain, "blocked": blocked })))
}

async fn block_domain(
    State(server): State<Arc<Server>>,
    Admin(who): Admin,
    UrlPath(domain): UrlPath<String>,
) -> Reply {
    set_blocked(server, who, domain, true).await
}

async fn unblock_domain(
    State(server): State<Arc<Server>>,
    Admin(who): Admin,
    UrlPath(domain): UrlPath<String>,
) -> Reply {
    set_blocked(server, who, domain, false).await
}

async fn list_invites(
    State(server): State<Arc<Server>>,
    _: Admin,
    Query(q): Query<HostQuery>,
) -> Reply {
    let list = server.stores.invites.list(q.host.as_deref(), None).await?;
    let list: Vec<Value> = list.iter().map(crate::invites::describe).collect();
    Ok(Json(json!({ "invites": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewInviteRequest {
    /// The host the account is made on (default: the first).
    host: Option<String>,
    /// The only username the account may take.
    username: Option<String>,
    /// A local account the new one becomes a mutual contact of.
    inviter: Option<String>,
    /// Validity in seconds (default `[invites] expiry_secs`).
    valid_secs: Option<u64>,
    /// Redemptions allowed (default 1).
    max_uses: Option<u32>,
}

async fn create_invite(
    State(server): State<Arc<Server>>,
    Admin(who): Admin,
    Json(body): Json<NewInviteRequest>,
) -> Reply {
    let bad = |m: String| Failure(StatusCode::BAD_REQUEST, m);
    let host = match body.host {
        Some(h) => h,
        None => server.config.hosts.first().cloned().unwrap_or_default(),
    };
    let inviter = match body.inviter.as_deref() {
        None => None,
        Some(j) => Some(
            BareJid::parse(j)
                .ok()
                .filter(|j| j.local().is_some() && server.config.is_local_host(j.domain()))
                .ok_or_else(|| bad(format!("{j:?} is not a local account")))?,
        ),
    };
    if let Some(secs) = body.valid_secs
        && !(1..=crate::config::MAX_SECS).contains(&secs)
    {
        return Err(bad(format!(
            "valid_secs must be between 1 and {}",
            crate::config::MAX_SECS
        )));
    }
    let new = crate::invites::NewInvite {
        host,
        kind: if inviter.is_some() {
            waxwing_store::InviteKind::RosterAndRegister
        } else {
            waxwing_store::InviteKind::Register
        },
        creator: inviter,
        username: body.username,
        valid_for: body.valid_secs.map(std::time::Duration::from_secs),
        max_uses: body.max_uses.unwrap_or(1),
    };
    let created = crate::invites::Invites::new(server.clone())
        .create(new)
        .await
        .map_err(|e| match e {
            crate::invites::CreateError::Store(e) => Failure::from(e),
            e => bad(e.to_string()),
        })?;
    tracing::info!(token = %who, id = %created.invite.id, "admin API: invitation created");
    let mut out = crate::invites::describe(&created.invite);
    out["token"] = json!(created.token);
    out["uri"] = json!(created.uri);
    out["landing_url"] = json!(created.landing_url);
    Ok(Json(out))
}

async fn revoke_invite(
    State(server): State<Arc<Server>>,
    Admin(who): Admin,
    UrlPath(id): UrlPath<String>,
) -> Reply {
    crate::invites::Invites::new(server.clone())
        .revoke(&id, None)
        .await?;
    tracing::info!(token = %who, %id, "admin API: invitation revoked");
    Ok(Json(json!({ "revoked": id })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let t = create_token(dir.path(), "ops").unwrap();
        assert!(t.starts_with("wxa_"));
        let file = std::fs::read_to_string(tokens_path(dir.path())).unwrap();
        assert!(!file.contains(&t[4..]), "the token itself is stored");
        assert_eq!(token_name(dir.path(), &t).as_deref(), Some("ops"));
        assert_eq!(token_name(dir.path(), "wxa_guess"), None);
        assert!(create_token(dir.path(), "ops").is_err());
        assert!(create_token(dir.path(), "two words").is_err());
        let other = create_token(dir.path(), "ci").unwrap();
        assert!(revoke_token(dir.path(), "ops").unwrap());
        assert!(!revoke_token(dir.path(), "ops").unwrap());
        assert_eq!(token_name(dir.path(), &t), None);
        assert_eq!(token_name(dir.path(), &other).as_deref(), Some("ci"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(tokens_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
