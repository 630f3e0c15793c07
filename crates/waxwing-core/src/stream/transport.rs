//! The byte stream under an XML stream: TCP, later upgraded to TLS in place.

use std::io;

use tokio::net::TcpStream;
use waxwing_proto::sasl::ChannelBindingData;

use crate::stream::compress::ZlibStream;
pub use crate::stream::compress::is_decompression_bomb;
use crate::tls::TlsContext;
use crate::tls::stream::ServerTlsStream;

/// A client connection before or after TLS.
pub enum Transport {
    Plain(TcpStream),
    /// Boxed: the TLS session state is large and plain sessions don't need
    /// the room.
    Tls(Box<ServerTlsStream>),
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

    /// Performs the TLS handshake on the plain socket (STARTTLS or
    /// XEP-0368) and returns the channel-binding data for SCRAM-PLUS.
    pub async fn upgrade(&mut self, tls: &TlsContext) -> io::Result<ChannelBindingData> {
        let Transport::Plain(tcp) = std::mem::replace(self, Transport::Upgrading) else {
            return Err(io::Error::other(
                "TLS upgrade of a stream that is not plain TCP",
            ));
        };
        let (stream, cb) = tls.accept_client(tcp).await?;
        if crate::tls::is_acme_validation(stream.connection()) {
            return Err(io::Error::other("ACME tls-alpn-01 validation handshake"));
        }
        *self = Transport::Tls(Box::new(stream));
        Ok(cb)
    }

    /// The client's certificate, when it presented one that verified
    /// against `[auth.client_certificates]` (XEP-0178).
    pub fn peer_certificate(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        let Transport::Tls(stream) = self else {
            return None;
        };
        stream
            .connection()
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
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
