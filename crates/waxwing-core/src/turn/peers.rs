//! Which peers a relay may talk to. A TURN server relays to whatever
//! address a client names, so without a filter any credential holder
//! could reach the server's own loopback services, the LAN behind it or
//! cloud metadata endpoints (RFC 8155 §9.1, "TURN server as a proxy").

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The peer-address policy of `[turn]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerPolicy {
    /// Relay to private (RFC 1918, ULA, CGNAT) and link-local peers.
    pub allow_private: bool,
    /// Exempt addresses and networks (checked first).
    pub allowed: Vec<IpNet>,
}

impl PeerPolicy {
    /// Whether a relay may send to or receive from `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.allowed.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        match class(ip) {
            Class::Public => true,
            Class::Private => self.allow_private,
            Class::Never => false,
        }
    }
}

enum Class {
    Public,
    /// Someone's internal network: refused unless `allow_private`.
    Private,
    /// Loopback, unspecified, multicast, broadcast, reserved: refused
    /// unless listed in `allowed_peers`.
    Never,
}

/// IPv4-mapped (`::ffff:a.b.c.d`) and NAT64 (`64:ff9b::/96`) addresses
/// reach an IPv4 host: judge that host.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

fn class(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => class_v4(v4),
        IpAddr::V6(v6) => class_v6(v6),
    }
}

fn class_v4(ip: Ipv4Addr) -> Class {
    let o = ip.octets();
    if ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || o[0] == 0 // "this network"
        || o[0] >= 240 // reserved
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
    // benchmarking
    {
        Class::Never
    } else if ip.is_private() || ip.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        // RFC 1918, 169.254/16 (cloud metadata lives here), RFC 6598 CGNAT.
        Class::Private
    } else {
        Class::Public
    }
}

fn class_v6(ip: Ipv6Addr) -> Class {
    let s = ip.segments();
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        Class::Never
    } else if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
        // ULA, link-local, the deprecated site-local.
        Class::Private
    } else {
        Class::Public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn by_default_only_public_peers_are_relayed_to() {
        let p = PeerPolicy::default();
        for public in [
            "192.0.2.1",
            "8.8.8.8",
            "2001:db8::1",
            "2a00:1450::1",
            "64:ff9b::808:808",
        ] {
            assert!(p.allows(ip(public)), "{public}");
        }
        for refused in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert!(!p.allows(ip(refused)), "{refused}");
        }
    }

    #[test]
    fn allow_private_opens_lans_but_never_loopback() {
        let p = PeerPolicy {
            allow_private: true,
            allowed: vec![],
        };
        assert!(p.allows(ip("10.0.0.1")) && p.allows(ip("fd00::1")) && p.allows(ip("fe80::1")));
        assert!(!p.allows(ip("127.0.0.1")) && !p.allows(ip("::1")) && !p.allows(ip("224.0.0.1")));
    }

    #[test]
    fn allowed_peers_are_exempt() {
        let p = PeerPolicy {
            allow_private: false,
            allowed: vec![
                "127.0.0.1/32".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
            ],
        };
        assert!(p.allows(ip("127.0.0.1")) && p.allows(ip("::ffff:127.0.0.1")));
        assert!(p.allows(ip("10.1.200.3")));
        assert!(!p.allows(ip("127.0.0.2")) && !p.allows(ip("10.2.0.1")));
    }
}
