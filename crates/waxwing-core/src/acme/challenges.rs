//! The answers to the CA's challenges while an order is open: http-01
//! key authorizations by token, tls-alpn-01 certificates by name.
//!
//! Written by the order (`issue.rs`), read by the HTTP route and the TLS
//! certificate resolver. Both tables stay tiny (one entry per name of an
//! open order) and are emptied when the order ends, whatever its outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::sign::CertifiedKey;

/// RFC 8737 §6.2: the ALPN protocol of tls-alpn-01 validation handshakes.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Default, Debug)]
pub struct Challenges {
    inner: Mutex<Tables>,
}

#[derive(Default, Debug)]
struct Tables {
    /// http-01: token → key authorization.
    http: HashMap<String, String>,
    /// tls-alpn-01: lower-case name → the self-signed validation certificate.
    tls_alpn: HashMap<String, Arc<CertifiedKey>>,
}

impl Challenges {
    fn lock(&self) -> MutexGuard<'_, Tables> {
        // Nothing here can panic halfway through an update.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_http(&self, token: String, key_authorization: String) {
        self.lock().http.insert(token, key_authorization);
    }

    /// The key authorization to answer `GET /.well-known/acme-challenge/{token}`.
    pub fn http(&self, token: &str) -> Option<String> {
        self.lock().http.get(token).cloned()
    }

    pub(crate) fn set_tls_alpn(&self, name: &str, key: Arc<CertifiedKey>) {
        self.lock().tls_alpn.insert(name.to_ascii_lowercase(), key);
    }

    /// The validation certificate for a handshake that offered only
    /// `acme-tls/1` for `name`.
    pub fn tls_alpn(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.lock()
            .tls_alpn
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    /// Forgets the answers of an order that ended.
    pub(crate) fn clear(&self, tokens: &[String], names: &[String]) {
        let mut t = self.lock();
        for token in tokens {
            t.http.remove(token);
        }
        for name in names {
            t.tls_alpn.remove(&name.to_ascii_lowercase());
        }
    }
}
