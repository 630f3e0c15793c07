//! Password handling: SCRAM secrets are the only form a password is kept in.

use std::io;
use std::path::Path;

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

/// The stored mechanism name of the RFC 2831 secret.
pub const DIGEST_MD5: &str = "DIGEST-MD5";

/// Adds the DIGEST-MD5 secret (HA1 = MD5(localpart:host:password)) to a new
/// password's secrets when the account's host has `legacy_digest_md5` on.
/// It is only ever made here, from a password being set: an account whose
/// password predates the option has none and cannot use DIGEST-MD5.
pub fn with_digest(
    config: &crate::config::Config,
    user: &waxwing_proto::jid::BareJid,
    password: &str,
    mut secrets: Vec<StoredSecret>,
) -> Result<Vec<StoredSecret>, SaslError> {
    if config
        .auth
        .host(user.domain())
        .is_some_and(|h| h.digest_md5)
    {
        let realm = user.domain();
        let ha1 =
            waxwing_proto::sasl::digest_secret(user.local().unwrap_or_default(), realm, password)?;
        secrets.push(StoredSecret {
            mechanism: DIGEST_MD5.to_string(),
            // The realm it was computed for: a renamed host's secret matches nothing.
            salt: realm.as_bytes().to_vec(),
            iterations: 1,
            stored_key: ha1.to_vec(),
            server_key: Vec::new(),
        });
    }
    Ok(secrets)
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

/// File under `data_dir` holding the key of the fake SCRAM salts.
const FAKE_SALT_KEY_FILE: &str = "scram_fake_salt_secret";

/// The key from which unknown accounts' fake SCRAM salts are derived,
/// persisted under `data_dir` (generated on first start, mode 0600). A key
/// drawn at every start would change every unknown name's salt across a
/// restart while real accounts keep theirs: a probe before and after a
/// restart would tell them apart.
pub fn load_fake_salt_key(data_dir: &Path) -> io::Result<[u8; 32]> {
    load_or_create_key(&data_dir.join(FAKE_SALT_KEY_FILE))
}

/// A 32-byte secret kept in `path` as 64 hex digits: read if the file
/// exists, else drawn at random and written (mode 0600), so that what it
/// keys (fake salts, upload URLs) survives restarts.
pub fn load_or_create_key(path: &Path) -> io::Result<[u8; 32]> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let mut key = [0u8; 32];
            if hex::decode_to_slice(s.trim(), &mut key).is_ok() {
                return Ok(key);
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not 64 hex digits", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let key: [u8; 32] = rand::random();
    crate::private_file::write(path, hex::encode(key).as_bytes())?;
    Ok(key)
}

/// The fake-salt key for one virtual host. Real accounts with the same
/// name on two hosts have different salts; fake ones must too, or probing
/// one name on two hosts would show that both are unknown.
pub fn host_fake_salt_key(key: &[u8; 32], host: &str) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(b"waxwing fake salt host\0");
    mac.update(host.as_bytes());
    mac.finalize().into_bytes().into()
}

/// What PLAIN checks an unknown account's password against: the same
/// derivation (fake salt, the configured iteration count) as a real
/// account, so that "no such user" takes as long as "wrong password".
/// Its keys are zero, which no password derives to.
pub fn decoy_secret(fake_salt_key: &[u8], username: &str, iterations: u32) -> ScramSecret {
    let hash = ScramHash::Sha256;
    ScramSecret {
        hash,
        salt: waxwing_proto::sasl::fake_salt(fake_salt_key, username),
        iterations: iterations.max(1),
        stored_key: vec![0; hash.output_len()],
        server_key: vec![0; hash.output_len()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_salt_key_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_fake_salt_key(dir.path()).unwrap();
        let b = load_fake_salt_key(dir.path()).unwrap();
        assert_eq!(a, b, "issue 14: the same key after a restart");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(a, load_fake_salt_key(other.path()).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FAKE_SALT_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn fake_salts_differ_per_host() {
        let key = [7u8; 32];
        let a = host_fake_salt_key(&key, "a.example");
        assert_eq!(a, host_fake_salt_key(&key, "a.example"));
        assert_ne!(a, host_fake_salt_key(&key, "b.example"));
        assert_ne!(
            decoy_secret(&a, "alice", 4096).salt,
            decoy_secret(&host_fake_salt_key(&key, "b.example"), "alice", 4096).salt
        );
    }

    #[test]
    fn decoy_costs_a_derivation_and_never_verifies() {
        let d = decoy_secret(b"key", "nobody", 4096);
        assert_eq!(d.salt.len(), 16);
        assert_eq!(d.iterations, 4096);
        assert!(!d.verify_password("anything"));
    }
}
