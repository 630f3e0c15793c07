//! RFC 2831: the DIGEST-MD5 mechanism, server side. Historic (RFC 6331) and
//! off by default: only for old clients, only for accounts that have the
//! separate digest secret (see `waxwing_core::credentials`).
//!
//! What we implement of it: one authentication per exchange (no subsequent
//! authentication), `qop=auth` only (no integrity or confidentiality layer:
//! TLS protects the stream), `charset=utf-8`, `algorithm=md5-sess`. The
//! stored secret is HA1 = MD5(username ":" realm ":" password), which
//! is all the server needs (and as good as the password for this
//! mechanism, which is why it is kept apart and only on request).
//!
//! Replay protection: the nonce is fresh and random for every exchange,
//! used once (this state machine accepts one response), and the nonce
//! count must be 1.

use md5::{Digest, Md5};
use precis_core::profile::PrecisFastInvocation;
use precis_profiles::OpaqueString;
use subtle::ConstantTimeEq;

use super::{MAX_MESSAGE_LEN, SaslError};

/// The stored secret HA1 = MD5(username:realm:password), the password
/// prepared with PRECIS OpaqueString as for SCRAM (identical for ASCII,
/// which is what old clients send reliably).
pub fn digest_secret(username: &str, realm: &str, password: &str) -> Result<[u8; 16], SaslError> {
    let password = OpaqueString::enforce(password).map_err(|_| SaslError::InvalidPassword)?;
    Ok(ha1(username, realm, &password))
}

fn ha1(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The client's digest-response, parsed and checked against our challenge;
/// the caller looks up the account's secret for `username` and calls
/// [`DigestMd5Server::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestResponse {
    /// The authentication identity (a localpart).
    pub username: String,
    /// The authorization identity, if the client asked for one.
    pub authzid: Option<String>,
    cnonce: String,
    nc: String,
    digest_uri: String,
    response: String,
}

/// One DIGEST-MD5 exchange: challenge, response, rspauth.
#[derive(Debug)]
pub struct DigestMd5Server {
    realm: String,
    nonce: String,
    answered: bool,
}

impl DigestMd5Server {
    /// `realm` is the host (also the digest-uri's host); `nonce` must be
    /// fresh and random (the caller draws it: no randomness here).
    pub fn new(realm: &str, nonce: &str) -> Self {
        DigestMd5Server {
            realm: realm.to_string(),
            nonce: nonce.to_string(),
            answered: false,
        }
    }

    /// The digest-challenge (RFC 2831 §2.1.1).
    pub fn challenge(&self) -> Vec<u8> {
        format!(
            "realm=\"{}\",nonce=\"{}\",qop=\"auth\",charset=utf-8,algorithm=md5-sess",
            self.realm, self.nonce
        )
        .into_bytes()
    }

    /// Parses the digest-response and checks everything that does not need
    /// the account's secret. A second response is refused (replay).
    pub fn handle_response(&mut self, msg: &[u8]) -> Result<DigestResponse, SaslError> {
        if std::mem::replace(&mut self.answered, true) {
            return Err(SaslError::MalformedRequest);
        }
        if msg.len() > MAX_MESSAGE_LEN {
            return Err(SaslError::MalformedRequest);
        }
        let text = std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest)?;
        let fields = parse_directives(text)?;
        let get = |k: &str| {
            fields
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        // A UTF-8 secret only matches a UTF-8 response; ISO-8859-1 names
        // and passwords are not supported.
        if get("charset").is_some_and(|c| !c.eq_ignore_ascii_case("utf-8")) {
            return Err(SaslError::MalformedRequest);
        }
        if get("qop").is_some_and(|q| q != "auth") {
            return Err(SaslError::MalformedRequest);
        }
        if get("cipher").is_some() {
            return Err(SaslError::MalformedRequest);
        }
        let (Some(username), Some(nonce), Some(cnonce), Some(nc), Some(uri), Some(response)) = (
            get("username"),
            get("nonce"),
            get("cnonce"),
            get("nc"),
            get("digest-uri"),
            get("response"),
        ) else {
            return Err(SaslError::MalformedRequest);
        };
        if nonce != self.nonce || get("realm").is_some_and(|r| r != self.realm) {
            return Err(SaslError::NotAuthorized);
        }
        // The first (and only) use of this nonce.
        if nc != "00000001" {
            return Err(SaslError::NotAuthorized);
        }
        if username.is_empty() || cnonce.is_empty() || response.len() != 32 {
            return Err(SaslError::MalformedRequest);
        }
        // digest-uri = "xmpp/" host [ "/" serv-name ] (RFC 2831 §2.1.2,
        // RFC 6120's service name): it must name this host, so a response
        // computed for another server cannot be replayed here.
        let mut parts = uri.split('/');
        let ok_uri = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("xmpp"), Some(host), None, None) => host.eq_ignore_ascii_case(&self.realm),
            (Some("xmpp"), Some(_), Some(name), None) => name.eq_ignore_ascii_case(&self.realm),
            _ => false,
        };
        if !ok_uri {
            return Err(SaslError::NotAuthorized);
        }
        Ok(DigestResponse {
            username: username.to_string(),
            authzid: get("authzid").filter(|a| !a.is_empty()).map(str::to_string),
            cnonce: cnonce.to_string(),
            nc: nc.to_string(),
            digest_uri: uri.to_string(),
            response: response.to_ascii_lowercase(),
        })
    }

    /// Checks the response against the account's HA1; `Ok(rspauth)` is the
    /// server's proof to send back (`rspauth=…`).
    pub fn verify(&self, r: &DigestResponse, ha1: &[u8]) -> Result<Vec<u8>, SaslError> {
        let expected = self.compute(r, ha1, b"AUTHENTICATE:");
        if !bool::from(expected.as_bytes().ct_eq(r.response.as_bytes())) {
            return Err(SaslError::NotAuthorized);
        }
        Ok(format!("rspauth={}", self.compute(r, ha1, b":")).into_bytes())
    }

    fn compute(&self, r: &DigestResponse, ha1: &[u8], a2_prefix: &[u8]) -> String {
        let mut a1: Vec<&[u8]> = vec![ha1, b":", self.nonce.as_bytes(), b":", r.cnonce.as_bytes()];
        if let Some(z) = &r.authzid {
            a1.push(b":");
            a1.push(z.as_bytes());
        }
        let ha1_sess = md5_hex(&a1);
        let ha2 = md5_hex(&[a2_prefix, r.digest_uri.as_bytes()]);
        md5_hex(&[
            ha1_sess.as_bytes(),
            b":",
            self.nonce.as_bytes(),
            b":",
            r.nc.as_bytes(),
            b":",
            r.cnonce.as_bytes(),
            b":auth:",
            ha2.as_bytes(),
        ])
    }
}

/// `name=value` or `name="quoted\"value"`, comma separated (RFC 2831 §7.1
/// `#rule`, empty elements allowed); a directive given twice is refused.
fn parse_directives(text: &str) -> Result<Vec<(String, String)>, SaslError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars
            .peek()
            .is_some_and(|c| c.is_ascii_whitespace() || *c == ',')
        {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_ascii_whitespace() {
                break;
            }
            if !(c.is_ascii_alphanumeric() || c == '-') {
                return Err(SaslError::MalformedRequest);
            }
            name.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || name.is_empty() {
            return Err(SaslError::MalformedRequest);
        }
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or(SaslError::MalformedRequest)?),
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => return Err(SaslError::MalformedRequest),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim_end().to_string();
        }
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        if !matches!(chars.next(), None | Some(',')) {
            return Err(SaslError::MalformedRequest);
        }
        if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            return Err(SaslError::MalformedRequest);
        }
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2831 §4's IMAP example, with our `xmpp` service and realm:
    /// the arithmetic is the RFC's (checked against the published values
    /// below for its own inputs).
    #[test]
    fn rfc2831_example_values() {
        let s = DigestMd5Server::new("elwood.innosoft.com", "OA6MG9tEQGm2hh");
        let ha1 = digest_secret("chris", "elwood.innosoft.com", "secret").unwrap();
        let r = DigestResponse {
            username: "chris".into(),
            authzid: None,
            cnonce: "OA6MHXh6VqTrRk".into(),
            nc: "00000001".into(),
            digest_uri: "imap/elwood.innosoft.com".into(),
            response: String::new(),
        };
        assert_eq!(
            s.compute(&r, &ha1, b"AUTHENTICATE:"),
            "d388dad90d4bbd760a152321f2143af7"
        );
        assert_eq!(
            s.compute(&r, &ha1, b":"),
            "ea40f60335c427b5527b84dbabcdfffd"
        );
    }

    fn client_response(s: &DigestMd5Server, user: &str, pw: &str, uri: &str, nc: &str) -> String {
        let ha1 = ha1(user, "example.org", pw);
        let r = DigestResponse {
            username: user.into(),
            authzid: None,
            cnonce: "c-nonce".into(),
            nc: nc.into(),
            digest_uri: uri.into(),
            response: String::new(),
        };
        let resp = s.compute(&r, &ha1, b"AUTHENTICATE:");
        format!(
            "username=\"{user}\",realm=\"example.org\",nonce=\"n0nce\",cnonce=\"c-nonce\",\
             nc={nc},qop=auth,digest-uri=\"{uri}\",response={resp},charset=utf-8"
        )
    }

    #[test]
    fn right_password_gets_rspauth_wrong_one_does_not() {
        let ha1 = digest_secret("juliet", "example.org", "r0m30").unwrap();
        let mut s = DigestMd5Server::new("example.org", "n0nce");
        let c = String::from_utf8(s.challenge()).unwrap();
        assert!(
            c.contains("nonce=\"n0nce\"") && c.contains("qop=\"auth\""),
            "{c}"
        );
        let msg = client_response(&s, "juliet", "r0m30", "xmpp/example.org", "00000001");
        let r = s.handle_response(msg.as_bytes()).unwrap();
        assert_eq!(r.username, "juliet");
        let rspauth = s.verify(&r, &ha1).unwrap();
        assert!(rspauth.starts_with(b"rspauth="));
        let wrong = digest_secret("juliet", "example.org", "not it").unwrap();
        assert_eq!(s.verify(&r, &wrong), Err(SaslError::NotAuthorized));
        // One response per nonce.
        assert_eq!(
            s.handle_response(msg.as_bytes()),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    fn uri_nonce_count_and_qop_are_checked() {
        let refused = |msg: String| {
            let mut s = DigestMd5Server::new("example.org", "n0nce");
            s.handle_response(msg.as_bytes()).err()
        };
        let s = DigestMd5Server::new("example.org", "n0nce");
        let good = client_response(&s, "juliet", "pw", "xmpp/example.org", "00000001");
        assert_eq!(refused(good.clone()), None);
        assert!(
            refused(client_response(
                &s,
                "juliet",
                "pw",
                "xmpp/other.org",
                "00000001"
            ))
            .is_some()
        );
        assert!(
            refused(client_response(
                &s,
                "juliet",
                "pw",
                "imap/example.org",
                "00000001"
            ))
            .is_some()
        );
        assert!(
            refused(client_response(
                &s,
                "juliet",
                "pw",
                "xmpp/example.org",
                "00000002"
            ))
            .is_some()
        );
        assert_eq!(
            refused(client_response(
                &s,
                "juliet",
                "pw",
                "xmpp/x/example.org",
                "00000001"
            )),
            None
        );
        for (from, to) in [
            ("qop=auth", "qop=auth-conf"),
            ("nonce=\"n0nce\"", "nonce=\"other\""),
            ("charset=utf-8", "charset=iso-8859-1"),
            ("realm=\"example.org\"", "realm=\"evil.org\""),
            (
                "username=\"juliet\",",
                "username=\"juliet\",username=\"romeo\",",
            ),
        ] {
            assert!(refused(good.replace(from, to)).is_some(), "{to}");
        }
        for garbage in ["", "username", "a=\"unterminated", "=x", "a=b c=d"] {
            assert!(refused(garbage.to_string()).is_some(), "{garbage}");
        }
    }

    #[test]
    fn directives_unquote() {
        let d = parse_directives(r#"a="x\"y", b = plain ,,c="""#).unwrap();
        assert_eq!(
            d,
            [
                ("a".into(), "x\"y".into()),
                ("b".into(), "plain".into()),
                ("c".into(), String::new())
            ]
        );
    }
}
