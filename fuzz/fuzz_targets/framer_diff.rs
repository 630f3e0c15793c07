//! Differential fuzzing of the framer's XML tokenizer against rxml: the
//! same bytes, split at fuzzer-chosen points and with idle releases
//! between some chunks, go to `xml::Framer` (rxml for the stream header,
//! the crate's own tokenizer after it) and to `xml::reference::RxmlFramer`
//! (rxml for everything, the framer as it was before the tokenizer). Both
//! must give the same events, the same `buffered()` after every chunk and
//! the same stream error condition (see `reference::compare`). The framer
//! building every tree (`Framer::eager`) must give exactly what the framer
//! keeping message content as bytes (and only validating it) gives.
//!
//! Input: a control byte (bits 0-3: number of plan bytes; bit 4: prepend a
//! stream header, so that mutations start inside the stream; bit 5: tiny
//! limits; bit 6: jabber:server), the plan bytes (chunk lengths 1..=16,
//! bit 7 releases idle buffers after the chunk), then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waxwing_proto::ns;
use waxwing_proto::xml::Limits;
use waxwing_proto::xml::reference::compare;

const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:p='urn:p' to='a.example'>";
const HEADER_S2S: &[u8] = b"<stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:p='urn:p' xml:lang='en'>";

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(ctl & 0x0f);
    if rest.len() < n {
        return;
    }
    let (plan, body) = rest.split_at(n);
    let server = ctl & 0x40 != 0;
    let mut input = Vec::new();
    if ctl & 0x10 != 0 {
        input.extend_from_slice(if server { HEADER_S2S } else { HEADER });
    }
    input.extend_from_slice(body);
    let limits = if ctl & 0x20 != 0 {
        // Small enough that the token limit and the size limit differ
        // from each other and are both reached.
        Limits {
            max_stanza_bytes: 300,
            max_depth: 4,
            max_attrs: 3,
        }
    } else {
        Limits {
            max_stanza_bytes: 4096,
            max_depth: 8,
            max_attrs: 8,
        }
    };
    let content_ns = if server { ns::SERVER } else { ns::CLIENT };
    let mut chunks = Vec::new();
    let mut release = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < input.len() {
        let step = plan.get(i % plan.len().max(1)).copied().unwrap_or(0xff);
        let len = if plan.is_empty() {
            input.len()
        } else {
            usize::from(step % 16) + 1
        };
        let end = (at + len).min(input.len());
        chunks.push(&input[at..end]);
        release.push(step & 0x80 != 0);
        at = end;
        i += 1;
    }
    if let Err(d) = compare(limits, content_ns, &chunks, &release) {
        panic!(
            "the framer differs (from itself building trees, or from rxml)\n  new: {:?}\n  other: {:?}",
            d.0, d.1
        );
    }
});
