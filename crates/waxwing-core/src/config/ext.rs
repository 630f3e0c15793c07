//! Configuration of the extension points: XEP-0114 external components,
//! XEP-0215 external services (STUN/TURN with TURN REST credentials) and
//! `modules_disabled`. Kept apart from `mod.rs` so that each concern's
//! parsing and checks read in one place.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use waxwing_proto::jid::BareJid;

use super::ConfigError;

/// `[[components]]`: one XEP-0114 external component.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawComponent {
    /// The domain the component serves (`gateway.example.org`).
    pub domain: String,
    /// The shared secret of the handshake.
    pub secret: Option<String>,
    /// A file holding the secret (trailing newline ignored); instead of `secret`.
    pub secret_file: Option<String>,
    /// The name listed in the server's disco#items.
    pub name: Option<String>,
}

/// `[external_services]`: XEP-0215 external service discovery.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawExternalServices {
    /// The shared secret of the TURN REST scheme (coturn's
    /// `static-auth-secret` with `use-auth-secret`).
    pub secret: Option<String>,
    /// A file holding the secret; instead of `secret`.
    pub secret_file: Option<String>,
    /// How long a TURN credential handed out stays valid.
    pub credential_ttl_secs: u64,
    /// The services offered.
    pub services: Vec<RawExternalService>,
}

impl Default for RawExternalServices {
    fn default() -> Self {
        RawExternalServices {
            secret: None,
            secret_file: None,
            credential_ttl_secs: 3600,
            services: Vec::new(),
        }
    }
}

/// `[[external_services.services]]`: one STUN or TURN service.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawExternalService {
    /// "stun", "stuns", "turn" or "turns".
    #[serde(rename = "type")]
    pub kind: String,
    pub host: String,
    pub port: Option<u16>,
    /// "udp" or "tcp"; absent means the client picks.
    pub transport: Option<String>,
    /// A human-readable name.
    pub name: Option<String>,
}

/// A validated `[[components]]` entry.
#[derive(Clone)]
pub struct ComponentConfig {
    /// Prepared (lower-case) domain.
    pub domain: String,
    pub secret: String,
    pub name: String,
}

impl std::fmt::Debug for ComponentConfig {
    // The secret stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentConfig")
            .field("domain", &self.domain)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The validated `[external_services]` table.
#[derive(Clone, Default)]
pub struct ExternalServicesConfig {
    /// TURN REST shared secret; without it, TURN services are listed
    /// without credentials (and need the client to have its own).
    pub secret: Option<String>,
    pub credential_ttl: Duration,
    pub services: Vec<ExternalService>,
}

impl std::fmt::Debug for ExternalServicesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalServicesConfig")
            .field("secret", &self.secret.as_ref().map(|_| "…"))
            .field("credential_ttl", &self.credential_ttl)
            .field("services", &self.services)
            .finish()
    }
}

/// One XEP-0215 service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalService {
    /// "stun", "stuns", "turn" or "turns".
    pub kind: String,
    pub host: String,
    pub port: u16,
    pub transport: Option<String>,
    pub name: Option<String>,
}

impl ExternalService {
    /// TURN services need credentials (XEP-0215 `restricted`).
    pub fn is_turn(&self) -> bool {
        self.kind == "turn" || self.kind == "turns"
    }
}

/// Default port per service type (RFC 5389 §9, RFC 5766 §6 / RFC 7350).
fn default_port(kind: &str) -> u16 {
    match kind {
        "stuns" | "turns" => 5349,
        _ => 3478,
    }
}

/// Reads a secret given inline or in a file; exactly one of the two.
pub(super) fn secret(
    inline: &Option<String>,
    file: &Option<String>,
    what: &str,
    source: &str,
    required: bool,
) -> Result<Option<String>, ConfigError> {
    let s = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::at(
                source,
                "secret_file",
                format!("{what}: give `secret` or `secret_file`, not both"),
            ));
        }
        (Some(s), None) => s.clone(),
        (None, Some(path)) => std::fs::read_to_string(Path::new(path))
            .map_err(|e| {
                ConfigError::at(
                    source,
                    "secret_file",
                    format!("{what}: cannot read secret_file {path:?}: {e}"),
                )
            })?
            .trim_end_matches(['\r', '\n'])
            .to_string(),
        (None, None) if required => {
            return Err(ConfigError::at(
                source,
                "domain",
                format!("{what}: a `secret` or `secret_file` is required"),
            ));
        }
        (None, None) => return Ok(None),
    };
    if s.len() < 16 {
        // The handshake is SHA-1 over a public stream id and the secret: a
        // short secret is found offline from one observed handshake.
        return Err(ConfigError::at(
            source,
            if file.is_some() {
                "secret_file"
            } else {
                "secret"
            },
            format!("{what}: the secret must be at least 16 characters"),
        ));
    }
    Ok(Some(s))
}

/// Validates `[[components]]` against the hosts and the other service domains.
pub(super) fn components(
    raw: &[RawComponent],
    hosts: &[String],
    taken: &[String],
    source: &str,
) -> Result<Vec<ComponentConfig>, ConfigError> {
    let mut out: Vec<ComponentConfig> = Vec::new();
    for c in raw {
        let domain = BareJid::domain_only(&c.domain)
            .map_err(|e| {
                ConfigError::at(
                    source,
                    "domain",
                    format!("component domain {:?} is not a valid domain: {e}", c.domain),
                )
            })?
            .domain()
            .to_string();
        if hosts.contains(&domain) || taken.contains(&domain) {
            return Err(ConfigError::at(
                source,
                "domain",
                format!("component domain {domain:?} is already a host or a service"),
            ));
        }
        if out.iter().any(|o| o.domain == domain) {
            return Err(ConfigError::at(
                source,
                "domain",
                format!("component domain {domain:?} is listed twice"),
            ));
        }
        let what = format!("component {domain}");
        let secret = secret(&c.secret, &c.secret_file, &what, source, true)?
            .expect("required secrets are present");
        out.push(ComponentConfig {
            name: c.name.clone().unwrap_or_else(|| domain.clone()),
            domain,
            secret,
        });
    }
    Ok(out)
}

/// Validates `[external_services]`.
pub(super) fn external_services(
    raw: &RawExternalServices,
    source: &str,
) -> Result<ExternalServicesConfig, ConfigError> {
    let secret = secret(
        &raw.secret,
        &raw.secret_file,
        "[external_services]",
        source,
        false,
    )?;
    let mut services = Vec::new();
    for s in &raw.services {
        let bad = |key: &str, msg: String| Err(ConfigError::at(source, key, msg));
        if !["stun", "stuns", "turn", "turns"].contains(&s.kind.as_str()) {
            return bad(
                "type",
                format!(
                    "external service type {:?}: expected \"stun\", \"stuns\", \"turn\" or \"turns\"",
                    s.kind
                ),
            );
        }
        if let Some(t) = &s.transport
            && t != "udp"
            && t != "tcp"
        {
            return bad(
                "transport",
                format!("transport {t:?}: expected \"udp\" or \"tcp\""),
            );
        }
        let host_ok =
            s.host.parse::<std::net::IpAddr>().is_ok() || BareJid::domain_only(&s.host).is_ok();
        if !host_ok {
            return bad(
                "host",
                format!("{:?} is neither an IP address nor a domain", s.host),
            );
        }
        if s.port == Some(0) {
            return bad("port", "port 0 is not a service port".into());
        }
        services.push(ExternalService {
            kind: s.kind.clone(),
            host: s.host.clone(),
            port: s.port.unwrap_or_else(|| default_port(&s.kind)),
            transport: s.transport.clone(),
            name: s.name.clone(),
        });
    }
    Ok(ExternalServicesConfig {
        secret,
        credential_ttl: Duration::from_secs(raw.credential_ttl_secs),
        services,
    })
}

/// `modules_disabled`: names only; whether each names a module of this
/// build is checked by the binary, which has the module list.
pub(super) fn modules_disabled(raw: &[String], source: &str) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    for m in raw {
        if out.contains(m) {
            return Err(ConfigError::at(
                source,
                "modules_disabled",
                format!("module {m:?} is listed twice in modules_disabled"),
            ));
        }
        out.push(m.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn components_need_a_long_enough_secret_and_their_own_domain() {
        let ok = Config::parse(
            "[[components]]\ndomain = \"GW.localhost\"\nsecret = \"0123456789abcdef\"\n",
        )
        .unwrap();
        assert_eq!(ok.components[0].domain, "gw.localhost");
        assert_eq!(ok.components[0].name, "gw.localhost");
        for (src, why) in [
            ("[[components]]\ndomain = \"gw.localhost\"\n", "required"),
            (
                "[[components]]\ndomain = \"gw.localhost\"\nsecret = \"short\"\n",
                "16 characters",
            ),
            (
                "[[components]]\ndomain = \"localhost\"\nsecret = \"0123456789abcdef\"\n",
                "already a host",
            ),
            (
                "[[components]]\ndomain = \"conference.localhost\"\nsecret = \"0123456789abcdef\"\n",
                "already a host or a service",
            ),
            (
                "[[components]]\ndomain = \"a.localhost\"\nsecret = \"0123456789abcdef\"\n\
                 [[components]]\ndomain = \"a.localhost\"\nsecret = \"0123456789abcdef\"\n",
                "twice",
            ),
        ] {
            let e = Config::parse(src).unwrap_err();
            assert!(e.to_string().contains(why), "{src}: {e}");
            assert!(e.line.is_some(), "{src}: {e}");
        }
    }

    #[test]
    fn component_secret_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.secret");
        std::fs::write(&path, "from-a-file-0123456789\n").unwrap();
        let src = format!(
            "[[components]]\ndomain = \"gw.localhost\"\nsecret_file = {:?}\n",
            path.display().to_string()
        );
        let c = Config::parse(&src).unwrap();
        assert_eq!(c.components[0].secret, "from-a-file-0123456789");
        let both = format!("{src}secret = \"0123456789abcdef\"\n");
        assert!(Config::parse(&both).is_err());
        assert!(!format!("{:?}", c.components[0]).contains("from-a-file"));
    }

    #[test]
    fn external_services_are_validated() {
        let c = Config::parse(
            "[external_services]\nsecret = \"0123456789abcdef\"\n\
             [[external_services.services]]\ntype = \"turn\"\nhost = \"turn.example.org\"\ntransport = \"udp\"\n\
             [[external_services.services]]\ntype = \"stun\"\nhost = \"192.0.2.1\"\nport = 3479\n",
        )
        .unwrap();
        let s = &c.external_services.services;
        assert_eq!((s[0].port, s[0].is_turn()), (3478, true));
        assert_eq!((s[1].port, s[1].is_turn()), (3479, false));
        for bad in [
            "[[external_services.services]]\ntype = \"sip\"\nhost = \"a.example\"\n",
            "[[external_services.services]]\ntype = \"turn\"\nhost = \"a.example\"\ntransport = \"sctp\"\n",
            "[[external_services.services]]\ntype = \"turn\"\nhost = \"not a host\"\n",
            "[external_services]\ncredential_ttl_secs = 0\n",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }
}

/// `[proxy65]`: the XEP-0065 SOCKS5 bytestreams proxy on `proxy.<host>`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy65 {
    /// Off by default: the proxy relays file transfers for local users and
    /// needs a port reachable by their clients.
    pub enabled: bool,
    /// The label before each host: `proxy` gives `proxy.example.org`.
    pub subdomain: String,
    /// Where the SOCKS5 listener binds.
    pub listen: Vec<String>,
    /// The host name or address clients are told to connect to; default:
    /// the listener's address, or the virtual host's domain for a wildcard.
    pub public_host: Option<String>,
    /// Relayed streams one account may have open at once.
    pub max_streams_per_user: u32,
    /// Connections waiting for activation at once, server-wide.
    pub max_pending: u32,
    /// Bytes per second relayed in each direction of one stream.
    pub bandwidth_bytes_per_sec: u64,
    /// A connection not activated within this is closed.
    pub activation_timeout_secs: u64,
    /// A relayed stream with no data either way for this long is closed.
    pub idle_timeout_secs: u64,
}

impl Default for RawProxy65 {
    fn default() -> Self {
        RawProxy65 {
            enabled: false,
            subdomain: "proxy".into(),
            listen: vec!["[::]:7777".into()],
            public_host: None,
            max_streams_per_user: 4,
            max_pending: 256,
            bandwidth_bytes_per_sec: 1_048_576,
            activation_timeout_secs: 30,
            idle_timeout_secs: 300,
        }
    }
}

/// The validated `[proxy65]` table.
#[derive(Debug, Clone, Default)]
pub struct Proxy65Config {
    pub enabled: bool,
    /// `proxy.<host>` for every host (empty when disabled).
    pub domains: Vec<String>,
    pub listen: Vec<std::net::SocketAddr>,
    pub public_host: Option<String>,
    pub max_streams_per_user: u32,
    pub max_pending: u32,
    pub bandwidth_bytes_per_sec: u64,
    pub activation_timeout: Duration,
    pub idle_timeout: Duration,
}

pub(super) fn proxy65(
    raw: &RawProxy65,
    hosts: &[String],
    source: &str,
) -> Result<Proxy65Config, ConfigError> {
    let listen = raw
        .listen
        .iter()
        .map(|a| {
            a.parse().map_err(|e| {
                ConfigError::in_table(
                    source,
                    "proxy65",
                    "listen",
                    format!("[proxy65] listen {a:?} is not an address:port ({e})"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut domains = Vec::new();
    if raw.enabled {
        if listen.is_empty() {
            return Err(ConfigError::in_table(
                source,
                "proxy65",
                "listen",
                "[proxy65] is enabled but has no listen address".into(),
            ));
        }
        for h in hosts {
            let d = BareJid::domain_only(&format!("{}.{h}", raw.subdomain))
                .map_err(|e| {
                    ConfigError::in_table(
                        source,
                        "proxy65",
                        "subdomain",
                        format!("[proxy65] subdomain gives no valid domain under {h:?}: {e}"),
                    )
                })?
                .domain()
                .to_string();
            domains.push(d);
        }
    }
    Ok(Proxy65Config {
        enabled: raw.enabled,
        domains,
        listen,
        public_host: raw.public_host.clone(),
        max_streams_per_user: raw.max_streams_per_user,
        max_pending: raw.max_pending,
        bandwidth_bytes_per_sec: raw.bandwidth_bytes_per_sec,
        activation_timeout: Duration::from_secs(raw.activation_timeout_secs),
        idle_timeout: Duration::from_secs(raw.idle_timeout_secs),
    })
}
