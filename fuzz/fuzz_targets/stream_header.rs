//! Stream headers and server dialback, as the s2s framer sees them: a
//! header (well-formed or fuzzed) declaring the `db:` prefix, then fuzzed
//! bytes; every `<db:result/>` and `<db:verify/>` has its addresses read
//! as domains and its key as text, the way `stream::s2s_in` does. The
//! dialback state machine itself lives in waxwing-core and is not reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waxwing_proto::jid::Jid;
use waxwing_proto::xml::{Framer, Limits, StreamEvent};

const NS_SERVER: &str = "jabber:server";
const NS_DIALBACK: &str = "jabber:server:dialback";

const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
    from='remote.example' to='local.example' version='1.0'>";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    for content_ns in [NS_SERVER, "jabber:client"] {
        let mut f = Framer::new(Limits::default(), content_ns);
        // Even modes use our header, odd ones fuzz the header too.
        if mode % 2 == 0 {
            f.feed(HEADER);
        }
        f.feed(rest);
        while let Ok(Some(ev)) = f.next_event() {
            match ev {
                StreamEvent::Open(h) => {
                    for a in [&h.to, &h.from].into_iter().flatten() {
                        let _ = Jid::parse(a);
                    }
                }
                StreamEvent::Stanza(el) if el.ns == NS_DIALBACK => {
                    for a in ["from", "to"] {
                        if let Some(v) = el.attr(a) {
                            let _ = Jid::parse(v);
                        }
                    }
                    let _ = (el.attr("type"), el.attr("id"), el.text());
                }
                StreamEvent::Stanza(el) => {
                    let _ = el.to_xml();
                }
                StreamEvent::Close => break,
            }
        }
    }
});
