//! One conversation with the CA (RFC 8555 §7): the account (created once
//! per CA directory and kept in `data_dir`), then an order for a host's
//! names, its challenges answered through [`Challenges`], finalization
//! with a fresh key, and the certificate chain.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::challenges::Challenges;
use super::files;
use crate::config::{AcmeConfig, ChallengeKind};

/// How long the CA may take to validate every challenge of an order, and
/// then to issue the certificate. The polls grow slowly (the 20th, 93 s
/// in, comes 16 s after the 19th): a steeper curve leaves a validated
/// order idle for tens of seconds before it is finalized.
const VALIDATION: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(500))
    .backoff(1.2)
    .timeout(Duration::from_secs(120));

/// Why an order failed (logged, then retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("account file {path}: {message}")]
    Account { path: String, message: String },
    #[error("the CA offers no enabled challenge type for {name} (enabled: {enabled})")]
    NoChallenge { name: String, enabled: String },
    #[error("authorization of {name} is {status:?}{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Authorization {
        name: String,
        status: AuthorizationStatus,
        detail: Option<String>,
    },
    #[error("order ended {status:?}{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Order {
        status: OrderStatus,
        detail: Option<String>,
    },
    #[error("tls-alpn-01 certificate for {name}: {message}")]
    ValidationCert { name: String, message: String },
}

/// An issued certificate: the chain (leaf first) and its private key, PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Restores the account for `cfg.directory` from `data_dir`, or registers
/// a new one there and stores its credentials (0600: the account key lets
/// anyone revoke our certificates or order new ones in our name).
pub async fn account(cfg: &AcmeConfig, data_dir: &std::path::Path) -> Result<Account, IssueError> {
    let path = files::account_path(data_dir, &cfg.directory);
    let account_error = |message: String| IssueError::Account {
        path: path.display().to_string(),
        message,
    };
    let builder = || match &cfg.ca_file {
        Some(roots) => Account::builder_with_root(roots),
        None => Account::builder(),
    };
    match std::fs::read(&path) {
        Ok(json) => {
            let credentials: AccountCredentials =
                serde_json::from_slice(&json).map_err(|e| account_error(e.to_string()))?;
            Ok(builder()?.from_credentials(credentials).await?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let contact: Vec<&str> = cfg.contact.iter().map(String::as_str).collect();
            let (account, credentials) = builder()?
                .create(
                    &NewAccount {
                        contact: &contact,
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    cfg.directory.clone(),
                    None,
                )
                .await?;
            let json =
                serde_json::to_vec(&credentials).map_err(|e| account_error(e.to_string()))?;
            files::replace(&path, &json).map_err(|e| account_error(e.to_string()))?;
            tracing::info!(directory = %cfg.directory, id = account.id(), "ACME account registered");
            Ok(account)
        }
        Err(e) => Err(account_error(e.to_string())),
    }
}

/// Orders one certificate for `names` (the first is the host).
pub async fn order(
    account: &Account,
    cfg: &AcmeConfig,
    names: &[String],
    challenges: &Challenges,
) -> Result<Issued, IssueError> {
    let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut answered = Answered {
        challenges,
        tokens: Vec::new(),
        names: Vec::new(),
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        let name = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            status => {
                return Err(IssueError::Authorization {
                    name,
                    status,
                    detail: None,
                });
            }
        }
        let offered = cfg.challenges.iter().copied().find(|kind| {
            authz
                .challenges
                .iter()
                .any(|c| c.r#type == challenge_type(*kind))
        });
        let Some(kind) = offered else {
            return Err(IssueError::NoChallenge {
                name,
                enabled: cfg
                    .challenges
                    .iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let mut challenge = authz
            .challenge(challenge_type(kind))
            .expect("the offered challenge was just found");
        let key_authorization = challenge.key_authorization();
        match kind {
            ChallengeKind::Http01 => {
                let token = challenge.token.clone();
                challenges.set_http(token.clone(), key_authorization.as_str().to_string());
                answered.tokens.push(token);
            }
            ChallengeKind::TlsAlpn01 => {
                let cert = validation_certificate(&name, key_authorization.digest().as_ref())?;
                challenges.set_tls_alpn(&name, Arc::new(cert));
                answered.names.push(name.clone());
            }
        }
        tracing::debug!(%name, challenge = kind.name(), "ACME challenge ready");
        challenge.set_ready().await?;
    }
    match order.poll_ready(&VALIDATION).await {
        Ok(OrderStatus::Ready) => {}
        Ok(status) => return Err(failed(&mut order, status, None).await),
        // An invalid order carries a problem of its own: the name that
        // failed is in its authorizations.
        Err(instant_acme::Error::Api(problem)) => {
            return Err(failed(&mut order, OrderStatus::Invalid, Some(problem)).await);
        }
        Err(e) => return Err(e.into()),
    }
    // Validation is over: the answers are no longer needed.
    drop(answered);
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&VALIDATION).await?;
    Ok(Issued { chain_pem, key_pem })
}

/// Removes the answers of an order however it ends (`?` included).
struct Answered<'a> {
    challenges: &'a Challenges,
    tokens: Vec<String>,
    names: Vec<String>,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.challenges.clear(&self.tokens, &self.names);
    }
}

fn challenge_type(kind: ChallengeKind) -> ChallengeType {
    match kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
    }
}

/// The most specific reason an order failed: the name whose authorization
/// failed with its challenge's problem (what the CA saw: a 404, a refused
/// connection, the wrong key authorization), else the order's own.
async fn failed(
    order: &mut instant_acme::Order,
    status: OrderStatus,
    problem: Option<instant_acme::Problem>,
) -> IssueError {
    // An invalid authorization names the cause; the others may still be
    // pending when the CA gave up on the order.
    let mut unfinished = None;
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        let status = authz.status;
        if status == AuthorizationStatus::Valid {
            continue;
        }
        let detail = authz
            .challenges
            .iter()
            .find_map(|c| c.error.as_ref())
            .or(problem.as_ref())
            .map(|p| p.to_string());
        let error = IssueError::Authorization {
            name: authz.identifier().to_string(),
            status,
            detail,
        };
        if status != AuthorizationStatus::Pending {
            return error;
        }
        unfinished.get_or_insert(error);
    }
    if let Some(error) = unfinished {
        return error;
    }
    IssueError::Order {
        status,
        detail: problem
            .as_ref()
            .or(order.state().error.as_ref())
            .map(|p| p.to_string()),
    }
}

/// RFC 8737 §3: a self-signed certificate for `name` whose critical
/// `acmeIdentifier` extension holds the SHA-256 digest of the key
/// authorization.
fn validation_certificate(name: &str, digest: &[u8]) -> Result<CertifiedKey, IssueError> {
    let fail = |e: &dyn std::fmt::Display| IssueError::ValidationCert {
        name: name.into(),
        message: e.to_string(),
    };
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| fail(&e))?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
    let cert = params.self_signed(&key).map_err(|e| fail(&e))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = any_supported_type(&key_der).map_err(|e| fail(&e))?;
    Ok(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signer,
    ))
}
