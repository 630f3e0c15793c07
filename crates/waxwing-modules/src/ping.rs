//! XEP-0199: XMPP Ping.
//!
//! The server answers pings to itself and, on behalf of an account, pings
//! to the account's bare JID. A ping to a full JID is routed to that
//! resource like any other IQ and never reaches this module.

use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Iq, IqHandler, IqResult, IqTarget, Module, RegisterError, Registrar,
};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;

/// The ping module.
pub struct Ping;

impl Module for Ping {
    fn name(&self) -> &'static str {
        "ping"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.server_feature(ns::PING);
        reg.account_feature(ns::PING);
        reg.iq_get(IqTarget::Server, ns::PING, self.clone())?;
        reg.iq_get(IqTarget::Account, ns::PING, self)?;
        Ok(())
    }
}

#[async_trait]
impl IqHandler for Ping {
    async fn handle_iq(&self, cx: &Cx, iq: Iq) -> IqResult {
        check_payload(&iq.payload)?;
        // For an account, answer only if it exists: a pong from a deleted
        // or never-created account would claim it is there (RFC 6121
        // §8.5.1 wants `service-unavailable` for an IQ to no such user).
        // The sender's own account exists: it just authenticated as it.
        if let Some(to) = iq.to.as_ref().filter(|t| t.local().is_some())
            && to.bare() != iq.from.bare()
        {
            let exists = cx
                .stores()
                .accounts
                .exists(to.bare())
                .await
                .map_err(crate::internal)?;
            if !exists {
                return Err(StanzaError::cancel(Condition::ServiceUnavailable));
            }
        }
        Ok(None)
    }
}

/// XEP-0199 §3: the request is exactly `<ping xmlns='urn:xmpp:ping'/>`.
fn check_payload(payload: &Element) -> Result<(), StanzaError> {
    if payload.is("ping", ns::PING) {
        Ok(())
    } else {
        Err(StanzaError::modify(Condition::BadRequest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ping_only() {
        assert_eq!(check_payload(&Element::new("ping", ns::PING)), Ok(()));
        let err = check_payload(&Element::new("pong", ns::PING)).unwrap_err();
        assert_eq!(err.condition, Condition::BadRequest);
    }
}
