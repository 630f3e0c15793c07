//! XEP-0202: Entity Time.
//!
//! The server always reports UTC (`<tzo>+00:00</tzo>`): `waxwing_core::time`
//! formats UTC only, with no time-zone database, and the host's local zone
//! would tell every remote entity where the machine is for no benefit to
//! anyone. XEP-0202 only requires `tzo` and `utc` to be consistent.

use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Iq, IqHandler, IqResult, IqTarget, Module, RegisterError, Registrar,
};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;

/// The entity time module.
pub struct Time;

impl Module for Time {
    fn name(&self) -> &'static str {
        "time"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.server_feature(ns::TIME);
        reg.iq_get(IqTarget::Server, ns::TIME, self)?;
        Ok(())
    }
}

#[async_trait]
impl IqHandler for Time {
    async fn handle_iq(&self, _cx: &Cx, iq: Iq) -> IqResult {
        if !iq.payload.is("time", ns::TIME) {
            return Err(StanzaError::modify(Condition::BadRequest));
        }
        Ok(Some(time_payload(&waxwing_core::time::now())))
    }
}

/// `<time xmlns='urn:xmpp:time'><tzo>+00:00</tzo><utc>{utc}</utc></time>`,
/// `utc` being an XEP-0082 date-time ending in `Z`.
fn time_payload(utc: &str) -> Element {
    Element::new("time", ns::TIME)
        .with_child(Element::new("tzo", ns::TIME).with_text("+00:00"))
        .with_child(Element::new("utc", ns::TIME).with_text(utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_shape() {
        assert_eq!(
            time_payload("2026-11-18T11:06:40.123Z").to_xml(),
            "<time xmlns='urn:xmpp:time'><tzo>+00:00</tzo><utc>2026-11-18T11:06:40.123Z</utc></time>"
        );
    }

    #[test]
    fn now_is_utc() {
        let p = time_payload(&waxwing_core::time::now());
        let utc = p
            .child("utc", ns::TIME)
            .map(Element::text)
            .unwrap_or_default();
        assert!(utc.ends_with('Z'), "{utc}");
    }
}
