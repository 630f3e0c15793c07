//! A fixed workload for the tokenizer's cost per stanza shape: frames N
//! stanzas of one shape (framing only, nothing written back), so that the
//! tokenizer's share of `framer_cost` can be watched for stanzas other
//! than the benchmark's. Runs on mimalloc, the server's allocator.
//!
//!     cargo build --release -p waxwing-proto --example tokenizer_cost
//!     valgrind --tool=callgrind --dump-instr=no \
//!         target/release/examples/tokenizer_cost 20000 rich
//!
//! Arguments: stanza count (default 100000), then the shape:
//! - `chat` (default): the benchmark's chat message (3 attributes, a
//!   60-byte body), as in `framer_cost`;
//! - `rich`: what a modern client sends: 5 attributes with `xml:lang`, a
//!   400-byte body with a few references, chat state, receipt request and
//!   origin-id children each declaring their namespace;
//! - `attrs`: an element with 24 attributes (names of varied length, two
//!   of them namespaced), near what a server accepts by default (64);
//! - `flood`: the worst case for the attribute checks: a stanza of the
//!   default size limit (256 KiB) holding about 29,000 attributes in
//!   reverse order, which the framer then refuses (over 64 attributes);
//!   each one is framed by a new framer;
//! - `flood-decls`: the same with prefix declarations (`xmlns:abcd='u'`),
//!   which do not count as attributes: the stanza is accepted;
//! - `flood-prefixed`: half declarations, half attributes with the first
//!   declared prefix (each looked up past all the others).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use waxwing_proto::ns;
use waxwing_proto::stanza::StreamCondition;
use waxwing_proto::xml::{Framer, Limits, StreamEvent};

fn stanza(shape: &str, i: usize) -> String {
    match shape {
        "rich" => {
            let words = "Hello there, this is a longer message &amp; it has a few \
                         references &lt;like this&gt; and some plain words to make \
                         it about as long as a paragraph someone would type into a \
                         chat window, with punctuation: commas, dots... and \
                         &quot;quotes&quot; too. ";
            format!(
                "<message xml:lang='en' to='u{}@bench.example/phone' from='u1@bench.example/laptop' \
                 type='chat' id='9f1c2e7a-{i:08}'><body>{words}{words}</body>\
                 <active xmlns='http://jabber.org/protocol/chatstates'/>\
                 <request xmlns='urn:xmpp:receipts'/>\
                 <origin-id xmlns='urn:xmpp:sid:0' id='9f1c2e7a-{i:08}'/></message>",
                i % 200
            )
        }
        "attrs" => {
            let mut s = format!("<message to='u{}@bench.example' xmlns:x='urn:x'", i % 200);
            for k in 0..22 {
                if k % 11 == 5 {
                    s.push_str(&format!(" x:attr{k}='v{k}'"));
                } else {
                    s.push_str(&format!(" {}{k}='value {k}'", &"abcdefgh"[..1 + k % 7]));
                }
            }
            s.push_str(" id='x'><body>hi</body></message>");
            s
        }
        _ => format!(
            "<message to='u{}@bench.example' type='chat' id='m{i}'>\
             <body>t=1765000000000000 s={i} padding-padding-padding</body></message>",
            i % 200
        ),
    }
}

fn open() -> Framer {
    let mut framer = Framer::new(Limits::default(), ns::CLIENT);
    framer.feed(
        b"<?xml version='1.0'?><stream:stream to='bench.example' version='1.0' \
          xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    );
    assert!(matches!(
        framer.next_event(),
        Ok(Some(StreamEvent::Open(_)))
    ));
    framer
}

fn flood(n: usize, kind: &str) {
    let mut tag = String::from("<message");
    let mut k = 26usize.pow(4);
    let size = Limits::default().max_stanza_bytes;
    while tag.len() + 20 < size {
        k -= 1;
        let name: String = (0..4)
            .map(|d| char::from(b'a' + (k / 26usize.pow(3 - d) % 26) as u8))
            .collect();
        match kind {
            "-decls" => tag.push_str(&format!(" xmlns:{name}='u'")),
            "-prefixed" if tag.len() < size / 2 => tag.push_str(&format!(" xmlns:{name}='u{k}'")),
            "-prefixed" => tag.push_str(&format!(" zzzz:{name}=''")),
            _ => tag.push_str(&format!(" {name}=''")),
        }
    }
    tag.push_str("/>");
    let mut refused = 0;
    for _ in 0..n {
        let mut framer = open();
        framer.feed(tag.as_bytes());
        // Declarations are not attributes: a stanza of them comes through.
        match framer.next_event() {
            Err(e) => {
                assert_eq!(e.condition, StreamCondition::PolicyViolation);
                refused += 1;
            }
            Ok(ev) => assert!(matches!(ev, Some(StreamEvent::Stanza(_)))),
        }
    }
    println!("{n} floods of {} bytes, {refused} refused", tag.len());
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let shape = args.next().unwrap_or_else(|| "chat".to_owned());

    if let Some(kind) = shape.strip_prefix("flood") {
        flood(n, kind);
        return;
    }
    let mut framer = open();

    // Reads of about 4 KiB, as a busy connection delivers them.
    let mut chunk = String::new();
    let mut seen = 0usize;
    let mut attrs = 0usize;
    let mut i = 0usize;
    while seen < n {
        chunk.clear();
        while chunk.len() < 4096 && i < n {
            chunk.push_str(&stanza(&shape, i));
            i += 1;
        }
        framer.feed(chunk.as_bytes());
        while let Some(ev) = framer.next_event().expect("valid input") {
            let StreamEvent::Stanza(el) = ev else {
                panic!("unexpected event {ev:?}");
            };
            seen += 1;
            attrs += el.attrs.len();
        }
    }
    println!("{seen} stanzas of shape {shape}, {attrs} attributes");
}
