//! RFC 4752: the GSSAPI mechanism's security-layer negotiation.
//!
//! The Kerberos context itself is established by the GSS-API library (the
//! runtime's `auth::gssapi`); what is left for the protocol is the last
//! round trip, which the RFC requires even when no security layer is used:
//! the server sends four octets wrapped in the context (layers it supports,
//! maximum buffer size), the client answers with four wrapped octets (the
//! layer it chose, its buffer size) followed by the authorization identity.
//!
//! We offer no security layer: TLS already protects the stream (a SASL
//! layer inside it would add nothing), so the only acceptable choice is
//! "none", with a maximum buffer size of zero (RFC 4752 §3.3).

use super::{MAX_MESSAGE_LEN, SaslError};

/// The DER encoding of the Kerberos V5 mechanism OID 1.2.840.113554.1.2.2.
const KRB5_OID: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02,
];

/// Whether `token` is an RFC 2743 §3.1 initial context token of the
/// Kerberos V5 mechanism, the only one RFC 4752 uses: `[APPLICATION 0]`,
/// a DER length that covers the rest exactly, then the mechanism OID.
/// Anything else is refused as malformed before the GSS library sees it
/// (which would report it as an unspecified failure, like a broken keytab).
pub fn is_krb5_initial_token(token: &[u8]) -> bool {
    let Some((&0x60, rest)) = token.split_first() else {
        return false;
    };
    let Some((&first, rest)) = rest.split_first() else {
        return false;
    };
    let (len, body) = match first {
        n if n < 0x80 => (usize::from(n), rest),
        0x81..=0x84 => {
            let k = usize::from(first & 0x7f);
            if rest.len() < k {
                return false;
            }
            let len = rest[..k]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[k..])
        }
        _ => return false,
    };
    len == body.len() && body.starts_with(KRB5_OID)
}

/// RFC 4752 §3.3 bit-mask: no security layer.
pub const LAYER_NONE: u8 = 1;

/// The server's security-layer message, before `gss_wrap` (no
/// confidentiality): only "no layer", maximum buffer size 0.
pub fn security_layer_offer() -> [u8; 4] {
    [LAYER_NONE, 0, 0, 0]
}

/// Reads the client's unwrapped answer: it must choose "no layer"; the rest
/// is the authorization identity it asks for (`None` when empty).
pub fn parse_security_layer_choice(msg: &[u8]) -> Result<Option<String>, SaslError> {
    if msg.len() < 4 || msg.len() > MAX_MESSAGE_LEN {
        return Err(SaslError::MalformedRequest);
    }
    // Only the one layer we offered may be chosen (a client asking for
    // integrity or confidentiality would expect wrapped stanzas).
    if msg[0] != LAYER_NONE {
        return Err(SaslError::MalformedRequest);
    }
    let authzid = &msg[4..];
    if authzid.contains(&0) {
        return Err(SaslError::MalformedRequest);
    }
    let authzid = std::str::from_utf8(authzid).map_err(|_| SaslError::MalformedRequest)?;
    Ok((!authzid.is_empty()).then(|| authzid.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_tokens_must_be_framed_krb5() {
        let mut ok = vec![0x60, 13];
        ok.extend_from_slice(KRB5_OID);
        ok.extend_from_slice(&[1, 0]);
        assert!(is_krb5_initial_token(&ok));
        let mut long = vec![0x60, 0x82, 0x01, 0x00];
        long.extend_from_slice(KRB5_OID);
        long.resize(4 + 256, 0);
        assert!(is_krb5_initial_token(&long));
        for bad in [
            &b"not a kerberos token"[..],
            &[],
            &[0x60],
            &[0x60, 0x05, 0x06, 0x03, 0x2b, 0x06, 0x01],
            &ok[..ok.len() - 1],
            &[0x60, 0x85, 0, 0, 0, 0, 1],
        ] {
            assert!(!is_krb5_initial_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn offer_is_no_layer_and_no_buffer() {
        assert_eq!(security_layer_offer(), [1, 0, 0, 0]);
    }

    #[test]
    fn choice_of_no_layer_with_or_without_authzid() {
        assert_eq!(parse_security_layer_choice(&[1, 0, 0, 0]), Ok(None));
        let mut msg = vec![1, 0, 0, 0];
        msg.extend_from_slice("jürgen@example.org".as_bytes());
        assert_eq!(
            parse_security_layer_choice(&msg),
            Ok(Some("jürgen@example.org".into()))
        );
    }

    #[test]
    fn other_layers_and_garbage_are_refused() {
        for msg in [
            &[][..],
            &[1, 0, 0],
            &[2, 0, 16, 0],
            &[4, 0, 16, 0],
            &[3, 0, 0, 0],
            &[1, 0, 0, 0, b'a', 0, b'b'],
            &[1, 0, 0, 0, 0xff],
        ] {
            assert_eq!(
                parse_security_layer_choice(msg),
                Err(SaslError::MalformedRequest),
                "{msg:?}"
            );
        }
    }
}
