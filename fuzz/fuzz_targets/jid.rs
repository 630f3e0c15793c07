//! JID preparation (RFC 7622: PRECIS, UTS-46): never panics, and a
//! prepared JID is a fixed point (preparing its string form again gives
//! the same JID).
#![no_main]

use libfuzzer_sys::fuzz_target;
use waxwing_proto::jid::Jid;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(j) = Jid::parse(s) {
        let again = Jid::parse(&j.to_string()).expect("a prepared JID parses again");
        assert_eq!(again, j, "preparation is idempotent");
    }
});
