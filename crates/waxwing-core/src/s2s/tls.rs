//! TLS for server-to-server streams.
//!
//! Handshakes never fail over certificate trust: both sides accept any
//! certificate during the handshake (still checking the handshake
//! signatures, so the peer proves it holds the key), and the chain and
//! identity are checked afterwards against the domain the stream claims.
//! The result decides between SASL EXTERNAL (XEP-0178) and dialback
//! (XEP-0220), or refusal, according to the per-domain policy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::identity;
use crate::tls::TlsContext;

/// Why a peer certificate was not accepted for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertStatus {
    /// Chains to a trusted root and names the domain.
    Valid,
    /// No certificate was presented (or no TLS).
    Absent,
    /// Presented, but untrusted or for another name; the reason for logs.
    Invalid(String),
}

impl CertStatus {
    pub fn is_valid(&self) -> bool {
        matches!(self, CertStatus::Valid)
    }
}

/// TLS setup shared by every s2s stream of this server.
pub struct S2sTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// One connector per local domain, presenting that domain's certificate.
    connectors: HashMap<String, tokio_rustls::TlsConnector>,
    default_connector: tokio_rustls::TlsConnector,
    verifier: Option<Arc<WebPkiServerVerifier>>,
}

impl S2sTls {
    /// `local_domains` get their own client certificate; others (service
    /// domains) present the first host's.
    pub fn new(
        tls: &TlsContext,
        local_domains: &[String],
        ca_bundle: Option<&Path>,
    ) -> Result<Self, crate::tls::TlsError> {
        let provider = crate::tls::server_provider();
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(AcceptAnyCert(provider.clone())))
            .with_cert_resolver(tls.cert_resolver());
        server.alpn_protocols = vec![b"xmpp-server".to_vec()];
        server.ignore_client_order = true;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));

        let connector =
            |own: Arc<dyn rustls::client::ResolvesClientCert>| -> Result<_, crate::tls::TlsError> {
                let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider.clone())))
                    .with_client_cert_resolver(own);
                client.alpn_protocols = vec![b"xmpp-server".to_vec()];
                Ok(tokio_rustls::TlsConnector::from(Arc::new(client)))
            };
        let mut connectors = HashMap::new();
        for d in local_domains {
            connectors.insert(d.clone(), connector(tls.client_cert_for(d))?);
        }
        let default_connector =
            connector(tls.client_cert_for(local_domains.first().map_or("", |s| s.as_str())))?;

        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "loading a system root certificate");
        }
        let (added, _) = roots.add_parsable_certificates(native.certs);
        let mut from_bundle = 0;
        if let Some(path) = ca_bundle {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| crate::tls::TlsError::File {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| crate::tls::TlsError::File {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            from_bundle = roots.add_parsable_certificates(certs).0;
        }
        tracing::debug!(system = added, bundle = from_bundle, "s2s trust anchors");
        let verifier = if roots.is_empty() {
            tracing::warn!(
                "no trusted root certificates for s2s: every peer certificate is unverified"
            );
            None
        } else {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .ok()
        };
        Ok(S2sTls {
            acceptor,
            connectors,
            default_connector,
            verifier,
        })
    }

    pub fn connector(&self, local: &str) -> &tokio_rustls::TlsConnector {
        self.connectors
            .get(local)
            .unwrap_or(&self.default_connector)
    }

    /// Checks a peer's chain against our roots and `domain` (RFC 6125).
    pub fn check(&self, chain: Option<&[CertificateDer<'static>]>, domain: &str) -> CertStatus {
        let Some((end, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return CertStatus::Absent;
        };
        let Some(verifier) = &self.verifier else {
            return CertStatus::Invalid("no trust anchors configured".into());
        };
        let Ok(name) = ServerName::try_from(domain.to_string()) else {
            return CertStatus::Invalid(format!("{domain:?} is not a DNS name"));
        };
        match verifier.verify_server_cert(end, intermediates, &name, &[], UnixTime::now()) {
            Ok(_) => CertStatus::Valid,
            // The chain is good but the DNS-ID differs: SRV-ID or XmppAddr may still name it.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if identity::cert_matches_domain(end, domain) => CertStatus::Valid,
            Err(e) => CertStatus::Invalid(e.to_string()),
        }
    }
}

/// Accepts any certificate during the handshake (both directions) but
/// verifies handshake signatures. Trust is decided by [`S2sTls::check`].
#[derive(Debug)]
pub(crate) struct AcceptAnyCert(pub(crate) Arc<CryptoProvider>);

impl AcceptAnyCert {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for AcceptAnyCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
