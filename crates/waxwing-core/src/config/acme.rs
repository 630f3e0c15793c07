//! `[acme]`, validated: certificates from an ACME (RFC 8555) certificate
//! authority for every host and its service domains.

use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, raw};

/// Let's Encrypt's production directory, the default CA.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How a name's control is proven to the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// RFC 8555 §8.3: a file under `/.well-known/acme-challenge/` on the
    /// plain HTTP listener (validators connect to port 80).
    Http01,
    /// RFC 8737: a special certificate for the `acme-tls/1` protocol on the
    /// direct-TLS listeners (validators connect to port 443).
    TlsAlpn01,
}

impl ChallengeKind {
    pub fn name(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// `[acme]`.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    pub enabled: bool,
    /// The CA's directory URL (`https://`).
    pub directory: String,
    /// `mailto:` URIs for the account (expiry warnings, policy changes).
    pub contact: Vec<String>,
    /// PEM roots that the CA's HTTPS certificate chains to, for private
    /// CAs (step-ca, pebble); `None`: the usual web roots.
    pub ca_file: Option<PathBuf>,
    /// Renew this long before a certificate's not-after (capped at a third
    /// of its lifetime for short-lived certificates).
    pub renew_before: Duration,
    /// In the operator's order of preference; the first one the CA offers
    /// for a name is used.
    pub challenges: Vec<ChallengeKind>,
    /// The first wait after a failed order; doubled after each failure.
    pub retry_initial: Duration,
    /// The longest wait between attempts.
    pub retry_max: Duration,
    /// Names (hosts or service domains) not to request: for instance a
    /// service domain without a DNS record.
    pub exclude: Vec<String>,
}

pub(super) fn acme_config(
    a: &raw::Acme,
    http_plain: bool,
    direct_tls: bool,
    source: &str,
) -> Result<AcmeConfig, ConfigError> {
    let err = |key: &str, message: String| ConfigError::in_table(source, "acme", key, message);
    let mut challenges = Vec::new();
    for c in &a.challenges {
        let kind = match c.as_str() {
            "http-01" => ChallengeKind::Http01,
            "tls-alpn-01" => ChallengeKind::TlsAlpn01,
            other => {
                return Err(err(
                    "challenges",
                    format!("challenge {other:?}: expected \"http-01\" or \"tls-alpn-01\""),
                ));
            }
        };
        if challenges.contains(&kind) {
            return Err(err("challenges", format!("{c:?} is listed twice")));
        }
        challenges.push(kind);
    }
    let contact = a
        .contact
        .iter()
        .map(|c| {
            let address = c.strip_prefix("mailto:").unwrap_or(c);
            let valid = address.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !address.chars().any(|ch| ch.is_whitespace() || ch == ',')
            });
            if valid {
                Ok(format!("mailto:{address}"))
            } else {
                Err(err(
                    "contact",
                    format!("contact {c:?} is not an e-mail address"),
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if a.enabled {
        if !a.terms_agreed {
            return Err(err(
                "enabled",
                "[acme] is enabled but terms_agreed is not true: read the CA's terms of \
                 service (its directory links them) and set terms_agreed = true"
                    .into(),
            ));
        }
        if !a.directory.starts_with("https://") {
            return Err(err(
                "directory",
                format!(
                    "directory {:?}: RFC 8555 requires an https:// URL",
                    a.directory
                ),
            ));
        }
        if challenges.is_empty() {
            return Err(err("challenges", "no challenge type is enabled".into()));
        }
        if challenges == [ChallengeKind::Http01] && !http_plain {
            return Err(err(
                "challenges",
                "http-01 needs a plain HTTP listener ([listen] http), reachable on port 80".into(),
            ));
        }
        if challenges == [ChallengeKind::TlsAlpn01] && !direct_tls {
            return Err(err(
                "challenges",
                "tls-alpn-01 needs a direct-TLS listener ([listen] https or c2s_direct_tls), \
                 reachable on port 443"
                    .into(),
            ));
        }
        if let Some(path) = &a.ca_file
            && !std::path::Path::new(path).is_file()
        {
            return Err(err("ca_file", format!("ca_file {path:?} does not exist")));
        }
    }
    if a.retry_max_secs < a.retry_initial_secs {
        return Err(err(
            "retry_max_secs",
            "retry_max_secs is shorter than retry_initial_secs".into(),
        ));
    }
    let exclude = a.exclude.iter().map(|n| n.to_ascii_lowercase()).collect();
    Ok(AcmeConfig {
        enabled: a.enabled,
        directory: a.directory.clone(),
        contact,
        ca_file: a.ca_file.as_ref().map(PathBuf::from),
        renew_before: Duration::from_secs(u64::from(a.renew_before_days) * 86_400),
        challenges,
        retry_initial: Duration::from_secs(a.retry_initial_secs),
        retry_max: Duration::from_secs(a.retry_max_secs),
        exclude,
    })
}

impl super::Config {
    /// The names one certificate for `host` covers: the host and the
    /// service domains this server answers for under it (group chat,
    /// publish-subscribe, upload, the SOCKS5 proxy, the link-local
    /// gateway), less `[acme] exclude`. External components' domains are
    /// left out: their DNS is the component operator's business.
    pub fn certificate_names(&self, host: &str) -> Vec<String> {
        let Some(i) = self.hosts.iter().position(|h| h == host) else {
            return Vec::new();
        };
        let loaded = |module: &str| !self.modules_disabled.iter().any(|m| m == module);
        let mut names = vec![host.to_string()];
        if loaded("muc") {
            names.extend(self.muc.domains.get(i).cloned());
        }
        if loaded("pubsub") {
            names.push(format!("pubsub.{host}"));
        }
        // The binary loads upload only where its URLs can be reached.
        let http = !self.http.listen.is_empty()
            || !self.http.listen_tls.is_empty()
            || self.http.public_url.is_some();
        if loaded("upload") && http {
            names.extend(self.upload.domains.get(i).cloned());
        }
        names.extend(self.proxy65.domains.get(i).cloned());
        if self.link_local.enabled {
            names.extend(self.link_local.gateways.get(i).cloned());
        }
        names.retain(|n| !self.acme.exclude.contains(n));
        names.dedup();
        names
    }

    /// The hosts whose certificates come from ACME: all of them when
    /// `[acme]` is enabled, except those with a `[[tls.certificates]]` entry.
    pub fn acme_hosts(&self) -> Vec<String> {
        if !self.acme.enabled {
            return Vec::new();
        }
        self.hosts
            .iter()
            .filter(|h| !self.certificates.iter().any(|c| &c.host == *h))
            .filter(|h| !self.acme.exclude.contains(*h))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    const ON: &str = "[acme]\nenabled = true\nterms_agreed = true\n";

    #[test]
    fn off_by_default_with_lets_encrypt_and_http_01() {
        let c = Config::parse("").unwrap();
        assert!(!c.acme.enabled);
        assert_eq!(c.acme.directory, super::LETS_ENCRYPT);
        assert_eq!(c.acme.challenges, [super::ChallengeKind::Http01]);
        assert_eq!(c.acme.renew_before.as_secs(), 30 * 86_400);
        assert!(c.acme_hosts().is_empty());
    }

    #[test]
    fn enabling_requires_agreeing_to_the_terms_and_a_usable_listener() {
        let e = Config::parse("[acme]\nenabled = true\n").unwrap_err();
        assert!(e.to_string().contains("terms_agreed"), "{e}");
        assert_eq!(e.line, Some(2));
        let e = Config::parse(&format!("{ON}directory = \"http://ca.example/dir\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("https://"), "{e}");
        let e = Config::parse(&format!(
            "[listen]\nc2s = [\"127.0.0.1:5222\"]\n{ON}challenges = [\"http-01\"]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("plain HTTP listener"), "{e}");
        let e = Config::parse(&format!("{ON}challenges = [\"dns-01\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dns-01"), "{e}");
        let e = Config::parse(&format!("{ON}contact = [\"not an address\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("e-mail"), "{e}");
        let e = Config::parse(&format!("{ON}renew_before_days = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("renew_before_days"), "{e}");
    }

    #[test]
    fn names_are_the_host_and_its_service_domains() {
        let c = Config::parse(&format!(
            "hosts = [\"a.example\", \"b.example\"]\n\
             [[tls.certificates]]\nhost = \"b.example\"\ncert = \"b.crt\"\nkey = \"b.key\"\n\
             [proxy65]\nenabled = true\nlisten = [\"127.0.0.1:7777\"]\n\
             {ON}contact = [\"ops@a.example\"]\nexclude = [\"proxy.a.example\"]\n"
        ))
        .unwrap();
        assert_eq!(c.acme_hosts(), ["a.example"]);
        assert_eq!(c.acme.contact, ["mailto:ops@a.example"]);
        assert_eq!(
            c.certificate_names("a.example"),
            [
                "a.example",
                "conference.a.example",
                "pubsub.a.example",
                "upload.a.example"
            ]
        );
    }
}
