//! Account sources: where one host's identities and passwords are checked.
//!
//! The SASL mechanisms themselves are sans-IO in `waxwing_proto::sasl`; the
//! c2s stream asks this module which mechanisms a host offers on a given
//! listener ([`Authenticator::offered`]) and, for hosts whose accounts live
//! elsewhere, whether a PLAIN password is right ([`Authenticator::external_plain`]).
//!
//! - `internal`: the account store's SCRAM secrets (the c2s stream's own path).
//! - `anonymous` (`anonymous.rs`): XEP-0175 guests on a host of their own.
//! - `extauth` (`extauth.rs`): the ejabberd/Prosody program protocol.
//! - `ldap` (`ldap.rs`): bind authentication against a directory, admins by group.
//!
//! Beside the source, a host may take Kerberos tickets (`gssapi.rs`, RFC 4752)
//! and client certificates (`external.rs`, XEP-0178) for its accounts.
//!
//! An externally checked account gets a local record on its first login,
//! so that routing, rosters and offline storage treat it like any other;
//! it holds no secret unless the host opted into `cache_scram`.

pub mod anonymous;
pub mod extauth;
pub mod external;
pub mod gssapi;
pub mod ldap;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use waxwing_proto::jid::BareJid;
use waxwing_proto::sasl::{ChannelBindingTypes, SaslError};
use waxwing_store::StoreError;

use crate::abuse::RegistrationLimit;
use crate::config::{Config, SourceConfig};
use crate::router::Server;

/// The per-host account sources of a running server.
pub struct Authenticator {
    extauth: HashMap<String, Arc<extauth::Pool>>,
    ldap: HashMap<String, Arc<ldap::Directory>>,
    /// Accounts the directory named as admins at their latest login
    /// (`admin_group`); checked beside `admins` from the configuration.
    directory_admins: std::sync::Mutex<HashSet<BareJid>>,
    /// ANONYMOUS logins per address prefix.
    pub(crate) anonymous_limit: RegistrationLimit,
}

impl Authenticator {
    /// Starts the sources that run in the background (extauth workers).
    pub(crate) fn start(config: &Config) -> Self {
        let mut pools = HashMap::new();
        let mut directories = HashMap::new();
        for (host, h) in &config.auth.hosts {
            match &h.source {
                SourceConfig::ExtAuth(e) => {
                    pools.insert(host.clone(), extauth::Pool::start(e));
                }
                SourceConfig::Ldap(l) => {
                    directories.insert(host.clone(), Arc::new(ldap::Directory::new(l)));
                }
                SourceConfig::Internal | SourceConfig::Anonymous => {}
            }
        }
        Authenticator {
            extauth: pools,
            ldap: directories,
            directory_admins: Default::default(),
            anonymous_limit: RegistrationLimit::new(
                config.auth.anonymous_max_per_address,
                config.auth.anonymous_window,
                config.auth_prefixes,
            ),
        }
    }

    /// The `<mechanisms/>` for a stream to `host` that arrived on `local`,
    /// strongest first: the host's list, narrowed by the listener's, by what
    /// the connection allows (`-PLUS` needs channel-binding data, PLAIN
    /// needs TLS since it carries the password itself).
    pub fn offered(
        config: &Config,
        host: Option<&str>,
        local: Option<SocketAddr>,
        tls: bool,
        cb: ChannelBindingTypes,
        client_cert: bool,
    ) -> Vec<&'static str> {
        let Some(h) = host.and_then(|h| config.auth.host(h)) else {
            return Vec::new();
        };
        let listener = local.and_then(|l| config.auth.listener(l));
        h.mechanisms
            .iter()
            .copied()
            .filter(|m| listener.is_none_or(|list| list.contains(m)))
            .filter(|m| !m.ends_with("-PLUS") || cb.any())
            .filter(|m| *m != "PLAIN" || tls)
            // XEP-0178 §3: EXTERNAL only to a client that presented a
            // certificate (which the handshake then verified).
            .filter(|m| *m != "EXTERNAL" || client_cert)
            .collect()
    }

    /// Whether XEP-0484 FAST tokens may be offered, issued and accepted on a
    /// stream to `host` that offers `offered`. A token stands in for the
    /// credentials it was issued after, and is bound to the account's local
    /// SCRAM secrets (`stream::c2s::fast`), so it is only sound where those
    /// secrets are the credentials:
    /// - an external source (extauth, LDAP) checks a password we do not
    ///   hold: a change or a disabled account in the directory would not
    ///   reach the token, which would stay valid until it expires;
    /// - an anonymous guest has no account beyond its session;
    /// - a stream offered only EXTERNAL or GSSAPI proves identity with a
    ///   certificate or a ticket: a token would let the client in without
    ///   them (a revoked certificate, an expired ticket).
    pub fn fast_allowed(config: &Config, host: &str, offered: &[&str]) -> bool {
        config
            .auth
            .host(host)
            .is_some_and(|h| h.source == SourceConfig::Internal)
            && offered
                .iter()
                .any(|m| *m == "PLAIN" || m.starts_with("SCRAM-"))
    }

    /// Checks a PLAIN password with the host's external source. `None` when
    /// the host's accounts are internal (the caller checks the store).
    pub(crate) async fn external_plain(
        &self,
        server: &Server,
        user: &BareJid,
        password: &str,
    ) -> Option<Result<(), SaslError>> {
        let host = user.domain();
        let h = server.config.auth.host(host)?;
        let verdict = match &h.source {
            SourceConfig::Internal => return None,
            // Guests have no passwords: PLAIN is never offered there.
            SourceConfig::Anonymous => return Some(Err(SaslError::NotAuthorized)),
            SourceConfig::ExtAuth(_) => {
                let pool = self.extauth.get(host)?;
                pool.ask(extauth::Request::Auth {
                    user: user.local().unwrap_or_default().to_string(),
                    server: host.to_string(),
                    password: password.to_string(),
                })
                .await
                .map_err(|e| {
                    tracing::warn!(%user, error = %e, "external authentication unavailable");
                    SaslError::TemporaryAuthFailure
                })
            }
            SourceConfig::Ldap(_) => {
                let dir = self.ldap.get(host)?;
                match dir.verify(user.local().unwrap_or_default(), password).await {
                    Ok(Some(v)) => {
                        self.note_admin(user, v.admin);
                        Ok(true)
                    }
                    Ok(None) => Ok(false),
                    Err(e) => {
                        tracing::warn!(%user, error = %e, "LDAP authentication unavailable");
                        Err(SaslError::TemporaryAuthFailure)
                    }
                }
            }
        };
        Some(match verdict {
            Ok(true) => self
                .remember(server, user, password, h.cache_scram)
                .await
                .map_err(|e| {
                    tracing::error!(%user, error = %e, "cannot record external account");
                    SaslError::TemporaryAuthFailure
                }),
            Ok(false) => Err(SaslError::NotAuthorized),
            Err(e) => Err(e),
        })
    }

    /// Gives an externally accepted account its local record (and, when
    /// the host opted in, SCRAM secrets derived from the accepted password).
    async fn remember(
        &self,
        server: &Server,
        user: &BareJid,
        password: &str,
        cache_scram: bool,
    ) -> Result<(), StoreError> {
        let accounts = &server.stores.accounts;
        let secrets = if cache_scram {
            let password = password.to_string();
            let iterations = server.config.scram_iterations;
            tokio::task::spawn_blocking(move || {
                crate::credentials::make_secrets(&password, iterations)
            })
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
        } else {
            Vec::new()
        };
        match accounts.create(user, &secrets).await {
            Ok(()) => Ok(()),
            Err(StoreError::AlreadyExists) if cache_scram => {
                accounts.set_secrets(user, &secrets).await
            }
            Err(StoreError::AlreadyExists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether a host's external source knows `user` (extauth `isuser`,
    /// an LDAP search), for an account that has no local record yet: one
    /// that never logged in can still get messages (stored offline). A yes
    /// creates the local record (without secrets). Errors count as no.
    pub(crate) async fn directory_knows(&self, server: &Server, user: &BareJid) -> bool {
        let host = user.domain();
        let local = user.local().unwrap_or_default();
        if local.is_empty() {
            return false;
        }
        let known = if let Some(pool) = self.extauth.get(host) {
            pool.ask(extauth::Request::IsUser {
                user: local.to_string(),
                server: host.to_string(),
            })
            .await
            .map_err(|e| e.to_string())
        } else if let Some(dir) = self.ldap.get(host) {
            dir.user_exists(local).await.map_err(|e| e.to_string())
        } else {
            return false;
        };
        match known {
            Ok(true) => match server.stores.accounts.create(user, &[]).await {
                Ok(()) | Err(StoreError::AlreadyExists) => true,
                Err(e) => {
                    tracing::error!(%user, error = %e, "cannot record directory account");
                    false
                }
            },
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(%user, error = %e, "directory lookup failed");
                false
            }
        }
    }

    fn note_admin(&self, user: &BareJid, admin: bool) {
        let mut admins = self
            .directory_admins
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if admin {
            admins.insert(user.clone());
        } else {
            admins.remove(user);
        }
    }

    /// Whether `user` is a server admin: listed in `admins`, or a member of
    /// its directory's `admin_group` at its latest login.
    pub fn is_admin(&self, config: &Config, user: &BareJid) -> bool {
        config.admins.contains(user)
            || self
                .directory_admins
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(user)
    }

    /// Whether `user` may log in with PLAIN through the store's secrets:
    /// not when its host checks passwords elsewhere (a cached SCRAM secret
    /// must not outlive a password changed in the directory for PLAIN).
    pub fn is_external(config: &Config, host: &str) -> bool {
        config
            .auth
            .host(host)
            .is_some_and(|h| h.source.is_external())
    }
}
