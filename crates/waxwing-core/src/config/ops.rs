//! `[metrics]` and `[admin]`: what an operator's tools reach over the HTTP
//! listener, and from where.

use std::net::IpAddr;

use super::{ConfigError, raw};

/// An IP network (`10.0.0.0/8`, `fd00::/8`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(s: &str) -> Option<Network> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Network { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (a, b, bits) = match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return false,
        };
        if self.prefix == 0 {
            return true;
        }
        let shift = bits - u32::from(self.prefix);
        (a >> shift) == (b >> shift)
    }
}

/// Who may reach an operator endpoint: loopback always, plus the listed networks.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub networks: Vec<Network>,
}

impl Access {
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_loopback() || self.networks.iter().any(|n| n.contains(ip))
    }
}

/// `[metrics]`: `/metrics` on the HTTP listener.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub access: Access,
}

/// `[admin]`: the token-authenticated admin API under `/admin/api/`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub enabled: bool,
    pub access: Access,
}

fn access(list: &[String], table: &str, source: &str) -> Result<Access, ConfigError> {
    let networks = list
        .iter()
        .map(|s| {
            Network::parse(s).ok_or_else(|| {
                ConfigError::in_table(
                    source,
                    table,
                    "allowed_networks",
                    format!("{s:?} is not an IP address or network (address/prefix)"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Access { networks })
}

pub(super) fn metrics_config(m: &raw::Metrics, source: &str) -> Result<MetricsConfig, ConfigError> {
    Ok(MetricsConfig {
        enabled: m.enabled,
        access: access(&m.allowed_networks, "metrics", source)?,
    })
}

pub(super) fn admin_config(a: &raw::Admin, source: &str) -> Result<AdminConfig, ConfigError> {
    Ok(AdminConfig {
        enabled: a.enabled,
        access: access(&a.allowed_networks, "admin", source)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let n = Network::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let one = Network::parse("192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6 = Network::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(
            Network::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert_eq!(Network::parse("10.0.0.0/33"), None);
        assert_eq!(Network::parse("example.org"), None);
    }

    #[test]
    fn tables_parse_with_secure_defaults_and_bad_networks_are_reported() {
        let c = crate::Config::parse("").unwrap();
        assert!(c.metrics.enabled && c.metrics.access.networks.is_empty());
        assert!(!c.admin.enabled && c.admin.access.networks.is_empty());
        let c =
            crate::Config::parse("[admin]\nenabled = true\nallowed_networks = [\"10.0.0.0/8\"]\n")
                .unwrap();
        assert!(c.admin.enabled);
        assert!(c.admin.access.allows("10.9.8.7".parse().unwrap()));
        let e = crate::Config::parse("[metrics]\nallowed_networks = [\"everyone\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("everyone") && e.contains("line 2"), "{e}");
        assert!(crate::Config::parse("[admin]\ntoken = \"x\"\n").is_err());
    }

    #[test]
    fn loopback_is_always_allowed_and_nothing_else_by_default() {
        let a = Access::default();
        assert!(a.allows("127.0.0.1".parse().unwrap()));
        assert!(a.allows("::1".parse().unwrap()));
        assert!(a.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!a.allows("192.0.2.1".parse().unwrap()));
    }
}
