//! SASL2 (XEP-0388) `<authenticate/>` and `<response/>` elements as the
//! framer delivers them: the mechanism name, the base64 initial response
//! and user agent, then the mechanism's parser on the decoded bytes. The
//! element walk in waxwing-core's `stream/c2s/sasl2.rs` is not reached;
//! this covers the proto functions it calls on peer input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waxwing_proto::ns;
use waxwing_proto::sasl::{
    ChannelBindingData, Mechanism, ScramHash, ScramServer, decode_payload, parse_plain,
};
use waxwing_proto::xml::parse_stanza;

const NS_SASL2: &str = "urn:xmpp:sasl:2";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(el) = parse_stanza(text, ns::CLIENT) else {
        return;
    };
    let _ = el.child("user-agent", NS_SASL2).map(|ua| {
        (
            ua.attr("id"),
            ua.child("software", NS_SASL2).map(|s| s.text()),
        )
    });
    let mech = el.attr("mechanism").and_then(Mechanism::from_name);
    let payload = el
        .child("initial-response", NS_SASL2)
        .map(|r| r.text())
        .unwrap_or_else(|| el.text());
    let Ok(raw) = decode_payload(payload.trim()) else {
        return;
    };
    match mech.map(|m| m.name()) {
        Some("PLAIN") => {
            let _ = parse_plain(&raw);
        }
        Some(name) if name.starts_with("SCRAM-") => {
            let hash = if name.contains("SHA-256") {
                ScramHash::Sha256
            } else {
                ScramHash::Sha1
            };
            let cb = ChannelBindingData {
                tls_exporter: Some(vec![1; 32]),
                tls_server_end_point: None,
            };
            let mut s = ScramServer::new(hash, name.ends_with("-PLUS"), cb, "nonce".into());
            let _ = s.handle_client_first(&raw);
        }
        _ => {}
    }
});
