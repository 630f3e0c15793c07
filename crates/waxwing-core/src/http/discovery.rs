//! XEP-0156 connection discovery: `/.well-known/host-meta` (XRD) and
//! `/.well-known/host-meta.json` (JRD) list the WebSocket and BOSH
//! endpoints registered with `Registrar::alt_connection`, as absolute URLs
//! built from the base URL of the requested host (`HttpState::base_url`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, StatusCode, header};

use super::AltConnection;
use crate::router::Server;
use waxwing_proto::xml::Element;

pub(crate) fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route("/.well-known/host-meta", get(host_meta_xrd))
        .route("/.well-known/host-meta.json", get(host_meta_json))
}

/// The (rel, href) pairs for the host the request names.
pub fn links(server: &Server, headers: &HeaderMap) -> Vec<(&'static str, String)> {
    let config = &server.config;
    let requested = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .map(|a| a.host().trim_end_matches('.').to_ascii_lowercase());
    let host = requested
        .filter(|h| config.is_local_host(h))
        .unwrap_or_else(|| config.hosts[0].clone());
    let Some(base) = server.http.base_url(config, &host) else {
        return Vec::new();
    };
    server
        .registry
        .http
        .alt_connections
        .iter()
        .map(|(kind, path)| {
            let href = match kind {
                AltConnection::WebSocket => base
                    .replacen("https://", "wss://", 1)
                    .replacen("http://", "ws://", 1),
                AltConnection::Bosh => base.clone(),
            };
            (kind.rel(), format!("{href}{path}"))
        })
        .collect()
}

/// XEP-0156 §3.2 recommends `Access-Control-Allow-Origin: *`: web clients
/// of any origin look these documents up.
fn respond(content_type: &'static str, body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

async fn host_meta_xrd(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    let mut xrd = Element::new("XRD", "http://docs.oasis-open.org/ns/xri/xrd-1.0");
    for (rel, href) in links(&server, &headers) {
        let mut link = Element::new("Link", "http://docs.oasis-open.org/ns/xri/xrd-1.0");
        link.set_attr("rel", rel);
        link.set_attr("href", href);
        xrd.push_child(link);
    }
    let body = format!("<?xml version='1.0' encoding='utf-8'?>\n{}\n", xrd.to_xml());
    respond("application/xrd+xml; charset=utf-8", body)
}

async fn host_meta_json(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    let links: Vec<String> = links(&server, &headers)
        .into_iter()
        .map(|(rel, href)| {
            format!(
                "{{\"rel\":{},\"href\":{}}}",
                json_string(rel),
                json_string(&href)
            )
        })
        .collect();
    respond(
        "application/json",
        format!("{{\"links\":[{}]}}\n", links.join(",")),
    )
}

/// A JSON string literal (the URLs are ASCII, but escape properly anyway).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
