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
    pub s2s_listen: Vec<SocketAddr>,
    pub s2s_direct_tls: Vec<SocketAddr>,
    pub s2s: S2sConfig,
    pub require_encryption: bool,
    /// TLS sessions kept for resumption (0: no session tickets are sent).
    pub tls_resumption_cache: usize,
    pub certificates: Vec<CertificatePaths>,
    pub database_url: String,
    pub durability: waxwing_store::Durability,
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
    /// Stanzas one session (or s2s domain pair) may have waiting in bursts
    /// (`SessionHandle::send_burst`, `S2sManager::send_burst`).
    pub outbound_burst: usize,
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
    /// `[contact]`, XEP-0157: (`abuse-addresses` …, URIs), roles without
    /// addresses left out, in the XEP's order.
    pub contact_addresses: Vec<(&'static str, Vec<String>)>,
    /// `[mam] retention_days`: how long archived messages are kept; `None` is forever.
    pub mam_enabled: bool,
    pub mam_retention: Option<Duration>,
    pub muc: MucConfig,
    pub pubsub: PubSubConfig,
    /// `[compression]`: offer XEP-0138 zlib to authenticated clients.
    pub compression_enabled: bool,
    /// Inflated bytes allowed per compressed byte (plus a fixed slack).
    pub compression_max_ratio: u64,
}

/// `[muc]`, validated.
#[derive(Debug, Clone)]
pub struct MucConfig {
    pub enabled: bool,
    /// One service domain per host, in host order (`conference.example.org`).
    pub domains: Vec<String>,
    pub max_history: usize,
    /// New rooms log (keep a XEP-0313 archive) unless their owner says no.
    pub log_by_default: bool,
    pub max_occupants: usize,
    pub max_rooms_per_user: Option<usize>,
    pub room_creation: RoomCreation,
    /// Remote MUC service domains whose public rooms the directory indexes.
    pub crawl: Vec<String>,
    pub crawl_interval_secs: u64,
    pub crawl_max_rooms: usize,
}

/// `[pubsub]`, validated.
#[derive(Debug, Clone)]
pub struct PubSubConfig {
    pub feed_min_interval: Duration,
    pub feed_concurrency: usize,
    pub feed_timeout: Duration,
    pub feed_max_bytes: u64,
    pub feed_max_backoff: Duration,
    pub feeds: Vec<FeedConfig>,
}

/// One `[[pubsub.feeds]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedConfig {
    pub url: String,
    /// The service domain, `pubsub.<host>`.
    pub service: String,
    pub node: String,
    pub interval: Duration,
}

/// Poll interval of a feed that does not say.
pub const DEFAULT_FEED_INTERVAL: Duration = Duration::from_secs(900);

/// Who may create MUC rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomCreation {
    Anyone,
    /// Accounts of one of our virtual hosts.
    Local,
    /// Only the server `admins`.
    Admins,
}

/// `[s2s]`, validated.
#[derive(Debug, Clone)]
pub struct S2sConfig {
    pub enabled: bool,
    pub require_encryption: bool,
    pub dialback: DialbackPolicy,
    pub ca_bundle: Option<PathBuf>,
    /// Prepared domain → "host:port".
    pub routes: std::collections::HashMap<String, String>,
    pub secret: Option<String>,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_queue: usize,
    /// XEP-0288 bidirectional streams: offered on incoming streams and
    /// asked for on outgoing ones.
    pub bidi: bool,
    /// Per-domain policy overrides (prepared domain names).
    pub domain_policy: std::collections::HashMap<String, DialbackPolicy>,
    /// Prepared domains we never federate with.
    pub blocked_domains: Vec<String>,
    /// Stanzas per second per remote domain, and the burst above it.
    pub stanza_rate: u32,
    pub stanza_burst: u32,
    /// Incoming connections per peer address.
    pub max_incoming_per_ip: u32,
    /// Domain pairs with a live outgoing route.
    pub max_outgoing_routes: usize,
    /// Dialback verifications in flight: server-wide, and per peer address.
    pub max_verifications: usize,
    pub max_verifications_per_ip: u32,
    /// Failed dialbacks per address (in `s2s::limits::FAILURE_WINDOW`)
    /// before its requests are refused unverified.
    pub max_failed_dialbacks_per_ip: u32,
    pub reputation: crate::s2s::reputation::ReputationConfig,
}

impl S2sConfig {
    /// The authentication policy for a remote domain.
    pub fn policy(&self, domain: &str) -> DialbackPolicy {
        self.domain_policy
            .get(domain)
            .copied()
            .unwrap_or(self.dialback)
    }
}

/// How a remote domain may authenticate (XEP-0178 vs XEP-0220).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialbackPolicy {
    /// A valid certificate (SASL EXTERNAL), else dialback.
    Allow,
    /// Only a certificate that chains to a trusted root and names the domain.
    RequireValidCerts,
    /// No federation with the domain.
    Refuse,
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
        let durability = match f.storage.synchronous.as_deref() {
            None | Some("normal") => waxwing_store::Durability::ProcessCrash,
            Some("full") => waxwing_store::Durability::PowerLoss,
            Some(other) => {
                return Err(ConfigError::at(
                    source,
                    "synchronous",
                    format!("synchronous {other:?}: expected \"normal\" or \"full\""),
                ));
            }
        };
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
            ("outbound_burst", l.outbound_burst as u64),
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
        let contact_addresses = contact_addresses(&f.contact, source)?;
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
        let muc = muc_config(&f.muc, &hosts, source)?;
        let pubsub = pubsub_config(&f.pubsub, &hosts, source)?;
        if f.compression.max_ratio == 0 {
            return Err(ConfigError::at(
                source,
                "max_ratio",
                "[compression] max_ratio must be greater than 0".to_string(),
            ));
        }
        let s2s_listen = addrs(&f.listen.s2s, "s2s")?;
        let s2s_direct_tls = addrs(&f.listen.s2s_direct_tls, "s2s_direct_tls")?;
        let s2s = s2s_config(&f.s2s, source)?;
        Ok(Config {
            data_dir,
            hosts,
            admins,
            c2s,
            c2s_direct_tls,
            s2s_listen,
            s2s_direct_tls,
            s2s,
            require_encryption: f.tls.require_encryption,
            tls_resumption_cache: f.tls.resumption_cache,
            certificates,
            database_url,
            durability,
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
            outbound_burst: l.outbound_burst,
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
            contact_addresses,
            mam_enabled: f.mam.enabled,
            mam_retention: (f.mam.retention_days > 0)
                .then(|| Duration::from_secs(u64::from(f.mam.retention_days) * 86_400)),
            muc,
            pubsub,
            compression_enabled: f.compression.enabled,
            compression_max_ratio: f.compression.max_ratio,
        })
    }

    /// True when `domain` (already prepared) is one of our virtual hosts.
    pub fn is_local_host(&self, domain: &str) -> bool {
        self.hosts.iter().any(|h| h == domain)
    }
}

fn dialback_policy(v: &str, key: &str, source: &str) -> Result<DialbackPolicy, ConfigError> {
    match v {
        "allow" => Ok(DialbackPolicy::Allow),
        "require-valid-certs" => Ok(DialbackPolicy::RequireValidCerts),
        "refuse" => Ok(DialbackPolicy::Refuse),
        other => Err(ConfigError::at(
            source,
            key,
            format!(
                "dialback {other:?}: expected \"allow\", \"require-valid-certs\" or \"refuse\""
            ),
        )),
    }
}

fn s2s_config(s: &raw::S2s, source: &str) -> Result<S2sConfig, ConfigError> {
    let domain = |d: &str, key: &str| -> Result<String, ConfigError> {
        BareJid::domain_only(d)
            .map(|j| j.domain().to_string())
            .map_err(|e| ConfigError::at(source, key, format!("{d:?} is not a valid domain: {e}")))
    };
    let mut routes = std::collections::HashMap::new();
    for (d, r) in &s.routes {
        crate::s2s::resolve::static_route(r)
            .map_err(|e| ConfigError::at(source, d, e.to_string()))?;
        routes.insert(domain(d, d)?, r.clone());
    }
    let mut domain_policy = std::collections::HashMap::new();
    for (d, o) in &s.domains {
        if let Some(p) = &o.dialback {
            domain_policy.insert(
                domain(d, "dialback")?,
                dialback_policy(p, "dialback", source)?,
            );
        }
    }
    let blocked_domains = s
        .blocked_domains
        .iter()
        .map(|d| domain(d, "blocked_domains"))
        .collect::<Result<Vec<_>, _>>()?;
    let r = &s.reputation;
    if !(r.throttle_at > 0.0 && r.block_at > 0.0 && r.throttle_at <= r.block_at) {
        return Err(ConfigError::at(
            source,
            "throttle_at",
            "[s2s.reputation] needs 0 < throttle_at <= block_at".to_string(),
        ));
    }
    for (key, v) in [
        ("connect_timeout_secs", s.connect_timeout_secs),
        ("idle_timeout_secs", s.idle_timeout_secs),
        ("max_queue", s.max_queue as u64),
        ("stanza_rate", u64::from(s.stanza_rate)),
        ("stanza_burst", u64::from(s.stanza_burst)),
        ("half_life_secs", r.half_life_secs),
        ("max_incoming_per_ip", u64::from(s.max_incoming_per_ip)),
        ("max_outgoing_routes", s.max_outgoing_routes as u64),
        ("max_verifications", s.max_verifications as u64),
        (
            "max_verifications_per_ip",
            u64::from(s.max_verifications_per_ip),
        ),
        (
            "max_failed_dialbacks_per_ip",
            u64::from(s.max_failed_dialbacks_per_ip),
        ),
    ] {
        if v == 0 {
            return Err(ConfigError::at(
                source,
                key,
                format!("{key} must be greater than 0"),
            ));
        }
    }
    Ok(S2sConfig {
        enabled: s.enabled,
        require_encryption: s.require_encryption,
        dialback: dialback_policy(&s.dialback, "dialback", source)?,
        ca_bundle: s.ca_bundle.as_ref().map(PathBuf::from),
        routes,
        secret: s.secret.clone(),
        idle_timeout: Duration::from_secs(s.idle_timeout_secs),
        connect_timeout: Duration::from_secs(s.connect_timeout_secs),
        max_queue: s.max_queue,
        bidi: s.bidi,
        domain_policy,
        blocked_domains,
        stanza_rate: s.stanza_rate,
        stanza_burst: s.stanza_burst,
        max_incoming_per_ip: s.max_incoming_per_ip,
        max_outgoing_routes: s.max_outgoing_routes,
        max_verifications: s.max_verifications,
        max_verifications_per_ip: s.max_verifications_per_ip,
        max_failed_dialbacks_per_ip: s.max_failed_dialbacks_per_ip,
        reputation: crate::s2s::reputation::ReputationConfig {
            throttle_at: r.throttle_at,
            block_at: r.block_at,
            half_life: Duration::from_secs(r.half_life_secs),
        },
    })
}

fn pubsub_config(
    p: &raw::PubSub,
    hosts: &[String],
    source: &str,
) -> Result<PubSubConfig, ConfigError> {
    let positive = |v: u64, key: &str| {
        if v == 0 {
            Err(ConfigError::at(
                source,
                key,
                format!("[pubsub] {key} must be greater than 0"),
            ))
        } else {
            Ok(())
        }
    };
    positive(p.feed_min_interval_secs, "feed_min_interval_secs")?;
    positive(p.feed_concurrency as u64, "feed_concurrency")?;
    positive(p.feed_timeout_secs, "feed_timeout_secs")?;
    positive(p.feed_max_bytes, "feed_max_bytes")?;
    positive(p.feed_max_backoff_secs, "feed_max_backoff_secs")?;
    let min_interval = Duration::from_secs(p.feed_min_interval_secs);
    let mut feeds: Vec<FeedConfig> = Vec::new();
    for f in &p.feeds {
        let bad = |key: &str, msg: String| Err(ConfigError::at(source, key, msg));
        let lower = f.url.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://"))
            || f.url.len() > 2048
            || f.url.chars().any(char::is_whitespace)
        {
            return bad("url", format!("feed url {:?} is not an http(s) URL", f.url));
        }
        if f.node.is_empty() || f.node.len() > 1024 {
            return bad("node", "a feed's node must be 1 to 1024 bytes".into());
        }
        let host = match &f.host {
            Some(h) => {
                if !hosts.contains(h) {
                    return bad("host", format!("feed host {h:?} is not one of `hosts`"));
                }
                h.clone()
            }
            None => hosts.first().cloned().unwrap_or_default(),
        };
        let interval = f
            .interval_secs
            .map_or(DEFAULT_FEED_INTERVAL, Duration::from_secs);
        if interval < min_interval {
            return bad(
                "interval_secs",
                format!(
                    "feed interval {}s is below feed_min_interval_secs ({}s)",
                    interval.as_secs(),
                    min_interval.as_secs()
                ),
            );
        }
        let feed = FeedConfig {
            url: f.url.clone(),
            service: format!("pubsub.{host}"),
            node: f.node.clone(),
            interval,
        };
        if feeds
            .iter()
            .any(|g| g.service == feed.service && g.node == feed.node && g.url == feed.url)
        {
            return bad("url", format!("feed {:?} is listed twice", f.url));
        }
        feeds.push(feed);
    }
    Ok(PubSubConfig {
        feed_min_interval: min_interval,
        feed_concurrency: p.feed_concurrency,
        feed_timeout: Duration::from_secs(p.feed_timeout_secs),
        feed_max_bytes: p.feed_max_bytes,
        feed_max_backoff: Duration::from_secs(p.feed_max_backoff_secs),
        feeds,
    })
}

fn muc_config(m: &raw::Muc, hosts: &[String], source: &str) -> Result<MucConfig, ConfigError> {
    let room_creation = match m.room_creation.as_str() {
        "anyone" => RoomCreation::Anyone,
        "local" => RoomCreation::Local,
        "admins" => RoomCreation::Admins,
        other => {
            return Err(ConfigError::at(
                source,
                "room_creation",
                format!("room_creation {other:?}: expected \"anyone\", \"local\" or \"admins\""),
            ));
        }
    };
    if m.max_occupants == 0 {
        return Err(ConfigError::at(
            source,
            "max_occupants",
            "max_occupants must be greater than 0".into(),
        ));
    }
    if m.crawl_interval_secs == 0 {
        return Err(ConfigError::at(
            source,
            "crawl_interval_secs",
            "crawl_interval_secs must be greater than 0".into(),
        ));
    }
    let mut crawl = Vec::new();
    for c in &m.crawl {
        let d = BareJid::domain_only(c).map_err(|e| {
            ConfigError::at(source, "crawl", format!("crawl {c:?} is not a domain: {e}"))
        })?;
        crawl.push(d.domain().to_string());
    }
    let mut domains = Vec::new();
    if m.enabled {
        for h in hosts {
            let d = BareJid::domain_only(&format!("{}.{h}", m.subdomain))
                .map_err(|e| {
                    ConfigError::at(
                        source,
                        "subdomain",
                        format!(
                            "subdomain {:?} gives no valid domain under {h:?}: {e}",
                            m.subdomain
                        ),
                    )
                })?
                .domain()
                .to_string();
            if hosts.contains(&d) {
                return Err(ConfigError::at(
                    source,
                    "subdomain",
                    format!("MUC domain {d:?} is also a virtual host"),
                ));
            }
            domains.push(d);
        }
    }
    Ok(MucConfig {
        enabled: m.enabled,
        domains,
        max_history: m.max_history,
        log_by_default: m.log_by_default,
        max_occupants: m.max_occupants,
        max_rooms_per_user: m.max_rooms_per_user,
        room_creation,
        crawl,
        crawl_interval_secs: m.crawl_interval_secs,
        crawl_max_rooms: m.crawl_max_rooms,
    })
}

/// `[contact]`: every address must be a URI, so that clients can act on it.
fn contact_addresses(
    c: &raw::Contact,
    source: &str,
) -> Result<Vec<(&'static str, Vec<String>)>, ConfigError> {
    let mut out = Vec::new();
    for (var, key, list) in [
        ("abuse-addresses", "abuse", &c.abuse),
        ("admin-addresses", "admin", &c.admin),
        ("feedback-addresses", "feedback", &c.feedback),
        ("sales-addresses", "sales", &c.sales),
        ("security-addresses", "security", &c.security),
        ("status-addresses", "status", &c.status),
        ("support-addresses", "support", &c.support),
    ] {
        for uri in list {
            // RFC 3986 §3.1: a scheme, a colon, something after it.
            let is_uri = uri.split_once(':').is_some_and(|(scheme, rest)| {
                !rest.is_empty()
                    && scheme.starts_with(|ch: char| ch.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "+-.".contains(ch))
            });
            if !is_uri {
                return Err(ConfigError::at(
                    source,
                    key,
                    format!(
                        "contact address {uri:?} is not a URI (e.g. \"mailto:abuse@example.org\")"
                    ),
                ));
            }
        }
        if !list.is_empty() {
            out.push((var, list.clone()));
        }
    }
    Ok(out)
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
    fn pubsub_feeds_are_validated() {
        let c = Config::parse("hosts = [\"a.example\", \"b.example\"]\n").unwrap();
        assert!(c.pubsub.feeds.is_empty());
        assert_eq!(c.pubsub.feed_min_interval, Duration::from_secs(60));
        let c = Config::parse(
            "hosts = [\"a.example\", \"b.example\"]\n[pubsub]\nfeed_min_interval_secs = 1\n\
             [[pubsub.feeds]]\nurl = \"http://127.0.0.1:8080/rss\"\nnode = \"news\"\n\
             interval_secs = 2\n[[pubsub.feeds]]\nurl = \"https://x.example/atom\"\n\
             node = \"n\"\nhost = \"b.example\"\n",
        )
        .unwrap();
        assert_eq!(
            c.pubsub.feeds,
            vec![
                FeedConfig {
                    url: "http://127.0.0.1:8080/rss".into(),
                    service: "pubsub.a.example".into(),
                    node: "news".into(),
                    interval: Duration::from_secs(2),
                },
                FeedConfig {
                    url: "https://x.example/atom".into(),
                    service: "pubsub.b.example".into(),
                    node: "n".into(),
                    interval: DEFAULT_FEED_INTERVAL,
                },
            ]
        );
        for bad in [
            "[[pubsub.feeds]]\nurl = \"ftp://x/\"\nnode = \"n\"\n",
            "[[pubsub.feeds]]\nurl = \"http://x/\"\nnode = \"\"\n",
            "[[pubsub.feeds]]\nurl = \"http://x/\"\nnode = \"n\"\nhost = \"z.example\"\n",
            "[[pubsub.feeds]]\nurl = \"http://x/\"\nnode = \"n\"\ninterval_secs = 5\n",
            "[pubsub]\nfeed_concurrency = 0\n",
        ] {
            let e = Config::parse(bad).unwrap_err();
            assert!(e.line.is_some(), "{bad}: {e}");
        }
    }

    #[test]
    fn muc_defaults_and_validation() {
        let c = Config::embedded_default();
        assert_eq!(c.muc.domains, vec!["conference.localhost"]);
        assert_eq!(c.muc.room_creation, RoomCreation::Local);
        let c = Config::parse("hosts = [\"a.example\"]\n[muc]\nsubdomain = \"rooms\"\n").unwrap();
        assert_eq!(c.muc.domains, vec!["rooms.a.example"]);
        let c = Config::parse("[muc]\nenabled = false\n").unwrap();
        assert!(c.muc.domains.is_empty());
        let e = Config::parse("[muc]\nsubdomain = \"bad label\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(c.muc.crawl.is_empty());
        assert_eq!(c.muc.crawl_interval_secs, 3600);
        assert_eq!(c.muc.crawl_max_rooms, 500);
        let c =
            Config::parse("[muc]\ncrawl = [\"conference.b.example\"]\ncrawl_interval_secs = 5\n")
                .unwrap();
        assert_eq!(c.muc.crawl, vec!["conference.b.example"]);
        assert_eq!(c.muc.crawl_interval_secs, 5);
        assert!(Config::parse("[muc]\ncrawl = [\"a b\"]\n").is_err());
        assert!(Config::parse("[muc]\ncrawl_interval_secs = 0\n").is_err());
        let e = Config::parse("[muc]\nroom_creation = \"all\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn contact_addresses_are_uris_in_xep_order() {
        let c = Config::parse(
            "[contact]\nsupport = [\"https://example.org/help\"]\n\
             abuse = [\"mailto:abuse@example.org\", \"xmpp:abuse@example.org\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.contact_addresses,
            vec![
                (
                    "abuse-addresses",
                    vec![
                        "mailto:abuse@example.org".to_string(),
                        "xmpp:abuse@example.org".to_string()
                    ]
                ),
                (
                    "support-addresses",
                    vec!["https://example.org/help".to_string()]
                ),
            ]
        );
        let e = Config::parse("[contact]\nadmin = [\"admin@example.org\"]\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn s2s_connection_and_dialback_limits() {
        let c = Config::embedded_default();
        assert_eq!(c.s2s.max_incoming_per_ip, 128);
        assert_eq!(c.s2s.max_outgoing_routes, 4096);
        assert_eq!(c.s2s.max_verifications, 256);
        assert_eq!(c.s2s.max_verifications_per_ip, 16);
        assert_eq!(c.s2s.max_failed_dialbacks_per_ip, 10);
        let c = Config::parse("[s2s]\nmax_incoming_per_ip = 2\nmax_outgoing_routes = 3\n").unwrap();
        assert_eq!(
            (c.s2s.max_incoming_per_ip, c.s2s.max_outgoing_routes),
            (2, 3)
        );
        for key in [
            "max_incoming_per_ip",
            "max_outgoing_routes",
            "max_verifications",
            "max_verifications_per_ip",
            "max_failed_dialbacks_per_ip",
        ] {
            let e = Config::parse(&format!("[s2s]\nenabled = true\n{key} = 0\n")).unwrap_err();
            assert_eq!(e.line, Some(3), "{key}: {e}");
            assert!(e.message.contains(key), "{e}");
            let e = Config::parse(&format!("[s2s]\n{key} = -1\n")).unwrap_err();
            assert_eq!(e.line, Some(2), "{key}: {e}");
        }
    }

    #[test]
    fn s2s_defaults_and_overrides() {
        let c = Config::embedded_default();
        assert!(c.s2s.enabled);
        assert_eq!(c.s2s_listen, vec!["[::]:5269".parse().unwrap()]);
        assert_eq!(c.s2s_direct_tls, vec!["[::]:5270".parse().unwrap()]);
        assert_eq!(c.s2s.dialback, DialbackPolicy::Allow);
        // A [listen] table that names no s2s listener opens none.
        let c = Config::parse("[listen]\nc2s = [\"127.0.0.1:0\"]\n").unwrap();
        assert!(c.s2s_listen.is_empty() && c.s2s_direct_tls.is_empty());
        let c = Config::parse(
            "[s2s]\ndialback = \"refuse\"\n[s2s.routes]\n\"Example.ORG\" = \"127.0.0.1:5269\"\n\
             [s2s.domains.\"friend.example\"]\ndialback = \"require-valid-certs\"\n",
        )
        .unwrap();
        assert_eq!(c.s2s.routes["example.org"], "127.0.0.1:5269");
        assert_eq!(
            c.s2s.policy("friend.example"),
            DialbackPolicy::RequireValidCerts
        );
        assert_eq!(c.s2s.policy("other.example"), DialbackPolicy::Refuse);
        let e = Config::parse("[s2s]\ndialback = \"sometimes\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = Config::parse("[s2s.routes]\n\"example.org\" = \"nowhere\"\n").unwrap_err();
        assert!(e.message.contains("host:port"), "{e}");
    }

    #[test]
    fn invalid_host_is_refused() {
        let e = Config::parse("hosts = [\"bad host\"]\n").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }
}
