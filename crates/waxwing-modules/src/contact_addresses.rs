//! XEP-0157: Contact Addresses for XMPP Services.
//!
//! The addresses come from `[contact]` in the configuration and are
//! published as an XEP-0128 extension of the server's disco#info, which
//! `disco.rs` appends. Nothing is published when none are configured.

use waxwing_core::hooks::Cx;
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

/// XEP-0157 `FORM_TYPE`.
pub const SERVERINFO: &str = "http://jabber.org/network/serverinfo";

/// The `<x xmlns='jabber:x:data' type='result'/>` for the server's
/// disco#info, or `None` when no address is configured.
pub fn server_info_form(cx: &Cx) -> Option<Element> {
    form(&cx.config().contact_addresses)
}

fn form(addresses: &[(&'static str, Vec<String>)]) -> Option<Element> {
    if addresses.is_empty() {
        return None;
    }
    let mut x = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "result")
        .with_child(
            Element::new("field", ns::DATA_FORMS)
                .with_attr("var", "FORM_TYPE")
                .with_attr("type", "hidden")
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(SERVERINFO)),
        );
    for (var, uris) in addresses {
        let mut field = Element::new("field", ns::DATA_FORMS).with_attr("var", *var);
        for uri in uris {
            field.push_child(Element::new("value", ns::DATA_FORMS).with_text(uri.as_str()));
        }
        x.push_child(field);
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_configured_publishes_nothing() {
        assert_eq!(form(&[]), None);
    }

    #[test]
    fn form_lists_each_role() {
        let got = form(&[(
            "abuse-addresses",
            vec![
                "mailto:abuse@example.org".into(),
                "xmpp:abuse@example.org".into(),
            ],
        )])
        .unwrap();
        assert_eq!(
            got.to_xml(),
            "<x xmlns='jabber:x:data' type='result'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/network/serverinfo</value></field>\
             <field var='abuse-addresses'><value>mailto:abuse@example.org</value>\
             <value>xmpp:abuse@example.org</value></field></x>"
        );
    }
}
