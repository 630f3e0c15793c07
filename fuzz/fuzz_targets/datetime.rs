//! XEP-0082 DateTime parsing: never panics, and whatever parses formats
//! back to a string that parses to the same instant (to the millisecond,
//! the formatter's precision).
#![no_main]

use std::time::UNIX_EPOCH;

use libfuzzer_sys::fuzz_target;
use waxwing_proto::datetime::{format, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Some(t) = parse(s) else {
        return;
    };
    let back = parse(&format(t)).expect("a formatted time parses");
    let ms = |t: std::time::SystemTime| match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i128,
        Err(e) => -(e.duration().as_nanos().div_ceil(1_000_000) as i128),
    };
    assert_eq!(ms(back), ms(t), "{s:?} → {}", format(t));
});
