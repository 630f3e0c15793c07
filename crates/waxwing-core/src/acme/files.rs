//! What ACME keeps in `<data_dir>/acme/`: the account key per CA directory
//! and each host's certificate chain and private key, all mode 0600 and
//! replaced atomically (written beside, then renamed), so a crash never
//! leaves a certificate without its key.

use std::io;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use crate::tls::CertInfo;

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

/// Reads the leaf of a PEM chain file; `Ok(None)` when there is none yet.
pub fn read(path: &Path) -> io::Result<Option<CertInfo>> {
    let pem = match std::fs::read(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no certificate"))?
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    crate::tls::describe(&leaf)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
