//! TLS setup: one certificate per virtual host, chosen by SNI, and the
//! first-start self-signed certificate for hosts that have none configured.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::Config;

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
    certs: Arc<CertResolver>,
}

impl TlsContext {
    /// Loads configured certificates and generates missing ones.
    pub fn load(config: &Config) -> Result<Self, TlsError> {
        let mut by_host = HashMap::new();
        for host in &config.hosts {
            let key = match config.certificates.iter().find(|c| &c.host == host) {
                Some(paths) => load_pair(&paths.cert, &paths.key)?,
                None => self_signed(&config.data_dir.join("tls"), host)?,
            };
            by_host.insert(host.clone(), Arc::new(key));
        }
        let default = by_host[&config.hosts[0]].clone();
        let certs = Arc::new(CertResolver { by_host, default });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &config.auth.client_certificates {
            Some(c) => builder.with_client_cert_verifier(client_verifier(c, provider.clone())?),
            None => builder.with_no_client_auth(),
        };
        let mut server = builder.with_cert_resolver(certs.clone());
        let mut https = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        // HTTP/1.1 only: WebSocket upgrades and BOSH are HTTP/1.1 here.
        https.alpn_protocols = vec![b"http/1.1".to_vec()];
        https.send_tls13_tickets = 0;
        // XEP-0368: direct TLS clients may announce ALPN "xmpp-client".
        server.alpn_protocols = vec![b"xmpp-client".to_vec()];
        server.ignore_client_order = true;
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
        })
    }

    /// The acceptor of the HTTPS listener.
    pub(crate) fn https_acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.https
    }

    /// The certificate and key of `host` (the first host's if it has none),
    /// presented as a TLS client on outgoing s2s streams.
    pub(crate) fn key_for(&self, host: &str) -> Arc<CertifiedKey> {
        self.certs.pick(Some(host))
    }

    /// The SNI-based certificate choice, shared with the s2s listener.
    pub(crate) fn cert_resolver(&self) -> Arc<dyn ResolvesServerCert> {
        self.certs.clone()
    }

    /// The leaf certificate presented for `sni` (RFC 5929 tls-server-end-point needs it).
    pub fn leaf_for(&self, sni: Option<&str>) -> CertificateDer<'static> {
        self.certs.pick(sni).cert[0].clone()
    }
}

#[derive(Debug)]
struct CertResolver {
    by_host: HashMap<String, Arc<CertifiedKey>>,
    /// Clients that send no SNI (or an IP literal) get the first host's certificate
    /// rather than a failed handshake: the stream header names the host anyway.
    default: Arc<CertifiedKey>,
}

impl CertResolver {
    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        sni.and_then(|name| self.by_host.get(&name.to_ascii_lowercase()))
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
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
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, e))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no certificate found"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
    let signer = any_supported_type(&key_der).map_err(|e| file_error(key, e))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// Creates `<dir>/<host>.crt` and `.key` on first start and reuses them after,
/// so that clients which pinned the certificate keep working across restarts.
fn self_signed(dir: &Path, host: &str) -> Result<CertifiedKey, TlsError> {
    let cert_path = dir.join(format!("{host}.crt"));
    let key_path = dir.join(format!("{host}.key"));
    if !cert_path.exists() || !key_path.exists() {
        let generated =
            rcgen::generate_simple_self_signed(vec![host.to_string()]).map_err(|e| {
                TlsError::Generate {
                    host: host.into(),
                    message: e.to_string(),
                }
            })?;
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        crate::private_file::write(&key_path, generated.signing_key.serialize_pem().as_bytes())
            .map_err(|e| file_error(&key_path, e))?;
        std::fs::write(&cert_path, generated.cert.pem()).map_err(|e| file_error(&cert_path, e))?;
        tracing::info!(host, path = %cert_path.display(), "generated a self-signed certificate");
    }
    load_pair(&cert_path, &key_path)
}
