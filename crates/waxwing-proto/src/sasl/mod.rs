//! RFC 6120 §6: server side of SASL authentication.
//!
//! Sans-IO like the rest of the crate: callers supply salts, nonces,
//! channel-binding data and stored secrets, and carry the bytes to and from
//! the stream. Payloads here are the raw SASL messages; the base64 layer of
//! `<auth/>`, `<response/>` and friends is [`decode_payload`] and
//! [`encode_payload`].

mod anonymous;
mod channel_binding;
mod digest_md5;
mod gssapi;
mod plain;
mod scram;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

pub use anonymous::parse_anonymous;
pub use digest_md5::{DigestMd5Server, DigestResponse, digest_secret};
pub use gssapi::{
    LAYER_NONE, is_krb5_initial_token, parse_security_layer_choice, security_layer_offer,
};

/// RFC 4422 Appendix A: EXTERNAL's message is the authorization identity
/// the client asks for, empty for "whatever my credentials say".
pub fn parse_external(msg: &[u8]) -> Result<Option<String>, SaslError> {
    if msg.len() > MAX_MESSAGE_LEN || msg.contains(&0) {
        return Err(SaslError::MalformedRequest);
    }
    let authzid = std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest)?;
    Ok((!authzid.is_empty()).then(|| authzid.to_owned()))
}
pub use channel_binding::{
    ChannelBindingData, ChannelBindingType, ChannelBindingTypes, tls_server_end_point_hash,
};
pub use plain::{PlainCredentials, parse_plain};
pub use scram::{ClientFirst, ScramHash, ScramSecret, ScramServer, fake_salt};

/// Upper bound on any single SASL message we accept. Legitimate SCRAM and
/// PLAIN messages are a few hundred bytes; the cap bounds parsing and PRECIS
/// work an unauthenticated peer can make us do.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// A failed authentication, named by the RFC 6120 §6.5 condition it maps to
/// where one fits; [`SaslError::condition`] gives the element name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The message does not follow the mechanism's grammar, or came out of order.
    #[error("malformed SASL request")]
    MalformedRequest,
    /// Wrong credentials or unknown user; the two are deliberately indistinguishable.
    #[error("not authorized")]
    NotAuthorized,
    /// The client asked for a mechanism that is not offered.
    #[error("invalid mechanism")]
    InvalidMechanism,
    /// The mechanism is offered but policy requires a stronger one for this account.
    #[error("mechanism too weak")]
    MechanismTooWeak,
    /// The mechanism needs TLS (PLAIN) and the stream is not encrypted.
    #[error("encryption required")]
    EncryptionRequired,
    /// The client may not act as the requested authorization identity.
    #[error("invalid authzid")]
    InvalidAuthzid,
    /// The payload was not valid base64.
    #[error("incorrect encoding")]
    IncorrectEncoding,
    /// The client sent `<abort/>`.
    #[error("aborted by client")]
    Aborted,
    /// The server could not complete the check, e.g. the store is unavailable.
    #[error("temporary authentication failure")]
    TemporaryAuthFailure,
    /// The account exists but is disabled.
    #[error("account disabled")]
    AccountDisabled,
    /// The credentials are correct but must be changed before use.
    #[error("credentials expired")]
    CredentialsExpired,
    /// Channel binding failed: the `c=` data differs from ours, the client
    /// wants a binding type we lack, or it claimed (`y`) that we do not
    /// support binding while we do — a sign of a downgrade attack.
    #[error("channel binding failed")]
    ChannelBindingMismatch,
    /// A password failed PRECIS OpaqueString preparation.
    #[error("password is not a valid OpaqueString")]
    InvalidPassword,
    /// A SCRAM secret was requested with zero PBKDF2 iterations.
    #[error("iteration count must be at least 1")]
    InvalidIterationCount,
}

impl SaslError {
    /// The RFC 6120 §6.5 defined-condition element name to put in `<failure/>`.
    pub fn condition(&self) -> &'static str {
        match self {
            SaslError::MalformedRequest => "malformed-request",
            // Binding failures and bad passwords are authentication failures:
            // they must count against the same rate limits and reveal nothing
            // more specific to a possible attacker.
            SaslError::NotAuthorized
            | SaslError::ChannelBindingMismatch
            | SaslError::InvalidPassword => "not-authorized",
            SaslError::InvalidMechanism => "invalid-mechanism",
            SaslError::MechanismTooWeak => "mechanism-too-weak",
            SaslError::EncryptionRequired => "encryption-required",
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::IncorrectEncoding => "incorrect-encoding",
            SaslError::Aborted => "aborted",
            // A zero iteration count is a server configuration bug the client
            // cannot fix by retrying differently.
            SaslError::TemporaryAuthFailure | SaslError::InvalidIterationCount => {
                "temporary-auth-failure"
            }
            SaslError::AccountDisabled => "account-disabled",
            SaslError::CredentialsExpired => "credentials-expired",
        }
    }
}

/// A mechanism this server implements, parsed from `<auth mechanism='…'/>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// `SCRAM-SHA-1`, `SCRAM-SHA-256` and their `-PLUS` variants.
    Scram {
        /// The hash function.
        hash: ScramHash,
        /// Whether channel binding is required (`-PLUS`).
        plus: bool,
    },
    /// RFC 4616 `PLAIN`.
    Plain,
    /// RFC 4505 `ANONYMOUS` (XEP-0175): only on hosts configured for guests.
    Anonymous,
    /// RFC 4422 Appendix A `EXTERNAL` (XEP-0178): the TLS client certificate.
    External,
    /// RFC 4752 `GSSAPI`: a Kerberos ticket.
    Gssapi,
    /// RFC 2831 `DIGEST-MD5`: historic, only where explicitly enabled.
    DigestMd5,
}

/// Every mechanism name this server can offer, strongest first: the order
/// of `<mechanisms/>`, whatever order a configured list has.
pub const ALL_MECHANISMS: &[&str] = &[
    "EXTERNAL",
    "GSSAPI",
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "PLAIN",
    "DIGEST-MD5",
    "ANONYMOUS",
];

impl Mechanism {
    /// Parses a mechanism name; names are case-sensitive (RFC 4422 §3.1).
    pub fn from_name(name: &str) -> Option<Self> {
        let (base, plus) = match name.strip_suffix("-PLUS") {
            Some(base) => (base, true),
            None => (name, false),
        };
        let hash = match base {
            "PLAIN" if !plus => return Some(Mechanism::Plain),
            "ANONYMOUS" if !plus => return Some(Mechanism::Anonymous),
            "EXTERNAL" if !plus => return Some(Mechanism::External),
            "GSSAPI" if !plus => return Some(Mechanism::Gssapi),
            "DIGEST-MD5" if !plus => return Some(Mechanism::DigestMd5),
            "SCRAM-SHA-1" => ScramHash::Sha1,
            "SCRAM-SHA-256" => ScramHash::Sha256,
            _ => return None,
        };
        Some(Mechanism::Scram { hash, plus })
    }

    /// The IANA mechanism name.
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::Scram { hash, plus: false } => hash.name(),
            Mechanism::Scram { hash, plus: true } => hash.plus_name(),
            Mechanism::Plain => "PLAIN",
            Mechanism::Anonymous => "ANONYMOUS",
            Mechanism::External => "EXTERNAL",
            Mechanism::Gssapi => "GSSAPI",
            Mechanism::DigestMd5 => "DIGEST-MD5",
        }
    }
}

/// The `<mechanisms/>` list, strongest first so that clients picking the first
/// mutually supported entry get the best one.
///
/// `-PLUS` variants appear only with channel-binding data: advertising them
/// otherwise would make every binding-capable client fail. PLAIN needs TLS
/// because it sends the password itself.
pub fn mechanisms_offered(
    tls: bool,
    cb: &ChannelBindingData,
    allow_plain: bool,
) -> Vec<&'static str> {
    let mut out = Vec::with_capacity(5);
    if cb.any() {
        out.push(ScramHash::Sha256.plus_name());
        out.push(ScramHash::Sha1.plus_name());
    }
    out.push(ScramHash::Sha256.name());
    out.push(ScramHash::Sha1.name());
    if tls && allow_plain {
        out.push("PLAIN");
    }
    out
}

/// Decodes the character data of `<auth/>` or `<response/>`.
///
/// RFC 6120 §6.4.2: a lone `=` is an empty response, distinct from no
/// initial response at all (an empty element), which callers handle.
pub fn decode_payload(text: &str) -> Result<Vec<u8>, SaslError> {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if text == "=" {
        return Ok(Vec::new());
    }
    // 4/3 expansion plus padding: refuse before allocating for it.
    if text.len() > MAX_MESSAGE_LEN / 3 * 4 + 4 {
        return Err(SaslError::MalformedRequest);
    }
    BASE64
        .decode(text)
        .map_err(|_| SaslError::IncorrectEncoding)
}

/// Encodes a challenge or success payload; empty data becomes `=`.
pub fn encode_payload(data: &[u8]) -> String {
    if data.is_empty() {
        "=".to_owned()
    } else {
        BASE64.encode(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cb_exporter() -> ChannelBindingData {
        ChannelBindingData {
            tls_exporter: Some(vec![1; 32]),
            tls_server_end_point: None,
        }
    }

    #[test]
    fn offered_mechanisms_depend_on_tls_and_binding() {
        let none = ChannelBindingData::default();
        assert_eq!(
            mechanisms_offered(false, &none, true),
            ["SCRAM-SHA-256", "SCRAM-SHA-1"]
        );
        assert_eq!(
            mechanisms_offered(true, &none, true),
            ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
        );
        assert_eq!(
            mechanisms_offered(true, &cb_exporter(), false),
            [
                "SCRAM-SHA-256-PLUS",
                "SCRAM-SHA-1-PLUS",
                "SCRAM-SHA-256",
                "SCRAM-SHA-1"
            ]
        );
    }

    #[test]
    fn mechanism_names_round_trip() {
        for name in [
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-256",
            "SCRAM-SHA-1",
            "PLAIN",
            "ANONYMOUS",
            "EXTERNAL",
            "GSSAPI",
            "DIGEST-MD5",
        ] {
            assert_eq!(Mechanism::from_name(name).unwrap().name(), name);
        }
        for name in [
            "PLAIN-PLUS",
            "ANONYMOUS-PLUS",
            "GSSAPI-PLUS",
            "scram-sha-1",
            "SCRAM-SHA-512",
            "DIGEST-MD5-PLUS",
            "CRAM-MD5",
            "",
        ] {
            assert_eq!(Mechanism::from_name(name), None, "{name}");
        }
    }

    #[test]
    fn conditions_are_rfc6120_names() {
        assert_eq!(SaslError::MalformedRequest.condition(), "malformed-request");
        assert_eq!(SaslError::NotAuthorized.condition(), "not-authorized");
        assert_eq!(
            SaslError::ChannelBindingMismatch.condition(),
            "not-authorized"
        );
        assert_eq!(
            SaslError::IncorrectEncoding.condition(),
            "incorrect-encoding"
        );
        assert_eq!(SaslError::AccountDisabled.condition(), "account-disabled");
    }

    #[test]
    fn payload_base64() {
        assert_eq!(decode_payload("=").unwrap(), b"");
        assert_eq!(decode_payload(" biws\n").unwrap(), b"n,,");
        assert_eq!(decode_payload("b!ws"), Err(SaslError::IncorrectEncoding));
        assert_eq!(
            decode_payload(&"A".repeat(8000)),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(encode_payload(b""), "=");
        assert_eq!(encode_payload(b"n,,"), "biws");
    }
}
