//! The bundled web client: Converse.js (MPL-2.0), pinned and fetched once
//! into `data_dir` (`fetch.rs`), served at `/` by the HTTP listener and
//! pre-configured for this server: its domain, and the WebSocket/BOSH
//! endpoints registered on the same origin. The page loads no inline script
//! (the policy in `waxwing_core::http::security` forbids it): the
//! configuration is the module `/converse-config.js`, generated per request.

pub mod fetch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use http::{StatusCode, header};
use waxwing_core::hooks::{Cx, Event, EventHandler, Module, RegisterError, Registrar};
use waxwing_core::http::AltConnection;
use waxwing_core::{Config, Server};

/// Waits between failed fetches: doubling from the first, up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(3600);

/// Where the fetch stands.
#[derive(Debug, Clone)]
enum Status {
    Fetching,
    Ready,
    Failed(String),
}

pub struct WebClient {
    root: PathBuf,
    domain: String,
    status: Arc<Mutex<Status>>,
}

impl WebClient {
    pub fn new(config: &Config) -> Self {
        let root = config.data_dir.join("webclient");
        let status = if fetch::installed(&root) {
            Status::Ready
        } else {
            Status::Fetching
        };
        WebClient {
            root,
            domain: config.hosts[0].clone(),
            status: Arc::new(Mutex::new(status)),
        }
    }

    fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Module for WebClient {
    fn name(&self) -> &'static str {
        "web_client"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        use tower_http::services::ServeDir;
        let files = ServeDir::new(fetch::install_dir(&self.root))
            .precompressed_gzip()
            .append_index_html_on_directories(false);
        let me = self.clone();
        let config_js = move |State(server): State<Arc<Server>>| {
            let me = me.clone();
            async move { me.config_js(&server) }
        };
        let me = self.clone();
        reg.http_routes(
            Router::new()
                .route("/", get(move || async move { me.index() }))
                .route("/converse-config.js", get(config_js))
                .nest_service("/converse", files),
        );
        reg.on_events(self);
        Ok(())
    }
}

#[async_trait]
impl EventHandler for WebClient {
    async fn on_event(&self, cx: &Cx, event: &Event) {
        if !matches!(event, Event::Started) || matches!(self.status(), Status::Ready) {
            return;
        }
        let root = self.root.clone();
        let status = self.status.clone();
        let stop = cx.shutdown_token();
        cx.spawn_background(async move {
            let mut wait = RETRY_FIRST;
            loop {
                tracing::info!(version = fetch::VERSION, "fetching the web client (Converse.js)");
                let outcome = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = fetch::ensure(&root) => r,
                };
                let next = match outcome {
                    Ok(()) => {
                        tracing::info!(dir = %fetch::install_dir(&root).display(), "web client ready");
                        Status::Ready
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?wait, "cannot fetch the web client");
                        Status::Failed(e.to_string())
                    }
                };
                let ready = matches!(next, Status::Ready);
                *status.lock().unwrap_or_else(|p| p.into_inner()) = next;
                if ready {
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
        });
    }
}

impl WebClient {
    fn index(&self) -> Response {
        match self.status() {
            Status::Ready => Html(INDEX).into_response(),
            other => {
                let why = match other {
                    Status::Failed(e) => format!("The last attempt failed: {}", escape(&e)),
                    _ => "It is being downloaded now.".to_string(),
                };
                let page = format!(
                    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
                     <meta http-equiv=\"refresh\" content=\"3\"><title>Waxwing</title></head>\
                     <body><h1>The web client is not ready yet</h1><p>Waxwing fetches \
                     Converse.js {} once, on first start. {why} This page reloads by itself.</p>\
                     </body></html>",
                    fetch::VERSION
                );
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "3")],
                    Html(page),
                )
                    .into_response()
            }
        }
    }

    /// `converse.initialize` with this server's domain and endpoints. The
    /// endpoints are paths on the page's own origin, so the page works under
    /// whatever name and scheme it was loaded by (behind a proxy too).
    fn config_js(&self, server: &Server) -> Response {
        let mut endpoints = String::new();
        for (kind, path) in waxwing_core::http::alt_connections(server) {
            let path = js_string(path);
            match kind {
                AltConnection::WebSocket => endpoints.push_str(&format!(
                    "  websocket_url: (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + {path},\n"
                )),
                AltConnection::Bosh => endpoints.push_str(&format!(
                    "  bosh_service_url: location.origin + {path},\n"
                )),
            }
        }
        let body = format!(
            "// Generated by waxwing: Converse.js {version} for {domain}.\n\
             import converse from '/converse/converse.min.js';\n\
             converse.initialize({{\n\
             {endpoints}\
             \x20 assets_path: '/converse/',\n\
             \x20 discover_connection_methods: false,\n\
             \x20 default_domain: {domain_js},\n\
             \x20 domain_placeholder: {domain_js},\n\
             \x20 view_mode: 'fullscreen',\n\
             \x20 allow_registration: false,\n\
             \x20 auto_reconnect: true,\n\
             \x20 loglevel: 'info',\n\
             }});\n",
            version = fetch::VERSION,
            domain = self.domain,
            domain_js = js_string(&self.domain),
        );
        (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response()
    }
}

const INDEX: &str = "<!doctype html>
<html lang=\"en\">
<head>
<meta charset=\"utf-8\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<title>Waxwing web chat</title>
<link rel=\"license\" href=\"/converse/LICENSE\">
<link rel=\"icon\" href=\"/converse/images/favicon.ico\">
<link rel=\"stylesheet\" href=\"/converse/converse.min.css\">
<script type=\"module\" src=\"/converse-config.js\"></script>
</head>
<body class=\"converse-fullscreen\">
<noscript>This chat needs JavaScript. Converse.js is free software under the
<a href=\"/converse/LICENSE\">Mozilla Public License 2.0</a>.</noscript>
</body>
</html>
";

/// A JavaScript string literal (single-quoted, everything risky escaped).
fn js_string(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || "-._~/:@ ".contains(c) {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    out.push('\'');
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn js_strings_cannot_break_out() {
        assert_eq!(js_string("/xmpp-websocket"), "'/xmpp-websocket'");
        assert_eq!(js_string("a'</script>"), "'a\\u{27}\\u{3c}/script\\u{3e}'");
    }
}
