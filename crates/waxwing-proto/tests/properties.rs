//! Property tests of the XML framer and JID preparation (issue #4).
//!
//! CI runs the default case count; for a longer run:
//! `PROPTEST_CASES=100000 cargo test -p waxwing-proto --release --test properties`.

use proptest::prelude::*;
use waxwing_proto::jid::{BareJid, FullJid, Jid};
use waxwing_proto::ns;
use waxwing_proto::xml::{Element, Framer, Limits, StreamEvent};

const HEADER: &str = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

fn limits() -> Limits {
    Limits {
        max_stanza_bytes: 4096,
        max_depth: 16,
        max_attrs: 16,
    }
}

/// Feeds `chunks` and drains events until an error or the end of the input.
/// Returns the stanzas seen and whether the framer failed.
fn run(chunks: &[Vec<u8>]) -> (Vec<Element>, bool) {
    let mut f = Framer::new(limits(), ns::CLIENT);
    let mut out = Vec::new();
    for c in chunks {
        f.feed(c);
        loop {
            match f.next_event() {
                Ok(Some(StreamEvent::Stanza(el))) => out.push(el),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
        // The memory bound: never more than one stanza's worth held.
        assert!(
            f.buffered() <= limits().max_stanza_bytes + 8192,
            "buffered {}",
            f.buffered()
        );
    }
    (out, false)
}

/// A small valid stanza built from generated parts.
fn stanza() -> impl Strategy<Value = Element> {
    let text = "[ -~éß漢😀]{0,40}";
    let name = "[a-z]{1,8}";
    (
        name,
        text,
        proptest::collection::vec(("[a-z]{1,6}", text), 0..4),
        proptest::option::of(text),
    )
        .prop_map(|(child, body, attrs, inner)| {
            let mut el = Element::new("message", ns::CLIENT)
                .with_child(Element::new("body", ns::CLIENT).with_text(body));
            let mut seen = std::collections::HashSet::new();
            for (k, v) in attrs {
                if seen.insert(k.clone()) {
                    el.set_attr(k, v);
                }
            }
            let mut c = Element::new(child, "urn:example:test");
            if let Some(t) = inner {
                c.push_text(t);
            }
            el.with_child(c)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut input = HEADER.as_bytes().to_vec();
        input.extend(&data);
        run(&[input]);
    }

    #[test]
    fn arbitrary_bytes_in_arbitrary_chunks_never_panic(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..64)
    ) {
        let mut all = vec![HEADER.as_bytes().to_vec()];
        all.extend(chunks);
        run(&all);
    }

    #[test]
    fn valid_stanzas_round_trip_through_any_chunking(
        stanzas in proptest::collection::vec(stanza(), 1..5),
        split in any::<proptest::sample::Index>(),
    ) {
        let mut doc = HEADER.to_string();
        for s in &stanzas {
            doc.push_str(&s.to_xml_in(ns::CLIENT));
        }
        let bytes = doc.into_bytes();
        let at = split.index(bytes.len());
        let (parsed, failed) = run(&[bytes[..at].to_vec(), bytes[at..].to_vec()]);
        prop_assert!(!failed);
        prop_assert_eq!(parsed.len(), stanzas.len());
        for (p, s) in parsed.iter().zip(&stanzas) {
            // Attribute order is not significant in XML.
            let mut p = p.clone();
            let mut s = s.clone();
            p.attrs.sort();
            s.attrs.sort();
            prop_assert_eq!(p, s);
        }
    }

    #[test]
    fn jid_parsing_never_panics(s in "\\PC{0,80}") {
        let _ = Jid::parse(&s);
        let _ = BareJid::parse(&s);
        let _ = FullJid::parse(&s);
    }

    #[test]
    fn prepared_jids_are_stable(s in "[a-zA-Z0-9._ÄÖÜäöüß-]{1,20}@[a-z0-9]{1,10}\\.[a-z]{2,5}(/[ -~]{1,20})?") {
        if let Ok(j) = Jid::parse(&s) {
            let again = Jid::parse(&j.to_string()).expect("a prepared JID parses again");
            prop_assert_eq!(&again, &j);
            prop_assert_eq!(again.to_string(), j.to_string());
        }
    }

    #[test]
    fn case_variants_of_a_localpart_are_one_account(local in "[a-z]{1,12}") {
        let lower = BareJid::parse(&format!("{local}@example.org")).unwrap();
        let upper = BareJid::parse(&format!("{}@EXAMPLE.ORG", local.to_uppercase())).unwrap();
        prop_assert_eq!(lower, upper);
    }
}
