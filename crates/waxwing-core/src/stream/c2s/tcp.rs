//! The TCP transport: an XML stream over a TCP byte stream, optionally
//! under TLS (STARTTLS or XEP-0368 direct TLS) and XEP-0138 compression.

use std::io;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use waxwing_proto::ns;
use waxwing_proto::sasl::ChannelBindingData;
use waxwing_proto::stanza::StreamError;
use waxwing_proto::xml::{Element, Framer, Limits, StreamEvent};

use super::link::{ClientTransport, Outgoing, StreamOpen};
use crate::shared_stanza::Addressed;
use crate::stream::transport::Transport;
use crate::tls::TlsContext;

/// Bytes read from the socket at a time. It costs an idle session nothing
/// (the array is on the stack for one poll, see [`read_into`]), and a busy
/// client's pipelined stanzas come in a quarter of the reads (and turns of
/// the session loop) that 2 KiB took; it matches what the TLS stream reads
/// per poll, so one read's records decrypt straight into it.
const READ_CHUNK: usize = 8192;

/// A client's XML stream over TCP.
pub(crate) struct TcpLink {
    io: Transport,
    framer: Framer,
    /// Set once TLS is up.
    cb: ChannelBindingData,
    /// The listener's address: `[auth.listeners]` may narrow its mechanisms.
    local: Option<std::net::SocketAddr>,
}

impl TcpLink {
    pub fn new(tcp: TcpStream, limits: Limits) -> Self {
        TcpLink {
            local: tcp.local_addr().ok(),
            io: Transport::Plain(tcp),
            framer: Framer::new(limits, ns::CLIENT),
            cb: ChannelBindingData::default(),
        }
    }

    /// Whether STARTTLS can still be offered (the socket is plain TCP).
    pub fn can_starttls(&self) -> bool {
        !self.io.is_tls()
    }

    /// Performs the TLS handshake (STARTTLS or direct TLS). Bytes the
    /// client pipelined before it are the caller's to refuse.
    pub async fn upgrade(&mut self, tls: &TlsContext) -> io::Result<()> {
        self.cb = self.io.upgrade(tls).await?;
        self.framer.reset();
        Ok(())
    }

    /// The address of the listener this connection came in on.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.local
    }

    /// The client's verified certificate (XEP-0178), if it presented one.
    pub fn peer_certificate(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        self.io.peer_certificate()
    }

    pub fn is_compressed(&self) -> bool {
        self.io.is_compressed()
    }

    /// Starts XEP-0138 zlib (after `<compressed/>` went out uncompressed).
    pub fn compress(&mut self, max_ratio: u64) -> io::Result<()> {
        self.io.compress(max_ratio)?;
        self.framer.reset();
        Ok(())
    }
}

/// Reads what the transport has into the framer; `Ok(0)` is end of stream.
///
/// The scratch array lives on the stack for one poll only, never across a
/// `Pending`, so the hundreds of thousands of idle sessions this server is
/// built for hold no read buffer of their own (a `Pending` poll_read
/// consumed nothing: the TLS stream keeps an unfinished record itself).
/// It starts uninitialised: every transport under it only writes to it.
fn read_into<'a>(
    io: &'a mut Transport,
    framer: &'a mut Framer,
) -> impl Future<Output = io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = tokio::io::ReadBuf::uninit(&mut scratch);
        std::task::ready!(tokio::io::AsyncRead::poll_read(
            std::pin::Pin::new(&mut *io),
            cx,
            &mut buf
        ))?;
        framer.feed(buf.filled());
        std::task::Poll::Ready(Ok(buf.filled().len()))
    })
}

/// Writes an element of the streams namespace with the `stream:` prefix that
/// our header declared. Equivalent XML either way, but some deployed clients
/// match on the literal `<stream:features>`.
fn write_stream_prefixed(el: &Element, out: &mut String) {
    debug_assert_eq!(el.ns, ns::STREAM);
    out.push_str("<stream:");
    out.push_str(&el.name);
    out.push('>');
    for child in el.children() {
        child.write_to(out, ns::CLIENT);
    }
    out.push_str("</stream:");
    out.push_str(&el.name);
    out.push('>');
}

impl ClientTransport for TcpLink {
    fn next_event(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        self.framer.next_event()
    }

    fn receive(&mut self) -> impl Future<Output = io::Result<usize>> + Send {
        read_into(&mut self.io, &mut self.framer)
    }

    fn buffered(&self) -> usize {
        self.framer.buffered()
    }

    fn set_limits(&mut self, limits: Limits) {
        self.framer.set_limits(limits);
    }

    fn restart(&mut self) {
        self.framer.reset();
    }

    fn release_idle_buffers(&mut self) {
        self.framer.release_idle_buffers();
        // Only called on a bound session, which never authenticates again
        // on this stream: the channel-binding data (two heap buffers per
        // session) has served its purpose.
        self.cb = ChannelBindingData::default();
    }

    fn is_secure(&self) -> bool {
        self.io.is_tls()
    }

    fn channel_binding(&self) -> &ChannelBindingData {
        &self.cb
    }

    fn encode(&self, el: &Element, out: &mut Outgoing) {
        if el.ns == ns::STREAM {
            write_stream_prefixed(el, &mut out.text);
        } else {
            el.write_to(&mut out.text, ns::CLIENT);
        }
    }

    fn encode_addressed(&self, stanza: &Addressed, out: &mut Outgoing) {
        stanza.write_client(&mut out.text);
    }

    fn encode_open(&self, open: &StreamOpen<'_>, out: &mut Outgoing) {
        use std::fmt::Write;
        let _ = write!(
            out.text,
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' id='{}' from='{}' version='1.0'",
            ns::CLIENT,
            ns::STREAM,
            open.id,
            open.from,
        );
        if let Some(lang) = open.lang {
            let _ = write!(out.text, " xml:lang='{lang}'");
        }
        out.text.push('>');
    }

    fn encode_close(&self, out: &mut Outgoing) {
        out.text.push_str("</stream:stream>");
    }

    async fn write(&mut self, out: &Outgoing) -> io::Result<()> {
        self.io.write_all(out.text.as_bytes()).await?;
        self.io.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.io.shutdown().await
    }
}
