//! The client transport abstraction: what negotiation and the session loop
//! need from whatever carries a client's XML stream.
//!
//! Negotiation (SASL, SASL2/Bind2/FAST, registration, bind) and the
//! session (stream management, CSI, the outbound queue) are written once,
//! in `c2s/negotiate.rs` and `c2s/session.rs`, against [`ClientTransport`].
//! Each transport only moves elements: it turns what arrives into
//! [`StreamEvent`]s and serializes what goes out in its own framing.
//!
//! The session loop calls the transport through the [`Link`] enum rather
//! than `dyn`: one predictable `match` per call, no boxed futures, and no
//! allocation per stanza.

use std::cell::Cell;
use std::future::Future;
use std::io;

use waxwing_proto::sasl::{ChannelBindingData, ChannelBindingTypes};
use waxwing_proto::stanza::StreamError;
use waxwing_proto::xml::{Element, Limits, StreamEvent};

use super::bosh::BoshLink;
use super::tcp::TcpLink;
use super::websocket::WsLink;
use crate::shared_stanza::Addressed;

/// What our answering stream header says (RFC 6120 §4.7).
pub(crate) struct StreamOpen<'a> {
    pub id: &'a str,
    /// The virtual host (our side of the stream).
    pub from: &'a str,
    /// `xml:lang`; `None` when the header answers nothing (an error
    /// before the client's header could be read).
    pub lang: Option<&'a str>,
}

/// Output for one write: serialized top-level elements in order.
///
/// Transports that frame one element per message (WebSocket, and BOSH's
/// payload list) record where each element ends; a byte-stream transport
/// ignores the boundaries and writes the text at once, so it pays nothing
/// for them (the boundary list never allocates).
#[derive(Default)]
pub(crate) struct Outgoing {
    pub text: String,
    /// End offsets in `text` of the elements, for message-framed transports.
    pub ends: Vec<usize>,
}

/// Room reserved per stanza in [`Outgoing::for_stanzas`]: a typical
/// message or presence fits, so a batch is written without growing its
/// buffer stanza by stanza (each growth a reallocation and a copy).
const TYPICAL_STANZA_BYTES: usize = 512;
/// At most this much is reserved up front (a join burst of a large room
/// grows past it as needed rather than reserving for every presence).
const MAX_RESERVED_BYTES: usize = 64 * 1024;

thread_local! {
    /// A write buffer of this thread's, kept between writes (at most
    /// [`MAX_RESERVED_BYTES`], per worker thread, not per session): a
    /// batch is serialized into memory that is already mapped and warm
    /// rather than into a fresh allocation each time. See
    /// [`Outgoing::for_stanzas`] and [`Outgoing::recycle`].
    static SPARE: Cell<String> = const { Cell::new(String::new()) };
}

impl Outgoing {
    /// Empty, with room for `n` typical stanzas: this thread's spare
    /// buffer if it has one (the buffer lives for one write only, so
    /// reserving generously costs no memory that stays).
    pub fn for_stanzas(n: usize) -> Self {
        let want = n
            .saturating_mul(TYPICAL_STANZA_BYTES)
            .min(MAX_RESERVED_BYTES);
        let mut text = SPARE.take();
        if text.capacity() < want {
            // Not `reserve`: growing would copy the old capacity's bytes.
            text = String::with_capacity(want);
        }
        Outgoing {
            text,
            ends: Vec::new(),
        }
    }

    /// Gives the text buffer back as this thread's spare (see
    /// [`Outgoing::for_stanzas`]), unless it grew past what is kept or the
    /// thread already has a larger one.
    pub fn recycle(self) {
        let mut text = self.text;
        if text.capacity() > MAX_RESERVED_BYTES {
            return;
        }
        text.clear();
        let spare = SPARE.take();
        SPARE.set(if spare.capacity() >= text.capacity() {
            spare
        } else {
            text
        });
    }

    /// Marks the end of one element (message-framed transports only).
    pub fn end_element(&mut self) {
        self.ends.push(self.text.len());
    }

    /// Appends `other` after what is here.
    pub fn append(&mut self, other: Outgoing) {
        if self.text.is_empty() {
            *self = other;
            return;
        }
        let base = self.text.len();
        self.text.push_str(&other.text);
        self.ends.extend(other.ends.into_iter().map(|e| e + base));
    }

    /// Appends a copy of `other` (cached output) after what is here.
    pub fn extend_from(&mut self, other: &Outgoing) {
        let base = self.text.len();
        self.text.push_str(&other.text);
        self.ends.extend(other.ends.iter().map(|e| e + base));
    }

    /// The elements one by one, for message-framed transports.
    pub fn elements(&self) -> impl Iterator<Item = &str> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let el = &self.text[start..end];
            start = end;
            el
        })
    }
}

/// One client transport: elements in, elements out.
///
/// Negotiation and the session loop drive a transport only through this
/// trait, so SASL, bind, stream management and CSI exist once. A
/// transport implements it as follows.
///
/// **Receiving.** [`receive`](Self::receive) waits for more input from the
/// peer and stores it (in a framer, a queue of parsed elements …); it
/// returns how many bytes arrived (at least 1; the read rate limit charges
/// them) or `Ok(0)` once the peer is gone. It must be cancel-safe: the
/// session loop races it against the outbound queue, timers and shutdown
/// and drops it when another branch wins, so nothing may be lost when it
/// is dropped at an `.await`. [`next_event`](Self::next_event) then hands
/// out what was received, without I/O: `StreamEvent::Open` for a stream
/// (re)start (`<stream:stream>`, RFC 7395 `<open/>`, a BOSH session
/// creation or `xmpp:restart`), `StreamEvent::Stanza` for each top-level
/// element, `StreamEvent::Close` for the client's end of stream
/// (`</stream:stream>`, `<close/>`, a BOSH `terminate`). A transport that
/// receives elements in batches (BOSH: every `<body/>` of an HTTP request)
/// queues the whole batch in `receive` and drains it from `next_event`.
/// Input that breaks the transport's framing is an `Err(StreamError)` from
/// `next_event`, and the stream ends with that error.
///
/// **Limits.** The same limits hold on every transport: the element size
/// and nesting limits of [`set_limits`](Self::set_limits) (smaller before
/// authentication), the server-wide budget for unfinished elements
/// through [`buffered`](Self::buffered) (bytes held of an element not yet
/// complete), and the read rate limit through `receive`'s byte count.
/// Idle and authentication timeouts are the caller's.
///
/// **Sending.** The caller serializes with [`encode`](Self::encode),
/// [`encode_open`](Self::encode_open) and [`encode_close`](Self::encode_close)
/// into an [`Outgoing`] and hands it to [`write`](Self::write), one call per
/// batch (the session loop writes up to a queue's worth of stanzas, plus
/// an XEP-0198 `<r/>`, at once). A message-framed transport calls
/// [`Outgoing::end_element`] after each element and sends
/// [`Outgoing::elements`] one per message; BOSH collects them and hands
/// them to the pending HTTP requests (a `write` then completes once they
/// are queued for the next response, bounded by the session's window).
/// `write` is bounded in time by the caller (`write_timeout`): a transport
/// must not buffer without bound behind a peer that stopped reading.
///
/// **Stream restarts.** After SASL success the client opens a new stream;
/// the caller calls [`restart`](Self::restart) and then waits for the next
/// `StreamEvent::Open`. A byte stream resets its framer for a new
/// `<stream:stream>`; WebSocket expects a new `<open/>`; BOSH turns the
/// next `xmpp:restart='true'` body into `Open` and has no stream header of
/// its own (its `encode_open` writes nothing, the answering `<body/>`
/// carries the features).
///
/// **Security and capabilities.** [`is_secure`](Self::is_secure) says
/// whether the client's bytes are encrypted to us (TLS on this socket, or
/// the HTTPS listener), which gates SASL when `require_encryption` is on
/// and SASL2 always. [`channel_binding`](Self::channel_binding) gives
/// SCRAM-PLUS data where the transport has the TLS session (empty
/// otherwise, and then -PLUS is not offered). STARTTLS and XEP-0138
/// compression exist only on the TCP transport ([`Link::tcp_mut`]): a
/// transport over HTTP leaves TLS to the HTTP listener and offers neither.
pub(crate) trait ClientTransport {
    /// The next event already received; never does I/O.
    fn next_event(&mut self) -> Result<Option<StreamEvent>, StreamError>;

    /// Waits for more input (cancel-safe); `Ok(0)` once the peer is gone.
    fn receive(&mut self) -> impl Future<Output = io::Result<usize>> + Send;

    /// Bytes held of an element that is not complete yet.
    fn buffered(&self) -> usize;

    /// Size and nesting limits for elements from now on.
    fn set_limits(&mut self, limits: Limits);

    /// The client will open a new stream (after SASL, STARTTLS, compression).
    fn restart(&mut self);

    /// Gives back parser memory while the session is idle. Only called on
    /// a bound session: whatever served authentication may go too.
    fn release_idle_buffers(&mut self);

    /// Whether the client's data reaches us encrypted.
    fn is_secure(&self) -> bool;

    /// Channel-binding data for SCRAM-PLUS and FAST `-ENDP`/`-EXPR`: only
    /// where a binding is used (it may be computed on the first call).
    fn channel_binding(&self) -> &ChannelBindingData;

    /// Which binding types [`channel_binding`](Self::channel_binding) has,
    /// for the features, without computing the data.
    fn channel_binding_types(&self) -> ChannelBindingTypes {
        self.channel_binding().types()
    }

    /// Appends one top-level element (stanza or nonza) in this framing.
    fn encode(&self, el: &Element, out: &mut Outgoing);

    /// Appends a fan-out's shared stanza addressed to this session, as
    /// [`encode`](Self::encode) would its tree. The default makes the tree;
    /// a transport that writes `jabber:client` top-level elements as they
    /// are copies the shared bytes instead (`shared_stanza`).
    fn encode_addressed(&self, stanza: &Addressed, out: &mut Outgoing) {
        self.encode(&stanza.to_element(), out);
    }

    /// Appends our stream header answering the client's.
    fn encode_open(&self, open: &StreamOpen<'_>, out: &mut Outgoing);

    /// Appends our end of the stream.
    fn encode_close(&self, out: &mut Outgoing);

    /// Sends `out`. The caller bounds it in time.
    fn write(&mut self, out: &Outgoing) -> impl Future<Output = io::Result<()>> + Send;

    /// Closes the connection after the last write (best effort).
    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// The transports a client connection can have.
#[allow(
    clippy::large_enum_variant,
    reason = "TCP, the common case, is kept inline in the task; the rarer WebSocket is boxed"
)]
pub(crate) enum Link {
    Tcp(TcpLink),
    Bosh(BoshLink),
    /// Boxed: the WebSocket state is larger than the TCP link's, and every
    /// TCP session would otherwise carry its size.
    WebSocket(Box<WsLink>),
}

impl Link {
    /// The TCP transport, for what only it has (STARTTLS, compression).
    pub fn tcp_mut(&mut self) -> Option<&mut TcpLink> {
        match self {
            Link::Tcp(t) => Some(t),
            Link::Bosh(_) => None,
            Link::WebSocket(_) => None,
        }
    }

    /// For `/metrics` and the admin API.
    pub fn transport(&self) -> crate::session::Transport {
        match self {
            Link::Tcp(_) => crate::session::Transport::Tcp,
            Link::Bosh(_) => crate::session::Transport::Bosh,
            Link::WebSocket(_) => crate::session::Transport::WebSocket,
        }
    }

    pub fn tcp(&self) -> Option<&TcpLink> {
        match self {
            Link::Tcp(t) => Some(t),
            Link::Bosh(_) => None,
            Link::WebSocket(_) => None,
        }
    }
}

/// Calls the same method on whichever transport this is.
macro_rules! each {
    ($self:expr, $t:ident => $e:expr) => {
        match $self {
            Link::Tcp($t) => $e,
            Link::Bosh($t) => $e,
            Link::WebSocket($t) => $e,
        }
    };
}

impl ClientTransport for Link {
    fn next_event(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        each!(self, t => t.next_event())
    }

    async fn receive(&mut self) -> io::Result<usize> {
        match self {
            Link::Tcp(t) => t.receive().await,
            // Boxed: these futures (a ping timer and a ping being sent; a
            // notification waiter) would otherwise size every TCP session's
            // task, which waits in `receive` all its idle life. One
            // allocation per turn of an HTTP-borne session, next to what its
            // HTTP and WebSocket framing allocate per message anyway.
            Link::Bosh(t) => Box::pin(t.receive()).await,
            Link::WebSocket(t) => Box::pin(t.receive()).await,
        }
    }

    fn buffered(&self) -> usize {
        each!(self, t => t.buffered())
    }

    fn set_limits(&mut self, limits: Limits) {
        each!(self, t => t.set_limits(limits))
    }

    fn restart(&mut self) {
        each!(self, t => t.restart())
    }

    fn release_idle_buffers(&mut self) {
        each!(self, t => t.release_idle_buffers())
    }

    fn is_secure(&self) -> bool {
        each!(self, t => t.is_secure())
    }

    fn channel_binding(&self) -> &ChannelBindingData {
        each!(self, t => t.channel_binding())
    }

    fn channel_binding_types(&self) -> ChannelBindingTypes {
        each!(self, t => t.channel_binding_types())
    }

    fn encode(&self, el: &Element, out: &mut Outgoing) {
        each!(self, t => t.encode(el, out))
    }

    fn encode_addressed(&self, stanza: &Addressed, out: &mut Outgoing) {
        each!(self, t => t.encode_addressed(stanza, out))
    }

    fn encode_open(&self, open: &StreamOpen<'_>, out: &mut Outgoing) {
        each!(self, t => t.encode_open(open, out))
    }

    fn encode_close(&self, out: &mut Outgoing) {
        each!(self, t => t.encode_close(out))
    }

    async fn write(&mut self, out: &Outgoing) -> io::Result<()> {
        each!(self, t => t.write(out).await)
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        each!(self, t => t.shutdown().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_output_keeps_element_boundaries() {
        let mut a = Outgoing::default();
        a.text.push_str("<a/>");
        a.end_element();
        let mut b = Outgoing::default();
        b.text.push_str("<b/>");
        b.end_element();
        b.text.push_str("<c>x</c>");
        b.end_element();
        a.append(b);
        assert_eq!(
            a.elements().collect::<Vec<_>>(),
            ["<a/>", "<b/>", "<c>x</c>"]
        );
        let mut empty = Outgoing::default();
        empty.append(a);
        assert_eq!(empty.elements().count(), 3);
    }

    #[test]
    fn a_recycled_buffer_serves_the_next_batch_empty_and_a_huge_one_is_not_kept() {
        let mut a = Outgoing::for_stanzas(4);
        a.text.push_str("<message/>");
        let buffer = a.text.as_ptr();
        a.recycle();
        let b = Outgoing::for_stanzas(2);
        assert!(b.text.is_empty());
        assert_eq!(b.text.as_ptr(), buffer, "the spare buffer was not reused");
        // A batch larger than what is reserved up front grew its buffer
        // past what a thread keeps: it is freed, not kept.
        let mut big = Outgoing::for_stanzas(1);
        big.text.reserve(MAX_RESERVED_BYTES * 2);
        big.recycle();
        let c = Outgoing::for_stanzas(1);
        assert!(c.text.capacity() <= MAX_RESERVED_BYTES);
        // Whatever a thread keeps is at most that large.
        b.recycle();
        let d = Outgoing::for_stanzas(usize::MAX);
        assert!(
            d.text.capacity() >= MAX_RESERVED_BYTES && d.text.capacity() < 2 * MAX_RESERVED_BYTES
        );
    }
}
