//! Password handling: SCRAM secrets are the only form a password is kept in.

use rand::RngCore;
use waxwing_proto::sasl::{SaslError, ScramHash, ScramSecret};
use waxwing_store::accounts::StoredSecret;

/// Derives the SHA-1 and SHA-256 SCRAM secrets for a new password.
///
/// One random 16-byte salt per account (RFC 5802 §5.1), shared by both
/// hashes: the fake salts handed out for unknown users are also one per
/// name and 16 bytes long, so salts reveal nothing about which accounts exist.
pub fn make_secrets(password: &str, iterations: u32) -> Result<Vec<StoredSecret>, SaslError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    [ScramHash::Sha256, ScramHash::Sha1]
        .into_iter()
        .map(|hash| ScramSecret::derive(hash, password, &salt, iterations).map(|s| to_stored(&s)))
        .collect()
}

pub fn to_stored(s: &ScramSecret) -> StoredSecret {
    StoredSecret {
        mechanism: s.hash.name().to_string(),
        salt: s.salt.clone(),
        iterations: s.iterations,
        stored_key: s.stored_key.clone(),
        server_key: s.server_key.clone(),
    }
}

/// `None` for a mechanism this build does not know (a newer database).
pub fn from_stored(s: &StoredSecret) -> Option<ScramSecret> {
    let hash = match s.mechanism.as_str() {
        "SCRAM-SHA-1" => ScramHash::Sha1,
        "SCRAM-SHA-256" => ScramHash::Sha256,
        _ => return None,
    };
    Some(ScramSecret {
        hash,
        salt: s.salt.clone(),
        iterations: s.iterations,
        stored_key: s.stored_key.clone(),
        server_key: s.server_key.clone(),
    })
}

/// Checks a password against an account's stored secrets.
pub fn verify(secrets: &[StoredSecret], password: &str) -> bool {
    let parsed: Vec<_> = secrets.iter().filter_map(from_stored).collect();
    parsed
        .iter()
        .find(|s| s.hash == ScramHash::Sha256)
        .or(parsed.first())
        .is_some_and(|s| s.verify_password(password))
}
