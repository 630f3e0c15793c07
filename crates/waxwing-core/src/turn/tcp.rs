//! TURN over TCP (RFC 5766 §2.1): every client connection's frames go
//! into one `Conn` for the `turn` crate, which speaks datagrams. A frame
//! is a STUN message (20-byte header + length) or a ChannelData message
//! (4-byte header + length, padded to 4 bytes over TCP); the client's
//! address and port name its connection, which is how the crate's
//! answers find their way back (`send_to`).
//!
//! Bounded everywhere: frames are at most the crate's 1500-byte buffer,
//! each connection has a small write queue (full: the datagram is dropped,
//! as on UDP), the connections are counted, and an idle one is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use webrtc_util::Conn;

/// The crate reads into a 1500-byte buffer: a longer frame would be cut.
pub(crate) const MAX_FRAME: usize = 1500;
/// A connection that sends nothing for this long is closed (an allocation
/// is refreshed every few minutes at the latest).
const IDLE: Duration = Duration::from_secs(600);
/// Frames queued towards one client before further ones are dropped.
const WRITE_QUEUE: usize = 256;

/// The length of the frame at the start of `buf`, once its header is in.
pub(crate) fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 4 {
        return None;
    }
    let body = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    Some(match buf[0] >> 6 {
        0 => 20 + body,
        // ChannelData: padded to a multiple of 4 over TCP.
        _ => 4 + body.div_ceil(4) * 4,
    })
}

/// All TCP clients of one listener as one `Conn`.
pub(crate) struct TcpMux {
    local: SocketAddr,
    /// Frames from every connection; only the crate's read loop receives,
    /// so this lock is never contended.
    incoming: tokio::sync::Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
    writers: Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>,
}

impl TcpMux {
    /// Starts accepting on `listener`; connections end at `shutdown`.
    /// `closed` is told the client address of each connection that ends.
    pub fn start(
        listener: TcpListener,
        max_connections: usize,
        closed: Arc<dyn Fn(SocketAddr) + Send + Sync>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<Self>> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(1024);
        let mux = Arc::new(TcpMux {
            local,
            incoming: tokio::sync::Mutex::new(rx),
            writers: Arc::new(Mutex::new(HashMap::new())),
        });
        let permits = Arc::new(Semaphore::new(max_connections));
        let writers = mux.writers.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok((tcp, peer)) => {
                        let Ok(permit) = permits.clone().try_acquire_owned() else {
                            tracing::debug!(%peer, "TURN TCP connection refused: too many");
                            continue;
                        };
                        let closed = closed.clone();
                        let serving = serve(
                            tcp,
                            peer,
                            tx.clone(),
                            writers.clone(),
                            permit,
                            shutdown.clone(),
                        );
                        tokio::spawn(async move {
                            serving.await;
                            closed(peer);
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TURN TCP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(mux)
    }
}

/// Reads one connection's frames into the mux and writes its queue out.
async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    incoming: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    writers: Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>,
    _permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    let (mut rd, mut wr) = tcp.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    writers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(peer, out_tx);
    let done = CancellationToken::new();
    let writer = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = done.cancelled() => break,
                    f = out_rx.recv() => match f { Some(f) => f, None => break },
                };
                let write = tokio::time::timeout(Duration::from_secs(10), wr.write_all(&frame));
                if !matches!(write.await, Ok(Ok(()))) {
                    break;
                }
            }
            done.cancel();
        })
    };
    let mut buf = Vec::with_capacity(2 * MAX_FRAME);
    let mut chunk = [0u8; 4096];
    'conn: loop {
        let read = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = done.cancelled() => break,
            r = tokio::time::timeout(IDLE, rd.read(&mut chunk)) => r,
        };
        let n = match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(len) = frame_len(&buf) {
            if len > MAX_FRAME {
                tracing::debug!(%peer, len, "TURN TCP frame too long; closing");
                break 'conn;
            }
            if buf.len() < len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..len).collect();
            if incoming.send((frame, peer)).await.is_err() {
                break 'conn;
            }
        }
    }
    done.cancel();
    writers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&peer);
    let _ = writer.await;
}

#[async_trait]
impl Conn for TcpMux {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other("not supported".into()))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let (frame, from) = self
            .incoming
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| webrtc_util::Error::Other("listener closed".into()))?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok((n, from))
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other("not supported".into()))
    }

    /// Queues `buf` on `target`'s connection; dropped if it is gone or
    /// its queue is full.
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        let tx = self
            .writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&target)
            .cloned();
        if let Some(tx) = tx {
            let mut frame = buf.to_vec();
            if frame.first().is_some_and(|b| b >> 6 == 1) {
                // ChannelData over TCP is padded to 4 bytes (RFC 5766 §11.5).
                frame.resize(frame.len().div_ceil(4) * 4, 0);
            }
            let _ = tx.try_send(frame);
        }
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_stun_or_padded_channel_data() {
        assert_eq!(frame_len(&[0, 1, 0]), None);
        assert_eq!(frame_len(&[0x00, 0x01, 0x00, 0x08]), Some(28));
        assert_eq!(frame_len(&[0x40, 0x00, 0x00, 0x05]), Some(12));
        assert_eq!(frame_len(&[0x40, 0x00, 0x00, 0x08]), Some(12));
        assert_eq!(frame_len(&[0x40, 0x00, 0xff, 0xff]), Some(4 + 65536));
    }

    #[tokio::test]
    async fn frames_from_connections_arrive_with_their_address_and_answers_go_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut ended) = mpsc::unbounded_channel();
        let on_close = Arc::new(move |a: SocketAddr| {
            let _ = tx.send(a);
        });
        let mux = TcpMux::start(listener, 4, on_close, CancellationToken::new()).unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let me = c.local_addr().unwrap();
        // One STUN header and a ChannelData frame, written in pieces.
        let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[7; 12]);
        c.write_all(&stun[..5]).await.unwrap();
        c.write_all(&stun[5..]).await.unwrap();
        c.write_all(&[0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0])
            .await
            .unwrap();
        let mut buf = [0u8; MAX_FRAME];
        let (n, from) = mux.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&stun[..], me));
        let (n, _) = mux.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &[0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0]);
        mux.send_to(&[0x40, 0x01, 0x00, 0x01, 9], me).await.unwrap();
        let mut got = [0u8; 8];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0x40, 0x01, 0x00, 0x01, 9, 0, 0, 0]);
        // An oversized frame closes the connection.
        c.write_all(&[0x00, 0x01, 0x07, 0xd0]).await.unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(ended.recv().await, Some(me));
    }
}
