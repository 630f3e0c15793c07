//! Where to connect for a remote domain: `[s2s.routes]` first, then DNS SRV
//! (`_xmpps-server._tcp` for direct TLS, XEP-0368, and `_xmpp-server._tcp`,
//! RFC 6120 §3.2), then the domain itself on port 5269.
//!
//! SRV gives host names; their addresses come from the system resolver
//! (`tokio::net::lookup_host`, so `/etc/hosts` applies) when connecting.

use std::sync::OnceLock;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};

/// One place to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// TLS from the first byte (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
}

/// An SRV record as far as ordering is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub target: Target,
}

/// Why a domain has no place to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0} announces that it offers no XMPP server-to-server service")]
    NoService(String),
    #[error("bad static route {0:?}: expected host:port")]
    BadRoute(String),
}

/// The static route for `domain`, if configured.
pub fn static_route(route: &str) -> Result<Target, ResolveError> {
    let (direct_tls, rest) = match route.strip_prefix("tls://") {
        Some(r) => (true, r),
        None => (false, route),
    };
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| ResolveError::BadRoute(route.into()))?;
    let port = port
        .parse()
        .map_err(|_| ResolveError::BadRoute(route.into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(ResolveError::BadRoute(route.into()));
    }
    Ok(Target {
        host: host.into(),
        port,
        direct_tls,
    })
}

fn resolver() -> Option<&'static TokioResolver> {
    static RESOLVER: OnceLock<Option<TokioResolver>> = OnceLock::new();
    RESOLVER
        .get_or_init(|| {
            let mut builder = match TokioResolver::builder_tokio() {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "no system DNS configuration; SRV lookups disabled");
                    return None;
                }
            };
            let opts = builder.options_mut();
            opts.timeout = Duration::from_secs(3);
            opts.attempts = 2;
            match builder.build() {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build the DNS resolver; SRV lookups disabled");
                    None
                }
            }
        })
        .as_ref()
}

async fn srv(name: &str, direct_tls: bool) -> Vec<Srv> {
    let Some(r) = resolver() else {
        return Vec::new();
    };
    let lookup = match r.lookup(format!("{name}."), RecordType::SRV).await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(name, error = %e, "no SRV records");
            return Vec::new();
        }
    };
    lookup
        .answers()
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::SRV(s) => Some(Srv {
                priority: s.priority,
                weight: s.weight,
                target: Target {
                    host: s.target.to_ascii().trim_end_matches('.').to_string(),
                    port: s.port,
                    direct_tls,
                },
            }),
            _ => None,
        })
        .collect()
}

/// Every target for `domain`, best first.
pub async fn targets(domain: &str) -> Result<Vec<Target>, ResolveError> {
    let (direct_name, starttls_name) = (
        format!("_xmpps-server._tcp.{domain}"),
        format!("_xmpp-server._tcp.{domain}"),
    );
    let (xmpps, xmpp) = tokio::join!(srv(&direct_name, true), srv(&starttls_name, false));
    let mut all = xmpps;
    all.extend(xmpp);
    if all.is_empty() {
        return Ok(vec![Target {
            host: domain.into(),
            port: 5269,
            direct_tls: false,
        }]);
    }
    // RFC 2782: a single record with target "." means "no service here".
    if all.len() == 1 && (all[0].target.host.is_empty() || all[0].target.host == ".") {
        return Err(ResolveError::NoService(domain.into()));
    }
    all.retain(|s| !s.target.host.is_empty());
    Ok(order(all, &mut |n| rand::random_range(0..=n)))
}

/// RFC 2782 ordering: ascending priority; within one priority a weighted
/// random draw, zero-weight records first in the running sums so that
/// they are picked rarely but still picked. `pick(n)` returns a number in
/// `0..=n`. XEP-0368: both SRV sets are merged, so the direct-TLS and
/// STARTTLS records compete on the same terms.
pub fn order(mut records: Vec<Srv>, pick: &mut dyn FnMut(u32) -> u32) -> Vec<Target> {
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let prio = records[0].priority;
        let end = records
            .iter()
            .position(|r| r.priority != prio)
            .unwrap_or(records.len());
        let mut group: Vec<Srv> = records.drain(..end).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let n = pick(total);
            let mut running = 0;
            let mut chosen = group.len() - 1;
            for (i, r) in group.iter().enumerate() {
                running += u32::from(r.weight);
                if running >= n {
                    chosen = i;
                    break;
                }
            }
            out.push(group.remove(chosen).target);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, host: &str, direct_tls: bool) -> Srv {
        Srv {
            priority,
            weight,
            target: Target {
                host: host.into(),
                port: 5269,
                direct_tls,
            },
        }
    }

    fn hosts(t: &[Target]) -> Vec<&str> {
        t.iter().map(|t| t.host.as_str()).collect()
    }

    #[test]
    fn lower_priority_first() {
        let recs = vec![
            srv(20, 0, "c", false),
            srv(10, 5, "b", true),
            srv(5, 0, "a", false),
        ];
        assert_eq!(hosts(&order(recs, &mut |_| 0)), ["a", "b", "c"]);
    }

    #[test]
    fn weights_pick_within_a_priority() {
        let recs = || {
            vec![
                srv(10, 60, "heavy", false),
                srv(10, 40, "light", false),
                srv(10, 0, "zero", false),
            ]
        };
        // Running sums after sorting: zero=0, heavy=60, light=100.
        assert_eq!(
            hosts(&order(recs(), &mut |_| 0)),
            ["zero", "heavy", "light"]
        );
        let mut first = true;
        let mut high = |n| {
            if std::mem::take(&mut first) { n } else { 0 }
        };
        assert_eq!(hosts(&order(recs(), &mut high)), ["light", "zero", "heavy"]);
        let mut first = true;
        let mut mid = |n| {
            if std::mem::take(&mut first) { 30 } else { n }
        };
        assert_eq!(hosts(&order(recs(), &mut mid)), ["heavy", "light", "zero"]);
    }

    #[test]
    fn weighted_draw_is_roughly_proportional() {
        let mut heavy_first = 0;
        for _ in 0..2000 {
            let recs = vec![srv(1, 90, "heavy", false), srv(1, 10, "light", true)];
            let t = order(recs, &mut |n| rand::random_range(0..=n));
            if t[0].host == "heavy" {
                heavy_first += 1;
            }
        }
        assert!((1600..=1950).contains(&heavy_first), "{heavy_first}");
    }

    #[test]
    fn static_routes() {
        assert_eq!(
            static_route("127.0.0.1:5269").unwrap(),
            Target {
                host: "127.0.0.1".into(),
                port: 5269,
                direct_tls: false
            }
        );
        assert_eq!(
            static_route("tls://[::1]:5270").unwrap(),
            Target {
                host: "::1".into(),
                port: 5270,
                direct_tls: true
            }
        );
        assert!(static_route("example.org").is_err());
        assert!(static_route(":5269").is_err());
    }
}
