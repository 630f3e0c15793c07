//! Configuration: `raw` mirrors the TOML file, [`Config`] is the validated
//! form that the rest of the server reads.

pub mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use waxwing_proto::jid::BareJid;

/// A configuration mistake, with the 1-based line it was found on when known.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct ConfigError {
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    fn at(source: &str, key: &str, message: String) -> Self {
        ConfigError {
            line: find_key_line(source, key),
            message,
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub hosts: Vec<String>,
    pub admins: Vec<BareJid>,
    pub c2s: Vec<SocketAddr>,
    pub c2s_direct_tls: Vec<SocketAddr>,
    pub require_encryption: bool,
    pub certificates: Vec<CertificatePaths>,
    pub database_url: String,
    pub scram_iterations: u32,
    pub allow_plain: bool,
    pub max_auth_failures: u32,
    pub max_auth_failures_per_ip: u32,
    pub max_auth_failures_per_account: u32,
    pub auth_failure_window: Duration,
    pub registration_open: bool,
    pub min_password_length: usize,
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    pub max_attributes: usize,
    pub auth_timeout: Duration,
    pub outbound_queue: usize,
    pub offline_quota: u32,
    pub max_resources: usize,
    pub max_connections_per_ip: u32,
    pub read_rate_bytes: u64,
    pub read_burst_bytes: u64,
    pub stanza_timeout: Duration,
    pub idle_timeout: Duration,
    pub resume_timeout: Duration,
    pub log_level: String,
    pub log_json: bool,
}

/// PEM files for one host.
#[derive(Debug, Clone)]
pub struct CertificatePaths {
    pub host: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    /// The zero-config server: `localhost`, SQLite and a self-signed certificate under `./data/`.
    pub fn embedded_default() -> Self {
        Self::from_raw(raw::File::default(), "").expect("built-in defaults are valid")
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|e| ConfigError {
            line: None,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        Self::parse(&source)
    }

    /// Parses and validates TOML text.
    pub fn parse(source: &str) -> Result<Self, ConfigError> {
        let file: raw::File = toml::from_str(source).map_err(|e| ConfigError {
            line: e.span().map(|s| line_of(source, s.start)),
            message: e.message().trim().to_string(),
        })?;
        Self::from_raw(file, source)
    }

    fn from_raw(f: raw::File, source: &str) -> Result<Self, ConfigError> {
        if f.hosts.is_empty() {
            return Err(ConfigError::at(
                source,
                "hosts",
                "at least one host is required".into(),
            ));
        }
        let mut hosts = Vec::new();
        for h in &f.hosts {
            let jid = BareJid::domain_only(h).map_err(|e| {
                ConfigError::at(
                    source,
                    "hosts",
                    format!("host {h:?} is not a valid domain: {e}"),
                )
            })?;
            let domain = jid.domain().to_string();
            if hosts.contains(&domain) {
                return Err(ConfigError::at(
                    source,
                    "hosts",
                    format!("host {h:?} is listed twice"),
                ));
            }
            hosts.push(domain);
        }
        let admins = f
            .admins
            .iter()
            .map(|a| {
                BareJid::parse(a).map_err(|e| {
                    ConfigError::at(
                        source,
                        "admins",
                        format!("admin {a:?} is not a valid bare JID: {e}"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let addrs = |list: &[String], key: &str| -> Result<Vec<SocketAddr>, ConfigError> {
            list.iter()
                .map(|a| {
                    a.parse().map_err(|e| {
                        ConfigError::at(source, key, format!("{a:?} is not an address:port ({e})"))
                    })
                })
                .collect()
        };
        let c2s = addrs(&f.listen.c2s, "c2s")?;
        let c2s_direct_tls = addrs(&f.listen.c2s_direct_tls, "c2s_direct_tls")?;
        let data_dir = PathBuf::from(&f.data_dir);
        let mut certificates = Vec::new();
        for c in f.tls.certificates {
            let host = BareJid::domain_only(&c.host)
                .map_err(|e| {
                    ConfigError::at(
                        source,
                        "host",
                        format!("certificate host {:?}: {e}", c.host),
                    )
                })?
                .domain()
                .to_string();
            if !hosts.contains(&host) {
                return Err(ConfigError::at(
                    source,
                    "host",
                    format!("certificate for {host:?}, which is not in `hosts`"),
                ));
            }
            certificates.push(CertificatePaths {
                host,
                cert: c.cert.into(),
                key: c.key.into(),
            });
        }
        let database_url = match f.storage.database {
            Some(url) if url.starts_with("sqlite:") => url,
            Some(url) => {
                return Err(ConfigError::at(
                    source,
                    "database",
                    format!("unsupported database URL {url:?}: expected sqlite://PATH"),
                ));
            }
            None => format!("sqlite://{}", data_dir.join("waxwing.db").display()),
        };
        if f.auth.scram_iterations < 4096 {
            return Err(ConfigError::at(
                source,
                "scram_iterations",
                "scram_iterations below 4096 is refused (RFC 7677 §4)".into(),
            ));
        }
        let l = &f.limits;
        let positive = [
            ("max_stanza_bytes", l.max_stanza_bytes as u64),
            ("max_depth", l.max_depth as u64),
            ("max_attributes", l.max_attributes as u64),
            ("auth_timeout_secs", l.auth_timeout_secs),
            ("outbound_queue", l.outbound_queue as u64),
            ("max_resources", l.max_resources as u64),
            (
                "max_failures_per_stream",
                f.auth.max_failures_per_stream as u64,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::at(
                    source,
                    key,
                    format!("{key} must be greater than 0"),
                ));
            }
        }
        if l.max_stanza_bytes < 10_000 {
            return Err(ConfigError::at(
                source,
                "max_stanza_bytes",
                "max_stanza_bytes below 10000 is refused (RFC 6120 §13.12 requires at least 10000)"
                    .into(),
            ));
        }
        if l.read_burst_bytes < l.max_stanza_bytes as u64 {
            return Err(ConfigError::at(
                source,
                "read_burst_bytes",
                "read_burst_bytes must be at least max_stanza_bytes, or a maximal stanza could never be read at once".into(),
            ));
        }
        let log_json = match f.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(ConfigError::at(
                    source,
                    "format",
                    format!("log format {other:?}: expected \"text\" or \"json\""),
                ));
            }
        };
        Ok(Config {
            data_dir,
            hosts,
            admins,
            c2s,
            c2s_direct_tls,
            require_encryption: f.tls.require_encryption,
            certificates,
            database_url,
            scram_iterations: f.auth.scram_iterations,
            allow_plain: f.auth.allow_plain,
            max_auth_failures: f.auth.max_failures_per_stream,
            max_auth_failures_per_ip: f.auth.max_failures_per_ip,
            max_auth_failures_per_account: f.auth.max_failures_per_account,
            auth_failure_window: Duration::from_secs(f.auth.failure_window_secs),
            registration_open: f.registration.open,
            min_password_length: f.registration.min_password_length,
            max_stanza_bytes: l.max_stanza_bytes,
            max_depth: l.max_depth,
            max_attributes: l.max_attributes,
            auth_timeout: Duration::from_secs(l.auth_timeout_secs),
            outbound_queue: l.outbound_queue,
            offline_quota: f.limits.offline_quota,
            max_resources: l.max_resources,
            max_connections_per_ip: l.max_connections_per_ip,
            read_rate_bytes: l.read_rate_bytes,
            read_burst_bytes: l.read_burst_bytes,
            stanza_timeout: Duration::from_secs(l.stanza_timeout_secs),
            idle_timeout: Duration::from_secs(l.idle_timeout_secs),
            resume_timeout: Duration::from_secs(l.resume_timeout_secs),
            log_level: f.log.level,
            log_json,
        })
    }

    /// True when `domain` (already prepared) is one of our virtual hosts.
    pub fn is_local_host(&self, domain: &str) -> bool {
        self.hosts.iter().any(|h| h == domain)
    }
}

fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].matches('\n').count() + 1
}

/// Semantic errors have no serde span; point at the first line that sets the key.
fn find_key_line(source: &str, key: &str) -> Option<usize> {
    source
        .lines()
        .position(|l| {
            let t = l.trim_start();
            t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_zero_config_server() {
        let c = Config::embedded_default();
        assert_eq!(c.hosts, vec!["localhost"]);
        assert!(c.require_encryption);
        assert!(!c.registration_open);
        assert_eq!(c.database_url, "sqlite://./data/waxwing.db");
    }

    #[test]
    fn example_file_is_valid() {
        let src = include_str!("../../../../waxwing.example.toml");
        Config::parse(src).expect("example config parses");
    }

    #[test]
    fn unknown_key_reports_its_line() {
        let e =
            Config::parse("hosts = [\"a.example\"]\n\n[limits]\nmax_stanzas = 3\n").unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("max_stanzas"), "{e}");
    }

    #[test]
    fn semantic_error_reports_its_line() {
        let e =
            Config::parse("hosts = [\"ok.example\"]\n[auth]\nscram_iterations = 10\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn invalid_host_is_refused() {
        let e = Config::parse("hosts = [\"bad host\"]\n").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }
}
