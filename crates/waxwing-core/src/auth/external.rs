//! XEP-0178 for clients: SASL EXTERNAL with the TLS client certificate.
//!
//! rustls has already verified the chain against `[auth.client_certificates]
//! ca_file` and its CRLs during the handshake; this module decides which
//! local account the certificate names: its id-on-xmppAddr values, or (if
//! configured) the local part of its e-mail address or its subject CN, on
//! the stream's host. The account must exist: a certificate proves who the
//! user is, not that the server knows them.

use rustls::pki_types::CertificateDer;
use waxwing_proto::jid::BareJid;
use waxwing_proto::sasl::{self, SaslError};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

use crate::config::CertIdentity;
use crate::router::Server;
use crate::s2s::identity::{OID_XMPP_ADDR, other_name_string};

/// The accounts on `host` a certificate names under the configured mapping.
pub fn identities(cert: &[u8], mapping: CertIdentity, host: &str) -> Vec<BareJid> {
    let Ok((_, cert)) = parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let san: Vec<GeneralName<'_>> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.clone(),
        _ => Vec::new(),
    };
    let on_host = |local: &str| BareJid::new(Some(local), host).ok();
    let mut out: Vec<BareJid> = match mapping {
        CertIdentity::XmppAddr => san
            .iter()
            .filter_map(|n| match n {
                GeneralName::OtherName(oid, value) if oid.to_id_string() == OID_XMPP_ADDR => {
                    other_name_string(value)
                }
                _ => None,
            })
            .filter_map(|s| BareJid::parse(&s).ok())
            .filter(|j| j.domain() == host && j.local().is_some())
            .collect(),
        CertIdentity::Email => {
            let mut mails: Vec<String> = san
                .iter()
                .filter_map(|n| match n {
                    GeneralName::RFC822Name(m) => Some(m.to_string()),
                    _ => None,
                })
                .collect();
            mails.extend(
                cert.subject()
                    .iter_email()
                    .filter_map(|e| e.as_str().ok().map(str::to_string)),
            );
            mails
                .iter()
                .filter_map(|m| m.split_once('@').map(|(l, _)| l.to_string()))
                .filter_map(|l| on_host(&l))
                .collect()
        }
        CertIdentity::CommonName => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .filter_map(on_host)
            .collect(),
    };
    out.sort();
    out.dedup();
    out
}

/// The account an EXTERNAL exchange authenticates.
pub(crate) async fn login(
    server: &Server,
    host: &str,
    cert: Option<CertificateDer<'static>>,
    message: &[u8],
) -> Result<BareJid, SaslError> {
    let authzid = sasl::parse_external(message)?;
    let (Some(cert), Some(c)) = (cert, &server.config.auth.client_certificates) else {
        return Err(SaslError::NotAuthorized);
    };
    let names = identities(&cert, c.identity, host);
    let user = match authzid {
        // RFC 6120 §6.4.6 / XEP-0178 §3: the client asks for one of the
        // identities its certificate carries.
        Some(requested) => {
            let requested = BareJid::parse(&requested).map_err(|_| SaslError::InvalidAuthzid)?;
            if !names.contains(&requested) {
                tracing::info!(%requested, certified = ?names.iter().map(ToString::to_string).collect::<Vec<_>>(), "EXTERNAL: identity not in the certificate");
                return Err(SaslError::InvalidAuthzid);
            }
            requested
        }
        None => match names.as_slice() {
            [one] => one.clone(),
            [] => {
                tracing::info!(%host, "EXTERNAL: the certificate names no account on this host");
                return Err(SaslError::NotAuthorized);
            }
            // Several identities: the client must say which (XEP-0178 §3).
            _ => return Err(SaslError::InvalidAuthzid),
        },
    };
    match server.stores.accounts.exists(&user).await {
        Ok(true) => Ok(user),
        Ok(false) => Err(SaslError::NotAuthorized),
        Err(e) => {
            tracing::error!(error = %e, "account lookup failed");
            Err(SaslError::TemporaryAuthFailure)
        }
    }
}
