//! Invitations (XEP-0401, XEP-0379, XEP-0445): a token that lets someone
//! create an account while registration is closed, become a contact of
//! the inviter without a manual approval, or both.
//!
//! The store never sees a token, only its SHA-256 digest (`token_hash`):
//! tokens are high-entropy random strings, so a plain digest is enough and
//! a leaked database redeems nothing. Each record also has a short public
//! `id`, unrelated to the token, by which administrators list and revoke.
//!
//! Redemption is a single atomic [`InviteStore::claim`]: the use is counted
//! only if the invitation is still valid at that instant, so two clients
//! racing with one single-use token cannot both win.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use waxwing_proto::jid::BareJid;

use crate::StoreError;

/// What an invitation lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InviteKind {
    /// Create an account (`xmpp:[user@]host?register;preauth=…`).
    Register,
    /// Become the creator's mutual contact (`xmpp:creator?roster;preauth=…`),
    /// with an account elsewhere or already here.
    Roster,
    /// Both: a contact invitation with `ibr=y`; an account created with it
    /// becomes the creator's mutual contact.
    RosterAndRegister,
}

impl InviteKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            InviteKind::Register => "register",
            InviteKind::Roster => "roster",
            InviteKind::RosterAndRegister => "roster+register",
        }
    }

    /// Reads the stored spelling back.
    pub fn parse(s: &str) -> Option<InviteKind> {
        match s {
            "register" => Some(InviteKind::Register),
            "roster" => Some(InviteKind::Roster),
            "roster+register" => Some(InviteKind::RosterAndRegister),
            _ => None,
        }
    }

    /// Whether it may create an account.
    pub fn registers(self) -> bool {
        matches!(self, InviteKind::Register | InviteKind::RosterAndRegister)
    }

    /// Whether it pre-approves a subscription to its creator.
    pub fn subscribes(self) -> bool {
        matches!(self, InviteKind::Roster | InviteKind::RosterAndRegister)
    }
}

/// One invitation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// Public handle for listing and revoking (not a secret, not the token).
    pub id: String,
    /// SHA-256 of the token.
    pub token_hash: Vec<u8>,
    /// The host the invitation is for.
    pub host: String,
    /// What it lets its holder do.
    pub kind: InviteKind,
    /// The local account that made it (contact invitations, and account
    /// invitations made by an admin's client); `None` from the admin API/CLI.
    pub creator: Option<BareJid>,
    /// The only localpart an account made with it may take (prepared).
    pub username: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    /// Seconds since the Unix epoch; invalid from this instant on.
    pub expires_at: i64,
    /// Redemptions allowed (1 for an ordinary single-use invitation).
    pub max_uses: u32,
    /// Redemptions so far.
    pub uses: u32,
}

impl Invite {
    /// Whether it can still be redeemed at `now`.
    pub fn is_valid_at(&self, now: i64) -> bool {
        now < self.expires_at && self.uses < self.max_uses
    }
}

/// Invitation records.
#[async_trait]
pub trait InviteStore: Send + Sync {
    /// Stores a new invitation; `AlreadyExists` if its id or token hash is
    /// taken. Durable before returning.
    async fn create(&self, invite: &Invite) -> Result<(), StoreError>;

    /// The invitation whose token hashes to `token_hash`, valid or not.
    async fn by_token(&self, token_hash: &[u8]) -> Result<Option<Invite>, StoreError>;

    /// Counts one use of the invitation whose token hashes to `token_hash`
    /// if, atomically, it exists, has uses left and expires after `now`;
    /// returns it as updated, or `None` (unknown, used up or expired).
    async fn claim(&self, token_hash: &[u8], now: i64) -> Result<Option<Invite>, StoreError>;

    /// Gives back a use counted by [`claim`](Self::claim) whose redemption
    /// then failed (the account could not be created). No-op on a revoked one.
    async fn release(&self, id: &str) -> Result<(), StoreError>;

    /// Deletes an invitation; `NotFound` if there is none with that id.
    async fn revoke(&self, id: &str) -> Result<(), StoreError>;

    /// Invitations, filtered by host and creator, oldest first (then by id).
    async fn list(
        &self,
        host: Option<&str>,
        creator: Option<&BareJid>,
    ) -> Result<Vec<Invite>, StoreError>;

    /// Invitations of `creator` still redeemable at `now`.
    async fn count_pending(&self, creator: &BareJid, now: i64) -> Result<u64, StoreError>;

    /// Whether a redeemable (at `now`) invitation reserves `username` on `host`.
    async fn username_reserved(
        &self,
        host: &str,
        username: &str,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// Deletes invitations that expired before `before`; returns how many.
    async fn purge_expired(&self, before: i64) -> Result<u64, StoreError>;

    /// Deletes every invitation `creator` made (its account is gone).
    async fn remove_creator(&self, creator: &BareJid) -> Result<(), StoreError>;
}

/// In-memory invitations for tests.
#[derive(Default)]
pub(crate) struct MemoryInvites {
    by_id: Mutex<BTreeMap<String, Invite>>,
}

impl MemoryInvites {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Invite>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl InviteStore for MemoryInvites {
    async fn create(&self, invite: &Invite) -> Result<(), StoreError> {
        let mut all = self.lock();
        if all.contains_key(&invite.id) || all.values().any(|i| i.token_hash == invite.token_hash) {
            return Err(StoreError::AlreadyExists);
        }
        all.insert(invite.id.clone(), invite.clone());
        Ok(())
    }

    async fn by_token(&self, token_hash: &[u8]) -> Result<Option<Invite>, StoreError> {
        Ok(self
            .lock()
            .values()
            .find(|i| i.token_hash == token_hash)
            .cloned())
    }

    async fn claim(&self, token_hash: &[u8], now: i64) -> Result<Option<Invite>, StoreError> {
        let mut all = self.lock();
        let Some(invite) = all
            .values_mut()
            .find(|i| i.token_hash == token_hash && i.is_valid_at(now))
        else {
            return Ok(None);
        };
        invite.uses += 1;
        Ok(Some(invite.clone()))
    }

    async fn release(&self, id: &str) -> Result<(), StoreError> {
        if let Some(i) = self.lock().get_mut(id) {
            i.uses = i.uses.saturating_sub(1);
        }
        Ok(())
    }

    async fn revoke(&self, id: &str) -> Result<(), StoreError> {
        match self.lock().remove(id) {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound),
        }
    }

    async fn list(
        &self,
        host: Option<&str>,
        creator: Option<&BareJid>,
    ) -> Result<Vec<Invite>, StoreError> {
        let mut out: Vec<Invite> = self
            .lock()
            .values()
            .filter(|i| host.is_none_or(|h| i.host == h))
            .filter(|i| creator.is_none_or(|c| i.creator.as_ref() == Some(c)))
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn count_pending(&self, creator: &BareJid, now: i64) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .values()
            .filter(|i| i.creator.as_ref() == Some(creator) && i.is_valid_at(now))
            .count() as u64)
    }

    async fn username_reserved(
        &self,
        host: &str,
        username: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(self.lock().values().any(|i| {
            i.host == host && i.username.as_deref() == Some(username) && i.is_valid_at(now)
        }))
    }

    async fn purge_expired(&self, before: i64) -> Result<u64, StoreError> {
        let mut all = self.lock();
        let n = all.len();
        all.retain(|_, i| i.expires_at >= before);
        Ok((n - all.len()) as u64)
    }

    async fn remove_creator(&self, creator: &BareJid) -> Result<(), StoreError> {
        self.lock()
            .retain(|_, i| i.creator.as_ref() != Some(creator));
        Ok(())
    }
}
