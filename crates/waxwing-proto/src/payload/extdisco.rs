//! XEP-0215: External Service Discovery — the `<service/>` element and the
//! TURN REST credential scheme (draft-uberti-behave-turn-rest-00, what
//! coturn's `use-auth-secret` checks): the username is
//! `<expiry unix time>:<user>` and the password is
//! `base64(HMAC-SHA1(secret, username))`, so a TURN server that knows only
//! the shared secret can check it, and it stops working at the expiry.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::ns;
use crate::xml::Element;

/// The TURN REST username for `user`, valid until `expires_unix`.
pub fn turn_username(user: &str, expires_unix: u64) -> String {
    format!("{expires_unix}:{user}")
}

/// The TURN REST password of `username` under `secret`.
pub fn turn_password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The expiry (unix seconds) a TURN REST username carries, if well formed.
pub fn turn_expiry(username: &str) -> Option<u64> {
    username.split_once(':')?.0.parse().ok()
}

/// One `<service/>` of a `<services/>` or `<credentials/>` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub kind: String,
    pub host: String,
    pub port: u16,
    pub transport: Option<String>,
    pub name: Option<String>,
    /// Short-term credentials: (username, password, expires as XEP-0082).
    pub credentials: Option<(String, String, String)>,
    /// Needs credentials (XEP-0215 §3.1 `restricted`).
    pub restricted: bool,
}

impl Service {
    pub fn to_element(&self) -> Element {
        let mut el = Element::new("service", ns::EXTDISCO)
            .with_attr("type", &self.kind)
            .with_attr("host", &self.host)
            .with_attr("port", self.port.to_string());
        if let Some(t) = &self.transport {
            el.set_attr("transport", t);
        }
        if let Some(n) = &self.name {
            el.set_attr("name", n);
        }
        if self.restricted {
            el.set_attr("restricted", "1");
        }
        if let Some((user, pass, expires)) = &self.credentials {
            el.set_attr("username", user);
            el.set_attr("password", pass);
            el.set_attr("expires", expires);
        }
        el
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_rest_password_matches_coturn() {
        // Independently computed: python3 -c "import hmac,hashlib,base64;
        // print(base64.b64encode(hmac.new(b'north', b'1700000000:alice@example.org',
        // hashlib.sha1).digest()).decode())"
        let user = turn_username("alice@example.org", 1_700_000_000);
        assert_eq!(user, "1700000000:alice@example.org");
        assert_eq!(
            turn_password(b"north", &user),
            "PZI+z4ibN1IQ7v4pzuL4fO8lnhI="
        );
        assert_eq!(turn_expiry(&user), Some(1_700_000_000));
        assert_eq!(turn_expiry("alice"), None);
    }

    #[test]
    fn service_element_carries_credentials_and_restriction() {
        let s = Service {
            kind: "turn".into(),
            host: "turn.example.org".into(),
            port: 3478,
            transport: Some("udp".into()),
            name: None,
            credentials: Some(("u".into(), "p".into(), "2030-01-01T00:00:00Z".into())),
            restricted: true,
        };
        let el = s.to_element();
        assert_eq!(el.attr("restricted"), Some("1"));
        assert_eq!(el.attr("username"), Some("u"));
        assert_eq!(el.attr("port"), Some("3478"));
        assert_eq!(el.attr("name"), None);
    }
}
