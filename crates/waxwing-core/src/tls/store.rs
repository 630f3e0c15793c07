//! The certificates TLS handshakes choose from, swappable while the server
//! runs.
//!
//! The table is replaced whole (`ArcSwap`): a handshake reads the table
//! that is current when its ClientHello arrives, without a lock, and an
//! established connection never looks at it again, so a reload changes what
//! new handshakes get and nothing else. Writers (the file check, SIGHUP,
//! `admin reload`, ACME) compute the next table from the current one under
//! one mutex, so two reloads never lose each other's change; they do file
//! I/O, so they run on a blocking thread, never on a runtime worker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

use super::TlsError;
use super::load::{self, CertInfo};
use crate::config::CertificatePaths;

/// Where a name's certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `[[tls.certificates]]`.
    Configured,
    /// Generated on first start under `<data_dir>/tls`.
    SelfSigned,
    /// Obtained by the server itself (ACME) and installed with
    /// [`CertStore::install`]; re-read from its files like the others.
    Acme,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Configured => "configured",
            SourceKind::SelfSigned => "self-signed",
            SourceKind::Acme => "acme",
        }
    }
}

/// A name's certificate and key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSource {
    pub kind: SourceKind,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One line of `waxwing cert status`.
#[derive(Debug, Clone)]
pub struct CertificateStatus {
    pub name: String,
    pub source: CertSource,
    pub info: CertInfo,
}

/// What a reload did, name by name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CertReload {
    /// Names now served with a certificate they did not have before.
    pub replaced: Vec<String>,
    /// Names whose new files were refused (the old certificate stays), and why.
    pub refused: Vec<(String, String)>,
}

/// The state of both files when they were read: a change of any of these
/// means the files must be read again. `ctime` catches a copy that kept
/// the old modification time; the inode catches a rename over the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    cert: FileStamp,
    key: FileStamp,
}

fn file_stamp(path: &Path) -> Result<FileStamp, TlsError> {
    use std::os::unix::fs::MetadataExt;
    // `metadata` follows symlinks: certbot's live/ links point at new
    // archive files on renewal, and that is the change we are after.
    let m = std::fs::metadata(path).map_err(|e| load::file_error(path, e))?;
    Ok(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

fn stamp(source: &CertSource) -> Result<Stamp, TlsError> {
    Ok(Stamp {
        cert: file_stamp(&source.cert)?,
        key: file_stamp(&source.key)?,
    })
}

struct Entry {
    key: Arc<CertifiedKey>,
    info: CertInfo,
    source: CertSource,
    stamp: Stamp,
}

struct Table {
    by_name: HashMap<String, Arc<Entry>>,
    /// Clients that send no SNI (or an IP literal, or a name we have no
    /// certificate for) get the first host's certificate rather than a
    /// failed handshake: the stream header names the host anyway.
    default: Arc<Entry>,
}

/// Every name's current certificate.
pub struct CertStore {
    table: ArcSwap<Table>,
    /// `<data_dir>/tls`, where self-signed pairs live.
    self_signed_dir: PathBuf,
    /// The virtual hosts, first one first: each always has a certificate
    /// (hosts change only with a restart).
    hosts: Vec<String>,
    /// Held by writers. Remembers the files a check refused, so that a bad
    /// file is reported once rather than at every check, and tried again
    /// as soon as it changes.
    writer: Mutex<HashMap<String, (CertSource, Stamp)>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("names", &self.table.load().by_name.len())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads every host's certificate (generating missing self-signed
    /// ones); any failure stops the start.
    pub(crate) fn load(
        hosts: &[String],
        certificates: &[CertificatePaths],
        data_dir: &Path,
    ) -> Result<Self, TlsError> {
        let self_signed_dir = data_dir.join("tls");
        let mut by_name = HashMap::new();
        for (name, source) in plan(hosts, certificates, &self_signed_dir) {
            let entry = read(&name, &source)?;
            warn_if_unfit(&name, &entry.info, entry.key.cert[0].as_ref());
            by_name.insert(name, Arc::new(entry));
        }
        let default = by_name[&hosts[0]].clone();
        Ok(CertStore {
            table: ArcSwap::from_pointee(Table { by_name, default }),
            self_signed_dir,
            hosts: hosts.to_vec(),
            writer: Mutex::new(HashMap::new()),
        })
    }

    /// The certificate for a handshake that asked for `sni`.
    pub(crate) fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let table = self.table.load();
        sni.and_then(|name| table.by_name.get(&name.to_ascii_lowercase()))
            .unwrap_or(&table.default)
            .key
            .clone()
    }

    /// Every name with its certificate, sorted by name.
    pub fn status(&self) -> Vec<CertificateStatus> {
        let table = self.table.load();
        let mut all: Vec<_> = table
            .by_name
            .iter()
            .map(|(name, e)| CertificateStatus {
                name: name.clone(),
                source: e.source.clone(),
                info: e.info.clone(),
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Re-reads every certificate and key, with `certificates` (a reloaded
    /// `[[tls.certificates]]`) deciding the hosts' files; names installed
    /// with [`install`](Self::install) keep theirs. Blocking file I/O.
    pub fn reload(&self, certificates: &[CertificatePaths]) -> CertReload {
        let current = self.table.load_full();
        let mut plan = plan(&self.hosts, certificates, &self.self_signed_dir);
        for (name, source) in &mut plan {
            // A host without configured files whose certificate ACME
            // installed keeps that one, not the self-signed fallback.
            if let Some(e) = current.by_name.get(name)
                && source.kind == SourceKind::SelfSigned
                && e.source.kind == SourceKind::Acme
            {
                *source = e.source.clone();
            }
        }
        plan.extend(
            current
                .by_name
                .iter()
                .filter(|(name, _)| !self.hosts.contains(name))
                .map(|(name, e)| (name.clone(), e.source.clone())),
        );
        self.update(plan, true)
    }

    /// Reads again the files that changed since they were last read (the
    /// periodic check). Blocking file I/O.
    pub fn check(&self) -> CertReload {
        let plan = self
            .table
            .load()
            .by_name
            .iter()
            .map(|(name, e)| (name.clone(), e.source.clone()))
            .collect();
        self.update(plan, false)
    }

    /// Serves `name` from `source` from now on (ACME after issuing or
    /// renewing); the pair must load, else the old one stays and the error
    /// is returned. Blocking file I/O.
    pub fn install(&self, name: &str, source: CertSource) -> Result<CertInfo, TlsError> {
        let mut refused = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = read(name, &source)?;
        check_validity(&entry.info).map_err(|message| TlsError::File {
            path: source.cert.display().to_string(),
            message,
        })?;
        let info = entry.info.clone();
        refused.remove(name);
        let current = self.table.load_full();
        let mut by_name = current.by_name.clone();
        by_name.insert(name.to_string(), Arc::new(entry));
        self.store(by_name);
        tracing::info!(name, sha256 = %info.sha256, "certificate installed");
        Ok(info)
    }

    fn update(&self, plan: Vec<(String, CertSource)>, force: bool) -> CertReload {
        let mut refused = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.table.load_full();
        let mut by_name = current.by_name.clone();
        let mut report = CertReload::default();
        for (name, source) in plan {
            let old = current.by_name.get(&name);
            if source.kind == SourceKind::SelfSigned
                && let Err(e) = load::ensure_self_signed(&self.self_signed_dir, &name)
            {
                refuse(&mut report, &name, e.to_string());
                continue;
            }
            let now = match stamp(&source) {
                Ok(s) => s,
                Err(e) => {
                    if force || refused.get(&name).is_none_or(|(s, _)| s != &source) {
                        refuse(&mut report, &name, e.to_string());
                    }
                    if let Some(old) = old {
                        // Remembered with the old stamp: retried when the
                        // file is back, whatever its times.
                        refused.insert(name, (source, old.stamp));
                    }
                    continue;
                }
            };
            let unchanged = old.is_some_and(|o| o.source == source && o.stamp == now)
                || refused.get(&name) == Some(&(source.clone(), now));
            if unchanged && !force {
                continue;
            }
            let loaded = read(&name, &source).and_then(|entry| {
                check_validity(&entry.info)
                    .map(|()| entry)
                    .map_err(|message| TlsError::File {
                        path: source.cert.display().to_string(),
                        message,
                    })
            });
            match loaded {
                Ok(entry) => {
                    refused.remove(&name);
                    if old.is_some_and(|o| o.info.sha256 == entry.info.sha256 && o.source == source)
                    {
                        // Touched, not changed: note the new stamp quietly.
                        by_name.insert(name, Arc::new(entry));
                        continue;
                    }
                    warn_if_unfit(&name, &entry.info, entry.key.cert[0].as_ref());
                    tracing::info!(
                        name,
                        source = source.kind.name(),
                        path = %source.cert.display(),
                        sha256 = %entry.info.sha256,
                        not_after = %waxwing_proto::datetime::format(entry.info.not_after),
                        "certificate loaded; new TLS handshakes use it"
                    );
                    report.replaced.push(name.clone());
                    by_name.insert(name, Arc::new(entry));
                }
                Err(e) => {
                    refuse(&mut report, &name, e.to_string());
                    refused.insert(name, (source, now));
                }
            }
        }
        self.store(by_name);
        report
    }

    fn store(&self, by_name: HashMap<String, Arc<Entry>>) {
        let default = by_name[&self.hosts[0]].clone();
        self.table.store(Arc::new(Table { by_name, default }));
    }
}

fn refuse(report: &mut CertReload, name: &str, why: String) {
    tracing::error!(
        name,
        error = %why,
        "new certificate refused; the previous one is still served"
    );
    report.refused.push((name.to_string(), why));
}

/// The hosts' certificate files: configured, else self-signed.
fn plan(
    hosts: &[String],
    certificates: &[CertificatePaths],
    self_signed_dir: &Path,
) -> Vec<(String, CertSource)> {
    hosts
        .iter()
        .map(|host| {
            let source = match certificates.iter().find(|c| &c.host == host) {
                Some(c) => CertSource {
                    kind: SourceKind::Configured,
                    cert: c.cert.clone(),
                    key: c.key.clone(),
                },
                None => {
                    let (cert, key) = load::self_signed_paths(self_signed_dir, host);
                    CertSource {
                        kind: SourceKind::SelfSigned,
                        cert,
                        key,
                    }
                }
            };
            (host.clone(), source)
        })
        .collect()
}

fn read(name: &str, source: &CertSource) -> Result<Entry, TlsError> {
    if source.kind == SourceKind::SelfSigned
        && let Some(dir) = source.cert.parent()
    {
        load::ensure_self_signed(dir, name)?;
    }
    // Stamped before reading: a write that lands during the read changes
    // the stamp again, so the next check reads the files once more.
    let stamp = stamp(source)?;
    let loaded = load::load_pair(&source.cert, &source.key)?;
    Ok(Entry {
        key: loaded.key,
        info: loaded.info,
        source: source.clone(),
        stamp,
    })
}

/// A replacement must be usable now: swapping a working certificate for
/// an expired (or not yet valid) one would break every new handshake.
fn check_validity(info: &CertInfo) -> Result<(), String> {
    let now = SystemTime::now();
    if info.not_after < now {
        return Err(format!(
            "the certificate expired at {}",
            waxwing_proto::datetime::format(info.not_after)
        ));
    }
    if info.not_before > now {
        return Err(format!(
            "the certificate is not valid before {}",
            waxwing_proto::datetime::format(info.not_before)
        ));
    }
    Ok(())
}

/// At start a certificate that does not fit is served anyway (there is no
/// other), but the operator hears of it.
fn warn_if_unfit(name: &str, info: &CertInfo, leaf: &[u8]) {
    if let Err(why) = check_validity(info) {
        tracing::warn!(name, "{why}");
    }
    if !crate::s2s::identity::cert_matches_domain(leaf, name) {
        tracing::warn!(name, names = ?info.names, "the certificate does not name this domain");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(cert: &Path, key: &Path, host: &str) -> String {
        let g = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
        std::fs::write(key, g.signing_key.serialize_pem()).unwrap();
        std::fs::write(cert, g.cert.pem()).unwrap();
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(g.cert.der()))
    }

    fn fingerprint(store: &CertStore, sni: &str) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(store.pick(Some(sni)).cert[0].as_ref()))
    }

    struct Setup {
        dir: tempfile::TempDir,
        store: CertStore,
        configured: Vec<CertificatePaths>,
        first: String,
    }

    /// Two hosts: a.example with configured files, b.example self-signed.
    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("a.crt"), dir.path().join("a.key"));
        let first = write_pair(&cert, &key, "a.example");
        let configured = vec![CertificatePaths {
            host: "a.example".into(),
            cert,
            key,
        }];
        let hosts = ["a.example".to_string(), "b.example".to_string()];
        let store = CertStore::load(&hosts, &configured, dir.path()).unwrap();
        Setup {
            dir,
            store,
            configured,
            first,
        }
    }

    #[test]
    fn names_get_their_own_certificate_and_others_the_first_hosts() {
        let s = setup();
        assert_eq!(fingerprint(&s.store, "a.example"), s.first);
        assert_eq!(fingerprint(&s.store, "A.EXAMPLE"), s.first);
        assert_ne!(fingerprint(&s.store, "b.example"), s.first);
        assert_eq!(fingerprint(&s.store, "unknown.example"), s.first);
        assert!(s.dir.path().join("tls/b.example.crt").exists());
        let status = s.store.status();
        assert_eq!(status.len(), 2);
        assert_eq!(status[0].source.kind, SourceKind::Configured);
        assert_eq!(status[1].source.kind, SourceKind::SelfSigned);
        assert_eq!(status[1].info.names, ["b.example"]);
    }

    #[test]
    fn a_changed_file_is_picked_up_by_the_check_and_an_unchanged_one_is_not() {
        let s = setup();
        assert_eq!(s.store.check(), CertReload::default());
        let c = &s.configured[0];
        let second = write_pair(&c.cert, &c.key, "a.example");
        let report = s.store.check();
        assert_eq!(report.replaced, ["a.example"]);
        assert_eq!(fingerprint(&s.store, "a.example"), second);
        assert_eq!(s.store.check(), CertReload::default());
    }

    #[test]
    fn a_bad_new_file_is_refused_once_and_the_old_certificate_stays() {
        let s = setup();
        let c = &s.configured[0];
        std::fs::write(&c.cert, "not a certificate").unwrap();
        let report = s.store.check();
        assert_eq!(report.refused.len(), 1, "{report:?}");
        assert_eq!(report.refused[0].0, "a.example");
        assert_eq!(fingerprint(&s.store, "a.example"), s.first);
        // The same bad file is not reported at every check...
        assert_eq!(s.store.check(), CertReload::default());
        // ...but an explicit reload reads it again and refuses it again.
        assert_eq!(s.store.reload(&s.configured).refused.len(), 1);
        // A fixed file is taken.
        let third = write_pair(&c.cert, &c.key, "a.example");
        assert_eq!(s.store.check().replaced, ["a.example"]);
        assert_eq!(fingerprint(&s.store, "a.example"), third);
    }

    #[test]
    fn a_missing_file_is_refused_and_the_old_certificate_stays() {
        let s = setup();
        std::fs::remove_file(&s.configured[0].key).unwrap();
        assert_eq!(s.store.check().refused.len(), 1);
        assert_eq!(fingerprint(&s.store, "a.example"), s.first);
        assert_eq!(s.store.check(), CertReload::default());
    }

    #[test]
    fn a_half_written_pair_is_refused_then_taken_when_the_key_arrives() {
        let s = setup();
        let c = &s.configured[0];
        let g = rcgen::generate_simple_self_signed(vec!["a.example".to_string()]).unwrap();
        std::fs::write(&c.cert, g.cert.pem()).unwrap();
        let report = s.store.check();
        assert!(
            report.refused[0].1.contains("does not belong"),
            "{report:?}"
        );
        assert_eq!(fingerprint(&s.store, "a.example"), s.first);
        std::fs::write(&c.key, g.signing_key.serialize_pem()).unwrap();
        assert_eq!(s.store.check().replaced, ["a.example"]);
        use sha2::Digest;
        assert_eq!(
            fingerprint(&s.store, "a.example"),
            hex::encode(sha2::Sha256::digest(g.cert.der()))
        );
    }

    #[test]
    fn an_expired_replacement_is_refused() {
        let s = setup();
        let c = &s.configured[0];
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(&c.key, key.serialize_pem()).unwrap();
        std::fs::write(&c.cert, cert.pem()).unwrap();
        let report = s.store.check();
        assert!(report.refused[0].1.contains("expired"), "{report:?}");
        assert_eq!(fingerprint(&s.store, "a.example"), s.first);
    }

    #[test]
    fn a_reload_follows_new_paths_and_back_to_self_signed() {
        let s = setup();
        let (cert, key) = (s.dir.path().join("b.crt"), s.dir.path().join("b.key"));
        let b = write_pair(&cert, &key, "b.example");
        let mut configured = s.configured.clone();
        configured.push(CertificatePaths {
            host: "b.example".into(),
            cert,
            key,
        });
        assert_eq!(s.store.reload(&configured).replaced, ["b.example"]);
        assert_eq!(fingerprint(&s.store, "b.example"), b);
        assert_eq!(s.store.reload(&s.configured).replaced, ["b.example"]);
        assert_ne!(fingerprint(&s.store, "b.example"), b);
        assert_eq!(s.store.status()[1].source.kind, SourceKind::SelfSigned);
    }

    #[test]
    fn an_installed_name_is_served_and_rechecked() {
        let s = setup();
        let (cert, key) = (s.dir.path().join("c.crt"), s.dir.path().join("c.key"));
        let c = write_pair(&cert, &key, "conference.a.example");
        let source = CertSource {
            kind: SourceKind::Acme,
            cert: cert.clone(),
            key: key.clone(),
        };
        s.store
            .install("conference.a.example", source.clone())
            .unwrap();
        assert_eq!(fingerprint(&s.store, "conference.a.example"), c);
        let c2 = write_pair(&cert, &key, "conference.a.example");
        assert_eq!(s.store.check().replaced, ["conference.a.example"]);
        assert_eq!(fingerprint(&s.store, "conference.a.example"), c2);
        // A reload of the configuration keeps installed names.
        s.store.reload(&s.configured);
        assert_eq!(fingerprint(&s.store, "conference.a.example"), c2);
    }
}
