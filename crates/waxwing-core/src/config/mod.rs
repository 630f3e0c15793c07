//! Configuration: `raw` mirrors the TOML file, [`Config`] is the validated
//! form that the rest of the server reads.

pub mod acme;
mod auth;
pub mod bosh;
pub mod cluster;
pub mod ext;
pub mod http;
pub mod invites;
pub mod ops;
pub mod raw;
pub mod reload;
pub mod turn;

pub use acme::{AcmeConfig, ChallengeKind};
pub use auth::{
    AuthConfig, CertIdentity, ClientCertConfig, ExtAuthConfig, GssapiHostConfig, HostAuthConfig,
    LdapConfig, LdapLookup, SourceConfig,
};
pub use bosh::BoshConfig;
pub use cluster::ClusterConfig;
pub use http::{HttpConfig, UploadConfig};
pub use ops::{AdminConfig, MetricsConfig};

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

    /// Like [`ConfigError::at`], for a key of one table (`"limits"`,
    /// `"s2s.reputation"`; `""` for the top level): several tables share
    /// key names (`idle_timeout_secs` is in `[limits]` and `[s2s]`).
    fn in_table(source: &str, table: &str, key: &str, message: String) -> Self {
        ConfigError {
            line: find_table_key_line(source, table, key).or_else(|| find_key_line(source, key)),
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
    /// `[tls] watch_interval_secs`: how often the certificate files are
    /// checked for changes (`None`: never; SIGHUP and `admin reload` still reload).
    pub cert_watch_interval: Option<Duration>,
    pub certificates: Vec<CertificatePaths>,
    pub database_url: String,
    /// `[storage] synchronous` and `max_connections`.
    pub storage: waxwing_store::OpenOptions,
    /// `[storage] cache_accounts` and `cache_secs` (no accounts: no cache,
    /// as always with `[cluster]`, whose other nodes write the same database).
    pub store_cache: crate::store_cache::CacheLimits,
    /// `[cluster]`: `None` on a single node.
    pub cluster: Option<ClusterConfig>,
    pub scram_iterations: u32,
    pub allow_plain: bool,
    pub max_auth_failures: u32,
    pub max_auth_failures_per_ip: u32,
    pub max_auth_failures_per_account: u32,
    pub auth_failure_window: Duration,
    /// `[auth] ipv4_prefix_length` / `ipv6_prefix_length`: what counts as
    /// one address for the failure limits.
    pub auth_prefixes: crate::abuse::PrefixLengths,
    pub registration_open: bool,
    pub min_password_length: usize,
    /// In-band registrations per stream, and per address prefix per window.
    pub registration_max_per_stream: u32,
    pub registration_max_per_address: u32,
    pub registration_window: Duration,
    pub max_stanza_bytes: usize,
    /// `[limits] max_stanza_bytes_before_auth`: the framer's size limit
    /// until SASL succeeds.
    pub max_stanza_bytes_before_auth: usize,
    /// `[limits] partial_stanza_budget_bytes`: server-wide.
    pub partial_stanza_budget_bytes: usize,
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
    /// Longest a single write to a client may block before the connection
    /// is treated as broken (`[limits] write_timeout_secs`).
    pub write_timeout: Duration,
    /// Rows one roster may hold, hidden ones (pending requests, pre-approvals) included.
    pub max_roster_items: usize,
    /// Inbound subscription requests one account may have unanswered.
    pub max_pending_subscriptions: usize,
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
    /// `[listen] component`: where XEP-0114 components connect (bound
    /// only when `components` is not empty).
    pub component_listen: Vec<SocketAddr>,
    /// `[[components]]`.
    pub components: Vec<ext::ComponentConfig>,
    /// `[external_services]` (XEP-0215).
    pub external_services: ext::ExternalServicesConfig,
    /// `modules_disabled`: checked against the module list by the binary.
    pub modules_disabled: Vec<String>,
    /// `[proxy65]`: XEP-0065 SOCKS5 bytestreams proxy.
    pub proxy65: ext::Proxy65Config,
    /// `[turn]`: the built-in STUN/TURN server.
    pub turn: turn::TurnConfig,
    /// `[modules.<name>]` tables, as written; a module parses its own
    /// (`Config::module_options`), and the binary refuses tables that name
    /// no module.
    pub module_tables: std::collections::BTreeMap<String, toml::Table>,
    /// `[auth]` account sources and mechanism lists per host and per listener.
    pub auth: AuthConfig,
    /// `[listen] http`/`https` and `[http]`: the HTTP listener.
    pub http: HttpConfig,
    /// `[upload]`: XEP-0363 HTTP File Upload.
    pub upload: UploadConfig,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
    /// `[acme]`: certificates from an ACME CA.
    pub acme: AcmeConfig,
    /// `[invites]`: invitations.
    pub invites: invites::InvitesConfig,
    pub link_local: LinkLocalConfig,
    pub bosh: BoshConfig,
    pub websocket: WebSocketConfig,
    /// The file as read, every default filled in, as a tree keyed like the
    /// TOML file: what a reload compares (`reload.rs`).
    pub(crate) settings: std::sync::Arc<serde_json::Value>,
}

/// `[websocket]`, validated.
#[derive(Debug, Clone)]
pub struct WebSocketConfig {
    pub enabled: bool,
    pub ping_interval: Duration,
    /// RFC 7395 §3.6.1 redirect (`ws://` or `wss://`).
    pub see_other_uri: Option<String>,
    pub loopback_is_secure: bool,
}

fn websocket_config(w: &raw::WebSocket, source: &str) -> Result<WebSocketConfig, ConfigError> {
    if let Some(uri) = &w.see_other_uri {
        let ok = ["ws://", "wss://"]
            .iter()
            .any(|s| uri.strip_prefix(s).is_some_and(|rest| !rest.is_empty()))
            && !uri.contains(['\'', '"', '<', '>', '&'])
            && !uri.chars().any(char::is_whitespace);
        if !ok {
            return Err(ConfigError::in_table(
                source,
                "websocket",
                "see_other_uri",
                format!("{uri:?} is not a ws:// or wss:// URI"),
            ));
        }
    }
    Ok(WebSocketConfig {
        enabled: w.enabled,
        ping_interval: Duration::from_secs(w.ping_interval_secs),
        see_other_uri: w.see_other_uri.clone(),
        loopback_is_secure: w.loopback_is_secure,
    })
}

/// `[link_local]`, validated (XEP-0174 and its bridge).
#[derive(Debug, Clone)]
pub struct LinkLocalConfig {
    pub enabled: bool,
    /// Interface name or one of its addresses; `None` only when disabled.
    pub interface: Option<String>,
    pub port: u16,
    /// Empty: the machine's host name, found at start.
    pub machine: String,
    /// Gateway domain per host, in host order (`lan.example.org`).
    pub gateways: Vec<String>,
    /// Accounts announced on the LAN.
    pub users: Vec<BareJid>,
    pub publish_jid: bool,
    pub tls: bool,
    pub require_tls: bool,
    pub max_peers: usize,
    pub max_streams: usize,
    pub stanza_rate: u64,
    pub stanza_burst: u64,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// `[muc]`, validated.
#[derive(Debug, Clone)]
pub struct MucConfig {
    pub enabled: bool,
    /// One service domain per host, in host order (`conference.example.org`).
    pub domains: Vec<String>,
    pub max_history: usize,
    /// Bytes of discussion history a room keeps; the oldest go first.
    pub max_history_bytes: usize,
    /// New rooms log (keep a XEP-0313 archive) unless their owner says no.
    pub log_by_default: bool,
    pub max_occupants: usize,
    pub max_rooms_per_user: usize,
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
    /// Most items in one `<items/>` reply (XEP-0060 retrieval, PEP too).
    pub max_items_per_reply: usize,
    pub feeds: Vec<FeedConfig>,
    /// PEP nodes one account may have.
    pub max_pep_nodes: usize,
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

/// The largest `[pubsub] max_items_per_reply`: a node keeps at most this
/// many items (`pubsub#max_items` is capped there too).
pub const MAX_ITEMS_PER_REPLY: usize = 1024;

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
        check_numbers(&f, source)?;
        let settings = serde_json::to_value(&f).map_err(|e| ConfigError {
            line: None,
            message: format!("the configuration cannot be represented: {e}"),
        })?;
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
            Some(url) if waxwing_store::Backend::of_url(&url).is_some() => url,
            Some(url) => {
                // The scheme only: the rest may hold a password.
                let scheme = url.split(':').next().unwrap_or_default();
                return Err(ConfigError::at(
                    source,
                    "database",
                    format!(
                        "unsupported database URL scheme {scheme:?}: expected \
                         sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DATABASE"
                    ),
                ));
            }
            None => format!("sqlite://{}", data_dir.join("waxwing.db").display()),
        };
        let cluster = cluster::cluster_config(&f.cluster, &database_url, source)?;
        let store_cache = crate::store_cache::CacheLimits {
            accounts: if cluster.is_some() {
                0
            } else {
                f.storage.cache_accounts as usize
            },
            lifetime: Duration::from_secs(f.storage.cache_secs),
        };
        let l = &f.limits;
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
        let s2s_listen = addrs(&f.listen.s2s, "s2s")?;
        let s2s_direct_tls = addrs(&f.listen.s2s_direct_tls, "s2s_direct_tls")?;
        let s2s = s2s_config(&f.s2s, source)?;
        let all_c2s: Vec<SocketAddr> = c2s.iter().chain(&c2s_direct_tls).copied().collect();
        let auth = auth::auth_config(&f.auth, &hosts, &all_c2s, source)?;
        let http = http::http_config(&f.listen, &f.http, source)?;
        let upload = http::upload_config(&f.upload, &hosts, &data_dir, source)?;
        let metrics = ops::metrics_config(&f.metrics, source)?;
        let admin = ops::admin_config(&f.admin, source)?;
        let acme = acme::acme_config(
            &f.acme,
            !http.listen.is_empty(),
            !http.listen_tls.is_empty() || !c2s_direct_tls.is_empty(),
            source,
        )?;
        let link_local = link_local_config(&f.link_local, &hosts, source)?;
        let component_listen = addrs(&f.listen.component, "component")?;
        let proxy65 = ext::proxy65(&f.proxy65, &hosts, source)?;
        let mut taken = muc.domains.clone();
        taken.extend(hosts.iter().map(|h| format!("pubsub.{h}")));
        taken.extend(proxy65.domains.iter().cloned());
        taken.extend(upload.domains.iter().cloned());
        taken.extend(link_local.gateways.iter().cloned());
        let components = ext::components(&f.components, &hosts, &taken, source)?;
        let mut external_services = ext::external_services(&f.external_services, source)?;
        let turn = turn::turn(&f.turn, &hosts, external_services.secret.as_deref(), source)?;
        if turn.enabled {
            // The services themselves are listed once the listeners are
            // bound (their ports may be 0 here): `crate::turn::advertise`.
            external_services.secret = Some(turn.secret.clone());
        }
        let modules_disabled = ext::modules_disabled(&f.modules_disabled, source)?;
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
            cert_watch_interval: (f.tls.watch_interval_secs > 0)
                .then(|| Duration::from_secs(f.tls.watch_interval_secs)),
            certificates,
            database_url,
            cluster,
            storage: waxwing_store::OpenOptions {
                durability,
                max_connections: f.storage.max_connections,
            },
            store_cache,
            scram_iterations: f.auth.scram_iterations,
            allow_plain: f.auth.allow_plain,
            max_auth_failures: f.auth.max_failures_per_stream,
            max_auth_failures_per_ip: f.auth.max_failures_per_ip,
            max_auth_failures_per_account: f.auth.max_failures_per_account,
            auth_failure_window: Duration::from_secs(f.auth.failure_window_secs),
            auth_prefixes: crate::abuse::PrefixLengths {
                v4: f.auth.ipv4_prefix_length,
                v6: f.auth.ipv6_prefix_length,
            },
            registration_open: f.registration.open,
            min_password_length: f.registration.min_password_length,
            registration_max_per_stream: f.registration.max_per_stream,
            registration_max_per_address: f.registration.max_per_address,
            registration_window: Duration::from_secs(f.registration.address_window_secs),
            max_stanza_bytes: l.max_stanza_bytes,
            max_stanza_bytes_before_auth: l.max_stanza_bytes_before_auth,
            partial_stanza_budget_bytes: l.partial_stanza_budget_bytes,
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
            write_timeout: Duration::from_secs(l.write_timeout_secs),
            max_roster_items: l.max_roster_items,
            max_pending_subscriptions: l.max_pending_subscriptions,
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
            component_listen,
            components,
            external_services,
            modules_disabled,
            proxy65,
            turn,
            module_tables: f.modules,
            auth,
            http,
            upload,
            metrics,
            admin,
            acme,
            invites: invites::invites_config(&f.invites),
            link_local,
            bosh: bosh::bosh_config(&f.bosh),
            websocket: websocket_config(&f.websocket, source)?,
            settings: std::sync::Arc::new(settings),
        })
    }

    /// A module's `[modules.<name>]` table parsed into its options type;
    /// `Ok(None)` when the table is absent. Unknown keys are refused by the
    /// options type's `#[serde(deny_unknown_fields)]`.
    pub fn module_options<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, ConfigError> {
        let Some(table) = self.module_tables.get(name) else {
            return Ok(None);
        };
        table.clone().try_into().map(Some).map_err(|e| ConfigError {
            line: None,
            message: format!("[modules.{name}]: {}", e.message().trim()),
        })
    }

    /// True when `domain` (already prepared) is one of our virtual hosts.
    pub fn is_local_host(&self, domain: &str) -> bool {
        self.hosts.iter().any(|h| h == domain)
    }
}

/// Longest duration any `*_secs` option may have: a year. Longer ones are
/// typos (milliseconds written as seconds), and an `Instant` that far out
/// overflows on some platforms.
pub const MAX_SECS: u64 = 365 * 86_400;

/// One numeric option and the values that make sense for it.
struct Bound {
    table: &'static str,
    key: &'static str,
    value: u64,
    min: u64,
    max: u64,
    /// Why values outside `min..=max` are refused.
    why: &'static str,
}

/// Every numeric and duration option, checked in one place: zero where it
/// would stop the server from working (a zero read rate panics the token
/// bucket, zero connections per address refuses everyone), and upper bounds
/// where a value overflows a deadline or makes one request cost seconds.
/// An option that means something at 0 (`offline_quota`, `max_history`,
/// `retention_days`, `resumption_cache`) is not listed with a minimum.
fn check_numbers(f: &raw::File, source: &str) -> Result<(), ConfigError> {
    const NONZERO: &str = "0 would make the server unusable";
    const DURATION: &str =
        "a duration of 0 never elapses usefully, and more than a year is a mistake";
    let (a, l, m, p, s, r) = (
        &f.auth,
        &f.limits,
        &f.muc,
        &f.pubsub,
        &f.s2s,
        &f.s2s.reputation,
    );
    let n = |v: usize| v as u64;
    let secs = |table, key, value| Bound {
        table,
        key,
        value,
        min: 1,
        max: MAX_SECS,
        why: DURATION,
    };
    let at_least = |table, key, value, min, why| Bound {
        table,
        key,
        value,
        min,
        max: u64::MAX,
        why,
    };
    let bounds = [
        Bound {
            table: "storage",
            key: "max_connections",
            value: u64::from(f.storage.max_connections),
            min: 1,
            max: 1000,
            why: "each node opens up to this many PostgreSQL connections, and a \
                  PostgreSQL server allows 100 by default",
        },
        Bound {
            table: "storage",
            key: "cache_accounts",
            value: f.storage.cache_accounts,
            min: 0,
            max: 10_000_000,
            why: "each cached account holds its secrets and roster in memory",
        },
        Bound {
            table: "storage",
            key: "cache_secs",
            value: f.storage.cache_secs,
            min: 1,
            max: 3600,
            why: "a password changed outside the server (waxwing user passwd) \
                  reaches logins only once the cached secrets expire",
        },
        Bound {
            table: "cluster",
            key: "heartbeat_secs",
            value: f.cluster.heartbeat_secs,
            min: 1,
            max: 60,
            why: "a heartbeat is a Redis write; more than a minute apart makes dead nodes linger",
        },
        Bound {
            table: "cluster",
            key: "dead_after_secs",
            value: f.cluster.dead_after_secs,
            min: 2,
            max: 3600,
            why: "a dead node's users look online (and their messages wait) this long",
        },
        Bound {
            table: "cluster",
            key: "lease_secs",
            value: f.cluster.lease_secs,
            min: 2,
            max: 600,
            why: "a dead node's rooms and s2s routes move to another node after at most this \
                  long; the owner renews every third of it",
        },
        Bound {
            table: "cluster",
            key: "stream_max_len",
            value: n(f.cluster.stream_max_len),
            min: 1000,
            max: 10_000_000,
            why: "entries a lagging node may fall behind by before Redis trims them; each \
                  is one stanza in Redis' memory",
        },
        Bound {
            table: "tls",
            key: "resumption_cache",
            value: n(f.tls.resumption_cache),
            min: 0,
            max: 1_000_000,
            why: "rustls allocates the whole cache at start; a million sessions is about 200 MB",
        },
        Bound {
            table: "tls",
            key: "watch_interval_secs",
            value: f.tls.watch_interval_secs,
            min: 0,
            max: 86_400,
            why: "0 turns the check off; certificates are renewed days before they expire, so a day between checks is the most that is useful",
        },
        Bound {
            table: "auth",
            key: "scram_iterations",
            value: u64::from(a.scram_iterations),
            min: 4096,
            max: 10_000_000,
            why: "RFC 7677 §4 asks for at least 4096; above 10000000 every login (and every guess) costs seconds of CPU",
        },
        at_least(
            "auth",
            "max_failures_per_stream",
            u64::from(a.max_failures_per_stream),
            1,
            NONZERO,
        ),
        at_least(
            "auth",
            "max_failures_per_ip",
            u64::from(a.max_failures_per_ip),
            1,
            "0 would refuse every login, even with the right password",
        ),
        at_least(
            "auth",
            "max_failures_per_account",
            u64::from(a.max_failures_per_account),
            1,
            "0 would refuse every login, even with the right password",
        ),
        secs("auth", "failure_window_secs", a.failure_window_secs),
        at_least(
            "auth",
            "anonymous_max_per_address",
            u64::from(a.anonymous_max_per_address),
            1,
            "0 would refuse every guest; leave out the anonymous host instead",
        ),
        secs("auth", "anonymous_window_secs", a.anonymous_window_secs),
        Bound {
            table: "auth",
            key: "ipv4_prefix_length",
            value: u64::from(a.ipv4_prefix_length),
            min: 8,
            max: 32,
            why: "failures are counted per address prefix of this length",
        },
        Bound {
            table: "auth",
            key: "ipv6_prefix_length",
            value: u64::from(a.ipv6_prefix_length),
            min: 16,
            max: 128,
            why: "failures are counted per address prefix of this length",
        },
        at_least(
            "registration",
            "max_per_stream",
            u64::from(f.registration.max_per_stream),
            1,
            "to close registration, set open = false",
        ),
        at_least(
            "registration",
            "max_per_address",
            u64::from(f.registration.max_per_address),
            1,
            "to close registration, set open = false",
        ),
        secs(
            "registration",
            "address_window_secs",
            f.registration.address_window_secs,
        ),
        secs("invites", "expiry_secs", f.invites.expiry_secs),
        Bound {
            table: "invites",
            key: "max_pending_per_user",
            value: u64::from(f.invites.max_pending_per_user),
            min: 1,
            max: 10_000,
            why: "each pending invitation is a row in the database; to stop users \
                  inviting, set enabled = false",
        },
        Bound {
            table: "registration",
            key: "min_password_length",
            value: n(f.registration.min_password_length),
            min: 1,
            max: 1024,
            why: "0 would allow empty passwords, and no one types more than 1024 characters",
        },
        at_least(
            "limits",
            "max_stanza_bytes",
            n(l.max_stanza_bytes),
            10_000,
            "RFC 6120 §13.12 requires at least 10000",
        ),
        Bound {
            table: "limits",
            key: "max_depth",
            value: n(l.max_depth),
            min: 1,
            max: 256,
            why: "real stanzas are shallow, and deeper trees are an attack on recursive code",
        },
        at_least("limits", "max_attributes", n(l.max_attributes), 1, NONZERO),
        secs("limits", "auth_timeout_secs", l.auth_timeout_secs),
        Bound {
            table: "limits",
            key: "max_stanza_bytes_before_auth",
            value: n(l.max_stanza_bytes_before_auth),
            min: 1024,
            max: n(l.max_stanza_bytes),
            why: "a stream header and a SASL exchange must fit, and it cannot exceed max_stanza_bytes",
        },
        at_least(
            "limits",
            "partial_stanza_budget_bytes",
            n(l.partial_stanza_budget_bytes),
            n(l.max_stanza_bytes),
            "it must be at least max_stanza_bytes, or a maximal stanza could never be received",
        ),
        secs("limits", "write_timeout_secs", l.write_timeout_secs),
        at_least("limits", "outbound_queue", n(l.outbound_queue), 1, NONZERO),
        at_least("limits", "outbound_burst", n(l.outbound_burst), 1, NONZERO),
        at_least(
            "limits",
            "max_resources",
            n(l.max_resources),
            1,
            "0 would refuse every resource binding",
        ),
        at_least(
            "limits",
            "max_connections_per_ip",
            u64::from(l.max_connections_per_ip),
            1,
            "0 would refuse every connection",
        ),
        at_least(
            "limits",
            "read_rate_bytes",
            l.read_rate_bytes,
            1,
            "a rate of 0 would never read again",
        ),
        at_least(
            "limits",
            "read_burst_bytes",
            l.read_burst_bytes,
            n(l.max_stanza_bytes),
            "it must be at least max_stanza_bytes, or a maximal stanza could never be read at once",
        ),
        secs("limits", "stanza_timeout_secs", l.stanza_timeout_secs),
        secs("limits", "idle_timeout_secs", l.idle_timeout_secs),
        secs("limits", "resume_timeout_secs", l.resume_timeout_secs),
        at_least(
            "limits",
            "max_roster_items",
            n(l.max_roster_items),
            1,
            NONZERO,
        ),
        Bound {
            table: "limits",
            key: "max_pending_subscriptions",
            value: n(l.max_pending_subscriptions),
            min: 1,
            max: n(l.max_roster_items),
            why: "0 would refuse every contact request, and each pending request takes a roster row (max_roster_items)",
        },
        Bound {
            table: "mam",
            key: "retention_days",
            value: u64::from(f.mam.retention_days),
            min: 0,
            max: 36_500,
            why: "0 keeps messages forever; more than a century is a mistake",
        },
        at_least(
            "muc",
            "max_history_bytes",
            n(m.max_history_bytes),
            1,
            "to keep no history, set max_history = 0",
        ),
        at_least("muc", "max_occupants", n(m.max_occupants), 1, NONZERO),
        at_least(
            "muc",
            "max_rooms_per_user",
            n(m.max_rooms_per_user),
            1,
            "to stop room creation, use room_creation",
        ),
        secs("muc", "crawl_interval_secs", m.crawl_interval_secs),
        at_least(
            "muc",
            "crawl_max_rooms",
            n(m.crawl_max_rooms),
            1,
            "to index no remote rooms, leave crawl empty",
        ),
        secs("pubsub", "feed_min_interval_secs", p.feed_min_interval_secs),
        Bound {
            table: "pubsub",
            key: "feed_concurrency",
            value: n(p.feed_concurrency),
            min: 1,
            max: 1024,
            why: "0 would never fetch a feed; beyond 1024 it is no limit (and past tokio's semaphore maximum it panics)",
        },
        secs("pubsub", "feed_timeout_secs", p.feed_timeout_secs),
        at_least(
            "pubsub",
            "feed_max_bytes",
            p.feed_max_bytes,
            1,
            "0 would refuse every feed",
        ),
        secs("pubsub", "feed_max_backoff_secs", p.feed_max_backoff_secs),
        Bound {
            table: "pubsub",
            key: "max_items_per_reply",
            value: n(p.max_items_per_reply),
            min: 1,
            max: n(MAX_ITEMS_PER_REPLY),
            why: "0 would answer no <items/> request, and no node keeps more items",
        },
        at_least(
            "pubsub",
            "max_pep_nodes",
            n(p.max_pep_nodes),
            1,
            "0 would break every PEP client (avatars, OMEMO, bookmarks)",
        ),
        secs("s2s", "idle_timeout_secs", s.idle_timeout_secs),
        secs("s2s", "connect_timeout_secs", s.connect_timeout_secs),
        at_least("s2s", "max_queue", n(s.max_queue), 1, NONZERO),
        at_least(
            "s2s",
            "stanza_rate",
            u64::from(s.stanza_rate),
            1,
            "0 would refuse every remote stanza",
        ),
        at_least(
            "s2s",
            "stanza_burst",
            u64::from(s.stanza_burst),
            1,
            "0 would refuse every remote stanza",
        ),
        secs("s2s.reputation", "half_life_secs", r.half_life_secs),
        at_least(
            "s2s",
            "max_incoming_per_ip",
            u64::from(s.max_incoming_per_ip),
            1,
            "0 would refuse every incoming server connection",
        ),
        at_least(
            "s2s",
            "max_outgoing_routes",
            n(s.max_outgoing_routes),
            1,
            "0 would refuse every outgoing route; to turn federation off, set enabled = false",
        ),
        at_least(
            "s2s",
            "max_verifications",
            n(s.max_verifications),
            1,
            "0 would verify no dialback key",
        ),
        Bound {
            table: "s2s",
            key: "max_verifications_per_ip",
            value: u64::from(s.max_verifications_per_ip),
            min: 1,
            max: n(s.max_verifications),
            why: "0 would verify no dialback key, and one address cannot have more than the server-wide max_verifications",
        },
        at_least(
            "s2s",
            "max_failed_dialbacks_per_ip",
            u64::from(s.max_failed_dialbacks_per_ip),
            1,
            "0 would refuse every dialback",
        ),
        secs(
            "external_services",
            "credential_ttl_secs",
            f.external_services.credential_ttl_secs,
        ),
        at_least(
            "proxy65",
            "max_streams_per_user",
            u64::from(f.proxy65.max_streams_per_user),
            1,
            NONZERO,
        ),
        at_least(
            "proxy65",
            "max_pending",
            u64::from(f.proxy65.max_pending),
            2,
            "a transfer needs two connections waiting for activation",
        ),
        at_least(
            "proxy65",
            "bandwidth_bytes_per_sec",
            f.proxy65.bandwidth_bytes_per_sec,
            1024,
            "below 1 KiB/s no transfer finishes",
        ),
        secs(
            "proxy65",
            "activation_timeout_secs",
            f.proxy65.activation_timeout_secs,
        ),
        secs("proxy65", "idle_timeout_secs", f.proxy65.idle_timeout_secs),
        at_least(
            "turn",
            "max_allocations_per_user",
            u64::from(f.turn.max_allocations_per_user),
            1,
            "0 would refuse every allocation",
        ),
        Bound {
            table: "turn",
            key: "max_allocations",
            value: u64::from(f.turn.max_allocations),
            min: 1,
            max: 1_000_000,
            why: "each allocation is a UDP socket and a task",
        },
        at_least(
            "turn",
            "allocation_bandwidth_bytes_per_sec",
            f.turn.allocation_bandwidth_bytes_per_sec,
            8192,
            "below 8 KiB/s not even an audio call gets through",
        ),
        at_least(
            "turn",
            "user_bandwidth_bytes_per_sec",
            f.turn.user_bandwidth_bytes_per_sec,
            8192,
            "below 8 KiB/s not even an audio call gets through",
        ),
        Bound {
            table: "turn",
            key: "max_allocation_secs",
            value: f.turn.max_allocation_secs,
            min: 60,
            max: MAX_SECS,
            why: "an allocation must outlive a call's set-up; more than a year is a mistake",
        },
        Bound {
            table: "link_local",
            key: "max_peers",
            value: n(f.link_local.max_peers),
            min: 1,
            max: 10_000,
            why: "every peer is a table entry and, for bridged users, a contact; a LAN has far fewer",
        },
        Bound {
            table: "link_local",
            key: "max_streams",
            value: n(f.link_local.max_streams),
            min: 1,
            max: 10_000,
            why: "each serverless stream is a connection and a task",
        },
        Bound {
            table: "link_local",
            key: "stanza_rate",
            value: f.link_local.stanza_rate,
            min: 1,
            max: 10_000,
            why: "stanzas per second per peer address; 0 would refuse everything",
        },
        Bound {
            table: "link_local",
            key: "stanza_burst",
            value: f.link_local.stanza_burst,
            min: f.link_local.stanza_rate,
            max: 100_000,
            why: "the burst cannot be below the rate",
        },
        secs(
            "link_local",
            "connect_timeout_secs",
            f.link_local.connect_timeout_secs,
        ),
        secs(
            "link_local",
            "idle_timeout_secs",
            f.link_local.idle_timeout_secs,
        ),
        Bound {
            table: "websocket",
            key: "ping_interval_secs",
            value: f.websocket.ping_interval_secs,
            min: 5,
            max: 3600,
            why: "pings more often than every 5 s cost more than they tell; an hour exceeds any proxy's idle timeout",
        },
        Bound {
            table: "compression",
            key: "max_ratio",
            value: f.compression.max_ratio,
            min: 1,
            max: 1032,
            why: "below 1 nothing inflates; deflate cannot exceed 1032:1, so a larger ratio is no bound",
        },
        Bound {
            table: "http",
            key: "max_body_bytes",
            value: n(f.http.max_body_bytes),
            min: 1024,
            max: 1 << 30,
            why: "ordinary requests are read into memory; uploads have their own limit",
        },
        secs(
            "http",
            "header_read_timeout_secs",
            f.http.header_read_timeout_secs,
        ),
        secs("http", "request_timeout_secs", f.http.request_timeout_secs),
        Bound {
            table: "acme",
            key: "renew_before_days",
            value: u64::from(f.acme.renew_before_days),
            min: 1,
            max: 365,
            why: "0 would renew only once the certificate has expired",
        },
        secs("acme", "retry_initial_secs", f.acme.retry_initial_secs),
        secs("acme", "retry_max_secs", f.acme.retry_max_secs),
        at_least(
            "http",
            "max_connections",
            n(f.http.max_connections),
            1,
            NONZERO,
        ),
        Bound {
            table: "http",
            key: "hsts_max_age_secs",
            value: f.http.hsts_max_age_secs,
            min: 0,
            max: 2 * MAX_SECS,
            why: "browsers cap it at two years",
        },
        Bound {
            table: "bosh",
            key: "max_sessions",
            value: n(f.bosh.max_sessions),
            min: 1,
            max: 10_000_000,
            why: "to turn BOSH off, set enabled = false",
        },
        Bound {
            table: "bosh",
            key: "max_wait_secs",
            value: f.bosh.max_wait_secs,
            min: 1,
            max: 3600,
            why: "a held request must end before proxies and browsers give up on it",
        },
        Bound {
            table: "bosh",
            key: "inactivity_secs",
            value: f.bosh.inactivity_secs,
            min: 1,
            max: 3600,
            why: "a session with no request for that long is gone; longer only delays noticing",
        },
        Bound {
            table: "bosh",
            key: "max_pause_secs",
            value: f.bosh.max_pause_secs,
            min: 0,
            max: 86_400,
            why: "0 offers no pause; a day is more than any page change needs",
        },
        at_least(
            "upload",
            "max_file_bytes",
            f.upload.max_file_bytes,
            1,
            NONZERO,
        ),
        secs("upload", "slot_timeout_secs", f.upload.slot_timeout_secs),
        Bound {
            table: "upload",
            key: "retention_days",
            value: u64::from(f.upload.retention_days),
            min: 0,
            max: 36_500,
            why: "0 keeps files forever; a longer retention is a typo",
        },
    ];
    for b in bounds {
        if !(b.min..=b.max).contains(&b.value) {
            let range = if b.max == u64::MAX {
                format!("at least {}", b.min)
            } else {
                format!("between {} and {}", b.min, b.max)
            };
            return Err(ConfigError::in_table(
                source,
                b.table,
                b.key,
                format!(
                    "[{}] {} = {} is refused: it must be {range} ({})",
                    b.table, b.key, b.value, b.why
                ),
            ));
        }
    }
    for (key, v) in [("throttle_at", r.throttle_at), ("block_at", r.block_at)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(ConfigError::in_table(
                source,
                "s2s.reputation",
                key,
                format!("[s2s.reputation] {key} = {v} is refused: it must be a positive number"),
            ));
        }
    }
    if r.throttle_at > r.block_at {
        return Err(ConfigError::in_table(
            source,
            "s2s.reputation",
            "throttle_at",
            "[s2s.reputation] throttle_at must not be above block_at".to_string(),
        ));
    }
    Ok(())
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

fn link_local_config(
    ll: &raw::LinkLocal,
    hosts: &[String],
    source: &str,
) -> Result<LinkLocalConfig, ConfigError> {
    let err = |key: &str, msg: String| {
        ConfigError::in_table(
            source,
            "link_local",
            key,
            format!("[link_local] {key}: {msg}"),
        )
    };
    let bad = |key: &str, msg: String| Err(err(key, msg));
    let interface = Some(ll.interface.trim().to_string()).filter(|i| !i.is_empty());
    if ll.enabled && interface.is_none() {
        return bad(
            "interface",
            "enabled needs `interface`: the LAN interface (name or address) on \
             which users are announced, never every interface of a server"
                .into(),
        );
    }
    if !ll.machine.is_empty() && !crate::link_local::name::valid_machine(&ll.machine) {
        return bad(
            "machine",
            format!(
                "machine {:?}: letters, digits and '-' only (it is a DNS label), at most 63 bytes",
                ll.machine
            ),
        );
    }
    let gateways = hosts
        .iter()
        .map(|h| {
            BareJid::domain_only(&format!("{}.{h}", ll.gateway))
                .map(|j| j.domain().to_string())
                .map_err(|e| err("gateway", format!("gateway {:?}: {e}", ll.gateway)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut users = Vec::new();
    for u in &ll.users {
        let jid = match BareJid::parse(u) {
            Ok(j) if j.local().is_some() && hosts.iter().any(|h| h == j.domain()) => j,
            _ => {
                return bad(
                    "users",
                    format!("{u:?} is not the bare JID of an account on one of `hosts`"),
                );
            }
        };
        users.push(jid);
    }
    if ll.require_tls && !ll.tls {
        return bad("require_tls", "require_tls needs tls = true".into());
    }
    Ok(LinkLocalConfig {
        enabled: ll.enabled,
        interface,
        port: ll.port,
        machine: ll.machine.clone(),
        gateways,
        users,
        publish_jid: ll.publish_jid,
        tls: ll.tls,
        require_tls: ll.require_tls,
        max_peers: ll.max_peers,
        max_streams: ll.max_streams,
        stanza_rate: ll.stanza_rate,
        stanza_burst: ll.stanza_burst,
        connect_timeout: Duration::from_secs(ll.connect_timeout_secs),
        idle_timeout: Duration::from_secs(ll.idle_timeout_secs),
    })
}

fn pubsub_config(
    p: &raw::PubSub,
    hosts: &[String],
    source: &str,
) -> Result<PubSubConfig, ConfigError> {
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
        if interval < min_interval || interval.as_secs() > MAX_SECS {
            return bad(
                "interval_secs",
                format!(
                    "feed interval {}s is not between feed_min_interval_secs ({}s) and {MAX_SECS}s",
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
        max_items_per_reply: p.max_items_per_reply,
        feeds,
        max_pep_nodes: p.max_pep_nodes,
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
        max_history_bytes: m.max_history_bytes,
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

/// The line that sets `key` inside `[table]` (`""`: before any table header).
fn find_table_key_line(source: &str, table: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in source.lines().enumerate() {
        let t = line.trim_start();
        if let Some(header) = t.strip_prefix('[') {
            let header = header.trim_start_matches('[');
            if let Some(end) = header.find(']') {
                current = header[..end]
                    .split('.')
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(".");
            }
            continue;
        }
        if current == table
            && t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    None
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
    fn cluster_needs_redis_a_node_name_and_postgres() {
        assert!(Config::embedded_default().cluster.is_none());
        let pg = "[storage]\ndatabase = \"postgres://wx@db/wx\"\n";
        let c = Config::parse(&format!(
            "{pg}[cluster]\nredis = \"redis://:pw@r:6379/\"\nnode = \"xmpp-1\"\n"
        ))
        .unwrap();
        let cl = c.cluster.unwrap();
        assert_eq!((cl.node.as_str(), cl.heartbeat.as_secs()), ("xmpp-1", 2));
        assert_eq!(cl.dead_after.as_secs(), 10);
        // SQLite is one node's: refused.
        let e = Config::parse("[cluster]\nredis = \"redis://r/\"\nnode = \"a\"\n").unwrap_err();
        assert!(e.message.contains("postgres"), "{}", e.message);
        let e = Config::parse(&format!("{pg}[cluster]\nredis = \"redis://r/\"\n")).unwrap_err();
        assert!(e.message.contains("node"), "{}", e.message);
        let e = Config::parse(&format!("{pg}[cluster]\nnode = \"a\"\n")).unwrap_err();
        assert!(e.message.contains("redis"), "{}", e.message);
        let e = Config::parse(&format!(
            "{pg}[cluster]\nredis = \"redis://r/\"\nnode = \"a b\"\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("node name"), "{}", e.message);
        // The password never appears in the error.
        let e = Config::parse(&format!(
            "{pg}[cluster]\nredis = \"http://:secret@r/\"\nnode = \"a\"\n"
        ))
        .unwrap_err();
        assert!(!e.message.contains("secret"), "{}", e.message);
        let e = Config::parse(&format!(
            "{pg}[cluster]\nredis = \"redis://r/\"\nnode = \"a\"\nheartbeat_secs = 5\ndead_after_secs = 6\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("twice"), "{}", e.message);
        let e = Config::parse(&format!(
            "{pg}[cluster]\nredis = \"redis://r/\"\nnode = \"a\"\nheartbeat_secs = 0\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("heartbeat_secs"), "{}", e.message);
        let c = Config::parse(&format!(
            "{pg}[cluster]\nredis = \"redis://r/\"\nnode = \"a\"\nadvertise = \"[2001:db8::1]:5222\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.cluster.unwrap().advertise.as_deref(),
            Some("[2001:db8::1]:5222")
        );
        let e = Config::parse(&format!(
            "{pg}[cluster]\nredis = \"redis://r/\"\nnode = \"a\"\nadvertise = \"x' y\"\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("advertise"), "{}", e.message);
    }

    #[test]
    fn storage_urls_and_pool_size() {
        let c = Config::parse(
            "[storage]\ndatabase = \"postgres://wx:secret@db:5432/wx\"\nmax_connections = 25\n",
        )
        .unwrap();
        assert_eq!(c.database_url, "postgres://wx:secret@db:5432/wx");
        assert_eq!(c.storage.max_connections, 25);
        assert_eq!(Config::embedded_default().storage.max_connections, 10);
        let e = Config::parse("[storage]\ndatabase = \"mysql://wx:secret@db/wx\"\n").unwrap_err();
        assert!(e.to_string().contains("mysql"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = Config::parse("[storage]\nmax_connections = 0\n").unwrap_err();
        assert!(e.to_string().contains("max_connections"), "{e}");
    }

    #[test]
    fn store_cache_settings() {
        let d = Config::embedded_default().store_cache;
        assert_eq!(d.accounts, 10_000);
        assert_eq!(d.lifetime, Duration::from_secs(60));
        let c = Config::parse("[storage]\ncache_accounts = 0\ncache_secs = 5\n").unwrap();
        assert_eq!(c.store_cache.accounts, 0);
        assert_eq!(c.store_cache.lifetime, Duration::from_secs(5));
        for bad in [
            "cache_secs = 0",
            "cache_secs = 3601",
            "cache_accounts = 10000001",
        ] {
            let e = Config::parse(&format!("[storage]\n{bad}\n")).unwrap_err();
            assert!(
                e.to_string().contains(bad.split(' ').next().unwrap()),
                "{e}"
            );
        }
        // Other nodes write the same database: no cache in a cluster.
        let pg = "[storage]\ndatabase = \"postgres://wx:pw@db/wx\"\n";
        let c = Config::parse(&format!(
            "{pg}[cluster]\nredis = \"redis://r/\"\nnode = \"a\"\n"
        ))
        .unwrap();
        assert_eq!(c.store_cache.accounts, 0);
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
    fn a_zero_write_timeout_is_refused() {
        let e = Config::parse("hosts = [\"a.example\"]\n[limits]\nwrite_timeout_secs = 0\n")
            .unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("write_timeout_secs"), "{e}");
    }

    #[test]
    fn issue_14_auth_limits_are_validated() {
        let c = Config::embedded_default();
        assert_eq!(c.max_stanza_bytes_before_auth, 10_000);
        assert_eq!(c.auth_prefixes.v6, 64);
        assert_eq!(c.registration_max_per_stream, 1);
        assert!(c.invites.enabled && !c.invites.users_can_invite_accounts);
        assert_eq!(c.invites.expiry, Duration::from_secs(7 * 86_400));
        assert_eq!(c.invites.max_pending_per_user, 20);
        for (toml, line) in [
            ("[limits]\nmax_stanza_bytes_before_auth = 100\n", 2),
            ("[limits]\nmax_stanza_bytes_before_auth = 300000\n", 2),
            ("[limits]\npartial_stanza_budget_bytes = 1000\n", 2),
            ("[auth]\nipv6_prefix_length = 129\n", 2),
            ("[auth]\n\nipv4_prefix_length = 4\n", 3),
            ("[auth]\nmax_failures_per_account = 0\n", 2),
            ("[registration]\nmax_per_address = 0\n", 2),
            ("[registration]\nmax_per_stream = 0\n", 2),
            ("[invites]\nexpiry_secs = 0\n", 2),
            ("[invites]\nmax_pending_per_user = 0\n", 2),
            ("[invites]\nmax_pending_per_user = 10001\n", 2),
        ] {
            let e = Config::parse(toml).unwrap_err();
            assert_eq!(e.line, Some(line), "{toml}: {e}");
        }
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
            "[pubsub]\nmax_items_per_reply = 0\n",
            "[pubsub]\nmax_items_per_reply = 1025\n",
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
        assert_eq!(c.muc.max_rooms_per_user, 20);
        assert_eq!(c.muc.max_history_bytes, 262_144);
        assert_eq!(c.max_roster_items, 1000);
        assert_eq!(c.max_pending_subscriptions, 100);
        assert_eq!(c.pubsub.max_pep_nodes, 256);
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
    fn http_listener_and_upload_options() {
        let c = Config::embedded_default();
        assert_eq!(c.http.listen, vec!["127.0.0.1:5280".parse().unwrap()]);
        assert_eq!(c.http.listen_tls, vec!["[::]:5443".parse().unwrap()]);
        assert_eq!(c.http.public_url, None);
        assert!(c.http.web_client);
        assert_eq!(c.upload.domains, vec!["upload.localhost".to_string()]);
        assert_eq!(c.upload.dir, PathBuf::from("./data").join("upload"));
        // A [listen] table that names no HTTP listener opens none.
        let c = Config::parse("[listen]\nc2s = [\"127.0.0.1:0\"]\n").unwrap();
        assert!(c.http.listen.is_empty() && c.http.listen_tls.is_empty());
        let c = Config::parse(
            "[http]\npublic_url = \"HTTPS://Chat.Example.org/\"\nallowed_origins = [\"*\", \"https://a.example:8443\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.http.public_url.as_deref(),
            Some("https://chat.example.org")
        );
        assert!(c.http.any_origin);
        assert_eq!(
            c.http.allowed_origins,
            vec!["https://a.example:8443".to_string()]
        );
        let e = Config::parse("[http]\npublic_url = \"chat.example.org\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e =
            Config::parse("[http]\nallowed_origins = [\"https://a.example/path\"]\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = Config::parse("[http]\nmax_connections = 0\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = Config::parse("[upload]\nsubdomain = \"a b\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let c = Config::parse("[upload]\nenabled = false\n").unwrap();
        assert!(c.upload.domains.is_empty());
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
    fn websocket_redirects_must_be_websocket_uris() {
        let c = Config::parse("[websocket]\nsee_other_uri = \"wss://chat.example/ws\"\n").unwrap();
        assert_eq!(
            c.websocket.see_other_uri.as_deref(),
            Some("wss://chat.example/ws")
        );
        assert!(c.websocket.enabled && c.websocket.loopback_is_secure);
        for bad in ["https://chat.example/", "wss://", "wss://a'b/"] {
            let e =
                Config::parse(&format!("[websocket]\nsee_other_uri = \"{bad}\"\n")).unwrap_err();
            assert_eq!(e.line, Some(2), "{bad}: {e}");
        }
    }

    #[test]
    fn nonsense_numbers_are_refused_with_their_line() {
        // Each value below used to be accepted (a zero read rate panicked
        // the token bucket at the first read), or was reported on the line
        // of a same-named key in another table.
        let cases = [
            ("[limits]", "read_rate_bytes = 0"),
            ("[tls]", "resumption_cache = 1000000000000"),
            ("[limits]", "max_connections_per_ip = 0"),
            ("[limits]", "stanza_timeout_secs = 0"),
            ("[limits]", "idle_timeout_secs = 0"),
            ("[limits]", "resume_timeout_secs = 0"),
            ("[limits]", "auth_timeout_secs = 100000000000"),
            ("[limits]", "max_depth = 100000"),
            ("[limits]", "max_roster_items = 0"),
            ("[limits]", "max_pending_subscriptions = 0"),
            ("[limits]", "max_pending_subscriptions = 1001"),
            ("[auth]", "max_failures_per_ip = 0"),
            ("[auth]", "max_failures_per_account = 0"),
            ("[auth]", "failure_window_secs = 0"),
            ("[auth]", "scram_iterations = 4000000000"),
            ("[registration]", "min_password_length = 0"),
            ("[mam]", "retention_days = 4000000000"),
            ("[muc]", "max_history_bytes = 0"),
            ("[muc]", "max_rooms_per_user = 0"),
            ("[muc]", "crawl_max_rooms = 0"),
            ("[muc]", "crawl_interval_secs = 0"),
            ("[pubsub]", "max_pep_nodes = 0"),
            ("[pubsub]", "feed_timeout_secs = 0"),
            ("[pubsub]", "feed_concurrency = 100000"),
            ("[s2s]", "idle_timeout_secs = 0"),
            ("[s2s]", "connect_timeout_secs = 99999999999"),
            ("[s2s]", "stanza_rate = 0"),
            ("[s2s.reputation]", "half_life_secs = 0"),
            ("[s2s.reputation]", "block_at = inf"),
            ("[s2s.reputation]", "throttle_at = nan"),
            ("[compression]", "max_ratio = 0"),
            ("[websocket]", "ping_interval_secs = 1"),
            ("[compression]", "max_ratio = 100000"),
            ("[link_local]", "max_peers = 0"),
            ("[link_local]", "max_streams = 0"),
            ("[link_local]", "stanza_rate = 0"),
            ("[link_local]", "idle_timeout_secs = 0"),
        ];
        for (table, line) in cases {
            // A valid same-named key in another table first: the error must
            // name the line of the key in its own table, line 6.
            let decoy = if table == "[limits]" {
                "[s2s]"
            } else {
                "[limits]"
            };
            let src = format!(
                "hosts = [\"a.example\"]\n{decoy}\nidle_timeout_secs = 60\n\n{table}\n{line}\n"
            );
            let e = Config::parse(&src).unwrap_err();
            assert_eq!(e.line, Some(6), "{line}: {e}");
            let key = line.split(' ').next().unwrap();
            assert!(e.message.contains(key), "{line}: {e}");
        }
        // The boundaries themselves are fine.
        Config::parse(
            "[limits]\nread_rate_bytes = 1\nmax_pending_subscriptions = 1000\n\
             [mam]\nretention_days = 0\n[muc]\nmax_history = 0\n[tls]\nresumption_cache = 0\n",
        )
        .unwrap();
    }

    #[test]
    fn link_local_is_off_by_default_and_checked_when_on() {
        let c = Config::parse("").unwrap();
        assert!(!c.link_local.enabled);
        assert!(c.link_local.users.is_empty());
        assert!(!c.link_local.publish_jid);
        assert_eq!(c.link_local.gateways, vec!["lan.localhost".to_string()]);
        // Enabled needs an interface: never every interface of a server.
        let e = Config::parse("[link_local]\nenabled = true\n").unwrap_err();
        assert!(e.message.contains("interface"), "{e}");
        let ok = Config::parse(
            "hosts = [\"a.example\", \"b.example\"]\n[link_local]\nenabled = true\n\
             interface = \"eth0\"\nusers = [\"Alice@A.example\"]\nmachine = \"desk-2\"\n",
        )
        .unwrap();
        assert_eq!(ok.link_local.interface.as_deref(), Some("eth0"));
        assert_eq!(ok.link_local.users[0].to_string(), "alice@a.example");
        assert_eq!(ok.link_local.gateways, ["lan.a.example", "lan.b.example"]);
        for (bad, key) in [
            ("users = [\"alice@elsewhere.example\"]", "users"),
            ("users = [\"a.example\"]", "users"),
            ("machine = \"my laptop\"", "machine"),
            ("tls = false\nrequire_tls = true", "require_tls"),
            ("stanza_rate = 10\nstanza_burst = 5", "stanza_burst"),
        ] {
            let src = format!("hosts = [\"a.example\"]\n[link_local]\n{bad}\n");
            let e = Config::parse(&src).unwrap_err();
            assert!(e.message.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn invalid_host_is_refused() {
        let e = Config::parse("hosts = [\"bad host\"]\n").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }
}
