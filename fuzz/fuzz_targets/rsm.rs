//! XEP-0059 `<set/>` parsing and paging: never panics, and a page is
//! always inside the list and no longer than the clamped `max`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waxwing_proto::ns;
use waxwing_proto::payload::rsm::Request;
use waxwing_proto::xml::parse_stanza;

fuzz_target!(|data: &[u8]| {
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(el) = parse_stanza(text, ns::CLIENT) else {
        return;
    };
    let limit = 50;
    let Ok(req) = Request::parse(&el, limit) else {
        return;
    };
    let len = usize::from(len);
    // Item ids are their positions.
    if let Ok(w) = req.window(len, 20, |id| id.parse().ok()) {
        assert!(w.start <= w.end && w.end <= len, "{w:?} outside 0..{len}");
        assert!(w.len() <= req.max.unwrap_or(20), "{w:?} longer than max");
        assert!(req.max.is_none_or(|m| m <= limit), "max not clamped");
    }
});
