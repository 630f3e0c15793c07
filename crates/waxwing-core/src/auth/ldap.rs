//! LDAP account source: bind authentication (search for the user's DN with
//! a service account, or build it from a template, then bind as the user
//! with the offered password), user lookup, and admins by group membership.
//!
//! One short-lived connection per request, at most `max_connections` at
//! once, each operation under `timeout`: a slow directory delays logins by
//! at most that, and cannot pile up sockets.

use std::sync::Arc;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, dn_escape, ldap_escape};
use tokio::sync::Semaphore;

use crate::config::{LdapConfig, LdapLookup};

/// LDAP result code 49: wrong DN or password (RFC 4511 §A.2).
const INVALID_CREDENTIALS: u32 = 49;

/// Why the directory gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    #[error("directory lookup for {0} matched {1} entries")]
    Ambiguous(String, usize),
}

impl From<ldap3::LdapError> for LdapError {
    fn from(e: ldap3::LdapError) -> Self {
        LdapError::Unavailable(e.to_string())
    }
}

/// What a successful bind learned.
pub struct Verified {
    /// Member of the configured admin group.
    pub admin: bool,
}

pub struct Directory {
    config: LdapConfig,
    connections: Arc<Semaphore>,
}

impl Directory {
    pub fn new(config: &LdapConfig) -> Self {
        Directory {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            config: config.clone(),
        }
    }

    async fn connect(&self) -> Result<(ldap3::Ldap, tokio::sync::OwnedSemaphorePermit), LdapError> {
        let permit = self
            .connections
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LdapError::Unavailable("closed".into()))?;
        let settings = LdapConnSettings::new()
            .set_conn_timeout(self.config.timeout)
            .set_starttls(self.config.starttls);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.config.url).await?;
        ldap3::drive!(conn);
        ldap.with_timeout(self.config.timeout);
        Ok((ldap, permit))
    }

    /// Binds as the service account, if one is configured.
    async fn service_bind(&self, ldap: &mut ldap3::Ldap) -> Result<(), LdapError> {
        if let Some((dn, pw)) = &self.config.bind {
            ldap.simple_bind(dn, pw)
                .await?
                .success()
                .map_err(|e| LdapError::Unavailable(format!("service bind: {e}")))?;
        }
        Ok(())
    }

    /// The user's DN: a search (as the service account) or the template.
    /// `None` when no entry matches.
    async fn find_dn(
        &self,
        ldap: &mut ldap3::Ldap,
        local: &str,
    ) -> Result<Option<String>, LdapError> {
        match &self.config.lookup {
            LdapLookup::Template(t) => Ok(Some(t.replace("%u", &dn_escape(local)))),
            LdapLookup::Search { base, filter } => {
                self.service_bind(ldap).await?;
                let filter = filter.replace("%u", &ldap_escape(local));
                let (entries, _) = ldap
                    .search(base, Scope::Subtree, &filter, vec!["1.1"])
                    .await?
                    .success()?;
                match entries.len() {
                    0 => Ok(None),
                    1 => Ok(Some(
                        SearchEntry::construct(entries.into_iter().next().expect("one")).dn,
                    )),
                    n => Err(LdapError::Ambiguous(local.to_string(), n)),
                }
            }
        }
    }

    /// Checks `password` by binding as the user; `Ok(None)` is a wrong
    /// password or an unknown user (indistinguishable to the client).
    pub async fn verify(&self, local: &str, password: &str) -> Result<Option<Verified>, LdapError> {
        // An empty password is an *unauthenticated* bind (RFC 4513 §5.1.2),
        // which many directories accept for any DN.
        if password.is_empty() {
            return Ok(None);
        }
        let (mut ldap, _permit) = self.connect().await?;
        let Some(dn) = self.find_dn(&mut ldap, local).await? else {
            let _ = ldap.unbind().await;
            return Ok(None);
        };
        let bound = ldap.simple_bind(&dn, password).await?;
        if bound.rc == INVALID_CREDENTIALS {
            let _ = ldap.unbind().await;
            return Ok(None);
        }
        bound
            .success()
            .map_err(|e| LdapError::Unavailable(format!("user bind: {e}")))?;
        let admin = match &self.config.admin_group {
            Some(group) => {
                // The service account reads groups; a user may not.
                self.service_bind(&mut ldap).await?;
                self.is_member(&mut ldap, group, &dn).await?
            }
            None => false,
        };
        let _ = ldap.unbind().await;
        Ok(Some(Verified { admin }))
    }

    async fn is_member(
        &self,
        ldap: &mut ldap3::Ldap,
        group: &str,
        dn: &str,
    ) -> Result<bool, LdapError> {
        let filter = format!(
            "({}={})",
            self.config.group_member_attribute,
            ldap_escape(dn)
        );
        let (entries, _) = ldap
            .search(group, Scope::Base, &filter, vec!["1.1"])
            .await?
            .success()?;
        Ok(!entries.is_empty())
    }

    /// Whether the directory knows the user (search mode; a template
    /// cannot tell without a bind, so it answers from a base-scope read).
    pub async fn user_exists(&self, local: &str) -> Result<bool, LdapError> {
        let (mut ldap, _permit) = self.connect().await?;
        let found = match &self.config.lookup {
            LdapLookup::Search { .. } => self.find_dn(&mut ldap, local).await?.is_some(),
            LdapLookup::Template(t) => {
                self.service_bind(&mut ldap).await?;
                let dn = t.replace("%u", &dn_escape(local));
                match ldap
                    .search(&dn, Scope::Base, "(objectClass=*)", vec!["1.1"])
                    .await
                {
                    Ok(r) => r.success().map(|(e, _)| !e.is_empty()).unwrap_or(false),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let _ = ldap.unbind().await;
        Ok(found)
    }
}
