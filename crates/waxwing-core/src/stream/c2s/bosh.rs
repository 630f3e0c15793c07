//! The BOSH transport (XEP-0206): the client's stream carried in HTTP
//! request bodies. The HTTP side and the state machine live in
//! `crate::bosh`; this is the client task's end of a session, so
//! negotiation and the session loop are the same code as on TCP.

use std::io;
use std::sync::Arc;

use waxwing_proto::bosh::serialize_payload;
use waxwing_proto::sasl::ChannelBindingData;
use waxwing_proto::stanza::StreamError;
use waxwing_proto::xml::{Element, Limits, StreamEvent};

use super::link::{ClientTransport, Outgoing, StreamOpen};
use crate::bosh::Shared;

pub(crate) struct BoshLink {
    shared: Arc<Shared>,
    /// Set by `encode_close`, read by the `write` that carries it.
    closing: std::sync::atomic::AtomicBool,
    /// Never has data: there is no TLS session of ours under HTTP (the
    /// listener's belongs to many requests), so no -PLUS mechanisms.
    cb: ChannelBindingData,
}

impl BoshLink {
    pub fn new(shared: Arc<Shared>) -> Self {
        BoshLink {
            shared,
            closing: Default::default(),
            cb: ChannelBindingData::default(),
        }
    }
}

impl Drop for BoshLink {
    /// The client task let go (its stream ended, or it detached to wait for
    /// an XEP-0198 resumption): the BOSH session ends with it.
    fn drop(&mut self) {
        self.shared.detach();
    }
}

impl ClientTransport for BoshLink {
    fn next_event(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        self.shared.next_event()
    }

    async fn receive(&mut self) -> io::Result<usize> {
        Ok(self.shared.receive().await)
    }

    /// Bodies arrive whole; nothing is held of an unfinished element.
    fn buffered(&self) -> usize {
        0
    }

    fn set_limits(&mut self, limits: Limits) {
        self.shared.set_limits(limits);
    }

    /// The next `xmpp:restart` body is the new stream's `Open`.
    fn restart(&mut self) {}

    fn release_idle_buffers(&mut self) {}

    fn is_secure(&self) -> bool {
        self.shared.is_secure()
    }

    fn channel_binding(&self) -> &ChannelBindingData {
        &self.cb
    }

    fn encode(&self, el: &Element, out: &mut Outgoing) {
        out.text.push_str(&serialize_payload(el));
        out.end_element();
    }

    /// No stream header travels over BOSH; its id and host go into the
    /// session creation answer (`authid`, `from`).
    fn encode_open(&self, open: &StreamOpen<'_>, _out: &mut Outgoing) {
        self.shared.set_stream_info(open.id, open.from);
    }

    fn encode_close(&self, _out: &mut Outgoing) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    async fn write(&mut self, out: &Outgoing) -> io::Result<()> {
        let close = self.closing.load(std::sync::atomic::Ordering::Relaxed);
        let elements = out.elements().map(str::to_owned).collect();
        if self.shared.write(elements, close).await {
            Ok(())
        } else {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.shared.detach();
        Ok(())
    }
}
