//! What ACME keeps in `<data_dir>/acme/`: the account key per CA directory
//! and each host's certificate chain and private key, all mode 0600 and
//! replaced atomically (written beside, then renamed), so a crash never
//! leaves a certificate without its key.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

/// `<data_dir>/acme`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("acme")
}

/// The certificate chain (PEM) and private key (PEM) files of `host`.
pub fn cert_paths(data_dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    let d = dir(data_dir);
    (d.join(format!("{host}.crt")), d.join(format!("{host}.key")))
}

/// The account credentials for one CA directory: an account belongs to
/// one CA, so switching from staging to production makes a new one.
pub fn account_path(data_dir: &Path, directory: &str) -> PathBuf {
    let digest = Sha256::digest(directory.as_bytes());
    dir(data_dir).join(format!("account-{}.json", hex::encode(&digest[..8])))
}

/// Writes `data` to a temporary file beside `path` (0600) and renames it
/// over `path`.
pub(crate) fn replace(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    crate::private_file::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Stores a new chain and key for `host`: the key first, so that the
/// certificate on disk never names a key that is not there yet. A reader
/// between the two renames sees the old chain with the new key and
/// rejects the pair (rustls checks that they match); the next reload
/// after the second rename gets both.
pub(crate) fn store(data_dir: &Path, host: &str, chain_pem: &str, key_pem: &str) -> io::Result<()> {
    let (cert, key) = cert_paths(data_dir, host);
    replace(&key, key_pem.as_bytes())?;
    replace(&cert, chain_pem.as_bytes())
}

/// What the renewal schedule needs to know of a stored certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// DNS names of the subject alternative names, lower case.
    pub names: Vec<String>,
    pub issuer: String,
}

/// Reads the leaf of a PEM chain file; `Ok(None)` when there is none yet.
pub fn read(path: &Path) -> io::Result<Option<Stored>> {
    let pem = match std::fs::read(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no certificate"))?
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    parse(&leaf)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Validity, names and issuer of a DER certificate.
pub fn parse(der: &[u8]) -> Result<Stored, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let time = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH
        }
    };
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(Stored {
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
        names,
        issuer: cert.issuer().to_string(),
    })
}
