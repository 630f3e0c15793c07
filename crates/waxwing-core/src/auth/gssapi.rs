//! RFC 4752 GSSAPI (Kerberos V5) for clients: the acceptor side through
//! MIT's libgssapi_krb5 (the `libgssapi` crate, `gssapi` Cargo feature).
//!
//! The library establishes the context from the client's tokens with the
//! host's service key (`[auth.gssapi] keytab`, principal
//! `xmpp/<host>@<REALM>`); this module maps the authenticated principal to a
//! local account (`GssapiHostConfig::localpart_for`) and wraps and unwraps
//! the RFC 4752 security-layer messages (`waxwing_proto::sasl::gssapi`).
//!
//! The GSS library reads the keytab named by `KRB5_KTNAME`, once per
//! process environment: [`keytab_reexec`] tells the binary to re-execute
//! itself with that variable set when it differs from the configuration
//! (changing the environment of a running, threaded process is unsound).
//! The library does blocking file I/O (keytab, replay cache), so each call
//! runs on the blocking pool.

use std::path::Path;

use waxwing_proto::jid::BareJid;
#[cfg(feature = "gssapi")]
use waxwing_proto::sasl::SaslError;

use crate::config::{Config, GssapiHostConfig};
#[cfg(feature = "gssapi")]
use crate::router::Server;

/// The keytab the process must be re-executed with (`KRB5_KTNAME`), when
/// some host offers GSSAPI and the environment names another one.
pub fn keytab_reexec(config: &Config) -> Option<&Path> {
    let keytab = config.auth.gssapi_keytab.as_deref()?;
    let wanted = format!("FILE:{}", keytab.display());
    let current = std::env::var_os("KRB5_KTNAME");
    let same = current
        .as_deref()
        .is_some_and(|c| c == keytab.as_os_str() || c == std::ffi::OsStr::new(&wanted));
    (!same).then_some(keytab)
}

/// Whether the account a principal mapped to may log in: it must exist
/// (a ticket proves who the user is, not that this server knows them), or,
/// on a host whose accounts live in a directory, be known there.
#[cfg(feature = "gssapi")]
pub(crate) async fn account_usable(server: &Server, user: &BareJid) -> Result<(), SaslError> {
    match server.stores.accounts.exists(user).await {
        Ok(true) => Ok(()),
        Ok(false) => {
            let external = server
                .config
                .auth
                .host(user.domain())
                .is_some_and(|h| h.source.is_external());
            if external && server.auth.directory_knows(server, user).await {
                Ok(())
            } else {
                tracing::info!(%user, "GSSAPI: no such account");
                Err(SaslError::NotAuthorized)
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "account lookup failed");
            Err(SaslError::TemporaryAuthFailure)
        }
    }
}

/// The JID a principal logs in as on `host`, if the host's rules map it.
pub fn map_principal(cfg: &GssapiHostConfig, host: &str, principal: &str) -> Option<BareJid> {
    let local = cfg.localpart_for(principal)?;
    BareJid::new(Some(local), host).ok()
}

/// What one step of context establishment produced.
#[derive(Debug)]
pub enum Step {
    /// Send this token as a challenge; the client answers with another.
    Continue(Vec<u8>),
    /// The context is established; a last token (mutual authentication)
    /// may still have to reach the client.
    Done(Option<Vec<u8>>),
}

/// A failure of the GSS library, with its text for the log.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GssError(pub String);

#[cfg(feature = "gssapi")]
pub use imp::Exchange;

#[cfg(feature = "gssapi")]
mod imp {
    use libgssapi::context::{CtxFlags, SecurityContext, ServerCtx};
    use libgssapi::credential::{Cred, CredUsage};
    use libgssapi::error::{Error, MajorFlags};
    use libgssapi::name::Name;
    use libgssapi::oid::{GSS_MECH_KRB5, GSS_NT_KRB5_PRINCIPAL, OidSet};
    use waxwing_proto::sasl::SaslError;

    use super::{GssError, Step};
    use crate::config::GssapiHostConfig;

    /// One GSSAPI exchange on the acceptor side.
    pub struct Exchange {
        ctx: ServerCtx,
    }

    impl std::fmt::Debug for Exchange {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Exchange").finish_non_exhaustive()
        }
    }

    impl Exchange {
        /// Acquires the host's acceptor credentials from the keytab. They
        /// are acquired per exchange, so a replaced keytab (key rotation)
        /// takes effect without a restart. Blocking.
        pub fn start(cfg: &GssapiHostConfig) -> Result<Exchange, GssError> {
            let gss = |what: &str, e: Error| GssError(format!("{what}: {e}"));
            let name = Name::new(
                cfg.service_principal.as_bytes(),
                Some(GSS_NT_KRB5_PRINCIPAL),
            )
            .map_err(|e| gss(&format!("service principal {}", cfg.service_principal), e))?;
            let mut mechs = OidSet::new();
            mechs.add(GSS_MECH_KRB5).map_err(|e| gss("OID set", e))?;
            // Credentials for this principal only: a ticket for another
            // service in the same keytab is not a login to this host.
            let cred =
                Cred::acquire(Some(&name), None, CredUsage::Accept, Some(&mechs)).map_err(|e| {
                    gss(
                        &format!("no key for {} in the keytab", cfg.service_principal),
                        e,
                    )
                })?;
            Ok(Exchange {
                ctx: ServerCtx::new(Some(cred)),
            })
        }

        /// Feeds one client token. Blocking.
        pub fn step(&mut self, token: &[u8]) -> Result<Step, (SaslError, GssError)> {
            match self.ctx.step(token, None) {
                Ok(out) if self.ctx.is_complete() => {
                    // RFC 4752 §3.1: the context must provide integrity
                    // (the security-layer messages are protected by it).
                    let flags = self.ctx.flags().unwrap_or(CtxFlags::empty());
                    if !flags.contains(CtxFlags::GSS_C_INTEG_FLAG) {
                        return Err((
                            SaslError::NotAuthorized,
                            GssError("context without integrity protection".into()),
                        ));
                    }
                    Ok(Step::Done(out.map(|b| b.to_vec())))
                }
                Ok(Some(out)) => Ok(Step::Continue(out.to_vec())),
                Ok(None) => Err((
                    SaslError::MalformedRequest,
                    GssError("incomplete context without a token to send".into()),
                )),
                Err(e) => Err((condition(&e), GssError(e.to_string()))),
            }
        }

        /// The authenticated principal, `name@REALM`.
        pub fn principal(&self) -> Result<String, GssError> {
            let name = self
                .ctx
                .source_name()
                .map_err(|e| GssError(format!("source name: {e}")))?;
            Ok(name.to_string())
        }

        /// `gss_wrap` without confidentiality (RFC 4752 §3.1).
        pub fn wrap(&mut self, msg: &[u8]) -> Result<Vec<u8>, GssError> {
            self.ctx
                .wrap(false, msg)
                .map(|b| b.to_vec())
                .map_err(|e| GssError(format!("wrap: {e}")))
        }

        /// `gss_unwrap`: the client's message, its integrity checked.
        pub fn unwrap(&mut self, msg: &[u8]) -> Result<Vec<u8>, GssError> {
            self.ctx
                .unwrap(msg)
                .map(|b| b.to_vec())
                .map_err(|e| GssError(format!("unwrap: {e}")))
        }
    }

    /// The SASL condition for a failed `gss_accept_sec_context`: a token
    /// that is bad, forged, replayed or expired is the client's failure;
    /// `GSS_S_FAILURE` and missing credentials are this server's
    /// (typically a keytab without the ticket's key version), which a
    /// client cannot fix by retrying differently.
    fn condition(e: &Error) -> SaslError {
        // RFC 2744 §3.9.1: the routine error is a number in bits 16-23,
        // not a set of flags.
        const ROUTINE: u32 = 0xff << 16;
        let routine = e.major.bits() & ROUTINE;
        let is = |f: MajorFlags| routine == f.bits() & ROUTINE;
        if is(MajorFlags::GSS_S_FAILURE) || is(MajorFlags::GSS_S_NO_CRED) {
            SaslError::TemporaryAuthFailure
        } else if is(MajorFlags::GSS_S_DEFECTIVE_TOKEN) || is(MajorFlags::GSS_S_BAD_MECH) {
            SaslError::MalformedRequest
        } else {
            SaslError::NotAuthorized
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cfg() -> GssapiHostConfig {
        GssapiHostConfig {
            realm: "EXAMPLE.ORG".into(),
            service_principal: "xmpp/example.org@EXAMPLE.ORG".into(),
            principals: HashMap::from([
                ("jdoe@PARTNER.NET".to_string(), "john".to_string()),
                ("ops/admin@EXAMPLE.ORG".to_string(), "ops".to_string()),
            ]),
        }
    }

    #[test]
    fn realm_users_map_to_the_host_and_others_only_explicitly() {
        let c = cfg();
        let map = |p: &str| map_principal(&c, "example.org", p).map(|j| j.to_string());
        assert_eq!(
            map("alice@EXAMPLE.ORG").as_deref(),
            Some("alice@example.org")
        );
        // PRECIS: the localpart is case-mapped like any other.
        assert_eq!(
            map("Alice@EXAMPLE.ORG").as_deref(),
            Some("alice@example.org")
        );
        assert_eq!(map("jdoe@PARTNER.NET").as_deref(), Some("john@example.org"));
        assert_eq!(
            map("ops/admin@EXAMPLE.ORG").as_deref(),
            Some("ops@example.org")
        );
        for refused in [
            "alice@OTHER.ORG",
            "alice@example.org",
            "root/admin@EXAMPLE.ORG",
            "xmpp/example.org@EXAMPLE.ORG",
            "@EXAMPLE.ORG",
            "alice",
            "bad\\@x@EXAMPLE.ORG",
        ] {
            assert_eq!(map(refused), None, "{refused}");
        }
    }
}
