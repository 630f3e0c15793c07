//! XEP-0175: guests log in with SASL ANONYMOUS on a host of their own
//! (`source = "anonymous"`), for web chat and support pages.
//!
//! Each login gets a fresh random account. It exists for the routing and
//! module machinery while the guest is online, and is deleted, with
//! everything modules stored for it (roster, MAM, PEP, private XML …),
//! when its last session ends; accounts left by a crash are deleted at the
//! next start. Logins are limited per address prefix, since each one costs
//! an account creation.

use std::net::IpAddr;
use std::sync::Arc;

use waxwing_proto::jid::BareJid;
use waxwing_proto::sasl::{self, SaslError};
use waxwing_store::StoreError;

use crate::config::SourceConfig;
use crate::router::Server;

/// Creates the guest account for an ANONYMOUS exchange.
pub(crate) async fn login(
    server: &Server,
    host: &str,
    ip: IpAddr,
    message: &[u8],
) -> Result<BareJid, SaslError> {
    let trace = sasl::parse_anonymous(message)?;
    if !server.config.auth.is_anonymous(host) {
        return Err(SaslError::InvalidMechanism);
    }
    if !server.auth.anonymous_limit.try_reserve(ip) {
        tracing::info!(%ip, "anonymous login refused: too many from this address");
        return Err(SaslError::TemporaryAuthFailure);
    }
    // 80 random bits: guessing a guest's address to reach it is hopeless,
    // and a collision (retried) practically never happens.
    for _ in 0..3 {
        let local = hex::encode(rand::random::<[u8; 10]>());
        let user = BareJid::new(Some(&local), host).map_err(|_| SaslError::TemporaryAuthFailure)?;
        match server.stores.accounts.create(&user, &[]).await {
            Ok(()) => {
                tracing::info!(%user, trace = %trace.escape_default(), "anonymous login");
                return Ok(user);
            }
            Err(StoreError::AlreadyExists) => continue,
            Err(e) => {
                tracing::error!(error = %e, "cannot create anonymous account");
                return Err(SaslError::TemporaryAuthFailure);
            }
        }
    }
    Err(SaslError::TemporaryAuthFailure)
}

/// Called when a session has ended for good (not while it waits for
/// resumption): a guest with no other session left is deleted.
pub(crate) async fn session_closed(server: &Arc<Server>, user: &BareJid) {
    if !server.config.auth.is_anonymous(user.domain())
        || !server.sessions.resources(user).is_empty()
    {
        return;
    }
    match server.clone().delete_account(user).await {
        Ok(()) | Err(StoreError::NotFound) => tracing::debug!(%user, "anonymous account removed"),
        Err(e) => tracing::error!(%user, error = %e, "cannot remove anonymous account"),
    }
    forget_version(server, user).await;
}

/// Deletes the guest accounts a previous run left behind (a crash, a kill).
pub(crate) async fn purge(server: &Server) {
    for (host, h) in &server.config.auth.hosts {
        if h.source != SourceConfig::Anonymous {
            continue;
        }
        let users = match server.stores.accounts.list(Some(host)).await {
            Ok(users) => users,
            Err(e) => {
                tracing::error!(%host, error = %e, "cannot list anonymous accounts");
                continue;
            }
        };
        for user in users {
            if let Err(e) = server.stores.remove_account(&user).await {
                tracing::error!(%user, error = %e, "cannot remove stale anonymous account");
            }
            forget_version(server, &user).await;
        }
    }
}

/// A guest's address never comes back, so even the roster version that
/// account deletion keeps for reused addresses goes.
async fn forget_version(server: &Server, user: &BareJid) {
    if let Err(e) = server.stores.roster.forget_version(user).await {
        tracing::error!(%user, error = %e, "cannot remove an anonymous roster version");
    }
}
