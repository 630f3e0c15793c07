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
