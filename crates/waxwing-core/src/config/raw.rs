//! Serde mirror of the TOML file. Every field has the documented default;
//! unknown keys are errors so that a typo never silently falls back to a
//! default (ejabberd and Prosody both warn; we refuse).

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct File {
    pub data_dir: String,
    pub hosts: Vec<String>,
    pub admins: Vec<String>,
    pub listen: Listen,
    pub tls: Tls,
    pub storage: Storage,
    pub auth: Auth,
    pub registration: Registration,
    pub limits: Limits,
    pub log: Log,
    pub s2s: S2s,
    pub contact: Contact,
    pub mam: Mam,
    pub muc: Muc,
    pub pubsub: PubSub,
    pub compression: Compression,
    /// Module names (as `waxwing config check` lists them) not to load.
    pub modules_disabled: Vec<String>,
    /// `[[components]]`: XEP-0114 external components.
    pub components: Vec<super::ext::RawComponent>,
    /// `[external_services]`: XEP-0215 STUN/TURN services.
    pub external_services: super::ext::RawExternalServices,
    /// `[proxy65]`: XEP-0065 SOCKS5 bytestreams proxy.
    pub proxy65: super::ext::RawProxy65,
    /// `[turn]`: the built-in STUN/TURN server.
    pub turn: super::turn::RawTurn,
    /// `[modules.<name>]`: options of modules that read their own table
    /// (each deserializes and checks it; see docs/modules.md).
    pub modules: std::collections::BTreeMap<String, toml::Table>,
    pub http: Http,
    pub upload: Upload,
    pub link_local: LinkLocal,
    pub bosh: Bosh,
    pub websocket: WebSocket,
    pub metrics: Metrics,
    pub admin: Admin,
    pub acme: Acme,
    pub cluster: Cluster,
    pub invites: Invites,
}

impl Default for File {
    fn default() -> Self {
        File {
            data_dir: "./data".into(),
            hosts: vec!["localhost".into()],
            admins: Vec::new(),
            listen: Listen::default(),
            tls: Tls::default(),
            storage: Storage::default(),
            auth: Auth::default(),
            registration: Registration::default(),
            limits: Limits::default(),
            log: Log::default(),
            s2s: S2s::default(),
            contact: Contact::default(),
            mam: Mam::default(),
            muc: Muc::default(),
            pubsub: PubSub::default(),
            compression: Compression::default(),
            modules_disabled: Vec::new(),
            components: Vec::new(),
            external_services: Default::default(),
            proxy65: Default::default(),
            turn: Default::default(),
            modules: Default::default(),
            http: Http::default(),
            bosh: Bosh::default(),
            upload: Upload::default(),
            link_local: LinkLocal::default(),
            websocket: WebSocket::default(),
            metrics: Metrics::default(),
            admin: Admin::default(),
            acme: Acme::default(),
            cluster: Cluster::default(),
            invites: Invites::default(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    pub c2s: Vec<String>,
    pub c2s_direct_tls: Vec<String>,
    /// Server-to-server with STARTTLS. Without a `[listen]` table the
    /// default is `[::]:5269`; a `[listen]` table that does not name s2s
    /// listeners opens none (so test and c2s-only setups need not know).
    #[serde(default)]
    pub s2s: Vec<String>,
    /// Server-to-server with TLS from the first byte (XEP-0368); as `s2s`.
    #[serde(default)]
    pub s2s_direct_tls: Vec<String>,
    /// The HTTP listener (WebSocket, BOSH, discovery, upload, web client),
    /// plain. Like `s2s`: a `[listen]` table that does not name it opens none.
    #[serde(default)]
    pub http: Vec<String>,
    /// The HTTP listener with TLS (the hosts' certificates); as `http`.
    #[serde(default)]
    pub https: Vec<String>,
    /// XEP-0114 external components; opened only when `[[components]]`
    /// are configured. Loopback by default: the handshake is not encrypted.
    #[serde(default = "default_component_listen")]
    pub component: Vec<String>,
}

fn default_component_listen() -> Vec<String> {
    vec!["127.0.0.1:5347".into()]
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            c2s: vec!["[::]:5222".into()],
            c2s_direct_tls: vec!["[::]:5223".into()],
            s2s: vec!["[::]:5269".into()],
            s2s_direct_tls: vec!["[::]:5270".into()],
            component: default_component_listen(),
            http: vec!["127.0.0.1:5280".into()],
            https: vec!["[::]:5443".into()],
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    pub require_encryption: bool,
    pub resumption_cache: usize,
    /// Seconds between checks of the certificate files for changes (0: never).
    pub watch_interval_secs: u64,
    pub certificates: Vec<Certificate>,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            require_encryption: true,
            resumption_cache: 0,
            watch_interval_secs: 60,
            certificates: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub host: String,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub database: Option<String>,
    pub synchronous: Option<String>,
    pub max_connections: u32,
    /// Accounts whose secrets and rosters are kept in memory (0: none).
    pub cache_accounts: u64,
    /// How long a cached entry may be used after it was read.
    pub cache_secs: u64,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            database: None,
            synchronous: None,
            max_connections: waxwing_store::OpenOptions::default().max_connections,
            cache_accounts: 10_000,
            cache_secs: 60,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub scram_iterations: u32,
    pub allow_plain: bool,
    pub max_failures_per_stream: u32,
    pub max_failures_per_ip: u32,
    pub max_failures_per_account: u32,
    pub failure_window_secs: u64,
    /// Leading bits of an IPv4 / IPv6 address that count as one address
    /// for the failure limits.
    pub ipv4_prefix_length: u8,
    pub ipv6_prefix_length: u8,
    /// SASL mechanisms offered on hosts without their own list; `None`:
    /// every mechanism the host's account source can serve.
    pub mechanisms: Option<Vec<String>>,
    /// `[auth.hosts."example.org"]`: the account source and mechanisms of one host.
    pub hosts: std::collections::BTreeMap<String, HostAuth>,
    /// `[auth.listeners]`: `"ADDRESS" = [mechanisms]` narrows what one c2s
    /// listener offers (e.g. EXTERNAL only on an internal port).
    pub listeners: std::collections::BTreeMap<String, Vec<String>>,
    /// SASL ANONYMOUS logins one address prefix may make per `anonymous_window_secs`.
    pub anonymous_max_per_address: u32,
    pub anonymous_window_secs: u64,
    /// `[auth.client_certificates]`: SASL EXTERNAL for clients (XEP-0178).
    pub client_certificates: Option<ClientCertificates>,
    /// `[auth.gssapi]`: the Kerberos keytab of every host's service principal.
    pub gssapi: Option<Gssapi>,
}

/// `[auth.gssapi]`: server-wide Kerberos settings (GSSAPI, RFC 4752).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gssapi {
    /// The keytab holding the `xmpp/<host>@<REALM>` keys (one file for
    /// every host: the GSS library reads one keytab per process).
    pub keytab: String,
}

/// `[auth.hosts."example.org".gssapi]`: which Kerberos principals are this host's users.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostGssapi {
    /// `user@REALM` logs in as `user@<host>`.
    pub realm: String,
    /// The acceptor's principal; `xmpp/<host>@<realm>` when unset.
    pub service_principal: Option<String>,
    /// Explicit `"principal@REALM" = "localpart"` mappings, checked first
    /// (other realms, instances such as `jdoe/admin`, renamed users).
    pub principals: std::collections::BTreeMap<String, String>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            scram_iterations: 4096,
            allow_plain: true,
            max_failures_per_stream: 3,
            max_failures_per_ip: 20,
            max_failures_per_account: 10,
            failure_window_secs: 600,
            ipv4_prefix_length: 32,
            ipv6_prefix_length: 64,
            mechanisms: None,
            hosts: Default::default(),
            listeners: Default::default(),
            anonymous_max_per_address: 10,
            anonymous_window_secs: 600,
            client_certificates: None,
            gssapi: None,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registration {
    pub open: bool,
    pub min_password_length: usize,
    /// Accounts one stream may create.
    pub max_per_stream: u32,
    /// Accounts one address prefix may create per `address_window_secs`.
    pub max_per_address: u32,
    pub address_window_secs: u64,
}

impl Default for Registration {
    fn default() -> Self {
        Registration {
            open: false,
            min_password_length: 8,
            max_per_stream: 1,
            max_per_address: 5,
            address_window_secs: 3600,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_stanza_bytes: usize,
    /// The size limit for any one element before authentication.
    pub max_stanza_bytes_before_auth: usize,
    /// Bytes all connections together may hold in unfinished stanzas.
    pub partial_stanza_budget_bytes: usize,
    pub max_depth: usize,
    pub max_attributes: usize,
    pub auth_timeout_secs: u64,
    pub outbound_queue: usize,
    pub outbound_burst: usize,
    pub offline_quota: u32,
    pub max_resources: usize,
    pub max_connections_per_ip: u32,
    pub read_rate_bytes: u64,
    pub read_burst_bytes: u64,
    pub stanza_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub resume_timeout_secs: u64,
    pub write_timeout_secs: u64,
    /// Rows one roster may hold: contacts, and the hidden rows that keep a
    /// pending subscription request or a pre-approval (RFC 6121 §2.1.5).
    pub max_roster_items: usize,
    /// Subscription requests one account may have waiting for an answer.
    pub max_pending_subscriptions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 262_144,
            max_stanza_bytes_before_auth: 10_000,
            partial_stanza_budget_bytes: 134_217_728,
            max_depth: 32,
            max_attributes: 64,
            auth_timeout_secs: 60,
            outbound_queue: 1024,
            outbound_burst: 8192,
            offline_quota: 1000,
            max_resources: 32,
            max_connections_per_ip: 64,
            read_rate_bytes: 65_536,
            read_burst_bytes: 1_048_576,
            stanza_timeout_secs: 60,
            idle_timeout_secs: 1800,
            resume_timeout_secs: 300,
            write_timeout_secs: 60,
            max_roster_items: 1000,
            max_pending_subscriptions: 100,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub level: String,
    pub format: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[muc]`: XEP-0045 Multi-User Chat, one service per virtual host.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Muc {
    /// Serve `<subdomain>.<host>` for every host.
    pub enabled: bool,
    /// The label prepended to each host: `conference` gives `conference.example.org`.
    pub subdomain: String,
    /// Most messages of discussion history a room keeps (and sends on join).
    pub max_history: usize,
    /// Most bytes of discussion history a room keeps in memory.
    pub max_history_bytes: usize,
    /// Whether new rooms start with `muc#roomconfig_enablelogging` on: the
    /// room archive (XEP-0313), which also carries history over restarts.
    pub log_by_default: bool,
    /// Hard cap on occupants per room; a room's own `maxusers` can only be lower.
    pub max_occupants: usize,
    /// Most rooms one account may own at once.
    pub max_rooms_per_user: usize,
    /// Who may create rooms: "anyone", "local" (accounts of our hosts) or "admins".
    pub room_creation: String,
    /// Remote MUC service domains whose public rooms the directory indexes.
    pub crawl: Vec<String>,
    /// Seconds between two crawls of the remote services.
    pub crawl_interval_secs: u64,
    /// Most rooms indexed (and asked for disco#info) per remote service.
    pub crawl_max_rooms: usize,
}

impl Default for Muc {
    fn default() -> Self {
        Muc {
            enabled: true,
            subdomain: "conference".into(),
            max_history: 50,
            max_history_bytes: 262_144,
            log_by_default: true,
            max_occupants: 1000,
            max_rooms_per_user: 20,
            room_creation: "local".into(),
            crawl: Vec::new(),
            crawl_interval_secs: 3600,
            crawl_max_rooms: 500,
        }
    }
}

/// `[pubsub]`: the `pubsub.<host>` services and the RSS/Atom feeds they
/// republish.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PubSub {
    /// Smallest poll interval a feed may have (config or admin command).
    pub feed_min_interval_secs: u64,
    /// Feeds fetched at the same time, server-wide.
    pub feed_concurrency: usize,
    /// Whole-request timeout of one fetch.
    pub feed_timeout_secs: u64,
    /// Largest feed document accepted, in bytes.
    pub feed_max_bytes: u64,
    /// Longest wait between attempts of a failing feed (exponential backoff cap).
    pub feed_max_backoff_secs: u64,
    /// Most items one `<items/>` reply carries (PubSub and PEP); a larger
    /// result is truncated and says so with RSM.
    pub max_items_per_reply: usize,
    /// PEP nodes one account may have (XEP-0163 auto-create included).
    pub max_pep_nodes: usize,
    /// Feeds to republish.
    pub feeds: Vec<Feed>,
}

impl Default for PubSub {
    fn default() -> Self {
        PubSub {
            feed_min_interval_secs: 60,
            feed_concurrency: 4,
            feed_timeout_secs: 30,
            feed_max_bytes: 2 * 1024 * 1024,
            feed_max_backoff_secs: 6 * 3600,
            max_items_per_reply: 256,
            max_pep_nodes: 256,
            feeds: Vec::new(),
        }
    }
}

/// `[[pubsub.feeds]]`: one RSS/Atom feed republished on a node.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Feed {
    /// The feed's `http://` or `https://` URL.
    pub url: String,
    /// The node of `pubsub.<host>` the entries are published on (created if missing).
    pub node: String,
    /// The virtual host whose pubsub service carries the node; default: the first host.
    pub host: Option<String>,
    /// Seconds between two polls; default 900.
    pub interval_secs: Option<u64>,
}

/// `[compression]`: XEP-0138 stream compression (zlib).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Compression {
    /// Offer compression to authenticated clients. Off by default: see SECURITY.md.
    pub enabled: bool,
    /// Inflated bytes allowed per compressed byte (plus 256 KiB), over a stream's life.
    pub max_ratio: u64,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            enabled: false,
            max_ratio: 100,
        }
    }
}

/// `[mam]`: message archives (XEP-0313).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mam {
    /// Archive messages at all (XEP-0313). On by default: modern clients sync history from it.
    pub enabled: bool,
    /// Days an archived message is kept; 0 keeps it forever.
    pub retention_days: u32,
}

impl Default for Mam {
    fn default() -> Self {
        Mam {
            enabled: true,
            retention_days: 0,
        }
    }
}

/// `[contact]`: XEP-0157 contact addresses, URIs (`mailto:`, `xmpp:`,
/// `https:` …) per role.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Contact {
    pub abuse: Vec<String>,
    pub admin: Vec<String>,
    pub feedback: Vec<String>,
    pub sales: Vec<String>,
    pub security: Vec<String>,
    pub status: Vec<String>,
    pub support: Vec<String>,
}

/// `[s2s]`: federation with other XMPP servers (RFC 6120, XEP-0220, XEP-0178).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S2s {
    /// Federate at all: connect out to remote domains and accept streams.
    pub enabled: bool,
    /// Refuse (and never fall back to) unencrypted s2s streams.
    pub require_encryption: bool,
    /// Default authentication policy: "allow" (certificates, else dialback),
    /// "require-valid-certs" (SASL EXTERNAL or a valid certificate only),
    /// "refuse" (no federation unless a domain overrides it).
    pub dialback: String,
    /// Extra trusted CA certificates (PEM), on top of the system roots.
    pub ca_bundle: Option<String>,
    /// Static routes: domain → "host:port" ("tls://host:port" for direct TLS).
    pub routes: std::collections::BTreeMap<String, String>,
    /// Dialback secret; generated and kept in `data_dir` when absent.
    pub secret: Option<String>,
    /// An s2s connection with no traffic for this long is closed.
    pub idle_timeout_secs: u64,
    /// Resolving, connecting and authenticating to a remote domain must
    /// finish within this; queued stanzas then bounce with remote-server-timeout.
    pub connect_timeout_secs: u64,
    /// Stanzas queued per remote domain while its connection is negotiated.
    pub max_queue: usize,
    /// XEP-0288: carry both directions over one connection when the peer agrees.
    pub bidi: bool,
    /// Per-domain overrides.
    pub domains: std::collections::BTreeMap<String, S2sDomain>,
    /// Remote domains we never federate with (both directions).
    pub blocked_domains: Vec<String>,
    /// Stanzas per second accepted from one remote domain (all its streams).
    pub stanza_rate: u32,
    /// Burst of stanzas allowed from one remote domain above `stanza_rate`.
    pub stanza_burst: u32,
    /// Incoming s2s connections open at once from one address.
    pub max_incoming_per_ip: u32,
    /// Domain pairs with a live outgoing route (connection or queue) at once.
    pub max_outgoing_routes: usize,
    /// Dialback verifications in flight at once, server-wide.
    pub max_verifications: usize,
    /// Dialback verifications in flight at once for one peer address.
    pub max_verifications_per_ip: u32,
    /// Failed dialbacks from one address (in 10 minutes) after which its
    /// further dialback requests are refused without asking anyone.
    pub max_failed_dialbacks_per_ip: u32,
    /// `[s2s.reputation]`.
    pub reputation: S2sReputation,
}

/// `[s2s.reputation]`: thresholds of the local reputation of remote domains.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S2sReputation {
    /// Score from which a domain gets a quarter of the stanza rate.
    pub throttle_at: f64,
    /// Score from which a domain is blocked.
    pub block_at: f64,
    /// The score halves every this many seconds.
    pub half_life_secs: u64,
}

impl Default for S2sReputation {
    fn default() -> Self {
        S2sReputation {
            throttle_at: 10.0,
            block_at: 25.0,
            half_life_secs: 7 * 86_400,
        }
    }
}

impl Default for S2s {
    fn default() -> Self {
        S2s {
            enabled: true,
            require_encryption: true,
            dialback: "allow".into(),
            ca_bundle: None,
            routes: Default::default(),
            secret: None,
            idle_timeout_secs: 600,
            connect_timeout_secs: 30,
            max_queue: 1000,
            bidi: true,
            domains: Default::default(),
            blocked_domains: Vec::new(),
            stanza_rate: 100,
            stanza_burst: 500,
            max_incoming_per_ip: 128,
            max_outgoing_routes: 4096,
            max_verifications: 256,
            max_verifications_per_ip: 16,
            max_failed_dialbacks_per_ip: 10,
            reputation: S2sReputation::default(),
        }
    }
}

/// `[s2s.domains."example.org"]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S2sDomain {
    /// Overrides `[s2s] dialback` for this domain.
    pub dialback: Option<String>,
}

/// `[bosh]`: XEP-0124/0206 BOSH at `/http-bind` on the HTTP listener.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bosh {
    pub enabled: bool,
    /// BOSH sessions at once, server-wide; more are refused.
    pub max_sessions: usize,
    /// Longest a request is held before an empty answer (clients ask for less).
    pub max_wait_secs: u64,
    /// Longest a client may go without a request before its session ends.
    pub inactivity_secs: u64,
    /// Longest pause a client may ask for; 0 offers none.
    pub max_pause_secs: u64,
    /// Requests from a loopback address count as encrypted.
    pub loopback_is_secure: bool,
}

impl Default for Bosh {
    fn default() -> Self {
        Bosh {
            enabled: true,
            max_sessions: 10_000,
            max_wait_secs: 60,
            inactivity_secs: 30,
            max_pause_secs: 120,
            loopback_is_secure: true,
        }
    }
}

/// `[http]`: what every HTTP route shares (listeners are in `[listen]`).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// The base URL clients reach the HTTP listener at (behind a reverse
    /// proxy: the proxy's). Default: derived from the first host and listener.
    pub public_url: Option<String>,
    /// Origins (scheme://host[:port]) besides the server's own that may open
    /// WebSocket/BOSH sessions; `"*"` allows any.
    pub allowed_origins: Vec<String>,
    /// Largest request body of an ordinary route (upload PUTs have their own limit).
    pub max_body_bytes: usize,
    /// Time a client has to send a request's headers (slowloris).
    pub header_read_timeout_secs: u64,
    /// Time an ordinary request may take, body included.
    pub request_timeout_secs: u64,
    /// Open HTTP connections, server-wide; more are closed at once.
    pub max_connections: usize,
    /// `Strict-Transport-Security` max-age on TLS responses; 0 sends none.
    pub hsts_max_age_secs: u64,
    /// Serve the bundled web client (Converse.js) at `/`.
    pub web_client: bool,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            public_url: None,
            allowed_origins: Vec::new(),
            max_body_bytes: 1_048_576,
            header_read_timeout_secs: 10,
            request_timeout_secs: 60,
            max_connections: 4096,
            hsts_max_age_secs: 15_552_000,
            web_client: true,
        }
    }
}

/// `[upload]`: XEP-0363 HTTP File Upload on `<subdomain>.<host>`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upload {
    pub enabled: bool,
    /// The label prepended to each host: `upload` gives `upload.example.org`.
    pub subdomain: String,
    /// Where files are stored. Default: `<data_dir>/upload`.
    pub dir: Option<String>,
    /// Largest file, in bytes (announced in disco#info).
    pub max_file_bytes: u64,
    /// Bytes of live files one account may have.
    pub quota_bytes: u64,
    /// How long an unused slot's PUT URL stays valid.
    pub slot_timeout_secs: u64,
    /// How long a file is kept after upload; 0 keeps files forever.
    pub retention_days: u32,
}

impl Default for Upload {
    fn default() -> Self {
        Upload {
            enabled: true,
            subdomain: "upload".into(),
            dir: None,
            max_file_bytes: 104_857_600,
            quota_bytes: 1_073_741_824,
            slot_timeout_secs: 300,
            retention_days: 30,
        }
    }
}

/// `[link_local]`: XEP-0174 serverless messaging on the LAN and its bridge.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkLocal {
    pub enabled: bool,
    /// The one interface (name such as `eth0`, or one of its IPv4
    /// addresses) on which users are announced and peers accepted.
    pub interface: String,
    /// TCP port of the serverless streams (5298 by tradition; 0: any).
    pub port: u16,
    /// The `machine` of `user@machine`; empty: the host name.
    pub machine: String,
    /// The gateway subdomain under each host: LAN peers are `user%machine@lan.<host>`.
    pub gateway: String,
    /// Bare JIDs of the accounts announced on the LAN.
    pub users: Vec<String>,
    /// Publish the account's JID in the TXT record (`jid=`).
    pub publish_jid: bool,
    /// Offer and use TLS on serverless streams.
    pub tls: bool,
    /// Refuse serverless streams without TLS.
    pub require_tls: bool,
    pub max_peers: usize,
    pub max_streams: usize,
    /// Stanzas per second one peer address may send (sustained), and its burst.
    pub stanza_rate: u64,
    pub stanza_burst: u64,
    pub connect_timeout_secs: u64,
    pub idle_timeout_secs: u64,
}

impl Default for LinkLocal {
    fn default() -> Self {
        LinkLocal {
            enabled: false,
            interface: String::new(),
            port: 5298,
            machine: String::new(),
            gateway: "lan".into(),
            users: Vec::new(),
            publish_jid: false,
            tls: true,
            require_tls: false,
            max_peers: 256,
            max_streams: 64,
            stanza_rate: 5,
            stanza_burst: 20,
            connect_timeout_secs: 10,
            idle_timeout_secs: 600,
        }
    }
}

/// `[websocket]`: XMPP over WebSocket (RFC 7395) at `/xmpp-websocket` on
/// the HTTP listener.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocket {
    pub enabled: bool,
    /// Seconds of silence after which the server pings; a client that does
    /// not answer within as long again is dropped.
    pub ping_interval_secs: u64,
    /// RFC 7395 §3.6.1: answer every `<open/>` with a redirect here instead.
    pub see_other_uri: Option<String>,
    /// Treat plain `ws://` from a loopback address as encrypted (a local
    /// reverse proxy that terminates TLS, or a browser on this machine).
    pub loopback_is_secure: bool,
}

impl Default for WebSocket {
    fn default() -> Self {
        WebSocket {
            enabled: true,
            ping_interval_secs: 60,
            see_other_uri: None,
            loopback_is_secure: true,
        }
    }
}

/// `[metrics]`: `/metrics` (OpenMetrics text) on the HTTP listener.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    pub enabled: bool,
    /// Networks besides loopback whose requests may read `/metrics`.
    pub allowed_networks: Vec<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: true,
            allowed_networks: Vec::new(),
        }
    }
}

/// `[auth.hosts."example.org"]`: where one host's accounts come from.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostAuth {
    /// `"internal"` (the account store), `"anonymous"`, `"extauth"` or `"ldap"`.
    pub source: Option<String>,
    pub mechanisms: Option<Vec<String>>,
    /// External sources: keep SCRAM secrets derived from a password that
    /// the source accepted, so that SCRAM can be offered too (opt-in).
    pub cache_scram: bool,
    /// Historic RFC 2831 DIGEST-MD5 for old clients (internal hosts only):
    /// offered, and its separate secret stored whenever a password is set.
    pub legacy_digest_md5: bool,
    pub extauth: Option<ExtAuth>,
    pub ldap: Option<Ldap>,
    pub gssapi: Option<HostGssapi>,
}

/// `[auth.hosts."example.org".extauth]`: an ejabberd/Prosody extauth program.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtAuth {
    /// The program and its arguments (no shell).
    pub command: Vec<String>,
    /// Copies of the program run at once; each answers one request at a time.
    pub instances: usize,
    /// How long one answer may take before the copy is restarted.
    pub timeout_secs: u64,
    /// Requests waiting for a free copy before new ones are refused.
    pub queue: usize,
}

impl Default for ExtAuth {
    fn default() -> Self {
        ExtAuth {
            command: Vec::new(),
            instances: 1,
            timeout_secs: 10,
            queue: 256,
        }
    }
}

/// `[admin]`: the HTTP admin API (token-authenticated, off by default).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    pub enabled: bool,
    /// Networks besides loopback whose requests may use the admin API.
    pub allowed_networks: Vec<String>,
}

/// `[invites]`: invitations (XEP-0401, XEP-0379, XEP-0445).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Invites {
    pub enabled: bool,
    /// How long an invitation stays valid.
    pub expiry_secs: u64,
    /// Whether users' contact invitations also let the invitee create an
    /// account here (admins' invitations always can).
    pub users_can_invite_accounts: bool,
    /// Unexpired, unused invitations one account may hold at once.
    pub max_pending_per_user: u32,
}

impl Default for Invites {
    fn default() -> Self {
        Invites {
            enabled: true,
            expiry_secs: 7 * 86_400,
            users_can_invite_accounts: false,
            max_pending_per_user: 20,
        }
    }
}

/// `[auth.hosts."example.org".ldap]`: bind authentication against a directory.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ldap {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// Upgrade `ldap://` with StartTLS before sending anything.
    pub starttls: bool,
    /// The service account that searches for users (anonymous search if unset).
    pub bind_dn: Option<String>,
    pub bind_password: Option<String>,
    /// Search mode: where users are, and the filter (`%u` is the localpart).
    pub base: Option<String>,
    pub filter: String,
    /// Direct mode: the user's DN, `%u` the localpart (no search).
    pub user_dn: Option<String>,
    /// Members of this group (DN) are server admins.
    pub admin_group: Option<String>,
    /// The group attribute that holds member DNs.
    pub group_member_attribute: String,
    pub timeout_secs: u64,
    /// Directory connections open at once.
    pub max_connections: usize,
}

impl Default for Ldap {
    fn default() -> Self {
        Ldap {
            url: String::new(),
            starttls: false,
            bind_dn: None,
            bind_password: None,
            base: None,
            filter: "(uid=%u)".into(),
            user_dn: None,
            admin_group: None,
            group_member_attribute: "member".into(),
            timeout_secs: 10,
            max_connections: 8,
        }
    }
}

/// `[auth.client_certificates]`: client certificates and SASL EXTERNAL.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientCertificates {
    /// PEM bundle of the CAs whose client certificates are accepted.
    pub ca_file: String,
    /// PEM or DER CRLs; a revoked certificate fails the TLS handshake.
    pub crl_files: Vec<String>,
    /// Which name in the certificate is the account: `"xmppaddr"`
    /// (id-on-xmppAddr, the full JID), `"email"` (the local part of an
    /// rfc822Name or subject e-mail, on the stream's host) or `"cn"`.
    pub identity: Option<String>,
}

/// `[acme]`: certificates from an ACME (RFC 8555) CA such as Let's Encrypt.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Acme {
    pub enabled: bool,
    /// The CA's directory URL.
    pub directory: String,
    /// E-mail addresses the CA may write to (expiry notices).
    pub contact: Vec<String>,
    /// The operator has read and agrees to the CA's terms of service.
    pub terms_agreed: bool,
    /// PEM roots for the CA's own HTTPS (private CAs).
    pub ca_file: Option<String>,
    pub renew_before_days: u32,
    /// `"http-01"`, `"tls-alpn-01"`, in order of preference.
    pub challenges: Vec<String>,
    pub retry_initial_secs: u64,
    pub retry_max_secs: u64,
    /// Names not to request.
    pub exclude: Vec<String>,
}

impl Default for Acme {
    fn default() -> Self {
        Acme {
            enabled: false,
            directory: super::acme::LETS_ENCRYPT.into(),
            contact: Vec::new(),
            terms_agreed: false,
            ca_file: None,
            renew_before_days: 30,
            challenges: vec!["http-01".into()],
            retry_initial_secs: 600,
            retry_max_secs: 86_400,
            exclude: Vec::new(),
        }
    }
}

/// `[cluster]`: see `config/cluster.rs`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    pub redis: Option<String>,
    pub node: Option<String>,
    pub heartbeat_secs: u64,
    pub dead_after_secs: u64,
    pub stream_max_len: usize,
    pub lease_secs: u64,
    pub advertise: Option<String>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            redis: None,
            node: None,
            heartbeat_secs: 2,
            dead_after_secs: 10,
            stream_max_len: 100_000,
            lease_secs: 10,
            advertise: None,
        }
    }
}
