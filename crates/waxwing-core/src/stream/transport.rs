//! The byte stream under an XML stream: TCP, later upgraded to TLS in place.

use std::io;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::stream::compress::ZlibStream;
pub use crate::stream::compress::is_decompression_bomb;
use crate::tls::TlsContext;

/// A client connection before or after TLS.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// XEP-0138 zlib over one of the above.
    Compressed(Box<Compressed>),
    /// Only while an upgrade is in flight.
    Upgrading,
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        match self {
            Transport::Tls(_) => true,
            Transport::Compressed(c) => c.inner.is_tls(),
            _ => false,
        }
    }

    /// Performs the TLS handshake on the plain socket (STARTTLS or XEP-0368).
    pub async fn upgrade(&mut self, tls: &TlsContext) -> io::Result<()> {
        let Transport::Plain(tcp) = std::mem::replace(self, Transport::Upgrading) else {
            return Err(io::Error::other(
                "TLS upgrade of a stream that is not plain TCP",
            ));
        };
        let stream = tls.acceptor.accept(tcp).await?;
        if crate::tls::is_acme_validation(stream.get_ref().1) {
            return Err(io::Error::other("ACME tls-alpn-01 validation handshake"));
        }
        *self = Transport::Tls(Box::new(stream));
        Ok(())
    }

    /// The client's certificate, when it presented one that verified
    /// against `[auth.client_certificates]` (XEP-0178).
    pub fn peer_certificate(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        let Transport::Tls(stream) = self else {
            return None;
        };
        stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
    }

    /// The TLS connection, under compression too.
    fn tls_connection(&self) -> Option<&rustls::ServerConnection> {
        match self {
            Transport::Tls(stream) => Some(stream.get_ref().1),
            Transport::Compressed(c) => c.inner.tls_connection(),
            _ => None,
        }
    }

    /// What channel binding for SCRAM-PLUS and FAST needs that costs
    /// nothing to know: whether `tls-exporter` is available (only on TLS
    /// 1.3: RFC 9266 §3 forbids it on 1.2 without extended master secret,
    /// and we don't want to reason about which 1.2 sessions had it), and
    /// the `tls-server-end-point` hash of the certificate we presented
    /// (hashed once per certificate). The exporter itself costs a
    /// key-schedule expansion, so it is computed only when a binding uses
    /// it ([`tls_exporter`](Self::tls_exporter)).
    pub fn binding_basis(&self, tls: &TlsContext) -> (bool, Option<std::sync::Arc<[u8]>>) {
        let Some(conn) = self.tls_connection() else {
            return (false, None);
        };
        (
            conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3),
            tls.end_point_hash(conn.server_name()),
        )
    }

    /// RFC 9266 `tls-exporter` data, on TLS 1.3 only.
    pub fn tls_exporter(&self) -> Option<Vec<u8>> {
        let conn = self.tls_connection()?;
        if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return None;
        }
        conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
            .ok()
            .map(|k| k.to_vec())
    }
}

/// Implements `AsyncRead`/`AsyncWrite` for a connection enum whose
/// variants are `Plain`, `Tls` and `Compressed` (boxed) streams plus the
/// empty `Upgrading` placeholder: c2s `Transport` and s2s `S2sIo` share it.
macro_rules! delegate_async_io {
    ($ty:ident) => {
        impl tokio::io::AsyncRead for $ty {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                use std::pin::Pin;
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
                    $ty::Compressed(c) => Pin::new(c.as_mut()).poll_read(cx, buf),
                    $ty::Upgrading => {
                        std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()))
                    }
                }
            }
        }

        impl tokio::io::AsyncWrite for $ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                use std::pin::Pin;
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
                    $ty::Compressed(c) => Pin::new(c.as_mut()).poll_write(cx, buf),
                    $ty::Upgrading => {
                        std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()))
                    }
                }
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                use std::pin::Pin;
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_flush(cx),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
                    $ty::Compressed(c) => Pin::new(c.as_mut()).poll_flush(cx),
                    $ty::Upgrading => std::task::Poll::Ready(Ok(())),
                }
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                use std::pin::Pin;
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
                    $ty::Compressed(c) => Pin::new(c.as_mut()).poll_shutdown(cx),
                    $ty::Upgrading => std::task::Poll::Ready(Ok(())),
                }
            }
        }
    };
}
pub(crate) use delegate_async_io;

delegate_async_io!(Transport);

/// A client transport under XEP-0138 zlib.
pub type Compressed = ZlibStream<Transport>;

impl Transport {
    /// Starts compressing (after `<compressed/>` went out uncompressed).
    pub fn compress(&mut self, max_ratio: u64) -> io::Result<()> {
        let inner = std::mem::replace(self, Transport::Upgrading);
        if matches!(inner, Transport::Compressed(_) | Transport::Upgrading) {
            *self = inner;
            return Err(io::Error::other("stream is already compressed"));
        }
        *self = Transport::Compressed(Box::new(ZlibStream::new(inner, max_ratio)));
        Ok(())
    }

    pub fn is_compressed(&self) -> bool {
        matches!(self, Transport::Compressed(_))
    }
}
