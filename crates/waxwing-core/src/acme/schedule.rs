//! When to order: the renewal time of a certificate and the wait after a
//! failed order. Pure functions of times, so they are tested without a clock.

use std::time::{Duration, SystemTime};

use crate::tls::CertInfo;

/// The longest sleep between two looks at the certificates: once a day
/// the task also notices a certificate file that was removed or replaced.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(86_400);

/// When a certificate for `names` should be ordered: now when there is
/// none or when it does not cover every name (a service domain was added);
/// else `renew_before` ahead of its not-after. A short-lived
/// certificate (a lifetime under three times `renew_before`, such as
/// Let's Encrypt's six-day ones) is renewed once a third of its lifetime
/// remains instead, so that it is not renewed on every look.
pub fn renewal_due(
    stored: Option<&CertInfo>,
    names: &[String],
    renew_before: Duration,
) -> SystemTime {
    let Some(s) = stored else {
        return SystemTime::UNIX_EPOCH;
    };
    if !covers(s, names) {
        return SystemTime::UNIX_EPOCH;
    }
    let lifetime = s.not_after.duration_since(s.not_before).unwrap_or_default();
    let ahead = renew_before.min(lifetime / 3);
    s.not_after
        .checked_sub(ahead)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Whether the certificate names every one of `names`.
pub fn covers(cert: &CertInfo, names: &[String]) -> bool {
    names
        .iter()
        .all(|n| cert.names.iter().any(|m| m.eq_ignore_ascii_case(n)))
}

/// The wait after the `failures`-th failure in a row (1 for the first):
/// `initial`, doubled each time, at most `max`.
pub fn backoff(failures: u32, initial: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    initial.saturating_mul(1 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn cert(start: SystemTime, days: u32, names: &[&str]) -> CertInfo {
        CertInfo {
            not_before: start,
            not_after: start + DAY * days,
            names: names.iter().map(|n| n.to_string()).collect(),
            issuer: "CN=test".into(),
            sha256: String::new(),
        }
    }

    #[test]
    fn ninety_day_certificates_are_renewed_thirty_days_ahead() {
        let t0 = SystemTime::UNIX_EPOCH + DAY * 20_000;
        let c = cert(t0, 90, &["a.example", "conference.a.example"]);
        let names = ["a.example".to_string(), "conference.a.example".to_string()];
        assert_eq!(renewal_due(Some(&c), &names, DAY * 30), t0 + DAY * 60);
    }

    #[test]
    fn short_lived_certificates_are_renewed_when_a_third_remains() {
        let t0 = SystemTime::UNIX_EPOCH + DAY * 20_000;
        let c = cert(t0, 6, &["a.example"]);
        assert_eq!(
            renewal_due(Some(&c), &["a.example".into()], DAY * 30),
            t0 + DAY * 4
        );
    }

    #[test]
    fn a_missing_certificate_or_a_new_name_is_due_now() {
        let t0 = SystemTime::UNIX_EPOCH + DAY * 20_000;
        let names = ["a.example".to_string(), "pubsub.a.example".to_string()];
        assert_eq!(renewal_due(None, &names, DAY * 30), SystemTime::UNIX_EPOCH);
        let c = cert(t0, 90, &["a.example"]);
        assert_eq!(
            renewal_due(Some(&c), &names, DAY * 30),
            SystemTime::UNIX_EPOCH
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let (i, m) = (Duration::from_secs(600), Duration::from_secs(86_400));
        assert_eq!(backoff(1, i, m), i);
        assert_eq!(backoff(2, i, m), i * 2);
        assert_eq!(backoff(4, i, m), i * 8);
        assert_eq!(backoff(9, i, m), m);
        assert_eq!(backoff(u32::MAX, i, m), m);
    }
}
