//! `[listen] http`/`https`, `[http]` and `[upload]`, validated.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use waxwing_proto::jid::BareJid;

use super::{ConfigError, raw};

/// The HTTP listener and what every route shares.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Plain HTTP listeners.
    pub listen: Vec<SocketAddr>,
    /// HTTPS listeners (the hosts' certificates, chosen by SNI).
    pub listen_tls: Vec<SocketAddr>,
    /// `scheme://authority[/path]` without a trailing slash, when configured.
    pub public_url: Option<String>,
    /// Normalised origins (`scheme://host[:port]`, lower case) allowed
    /// besides the server's own; `any_origin` for `"*"`.
    pub allowed_origins: Vec<String>,
    pub any_origin: bool,
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    /// `None`: no `Strict-Transport-Security` header.
    pub hsts_max_age: Option<u64>,
    pub web_client: bool,
}

/// XEP-0363 HTTP File Upload.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    pub enabled: bool,
    /// One service domain per host, in host order (`upload.example.org`).
    pub domains: Vec<String>,
    pub dir: PathBuf,
    pub max_file_bytes: u64,
    pub quota_bytes: u64,
    pub slot_timeout: Duration,
    /// `None`: files are kept until their owner's account is removed.
    pub retention: Option<Duration>,
}

pub(super) fn http_config(
    listen: &raw::Listen,
    h: &raw::Http,
    source: &str,
) -> Result<HttpConfig, ConfigError> {
    let addrs = |list: &[String], key: &str| -> Result<Vec<SocketAddr>, ConfigError> {
        list.iter()
            .map(|a| {
                a.parse().map_err(|e| {
                    ConfigError::in_table(
                        source,
                        "listen",
                        key,
                        format!("{a:?} is not an address:port ({e})"),
                    )
                })
            })
            .collect()
    };
    let public_url = match &h.public_url {
        None => None,
        Some(u) => Some(base_url(u).ok_or_else(|| {
            ConfigError::in_table(
                source,
                "http",
                "public_url",
                format!(
                    "public_url {u:?} is not an http:// or https:// URL without query or fragment"
                ),
            )
        })?),
    };
    let mut allowed_origins = Vec::new();
    let mut any_origin = false;
    for o in &h.allowed_origins {
        if o == "*" {
            any_origin = true;
            continue;
        }
        match origin_of(o) {
            Some(norm) if base_url(o).is_some_and(|b| b == norm) => allowed_origins.push(norm),
            _ => {
                return Err(ConfigError::in_table(
                    source,
                    "http",
                    "allowed_origins",
                    format!(
                        "allowed origin {o:?} is not \"*\" or scheme://host[:port] (http or https, no path)"
                    ),
                ));
            }
        }
    }
    Ok(HttpConfig {
        listen: addrs(&listen.http, "http")?,
        listen_tls: addrs(&listen.https, "https")?,
        public_url,
        allowed_origins,
        any_origin,
        max_body_bytes: h.max_body_bytes,
        header_read_timeout: Duration::from_secs(h.header_read_timeout_secs),
        request_timeout: Duration::from_secs(h.request_timeout_secs),
        max_connections: h.max_connections,
        hsts_max_age: (h.hsts_max_age_secs > 0).then_some(h.hsts_max_age_secs),
        web_client: h.web_client,
    })
}

pub(super) fn upload_config(
    u: &raw::Upload,
    hosts: &[String],
    data_dir: &Path,
    source: &str,
) -> Result<UploadConfig, ConfigError> {
    let mut domains = Vec::new();
    if u.enabled {
        for h in hosts {
            let d = BareJid::domain_only(&format!("{}.{h}", u.subdomain))
                .map_err(|e| {
                    ConfigError::in_table(
                        source,
                        "upload",
                        "subdomain",
                        format!(
                            "subdomain {:?} gives no valid domain under {h:?}: {e}",
                            u.subdomain
                        ),
                    )
                })?
                .domain()
                .to_string();
            if hosts.contains(&d) {
                return Err(ConfigError::in_table(
                    source,
                    "upload",
                    "subdomain",
                    format!("upload domain {d:?} is also a virtual host"),
                ));
            }
            domains.push(d);
        }
    }
    Ok(UploadConfig {
        enabled: u.enabled,
        domains,
        dir: u
            .dir
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("upload")),
        max_file_bytes: u.max_file_bytes,
        quota_bytes: u.quota_bytes,
        slot_timeout: Duration::from_secs(u.slot_timeout_secs),
        retention: (u.retention_days > 0)
            .then(|| Duration::from_secs(u64::from(u.retention_days) * 86_400)),
    })
}

/// `url` as `scheme://authority[/path]` (lower-case scheme and host, no
/// trailing slash), if it is an absolute http(s) URL without query or fragment.
pub fn base_url(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = uri.authority()?;
    if authority.as_str().contains('@') || uri.query().is_some() || url.contains('#') {
        return None;
    }
    let path = uri.path().trim_end_matches('/');
    Some(format!(
        "{scheme}://{}{path}",
        authority.as_str().to_ascii_lowercase()
    ))
}

/// The origin (`scheme://host[:port]`, lower case, default port left out)
/// of an absolute http(s) URL.
pub fn origin_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = uri.authority()?;
    let host = authority.host().to_ascii_lowercase();
    Some(match authority.port_u16() {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_and_origins_are_normalised() {
        assert_eq!(
            base_url("HTTPS://Chat.Example.org/").as_deref(),
            Some("https://chat.example.org")
        );
        assert_eq!(
            base_url("https://example.org:8443/xmpp/").as_deref(),
            Some("https://example.org:8443/xmpp")
        );
        assert_eq!(base_url("ftp://example.org"), None);
        assert_eq!(base_url("https://u@example.org"), None);
        assert_eq!(base_url("https://example.org/?q"), None);
        assert_eq!(base_url("example.org"), None);
        assert_eq!(
            origin_of("https://Example.org:443/x").as_deref(),
            Some("https://example.org")
        );
        assert_eq!(
            origin_of("http://[::1]:5280").as_deref(),
            Some("http://[::1]:5280")
        );
    }
}
