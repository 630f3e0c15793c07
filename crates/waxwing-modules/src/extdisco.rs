//! XEP-0215: External Service Discovery.
//!
//! Local accounts ask the server (`<services xmlns='urn:xmpp:extdisco:2'/>`)
//! for the STUN and TURN servers configured in `[external_services]`, and
//! get short-lived TURN credentials with them (the TURN REST scheme, see
//! `waxwing_proto::payload::extdisco`), so that clients such as Conversations
//! and Dino can place calls through a TURN server that shares the secret.
//! `<credentials/>` asks for fresh ones for one service (XEP-0215 §3.3).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use waxwing_core::config::ext::ExternalService;
use waxwing_core::hooks::{
    Cx, Iq, IqHandler, IqResult, IqTarget, Module, RegisterError, Registrar,
};
use waxwing_proto::datetime;
use waxwing_proto::ns;
use waxwing_proto::payload::extdisco::{Service, turn_password, turn_username};
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;

/// The external service discovery module.
pub struct ExtDisco;

impl Module for ExtDisco {
    fn name(&self) -> &'static str {
        "extdisco"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.server_feature(ns::EXTDISCO);
        reg.iq_get(IqTarget::Server, ns::EXTDISCO, self)?;
        Ok(())
    }
}

#[async_trait]
impl IqHandler for ExtDisco {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult {
        // Credentials are for our own users only: a remote entity (or an
        // unauthenticated stream) gets nothing, not even the host names.
        let user = match iq.from.local() {
            Some(_) if iq.authenticated && cx.is_local_host(iq.from.domain()) => {
                iq.from.bare().to_string()
            }
            _ => return Err(StanzaError::auth(Condition::Forbidden)),
        };
        let conf = &cx.config().external_services;
        let issue =
            |s: &ExternalService| service(s, conf.secret.as_deref(), &user, conf.credential_ttl);
        match iq.payload.name.as_str() {
            "services" => {
                let wanted = iq.payload.attr("type");
                let mut out = Element::new("services", ns::EXTDISCO);
                if let Some(t) = wanted {
                    out.set_attr("type", t);
                }
                for s in &conf.services {
                    if wanted.is_none_or(|t| t == s.kind) {
                        out.push_child(issue(s).to_element());
                    }
                }
                Ok(Some(out))
            }
            "credentials" => {
                let asked = iq
                    .payload
                    .child("service", ns::EXTDISCO)
                    .ok_or_else(|| StanzaError::modify(Condition::BadRequest))?;
                let (host, kind) = match (asked.attr("host"), asked.attr("type")) {
                    (Some(h), Some(t)) => (h, t),
                    _ => return Err(StanzaError::modify(Condition::BadRequest)),
                };
                let port = asked.attr("port").and_then(|p| p.parse::<u16>().ok());
                let found = conf
                    .services
                    .iter()
                    .find(|s| s.host == host && s.kind == kind && port.is_none_or(|p| p == s.port))
                    .ok_or_else(|| StanzaError::cancel(Condition::ItemNotFound))?;
                Ok(Some(
                    Element::new("credentials", ns::EXTDISCO).with_child(issue(found).to_element()),
                ))
            }
            _ => Err(StanzaError::modify(Condition::BadRequest)),
        }
    }
}

/// One service as `user` sees it: TURN services carry credentials valid
/// for `ttl` when the TURN REST secret is configured.
fn service(s: &ExternalService, secret: Option<&str>, user: &str, ttl: Duration) -> Service {
    let credentials = match secret {
        Some(secret) if s.is_turn() => {
            let expires = SystemTime::now() + ttl;
            let unix = expires
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let username = turn_username(user, unix);
            let password = turn_password(secret.as_bytes(), &username);
            Some((username, password, datetime::format(expires)))
        }
        _ => None,
    };
    Service {
        kind: s.kind.clone(),
        host: s.host.clone(),
        port: s.port,
        transport: s.transport.clone(),
        name: s.name.clone(),
        restricted: s.is_turn(),
        credentials,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use waxwing_proto::payload::extdisco::turn_expiry;

    #[test]
    fn turn_services_get_expiring_credentials_and_stun_none() {
        let turn = ExternalService {
            kind: "turn".into(),
            host: "turn.example.org".into(),
            port: 3478,
            transport: Some("udp".into()),
            name: None,
        };
        let s = service(
            &turn,
            Some("sekrit"),
            "alice@example.org",
            Duration::from_secs(600),
        );
        let (user, pass, expires) = s.credentials.clone().unwrap();
        assert!(user.ends_with(":alice@example.org"), "{user}");
        assert_eq!(pass, turn_password(b"sekrit", &user));
        let exp = turn_expiry(&user).unwrap();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!((now + 590..=now + 610).contains(&exp), "{exp} vs {now}");
        assert!(datetime::parse(&expires).is_some());
        assert!(s.restricted);
        let stun = ExternalService {
            kind: "stun".into(),
            ..turn
        };
        let s = service(
            &stun,
            Some("sekrit"),
            "alice@example.org",
            Duration::from_secs(600),
        );
        assert!(s.credentials.is_none() && !s.restricted);
    }
}
