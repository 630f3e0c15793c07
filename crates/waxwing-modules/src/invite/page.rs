//! The invitation landing page, `/invite/{token}` on the HTTP listener
//! (XEP-0379 §3.3, XEP-0401 §4): who invites, which app to install for the
//! visitor's platform (the one its User-Agent names first) with links, the
//! `xmpp:` link as a button and as a QR code, and — for invitations that
//! may create an account — a form to choose a username and password here,
//! for someone who has no app yet and will use the web client.
//!
//! Plain HTML, no script (the default CSP allows none inline) and one
//! inline `<style>` (which it allows). The token in the path is the
//! capability; the form only POSTs, and a POST whose `Origin` (or, without
//! one, `Sec-Fetch-Site`) is not this site is refused, so another site
//! cannot make a visitor's browser redeem an invitation it saw. Responses
//! are `no-store` and the listener sends `Referrer-Policy: no-referrer`, so
//! the token leaves no copies in caches or in other sites' logs.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{ConnectInfo, Form, Path, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use waxwing_core::http::Secure;
use waxwing_core::http::security::check_origin;
use waxwing_core::invites::{CheckError, Invites, RedeemError, Refusal, uri};
use waxwing_core::router::Server;
use waxwing_store::Invite;

/// The routes of the page.
pub fn routes() -> Router<Arc<Server>> {
    Router::new().route("/invite/{token}", get(show).post(register))
}

/// A token as we make them: alphanumeric, bounded. Anything else is not one.
fn plausible(token: &str) -> bool {
    (16..=128).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric())
}

async fn show(
    State(server): State<Arc<Server>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let invites = Invites::new(server.clone());
    match lookup(&invites, &token).await {
        Ok(invite) => {
            let platform = Platform::of(&headers);
            page(
                StatusCode::OK,
                &title(&invite),
                &invitation_body(&server, &invite, &token, platform, None, ""),
            )
        }
        Err(r) => refused_page(r),
    }
}

async fn lookup(invites: &Invites, token: &str) -> Result<Invite, Refused> {
    if !plausible(token) {
        return Err(Refused::Token(Refusal::Unknown));
    }
    match invites
        .check(token, waxwing_core::invites::unix_now())
        .await
    {
        Ok(i) => Ok(i),
        Err(CheckError::Refused(r)) => Err(Refused::Token(r)),
        Err(CheckError::Store(e)) => {
            tracing::error!(error = %e, "invitation page: storage failed");
            Err(Refused::Failed)
        }
    }
}

enum Refused {
    Token(Refusal),
    Failed,
}

fn refused_page(r: Refused) -> Response {
    let (status, text) = match r {
        Refused::Token(Refusal::Expired | Refusal::UsedUp) => (StatusCode::GONE, r_text(&r)),
        Refused::Token(_) => (StatusCode::NOT_FOUND, r_text(&r)),
        Refused::Failed => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong on the server. Please try again later.".to_string(),
        ),
    };
    page(
        status,
        "Invitation not valid",
        &format!(
            "<h1>This invitation cannot be used</h1>\n<p id=\"refusal\">{}.</p>\n\
             <p>Ask the person who invited you for a new invitation.</p>\n",
            escape(&capitalized(&text))
        ),
    )
}

fn r_text(r: &Refused) -> String {
    match r {
        Refused::Token(t) => t.to_string(),
        Refused::Failed => String::new(),
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The submitted registration form.
#[derive(Deserialize)]
struct SignUp {
    username: String,
    password: String,
    password_again: String,
}

async fn register(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(secure): Extension<Secure>,
    Path(token): Path<String>,
    headers: HeaderMap,
    Form(form): Form<SignUp>,
) -> Response {
    if !same_site(&server, &headers, secure) {
        return (
            StatusCode::FORBIDDEN,
            "cross-site form submissions are refused\n",
        )
            .into_response();
    }
    let invites = Invites::new(server.clone());
    let invite = match lookup(&invites, &token).await {
        Ok(i) if i.kind.registers() => i,
        Ok(_) => return refused_page(Refused::Token(Refusal::WrongKind)),
        Err(r) => return refused_page(r),
    };
    let platform = Platform::of(&headers);
    let again = |status: StatusCode, message: String| {
        page(
            status,
            &title(&invite),
            &invitation_body(
                &server,
                &invite,
                &token,
                platform,
                Some(&message),
                &form.username,
            ),
        )
    };
    if form.password != form.password_again {
        return again(
            StatusCode::BAD_REQUEST,
            "The two passwords are not the same.".into(),
        );
    }
    let preauth = match invites.check_registration(&invite.host, &token).await {
        Ok(p) => p,
        Err(CheckError::Refused(r)) => return refused_page(Refused::Token(r)),
        Err(CheckError::Store(_)) => return refused_page(Refused::Failed),
    };
    if !invites.reserve_registration(peer.ip()) {
        return again(
            StatusCode::TOO_MANY_REQUESTS,
            capitalized(&RedeemError::Throttled.to_string()),
        );
    }
    let result = invites
        .register_account(
            &invite.host,
            &preauth,
            &form.username,
            form.password.clone(),
        )
        .await;
    let user = match result {
        Ok(user) => user,
        Err(e) => {
            invites.release_registration(peer.ip());
            let status = match &e {
                RedeemError::Refused(r) => return refused_page(Refused::Token(*r)),
                RedeemError::Taken => StatusCode::CONFLICT,
                RedeemError::Store(_) | RedeemError::Internal(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                _ => StatusCode::BAD_REQUEST,
            };
            return again(status, format!("{}.", capitalized(&e.to_string())));
        }
    };
    tracing::info!(%user, %peer, "account created on the invitation page");
    let mut body = format!(
        "<h1>Welcome!</h1>\n<p>Your account <strong id=\"account\">{}</strong> has been created.</p>\n",
        escape(&user.to_string())
    );
    if let Some(inviter) = invite.creator.as_ref().filter(|_| invite.kind.subscribes()) {
        body.push_str(&format!(
            "<p>You and {} are now contacts.</p>\n",
            escape(&inviter.to_string())
        ));
    }
    body.push_str(
        "<p>Sign in with any XMPP app using your address and the password you chose.</p>\n",
    );
    if server.config.http.web_client {
        body.push_str(
            "<p><a class=\"button\" id=\"web-client\" href=\"/\">Open the web chat</a></p>\n",
        );
    }
    body.push_str(&apps_section(&server, platform, false));
    page(StatusCode::OK, "Account created", &body)
}

/// CSRF defence for the form. A browser's POST carries `Origin`: it must
/// be this site (or one the operator allows). Under the listener's
/// `Referrer-Policy: no-referrer` browsers send `Origin: null` even for
/// the page's own form, so then `Sec-Fetch-Site` decides, and must say
/// same-origin (every current browser sends it). A request with neither
/// header is not a browser acting for someone else (the token in the path
/// is the capability).
fn same_site(server: &Server, headers: &HeaderMap, secure: Secure) -> bool {
    let origin = headers.get(header::ORIGIN);
    if origin.is_some_and(|o| o.as_bytes() != b"null") {
        return check_origin(&server.config, headers, secure).is_ok();
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("same-origin" | "none") => true,
        Some(_) => false,
        None => origin.is_none(),
    }
}

fn title(invite: &Invite) -> String {
    match (&invite.creator, invite.kind.subscribes()) {
        (Some(c), true) => format!("{c} invites you to chat"),
        _ => format!("Invitation to {}", invite.host),
    }
}

/// The page of a valid invitation: heading, apps, the link and its QR
/// code, and the sign-up form when the invitation creates accounts.
fn invitation_body(
    server: &Server,
    invite: &Invite,
    token: &str,
    platform: Option<Platform>,
    error: Option<&str>,
    username: &str,
) -> String {
    let link = uri(invite, token);
    let expires = waxwing_core::time::xep0082(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(invite.expires_at.max(0) as u64),
    );
    let mut out = String::new();
    match (&invite.creator, invite.kind.subscribes()) {
        (Some(c), true) => out.push_str(&format!(
            "<h1>{} invites you to chat</h1>\n<p>They use XMPP, an open chat network: \
             like e-mail, anyone can talk to anyone, whichever app and server each uses.</p>\n",
            escape(&c.to_string())
        )),
        _ => out.push_str(&format!(
            "<h1>You are invited to join {}</h1>\n<p>It is an XMPP chat server: with an \
             account here you can talk to anyone on XMPP, whichever app and server they use.</p>\n",
            escape(&invite.host)
        )),
    }
    out.push_str(&format!(
        "<p class=\"small\">This invitation is for you only and can be used until \
         <time id=\"expires\">{}</time> (UTC).</p>\n",
        escape(&expires[..16.min(expires.len())].replace('T', " "))
    ));
    out.push_str(&apps_section(server, platform, true));
    out.push_str(&format!(
        "<section id=\"open\">\n<h2>Open the invitation in the app</h2>\n\
         <p><a class=\"button\" id=\"xmpp-link\" href=\"{link}\">Open in my XMPP app</a></p>\n\
         <p>Or scan this code with the app:</p>\n<figure id=\"qr\">{qr}</figure>\n\
         <p class=\"small\">If the button does nothing, install an app first, then come back \
         to this page. The link is <code>{link}</code></p>\n</section>\n",
        link = escape(&link),
        qr = qr_svg(&link),
    ));
    if invite.kind.registers() {
        out.push_str(&signup_form(invite, token, error, username, server));
    }
    out
}

fn signup_form(
    invite: &Invite,
    token: &str,
    error: Option<&str>,
    username: &str,
    server: &Server,
) -> String {
    let fixed = invite.username.as_deref();
    let user_field = match fixed {
        Some(u) => format!(
            "<input id=\"username\" name=\"username\" value=\"{}\" readonly>",
            escape(u)
        ),
        None => format!(
            "<input id=\"username\" name=\"username\" value=\"{}\" required \
             autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\">",
            escape(username)
        ),
    };
    let min = server.config.min_password_length.max(1);
    let mut out =
        String::from("<section id=\"register\">\n<h2>No app yet? Create your account here</h2>\n");
    if let Some(e) = error {
        out.push_str(&format!(
            "<p class=\"error\" id=\"error\" role=\"alert\">{}</p>\n",
            escape(e)
        ));
    }
    out.push_str(&format!(
        "<form method=\"post\" action=\"/invite/{token}\">\n\
         <label for=\"username\">Username</label>\n\
         <div class=\"jid\">{user_field}<span>@{host}</span></div>\n\
         <label for=\"password\">Password (at least {min} characters)</label>\n\
         <input id=\"password\" name=\"password\" type=\"password\" minlength=\"{min}\" \
         required autocomplete=\"new-password\">\n\
         <label for=\"password_again\">Password again</label>\n\
         <input id=\"password_again\" name=\"password_again\" type=\"password\" \
         minlength=\"{min}\" required autocomplete=\"new-password\">\n\
         <button type=\"submit\" id=\"create\">Create my account</button>\n</form>\n\
         <p class=\"small\">The server does not keep your password, only a salted \
         hash; nobody, the person who invited you included, can read it.</p>\n</section>\n",
        token = escape(token),
        host = escape(&invite.host),
    ));
    out
}

/// The platforms we recommend apps for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Platform {
    Android,
    Ios,
    Windows,
    MacOs,
    Linux,
}

impl Platform {
    const ALL: [Platform; 5] = [
        Platform::Android,
        Platform::Ios,
        Platform::Windows,
        Platform::MacOs,
        Platform::Linux,
    ];

    /// The visitor's platform, as its `User-Agent` names it.
    fn of(headers: &HeaderMap) -> Option<Platform> {
        let ua = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if ua.contains("Android") {
            Some(Platform::Android)
        } else if ua.contains("iPhone") || ua.contains("iPad") || ua.contains("iPod") {
            Some(Platform::Ios)
        } else if ua.contains("Windows") {
            Some(Platform::Windows)
        } else if ua.contains("Macintosh") || ua.contains("Mac OS X") {
            Some(Platform::MacOs)
        } else if ua.contains("Linux") || ua.contains("X11") {
            Some(Platform::Linux)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Platform::Android => "Android",
            Platform::Ios => "iPhone and iPad",
            Platform::Windows => "Windows",
            Platform::MacOs => "macOS",
            Platform::Linux => "Linux",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Platform::Android => "android",
            Platform::Ios => "ios",
            Platform::Windows => "windows",
            Platform::MacOs => "macos",
            Platform::Linux => "linux",
        }
    }

    /// (app, where to get it, how) — apps that understand invitations
    /// (XEP-0379/0401 links, and XEP-0445 for signing up in the app).
    fn apps(self) -> &'static [(&'static str, &'static str, &'static str)] {
        match self {
            Platform::Android => &[
                (
                    "Conversations",
                    "https://f-droid.org/packages/eu.siacs.conversations/",
                    "Install it from F-Droid (free) or Google Play, then open the invitation.",
                ),
                (
                    "Monocles Chat",
                    "https://f-droid.org/packages/de.monocles.chat/",
                    "Install it from F-Droid, then open the invitation.",
                ),
            ],
            Platform::Ios => &[
                (
                    "Monal",
                    "https://monal-im.org/",
                    "Install it from the App Store, then open the invitation.",
                ),
                (
                    "Siskin IM",
                    "https://siskin.im/",
                    "Install it from the App Store, then open the invitation.",
                ),
            ],
            Platform::Windows => &[(
                "Gajim",
                "https://gajim.org/download/",
                "Download the installer, run it, then open the invitation.",
            )],
            Platform::MacOs => &[
                (
                    "Monal",
                    "https://monal-im.org/",
                    "Install it from the Mac App Store, then open the invitation.",
                ),
                (
                    "Beagle IM",
                    "https://beagle.im/",
                    "Install it from the Mac App Store, then open the invitation.",
                ),
            ],
            Platform::Linux => &[
                (
                    "Gajim",
                    "https://gajim.org/download/",
                    "Install the package \"gajim\" of your distribution or the Flatpak.",
                ),
                (
                    "Dino",
                    "https://dino.im/",
                    "Install the package \"dino-im\" of your distribution or the Flatpak.",
                ),
            ],
        }
    }
}

/// The app recommendations: the visitor's platform first.
fn apps_section(server: &Server, platform: Option<Platform>, first_step: bool) -> String {
    let mut order: Vec<Platform> = platform.into_iter().collect();
    order.extend(Platform::ALL.into_iter().filter(|p| Some(*p) != platform));
    let mut out = format!(
        "<section id=\"apps\">\n<h2>{}</h2>\n",
        if first_step {
            "Get an XMPP app"
        } else {
            "XMPP apps"
        }
    );
    for p in order {
        let mine = Some(p) == platform;
        out.push_str(&format!(
            "<div class=\"platform{}\" id=\"platform-{}\">\n<h3>{}{}</h3>\n<ul>\n",
            if mine { " mine" } else { "" },
            p.id(),
            p.name(),
            if mine { " (your device)" } else { "" }
        ));
        for (app, url, how) in p.apps() {
            out.push_str(&format!(
                "<li><a href=\"{}\" rel=\"noopener noreferrer\">{}</a>: {}</li>\n",
                escape(url),
                escape(app),
                escape(how)
            ));
        }
        out.push_str("</ul>\n</div>\n");
    }
    if server.config.http.web_client {
        out.push_str(
            "<p>In a browser: <a href=\"/\" id=\"web-client-link\">this server's web chat</a> \
             (sign in with an account of this server).</p>\n",
        );
    }
    out.push_str(
        "<p class=\"small\">More apps: \
         <a href=\"https://xmpp.org/software/?platform=all-platforms\" \
         rel=\"noopener noreferrer\">xmpp.org/software</a>.</p>\n</section>\n",
    );
    out
}

/// The `xmpp:` link as an inline SVG QR code (no XML declaration, so it
/// can sit in HTML).
fn qr_svg(link: &str) -> String {
    match qrcode::QrCode::new(link.as_bytes()) {
        Ok(code) => {
            let svg = code
                .render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(220, 220)
                .quiet_zone(true)
                .build();
            match svg.find("<svg") {
                Some(i) => svg[i..].to_string(),
                None => svg,
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "QR code of an invitation failed");
            String::new()
        }
    }
}

/// A whole page.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n<title>{}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<main>\n{body}</main>\n</body>\n</html>\n",
        escape(title)
    );
    let mut r = (status, Html(html)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2026}\
main{max-width:40rem;margin:0 auto;padding:1.5rem}h1{font-size:1.6rem}\
section{background:#fff;border-radius:.6rem;padding:1rem 1.25rem;margin:1rem 0}\
.button,button{display:inline-block;background:#2f6fdf;color:#fff;border:0;border-radius:.4rem;\
padding:.7rem 1.2rem;font-size:1rem;text-decoration:none;cursor:pointer}\
.platform.mine{border-left:.3rem solid #2f6fdf;padding-left:.7rem}\
label{display:block;margin-top:.8rem}input{font-size:1rem;padding:.4rem;width:100%;box-sizing:border-box}\
.jid{display:flex;align-items:center;gap:.3rem}.jid input{flex:1}\
form button{margin-top:1rem}.error{color:#a40000;font-weight:bold}.small{font-size:.85rem;color:#555}\
figure{margin:0}figure svg{width:220px;height:220px}code{word-break:break-all}";

/// Text and attribute values in HTML.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn tokens_must_look_like_ours() {
        assert!(plausible(&"a1".repeat(20)));
        assert!(!plausible("short"));
        assert!(!plausible(&format!("{}<", "a".repeat(20))));
        assert!(!plausible(&"a".repeat(200)));
    }

    #[test]
    fn platform_from_user_agent() {
        let of = |ua: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::USER_AGENT, HeaderValue::from_str(ua).unwrap());
            Platform::of(&h)
        };
        assert_eq!(
            of("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36"),
            Some(Platform::Android)
        );
        assert_eq!(
            of("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"),
            Some(Platform::Ios)
        );
        assert_eq!(
            of("Mozilla/5.0 (Windows NT 10.0; Win64; x64)"),
            Some(Platform::Windows)
        );
        assert_eq!(of("Mozilla/5.0 (X11; Linux x86_64)"), Some(Platform::Linux));
        assert_eq!(of("curl/8.0"), None);
    }

    #[test]
    fn qr_code_is_inline_svg() {
        let svg = qr_svg("xmpp:romeo@example.org?roster;preauth=abc;ibr=y");
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        assert!(!svg.contains("<?xml"));
    }
}
