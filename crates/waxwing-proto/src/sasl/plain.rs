//! RFC 4616: the PLAIN mechanism.

use std::fmt;

use super::{MAX_MESSAGE_LEN, SaslError};

/// RFC 4616 §2 only requires accepting 255 octets per field; we allow more
/// for long passphrases but still bound what reaches PRECIS and the hasher.
const MAX_FIELD_LEN: usize = 1024;

/// The three fields of a PLAIN message, as sent: the caller prepares the
/// authcid (UsernameCaseMapped) and password (OpaqueString) itself, because
/// it also decides what a given authzid means.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    /// The identity to act as; `None` when the field is empty.
    pub authzid: Option<String>,
    /// The identity whose password this is.
    pub authcid: String,
    /// The password.
    pub password: String,
}

// Hand-written so that a stray `{:?}` in a log line cannot leak a password.
impl fmt::Debug for PlainCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainCredentials")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Parses `[authzid] NUL authcid NUL passwd`.
pub fn parse_plain(msg: &[u8]) -> Result<PlainCredentials, SaslError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(SaslError::MalformedRequest);
    }
    let mut fields = msg.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslError::MalformedRequest);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::MalformedRequest);
    }
    let field = |bytes: &[u8]| -> Result<String, SaslError> {
        if bytes.len() > MAX_FIELD_LEN {
            return Err(SaslError::MalformedRequest);
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| SaslError::MalformedRequest)
    };
    Ok(PlainCredentials {
        authzid: if authzid.is_empty() {
            None
        } else {
            Some(field(authzid)?)
        },
        authcid: field(authcid)?,
        password: field(password)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_authzid() {
        let c = parse_plain(b"\0juliet\0r0m30").unwrap();
        assert_eq!(c.authzid, None);
        assert_eq!(c.authcid, "juliet");
        assert_eq!(c.password, "r0m30");
    }

    #[test]
    fn with_authzid_and_unicode() {
        let c = parse_plain("admin@x\0Jüliet\0pass word ☃".as_bytes()).unwrap();
        assert_eq!(c.authzid.as_deref(), Some("admin@x"));
        // Raw, unprepared: case is the caller's business.
        assert_eq!(c.authcid, "Jüliet");
        assert_eq!(c.password, "pass word ☃");
    }

    #[test]
    fn rejects_wrong_field_count_and_empties() {
        for msg in [
            &b""[..],
            b"juliet",
            b"\0juliet",
            b"\0juliet\0pw\0",
            b"a\0juliet\0pw\0extra",
            b"\0\0pw",
            b"\0juliet\0",
            b"\0\0",
        ] {
            assert_eq!(
                parse_plain(msg),
                Err(SaslError::MalformedRequest),
                "{msg:?}"
            );
        }
    }

    #[test]
    fn rejects_invalid_utf8() {
        assert_eq!(
            parse_plain(b"\0jul\xFFiet\0pw"),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(
            parse_plain(b"\xC3\0a\0pw"),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    fn field_and_message_limits() {
        let max = "p".repeat(MAX_FIELD_LEN);
        assert!(parse_plain(format!("\0u\0{max}").as_bytes()).is_ok());
        let over = "p".repeat(MAX_FIELD_LEN + 1);
        assert_eq!(
            parse_plain(format!("\0u\0{over}").as_bytes()),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(
            parse_plain(format!("{over}\0u\0p").as_bytes()),
            Err(SaslError::MalformedRequest)
        );
        let huge = vec![b'a'; MAX_MESSAGE_LEN + 1];
        assert_eq!(parse_plain(&huge), Err(SaslError::MalformedRequest));
    }

    #[test]
    fn debug_redacts_password() {
        let c = parse_plain(b"\0juliet\0hunter2").unwrap();
        let s = format!("{c:?}");
        assert!(s.contains("juliet"));
        assert!(!s.contains("hunter2"));
    }
}
