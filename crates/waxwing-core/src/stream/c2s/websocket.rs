//! The WebSocket transport (RFC 7395): one element per text message,
//! `<open/>`/`<close/>` for the stream header and footer, WebSocket pings
//! for liveness. TLS, if any, is the HTTP listener's: no STARTTLS, no
//! compression, and no channel binding (the listener does not hand the
//! TLS session over), so SCRAM-PLUS and FAST `-ENDP` are not offered.
//!
//! The HTTP side (`upgrade`) checks the subprotocol and the `Origin`, then
//! hands the socket to the same negotiation and session code as TCP
//! through [`WsLink`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::SinkExt;
use sync_wrapper::SyncWrapper;
use tokio::time::Instant;
use tracing::Instrument;
use waxwing_proto::framing::{self, MessageFramer};
use waxwing_proto::ns;
use waxwing_proto::sasl::ChannelBindingData;
use waxwing_proto::stanza::{StreamCondition, StreamError};
use waxwing_proto::xml::{Element, Limits, StreamEvent};

use super::link::{ClientTransport, Link, Outgoing, StreamOpen};
use super::{initial_limits, serve_link};
use crate::config::Config;
use crate::hooks::Registry;
use crate::http::security::check_origin;
use crate::http::{AltConnection, Secure};
use crate::router::Server;

/// The WebSocket subprotocol of RFC 7395 §3.1.
pub const SUBPROTOCOL: &str = "xmpp";
/// Where the endpoint is mounted on the HTTP listener.
pub const PATH: &str = "/xmpp-websocket";

/// Bytes tungstenite reads from the socket at a time. It allocates this
/// up front and keeps it for the connection's life (its default, 128 KiB,
/// would dwarf everything else an idle session holds); a larger message
/// grows the buffer while it is read.
const READ_BUFFER: usize = 4096;

/// A client's XML stream over a WebSocket.
pub(crate) struct WsLink {
    ws: SyncWrapper<WebSocket>,
    framer: MessageFramer,
    secure: bool,
    /// Always empty: see the module comment.
    cb: ChannelBindingData,
    /// A framing error found while receiving, handed out by `next_event`.
    error: Option<StreamError>,
    ping_interval: Duration,
    /// When the peer was last heard from (any frame).
    heard: Instant,
    /// When our unanswered ping went out, if one did.
    pinged: Option<Instant>,
}

impl WsLink {
    pub fn new(ws: WebSocket, limits: Limits, secure: bool, ping_interval: Duration) -> Self {
        WsLink {
            ws: SyncWrapper::new(ws),
            framer: MessageFramer::new(limits, ns::CLIENT),
            secure,
            cb: ChannelBindingData::default(),
            error: None,
            ping_interval,
            heard: Instant::now(),
            pinged: None,
        }
    }

    /// The socket. It is only ever used through `&mut`, but `Conn` must be
    /// `Sync` (its `&self` methods are awaited), and a WebSocket is not.
    fn ws(&mut self) -> &mut WebSocket {
        self.ws.get_mut()
    }
}

/// A WebSocket error: a message over the size limit is the client's
/// `policy-violation`; anything else means the connection is gone.
fn classify(e: axum::Error) -> Result<StreamError, io::Error> {
    let inner = e.into_inner();
    if matches!(
        inner.downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    ) {
        tracing::info!("WebSocket message over the size limit");
        return Ok(StreamError::new(StreamCondition::PolicyViolation)
            .with_text("the message is larger than the server accepts"));
    }
    Err(io::Error::other(inner))
}

impl ClientTransport for WsLink {
    fn next_event(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.framer.next_event()
    }

    /// Cancel-safe: `WebSocket::recv` is (a `Stream::next`), the timer is
    /// recomputed from `heard`/`pinged` on every call, and a ping cut off
    /// mid-send stays in tungstenite's buffer for the next flush.
    async fn receive(&mut self) -> io::Result<usize> {
        loop {
            // Quiet for `ping_interval`: ping; still quiet as long again: gone.
            let wake = self.pinged.unwrap_or(self.heard) + self.ping_interval;
            let msg = tokio::select! {
                m = self.ws().recv() => m,
                _ = tokio::time::sleep_until(wake) => {
                    if self.pinged.is_some() {
                        tracing::debug!("no answer to a WebSocket ping");
                        return Ok(0);
                    }
                    self.pinged = Some(Instant::now());
                    self.ws()
                        .send(Message::Ping(Default::default()))
                        .await
                        .map_err(io::Error::other)?;
                    continue;
                }
            };
            self.heard = Instant::now();
            self.pinged = None;
            let msg = match msg {
                None | Some(Ok(Message::Close(_))) => return Ok(0),
                Some(Err(e)) => match classify(e) {
                    Ok(refusal) => {
                        self.error = Some(refusal);
                        return Ok(1);
                    }
                    Err(e) => return Err(e),
                },
                Some(Ok(m)) => m,
            };
            match msg {
                Message::Text(text) => {
                    self.framer.feed_message(text.as_str());
                    return Ok(text.len().max(1));
                }
                Message::Binary(_) => {
                    // RFC 7395 §3.2: XMPP goes in text messages.
                    self.error = Some(
                        StreamError::new(StreamCondition::BadFormat)
                            .with_text("XMPP goes in text messages"),
                    );
                    return Ok(1);
                }
                // tungstenite answers pings itself; either way the peer is alive.
                Message::Ping(p) | Message::Pong(p) => return Ok(p.len().max(1)),
                Message::Close(_) => return Ok(0),
            }
        }
    }

    /// Messages arrive whole: nothing of an element is held between them.
    /// (tungstenite holds a message's frames until it is complete, at most
    /// `max_stanza_bytes`, the size the upgrade was configured with.)
    fn buffered(&self) -> usize {
        0
    }

    fn set_limits(&mut self, limits: Limits) {
        self.framer.set_limits(limits);
    }

    /// The client's next `<open/>` starts the new stream; nothing to reset.
    fn restart(&mut self) {}

    fn release_idle_buffers(&mut self) {
        self.framer.release_idle_buffers();
    }

    fn is_secure(&self) -> bool {
        self.secure
    }

    fn channel_binding(&self) -> &ChannelBindingData {
        &self.cb
    }

    fn encode(&self, el: &Element, out: &mut Outgoing) {
        if el.ns == ns::STREAM {
            // Each message stands alone: the prefix is declared in it.
            out.text.push_str(&el.to_xml_prefixed("stream", ""));
        } else {
            el.write_to(&mut out.text, "");
        }
        out.end_element();
    }

    fn encode_open(&self, open: &StreamOpen<'_>, out: &mut Outgoing) {
        framing::open(open.id, open.from, open.lang).write_to(&mut out.text, "");
        out.end_element();
    }

    fn encode_close(&self, out: &mut Outgoing) {
        framing::close(None).write_to(&mut out.text, "");
        out.end_element();
    }

    async fn write(&mut self, out: &Outgoing) -> io::Result<()> {
        for el in out.elements() {
            self.ws()
                .feed(Message::Text(el.into()))
                .await
                .map_err(io::Error::other)?;
        }
        self.ws().flush().await.map_err(io::Error::other)
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.ws().close().await.map_err(io::Error::other)
    }
}

/// Mounts the endpoint on the HTTP listener and announces it in XEP-0156
/// discovery, when `[websocket] enabled`.
pub(crate) fn register(registry: &mut Registry, config: &Config) {
    if !config.websocket.enabled {
        return;
    }
    let routes = &mut registry.http;
    // Unlimited: the upgrade ends the HTTP request at once, and the
    // session has its own limits.
    routes.unlimited = std::mem::take(&mut routes.unlimited).route(PATH, get(handle));
    let announced = (AltConnection::WebSocket, PATH.to_string());
    if !routes.alt_connections.contains(&announced) {
        routes.alt_connections.push(announced);
    }
}

/// The HTTP side of a WebSocket connection: checks the `Origin` and the
/// `xmpp` subprotocol, then serves the connection like any other client's.
async fn handle(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(secure): Extension<Secure>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(refused) => return refused.into_response(),
    };
    if let Err(refused) = check_origin(&server.config, &headers, secure) {
        tracing::info!(%peer, origin = %refused.0, "WebSocket upgrade from a foreign origin refused");
        return refused.into_response();
    }
    upgrade(server, ws, peer, secure.0)
}

/// Refuses an upgrade without the `xmpp` subprotocol (RFC 7395 §3.1), sets
/// the limits, and hands the socket to [`serve`]. `secure`: the request
/// came over TLS.
fn upgrade(server: Arc<Server>, ws: WebSocketUpgrade, peer: SocketAddr, secure: bool) -> Response {
    let ws = ws.protocols([SUBPROTOCOL]);
    if ws.selected_protocol() != Some(&HeaderValue::from_static(SUBPROTOCOL)) {
        return (
            StatusCode::BAD_REQUEST,
            "XMPP over WebSocket needs the \"xmpp\" subprotocol (RFC 7395)\n",
        )
            .into_response();
    }
    let config = server.live();
    let secure = secure || (config.websocket.loopback_is_secure && peer.ip().is_loopback());
    // A message may be as large as a stanza, and no larger; before
    // authentication the framer's tighter limit applies on top.
    let ws = ws
        .read_buffer_size(READ_BUFFER)
        .max_message_size(config.max_stanza_bytes)
        .max_frame_size(config.max_stanza_bytes);
    let tasks = server.background.clone();
    ws.on_upgrade(move |socket| {
        let span = tracing::info_span!("c2s-ws", %peer);
        tasks.track_future(serve(server, socket, peer, secure).instrument(span))
    })
}

async fn serve(server: Arc<Server>, socket: WebSocket, peer: SocketAddr, secure: bool) {
    let ping = server.config.websocket.ping_interval;
    let config = server.live();
    let mut link = WsLink::new(socket, initial_limits(&config), secure, ping);
    if let Some(uri) = server.config.websocket.see_other_uri.clone() {
        return redirect(&server, &mut link, &uri).await;
    }
    serve_link(
        server,
        config,
        Box::new(Link::WebSocket(Box::new(link))),
        peer,
        false,
    )
    .await;
}

/// RFC 7395 §3.6.1: the client's `<open/>` is answered with
/// `<close see-other-uri=…/>`, and the connection ends.
async fn redirect(server: &Server, link: &mut WsLink, uri: &str) {
    let wait = tokio::time::timeout(server.live().auth_timeout, async {
        loop {
            match link.next_event() {
                Ok(Some(StreamEvent::Open(_))) => return true,
                Ok(Some(_)) | Err(_) => return false,
                Ok(None) => {}
            }
            if !matches!(link.receive().await, Ok(n) if n > 0) {
                return false;
            }
        }
    });
    if wait.await == Ok(true) {
        let mut out = Outgoing::default();
        framing::close(Some(uri)).write_to(&mut out.text, "");
        out.end_element();
        tracing::info!(%uri, "WebSocket client redirected");
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            link.write(&out).await?;
            link.shutdown().await
        })
        .await;
    }
}
