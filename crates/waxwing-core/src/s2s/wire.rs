//! The byte stream and XML framing shared by inbound and outbound s2s
//! streams: TCP, upgraded in place to TLS as either side of the handshake.

use std::io;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use waxwing_proto::ns;
use waxwing_proto::stanza::{StreamCondition, StreamError};
use waxwing_proto::xml::{Element, Framer, Limits, StreamEvent, escape_attr};

use crate::stream::compress::{ZlibStream, is_decompression_bomb};

/// Bytes read at a time.
pub(crate) const READ_CHUNK: usize = 4096;

/// An s2s connection before or after TLS.
pub(crate) enum S2sIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    /// XEP-0138 zlib over one of the above.
    Compressed(Box<ZlibStream<S2sIo>>),
    /// Only while an upgrade is in flight.
    Upgrading,
}

impl S2sIo {
    pub fn is_tls(&self) -> bool {
        match self {
            S2sIo::Tls(_) => true,
            S2sIo::Compressed(c) => c.inner.is_tls(),
            _ => false,
        }
    }

    pub fn is_compressed(&self) -> bool {
        matches!(self, S2sIo::Compressed(_))
    }

    /// Starts compressing (after `<compressed/>` was sent or received).
    pub fn compress(&mut self, max_ratio: u64) -> io::Result<()> {
        let inner = std::mem::replace(self, S2sIo::Upgrading);
        if matches!(inner, S2sIo::Compressed(_) | S2sIo::Upgrading) {
            *self = inner;
            return Err(io::Error::other("stream is already compressed"));
        }
        *self = S2sIo::Compressed(Box::new(ZlibStream::new(inner, max_ratio)));
        Ok(())
    }

    fn take_plain(&mut self) -> io::Result<TcpStream> {
        match std::mem::replace(self, S2sIo::Upgrading) {
            S2sIo::Plain(tcp) => Ok(tcp),
            _ => Err(io::Error::other(
                "TLS upgrade of a stream that is not plain TCP",
            )),
        }
    }

    /// Server side of the handshake (inbound STARTTLS or XEP-0368).
    pub async fn accept_tls(&mut self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<()> {
        let tcp = self.take_plain()?;
        let tls = acceptor.accept(tcp).await?;
        *self = S2sIo::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)));
        Ok(())
    }

    /// Client side of the handshake, with SNI `domain`.
    pub async fn connect_tls(
        &mut self,
        connector: &tokio_rustls::TlsConnector,
        domain: &str,
    ) -> io::Result<()> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tcp = self.take_plain()?;
        let tls = connector.connect(name, tcp).await?;
        *self = S2sIo::Tls(Box::new(tokio_rustls::TlsStream::Client(tls)));
        Ok(())
    }

    /// The peer's certificate chain, if it presented one.
    pub fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        let tls = match self {
            S2sIo::Tls(tls) => tls,
            S2sIo::Compressed(c) => return c.inner.peer_certificates(),
            _ => return None,
        };
        let certs = match tls.as_ref() {
            tokio_rustls::TlsStream::Client(s) => s.get_ref().1.peer_certificates(),
            tokio_rustls::TlsStream::Server(s) => s.get_ref().1.peer_certificates(),
        };
        certs.map(|c| c.to_vec())
    }
}

crate::stream::transport::delegate_async_io!(S2sIo);

/// Why reading the next element failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// EOF or an I/O error.
    Gone,
    /// The peer sent bad XML or broke a limit.
    Stream(StreamError),
}

/// A socket with its framer (content namespace `jabber:server`, or
/// `jabber:component:accept` for XEP-0114 components).
pub(crate) struct Wire {
    pub io: S2sIo,
    pub framer: Framer,
    limits: Limits,
    content_ns: &'static str,
}

impl Wire {
    pub fn new(tcp: TcpStream, limits: Limits) -> Self {
        Self::with_ns(tcp, limits, ns::SERVER)
    }

    /// A wire whose stream's content namespace is `content_ns`.
    pub fn with_ns(tcp: TcpStream, limits: Limits, content_ns: &'static str) -> Self {
        let _ = tcp.set_nodelay(true);
        Wire {
            io: S2sIo::Plain(tcp),
            framer: Framer::new(limits, content_ns),
            limits,
            content_ns,
        }
    }

    /// A fresh parser for a new stream (after TLS).
    pub fn new_framer(&mut self) {
        self.framer = Framer::new(self.limits, self.content_ns);
    }

    pub async fn write(&mut self, data: &str) -> io::Result<()> {
        self.io.write_all(data.as_bytes()).await?;
        self.io.flush().await
    }

    /// Writes one element in the stream's namespace. Dialback elements go
    /// out as `<db:result/>`/`<db:verify/>`: ejabberd (fxml) matches them by
    /// that literal prefixed name and ignores `<result xmlns='…dialback'/>`.
    pub async fn send(&mut self, el: &Element) -> io::Result<()> {
        if el.ns == super::dialback::NS {
            return self.write(&el.to_xml_prefixed("db", self.content_ns)).await;
        }
        self.write(&el.to_xml_in(self.content_ns)).await
    }

    /// Reads once and feeds the framer; `Ok(0)` never happens (EOF is Gone).
    pub async fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        match self.io.read(buf).await {
            Ok(0) => Err(ReadError::Gone),
            Err(e) if is_decompression_bomb(&e) => Err(ReadError::Stream(
                StreamError::new(StreamCondition::PolicyViolation)
                    .with_text("compressed data inflates too much"),
            )),
            Err(_) => Err(ReadError::Gone),
            Ok(n) => {
                self.framer.feed(&buf[..n]);
                Ok(n)
            }
        }
    }

    /// The next event, reading as needed.
    pub async fn next_event(&mut self) -> Result<StreamEvent, ReadError> {
        let mut buf = [0u8; READ_CHUNK];
        loop {
            match self.framer.next_event() {
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Stream(e)),
            }
            self.read_some(&mut buf).await?;
        }
    }

    /// Closes our side: optional stream error, footer, TLS close_notify, FIN.
    pub async fn close(&mut self, error: Option<&StreamError>) {
        let mut out = String::new();
        if let Some(e) = error {
            out.push_str(&stream_prefixed(&e.to_element()));
        }
        out.push_str("</stream:stream>");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let _ = self.io.write_all(out.as_bytes()).await;
            let _ = self.io.flush().await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}

/// `<stream:features>`/`<stream:error>` with the `stream:` prefix our header declared.
pub(crate) fn stream_prefixed(el: &Element) -> String {
    let mut out = format!("<stream:{}>", el.name);
    for child in el.children() {
        child.write_to(&mut out, ns::SERVER);
    }
    out.push_str(&format!("</stream:{}>", el.name));
    out
}

/// Our stream header. `xmlns:db` is declared for peers that match on the prefix.
pub(crate) fn header(from: &str, to: Option<&str>, id: Option<&str>, version: bool) -> String {
    let mut h = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' xmlns:db='{}' from='",
        ns::SERVER,
        ns::STREAM,
        super::dialback::NS,
    );
    escape_attr(&mut h, from);
    h.push('\'');
    if let Some(to) = to {
        h.push_str(" to='");
        escape_attr(&mut h, to);
        h.push('\'');
    }
    if let Some(id) = id {
        h.push_str(" id='");
        escape_attr(&mut h, id);
        h.push('\'');
    }
    if version {
        h.push_str(" version='1.0'");
    }
    // RFC 6120 §4.7.4: the language of what we say on the stream (stream
    // and stanza error texts), which is English.
    h.push_str(" xml:lang='en'>");
    h
}
