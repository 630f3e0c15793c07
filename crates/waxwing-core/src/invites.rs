//! Invitations: the token service behind XEP-0401 (ad-hoc commands that
//! make invitations), XEP-0445 (pre-authenticated in-band registration),
//! XEP-0379 (pre-authenticated roster subscription), the landing page and
//! the admin API.
//!
//! A token is 160 random bits, hex-encoded (alphanumeric, as XEP-0379
//! asks). Only its SHA-256 is stored (`waxwing_store::invites`); every
//! check looks the digest up, so nothing compares a token byte by byte.
//! An invitation expires (`[invites] expiry_secs` by default), is used up
//! after `max_uses` redemptions (one unless an administrator chose more),
//! and is gone when revoked. A use is counted by one atomic store call,
//! only once the account can be created; a failed creation gives it back.
//!
//! Creating an account with a token is allowed whatever `[registration]
//! open` says: the token is the permission. When the invitation came from a
//! user (a contact invitation with `ibr=y`, or an admin's account
//! invitation with a roster subscription), [`Event::InviteRedeemed`] tells
//! the modules to make the two mutual contacts.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use waxwing_proto::jid::BareJid;
use waxwing_store::{Invite, InviteKind, StoreError};

use crate::config::SourceConfig;
use crate::hooks::Event;
use crate::router::Server;

/// XEP-0379/0445 `<preauth/>` namespace.
pub const NS_PARS: &str = "urn:xmpp:pars:0";
/// XEP-0445 stream feature namespace.
pub const NS_IBR_TOKEN: &str = "urn:xmpp:ibr-token:0";
/// The stream feature of earlier XEP-0401 versions, which Prosody and
/// clients that predate XEP-0445 still look for.
pub const NS_INVITE_LEGACY: &str = "urn:xmpp:invite";

/// Expired invitations are kept this long before they are purged, so that
/// the landing page can still say "expired" rather than "unknown" for a
/// while, and a stream that checked a token just before expiry can finish
/// registering (XEP-0445 §4: expiry is checked once, at `<preauth/>`).
const PURGE_AFTER: Duration = Duration::from_secs(7 * 86_400);

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.trim().as_bytes()).to_vec()
}

fn new_token() -> String {
    hex::encode(rand::random::<[u8; 20]>())
}

fn new_id() -> String {
    hex::encode(rand::random::<[u8; 6]>())
}

/// A token a client presented with `<preauth/>` before authenticating and
/// the server accepted at `checked_at` (XEP-0445): the registration on the
/// same stream is judged as of that instant.
#[derive(Clone)]
pub struct PreAuth {
    pub token: String,
    pub checked_at: i64,
}

impl fmt::Debug for PreAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreAuth")
            .field("token", &"<redacted>")
            .field("checked_at", &self.checked_at)
            .finish()
    }
}

/// Why a token does not work (the landing page tells these apart; the
/// XMPP errors do not, as XEP-0445 §4 words them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such token (never made, revoked, or purged long after expiry).
    Unknown,
    Expired,
    UsedUp,
    /// `[invites] enabled = false`.
    Disabled,
    /// Valid, but not for this (registering without `ibr=y`, another
    /// host, a roster token of someone else).
    WrongKind,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Unknown => "the invitation is invalid or has been revoked",
            Refusal::Expired => "the invitation has expired",
            Refusal::UsedUp => "the invitation has already been used",
            Refusal::Disabled => "invitations are disabled on this server",
            Refusal::WrongKind => "the invitation does not allow this",
        })
    }
}

/// What a new invitation should be.
#[derive(Debug, Clone)]
pub struct NewInvite {
    pub host: String,
    pub kind: InviteKind,
    /// The inviting account (required for roster kinds).
    pub creator: Option<BareJid>,
    /// The localpart the account must take.
    pub username: Option<String>,
    /// Validity; `[invites] expiry_secs` when `None`.
    pub valid_for: Option<Duration>,
    pub max_uses: u32,
}

/// A new invitation and its token (shown once; only its hash is kept).
#[derive(Clone)]
pub struct Created {
    pub invite: Invite,
    pub token: String,
    /// The `xmpp:` URI (XEP-0401 §5, XEP-0379 §3.2).
    pub uri: String,
    /// The HTTPS landing page, when there is an HTTP listener.
    pub landing_url: Option<String>,
}

/// Why an invitation could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("invitations are disabled on this server")]
    Disabled,
    #[error("{0} is not a host of this server whose accounts it keeps")]
    BadHost(String),
    #[error("{0:?} is not a valid username")]
    BadUsername(String),
    #[error("the username {0:?} is taken or reserved by another invitation")]
    UsernameTaken(String),
    #[error("a contact invitation needs the inviting account")]
    NoCreator,
    #[error("too many pending invitations (at most {0})")]
    TooMany(u32),
    #[error("max_uses must be between 1 and 1000")]
    BadUses,
    #[error("storage failed")]
    Store(StoreError),
}

impl From<StoreError> for CreateError {
    fn from(e: StoreError) -> Self {
        CreateError::Store(e)
    }
}

/// Why an account could not be created with a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedeemError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("this invitation is for the username {0:?}")]
    WrongUsername(String),
    #[error("invalid username")]
    BadUsername,
    #[error("this username is taken")]
    Taken,
    #[error("the password must have at least {min} characters")]
    WeakPassword { min: usize },
    #[error("the password contains characters that are not allowed")]
    BadPassword,
    #[error("accounts of this host are not managed by this server")]
    NotInternal,
    #[error("too many registrations from your address; try again later")]
    Throttled,
    #[error("storage failed")]
    Store(StoreError),
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for RedeemError {
    fn from(e: StoreError) -> Self {
        RedeemError::Store(e)
    }
}

/// The invitation service of a running server (cheap to make: it holds
/// the server only).
#[derive(Clone)]
pub struct Invites {
    server: Arc<Server>,
}

impl Invites {
    pub fn new(server: Arc<Server>) -> Self {
        Invites { server }
    }

    /// Whether `host` keeps its accounts in our store (only those can be
    /// created by invitation).
    pub fn host_has_internal_accounts(&self, host: &str) -> bool {
        self.server.config.is_local_host(host)
            && self
                .server
                .config
                .auth
                .host(host)
                .is_some_and(|h| h.source == SourceConfig::Internal)
    }

    /// Takes a slot of the per-address registration limit (`[registration]
    /// max_per_address`) for a registration that does not come over a
    /// stream (the landing page's form). Give it back with
    /// [`release_registration`](Self::release_registration) if no account
    /// was made.
    pub fn reserve_registration(&self, ip: std::net::IpAddr) -> bool {
        self.server.registrations.try_reserve(ip)
    }

    /// Gives back a slot of [`reserve_registration`](Self::reserve_registration).
    pub fn release_registration(&self, ip: std::net::IpAddr) {
        self.server.registrations.release(ip);
    }

    /// Makes an invitation.
    pub async fn create(&self, new: NewInvite) -> Result<Created, CreateError> {
        let config = &self.server.config.invites;
        if !config.enabled {
            return Err(CreateError::Disabled);
        }
        if !(1..=1000).contains(&new.max_uses) {
            return Err(CreateError::BadUses);
        }
        let host_ok = if new.kind.registers() {
            self.host_has_internal_accounts(&new.host)
        } else {
            self.server.config.is_local_host(&new.host)
        };
        if !host_ok {
            return Err(CreateError::BadHost(new.host));
        }
        if new.kind.subscribes() && new.creator.is_none() {
            return Err(CreateError::NoCreator);
        }
        let stores = &self.server.stores;
        let now = unix_now();
        let username = match new.username.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(u) => {
                let jid = BareJid::new(Some(u), &new.host)
                    .map_err(|_| CreateError::BadUsername(u.to_string()))?;
                let local = jid.local().unwrap_or_default().to_string();
                if stores.accounts.exists(&jid).await?
                    || stores
                        .invites
                        .username_reserved(&new.host, &local, now)
                        .await?
                {
                    return Err(CreateError::UsernameTaken(local));
                }
                Some(local)
            }
        };
        if let Some(creator) = &new.creator {
            let pending = stores.invites.count_pending(creator, now).await?;
            if pending >= u64::from(config.max_pending_per_user) {
                return Err(CreateError::TooMany(config.max_pending_per_user));
            }
        }
        // Opportunistic cleanup: bounded by what expired since the last one.
        let horizon = now.saturating_sub(PURGE_AFTER.as_secs() as i64);
        if let Err(e) = stores.invites.purge_expired(horizon).await {
            tracing::warn!(error = %e, "purging expired invitations failed");
        }
        let valid_for = new.valid_for.unwrap_or(config.expiry);
        let token = new_token();
        let invite = Invite {
            id: new_id(),
            token_hash: hash_token(&token),
            host: new.host,
            kind: new.kind,
            creator: new.creator,
            username,
            created_at: now,
            expires_at: now.saturating_add(i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX)),
            max_uses: new.max_uses,
            uses: 0,
        };
        stores.invites.create(&invite).await?;
        tracing::info!(
            id = %invite.id,
            kind = invite.kind.as_str(),
            host = %invite.host,
            creator = ?invite.creator.as_ref().map(ToString::to_string),
            "invitation created"
        );
        let uri = uri(&invite, &token);
        let landing_url = self.landing_url(&invite.host, &token);
        Ok(Created {
            invite,
            token,
            uri,
            landing_url,
        })
    }

    /// The landing page of `token` on `host`'s HTTP base URL.
    pub fn landing_url(&self, host: &str, token: &str) -> Option<String> {
        self.server
            .http
            .base_url(&self.server.config, host)
            .map(|base| format!("{}/invite/{token}", base.trim_end_matches('/')))
    }

    /// The invitation `token` names, if it can be redeemed at `at`.
    pub async fn check(&self, token: &str, at: i64) -> Result<Invite, CheckError> {
        if !self.server.config.invites.enabled {
            return Err(CheckError::Refused(Refusal::Disabled));
        }
        let token = token.trim();
        if token.is_empty() || token.len() > 256 {
            return Err(CheckError::Refused(Refusal::Unknown));
        }
        let invite = self
            .server
            .stores
            .invites
            .by_token(&hash_token(token))
            .await
            .map_err(CheckError::Store)?
            .ok_or(CheckError::Refused(Refusal::Unknown))?;
        if invite.uses >= invite.max_uses {
            return Err(CheckError::Refused(Refusal::UsedUp));
        }
        if at >= invite.expires_at {
            return Err(CheckError::Refused(Refusal::Expired));
        }
        Ok(invite)
    }

    /// The invitation `token` names if it lets someone create an account
    /// on `host` now (XEP-0445 `<preauth/>`, the landing page's form).
    pub async fn check_registration(&self, host: &str, token: &str) -> Result<PreAuth, CheckError> {
        let now = unix_now();
        let invite = self.check(token, now).await?;
        if !invite.kind.registers() || invite.host != host {
            return Err(CheckError::Refused(Refusal::WrongKind));
        }
        Ok(PreAuth {
            token: token.trim().to_string(),
            checked_at: now,
        })
    }

    /// Creates `username@host` with `password`, redeeming the invitation
    /// `preauth` names. The caller has applied its own rate limits.
    pub async fn register_account(
        &self,
        host: &str,
        preauth: &PreAuth,
        username: &str,
        password: String,
    ) -> Result<BareJid, RedeemError> {
        let invite = match self.check(&preauth.token, preauth.checked_at).await {
            Ok(i) => i,
            Err(CheckError::Refused(r)) => return Err(RedeemError::Refused(r)),
            Err(CheckError::Store(e)) => return Err(e.into()),
        };
        if !invite.kind.registers() || invite.host != host {
            return Err(RedeemError::Refused(Refusal::WrongKind));
        }
        if !self.host_has_internal_accounts(host) {
            return Err(RedeemError::NotInternal);
        }
        let user = BareJid::new(Some(username.trim()), host)
            .ok()
            .filter(|j| j.local().is_some_and(|l| !l.is_empty()))
            .ok_or(RedeemError::BadUsername)?;
        let local = user.local().unwrap_or_default().to_string();
        if let Some(fixed) = &invite.username
            && *fixed != local
        {
            return Err(RedeemError::WrongUsername(fixed.clone()));
        }
        let stores = &self.server.stores;
        // Cheap refusals before a PBKDF2 derivation.
        if stores.accounts.exists(&user).await? {
            return Err(RedeemError::Taken);
        }
        if invite.username.is_none()
            && stores
                .invites
                .username_reserved(host, &local, unix_now())
                .await?
        {
            return Err(RedeemError::Taken);
        }
        let min = self.server.config.min_password_length.max(1);
        if password.chars().count() < min {
            return Err(RedeemError::WeakPassword { min });
        }
        let iterations = self.server.config.scram_iterations;
        let secrets = tokio::task::spawn_blocking(move || {
            crate::credentials::make_secrets(&password, iterations)
        })
        .await
        .map_err(|e| RedeemError::Internal(e.to_string()))?
        .map_err(|e| match e {
            waxwing_proto::sasl::SaslError::InvalidPassword => RedeemError::BadPassword,
            e => RedeemError::Internal(e.to_string()),
        })?;
        // The use is counted first, atomically; if the account then cannot
        // be made, it is given back.
        let Some(claimed) = stores
            .invites
            .claim(&invite.token_hash, preauth.checked_at)
            .await?
        else {
            return Err(RedeemError::Refused(Refusal::UsedUp));
        };
        if let Err(e) = stores.accounts.create(&user, &secrets).await {
            if let Err(e) = stores.invites.release(&claimed.id).await {
                tracing::error!(error = %e, id = %claimed.id, "giving back an invitation use failed");
            }
            return Err(match e {
                StoreError::AlreadyExists => RedeemError::Taken,
                e => e.into(),
            });
        }
        tracing::info!(%user, invite = %claimed.id, "account created with an invitation");
        if let Some(inviter) = claimed
            .creator
            .clone()
            .filter(|_| claimed.kind.subscribes())
        {
            self.server
                .clone()
                .emit(
                    None,
                    Event::InviteRedeemed {
                        invitee: user.clone(),
                        inviter,
                    },
                )
                .await;
        }
        Ok(user)
    }

    /// XEP-0379: whether `token`, presented by `contact` in a subscription
    /// request to `owner`, is one of `owner`'s contact invitations; if so,
    /// one use of it is counted and the request is to be approved.
    pub async fn redeem_subscription(
        &self,
        owner: &BareJid,
        contact: &BareJid,
        token: &str,
    ) -> bool {
        let now = unix_now();
        let invite = match self.check(token, now).await {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(%owner, %contact, error = ?e, "roster pre-authentication refused");
                return false;
            }
        };
        // XEP-0379 §5.2: a token is good only for the one who issued it.
        if !invite.kind.subscribes() || invite.creator.as_ref() != Some(owner) {
            return false;
        }
        match self
            .server
            .stores
            .invites
            .claim(&invite.token_hash, now)
            .await
        {
            Ok(Some(_)) => {
                tracing::info!(%owner, %contact, invite = %invite.id, "subscription pre-authenticated by invitation");
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::error!(error = %e, "claiming an invitation failed");
                false
            }
        }
    }

    /// Revokes the invitation `id`; with `creator`, only one of theirs.
    pub async fn revoke(&self, id: &str, creator: Option<&BareJid>) -> Result<(), StoreError> {
        if let Some(c) = creator {
            let mine = self.server.stores.invites.list(None, Some(c)).await?;
            if !mine.iter().any(|i| i.id == id) {
                return Err(StoreError::NotFound);
            }
        }
        self.server.stores.invites.revoke(id).await?;
        tracing::info!(%id, "invitation revoked");
        Ok(())
    }
}

/// Why [`Invites::check`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    Refused(Refusal),
    Store(StoreError),
}

/// The `xmpp:` URI of an invitation: a contact invitation names its
/// creator (`?roster`, with `ibr=y` when it may create an account); an
/// account invitation names the host or the fixed account (`?register`),
/// also when the account is to become its creator's contact.
pub fn uri(invite: &Invite, token: &str) -> String {
    match (invite.kind, &invite.creator, &invite.username) {
        (InviteKind::Roster, Some(c), _) => format!("xmpp:{c}?roster;preauth={token}"),
        (InviteKind::RosterAndRegister, Some(c), None) => {
            format!("xmpp:{c}?roster;preauth={token};ibr=y")
        }
        _ => match &invite.username {
            Some(u) => format!("xmpp:{u}@{}?register;preauth={token}", invite.host),
            None => format!("xmpp:{}?register;preauth={token}", invite.host),
        },
    }
}

/// An invitation as the admin API and the CLI show it (never the token).
pub fn describe(invite: &Invite) -> serde_json::Value {
    serde_json::json!({
        "id": invite.id,
        "host": invite.host,
        "kind": invite.kind.as_str(),
        "creator": invite.creator.as_ref().map(ToString::to_string),
        "username": invite.username,
        "created": crate::time::xep0082(UNIX_EPOCH + Duration::from_secs(invite.created_at.max(0) as u64)),
        "expires": crate::time::xep0082(UNIX_EPOCH + Duration::from_secs(invite.expires_at.max(0) as u64)),
        "max_uses": invite.max_uses,
        "uses": invite.uses,
        "valid": invite.is_valid_at(unix_now()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(kind: InviteKind, creator: Option<&str>, username: Option<&str>) -> Invite {
        Invite {
            id: "x".into(),
            token_hash: vec![0; 32],
            host: "example.org".into(),
            kind,
            creator: creator.map(|c| BareJid::parse(c).unwrap()),
            username: username.map(Into::into),
            created_at: 0,
            expires_at: 1,
            max_uses: 1,
            uses: 0,
        }
    }

    #[test]
    fn uris_follow_xep_0401_and_0379() {
        let t = "abc123";
        assert_eq!(
            uri(&invite(InviteKind::Register, None, None), t),
            "xmpp:example.org?register;preauth=abc123"
        );
        assert_eq!(
            uri(&invite(InviteKind::Register, None, Some("juliet")), t),
            "xmpp:juliet@example.org?register;preauth=abc123"
        );
        assert_eq!(
            uri(
                &invite(InviteKind::Roster, Some("romeo@example.org"), None),
                t
            ),
            "xmpp:romeo@example.org?roster;preauth=abc123"
        );
        assert_eq!(
            uri(
                &invite(
                    InviteKind::RosterAndRegister,
                    Some("romeo@example.org"),
                    None
                ),
                t
            ),
            "xmpp:romeo@example.org?roster;preauth=abc123;ibr=y"
        );
        // An account invitation for a fixed name that also subscribes:
        // still a registration URI.
        assert_eq!(
            uri(
                &invite(
                    InviteKind::RosterAndRegister,
                    Some("romeo@example.org"),
                    Some("juliet")
                ),
                t
            ),
            "xmpp:juliet@example.org?register;preauth=abc123"
        );
    }

    #[test]
    fn tokens_are_long_random_and_alphanumeric() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 40, "160 bits in hex");
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(hash_token(&a).len(), 32);
        assert_ne!(hash_token(&a), hash_token(&b));
        assert_eq!(hash_token(&a), hash_token(&format!(" {a}\n")));
    }

    #[test]
    fn preauth_debug_hides_the_token() {
        let p = PreAuth {
            token: "sekrit".into(),
            checked_at: 5,
        };
        assert!(!format!("{p:?}").contains("sekrit"));
    }
}
