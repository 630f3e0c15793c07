//! An account's SCRAM secrets packed into one allocation, as the account
//! cache keeps them.
//!
//! A `Vec<StoredSecret>` is five heap blocks per mechanism (the mechanism
//! name, the salt, both keys) plus the vector and its `Arc`: eleven small
//! allocations, about 400 bytes, for an account with two mechanisms. The
//! cache holds an entry for every recently seen account, so for a server
//! full of online sessions that was a tenth of each idle session's
//! memory (issue #21, target 4). Packed, the same secrets are one block of
//! about 170 bytes; a login unpacks them into the `Vec` it asks for (it
//! cloned the cached `Vec` before, which allocated as much), and
//! `exists`, asked for every stanza to a local account, only looks whether
//! there is an entry.
//!
//! Layout, per secret, in the store's order: the mechanism, as one byte
//! (`0x80` plus its index in [`KNOWN`] for the mechanisms this server
//! stores, else the length of the name that follows, at most 127), the
//! iteration count (four bytes, little-endian), then salt, `StoredKey` and
//! `ServerKey`, each as a two-byte length and the bytes. A secret whose
//! parts do not fit those lengths is not packed (the account is then read
//! from the store each time, as without a cache); no real SCRAM secret
//! comes near them.

use std::sync::Arc;

use waxwing_store::StoredSecret;

/// Mechanisms written as one byte instead of their name. Only ever
/// appended to: a block is only read by the process that packed it, but
/// the order is the format.
const KNOWN: [&str; 3] = ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// The first byte of a known mechanism; below it, a name's length.
const KNOWN_TAG: u8 = 0x80;

/// One account's secrets in one shared block (see the module docs).
#[derive(Clone)]
pub(super) struct PackedSecrets(Arc<[u8]>);

impl PackedSecrets {
    /// Packs `secrets`; `None` if one of them has a part too long for the
    /// layout's length fields.
    pub(super) fn pack(secrets: &[StoredSecret]) -> Option<Self> {
        let size: usize = secrets
            .iter()
            .map(|s| {
                1 + s.mechanism.len()
                    + 4
                    + 6
                    + s.salt.len()
                    + s.stored_key.len()
                    + s.server_key.len()
            })
            .sum();
        let mut out = Vec::with_capacity(size);
        for s in secrets {
            match KNOWN.iter().position(|k| *k == s.mechanism) {
                Some(i) => out.push(KNOWN_TAG | u8::try_from(i).ok()?),
                None => {
                    let len = u8::try_from(s.mechanism.len())
                        .ok()
                        .filter(|l| *l < KNOWN_TAG)?;
                    out.push(len);
                    out.extend_from_slice(s.mechanism.as_bytes());
                }
            }
            out.extend_from_slice(&s.iterations.to_le_bytes());
            for part in [&s.salt, &s.stored_key, &s.server_key] {
                out.extend_from_slice(&u16::try_from(part.len()).ok()?.to_le_bytes());
                out.extend_from_slice(part);
            }
        }
        Some(PackedSecrets(Arc::from(out)))
    }

    /// The secrets as they were packed.
    pub(super) fn unpack(&self) -> Vec<StoredSecret> {
        let mut rest: &[u8] = &self.0;
        let mut secrets = Vec::new();
        while !rest.is_empty() {
            let mechanism = match rest[0] {
                tag if tag & KNOWN_TAG != 0 => {
                    rest = &rest[1..];
                    KNOWN[usize::from(tag & !KNOWN_TAG)].to_string()
                }
                len => String::from_utf8_lossy(take(&mut rest, 1, usize::from(len))).into_owned(),
            };
            let iterations = u32::from_le_bytes(take(&mut rest, 0, 4).try_into().expect("4 bytes"));
            let mut part = || {
                let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
                take(&mut rest, 2, len).to_vec()
            };
            let (salt, stored_key, server_key) = (part(), part(), part());
            secrets.push(StoredSecret {
                mechanism,
                salt,
                iterations,
                stored_key,
                server_key,
            });
        }
        secrets
    }

    /// The bytes held (for the size test).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Skips a `header`-byte length field, then returns the next `len` bytes
/// and advances past them. Only ever reads what `pack` wrote.
fn take<'a>(rest: &mut &'a [u8], header: usize, len: usize) -> &'a [u8] {
    let (field, tail) = rest[header..].split_at(len);
    *rest = tail;
    field
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(mechanism: &str, key_len: usize, fill: u8) -> StoredSecret {
        StoredSecret {
            mechanism: mechanism.into(),
            salt: vec![fill; 16],
            iterations: 4096 + u32::from(fill),
            stored_key: vec![fill.wrapping_add(1); key_len],
            server_key: vec![fill.wrapping_add(2); key_len],
        }
    }

    #[test]
    fn secrets_come_back_as_they_were_packed() {
        let secrets = vec![
            secret("SCRAM-SHA-1", 20, 1),
            secret("SCRAM-SHA-256", 32, 2),
            secret("SCRAM-SHA-512", 64, 3),
        ];
        let packed = PackedSecrets::pack(&secrets).unwrap();
        assert_eq!(packed.unpack(), secrets);
        // One block: the parts and their length fields, nothing else (a
        // known mechanism is one byte).
        let parts: usize = secrets
            .iter()
            .map(|s| s.salt.len() + s.stored_key.len() + s.server_key.len())
            .sum();
        assert_eq!(packed.len(), parts + secrets.len() * 11);
        // A mechanism this server does not store goes by name.
        let other = vec![
            secret("SCRAM-SHA3-512", 64, 4),
            secret("SCRAM-SHA-1", 20, 5),
        ];
        let packed = PackedSecrets::pack(&other).unwrap();
        assert_eq!(packed.unpack(), other);
        assert_eq!(packed.len(), 14 + 16 + 128 + 16 + 40 + 2 * 11);
    }

    #[test]
    fn empty_parts_and_no_secrets_round_trip() {
        let odd = StoredSecret {
            mechanism: String::new(),
            salt: Vec::new(),
            iterations: u32::MAX,
            stored_key: Vec::new(),
            server_key: vec![7],
        };
        let packed = PackedSecrets::pack(std::slice::from_ref(&odd)).unwrap();
        assert_eq!(packed.unpack(), vec![odd]);
        assert_eq!(PackedSecrets::pack(&[]).unwrap().unpack(), Vec::new());
    }

    #[test]
    fn parts_too_long_for_the_layout_are_not_packed() {
        let mut long_salt = secret("SCRAM-SHA-256", 32, 1);
        long_salt.salt = vec![0; 65_536];
        assert!(PackedSecrets::pack(&[long_salt]).is_none());
        let long_name = secret(&"X".repeat(128), 32, 1);
        assert!(PackedSecrets::pack(&[long_name]).is_none());
        // The longest that fit still round-trip.
        let mut longest = secret(&"X".repeat(127), 32, 1);
        longest.server_key = vec![9; 65_535];
        let packed = PackedSecrets::pack(std::slice::from_ref(&longest)).unwrap();
        assert_eq!(packed.unpack(), vec![longest]);
    }
}
