//! The shared HTTP listener: security headers, HSTS on TLS only, XEP-0156
//! discovery of registered endpoints, the body limit, the header-read
//! timeout (slowloris), the connection cap, `Origin` checks, graceful stop.

mod support;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use support::http::HttpConn;
use waxwing_core::Server;
use waxwing_core::hooks::{Module, RegisterError, Registrar, load};
use waxwing_core::http::{Secure, security};
use waxwing_core::listen::ListenerKind;
use waxwing_core::{Config, Running};

/// Registers test routes the way WebSocket/BOSH/metrics do.
struct Probe;

impl Module for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.http_routes(
            Router::new()
                .route(
                    "/echo",
                    post(|body: axum::body::Bytes| async move { body.len().to_string() }),
                )
                .route(
                    "/hosts",
                    get(|State(s): State<Arc<Server>>| async move { s.config.hosts.join(",") }),
                )
                .route(
                    "/session",
                    get(
                        |State(s): State<Arc<Server>>,
                         axum::Extension(secure): axum::Extension<Secure>,
                         headers: http::HeaderMap| async move {
                            use axum::response::IntoResponse;
                            match security::check_origin(&s.config, &headers, secure) {
                                Ok(()) => "welcome".into_response(),
                                Err(refused) => refused.into_response(),
                            }
                        },
                    ),
                ),
        );
        Ok(())
    }
}

struct Web {
    running: Running,
    http: u16,
    https: u16,
    _dir: tempfile::TempDir,
}

async fn start(extra: &str) -> Web {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "data_dir = {:?}\nhosts = [\"localhost\"]\n{extra}\n[listen]\nc2s = []\nc2s_direct_tls = []\n\
         http = [\"127.0.0.1:0\"]\nhttps = [\"127.0.0.1:0\"]\n[storage]\ndatabase = \"sqlite::memory:\"\n",
        dir.path().display().to_string()
    );
    let config = Config::parse(&toml).unwrap();
    let mut modules = waxwing::modules::all(&config);
    modules.push(load(Probe));
    let running = waxwing_core::start(config, modules).await.unwrap();
    let http = support::listener_port(&running, ListenerKind::Http);
    let https = support::listener_port(&running, ListenerKind::Https);
    Web {
        running,
        http,
        https,
        _dir: dir,
    }
}

fn assert_security_headers(r: &support::http::Response) {
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    let csp = r.header("content-security-policy").expect("CSP");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("object-src 'none'"), "{csp}");
}

#[tokio::test]
async fn every_response_carries_security_headers_and_hsts_only_over_tls() {
    let web = start("").await;
    let mut c = HttpConn::plain(web.http).await;
    let r = c.get("/hosts").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "localhost");
    assert_security_headers(&r);
    assert_eq!(r.header("strict-transport-security"), None);
    // Errors too.
    let r = c.get("/no/such/page").await;
    assert_eq!(r.status, 404);
    assert_security_headers(&r);

    let mut t = HttpConn::tls(web.https).await;
    let r = t.get("/hosts").await;
    assert_eq!(r.status, 200);
    assert_security_headers(&r);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=15552000")
    );
    web.running.stop().await;
}

#[tokio::test]
async fn host_meta_lists_registered_endpoints_with_cors() {
    let web = start("").await;
    let mut c = HttpConn::plain(web.http).await;
    let r = c.get("/.well-known/host-meta").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/xrd+xml")
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let ws = format!("ws://localhost:{}/xmpp-websocket", web.http);
    let bosh = format!("http://localhost:{}/http-bind", web.http);
    let xrd = waxwing_proto::xml::parse_stanza(
        r.text()
            .trim_start_matches("<?xml version='1.0' encoding='utf-8'?>")
            .trim(),
        "jabber:client",
    )
    .expect("well-formed XRD");
    assert_eq!(xrd.name, "XRD");
    assert_eq!(xrd.ns, "http://docs.oasis-open.org/ns/xri/xrd-1.0");
    let links: Vec<(String, String)> = xrd
        .children()
        .map(|l| {
            (
                l.attr("rel").unwrap().to_string(),
                l.attr("href").unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        links,
        vec![
            ("urn:xmpp:alt-connections:websocket".to_string(), ws.clone()),
            ("urn:xmpp:alt-connections:xbosh".to_string(), bosh.clone()),
        ]
    );

    let r = c.get("/.well-known/host-meta.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.text().trim(),
        format!(
            "{{\"links\":[{{\"rel\":\"urn:xmpp:alt-connections:websocket\",\"href\":\"{ws}\"}},\
             {{\"rel\":\"urn:xmpp:alt-connections:xbosh\",\"href\":\"{bosh}\"}}]}}"
        )
    );
    web.running.stop().await;
}

#[tokio::test]
async fn host_meta_follows_public_url() {
    let web = start("[http]\npublic_url = \"https://chat.example.org/xmpp/\"\n").await;
    let mut c = HttpConn::plain(web.http).await;
    let r = c.get("/.well-known/host-meta.json").await;
    let text = r.text();
    assert!(
        text.contains("\"wss://chat.example.org/xmpp/xmpp-websocket\""),
        "{text}"
    );
    assert!(
        text.contains("\"https://chat.example.org/xmpp/http-bind\""),
        "{text}"
    );
    // The proxy's origin may open sessions; the CSP lets the page connect to it.
    let r = c
        .request(
            "GET",
            "/session",
            &[("origin", "https://chat.example.org")],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    let csp = r.header("content-security-policy").unwrap();
    assert!(csp.contains("wss://chat.example.org"), "{csp}");
    web.running.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let web = start("[http]\nmax_body_bytes = 2048\n").await;
    let mut c = HttpConn::plain(web.http).await;
    let r = c.request("POST", "/echo", &[], &[b'x'; 2048]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "2048");
    let r = c.request("POST", "/echo", &[], &[b'x'; 2049]).await;
    assert_eq!(r.status, 413);
    assert_security_headers(&r);
    web.running.stop().await;
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let web = start("[http]\nheader_read_timeout_secs = 1\n").await;
    let mut c = HttpConn::plain(web.http).await;
    c.send_raw(b"GET /hosts HTTP/1.1\r\nhost: localhost\r\nx-slow: ")
        .await;
    let started = std::time::Instant::now();
    // The server answers 408 or just closes; either way nothing more is read.
    match c.response().await {
        None => {}
        Some(r) => assert_eq!(r.status, 408),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    web.running.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_closed() {
    let web = start("[http]\nmax_connections = 2\n").await;
    let mut a = HttpConn::plain(web.http).await;
    let mut b = HttpConn::plain(web.http).await;
    // Both accepted (a response proves it) and kept alive.
    assert_eq!(a.get("/hosts").await.status, 200);
    assert_eq!(b.get("/hosts").await.status, 200);
    let mut c = HttpConn::plain(web.http).await;
    c.send_raw(b"GET /hosts HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await;
    assert!(c.closed_by_server().await);
    // Closing one frees its place.
    drop(a);
    let mut d = loop {
        let mut d = HttpConn::plain(web.http).await;
        d.send_raw(b"GET /hosts HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await;
        if let Some(r) = d.response().await {
            assert_eq!(r.status, 200);
            break d;
        }
        // The server may not have seen `a` close yet: its task frees the
        // place once hyper reads EOF.
        tokio::task::yield_now().await;
    };
    assert_eq!(d.get("/hosts").await.status, 200);
    web.running.stop().await;
}

#[tokio::test]
async fn foreign_origins_are_refused() {
    let web = start("[http]\nallowed_origins = [\"https://app.example.net\"]\n").await;
    let mut c = HttpConn::plain(web.http).await;
    let own = "http://localhost".to_string();
    for (origin, status) in [
        (own.as_str(), 200),
        ("https://app.example.net", 200),
        ("https://evil.example", 403),
        ("null", 403),
    ] {
        let r = c
            .request("GET", "/session", &[("origin", origin)], b"")
            .await;
        assert_eq!(r.status, status, "{origin}");
    }
    // Without Origin (a non-browser client): allowed.
    assert_eq!(c.get("/session").await.status, 200);
    web.running.stop().await;
}

#[tokio::test]
async fn stop_closes_idle_keep_alive_connections() {
    let web = start("").await;
    let mut c = HttpConn::plain(web.http).await;
    assert_eq!(c.get("/hosts").await.status, 200);
    tokio::time::timeout(std::time::Duration::from_secs(8), web.running.stop())
        .await
        .expect("stop does not wait for idle connections");
    assert!(c.closed_by_server().await);
}
