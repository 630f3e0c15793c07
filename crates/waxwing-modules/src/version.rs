//! XEP-0092: Software Version.
//!
//! Only the server answers: a client's version is its own business, and
//! IQs to full JIDs go to the client anyway.

use std::sync::Arc;

use async_trait::async_trait;
use waxwing_core::hooks::{
    Cx, Iq, IqHandler, IqResult, IqTarget, Module, RegisterError, Registrar,
};
use waxwing_proto::ns;
use waxwing_proto::stanza::{Condition, StanzaError};
use waxwing_proto::xml::Element;

/// The software version module.
pub struct Version;

/// The `<name/>` we answer with.
const NAME: &str = "Waxwing";

impl Module for Version {
    fn name(&self) -> &'static str {
        "version"
    }

    fn register(self: Arc<Self>, reg: &mut Registrar) -> Result<(), RegisterError> {
        reg.server_feature(ns::VERSION);
        reg.iq_get(IqTarget::Server, ns::VERSION, self)?;
        Ok(())
    }
}

#[async_trait]
impl IqHandler for Version {
    async fn handle_iq(&self, _cx: &Cx, iq: Iq) -> IqResult {
        if !iq.payload.is("query", ns::VERSION) {
            return Err(StanzaError::modify(Condition::BadRequest));
        }
        Ok(Some(version_payload()))
    }
}

/// `<query xmlns='jabber:iq:version'><name/><version/></query>`.
///
/// No `<os/>`: XEP-0092 §5 makes it optional, and the kernel and
/// distribution tell any remote entity which exploits to try. The server
/// version is kept because clients and admins use it for bug reports.
fn version_payload() -> Element {
    Element::new("query", ns::VERSION)
        .with_child(Element::new("name", ns::VERSION).with_text(NAME))
        .with_child(Element::new("version", ns::VERSION).with_text(env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_name_and_version_but_no_os() {
        let p = version_payload();
        assert_eq!(
            p.child("name", ns::VERSION).map(Element::text).as_deref(),
            Some("Waxwing")
        );
        assert_eq!(
            p.child("version", ns::VERSION)
                .map(Element::text)
                .as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert!(p.child("os", ns::VERSION).is_none());
        assert_eq!(
            p.to_xml(),
            format!(
                "<query xmlns='jabber:iq:version'><name>Waxwing</name><version>{}</version></query>",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
}
