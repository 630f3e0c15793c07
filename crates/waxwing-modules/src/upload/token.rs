//! The signatures that make upload URLs unforgeable: a slot's PUT URL is
//! signed over everything the PUT must match (owner, id, file name, size,
//! content type, expiry), and the `Authorization` header the slot carries
//! is a second MAC over (owner, id) given only to the requester's stream.
//! Stateless: nothing is stored per slot, and slots survive restarts.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// What a PUT URL commits to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// [`owner_dir`] of the requester's bare JID.
    pub owner: String,
    /// Random, URL-safe.
    pub id: String,
    pub filename: String,
    pub size: u64,
    /// As requested; empty when the client gave none.
    pub content_type: String,
    /// Unix seconds after which the PUT URL is refused.
    pub expires: u64,
}

/// The directory (and URL segment) of an account's files: a hash of its
/// bare JID, so that URLs do not reveal who shared a file and any JID maps
/// to a safe path segment.
pub fn owner_dir(bare_jid: &str) -> String {
    let digest = Sha256::digest(format!("waxwing upload owner\0{bare_jid}").as_bytes());
    hex::encode(&digest[..16])
}

fn mac(key: &[u8; 32], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("any key length");
    for p in parts {
        // Length-prefixed, so that no two part lists give the same input.
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    m
}

fn slot_mac(key: &[u8; 32], s: &Slot) -> HmacSha256 {
    mac(
        key,
        &[
            b"put",
            s.owner.as_bytes(),
            s.id.as_bytes(),
            s.filename.as_bytes(),
            &s.size.to_be_bytes(),
            s.content_type.as_bytes(),
            &s.expires.to_be_bytes(),
        ],
    )
}

/// The PUT URL's `sig` parameter.
pub fn sign(key: &[u8; 32], s: &Slot) -> String {
    hex::encode(slot_mac(key, s).finalize().into_bytes())
}

/// Whether `sig` is the signature of `s` (constant time).
pub fn verify(key: &[u8; 32], s: &Slot, sig: &str) -> bool {
    let Ok(sig) = hex::decode(sig) else {
        return false;
    };
    slot_mac(key, s).verify_slice(&sig).is_ok()
}

/// The `Authorization` header value of a slot.
pub fn authorization(key: &[u8; 32], owner: &str, id: &str) -> String {
    let m = mac(key, &[b"auth", owner.as_bytes(), id.as_bytes()]);
    format!("Bearer {}", hex::encode(m.finalize().into_bytes()))
}

/// Whether a PUT's `Authorization` header is the one of slot (`owner`, `id`).
pub fn verify_authorization(key: &[u8; 32], owner: &str, id: &str, header: &str) -> bool {
    let Some(hex_mac) = header.strip_prefix("Bearer ") else {
        return false;
    };
    let Ok(bytes) = hex::decode(hex_mac.trim()) else {
        return false;
    };
    mac(key, &[b"auth", owner.as_bytes(), id.as_bytes()])
        .verify_slice(&bytes)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> Slot {
        Slot {
            owner: owner_dir("alice@example.org"),
            id: "abc".into(),
            filename: "cat.jpg".into(),
            size: 1234,
            content_type: "image/jpeg".into(),
            expires: 1_700_000_000,
        }
    }

    #[test]
    fn a_signature_covers_every_field() {
        let key = [7u8; 32];
        let s = slot();
        let sig = sign(&key, &s);
        assert!(verify(&key, &s, &sig));
        assert!(!verify(&[8u8; 32], &s, &sig));
        let changed = [
            Slot {
                owner: owner_dir("bob@example.org"),
                ..slot()
            },
            Slot {
                id: "abd".into(),
                ..slot()
            },
            Slot {
                filename: "cat.jpeg".into(),
                ..slot()
            },
            Slot {
                size: 1235,
                ..slot()
            },
            Slot {
                content_type: "text/html".into(),
                ..slot()
            },
            Slot {
                expires: 1_700_000_001,
                ..slot()
            },
        ];
        for c in changed {
            assert!(!verify(&key, &c, &sig), "{c:?}");
        }
        assert!(!verify(&key, &s, "zz"));
    }

    #[test]
    fn the_authorization_header_is_bound_to_owner_and_slot() {
        let key = [7u8; 32];
        let a = owner_dir("alice@example.org");
        let h = authorization(&key, &a, "id1");
        assert!(verify_authorization(&key, &a, "id1", &h));
        assert!(!verify_authorization(&key, &a, "id2", &h));
        assert!(!verify_authorization(
            &key,
            &owner_dir("bob@example.org"),
            "id1",
            &h
        ));
        assert!(!verify_authorization(
            &key,
            &a,
            "id1",
            h.trim_start_matches("Bearer ")
        ));
        assert_ne!(a, owner_dir("bob@example.org"));
        assert_eq!(a.len(), 32);
    }
}
