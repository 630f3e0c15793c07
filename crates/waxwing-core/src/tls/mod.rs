//! TLS setup: one certificate per virtual host, chosen by SNI, and the
//! first-start self-signed certificate for hosts that have none configured.
//! The certificates sit in a swappable [`CertStore`] (`store.rs`): every
//! listener's rustls configuration asks it per handshake, so a reload
//! reaches c2s, s2s (both directions) and HTTPS at once and leaves
//! established connections alone. `load.rs` reads and checks a pair;
//! `watch.rs` notices changed files. A handshake that offers only the
//! `acme-tls/1` protocol is an ACME validator (RFC 8737): it gets the
//! validation certificate of an open order (`acme::Challenges`), nothing else.
//! Client connections run on `stream.rs` (rustls' unbuffered connection with
//! buffers released when empty); `capture.rs` gives it the channel-binding
//! inputs the unbuffered API does not expose.

mod capture;
mod load;
mod store;
pub mod stream;
pub(crate) mod watch;

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use waxwing_proto::sasl::{ChannelBindingData, tls_server_end_point_hash};

use crate::config::Config;

pub use load::CertInfo;
pub(crate) use load::describe;
pub use store::{
    CertReload, CertSource, CertStore, CertificateStatus, SourceKind, status_from_files,
};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("generating the self-signed certificate for {host}: {message}")]
    Generate { host: String, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server side of TLS for every listener.
#[derive(Clone)]
pub struct TlsContext {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The HTTPS listener's: same certificates, ALPN `http/1.1`.
    https: tokio_rustls::TlsAcceptor,
    certs: Arc<CertStore>,
    /// Answers of open ACME orders (tls-alpn-01 certificates, http-01 tokens).
    acme: Arc<crate::acme::Challenges>,
    /// `tls-server-end-point` hashes of the certificates presented lately.
    end_points: Arc<EndPointHashes>,
}

impl TlsContext {
    /// Loads configured certificates and generates missing ones.
    pub fn load(config: &Config) -> Result<Self, TlsError> {
        let certs = Arc::new(CertStore::load(
            &config.hosts,
            &config.certificates,
            &config.data_dir,
        )?);
        let acme = Arc::new(crate::acme::Challenges::default());
        let resolver = Arc::new(CertResolver {
            certs: certs.clone(),
            acme: acme.clone(),
        });
        let provider = server_provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &config.auth.client_certificates {
            Some(c) => builder.with_client_cert_verifier(client_verifier(c, provider.clone())?),
            None => builder.with_no_client_auth(),
        };
        let mut server = builder.with_cert_resolver(resolver.clone());
        let mut https = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        // HTTP/1.1 only: WebSocket upgrades and BOSH are HTTP/1.1 here.
        https.alpn_protocols = vec![b"http/1.1".to_vec()];
        https.send_tls13_tickets = 0;
        // XEP-0368: direct TLS clients may announce ALPN "xmpp-client".
        server.alpn_protocols = vec![b"xmpp-client".to_vec()];
        server.ignore_client_order = true;
        // The exporter secret for `tls-exporter` channel binding, which
        // the unbuffered connection of `stream.rs` does not export.
        server.key_log = Arc::new(capture::ExporterSecretLog {
            chained: server.key_log.clone(),
        });
        // RFC 8737: tls-alpn-01 validators connect to port 443, which may be
        // the HTTPS listener or a direct-TLS c2s listener.
        if config.acme.enabled
            && config
                .acme
                .challenges
                .contains(&crate::config::ChallengeKind::TlsAlpn01)
        {
            let acme_tls = crate::acme::challenges::ACME_TLS_ALPN.to_vec();
            server.alpn_protocols.push(acme_tls.clone());
            https.alpn_protocols.push(acme_tls);
        }
        // TLS 1.3 resumption is off unless configured: each ticket costs the
        // server a write, randomness and a cache slot on every login (about
        // a tenth of a login's CPU), while XMPP clients come back through
        // XEP-0198 resumption and FAST tokens instead.
        if config.tls_resumption_cache == 0 {
            server.send_tls13_tickets = 0;
        } else {
            server.session_storage =
                rustls::server::ServerSessionMemoryCache::new(config.tls_resumption_cache);
            server.send_tls13_tickets = 1;
        }
        Ok(TlsContext {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            https: tokio_rustls::TlsAcceptor::from(Arc::new(https)),
            certs,
            acme,
            end_points: Arc::default(),
        })
    }

    /// Performs a client connection's server handshake (STARTTLS or
    /// XEP-0368 direct TLS) and returns the stream with its channel-binding
    /// data: `tls-exporter` only on TLS 1.3 (RFC 9266 §3 forbids it on 1.2
    /// without extended master secret, and we don't want to reason about
    /// which 1.2 sessions had it), and `tls-server-end-point` from the
    /// certificate we presented.
    pub(crate) async fn accept_client(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<(stream::ServerTlsStream, ChannelBindingData)> {
        let stream::Accepted { stream, captured } =
            stream::ServerTlsStream::accept(tcp, self.acceptor.config().clone()).await?;
        let conn = stream.connection();
        let tls_exporter = match (conn.negotiated_cipher_suite(), &captured.exporter_secret) {
            (Some(rustls::SupportedCipherSuite::Tls13(suite)), Some(secret)) => {
                Some(capture::tls_exporter(suite, secret))
            }
            _ => None,
        };
        // Hashed once per certificate, not per connection (`EndPointHashes`).
        let end_point = match captured.certificate {
            Some(key) => self.end_points.get(key),
            None => self.end_point_hash(None),
        };
        Ok((
            stream,
            ChannelBindingData {
                tls_exporter,
                tls_server_end_point: end_point.map(|h| h.to_vec()),
            },
        ))
    }

    /// The acceptor of the HTTPS listener.
    pub(crate) fn https_acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.https
    }

    /// The answers ACME orders give the CA's validators.
    pub fn acme_challenges(&self) -> &crate::acme::Challenges {
        &self.acme
    }

    /// Every name's certificate: status, reload, installation (ACME).
    pub fn certificates(&self) -> &Arc<CertStore> {
        &self.certs
    }

    /// The certificate and key of `host` (the first host's if it has none),
    /// presented as a TLS client on outgoing s2s streams; current at each
    /// handshake.
    pub(crate) fn client_cert_for(
        &self,
        host: &str,
    ) -> Arc<dyn rustls::client::ResolvesClientCert> {
        Arc::new(OwnCert {
            certs: self.certs.clone(),
            host: host.to_string(),
        })
    }

    /// The SNI-based certificate choice, shared with the s2s listener.
    pub(crate) fn cert_resolver(&self) -> Arc<dyn ResolvesServerCert> {
        Arc::new(CertResolver {
            certs: self.certs.clone(),
            acme: self.acme.clone(),
        })
    }

    /// The RFC 5929 `tls-server-end-point` hash of the certificate
    /// presented for `sni`, `None` when
    /// its signature algorithm names no usable hash. Hashing a certificate
    /// costs about as much as the rest of a SASL exchange, and every TLS
    /// connection needs it for its features: it is hashed once per
    /// certificate.
    pub fn end_point_hash(&self, sni: Option<&str>) -> Option<Arc<[u8]>> {
        self.end_points.get(self.certs.pick(sni))
    }
}

/// Certificates lately presented and their `tls-server-end-point` hashes,
/// most recent last. A certificate is known by its `Arc`: a reload makes
/// new ones, and holding the old ones here keeps their addresses from being
/// reused while they are remembered.
#[derive(Default)]
struct EndPointHashes(std::sync::Mutex<Vec<EndPointHash>>);

/// A certificate and its hash (`None`: no usable hash).
type EndPointHash = (Arc<CertifiedKey>, Option<Arc<[u8]>>);

/// Certificates remembered: more than a server presents at once (one per
/// host), so older ones only fall out after reloads.
const END_POINT_HASHES: usize = 16;

impl EndPointHashes {
    fn get(&self, cert: Arc<CertifiedKey>) -> Option<Arc<[u8]>> {
        // Only whole pushes and removals happen under the lock.
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, hash)) = known.iter().find(|(c, _)| Arc::ptr_eq(c, &cert)) {
            return hash.clone();
        }
        let hash: Option<Arc<[u8]>> = cert
            .cert
            .first()
            .and_then(|leaf| tls_server_end_point_hash(leaf))
            .map(Arc::from);
        if known.len() >= END_POINT_HASHES {
            known.remove(0);
        }
        known.push((cert, hash.clone()));
        hash
    }
}

#[derive(Debug)]
struct CertResolver {
    certs: Arc<CertStore>,
    acme: Arc<crate::acme::Challenges>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme_validation = hello.alpn().is_some_and(|mut offered| {
            offered.any(|p| p == crate::acme::challenges::ACME_TLS_ALPN)
        });
        if acme_validation {
            // RFC 8737 §3: the validation certificate or no handshake at
            // all; never the real certificate under `acme-tls/1`.
            return self.acme.tls_alpn(hello.server_name()?);
        }
        let key = self.certs.pick(hello.server_name());
        capture::record_certificate(&key);
        Some(key)
    }
}

/// The crypto provider of every server-side TLS configuration: ring, with
/// AES-128-GCM preferred over AES-256-GCM in each protocol version, as
/// Mozilla's recommended configurations order them. The server chooses
/// (`ignore_client_order`), and rustls' default list puts AES-256 first,
/// which for TLS 1.3 also means SHA-384 for the whole key schedule: this
/// CPU class hashes SHA-256 in hardware (SHA-NI) but SHA-384 in software,
/// so every handshake's HKDF and HMACs cost several times more, for no
/// security the 128-bit key exchange (X25519, P-256) does not already cap.
/// AES-256 and ChaCha20 stay offered for clients that support nothing else.
pub(crate) fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| {
        (
            s.version() != &rustls::version::TLS13,
            !is_aes_128(s.suite()),
        )
    });
    Arc::new(provider)
}

fn is_aes_128(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

/// Whether a finished handshake negotiated `acme-tls/1`: an ACME validator
/// that has seen the validation certificate and is owed nothing more
/// (RFC 8737 §3), so the connection is closed.
pub(crate) fn is_acme_validation(conn: &rustls::CommonState) -> bool {
    conn.alpn_protocol() == Some(crate::acme::challenges::ACME_TLS_ALPN)
}

/// Our certificate as a TLS client (s2s), read from the store per handshake.
#[derive(Debug)]
struct OwnCert {
    certs: Arc<CertStore>,
    host: String,
}

impl rustls::client::ResolvesClientCert for OwnCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.certs.pick(Some(&self.host)))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// XEP-0178: clients *may* present a certificate from the configured CAs
/// (then it must verify, and must not be revoked by a configured CRL);
/// clients without one negotiate as before. The verifier only proves the
/// chain: which account the certificate names is `auth::external`'s job.
fn client_verifier(
    c: &crate::config::ClientCertConfig,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    use rustls::pki_types::CertificateRevocationListDer;
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&c.ca_file)
        .map_err(|e| file_error(&c.ca_file, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(&c.ca_file, e))?;
    if cas.is_empty() {
        return Err(file_error(&c.ca_file, "no certificate in the CA bundle"));
    }
    for ca in cas {
        roots.add(ca).map_err(|e| file_error(&c.ca_file, e))?;
    }
    let mut crls = Vec::new();
    for path in &c.crl_files {
        let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
        if bytes.starts_with(b"-----") {
            for crl in CertificateRevocationListDer::pem_slice_iter(&bytes) {
                crls.push(crl.map_err(|e| file_error(path, e))?);
            }
        } else {
            crls.push(CertificateRevocationListDer::from(bytes));
        }
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls(crls)
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::File {
            path: std::iter::once(&c.ca_file)
                .chain(&c.crl_files)
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            message: e.to_string(),
        })
}

fn file_error(path: &Path, message: impl ToString) -> TlsError {
    load::file_error(path, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite as S;

    #[test]
    fn servers_prefer_aes_128_and_keep_every_suite() {
        let ours: Vec<_> = server_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let mut default: Vec<_> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(ours[0], S::TLS13_AES_128_GCM_SHA256);
        assert_eq!(ours[1], S::TLS13_AES_256_GCM_SHA384);
        // TLS 1.3 before 1.2, AES-128 first within 1.2 as well.
        let first_12 = ours
            .iter()
            .position(|s| !format!("{s:?}").starts_with("TLS13"))
            .unwrap();
        assert!(
            ours[..first_12]
                .iter()
                .all(|s| format!("{s:?}").starts_with("TLS13"))
        );
        assert!(is_aes_128(ours[first_12]));
        let mut sorted = ours.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        default.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, default, "the same suites, only reordered");
    }
}
