//! TURN REST credentials (the scheme `[external_services]` hands out over
//! XEP-0215): the username is `<expiry>:<bare JID>`, the password
//! base64(HMAC-SHA1(secret, username)). The server never stores a
//! password: it recomputes it, refuses a username whose expiry has
//! passed, and the `turn` crate checks MESSAGE-INTEGRITY with the key
//! returned here, so a forged password fails there.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use turn::auth::{AuthHandler, generate_auth_key};
use waxwing_proto::payload::extdisco::{turn_expiry, turn_password};

/// The `AuthHandler` of the built-in server.
pub(crate) struct RestAuth {
    secret: String,
    realm: String,
    /// Unix seconds now; a field so that tests can move the clock.
    now: fn() -> u64,
}

impl RestAuth {
    pub fn new(secret: String, realm: String) -> Self {
        RestAuth {
            secret,
            realm,
            now: unix_now,
        }
    }

    /// The long-term key (RFC 5389 §15.4) of a valid `username`, or why not.
    fn key(&self, username: &str, realm: &str) -> Result<Vec<u8>, &'static str> {
        if realm != self.realm {
            return Err("wrong realm");
        }
        let expiry = turn_expiry(username).ok_or("not an <expiry>:<user> username")?;
        if user_of(username).is_none_or(str::is_empty) {
            return Err("no user in the username");
        }
        if expiry <= (self.now)() {
            return Err("expired credentials");
        }
        let password = turn_password(self.secret.as_bytes(), username);
        Ok(generate_auth_key(username, realm, &password))
    }
}

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        self.key(username, realm).map_err(|why| {
            tracing::debug!(%src_addr, username, why, "TURN credentials refused");
            turn::Error::Other(why.into())
        })
    }
}

/// The user a TURN REST username names (`<expiry>:<user>` → `<user>`):
/// quotas and bandwidth limits count per user, whatever the expiry.
pub(crate) fn user_of(username: &str) -> Option<&str> {
    username.split_once(':').map(|(_, u)| u)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_1000() -> u64 {
        1000
    }

    fn auth() -> RestAuth {
        RestAuth {
            secret: "0123456789abcdef".into(),
            realm: "example.org".into(),
            now: at_1000,
        }
    }

    #[test]
    fn a_valid_username_gives_the_key_of_its_hmac_password() {
        let user = "2000:alice@example.org";
        let key = auth().key(user, "example.org").unwrap();
        let password = turn_password(b"0123456789abcdef", user);
        assert_eq!(key, generate_auth_key(user, "example.org", &password));
        // A client that forged the password (another secret) computes
        // another key, so its MESSAGE-INTEGRITY does not verify.
        let forged = turn_password(b"not-the-secret!!", user);
        assert_ne!(key, generate_auth_key(user, "example.org", &forged));
    }

    #[test]
    fn expired_malformed_and_foreign_realm_usernames_are_refused() {
        let a = auth();
        assert_eq!(
            a.key("1000:alice@example.org", "example.org"),
            Err("expired credentials")
        );
        assert_eq!(
            a.key("999:alice@example.org", "example.org"),
            Err("expired credentials")
        );
        assert!(a.key("alice@example.org", "example.org").is_err());
        assert!(a.key("soon:alice@example.org", "example.org").is_err());
        assert!(a.key("2000:", "example.org").is_err());
        assert_eq!(
            a.key("2000:alice@example.org", "other.org"),
            Err("wrong realm")
        );
        assert_eq!(user_of("2000:alice@example.org"), Some("alice@example.org"));
    }
}
