//! A fixed workload for measuring the framer and the serializer alone:
//! frames N chat messages shaped like the benchmark's (`waxwing-bench`'s
//! chat scenario) and, unless `parse` is given, writes each back the way the
//! session does (new `from`, serialized into `jabber:client`, appended to a
//! write buffer that is reused, as `Outgoing` is). It runs on mimalloc, the
//! server's allocator, so allocation costs are the server's too.
//!
//! Meant for instruction counts, which the machine's load does not change:
//!
//!     cargo build --release -p waxwing-proto --example framer_cost
//!     valgrind --tool=callgrind target/release/examples/framer_cost 20000
//!     perf record -g target/release/examples/framer_cost 2000000
//!
//! Allocations per stanza: the calls to `__rust_alloc` and `__rust_realloc`
//! in the callgrind profile (`callgrind_annotate --tree=caller`), divided
//! by the count.
//!
//! Arguments: message count (default 100000), then `parse` to skip the
//! serialization, then `client` to add what real clients send beside the
//! body (a chat state, a receipt request, an origin-id), which is content
//! with namespaces and attributes rather than text alone.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use waxwing_proto::ns;
use waxwing_proto::xml::{Framer, Limits, StreamEvent};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let parse_only = args.next().as_deref() == Some("parse");
    let client_extras = args.next().as_deref() == Some("client");

    let mut framer = Framer::new(Limits::default(), ns::CLIENT);
    framer.feed(
        b"<?xml version='1.0'?><stream:stream to='bench.example' version='1.0' \
          xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    );
    assert!(matches!(
        framer.next_event(),
        Ok(Some(StreamEvent::Open(_)))
    ));

    // Reads of about 4 KiB, as a busy connection delivers them.
    let mut chunk = String::new();
    let mut seen = 0usize;
    let mut out_bytes = 0usize;
    let mut out = String::with_capacity(8192);
    let mut i = 0usize;
    while seen < n {
        chunk.clear();
        while chunk.len() < 4096 && i < n {
            chunk.push_str(&format!(
                "<message to='u{}@bench.example' type='chat' id='m{i}'>\
                 <body>t=1765000000000000 s={i} padding-padding-padding</body>",
                i % 200
            ));
            if client_extras {
                chunk.push_str(&format!(
                    "<active xmlns='http://jabber.org/protocol/chatstates'/>\
                     <request xmlns='urn:xmpp:receipts'/>\
                     <origin-id xmlns='urn:xmpp:sid:0' id='5f3c9e2a-7b1d-4c8e-9a6f-{i:012}'/>"
                ));
            }
            chunk.push_str("</message>");
            i += 1;
        }
        framer.feed(chunk.as_bytes());
        while let Some(ev) = framer.next_event().expect("valid input") {
            let StreamEvent::Stanza(mut el) = ev else {
                panic!("unexpected event {ev:?}");
            };
            seen += 1;
            if !parse_only {
                el.set_attr("from", "u1@bench.example/res");
                out.clear();
                el.write_to(&mut out, ns::CLIENT);
                out_bytes += out.len();
            }
        }
    }
    println!("{seen} stanzas, {out_bytes} bytes written");
}
