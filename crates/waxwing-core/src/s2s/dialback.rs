//! Server dialback keys (XEP-0220, keys as recommended by XEP-0185).
//!
//! `key = HEX(HMAC-SHA256(HEX(SHA256(secret)), receiving ' ' originating ' ' stream-id))`.
//! XEP-0185's worked example keys the HMAC with the *hex text* of the
//! secret's digest, and so do we, so that our keys match its vector.

use std::io;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use waxwing_proto::xml::Element;

/// `jabber:server:dialback`: `<db:result/>` and `<db:verify/>`.
pub const NS: &str = "jabber:server:dialback";
/// XEP-0220 §2.4: the stream feature announcing dialback with error support.
pub const FEATURE_NS: &str = "urn:xmpp:features:dialback";

/// The secret-derived HMAC key; one per server process.
#[derive(Clone)]
pub struct DialbackSecret {
    hmac_key: String,
}

impl std::fmt::Debug for DialbackSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DialbackSecret(..)")
    }
}

impl DialbackSecret {
    pub fn new(secret: &[u8]) -> Self {
        DialbackSecret {
            hmac_key: hex::encode(Sha256::digest(secret)),
        }
    }

    /// From an HMAC key made by [`DialbackSecret::new`] elsewhere (another
    /// node of a cluster): 64 lowercase hex digits.
    pub fn from_hmac_key(key: &str) -> Option<Self> {
        (key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then(
            || DialbackSecret {
                hmac_key: key.to_string(),
            },
        )
    }

    /// The HMAC key (what a cluster's nodes share).
    pub fn hmac_key(&self) -> &str {
        &self.hmac_key
    }

    /// The key the originating server sends for (receiving, originating, stream id).
    pub fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        hex::encode(
            self.mac(receiving, originating, stream_id)
                .finalize()
                .into_bytes(),
        )
    }

    /// Authoritative-server check of a key, in constant time.
    pub fn verify(&self, receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
        let Ok(given) = hex::decode(key.trim()) else {
            return false;
        };
        self.mac(receiving, originating, stream_id)
            .verify_slice(&given)
            .is_ok()
    }

    fn mac(&self, receiving: &str, originating: &str, stream_id: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.hmac_key.as_bytes())
            .expect("HMAC takes any key length");
        mac.update(receiving.as_bytes());
        mac.update(b" ");
        mac.update(originating.as_bytes());
        mac.update(b" ");
        mac.update(stream_id.as_bytes());
        mac
    }

    /// The configured secret, or the one persisted under `data_dir`
    /// (generated on first start, so keys stay valid across restarts
    /// while a peer still holds a key from before).
    pub fn load(configured: Option<&str>, data_dir: &Path) -> io::Result<Self> {
        if let Some(s) = configured {
            return Ok(Self::new(s.as_bytes()));
        }
        let path = data_dir.join("s2s_dialback_secret");
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => return Ok(Self::new(s.trim().as_bytes())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let bytes: [u8; 32] = rand::random();
        let secret = hex::encode(bytes);
        crate::private_file::write(&path, secret.as_bytes())?;
        Ok(Self::new(secret.as_bytes()))
    }
}

/// `<db:result from to>key</db:result>` (originating → receiving).
pub fn result_request(from: &str, to: &str, key: &str) -> Element {
    Element::new("result", NS)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_text(key)
}

/// `<db:result type>` (receiving → originating), `valid` or `invalid`.
pub fn result_answer(from: &str, to: &str, valid: bool) -> Element {
    Element::new("result", NS)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", if valid { "valid" } else { "invalid" })
}

/// `<db:result type='error'>` with a stanza error condition (XEP-0220 §2.4);
/// the `<error/>` is in the stream's namespace, as in the XEP's examples.
pub fn result_error(from: &str, to: &str, err: &waxwing_proto::stanza::StanzaError) -> Element {
    let mut e = err.to_element();
    e.ns = waxwing_proto::ns::SERVER.into();
    Element::new("result", NS)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", "error")
        .with_child(e)
}

/// `<db:verify from to id>key</db:verify>` (receiving → authoritative).
pub fn verify_request(from: &str, to: &str, id: &str, key: &str) -> Element {
    Element::new("verify", NS)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("id", id)
        .with_text(key)
}

/// `<db:verify type>` (authoritative → receiving).
pub fn verify_answer(from: &str, to: &str, id: &str, valid: bool) -> Element {
    Element::new("verify", NS)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("id", id)
        .with_attr("type", if valid { "valid" } else { "invalid" })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0185 §3, the worked example.
    #[test]
    fn xep_0185_vector() {
        let s = DialbackSecret::new(b"s3cr3tf0rd14lb4ck");
        assert_eq!(
            s.hmac_key,
            "a7136eb1f46c9ef18c5e78c36ca257067c69b3d518285f0b18a96c33beae9acc"
        );
        let key = s.key("xmpp.example.com", "example.org", "D60000229F");
        assert_eq!(
            key,
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
        );
        assert!(s.verify("xmpp.example.com", "example.org", "D60000229F", &key));
        assert!(s.verify(
            "xmpp.example.com",
            "example.org",
            "D60000229F",
            &format!("\n  {key}\n")
        ));
    }

    #[test]
    fn any_other_input_is_invalid() {
        let s = DialbackSecret::new(b"s3cr3tf0rd14lb4ck");
        let key = s.key("xmpp.example.com", "example.org", "D60000229F");
        assert!(!s.verify("xmpp.example.com", "example.org", "D60000229G", &key));
        assert!(!s.verify("example.org", "xmpp.example.com", "D60000229F", &key));
        assert!(!s.verify("xmpp.example.com", "example.org", "D60000229F", "zz"));
        assert!(!s.verify("xmpp.example.com", "example.org", "D60000229F", ""));
        let other = DialbackSecret::new(b"another secret");
        assert!(!other.verify("xmpp.example.com", "example.org", "D60000229F", &key));
    }

    #[test]
    fn secret_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let a = DialbackSecret::load(None, dir.path()).unwrap();
        let b = DialbackSecret::load(None, dir.path()).unwrap();
        assert_eq!(a.key("r", "o", "id"), b.key("r", "o", "id"));
        let c = DialbackSecret::load(Some("configured"), dir.path()).unwrap();
        assert_ne!(a.key("r", "o", "id"), c.key("r", "o", "id"));
    }
}
