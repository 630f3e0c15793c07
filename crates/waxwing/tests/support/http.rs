//! A minimal HTTP/1.1 client on raw sockets, for tests of the HTTP
//! listener: it sends exactly the bytes a test writes (partial headers,
//! oversized bodies, forged `Origin`s) and reads responses strictly.

use std::collections::HashMap;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{DOMAIN, TIMEOUT, tls_connector_alpn};

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One HTTP connection (keep-alive: several requests in turn).
pub struct HttpConn {
    io: BufReader<Box<dyn Stream>>,
}

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Lower-case names; a repeated header keeps its last value.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl HttpConn {
    pub async fn plain(port: u16) -> HttpConn {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        HttpConn {
            io: BufReader::new(Box::new(tcp)),
        }
    }

    pub async fn tls(port: u16) -> HttpConn {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from(DOMAIN).expect("server name");
        let tls = tokio::time::timeout(TIMEOUT, tls_connector_alpn(b"http/1.1").connect(name, tcp))
            .await
            .expect("TLS handshake timed out")
            .expect("TLS handshake");
        HttpConn {
            io: BufReader::new(Box::new(tls)),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.expect("write");
        self.io.get_mut().flush().await.expect("flush");
    }

    /// Sends `method path` with `headers` (Host added) and `body`.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {DOMAIN}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        self.send_raw(req.as_bytes()).await;
        if !body.is_empty() {
            self.send_raw(body).await;
        }
        self.response().await.expect("a response")
    }

    pub async fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[], b"").await
    }

    /// Reads one response; `None` if the server closed the connection first.
    pub async fn response(&mut self) -> Option<Response> {
        tokio::time::timeout(TIMEOUT, self.read_response())
            .await
            .expect("no response in time")
    }

    /// True when the server closes the connection (EOF, or a reset) before
    /// sending anything more.
    pub async fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 1];
        match tokio::time::timeout(TIMEOUT, self.io.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => false,
            Err(_) => panic!("the server neither answered nor closed in time"),
        }
    }

    async fn read_response(&mut self) -> Option<Response> {
        let mut line = String::new();
        if self.io.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            self.io.read_line(&mut h).await.ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':')?;
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let mut body = Vec::new();
        if let Some(len) = headers.get("content-length") {
            body.resize(len.parse().ok()?, 0);
            self.io.read_exact(&mut body).await.ok()?;
        } else if headers
            .get("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let mut size = String::new();
                self.io.read_line(&mut size).await.ok()?;
                let size = usize::from_str_radix(size.trim(), 16).ok()?;
                let mut chunk = vec![0; size + 2];
                self.io.read_exact(&mut chunk).await.ok()?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        }
        Some(Response {
            status,
            headers,
            body,
        })
    }
}
