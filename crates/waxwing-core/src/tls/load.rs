//! Reading one certificate/key pair from PEM files and checking it is
//! usable before anything serves it; the first-start self-signed pair.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

use super::TlsError;

/// A pair that loaded: the key rustls serves and what the leaf says.
pub(crate) struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

/// What `waxwing cert status` shows of a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names of the subjectAltName (the subject CN if it has none).
    pub names: Vec<String>,
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// SHA-256 of the leaf's DER, lower-case hex.
    pub sha256: String,
}

/// Loads `cert` (the chain, leaf first) and `key`, and checks that the key
/// belongs to the leaf: rustls would otherwise fail every handshake with
/// the pair, long after the reload that accepted it.
pub(crate) fn load_pair(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, e))?;
    let Some(leaf) = chain.first() else {
        return Err(file_error(cert, "no certificate found"));
    };
    let info = describe(leaf).map_err(|e| file_error(cert, e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
    let signer = any_supported_type(&key_der).map_err(|e| file_error(key, e))?;
    let certified = CertifiedKey::new(chain, signer);
    if let Err(e) = certified.keys_match() {
        return Err(TlsError::File {
            path: format!("{} and {}", cert.display(), key.display()),
            message: format!("the key does not belong to the certificate ({e})"),
        });
    }
    Ok(Loaded {
        key: Arc::new(certified),
        info,
    })
}

/// Reads names, issuer, validity and fingerprint of a DER certificate.
pub(crate) fn describe(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = parse_x509_certificate(der).map_err(|e| format!("not a certificate: {e}"))?;
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        Ok(None) => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_string))
            .collect(),
        Err(e) => return Err(format!("subjectAltName: {e}")),
    };
    let validity = cert.validity();
    Ok(CertInfo {
        names,
        issuer: cert.issuer().to_string(),
        not_before: unix_time(validity.not_before.timestamp()),
        not_after: unix_time(validity.not_after.timestamp()),
        sha256: hex::encode(Sha256::digest(der)),
    })
}

fn unix_time(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

pub(crate) fn file_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The self-signed pair of `host` under `dir`.
pub(crate) fn self_signed_paths(
    dir: &Path,
    host: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        dir.join(format!("{host}.crt")),
        dir.join(format!("{host}.key")),
    )
}

/// Creates `<dir>/<host>.crt` and `.key` unless both exist, so that clients
/// which pinned the certificate keep working across restarts.
pub(crate) fn ensure_self_signed(dir: &Path, host: &str) -> Result<(), TlsError> {
    let (cert_path, key_path) = self_signed_paths(dir, host);
    if cert_path.exists() && key_path.exists() {
        return Ok(());
    }
    let generated = rcgen::generate_simple_self_signed(vec![host.to_string()]).map_err(|e| {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str, host: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let g = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, g.cert.pem()).unwrap();
        std::fs::write(&k, g.signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn a_pair_loads_with_its_names_and_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair(dir.path(), "a", "example.org");
        let loaded = load_pair(&c, &k).unwrap();
        assert_eq!(loaded.info.names, ["example.org"]);
        assert_eq!(loaded.info.sha256.len(), 64);
        assert_eq!(
            loaded.info.sha256,
            hex::encode(Sha256::digest(loaded.key.cert[0].as_ref()))
        );
        assert!(loaded.info.not_after > SystemTime::now());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = pair(dir.path(), "a", "example.org");
        let (_, k2) = pair(dir.path(), "b", "example.org");
        let Err(e) = load_pair(&c, &k2) else {
            panic!("a mismatched key loaded")
        };
        assert!(e.to_string().contains("does not belong"), "{e}");
    }

    #[test]
    fn garbage_and_empty_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair(dir.path(), "a", "example.org");
        std::fs::write(&c, "").unwrap();
        assert!(load_pair(&c, &k).is_err());
        std::fs::write(
            &c,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(load_pair(&c, &k).is_err());
    }
}
