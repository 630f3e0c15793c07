//! Fetching the pinned Converse.js release from the npm registry into
//! `<data_dir>/webclient/converse.js-<version>/`, once: the tarball's
//! SHA-512 must equal the one hard-coded here (npm's `dist.integrity`), only
//! `package/dist/` (without source maps) and the licence files are kept, and
//! the directory appears by an atomic rename, so a half-done fetch never
//! serves. Large text assets get a `.gz` twin that `ServeDir` sends to
//! browsers that accept gzip.

use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha512};

/// The pinned release.
pub const VERSION: &str = "14.0.0";
const TARBALL_URL: &str = "https://registry.npmjs.org/converse.js/-/converse.js-14.0.0.tgz";
/// `sha512` of the tarball, hex (npm's `dist.integrity` is the same in base64).
const TARBALL_SHA512: &str = "2c5520d37d230da955e3bbc8fefc953ea60f65f2585c56ee6eaf2fd1c1437b6cd735e786124dd4a74163fd64f34fab7ee9da3e700213a32ef77808fb44d0e3d9";
/// The tarball is about 8.3 MiB; anything much larger is not it.
const MAX_TARBALL: usize = 32 << 20;
/// Unpacked files kept, in bytes (about 12 MiB without source maps).
const MAX_UNPACKED: u64 = 64 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);
/// Marks a complete installation.
const COMPLETE: &str = ".complete";

/// Where the pinned release lives under `root` (`<data_dir>/webclient`).
pub fn install_dir(root: &Path) -> PathBuf {
    root.join(format!("converse.js-{VERSION}"))
}

/// Whether the pinned release is installed under `root`.
pub fn installed(root: &Path) -> bool {
    install_dir(root).join(COMPLETE).is_file()
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("download: {0}")]
    Http(#[from] reqwest::Error),
    #[error("download: {0}")]
    Status(String),
    #[error("checksum mismatch: got sha512 {0}")]
    Checksum(String),
    #[error("unpacking: {0}")]
    Io(#[from] io::Error),
}

/// Downloads, verifies and installs the pinned release (nothing to do when
/// it is there already).
pub async fn ensure(root: &Path) -> Result<(), FetchError> {
    if installed(root) {
        return Ok(());
    }
    let tarball = download().await?;
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || install(&root, &tarball))
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
    Ok(())
}

async fn download() -> Result<Vec<u8>, FetchError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Status(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(FETCH_TIMEOUT)
        .user_agent(concat!(
            "waxwing/",
            env!("CARGO_PKG_VERSION"),
            " (web client fetch)"
        ))
        .build()?;
    let mut resp = client.get(TARBALL_URL).send().await?;
    if !resp.status().is_success() {
        return Err(FetchError::Status(format!(
            "{TARBALL_URL}: {}",
            resp.status()
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_TARBALL {
            return Err(FetchError::Status(format!(
                "{TARBALL_URL}: larger than {MAX_TARBALL} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Verifies `tarball` and unpacks what is served into the install directory.
pub fn install(root: &Path, tarball: &[u8]) -> Result<(), FetchError> {
    let digest = hex::encode(Sha512::digest(tarball));
    if digest != TARBALL_SHA512 {
        return Err(FetchError::Checksum(digest));
    }
    std::fs::create_dir_all(root)?;
    let staging = root.join(format!(".staging-{}", waxwing_core::random_id()));
    let result = unpack(tarball, &staging);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e.into());
    }
    std::fs::write(staging.join(COMPLETE), VERSION)?;
    let target = install_dir(root);
    // Another server process sharing the directory may have won the race.
    if let Err(e) = std::fs::rename(&staging, &target) {
        let _ = std::fs::remove_dir_all(&staging);
        if !installed(root) {
            return Err(e.into());
        }
    }
    Ok(())
}

fn unpack(tarball: &[u8], into: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tarball));
    let mut total = 0u64;
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path()?.into_owned();
        let Some(rel) = kept(&path) else {
            continue;
        };
        total += entry.size();
        if total > MAX_UNPACKED {
            return Err(io::Error::other(
                "the package unpacks to more than expected",
            ));
        }
        let dest = into.join(&rel);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut data)?;
        std::fs::write(&dest, &data)?;
        let compressible = ["js", "css", "json", "svg"]
            .iter()
            .any(|ext| rel.extension().is_some_and(|e| e == *ext));
        if compressible && data.len() > 1024 {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(&data)?;
            let mut name = dest.into_os_string();
            name.push(".gz");
            std::fs::write(name, gz.finish()?)?;
        }
    }
    if !into.join("converse.min.js").is_file() {
        return Err(io::Error::other("the package has no dist/converse.min.js"));
    }
    Ok(())
}

/// Where an archive member goes, relative to the install directory, if it
/// is kept: `package/dist/**` but source maps, and the licence files.
fn kept(path: &Path) -> Option<PathBuf> {
    // Only plain names: no `..`, no absolute paths, no prefixes.
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    let rel = path.strip_prefix("package").ok()?;
    if let Ok(dist) = rel.strip_prefix("dist") {
        let map = dist.extension().is_some_and(|e| e == "map");
        return (!map && dist.components().next().is_some()).then(|| dist.to_path_buf());
    }
    let name = rel.to_str()?;
    matches!(
        name,
        "LICENSE" | "LICENSE.txt" | "COPYRIGHT" | "package.json"
    )
    .then(|| rel.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dist_files_and_licences_are_kept() {
        let k = |p: &str| kept(Path::new(p)).map(|p| p.display().to_string());
        assert_eq!(
            k("package/dist/converse.min.js").as_deref(),
            Some("converse.min.js")
        );
        assert_eq!(
            k("package/dist/chunkjs/locales/de-LC_MESSAGES-converse-po.js").as_deref(),
            Some("chunkjs/locales/de-LC_MESSAGES-converse-po.js")
        );
        assert_eq!(k("package/dist/converse.min.js.map"), None);
        assert_eq!(k("package/LICENSE").as_deref(), Some("LICENSE"));
        assert_eq!(k("package/src/index.js"), None);
        assert_eq!(k("package/dist/../../etc/passwd"), None);
        assert_eq!(k("/package/dist/x.js"), None);
    }

    #[test]
    fn a_tarball_with_another_checksum_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = install(tmp.path(), b"not the release").unwrap_err();
        assert!(matches!(err, FetchError::Checksum(_)), "{err}");
        assert!(!installed(tmp.path()));
    }
}
