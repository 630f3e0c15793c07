//! `[turn]`: the built-in STUN/TURN server (`crate::turn`). Its shared
//! secret is the one `[external_services]` signs TURN credentials with, so
//! the XEP-0215 module hands out credentials this server accepts.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[turn]` as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTurn {
    /// Off by default: a TURN server relays traffic for whoever holds a
    /// credential, and needs its ports open in the firewall.
    pub enabled: bool,
    /// UDP listeners (STUN and TURN); empty for none.
    pub listen_udp: Vec<String>,
    /// TCP listeners (TURN over TCP, RFC 5766 §2.1); empty for none.
    pub listen_tcp: Vec<String>,
    /// The realm of the long-term credentials; default: the first host.
    pub realm: Option<String>,
    /// The public address relayed addresses are given out with. Required
    /// unless the first UDP listener has a specific (not wildcard) address.
    pub relay_ip: Option<String>,
    /// The local address relay sockets bind to; default: the wildcard of
    /// `relay_ip`'s family (right behind a 1:1 NAT).
    pub relay_bind: Option<String>,
    /// The first and last relay port.
    pub min_port: u16,
    pub max_port: u16,
    /// The host name XEP-0215 advertises; default: `relay_ip`.
    pub public_host: Option<String>,
    /// The TURN REST shared secret; default: `[external_services] secret`.
    pub secret: Option<String>,
    pub secret_file: Option<String>,
    /// Allocations one user (bare JID) may hold at once.
    pub max_allocations_per_user: u32,
    /// Allocations the server holds at once.
    pub max_allocations: u32,
    /// Bytes per second through one allocation, both directions together.
    pub allocation_bandwidth_bytes_per_sec: u64,
    /// Bytes per second through all of one user's allocations.
    pub user_bandwidth_bytes_per_sec: u64,
    /// An allocation ends this long after it was made, refreshed or not.
    pub max_allocation_secs: u64,
    /// Relay to private (RFC 1918, ULA, CGNAT) and link-local peers.
    pub allow_private_peers: bool,
    /// Peer addresses or networks relayed to although private or loopback
    /// (a media server on the LAN; `127.0.0.1` in tests).
    pub allowed_peers: Vec<String>,
}

impl Default for RawTurn {
    fn default() -> Self {
        RawTurn {
            enabled: false,
            listen_udp: vec!["0.0.0.0:3478".into()],
            listen_tcp: vec!["0.0.0.0:3478".into()],
            realm: None,
            relay_ip: None,
            relay_bind: None,
            min_port: 49152,
            max_port: 65535,
            public_host: None,
            secret: None,
            secret_file: None,
            max_allocations_per_user: 4,
            max_allocations: 1000,
            allocation_bandwidth_bytes_per_sec: 1_048_576,
            user_bandwidth_bytes_per_sec: 2_097_152,
            max_allocation_secs: 86_400,
            allow_private_peers: false,
            allowed_peers: Vec::new(),
        }
    }
}

/// The validated `[turn]` table.
#[derive(Clone, Default)]
pub struct TurnConfig {
    pub enabled: bool,
    pub listen_udp: Vec<SocketAddr>,
    pub listen_tcp: Vec<SocketAddr>,
    pub realm: String,
    pub relay_ip: Option<IpAddr>,
    pub relay_bind: Option<IpAddr>,
    pub min_port: u16,
    pub max_port: u16,
    /// What XEP-0215 tells clients to connect to.
    pub public_host: String,
    pub secret: String,
    pub max_allocations_per_user: u32,
    pub max_allocations: u32,
    pub allocation_bandwidth: u64,
    pub user_bandwidth: u64,
    pub max_allocation: Duration,
    pub allow_private_peers: bool,
    pub allowed_peers: Vec<IpNet>,
}

impl std::fmt::Debug for TurnConfig {
    // The secret stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("enabled", &self.enabled)
            .field("listen_udp", &self.listen_udp)
            .field("listen_tcp", &self.listen_tcp)
            .field("realm", &self.realm)
            .field("relay_ip", &self.relay_ip)
            .field("min_port", &self.min_port)
            .field("max_port", &self.max_port)
            .field("allowed_peers", &self.allowed_peers)
            .finish_non_exhaustive()
    }
}

/// Validates `[turn]`; `ext_secret` is `[external_services]`'s secret,
/// which the two must share.
pub(super) fn turn(
    raw: &RawTurn,
    hosts: &[String],
    ext_secret: Option<&str>,
    source: &str,
) -> Result<TurnConfig, ConfigError> {
    let err = |key: &str, msg: String| ConfigError::at(source, key, msg);
    let addrs = |list: &[String], key: &str| -> Result<Vec<SocketAddr>, ConfigError> {
        list.iter()
            .map(|a| {
                a.parse().map_err(|e| {
                    err(
                        key,
                        format!("[turn] {key} {a:?} is not an address:port ({e})"),
                    )
                })
            })
            .collect()
    };
    let ip = |v: &Option<String>, key: &str| -> Result<Option<IpAddr>, ConfigError> {
        v.as_deref()
            .map(|s| {
                s.parse::<IpAddr>().map_err(|e| {
                    err(
                        key,
                        format!("[turn] {key} {s:?} is not an IP address ({e})"),
                    )
                })
            })
            .transpose()
    };
    let listen_udp = addrs(&raw.listen_udp, "listen_udp")?;
    let listen_tcp = addrs(&raw.listen_tcp, "listen_tcp")?;
    let relay_ip = ip(&raw.relay_ip, "relay_ip")?;
    let relay_bind = ip(&raw.relay_bind, "relay_bind")?;
    let mut allowed_peers = Vec::new();
    for p in &raw.allowed_peers {
        let net = p
            .parse::<IpNet>()
            .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                err(
                    "allowed_peers",
                    format!("[turn] allowed_peers {p:?} is neither an IP address nor a network"),
                )
            })?;
        allowed_peers.push(net);
    }
    if raw.min_port == 0 || raw.min_port > raw.max_port {
        return Err(err(
            "min_port",
            format!(
                "[turn] the relay port range {}-{} is empty or starts at 0",
                raw.min_port, raw.max_port
            ),
        ));
    }
    let secret = super::ext::secret(&raw.secret, &raw.secret_file, "[turn]", source, false)?;
    if !raw.enabled {
        return Ok(TurnConfig {
            enabled: false,
            ..Default::default()
        });
    }
    if listen_udp.is_empty() && listen_tcp.is_empty() {
        return Err(err(
            "listen_udp",
            "[turn] is enabled but has neither a UDP nor a TCP listener".into(),
        ));
    }
    // Clients must be told a relay address they can reach: a wildcard
    // listener says nothing about which address that is.
    let relay_ip = match relay_ip.or_else(|| {
        listen_udp
            .first()
            .or(listen_tcp.first())
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
    }) {
        Some(ip) if ip.is_unspecified() || ip.is_multicast() => {
            return Err(err(
                "relay_ip",
                format!("[turn] relay_ip {ip} is not an address a client can send to"),
            ));
        }
        Some(ip) => ip,
        None => {
            return Err(err(
                "relay_ip",
                "[turn] is enabled but relay_ip is not set and the listener is a wildcard: \
                 give the server's public IP address"
                    .into(),
            ));
        }
    };
    if let Some(b) = relay_bind
        && b.is_ipv4() != relay_ip.is_ipv4()
    {
        return Err(err(
            "relay_bind",
            format!("[turn] relay_bind {b} and relay_ip {relay_ip} are of different families"),
        ));
    }
    let secret = match (secret, ext_secret) {
        (Some(t), Some(e)) if t != e => {
            return Err(err(
                "secret",
                "[turn] secret differs from [external_services] secret: the credentials \
                 XEP-0215 hands out would be refused; set it in one place"
                    .into(),
            ));
        }
        (Some(s), _) => s,
        (None, Some(e)) => e.to_string(),
        (None, None) => {
            return Err(err(
                "enabled",
                "[turn] is enabled but has no secret: set [turn] secret (or secret_file), \
                 or [external_services] secret"
                    .into(),
            ));
        }
    };
    let realm = raw
        .realm
        .clone()
        .or_else(|| hosts.first().cloned())
        .unwrap_or_default();
    if realm.is_empty() || !realm.is_ascii() || realm.len() > 127 {
        return Err(err(
            "realm",
            format!("[turn] realm {realm:?} must be 1 to 127 ASCII characters"),
        ));
    }
    if let Some(h) = &raw.public_host {
        let ok = h.parse::<IpAddr>().is_ok() || waxwing_proto::jid::BareJid::domain_only(h).is_ok();
        if !ok {
            return Err(err(
                "public_host",
                format!("[turn] public_host {h:?} is neither an IP address nor a domain"),
            ));
        }
    }
    if raw.max_allocations_per_user > raw.max_allocations {
        return Err(err(
            "max_allocations_per_user",
            "[turn] max_allocations_per_user is above max_allocations".into(),
        ));
    }
    if raw.user_bandwidth_bytes_per_sec < raw.allocation_bandwidth_bytes_per_sec {
        return Err(err(
            "user_bandwidth_bytes_per_sec",
            "[turn] user_bandwidth_bytes_per_sec is below allocation_bandwidth_bytes_per_sec: \
             no allocation could use its own limit"
                .into(),
        ));
    }
    Ok(TurnConfig {
        enabled: true,
        listen_udp,
        listen_tcp,
        realm,
        relay_ip: Some(relay_ip),
        relay_bind,
        min_port: raw.min_port,
        max_port: raw.max_port,
        public_host: raw
            .public_host
            .clone()
            .unwrap_or_else(|| relay_ip.to_string()),
        secret,
        max_allocations_per_user: raw.max_allocations_per_user,
        max_allocations: raw.max_allocations,
        allocation_bandwidth: raw.allocation_bandwidth_bytes_per_sec,
        user_bandwidth: raw.user_bandwidth_bytes_per_sec,
        max_allocation: Duration::from_secs(raw.max_allocation_secs),
        allow_private_peers: raw.allow_private_peers,
        allowed_peers,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[turn]\nenabled = true\nsecret = \"0123456789abcdef\"\n";

    #[test]
    fn turn_is_off_by_default_and_needs_a_relay_ip_and_a_secret() {
        let c = Config::parse("").unwrap();
        assert!(!c.turn.enabled);
        let c = Config::parse(&format!("{BASE}relay_ip = \"192.0.2.7\"\n")).unwrap();
        assert!(c.turn.enabled);
        assert_eq!(c.turn.relay_ip, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(c.turn.public_host, "192.0.2.7");
        assert_eq!(c.turn.realm, "localhost");
        assert_eq!((c.turn.min_port, c.turn.max_port), (49152, 65535));
        // extdisco signs with the TURN server's secret.
        assert_eq!(
            c.external_services.secret.as_deref(),
            Some("0123456789abcdef")
        );
        // A specific listener address is the relay address.
        let c = Config::parse(&format!("{BASE}listen_udp = [\"198.51.100.2:3478\"]\n")).unwrap();
        assert_eq!(c.turn.relay_ip, Some("198.51.100.2".parse().unwrap()));
        assert!(!format!("{:?}", c.turn).contains("0123456789abcdef"));
    }

    #[test]
    fn impossible_turn_settings_are_refused() {
        for (src, why) in [
            (BASE.to_string(), "relay_ip is not set"),
            (
                "[turn]\nenabled = true\nrelay_ip = \"192.0.2.7\"\n".to_string(),
                "no secret",
            ),
            (format!("{BASE}relay_ip = \"0.0.0.0\"\n"), "not an address"),
            (
                format!("{BASE}relay_ip = \"192.0.2.7\"\nmin_port = 50000\nmax_port = 40000\n"),
                "empty",
            ),
            (
                format!("{BASE}relay_ip = \"192.0.2.7\"\nlisten_udp = []\nlisten_tcp = []\n"),
                "neither",
            ),
            (
                format!("{BASE}relay_ip = \"192.0.2.7\"\nrelay_bind = \"::\"\n"),
                "families",
            ),
            (
                format!("{BASE}relay_ip = \"192.0.2.7\"\nallowed_peers = [\"nope\"]\n"),
                "neither",
            ),
            (
                format!("{BASE}relay_ip = \"192.0.2.7\"\nmax_allocations_per_user = 0\n"),
                "max_allocations_per_user",
            ),
            (
                format!(
                    "{BASE}relay_ip = \"192.0.2.7\"\nmax_allocations_per_user = 20\nmax_allocations = 10\n"
                ),
                "above",
            ),
            (
                format!("{BASE}relay_ip = \"192.0.2.7\"\nuser_bandwidth_bytes_per_sec = 1024\n"),
                "below",
            ),
            (
                format!(
                    "{BASE}relay_ip = \"192.0.2.7\"\nallocation_bandwidth_bytes_per_sec = 10\n"
                ),
                "allocation_bandwidth",
            ),
            (
                format!(
                    "{BASE}relay_ip = \"192.0.2.7\"\n[external_services]\nsecret = \"another-secret-0123\"\n"
                ),
                "differs",
            ),
        ] {
            let e = Config::parse(&src).unwrap_err();
            assert!(e.to_string().contains(why), "{src}: {e}");
        }
    }

    #[test]
    fn allowed_peers_take_addresses_and_networks() {
        let c = Config::parse(&format!(
            "{BASE}relay_ip = \"192.0.2.7\"\nallowed_peers = [\"127.0.0.1\", \"10.1.0.0/16\"]\n"
        ))
        .unwrap();
        let p: Vec<String> = c.turn.allowed_peers.iter().map(|n| n.to_string()).collect();
        assert_eq!(p, ["127.0.0.1/32", "10.1.0.0/16"]);
    }
}
