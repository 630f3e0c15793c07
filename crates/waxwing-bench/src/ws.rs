//! XMPP over WebSocket (RFC 7395) under the byte-stream client: each write
//! (one element, as the client writes them) becomes one text message, the
//! stream header and footer become `<open/>`/`<close/>`, and the server's
//! `<open/>`/`<close/>` are turned back into a header and footer for the
//! [`Reader`](crate::client::Reader). Enough for the idle and login
//! scenarios; the server's pings are answered by tungstenite.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use anyhow::Context as _;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

pub struct WsIo {
    ws: WebSocketStream<TcpStream>,
    domain: String,
    inbox: Vec<u8>,
    pos: usize,
}

impl WsIo {
    /// Connects to `url` (`ws://host:port/path`) with the `xmpp` subprotocol.
    pub async fn connect(addr: &str, url: &str, domain: &str) -> anyhow::Result<WsIo> {
        let tcp = TcpStream::connect(addr).await.context("connect")?;
        tcp.set_nodelay(true)?;
        let mut req = url.into_client_request()?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "xmpp".parse()?);
        let (ws, _) = tokio_tungstenite::client_async(req, tcp)
            .await
            .context("WebSocket handshake")?;
        Ok(WsIo {
            ws,
            domain: domain.to_string(),
            inbox: Vec::new(),
            pos: 0,
        })
    }

    fn outgoing(&self, buf: &[u8]) -> String {
        let text = String::from_utf8_lossy(buf);
        if text.contains("<stream:stream") {
            format!(
                "<open xmlns='{FRAMING}' to='{}' version='1.0' xml:lang='en'/>",
                self.domain
            )
        } else if text.contains("</stream:stream>") {
            format!("<close xmlns='{FRAMING}'/>")
        } else {
            text.into_owned()
        }
    }
}

fn incoming(text: &str) -> String {
    if text.starts_with("<open") {
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>".into()
    } else if text.starts_with("<close") {
        "</stream:stream>".into()
    } else {
        text.to_string()
    }
}

impl AsyncRead for WsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.inbox.len() {
                let n = buf.remaining().min(this.inbox.len() - this.pos);
                buf.put_slice(&this.inbox[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Text(t))) => {
                    this.inbox = incoming(t.as_str()).into_bytes();
                    this.pos = 0;
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl AsyncWrite for WsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io::Error::other)?;
        let text = this.outgoing(buf);
        Pin::new(&mut this.ws)
            .start_send(Message::text(text))
            .map_err(io::Error::other)?;
        // Each element goes out at once, like a TCP write.
        let _ = Pin::new(&mut this.ws).poll_flush(cx);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}
