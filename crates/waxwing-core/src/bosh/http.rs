//! The HTTP side of BOSH: `POST /http-bind` and its CORS preflight.
//!
//! A handler parses the `<body/>`, finds (or creates) the session, hands
//! the request to it and waits for the answer the state machine gives it,
//! which may be at once (payloads were waiting), after `wait` (empty), or
//! when the client task writes something. Nothing here holds a lock across
//! an `.await`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use axum::{Extension, Router};
use waxwing_proto::bosh::{
    BindingCondition, Request, Response, Session, parse_request, unknown_session, unreadable,
};
use waxwing_proto::stanza::{StreamCondition, StreamError};
use waxwing_proto::xml::Limits;

use super::{PATH, Shared, timer_task};
use crate::http::Secure;
use crate::http::security::check_origin;
use crate::router::Server;

/// Bytes a body may have beyond the session's element size limit: the
/// `<body/>` wrapper's own attributes.
const WRAPPER_SLACK: usize = 1024;

/// Requests of one session being handled at once, beyond which a request
/// is refused (a client keeps at most `requests` = 2 open, plus one to
/// pause or terminate, plus a resend).
const MAX_IN_FLIGHT: usize = 4;

/// The routes, for the shared HTTP listener's "unlimited" set: requests
/// are held up to `wait`, longer than the common request timeout, and the
/// body limit is BOSH's own.
pub(crate) fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route(PATH, post(on_post).options(preflight))
        .layer(DefaultBodyLimit::disable())
}

/// The largest body: one element of the largest size plus the wrapper.
fn max_body_bytes(server: &Server) -> usize {
    server.live().max_stanza_bytes + WRAPPER_SLACK
}

/// Limits for a body before its session is known: the largest any
/// session may have. The session's own (smaller before authentication)
/// are applied once it is found.
fn parse_limits(server: &Server) -> Limits {
    let c = server.live();
    Limits {
        max_stanza_bytes: c.max_stanza_bytes + WRAPPER_SLACK,
        max_depth: c.max_depth,
        max_attrs: c.max_attributes,
    }
}

async fn preflight(
    State(server): State<Arc<Server>>,
    Extension(secure): Extension<Secure>,
    headers: HeaderMap,
) -> HttpResponse {
    if let Err(refused) = check_origin(&server.config, &headers, secure) {
        return refused.into_response();
    }
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    cors(h, headers.get(header::ORIGIN));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

/// Lets the page of an origin that passed `check_origin` read the answer.
/// BOSH carries no cookies (the session id is in the body), so no
/// credentials are allowed.
fn cors(h: &mut HeaderMap, origin: Option<&HeaderValue>) {
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

fn reply(r: Response, origin: Option<&HeaderValue>) -> HttpResponse {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    let mut resp = (status, r.body.to_string()).into_response();
    let h = resp.headers_mut();
    // XEP-0124 §4: "text/xml; charset=utf-8" whatever the request said.
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    cors(h, origin);
    resp
}

async fn on_post(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(secure): Extension<Secure>,
    headers: HeaderMap,
    body: Body,
) -> HttpResponse {
    if let Err(refused) = check_origin(&server.config, &headers, secure) {
        return refused.into_response();
    }
    // Read under our own limit: the route is outside the common one.
    let limit = max_body_bytes(&server);
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            let r = Response::terminate(BindingCondition::PolicyViolation);
            let mut r = reply(r, headers.get(header::ORIGIN));
            *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return r;
        }
    };
    // Traffic between loopback addresses never leaves the host: a local
    // reverse proxy that terminates TLS, or a client on this machine.
    let secure = secure.0 || (server.config.bosh.loopback_is_secure && peer.ip().is_loopback());
    // Only the Origin is needed from here on: a held request keeps no more
    // of its headers than that.
    let origin = headers.get(header::ORIGIN).cloned();
    drop(headers);
    reply(
        handle_body(&server, peer, secure, body).await,
        origin.as_ref(),
    )
}

/// Answers one request body.
pub(crate) async fn handle_body(
    server: &Arc<Server>,
    peer: SocketAddr,
    secure: bool,
    body: axum::body::Bytes,
) -> Response {
    let size = body.len();
    let parsed = parse_request(&body, parse_limits(server));
    // Parsed into elements: a held request keeps none of its bytes.
    drop(body);
    let req = match parsed {
        Ok(r) => r,
        // Whoever sent it may not own the session it names: nothing is
        // touched.
        Err(e) => return unreadable(&e),
    };
    match req.sid.as_deref() {
        None => create(server, peer, secure, req).await,
        Some(sid) => match server.bosh.get(sid) {
            Some(shared) => continue_session(&shared, req, size).await,
            None => unknown_session(),
        },
    }
}

async fn create(server: &Arc<Server>, peer: SocketAddr, secure: bool, req: Request) -> Response {
    let bosh = &server.bosh;
    let Some(to) = req.to.as_deref() else {
        return Response::terminate(BindingCondition::ImproperAddressing);
    };
    let host = waxwing_proto::jid::BareJid::domain_only(to)
        .ok()
        .map(|j| j.domain().to_string());
    if !host.is_some_and(|h| server.config.is_local_host(&h)) {
        return Response::terminate(BindingCondition::HostUnknown);
    }
    let sid: Arc<str> = new_sid().into();
    let token = 0;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let session = Session::new(sid.to_string(), &bosh.policy, req, token, Instant::now());
    let limits = crate::stream::c2s::initial_limits(&server.live());
    let shared = Arc::new(Shared::new(
        sid.clone(),
        session,
        (token, tx),
        limits,
        secure,
        peer,
    ));
    {
        let mut table = bosh.table();
        if table.len() >= bosh.max_sessions {
            // Ended sessions leave the table from their timer task, soon;
            // at the cap, make sure none of them is in the way.
            table.retain(|_, s| !s.lock().session.is_closed());
        }
        if table.len() >= bosh.max_sessions {
            drop(table);
            tracing::warn!(%peer, max = bosh.max_sessions, "BOSH session refused: too many sessions");
            return Response::terminate(BindingCondition::PolicyViolation);
        }
        table.insert(sid.clone(), shared.clone());
    }
    tracing::debug!(%peer, %sid, "BOSH session created");
    {
        let mut inner = shared.lock();
        shared.dispatch(&mut inner);
    }
    server.background.spawn(crate::stream::c2s::serve_bosh(
        server.clone(),
        shared.clone(),
    ));
    // Not tracked for shutdown: it ends with the session, at the latest
    // `inactivity` after the client task said goodbye.
    tokio::spawn(timer_task(server.clone(), shared.clone()));
    let wait = shared.lock().session.wait();
    await_answer(rx, wait).await
}

async fn continue_session(shared: &Arc<Shared>, mut req: Request, size: usize) -> Response {
    let Some(_in_flight) = InFlight::enter(shared) else {
        return Response::terminate(BindingCondition::PolicyViolation);
    };
    let limit = shared.limits().max_stanza_bytes;
    if size > limit.saturating_add(WRAPPER_SLACK) && !req.payloads.is_empty() {
        // The same rule as an oversized stanza on TCP (smaller before
        // authentication): the stream ends with policy-violation, which
        // this request carries back.
        req.payloads.clear();
        shared.fail_input(
            StreamError::new(StreamCondition::PolicyViolation)
                .with_text(format!("request body larger than {limit} bytes")),
        );
    }
    let wait = shared.lock().session.wait();
    if !shared.wait_for_room(wait.max(Duration::from_secs(1))).await {
        // XEP-0124 §17.3: the client repeats the request.
        return Response::recoverable();
    }
    let rx = shared.handle(shared.next_token(), req);
    await_answer(rx, wait).await
}

/// Waits for the state machine's answer. It always gives one within
/// `wait`; the guard only protects the connection against a bug.
async fn await_answer(rx: tokio::sync::oneshot::Receiver<Response>, wait: Duration) -> Response {
    match tokio::time::timeout(wait + Duration::from_secs(10), rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => unknown_session(),
        Err(_) => {
            tracing::warn!("BOSH request not answered in time");
            Response::recoverable()
        }
    }
}

/// Counts a session's requests being handled while it lives.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Option<Self> {
        let n = shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(shared);
        (n < MAX_IN_FLIGHT).then_some(guard)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// 128 random bits: XEP-0124 §14.1 wants the sid unpredictable, and it is
/// the only credential a request carries.
fn new_sid() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
