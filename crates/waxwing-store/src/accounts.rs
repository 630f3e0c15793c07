//! Accounts and their SCRAM credentials (RFC 5802, RFC 7677).

use std::fmt;

use async_trait::async_trait;
use waxwing_proto::jid::BareJid;

use crate::StoreError;

/// One SCRAM secret per hash: salted, never the password itself.
///
/// PLAIN is verified by deriving `StoredKey` from the offered password with
/// the same salt and iterations, so no other form of the password is kept.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSecret {
    /// The SASL mechanism this secret serves: `"SCRAM-SHA-1"` or `"SCRAM-SHA-256"`.
    pub mechanism: String,
    /// The per-account random salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// `H(ClientKey)`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

/// Keys stay out of logs: `ServerKey` lets its holder impersonate the server,
/// and a leaked `StoredKey` plus one observed exchange lets an attacker log in.
impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSecret")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .field("salt", &format_args!("<{} bytes>", self.salt.len()))
            .field("stored_key", &format_args!("<redacted>"))
            .field("server_key", &format_args!("<redacted>"))
            .finish()
    }
}

/// The answer of [`AccountStore::login_reads`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginRead {
    /// This backend reads the parts one by one.
    NotBatched,
    /// There is no such account.
    NoAccount,
    /// The account's secrets, roster and fragment.
    Account {
        /// As [`AccountStore::secrets`] returns them.
        secrets: Vec<StoredSecret>,
        /// As [`RosterStore::items`](crate::RosterStore::items) returns them.
        roster: Vec<crate::RosterItem>,
        /// The fragment asked for; `None`: nothing stored under that key.
        fragment: Option<String>,
    },
}

/// Local accounts, keyed by bare JID.
///
/// Every method is durable before it returns.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates the account with its secrets. [`StoreError::AlreadyExists`] if it exists.
    ///
    /// Secrets are unique per mechanism; if `secrets` names one mechanism
    /// twice, the last entry wins.
    async fn create(&self, user: &BareJid, secrets: &[StoredSecret]) -> Result<(), StoreError>;

    /// The account's secrets, sorted by mechanism; `None` when there is no such account.
    async fn secrets(&self, user: &BareJid) -> Result<Option<Vec<StoredSecret>>, StoreError>;

    /// Replaces all of the account's secrets (password change).
    /// [`StoreError::NotFound`] if there is no such account.
    async fn set_secrets(&self, user: &BareJid, secrets: &[StoredSecret])
    -> Result<(), StoreError>;

    /// Deletes the account, its roster (the rows it owns) and its offline
    /// messages in one transaction. [`StoreError::NotFound`] if there is no
    /// such account.
    ///
    /// Rows in *other* users' rosters that name this account are left alone:
    /// the caller finds them with [`RosterStore::owners_of`](crate::RosterStore::owners_of)
    /// and updates them with the presence and roster pushes that go with it.
    /// The owner's roster version is kept (and bumped if visible rows went
    /// away), so a recreated account never reuses a version a client cached.
    async fn delete(&self, user: &BareJid) -> Result<(), StoreError>;

    /// Whether the account exists.
    async fn exists(&self, user: &BareJid) -> Result<bool, StoreError>;

    /// What a login reads, in one round trip where the backend can: the
    /// secrets (as [`AccountStore::secrets`]), the roster (as
    /// [`RosterStore::items`](crate::RosterStore::items)) and the private-XML
    /// fragment `fragment` (as
    /// [`PrivateXmlStore::get`](crate::PrivateXmlStore::get)). Each part is
    /// read in its own snapshot: callers must treat them as three reads.
    /// [`LoginRead::NotBatched`] (the default): the backend has no cheaper way
    /// than the three calls, which the caller then makes when it needs them.
    async fn login_reads(&self, _user: &BareJid, _fragment: &str) -> Result<LoginRead, StoreError> {
        Ok(LoginRead::NotBatched)
    }

    /// All accounts, or those of one domain (canonical form, as
    /// [`BareJid::domain`] returns it), sorted by [`BareJid`]'s `Ord`.
    async fn list(&self, domain: Option<&str>) -> Result<Vec<BareJid>, StoreError>;

    /// The number of accounts, or of those in one domain.
    async fn count(&self, domain: Option<&str>) -> Result<u64, StoreError>;
}

/// Applies the "unique per mechanism, last one wins" rule and sorts by
/// mechanism, so every backend stores and returns the same list.
pub(crate) fn normalize_secrets(secrets: &[StoredSecret]) -> Vec<StoredSecret> {
    let mut out: Vec<StoredSecret> = Vec::with_capacity(secrets.len());
    for s in secrets {
        match out.iter_mut().find(|o| o.mechanism == s.mechanism) {
            Some(existing) => *existing = s.clone(),
            None => out.push(s.clone()),
        }
    }
    out.sort_by(|a, b| a.mechanism.cmp(&b.mechanism));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(mechanism: &str, salt: u8) -> StoredSecret {
        StoredSecret {
            mechanism: mechanism.into(),
            salt: vec![salt],
            iterations: 4096,
            stored_key: vec![1, 2, 3],
            server_key: vec![4, 5, 6],
        }
    }

    #[test]
    fn normalize_keeps_last_per_mechanism_and_sorts() {
        let got = normalize_secrets(&[
            secret("SCRAM-SHA-256", 1),
            secret("SCRAM-SHA-1", 2),
            secret("SCRAM-SHA-256", 3),
        ]);
        assert_eq!(
            got,
            vec![secret("SCRAM-SHA-1", 2), secret("SCRAM-SHA-256", 3)]
        );
    }

    #[test]
    fn debug_hides_keys() {
        let text = format!("{:?}", secret("SCRAM-SHA-1", 9));
        assert!(text.contains("redacted"));
        assert!(!text.contains("[1, 2, 3]"));
    }
}
