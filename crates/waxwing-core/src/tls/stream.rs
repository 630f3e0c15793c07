//! The server side of TLS over a client's TCP socket, on rustls' unbuffered
//! connection, with buffers that exist only while they hold something.
//!
//! rustls' buffered `ServerConnection` (under tokio-rustls) keeps a read
//! buffer of at least 4 KiB for the life of the connection once anything
//! arrived; at 10,000 idle sessions that alone is 40 MB. Here the bytes are
//! ours: ciphertext is read into a stack array for the length of one
//! `poll_read`, and only what cannot be finished then is kept on the heap:
//! - `incoming`: the start of a record whose end has not arrived yet;
//! - `plaintext`: decrypted data the reader's buffer had no room for;
//! - `outgoing`: ciphertext the socket has not taken yet. Records are
//!   sealed into a scratch buffer of the thread's (`SEALED`) and offered
//!   to the socket from there, so `outgoing` is allocated only when the
//!   socket does not take a write whole.
//!
//! Each is freed (not just cleared) once empty, so an idle session holds no
//! buffer at all. Each is bounded: `incoming` by one record, `plaintext` by
//! what one record or one read decrypts to, `outgoing` by one
//! [`WRITE_CHUNK`] of application data plus the handshake records rustls
//! asks us to send; `poll_write` accepts nothing new until the socket took
//! the previous chunk, which is how the socket's backpressure reaches the
//! writer.
//!
//! Behaviour matches tokio-rustls' server stream, which the rest of the
//! server was written against: `Ok(0)` from `poll_read` only after the
//! peer's close_notify, `UnexpectedEof` when the TCP stream ends without
//! one, `InvalidData` carrying the rustls error when the peer breaks the
//! protocol (after a last attempt to send the alert rustls queued),
//! close_notify from `poll_shutdown`. Post-handshake messages (TLS 1.3
//! KeyUpdate, NewSessionTicket) are answered from whichever of `poll_read`
//! and `poll_write` processes them.

use std::cell::Cell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};
use rustls::{CommonState, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::capture::{Captured, capturing};

/// Most ciphertext read per `poll_read` when nothing is buffered. It lives
/// on the stack (uninitialised, so it costs nothing to set up) for one
/// poll; reading no more than the reader's buffer holds means what one read
/// decrypts to fits that buffer, so `plaintext` stays unallocated.
const READ_CHUNK: usize = 8192;

/// The largest TLS record on the wire: 5-byte header and 2^14 bytes of
/// plaintext plus the most any suite adds (RFC 5246 §6.2.3: 2048).
const MAX_RECORD: usize = 5 + 16384 + 2048;

/// The least read into `incoming` at a time.
const MIN_READ: usize = 2048;

/// Application data encrypted per `poll_write`: one full record.
const WRITE_CHUNK: usize = 16384;

/// Room per record for header, explicit nonce, content type and tag, and
/// for a handshake record (KeyUpdate) rustls may write in front.
const RECORD_OVERHEAD: usize = 128;

/// A TLS server stream over TCP; see the module documentation.
pub struct ServerTlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// The unfinished tail of what was read: part of a record.
    incoming: Vec<u8>,
    /// Decrypted application data not handed out yet, from `plaintext_taken`.
    plaintext: Vec<u8>,
    plaintext_taken: usize,
    /// Ciphertext the socket has not taken yet.
    outgoing: Vec<u8>,
    /// The peer's close_notify arrived: reads are at their end.
    peer_closed: bool,
    /// The TCP stream ended (or failed); with `peer_closed` unset that is
    /// a truncation.
    tcp_eof: bool,
    /// We queued our close_notify: nothing more may be written.
    closed_for_writing: bool,
    /// The connection broke (a protocol error); every later call fails.
    failed: bool,
}

/// What the handshake established besides the stream.
pub(crate) struct Accepted {
    pub stream: ServerTlsStream,
    pub captured: Captured,
}

fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "peer closed connection without sending TLS close_notify",
    )
}

impl ServerTlsStream {
    /// Performs the server handshake on `tcp`, catching what channel
    /// binding needs (see `capture.rs`). The caller bounds it in time.
    pub(crate) async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<Accepted> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut stream = ServerTlsStream {
            tcp,
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            plaintext_taken: 0,
            outgoing: Vec::new(),
            peer_closed: false,
            tcp_eof: false,
            closed_for_writing: false,
            failed: false,
        };
        let mut captured = Captured::default();
        loop {
            let processed = capturing(&mut captured, || stream.process_incoming(None));
            if let Err(err) = processed {
                // Send the alert rustls queued, as far as the socket takes
                // it without waiting.
                let _ =
                    std::future::poll_fn(|cx| Poll::Ready(stream.poll_flush_outgoing(cx))).await;
                return Err(err);
            }
            std::future::poll_fn(|cx| stream.poll_flush_outgoing(cx)).await?;
            if !stream.conn.is_handshaking() {
                break;
            }
            if stream.peer_closed {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake closed",
                ));
            }
            let read = std::future::poll_fn(|cx| stream.poll_read_more(cx)).await?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                ));
            }
        }
        Ok(Accepted { stream, captured })
    }

    /// The negotiated session (protocol, suite, ALPN, client certificate).
    pub fn connection(&self) -> &CommonState {
        &self.conn
    }

    /// Feeds `incoming` to rustls; see [`process`].
    fn process_incoming(&mut self, out: Option<&mut ReadBuf<'_>>) -> io::Result<()> {
        let mut sink = Sink {
            out,
            plaintext: &mut self.plaintext,
        };
        let result = process(
            &mut self.conn,
            &mut self.incoming,
            &mut sink,
            &mut self.outgoing,
            &mut self.peer_closed,
            |_, _| Ok(()),
        );
        if self.incoming.is_empty() || self.peer_closed {
            // Whatever follows close_notify is never read.
            self.incoming = Vec::new();
        }
        result.map(|_| ()).map_err(|err| self.fail(err))
    }

    /// Marks the connection broken and queues the alert rustls prepared for
    /// the last-gasp write.
    fn fail(&mut self, err: rustls::Error) -> io::Error {
        self.failed = true;
        self.incoming = Vec::new();
        // After an error rustls hands out the queued alert first.
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    if encode_into(&mut encode, &mut self.outgoing).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        tls_error(err)
    }

    /// Writes `outgoing` to the socket; frees it once it is all out.
    fn poll_flush_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outgoing.is_empty() {
            let written = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if written == self.outgoing.len() {
                self.outgoing = Vec::new();
            } else {
                self.outgoing.drain(..written);
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Appends what the socket has to `incoming`: at least a small chunk,
    /// at most the rest of the record `incoming` starts with, so it holds
    /// about one record. (While a handshake message spans records, rustls
    /// keeps the fragments it joined at the front, where no record header
    /// is; the clamp keeps that case bounded and moving.)
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let have = self.incoming.len();
        let rest = match self.incoming.get(3..5) {
            Some(len) => {
                (5 + usize::from(u16::from_be_bytes([len[0], len[1]]))).saturating_sub(have)
            }
            None => 0,
        };
        let want = rest.clamp(MIN_READ, MAX_RECORD);
        self.incoming.resize(have + want, 0);
        let mut buf = ReadBuf::new(&mut self.incoming[have..]);
        let polled = Pin::new(&mut self.tcp).poll_read(cx, &mut buf);
        let read = buf.filled().len();
        self.incoming.truncate(have + read);
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        match polled {
            Poll::Ready(Ok(())) => {
                if read == 0 {
                    self.tcp_eof = true;
                }
                Poll::Ready(Ok(read))
            }
            Poll::Ready(Err(err)) => {
                self.tcp_eof = true;
                Poll::Ready(Err(err))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Hands out decrypted data still waiting; whether there was any.
    fn take_plaintext(&mut self, out: &mut ReadBuf<'_>) -> bool {
        if self.plaintext_taken >= self.plaintext.len() {
            return false;
        }
        let waiting = &self.plaintext[self.plaintext_taken..];
        let n = waiting.len().min(out.remaining());
        out.put_slice(&waiting[..n]);
        self.plaintext_taken += n;
        if self.plaintext_taken == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plaintext_taken = 0;
        }
        true
    }

    /// Reads into a stack array and processes it there; only an unfinished
    /// record is copied to `incoming`. `Ok(false)`: the socket ended.
    fn poll_read_direct(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<bool>> {
        let mut scratch = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let want = out.remaining().clamp(RECORD_OVERHEAD, READ_CHUNK);
        let mut buf = ReadBuf::uninit(&mut scratch[..want]);
        if let Err(err) = ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut buf)) {
            self.tcp_eof = true;
            return Poll::Ready(Err(err));
        }
        let filled = buf.filled_mut();
        let read = filled.len();
        if read == 0 {
            self.tcp_eof = true;
            return Poll::Ready(Ok(false));
        }
        let mut sink = Sink {
            out: Some(out),
            plaintext: &mut self.plaintext,
        };
        let result = process(
            &mut self.conn,
            &mut *filled,
            &mut sink,
            &mut self.outgoing,
            &mut self.peer_closed,
            |_, _| Ok(()),
        );
        match result {
            Ok(consumed) => {
                if !self.peer_closed && consumed < read {
                    self.incoming.extend_from_slice(&filled[consumed..]);
                }
                Poll::Ready(Ok(true))
            }
            Err(err) => Poll::Ready(Err(self.fail(err))),
        }
    }

    /// Hands freshly sealed records to the socket, behind anything already
    /// waiting in `outgoing` (a KeyUpdate rustls answered first); what the
    /// socket does not take now waits there. Accepted either way: the next
    /// write or flush waits for the socket.
    fn send_sealed(&mut self, cx: &mut Context<'_>, sealed: &[u8]) -> Poll<io::Result<()>> {
        if !self.outgoing.is_empty() {
            self.outgoing.extend_from_slice(sealed);
            return match self.poll_flush_outgoing(cx) {
                Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                _ => Poll::Ready(Ok(())),
            };
        }
        match Pin::new(&mut self.tcp).poll_write(cx, sealed) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(written)) => {
                self.outgoing.extend_from_slice(&sealed[written..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                self.outgoing.extend_from_slice(sealed);
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Runs `f` with rustls' permission to encrypt application data, after
    /// handling whatever rustls had to do first (a KeyUpdate to answer,
    /// records still in `incoming`, whose data is kept for the reader).
    fn with_write_traffic(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnMut(
            &mut WriteTraffic<'_, ServerConnectionData>,
            &mut Vec<u8>,
        ) -> Result<(), rustls::Error>,
    ) -> io::Result<()> {
        let mut sink = Sink {
            out: None,
            plaintext: &mut self.plaintext,
        };
        let had_plaintext = !sink.plaintext.is_empty();
        let was_closed = self.peer_closed;
        let result = process(
            &mut self.conn,
            &mut self.incoming,
            &mut sink,
            &mut self.outgoing,
            &mut self.peer_closed,
            f,
        );
        if self.incoming.is_empty() || self.peer_closed {
            self.incoming = Vec::new();
        }
        if (!had_plaintext && !self.plaintext.is_empty()) || (!was_closed && self.peer_closed) {
            // The reader may be waiting on the socket for what just arrived.
            cx.waker().wake_by_ref();
        }
        result.map(|_| ()).map_err(|err| self.fail(err))
    }
}

/// Where decrypted application data goes: the reader's buffer while it has
/// room, then `plaintext` (in order: once something waits there,
/// everything after it does too).
struct Sink<'a, 'b> {
    out: Option<&'a mut ReadBuf<'b>>,
    plaintext: &'a mut Vec<u8>,
}

impl Sink<'_, '_> {
    fn put(&mut self, mut data: &[u8]) {
        if self.plaintext.is_empty()
            && let Some(out) = self.out.as_deref_mut()
        {
            let n = out.remaining().min(data.len());
            out.put_slice(&data[..n]);
            data = &data[n..];
        }
        self.plaintext.extend_from_slice(data);
    }
}

/// Feeds `incoming` to rustls until it needs more bytes from the peer,
/// or, if asked, until it allows encrypting application data (then calls
/// `on_write_traffic` once, which is always once after the handshake):
/// decrypted data goes to `sink`, records rustls wants sent (handshake,
/// alerts, KeyUpdate, tickets) to `outgoing`. Removes what it consumed
/// from a `Vec`, or returns how much of a slice it consumed.
fn process<B: Incoming + ?Sized>(
    conn: &mut UnbufferedServerConnection,
    incoming: &mut B,
    sink: &mut Sink<'_, '_>,
    outgoing: &mut Vec<u8>,
    peer_closed: &mut bool,
    mut on_write_traffic: impl FnMut(
        &mut WriteTraffic<'_, ServerConnectionData>,
        &mut Vec<u8>,
    ) -> Result<(), rustls::Error>,
) -> Result<usize, rustls::Error> {
    let mut consumed = 0;
    loop {
        let UnbufferedStatus { mut discard, state } =
            conn.process_tls_records(&mut incoming.bytes()[consumed..]);
        let done = match state? {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record?;
                    discard += record.discard;
                    sink.put(record.payload);
                }
                false
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(&mut encode, outgoing)?;
                false
            }
            // The records are in `outgoing`, which every caller flushes
            // before it waits for the peer.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                false
            }
            ConnectionState::PeerClosed => {
                *peer_closed = true;
                false
            }
            ConnectionState::Closed => {
                *peer_closed = true;
                true
            }
            ConnectionState::WriteTraffic(mut traffic) => {
                on_write_traffic(&mut traffic, outgoing)?;
                true
            }
            ConnectionState::BlockedHandshake => true,
            // Early data is never enabled (`max_early_data_size` is 0).
            other => {
                return Err(rustls::Error::General(format!(
                    "unexpected TLS connection state {other:?}"
                )));
            }
        };
        consumed += discard;
        if done {
            incoming.consume(consumed);
            return Ok(consumed);
        }
    }
}

/// `process` works on our `Vec` (consumed bytes are removed) and on the
/// stack array of one read (the caller keeps the unconsumed tail).
trait Incoming {
    fn bytes(&mut self) -> &mut [u8];
    fn consume(&mut self, n: usize);
}

impl Incoming for Vec<u8> {
    fn bytes(&mut self) -> &mut [u8] {
        self
    }
    fn consume(&mut self, n: usize) {
        if n == self.len() {
            self.clear();
        } else {
            self.drain(..n);
        }
    }
}

impl Incoming for [u8] {
    fn bytes(&mut self) -> &mut [u8] {
        self
    }
    fn consume(&mut self, _: usize) {}
}

/// Appends a handshake or alert record rustls prepared to `out`.
fn encode_into(
    encode: &mut EncodeTlsData<'_, ServerConnectionData>,
    out: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let required = match encode.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(e)) => e.required_size,
        Err(e) => return Err(rustls::Error::General(e.to_string())),
    };
    let start = out.len();
    out.resize(start + required, 0);
    match encode.encode(&mut out[start..]) {
        Ok(written) => {
            out.truncate(start + written);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(rustls::Error::General(e.to_string()))
        }
    }
}

thread_local! {
    /// Each thread's buffer for the records of one `poll_write`, kept for
    /// the next (at most one [`WRITE_CHUNK`] and its overhead, per thread,
    /// not per connection).
    static SEALED: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Encrypts `data` (at most a record or two) into the front of `sealed`,
/// which only ever grows (so it is zero-filled once per thread, not per
/// write); returns the records' length.
fn seal(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    data: &[u8],
    sealed: &mut Vec<u8>,
) -> Result<usize, rustls::Error> {
    let records = data.len().div_ceil(WRITE_CHUNK).max(1);
    write_records(sealed, 0, data.len() + records * RECORD_OVERHEAD, |buf| {
        traffic.encrypt(data, buf)
    })
}

/// Queues our close_notify.
fn close_notify_into(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    out: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    append_records(out, RECORD_OVERHEAD, |buf| traffic.queue_close_notify(buf))
}

/// Appends what `write` puts into a buffer of `room` bytes to `out`,
/// growing the room to what rustls says it needs if that is more.
fn append_records(
    out: &mut Vec<u8>,
    room: usize,
    write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    let written = write_records(out, start, room, write);
    // Only the records stay; on an error, nothing.
    out.truncate(start + written.as_ref().map_or(0, |n| *n));
    written.map(|_| ())
}

/// Lets `write` put records into `buf` from `start` on, in at least
/// `room` bytes, or in as many as rustls says it needs if that is more;
/// `buf` only grows. Returns the records' length.
fn write_records(
    buf: &mut Vec<u8>,
    start: usize,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<usize, rustls::Error> {
    loop {
        if buf.len() < start + room {
            buf.resize(start + room, 0);
        }
        match write(&mut buf[start..]) {
            Ok(written) => return Ok(written),
            Err(EncryptError::InsufficientSize(e)) if e.required_size > buf.len() - start => {
                room = e.required_size;
            }
            Err(e) => return Err(rustls::Error::General(e.to_string())),
        }
    }
}

impl AsyncRead for ServerTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // Records rustls answered (KeyUpdate) go out whenever the socket
        // takes them; a write error surfaces on the next write.
        let _ = this.poll_flush_outgoing(cx);
        loop {
            if this.take_plaintext(out) {
                return Poll::Ready(Ok(()));
            }
            if this.failed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS connection failed earlier",
                )));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.tcp_eof {
                return Poll::Ready(Err(truncated()));
            }
            let before = out.filled().len();
            if this.incoming.is_empty() {
                if !ready!(this.poll_read_direct(cx, out))? {
                    continue;
                }
            } else {
                if ready!(this.poll_read_more(cx))? == 0 {
                    continue;
                }
                this.process_incoming(Some(out))?;
            }
            let _ = this.poll_flush_outgoing(cx);
            if out.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for ServerTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // One chunk at a time: nothing new until the socket took the last.
        ready!(this.poll_flush_outgoing(cx))?;
        if this.failed || this.closed_for_writing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let chunk = &data[..data.len().min(WRITE_CHUNK)];
        // Sealed in this thread's scratch buffer (taken out for the call, so
        // nothing is borrowed across it), and offered to the socket from
        // there: `outgoing` is allocated only for what the socket does not
        // take at once, not zero-filled and freed on every write.
        let mut sealed = SEALED.take();
        let mut len = None;
        let result = this.with_write_traffic(cx, |traffic, _| {
            len = Some(seal(traffic, chunk, &mut sealed)?);
            Ok(())
        });
        let polled = match (result, len) {
            (Err(err), _) => Poll::Ready(Err(err)),
            // rustls would not encrypt: the connection is closed both ways.
            (Ok(()), None) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            (Ok(()), Some(len)) => this.send_sealed(cx, &sealed[..len]),
        };
        SEALED.set(sealed);
        ready!(polled)?;
        Poll::Ready(Ok(chunk.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_outgoing(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closed_for_writing && !this.failed {
            this.closed_for_writing = true;
            // A connection that broke gets no close_notify, like tokio-rustls.
            let _ = this.with_write_traffic(cx, close_notify_into);
        }
        ready!(this.poll_flush_outgoing(cx))?;
        match ready!(Pin::new(&mut this.tcp).poll_shutdown(cx)) {
            Err(err) if err.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(err)),
            // Not being connected any more is what shutting down wants.
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
