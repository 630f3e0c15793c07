//! PLAIN (RFC 4616) messages, raw and base64 as they come in `<auth/>`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waxwing_proto::sasl::{decode_payload, parse_plain};

fuzz_target!(|data: &[u8]| {
    let _ = parse_plain(data);
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(raw) = decode_payload(text)
    {
        let _ = parse_plain(&raw);
    }
});
