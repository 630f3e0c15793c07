//! The framer fed in random chunks: whatever the split, and with idle
//! buffers released between chunks, it yields the same events as when fed
//! the whole input at once (it is documented as chunking-invariant), and it
//! never panics. A framer that builds every tree (`Framer::eager`) yields
//! the same events as one that keeps a message's content as bytes, and
//! those bytes written back mean the same as the tree
//! (`reference::check_write_back`).
//!
//! Only *when* an error is found may differ: rxml checks the bytes of an
//! unfinished text token when a read ends, so invalid UTF-8 in text that
//! is not yet terminated is refused at the end of a chunk, while fed whole
//! the same text waits for its end (found first in
//! `regressions/framer_chunks-before-header`). The stream is refused
//! either way once more input comes; what must never differ is an event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waxwing_proto::ns;
use waxwing_proto::xml::reference::check_write_back;
use waxwing_proto::xml::{Framer, Limits, StreamEvent};

/// Small limits, so that the limit paths are reached too.
const LIMITS: Limits = Limits {
    max_stanza_bytes: 4096,
    max_depth: 8,
    max_attrs: 8,
};

fn run(mut f: Framer, chunks: &[&[u8]], release: &[bool]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        f.feed(c);
        loop {
            match f.next_event() {
                Ok(Some(ev)) => {
                    if let StreamEvent::Stanza(el) = &ev {
                        check_write_back(el);
                    }
                    out.push(format!("{ev:?}"))
                }
                Ok(None) => break,
                Err(_) => {
                    // Only that the stream ends: which problem is met first
                    // (and so the text, and for a NUL after stray text even
                    // the condition: not-well-formed or bad-format) depends
                    // on where the chunks end.
                    out.push("error".into());
                    return out;
                }
            }
        }
        if release.get(i).copied().unwrap_or(false) {
            f.release_idle_buffers();
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // The first bytes choose chunk lengths (1..=16) and releases; the rest
    // is the stream.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16);
    if rest.len() < n {
        return;
    }
    let (plan, input) = rest.split_at(n);
    let mut chunks = Vec::new();
    let mut release = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < input.len() {
        let step = plan.get(i % plan.len().max(1)).copied().unwrap_or(0);
        let len = usize::from(step % 16) + 1;
        let end = (at + len).min(input.len());
        chunks.push(&input[at..end]);
        release.push(step & 0x80 != 0);
        at = end;
        i += 1;
    }
    let events = |mut out: Vec<String>| {
        if out.last().is_some_and(|e| e == "error") {
            out.pop();
        }
        out
    };
    let framer = || Framer::new(LIMITS, ns::CLIENT);
    let whole = events(run(framer(), &[input], &[]));
    let split = events(run(framer(), &chunks, &release));
    assert_eq!(whole, split, "chunking changed the events");
    let eager = events(run(framer().eager(), &chunks, &release));
    assert_eq!(whole, eager, "keeping content as bytes changed the events");
});
