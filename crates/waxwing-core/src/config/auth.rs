//! `[auth]` account sources and mechanism lists, validated: per host
//! (`[auth.hosts."example.org"]`) and per c2s listener (`[auth.listeners]`).
//!
//! A combination that cannot log anyone in is refused here, at
//! `config check`, rather than discovered by users: an external source
//! without PLAIN, SCRAM without a stored secret, ANONYMOUS on a host with
//! real accounts, a host no listener offers any mechanism for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use waxwing_proto::jid::BareJid;
use waxwing_proto::sasl::ALL_MECHANISMS;

use super::{ConfigError, MAX_SECS, raw};

/// Where one host's accounts and passwords live.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// The account store: SCRAM secrets set by `waxwing user`, IBR or a password change.
    Internal,
    /// XEP-0175 guests: a random account per login, gone at logout.
    Anonymous,
    /// An ejabberd/Prosody extauth program.
    ExtAuth(ExtAuthConfig),
    /// An LDAP directory (bind authentication).
    Ldap(LdapConfig),
}

impl SourceConfig {
    /// Whether passwords are checked elsewhere, so only PLAIN can carry them.
    pub fn is_external(&self) -> bool {
        matches!(self, SourceConfig::ExtAuth(_) | SourceConfig::Ldap(_))
    }
}

/// `[auth.hosts."…".ldap]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LdapConfig {
    pub url: String,
    pub starttls: bool,
    /// The service account; `None` searches anonymously.
    pub bind: Option<(String, String)>,
    pub lookup: LdapLookup,
    pub admin_group: Option<String>,
    pub group_member_attribute: String,
    pub timeout: Duration,
    pub max_connections: usize,
}

/// How a localpart becomes a DN.
#[derive(Debug, Clone, PartialEq)]
pub enum LdapLookup {
    /// Search `base` (subtree) with `filter`, `%u` replaced by the escaped localpart.
    Search { base: String, filter: String },
    /// `%u` in the template replaced by the DN-escaped localpart.
    Template(String),
}

/// `[auth.hosts."…".extauth]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtAuthConfig {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub instances: usize,
    pub timeout: Duration,
    pub queue: usize,
}

/// One host's account source and the mechanisms it may offer, strongest first.
#[derive(Debug, Clone)]
pub struct HostAuthConfig {
    pub source: SourceConfig,
    pub mechanisms: Vec<&'static str>,
    /// External sources: SCRAM secrets derived from an accepted password are kept.
    pub cache_scram: bool,
    /// Kerberos (GSSAPI) for this host, when configured.
    pub gssapi: Option<GssapiHostConfig>,
    /// `legacy_digest_md5`: DIGEST-MD5 offered, its secret kept with new passwords.
    pub digest_md5: bool,
}

/// `[auth.hosts."…".gssapi]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GssapiHostConfig {
    /// Principals `user@realm` (one component) are the host's `user`.
    pub realm: String,
    /// The acceptor's principal, `xmpp/<host>@<realm>` by default.
    pub service_principal: String,
    /// Explicit `principal → localpart` mappings, checked first.
    pub principals: HashMap<String, String>,
}

impl GssapiHostConfig {
    /// The localpart a Kerberos principal logs in as, if any: an explicit
    /// mapping, else a one-component principal of the host's realm. Realms
    /// are case-sensitive (RFC 4120 §6.1); a principal with an instance
    /// (`jdoe/admin@REALM`) is a different identity and maps only explicitly.
    pub fn localpart_for<'a>(&'a self, principal: &'a str) -> Option<&'a str> {
        if let Some(local) = self.principals.get(principal) {
            return Some(local);
        }
        let (name, realm) = principal.rsplit_once('@')?;
        (realm == self.realm && !name.is_empty() && !name.contains(['/', '@', '\\']))
            .then_some(name)
    }
}

/// `[auth]`'s per-host and per-listener parts.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Every host in `hosts` has an entry.
    pub hosts: HashMap<String, HostAuthConfig>,
    /// Listeners whose mechanisms are narrowed (`[auth.listeners]`).
    pub listeners: Vec<(SocketAddr, Vec<&'static str>)>,
    pub anonymous_max_per_address: u32,
    pub anonymous_window: Duration,
    /// SASL EXTERNAL with client certificates, when configured.
    pub client_certificates: Option<ClientCertConfig>,
    /// `[auth.gssapi] keytab`: the keytab the GSS library reads
    /// (`KRB5_KTNAME`), when some host offers GSSAPI.
    pub gssapi_keytab: Option<PathBuf>,
}

/// `[auth.client_certificates]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCertConfig {
    pub ca_file: PathBuf,
    pub crl_files: Vec<PathBuf>,
    pub identity: CertIdentity,
}

/// Which certificate name maps to the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertIdentity {
    XmppAddr,
    Email,
    CommonName,
}

impl AuthConfig {
    /// The host's settings; hosts not in the configuration get none.
    pub fn host(&self, host: &str) -> Option<&HostAuthConfig> {
        self.hosts.get(host)
    }

    /// Whether `host` serves only anonymous guests.
    pub fn is_anonymous(&self, host: &str) -> bool {
        self.host(host)
            .is_some_and(|h| h.source == SourceConfig::Anonymous)
    }

    /// The listener's own list, if it has one. A listener bound to an
    /// unspecified address (`[::]:5222`) matches by port.
    pub fn listener(&self, local: SocketAddr) -> Option<&[&'static str]> {
        self.listeners
            .iter()
            .find(|(a, _)| *a == local)
            .or_else(|| {
                self.listeners
                    .iter()
                    .find(|(a, _)| a.ip().is_unspecified() && a.port() == local.port())
            })
            .map(|(_, m)| m.as_slice())
    }
}

fn err(source: &str, table: &str, key: &str, message: String) -> ConfigError {
    ConfigError::in_table(source, table, key, message)
}

/// Parses a list of mechanism names into our canonical (strongest-first) order.
fn mechanism_list(
    names: &[String],
    table: &str,
    source: &str,
) -> Result<Vec<&'static str>, ConfigError> {
    for n in names {
        if !ALL_MECHANISMS.contains(&n.as_str()) {
            return Err(err(
                source,
                table,
                "mechanisms",
                format!(
                    "[{table}] unknown SASL mechanism {n:?} (known: {})",
                    ALL_MECHANISMS.join(", ")
                ),
            ));
        }
    }
    Ok(ALL_MECHANISMS
        .iter()
        .copied()
        .filter(|m| names.iter().any(|n| n == m))
        .collect())
}

/// What a source can serve at all.
fn supported(
    source: &SourceConfig,
    cache_scram: bool,
    certs: bool,
    kerberos: bool,
    digest: bool,
) -> Vec<&'static str> {
    let scram_and_plain = |m: &&str| m.starts_with("SCRAM-") || *m == "PLAIN";
    ALL_MECHANISMS
        .iter()
        .copied()
        .filter(|m| match source {
            SourceConfig::Anonymous => *m == "ANONYMOUS",
            _ if *m == "GSSAPI" => kerberos,
            SourceConfig::Internal if *m == "DIGEST-MD5" => digest,
            SourceConfig::Internal => scram_and_plain(m) || (*m == "EXTERNAL" && certs),
            SourceConfig::ExtAuth(_) | SourceConfig::Ldap(_) if cache_scram => scram_and_plain(m),
            SourceConfig::ExtAuth(_) | SourceConfig::Ldap(_) => *m == "PLAIN",
        })
        .collect()
}

/// Why a mechanism cannot work with a source, for the error message.
fn why_unsupported(source: &SourceConfig, mechanism: &str) -> &'static str {
    match source {
        SourceConfig::Anonymous => "an anonymous host offers ANONYMOUS only",
        _ if mechanism == "GSSAPI" => {
            "GSSAPI needs the host's [auth.hosts.\"…\".gssapi] table (realm) and [auth.gssapi] keytab"
        }
        SourceConfig::Internal if mechanism == "DIGEST-MD5" => {
            "DIGEST-MD5 is historic (RFC 6331): set legacy_digest_md5 = true to offer it"
        }
        SourceConfig::Internal if mechanism == "EXTERNAL" => {
            "EXTERNAL needs [auth.client_certificates]"
        }
        SourceConfig::Internal => "ANONYMOUS needs a host of its own (source = \"anonymous\")",
        _ if mechanism == "EXTERNAL" => "EXTERNAL maps certificates to internal accounts only",
        _ if mechanism == "DIGEST-MD5" => {
            "DIGEST-MD5 needs a password stored here (internal accounts)"
        }
        SourceConfig::ExtAuth(_) | SourceConfig::Ldap(_) if mechanism.starts_with("SCRAM") => {
            "an external source has no SCRAM secret unless cache_scram = true"
        }
        SourceConfig::ExtAuth(_) | SourceConfig::Ldap(_) => {
            "an external source checks passwords, so it needs PLAIN"
        }
    }
}

pub(super) fn auth_config(
    a: &raw::Auth,
    hosts: &[String],
    c2s_listeners: &[SocketAddr],
    source: &str,
) -> Result<AuthConfig, ConfigError> {
    let client_certificates = match &a.client_certificates {
        Some(c) => Some(client_cert_config(c, source)?),
        None => None,
    };
    let certs = client_certificates.is_some();
    let default_list = match &a.mechanisms {
        Some(names) => Some(mechanism_list(names, "auth", source)?),
        None => None,
    };
    let mut by_host = HashMap::new();
    for (name, h) in &a.hosts {
        let table = format!("auth.hosts.\"{name}\"");
        let domain = BareJid::domain_only(name)
            .map(|j| j.domain().to_string())
            .map_err(|e| {
                err(
                    source,
                    "auth",
                    "hosts",
                    format!("{name:?} is not a domain: {e}"),
                )
            })?;
        if !hosts.contains(&domain) {
            return Err(err(
                source,
                &table,
                "source",
                format!("[{table}] names a host that is not in `hosts`"),
            ));
        }
        let src = match h.source.as_deref().unwrap_or("internal") {
            "internal" => SourceConfig::Internal,
            "anonymous" => SourceConfig::Anonymous,
            "extauth" => SourceConfig::ExtAuth(extauth_config(h.extauth.as_ref(), &table, source)?),
            "ldap" => SourceConfig::Ldap(ldap_config(h.ldap.as_ref(), &table, source)?),
            other => {
                return Err(err(
                    source,
                    &table,
                    "source",
                    format!(
                        "[{table}] source = {other:?}: expected \"internal\", \"anonymous\", \"extauth\" or \"ldap\""
                    ),
                ));
            }
        };
        if h.extauth.is_some() && !matches!(src, SourceConfig::ExtAuth(_)) {
            return Err(err(
                source,
                &table,
                "source",
                format!("[{table}] has an extauth table but source is not \"extauth\""),
            ));
        }
        if h.ldap.is_some() && !matches!(src, SourceConfig::Ldap(_)) {
            return Err(err(
                source,
                &table,
                "source",
                format!("[{table}] has an ldap table but source is not \"ldap\""),
            ));
        }
        if h.cache_scram && !src.is_external() {
            return Err(err(
                source,
                &table,
                "cache_scram",
                format!("[{table}] cache_scram only applies to external sources"),
            ));
        }
        let gssapi = match &h.gssapi {
            Some(g) => Some(gssapi_host_config(
                g,
                &domain,
                &src,
                a.gssapi.is_some(),
                &table,
                source,
            )?),
            None => None,
        };
        if h.legacy_digest_md5 && src != SourceConfig::Internal {
            return Err(err(
                source,
                &table,
                "legacy_digest_md5",
                format!(
                    "[{table}] legacy_digest_md5 needs internal accounts (its secret is derived from a password set here)"
                ),
            ));
        }
        let can = supported(
            &src,
            h.cache_scram,
            certs,
            gssapi.is_some(),
            h.legacy_digest_md5,
        );
        let mechanisms = match &h.mechanisms {
            Some(names) => {
                let list = mechanism_list(names, &table, source)?;
                if let Some(m) = list.iter().find(|m| !can.contains(m)) {
                    return Err(err(
                        source,
                        &table,
                        "mechanisms",
                        format!(
                            "[{table}] {m} cannot work here: {}",
                            why_unsupported(&src, m)
                        ),
                    ));
                }
                if src.is_external() && !list.contains(&"PLAIN") {
                    return Err(err(
                        source,
                        &table,
                        "mechanisms",
                        format!("[{table}] {}", why_unsupported(&src, "PLAIN")),
                    ));
                }
                list
            }
            None => {
                let mut list = default_mechanisms(&src, default_list.as_deref(), &can);
                // A host given a Kerberos realm offers GSSAPI unless its
                // own list leaves it out.
                if gssapi.is_some() && !list.contains(&"GSSAPI") {
                    list.push("GSSAPI");
                }
                // Likewise DIGEST-MD5 once the host opted into it.
                if h.legacy_digest_md5 && !list.contains(&"DIGEST-MD5") {
                    list.push("DIGEST-MD5");
                }
                list.sort_by_key(|m| ALL_MECHANISMS.iter().position(|a| a == m));
                list
            }
        };
        by_host.insert(
            domain,
            HostAuthConfig {
                source: src,
                mechanisms,
                cache_scram: h.cache_scram,
                gssapi,
                digest_md5: h.legacy_digest_md5,
            },
        );
    }
    for host in hosts {
        by_host
            .entry(host.clone())
            .or_insert_with(|| HostAuthConfig {
                source: SourceConfig::Internal,
                mechanisms: default_mechanisms(
                    &SourceConfig::Internal,
                    default_list.as_deref(),
                    &supported(&SourceConfig::Internal, false, certs, false, false),
                ),
                cache_scram: false,
                gssapi: None,
                digest_md5: false,
            });
    }
    for (host, h) in &mut by_host {
        if !a.allow_plain {
            if h.source.is_external() {
                return Err(err(
                    source,
                    "auth",
                    "allow_plain",
                    format!(
                        "allow_plain = false, but {host}'s accounts are checked by an external source, which needs PLAIN"
                    ),
                ));
            }
            h.mechanisms.retain(|m| *m != "PLAIN");
        }
        if h.mechanisms.is_empty() {
            return Err(err(
                source,
                "auth",
                "mechanisms",
                format!("no SASL mechanism is left for {host}: nobody could log in"),
            ));
        }
    }
    let mut listeners = Vec::new();
    for (addr, names) in &a.listeners {
        let local: SocketAddr = addr.parse().map_err(|e| {
            err(
                source,
                "auth.listeners",
                addr,
                format!("{addr:?} is not an address:port ({e})"),
            )
        })?;
        if !c2s_listeners.contains(&local) {
            return Err(err(
                source,
                "auth.listeners",
                addr,
                format!("[auth.listeners] {addr} is not one of the c2s listeners"),
            ));
        }
        let list = mechanism_list(names, "auth.listeners", source)?;
        if list.is_empty() {
            return Err(err(
                source,
                "auth.listeners",
                addr,
                format!("[auth.listeners] {addr} offers no mechanism"),
            ));
        }
        listeners.push((local, list));
    }
    // Every host must be able to log someone in on some listener.
    for (host, h) in &by_host {
        let reachable =
            c2s_listeners
                .iter()
                .any(|l| match listeners.iter().find(|(a, _)| a == l) {
                    Some((_, list)) => h.mechanisms.iter().any(|m| list.contains(m)),
                    None => true,
                });
        if !reachable && !c2s_listeners.is_empty() {
            return Err(err(
                source,
                "auth",
                "listeners",
                format!(
                    "no c2s listener offers any of {host}'s mechanisms ({})",
                    h.mechanisms.join(", ")
                ),
            ));
        }
    }
    let gssapi_keytab = match &a.gssapi {
        Some(g) if g.keytab.is_empty() => {
            return Err(err(
                source,
                "auth.gssapi",
                "keytab",
                "[auth.gssapi] keytab (the path of the service keytab) is required".into(),
            ));
        }
        Some(g) => Some(PathBuf::from(&g.keytab)),
        None => None,
    };
    Ok(AuthConfig {
        hosts: by_host,
        listeners,
        anonymous_max_per_address: a.anonymous_max_per_address,
        anonymous_window: Duration::from_secs(a.anonymous_window_secs),
        client_certificates,
        gssapi_keytab,
    })
}

/// Whether this build can offer GSSAPI (the `gssapi` Cargo feature links
/// MIT's libgssapi_krb5).
pub const GSSAPI_BUILT: bool = cfg!(feature = "gssapi");

fn gssapi_host_config(
    g: &raw::HostGssapi,
    host: &str,
    src: &SourceConfig,
    keytab: bool,
    table: &str,
    source: &str,
) -> Result<GssapiHostConfig, ConfigError> {
    let table = format!("{table}.gssapi");
    let bad =
        |key: &str, message: String| Err(err(source, &table, key, format!("[{table}] {message}")));
    if !GSSAPI_BUILT {
        return bad(
            "realm",
            "this waxwing was built without Kerberos support: rebuild it with \
             `cargo build --release --features gssapi` (needs libkrb5-dev and libclang-dev)"
                .into(),
        );
    }
    if *src == SourceConfig::Anonymous {
        return bad(
            "realm",
            "an anonymous host cannot take Kerberos logins".into(),
        );
    }
    if g.realm.is_empty() || g.realm.contains(['@', '/', ' ']) {
        return bad(
            "realm",
            format!(
                "realm = {:?}: expected a Kerberos realm such as \"EXAMPLE.ORG\"",
                g.realm
            ),
        );
    }
    if !keytab {
        return bad("realm", "needs [auth.gssapi] keytab".into());
    }
    let service_principal = g
        .service_principal
        .clone()
        .unwrap_or_else(|| format!("xmpp/{host}@{}", g.realm));
    if !service_principal.contains('@') {
        return bad(
            "service_principal",
            format!("service_principal = {service_principal:?}: expected service/host@REALM"),
        );
    }
    let mut principals = HashMap::new();
    for (principal, local) in &g.principals {
        if !principal.contains('@') {
            return bad(
                "principals",
                format!("{principal:?} is not a principal (name@REALM)"),
            );
        }
        let jid = BareJid::new(Some(local), host).map_err(|e| {
            err(
                source,
                &table,
                "principals",
                format!("[{table}] {principal:?} = {local:?} is not a localpart: {e}"),
            )
        })?;
        principals.insert(
            principal.clone(),
            jid.local().unwrap_or_default().to_string(),
        );
    }
    Ok(GssapiHostConfig {
        realm: g.realm.clone(),
        service_principal,
        principals,
    })
}

fn client_cert_config(
    c: &raw::ClientCertificates,
    source: &str,
) -> Result<ClientCertConfig, ConfigError> {
    let table = "auth.client_certificates";
    if c.ca_file.is_empty() {
        return Err(err(
            source,
            table,
            "ca_file",
            format!("[{table}] ca_file (a PEM bundle of the client CAs) is required"),
        ));
    }
    let identity = match c.identity.as_deref().unwrap_or("xmppaddr") {
        "xmppaddr" => CertIdentity::XmppAddr,
        "email" => CertIdentity::Email,
        "cn" => CertIdentity::CommonName,
        other => {
            return Err(err(
                source,
                table,
                "identity",
                format!(
                    "[{table}] identity = {other:?}: expected \"xmppaddr\", \"email\" or \"cn\""
                ),
            ));
        }
    };
    Ok(ClientCertConfig {
        ca_file: PathBuf::from(&c.ca_file),
        crl_files: c.crl_files.iter().map(PathBuf::from).collect(),
        identity,
    })
}

/// A host without its own list gets `[auth] mechanisms` narrowed to what
/// its source can do, or everything its source can do.
fn default_mechanisms(
    src: &SourceConfig,
    default_list: Option<&[&'static str]>,
    can: &[&'static str],
) -> Vec<&'static str> {
    let mut list: Vec<&'static str> = match default_list {
        // ANONYMOUS is never inherited by a host with real accounts, and an
        // anonymous host offers it whatever the default list says.
        Some(d) if *src != SourceConfig::Anonymous => {
            d.iter().copied().filter(|m| can.contains(m)).collect()
        }
        _ => can.to_vec(),
    };
    // A cached SCRAM secret exists only after a first PLAIN login, and a
    // client offered SCRAM takes it and does not fall back: opting into the
    // cache does not by itself offer SCRAM (list it under `mechanisms`).
    if src.is_external() && default_list.is_none() {
        list.retain(|m| *m == "PLAIN");
    }
    list
}

fn ldap_config(
    l: Option<&raw::Ldap>,
    table: &str,
    source: &str,
) -> Result<LdapConfig, ConfigError> {
    let table = format!("{table}.ldap");
    let bad =
        |key: &str, message: String| Err(err(source, &table, key, format!("[{table}] {message}")));
    let Some(l) = l else {
        return bad(
            "url",
            "is required with source = \"ldap\" (url, and base or user_dn)".into(),
        );
    };
    let (tls, rest) = if let Some(rest) = l.url.strip_prefix("ldaps://") {
        (true, rest)
    } else if let Some(rest) = l.url.strip_prefix("ldap://") {
        (l.starttls, rest)
    } else {
        return bad(
            "url",
            format!(
                "url = {:?}: expected ldap://HOST:PORT or ldaps://HOST:PORT",
                l.url
            ),
        );
    };
    let host = rest.split('/').next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    // Bind authentication sends the user's password to the directory.
    if !tls && !loopback {
        return bad(
            "url",
            format!(
                "{} would send passwords in clear: use ldaps:// or starttls = true",
                l.url
            ),
        );
    }
    let lookup = match (&l.user_dn, &l.base) {
        (Some(t), None) if t.contains("%u") => LdapLookup::Template(t.clone()),
        (Some(_), None) => {
            return bad(
                "user_dn",
                "user_dn needs %u where the localpart goes".into(),
            );
        }
        (None, Some(base)) if l.filter.contains("%u") => LdapLookup::Search {
            base: base.clone(),
            filter: l.filter.clone(),
        },
        (None, Some(_)) => return bad("filter", "filter needs %u where the localpart goes".into()),
        (Some(_), Some(_)) => {
            return bad(
                "user_dn",
                "set either user_dn (direct bind) or base (search), not both".into(),
            );
        }
        (None, None) => {
            return bad(
                "base",
                "needs base (search, then bind) or user_dn (direct bind)".into(),
            );
        }
    };
    let bind = match (&l.bind_dn, &l.bind_password) {
        (Some(dn), Some(pw)) => Some((dn.clone(), pw.clone())),
        (None, None) => None,
        _ => return bad("bind_dn", "bind_dn and bind_password go together".into()),
    };
    for (key, value, min, max) in [
        ("timeout_secs", l.timeout_secs, 1, 3600),
        ("max_connections", l.max_connections as u64, 1, 1024),
    ] {
        if !(min..=max).contains(&value) {
            return bad(
                key,
                format!("{key} = {value} is refused: it must be {min}..={max}"),
            );
        }
    }
    Ok(LdapConfig {
        url: l.url.clone(),
        starttls: l.starttls,
        bind,
        lookup,
        admin_group: l.admin_group.clone(),
        group_member_attribute: l.group_member_attribute.clone(),
        timeout: Duration::from_secs(l.timeout_secs),
        max_connections: l.max_connections,
    })
}

fn extauth_config(
    e: Option<&raw::ExtAuth>,
    table: &str,
    source: &str,
) -> Result<ExtAuthConfig, ConfigError> {
    let table = format!("{table}.extauth");
    let Some(e) = e else {
        return Err(err(
            source,
            &table,
            "command",
            format!("source = \"extauth\" needs [{table}] command = [\"/path/to/program\"]"),
        ));
    };
    let Some((program, args)) = e.command.split_first() else {
        return Err(err(
            source,
            &table,
            "command",
            format!("[{table}] command is empty"),
        ));
    };
    for (key, value, min, max) in [
        ("instances", e.instances as u64, 1, 64),
        ("timeout_secs", e.timeout_secs, 1, MAX_SECS.min(3600)),
        ("queue", e.queue as u64, 1, 100_000),
    ] {
        if !(min..=max).contains(&value) {
            return Err(err(
                source,
                &table,
                key,
                format!("[{table}] {key} = {value} is refused: it must be {min}..={max}"),
            ));
        }
    }
    Ok(ExtAuthConfig {
        program: PathBuf::from(program),
        args: args.to_vec(),
        instances: e.instances,
        timeout: Duration::from_secs(e.timeout_secs),
        queue: e.queue,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, SourceConfig};

    const HOSTS: &str = "hosts = [\"a.example\", \"guest.example\", \"corp.example\"]\n";

    fn parse(rest: &str) -> Result<Config, String> {
        Config::parse(&format!("{HOSTS}{rest}")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_offer_scram_and_plain_on_internal_hosts() {
        let c = parse("").unwrap();
        let h = c.auth.host("a.example").unwrap();
        assert_eq!(h.source, SourceConfig::Internal);
        assert_eq!(
            h.mechanisms,
            [
                "SCRAM-SHA-256-PLUS",
                "SCRAM-SHA-1-PLUS",
                "SCRAM-SHA-256",
                "SCRAM-SHA-1",
                "PLAIN"
            ]
        );
    }

    #[test]
    fn anonymous_and_extauth_hosts() {
        let c = parse(
            "[auth.hosts.\"guest.example\"]\nsource = \"anonymous\"\n\
             [auth.hosts.\"corp.example\"]\nsource = \"extauth\"\n\
             [auth.hosts.\"corp.example\".extauth]\ncommand = [\"/bin/check\", \"-v\"]\ninstances = 2\n",
        )
        .unwrap();
        assert!(c.auth.is_anonymous("guest.example"));
        assert_eq!(
            c.auth.host("guest.example").unwrap().mechanisms,
            ["ANONYMOUS"]
        );
        let corp = c.auth.host("corp.example").unwrap();
        assert_eq!(corp.mechanisms, ["PLAIN"]);
        let SourceConfig::ExtAuth(e) = &corp.source else {
            panic!("extauth expected")
        };
        assert_eq!(e.program.to_str(), Some("/bin/check"));
        assert_eq!(e.args, ["-v"]);
        assert_eq!(e.instances, 2);
    }

    #[test]
    fn combinations_that_cannot_work_are_refused() {
        let ext = "[auth.hosts.\"corp.example\"]\nsource = \"extauth\"\n\
                   [auth.hosts.\"corp.example\".extauth]\ncommand = [\"/bin/check\"]\n";
        for (rest, needle) in [
            (format!("[auth]\nallow_plain = false\n{ext}"), "needs PLAIN"),
            (
                "[auth.hosts.\"corp.example\"]\nsource = \"extauth\"\n\
                 mechanisms = [\"SCRAM-SHA-256\", \"PLAIN\"]\n\
                 [auth.hosts.\"corp.example\".extauth]\ncommand = [\"/bin/check\"]\n"
                    .to_string(),
                "cache_scram",
            ),
            (
                "[auth.hosts.\"corp.example\"]\nsource = \"extauth\"\n".to_string(),
                "needs [auth.hosts.\"corp.example\".extauth] command",
            ),
            (
                "[auth.hosts.\"a.example\"]\nmechanisms = [\"ANONYMOUS\"]\n".to_string(),
                "ANONYMOUS needs a host of its own",
            ),
            (
                "[auth.hosts.\"guest.example\"]\nsource = \"anonymous\"\nmechanisms = [\"PLAIN\"]\n"
                    .to_string(),
                "ANONYMOUS only",
            ),
            (
                "[auth.hosts.\"a.example\"]\nmechanisms = [\"DIGEST-MD6\"]\n".to_string(),
                "unknown SASL mechanism",
            ),
            (
                "[auth.hosts.\"nowhere.example\"]\nsource = \"anonymous\"\n".to_string(),
                "not in `hosts`",
            ),
            (
                "[auth.hosts.\"a.example\"]\nsource = \"kerberos\"\n".to_string(),
                "expected \"internal\"",
            ),
            (
                "[auth]\nallow_plain = false\n[auth.hosts.\"a.example\"]\nmechanisms = [\"PLAIN\"]\n"
                    .to_string(),
                "no SASL mechanism is left for a.example",
            ),
            (
                "[listen]\nc2s = [\"127.0.0.1:5222\"]\nc2s_direct_tls = []\n\
                 [auth.listeners]\n\"127.0.0.1:5222\" = [\"PLAIN\"]\n\
                 [auth.hosts.\"guest.example\"]\nsource = \"anonymous\"\n"
                    .to_string(),
                "no c2s listener offers any of guest.example's mechanisms",
            ),
            (
                "[auth.listeners]\n\"127.0.0.1:9999\" = [\"PLAIN\"]\n".to_string(),
                "not one of the c2s listeners",
            ),
            (
                format!("{ext}instances = 0\n"),
                "instances = 0 is refused",
            ),
            ("[auth]\nanonymous_max_per_address = 0\n".to_string(), "anonymous_max_per_address"),
            (
                "[auth.hosts.\"corp.example\"]\nsource = \"ldap\"\n\
                 [auth.hosts.\"corp.example\".ldap]\nurl = \"ldap://ldap.corp.example\"\nbase = \"dc=corp\"\n"
                    .to_string(),
                "would send passwords in clear",
            ),
            (
                "[auth.hosts.\"corp.example\"]\nsource = \"ldap\"\n\
                 [auth.hosts.\"corp.example\".ldap]\nurl = \"ldaps://ldap.corp.example\"\n"
                    .to_string(),
                "needs base",
            ),
            (
                "[auth.hosts.\"corp.example\"]\nsource = \"ldap\"\n\
                 [auth.hosts.\"corp.example\".ldap]\nurl = \"ldaps://x\"\nuser_dn = \"uid=x\"\n"
                    .to_string(),
                "needs %u",
            ),
        ] {
            let e = parse(&rest).expect_err(&rest);
            assert!(e.contains(needle), "{rest}\n→ {e}");
        }
    }

    #[test]
    fn ldap_over_tls_or_loopback_is_accepted() {
        let c = parse(
            "[auth.hosts.\"corp.example\"]\nsource = \"ldap\"\n\
             [auth.hosts.\"corp.example\".ldap]\nurl = \"ldap://ldap.corp.example:389\"\n\
             starttls = true\nbase = \"ou=people,dc=corp\"\nadmin_group = \"cn=admins,dc=corp\"\n",
        )
        .unwrap();
        let h = c.auth.host("corp.example").unwrap();
        assert_eq!(h.mechanisms, ["PLAIN"]);
        let SourceConfig::Ldap(l) = &h.source else {
            panic!("ldap expected")
        };
        assert_eq!(
            l.lookup,
            crate::config::LdapLookup::Search {
                base: "ou=people,dc=corp".into(),
                filter: "(uid=%u)".into()
            }
        );
        assert!(
            parse(
                "[auth.hosts.\"corp.example\"]\nsource = \"ldap\"\n\
                 [auth.hosts.\"corp.example\".ldap]\nurl = \"ldap://127.0.0.1:3389\"\n\
                 user_dn = \"uid=%u,dc=corp\"\n"
            )
            .is_ok()
        );
    }

    #[test]
    fn listener_lists_narrow_and_match_unspecified_addresses_by_port() {
        let c = parse(
            "[listen]\nc2s = [\"[::]:5222\"]\nc2s_direct_tls = [\"127.0.0.1:5223\"]\n\
             [auth.listeners]\n\"[::]:5222\" = [\"SCRAM-SHA-256\", \"SCRAM-SHA-1\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.auth.listener("127.0.0.1:5222".parse().unwrap()),
            Some(&["SCRAM-SHA-256", "SCRAM-SHA-1"][..])
        );
        assert_eq!(c.auth.listener("127.0.0.1:5223".parse().unwrap()), None);
    }

    const KERBEROS: &str = "[auth.gssapi]\nkeytab = \"/etc/waxwing/xmpp.keytab\"\n\
                            [auth.hosts.\"corp.example\".gssapi]\nrealm = \"CORP.EXAMPLE\"\n";

    #[test]
    #[cfg(feature = "gssapi")]
    fn gssapi_hosts_offer_gssapi_and_map_principals() {
        let c = parse(&format!(
            "{KERBEROS}[auth.hosts.\"corp.example\".gssapi.principals]\n\"jdoe@PARTNER\" = \"John\"\n"
        ))
        .unwrap();
        let h = c.auth.host("corp.example").unwrap();
        assert_eq!(h.mechanisms[0], "GSSAPI");
        assert!(h.mechanisms.contains(&"SCRAM-SHA-256"));
        let g = h.gssapi.as_ref().unwrap();
        assert_eq!(g.service_principal, "xmpp/corp.example@CORP.EXAMPLE");
        // Explicit localparts are prepared once, at load.
        assert_eq!(g.localpart_for("jdoe@PARTNER"), Some("john"));
        assert_eq!(
            c.auth.gssapi_keytab.as_deref(),
            Some(std::path::Path::new("/etc/waxwing/xmpp.keytab"))
        );
        // Other hosts do not inherit it.
        assert!(
            !c.auth
                .host("a.example")
                .unwrap()
                .mechanisms
                .contains(&"GSSAPI")
        );
        for (rest, needle) in [
            (
                "[auth.hosts.\"corp.example\".gssapi]\nrealm = \"CORP.EXAMPLE\"\n".to_string(),
                "needs [auth.gssapi] keytab",
            ),
            (
                "[auth.hosts.\"a.example\"]\nmechanisms = [\"GSSAPI\"]\n".to_string(),
                "GSSAPI needs",
            ),
            (
                format!("{KERBEROS}[auth.hosts.\"corp.example\"]\nsource = \"anonymous\"\n"),
                "anonymous host",
            ),
            (
                format!(
                    "{KERBEROS}[auth.hosts.\"corp.example\".gssapi.principals]\n\"x\" = \"y\"\n"
                ),
                "not a principal",
            ),
        ] {
            let e = parse(&rest).expect_err(&rest);
            assert!(e.contains(needle), "{rest}\n→ {e}");
        }
    }

    #[test]
    #[cfg(not(feature = "gssapi"))]
    fn gssapi_is_refused_by_a_build_without_the_feature() {
        let e = parse(KERBEROS).expect_err("no gssapi feature");
        assert!(e.contains("built without Kerberos support"), "{e}");
        assert!(e.contains("--features gssapi"), "{e}");
    }

    #[test]
    fn digest_md5_only_on_request_and_on_internal_hosts() {
        let c = parse("[auth]\nmechanisms = [\"SCRAM-SHA-256\", \"DIGEST-MD5\"]\n").unwrap();
        assert_eq!(
            c.auth.host("a.example").unwrap().mechanisms,
            ["SCRAM-SHA-256"]
        );
        let c = parse("[auth.hosts.\"a.example\"]\nlegacy_digest_md5 = true\n").unwrap();
        let h = c.auth.host("a.example").unwrap();
        assert!(h.digest_md5);
        assert_eq!(h.mechanisms.last(), Some(&"DIGEST-MD5"));
        assert!(!c.auth.host("corp.example").unwrap().digest_md5);
        for (rest, needle) in [
            (
                "[auth.hosts.\"a.example\"]\nmechanisms = [\"DIGEST-MD5\", \"PLAIN\"]\n",
                "set legacy_digest_md5 = true",
            ),
            (
                "[auth.hosts.\"guest.example\"]\nsource = \"anonymous\"\nlegacy_digest_md5 = true\n",
                "needs internal accounts",
            ),
        ] {
            let e = parse(rest).expect_err(rest);
            assert!(e.contains(needle), "{rest}\n→ {e}");
        }
    }

    #[test]
    fn global_list_is_inherited_and_plain_follows_allow_plain() {
        let c = parse("[auth]\nallow_plain = false\nmechanisms = [\"SCRAM-SHA-256\", \"PLAIN\"]\n")
            .unwrap();
        assert_eq!(
            c.auth.host("a.example").unwrap().mechanisms,
            ["SCRAM-SHA-256"]
        );
    }
}
