//! RFC 6125 / RFC 7590 identity checks for server certificates: is this
//! certificate (whose chain was already validated) issued for `domain`?
//!
//! Accepted reference identifiers, as XEP-0178 and RFC 6120 §13.7.1.2 list
//! them: DNS-ID (`dNSName`, with a wildcard only as the whole left-most
//! label), SRV-ID (`otherName` id-on-dnsSRV `_xmpp-server.domain`) and
//! XmppAddr (`otherName` id-on-xmppAddr `domain`). The subject CN is only
//! consulted when the certificate has no subjectAltName at all.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

pub(crate) const OID_XMPP_ADDR: &str = "1.3.6.1.5.5.7.8.5";
const OID_DNS_SRV: &str = "1.3.6.1.5.5.7.8.7";

/// True when the DER certificate `cert` names `domain` (already prepared:
/// lower case, A-labels or U-labels as the JID carries it).
pub fn cert_matches_domain(cert: &[u8], domain: &str) -> bool {
    let Ok((_, cert)) = parse_x509_certificate(cert) else {
        return false;
    };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .any(|n| general_name_matches(n, &domain)),
        Ok(None) => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .any(|cn| dns_id_matches(cn, &domain)),
        Err(_) => false,
    }
}

fn general_name_matches(name: &GeneralName<'_>, domain: &str) -> bool {
    match name {
        GeneralName::DNSName(d) => dns_id_matches(d, domain),
        GeneralName::OtherName(oid, value) => {
            let oid = oid.to_id_string();
            let Some(s) = other_name_string(value) else {
                return false;
            };
            if oid == OID_XMPP_ADDR {
                s.eq_ignore_ascii_case(domain)
            } else if oid == OID_DNS_SRV {
                s.strip_prefix("_xmpp-server.")
                    .or_else(|| s.strip_prefix("_xmpps-server."))
                    .is_some_and(|d| d.trim_end_matches('.').eq_ignore_ascii_case(domain))
            } else {
                false
            }
        }
        _ => false,
    }
}

/// RFC 6125 §6.4.3: `*` only as the complete left-most label, matching
/// exactly one label.
pub fn dns_id_matches(presented: &str, domain: &str) -> bool {
    let presented = presented.trim_end_matches('.').to_ascii_lowercase();
    if let Some(rest) = presented.strip_prefix("*.") {
        // `*.com` style wildcards over a public suffix are not worth
        // second-guessing here; require at least two labels after it.
        return rest.contains('.')
            && domain
                .split_once('.')
                .is_some_and(|(first, tail)| !first.is_empty() && tail == rest);
    }
    presented == domain
}

/// The string inside an otherName value: `[0] EXPLICIT` around a
/// UTF8String (xmppAddr) or IA5String (SRVName).
pub(crate) fn other_name_string(value: &[u8]) -> Option<String> {
    let (tag, inner, _) = der_tlv(value)?;
    let inner = if tag == 0xA0 {
        let (t, s, _) = der_tlv(inner)?;
        if t != 0x0C && t != 0x16 {
            return None;
        }
        s
    } else if tag == 0x0C || tag == 0x16 {
        inner
    } else {
        return None;
    };
    String::from_utf8(inner.to_vec()).ok()
}

/// One DER tag-length-value: (tag, content, rest).
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&len0, mut rest) = rest.split_first()?;
    let len = if len0 < 0x80 {
        usize::from(len0)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &byte in &rest[..n] {
            len = (len << 8) | usize::from(byte);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, OtherNameValue, SanType};

    fn cert(sans: Vec<SanType>, cn: Option<&str>) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn dns(d: &str) -> SanType {
        SanType::DnsName(d.try_into().unwrap())
    }

    #[test]
    fn dns_id() {
        let c = cert(vec![dns("example.org")], None);
        assert!(cert_matches_domain(&c, "example.org"));
        assert!(cert_matches_domain(&c, "EXAMPLE.org"));
        assert!(!cert_matches_domain(&c, "example.com"));
        assert!(!cert_matches_domain(&c, "sub.example.org"));
    }

    #[test]
    fn wildcards_cover_one_label() {
        let c = cert(vec![dns("*.example.org")], None);
        assert!(cert_matches_domain(&c, "chat.example.org"));
        assert!(!cert_matches_domain(&c, "example.org"));
        assert!(!cert_matches_domain(&c, "a.chat.example.org"));
        assert!(!dns_id_matches("*.org", "example.org"));
    }

    #[test]
    fn srv_id_and_xmpp_addr() {
        let srv = SanType::OtherName((
            vec![1, 3, 6, 1, 5, 5, 7, 8, 7],
            OtherNameValue::Utf8String("_xmpp-server.srv.example".into()),
        ));
        let addr = SanType::OtherName((
            vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
            OtherNameValue::Utf8String("addr.example".into()),
        ));
        let c = cert(vec![srv, addr], None);
        assert!(cert_matches_domain(&c, "srv.example"));
        assert!(cert_matches_domain(&c, "addr.example"));
        assert!(!cert_matches_domain(&c, "other.example"));
    }

    #[test]
    fn common_name_only_without_san() {
        let c = cert(vec![], Some("cn.example"));
        assert!(cert_matches_domain(&c, "cn.example"));
        let c = cert(vec![dns("san.example")], Some("cn.example"));
        assert!(!cert_matches_domain(&c, "cn.example"));
        assert!(cert_matches_domain(&c, "san.example"));
    }

    #[test]
    fn garbage_is_no_match() {
        assert!(!cert_matches_domain(b"not a certificate", "example.org"));
    }
}
