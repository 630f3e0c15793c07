//! RFC 4505: the ANONYMOUS mechanism (XEP-0175 for XMPP).
//!
//! The client sends an optional *trace* string (an e-mail address or a
//! token) that says nothing trusted; the server invents the identity.

use super::{MAX_MESSAGE_LEN, SaslError};

/// RFC 4505 §3: the trace is at most 255 UTF-8 characters.
const MAX_TRACE_CHARS: usize = 255;

/// Checks the optional trace message and returns it, for logging only.
pub fn parse_anonymous(msg: &[u8]) -> Result<String, SaslError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(SaslError::MalformedRequest);
    }
    let trace = std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest)?;
    if trace.chars().count() > MAX_TRACE_CHARS || trace.contains('\0') {
        return Err(SaslError::MalformedRequest);
    }
    Ok(trace.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_email_traces_are_accepted() {
        assert_eq!(parse_anonymous(b"").unwrap(), "");
        assert_eq!(
            parse_anonymous(b"guest@example.org").unwrap(),
            "guest@example.org"
        );
    }

    #[test]
    fn bad_traces_are_refused() {
        assert_eq!(parse_anonymous(b"\xff"), Err(SaslError::MalformedRequest));
        assert_eq!(parse_anonymous(b"a\0b"), Err(SaslError::MalformedRequest));
        let long = "x".repeat(256);
        assert_eq!(
            parse_anonymous(long.as_bytes()),
            Err(SaslError::MalformedRequest)
        );
    }
}
