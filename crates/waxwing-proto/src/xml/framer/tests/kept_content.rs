//! Messages whose content is kept as received (see `Children`): whatever
//! the input, they must come out as the tree-building framer's would, read
//! and written, before and after any change.

use super::*;
use crate::xml::Node;

/// Stream headers to parse in: the usual one, and one declaring prefixes
/// that stanzas may use.
const PREFIXED_HEADER: &str = "<stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:x='urn:outer' xml:lang='de'>";

/// The one stanza in `header` + `stanza`, from the framer in force and from
/// one that builds every tree, fed whole and byte by byte.
fn both(header: &str, stanza: &str) -> (Element, Element) {
    let input = format!("{header}{stanza}");
    let parse = |mut f: Framer, bytewise: bool| {
        let (events, err) = if bytewise {
            run_chunks(&mut f, input.as_bytes().chunks(1))
        } else {
            run_chunks(&mut f, [input.as_bytes()])
        };
        assert_eq!(err, None, "{stanza}");
        match &events[..] {
            [StreamEvent::Open(_), StreamEvent::Stanza(el)] => el.clone(),
            other => panic!("{stanza}: {other:?}"),
        }
    };
    let kept = parse(Framer::new(Limits::default(), ns::CLIENT), false);
    let kept_bytewise = parse(Framer::new(Limits::default(), ns::CLIENT), true);
    let tree = parse(Framer::building_trees(Limits::default(), ns::CLIENT), false);
    assert_eq!(
        kept.children.is_raw(),
        kept_bytewise.children.is_raw(),
        "{stanza}"
    );
    // Compared serialized first, while the kept one is still raw.
    assert_eq!(
        reparse(&kept.to_xml_in(ns::CLIENT)),
        reparse(&tree.to_xml_in(ns::CLIENT)),
        "{stanza}"
    );
    assert_eq!(kept_bytewise, tree, "{stanza}");
    (kept, tree)
}

/// What a recipient reads from `xml`, written into a `jabber:client` stream.
fn reparse(xml: &str) -> Element {
    crate::xml::parse_stanza(xml, ns::CLIENT)
        .unwrap_or_else(|e| panic!("{xml} does not parse: {e:?}"))
}

/// What a reader makes of `xml` written inside a parent whose default
/// namespace is `parent`.
fn read_in(parent: &str, xml: &str) -> Element {
    let wrapped = format!("<wrap><in xmlns='{parent}'>{xml}</in></wrap>");
    let header = "<stream:stream xmlns='urn:wrap' xmlns:stream='http://etherx.jabber.org/streams'>";
    let mut f = Framer::building_trees(Limits::default(), ns::CLIENT);
    f.content_ns = "urn:wrap";
    let (events, err) = run_chunks(&mut f, [header.as_bytes(), wrapped.as_bytes()]);
    assert_eq!(err, None, "{wrapped}");
    match events.into_iter().nth(1) {
        Some(StreamEvent::Stanza(el)) => el.first_child().expect("wrapped").clone(),
        other => panic!("{wrapped}: {other:?}"),
    }
}

/// Stanzas from our fixtures and odd corners of XML, all self-contained.
const SELF_CONTAINED: &[&str] = &[
    "<message to='a@b' type='chat' id='m1'><body>hi</body></message>",
    "<message to='a@b'><body>x &lt; y &amp; z &gt; w &apos;&quot;</body><x a='&gt;'/></message>",
    "<message><body>caf\u{e9} &#233; &#xe9; &#x1F600; \u{1F600}</body></message>",
    "<message><body xml:lang='fr'>bonjour</body><body>hello</body></message>",
    "<message xml:lang='en'><body>text</body><thread parent='p'>t1</thread></message>",
    "<message>\n  <body>indented\r\n lines\r and CR</body>\n  <active xmlns='http://jabber.org/protocol/chatstates'/>\n</message>",
    "<message><body a=\"double &quot;quoted&quot;\" b='tab\tand\nnewline  in value'/></message>",
    "<message><x xmlns='urn:a'><y><z xmlns='urn:b'><w/></z></y><v xmlns=''/></x></message>",
    "<message><x xmlns='jabber:client'/><request xmlns='urn:xmpp:receipts'/><store xmlns='urn:xmpp:hints'/></message>",
    "<message>direct text<body>b</body>more text</message>",
    "<message><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' to='c@d'><body>inner</body></message></forwarded></message>",
    "<message><body xml:lang='de-CH'>gr\u{fc}ezi</body></message>",
    "<message><body>]] &gt; and ]]&gt;</body></message>",
];

#[test]
fn self_contained_content_is_kept_and_means_the_same() {
    for stanza in SELF_CONTAINED {
        for header in [&HEADER[21..], PREFIXED_HEADER] {
            let (kept, _) = both(header, stanza);
            assert!(kept.children.is_raw(), "{stanza} is kept as received");
        }
    }
}

/// Content that might mean something else elsewhere is built as before.
const NOT_SELF_CONTAINED: &[&str] = &[
    // A prefix declared on the stream header.
    "<message><x:y/></message>",
    "<message><body x:a='1'>hi</body></message>",
    // Declared on the message itself.
    "<message xmlns:p='urn:p'><p:y/></message>",
    "<message xmlns:p='urn:p'><y p:a='v'/></message>",
    // Declared inside, where it is harmless, but not worth telling apart.
    "<message><p:y xmlns:p='urn:p'><p:z/></p:y></message>",
    "<message><y xmlns:p='urn:p'/></message>",
    // The default namespace bound through a prefix.
    "<message xmlns:c='jabber:client'><c:body>hi</c:body></message>",
    // CDATA.
    "<message><body><![CDATA[a <b> & c]]></body></message>",
];

#[test]
fn content_with_prefixes_or_cdata_is_built_as_a_tree() {
    for stanza in NOT_SELF_CONTAINED {
        let (kept, tree) = both(PREFIXED_HEADER, stanza);
        assert!(!kept.children.is_raw(), "{stanza} is built");
        assert_eq!(kept, tree);
    }
    // The prefix really resolved through the header.
    let (kept, _) = both(PREFIXED_HEADER, NOT_SELF_CONTAINED[0]);
    assert!(kept.has_child("y", "urn:outer"));
}

#[test]
fn only_messages_on_client_streams_are_kept() {
    for stanza in [
        "<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<presence><show>away</show></presence>",
        "<r xmlns='urn:xmpp:sm:3'><x/></r>",
    ] {
        let (kept, _) = both(&HEADER[21..], stanza);
        assert!(!kept.children.is_raw(), "{stanza}");
    }
    let header = HEADER.replace("jabber:client", "jabber:server");
    let mut f = Framer::new(Limits::default(), ns::SERVER);
    let (events, err) = run_chunks(
        &mut f,
        [format!("{header}<message><body>x</body></message>").as_bytes()],
    );
    assert_eq!(err, None);
    let [_, StreamEvent::Stanza(el)] = &events[..] else {
        panic!("{events:?}")
    };
    assert!(!el.children.is_raw(), "s2s renames children: no point");
    // Empty content is simply no children.
    let (kept, _) = both(&HEADER[21..], "<message to='a@b'/>");
    assert!(kept.children.is_empty() && !kept.children.is_raw());
    let (kept, _) = both(&HEADER[21..], "<message to='a@b'></message>");
    assert!(kept.children.is_empty() && !kept.children.is_raw());
}

#[test]
fn names_are_answered_without_a_tree_and_match_it() {
    let stanza = "<message><body>b</body><active xmlns='http://jabber.org/protocol/chatstates'/>\
                  <x xmlns='urn:a'><body/></x>text</message>";
    let (kept, tree) = both(&HEADER[21..], stanza);
    let before = crate::xml::trees_built_from_raw();
    let names: Vec<_> = kept.child_names().collect();
    assert_eq!(names, tree.child_names().collect::<Vec<_>>());
    assert_eq!(
        names,
        [
            ("body", ns::CLIENT),
            ("active", "http://jabber.org/protocol/chatstates"),
            ("x", "urn:a")
        ]
    );
    assert!(kept.has_child("body", ns::CLIENT));
    assert!(
        !kept.has_child("body", "urn:a"),
        "grandchildren are not children"
    );
    assert!(kept.child("private", "urn:xmpp:carbons:2").is_none());
    assert!(kept.has_children());
    assert!(!kept.children.is_empty());
    let _ = kept.to_xml_in(ns::CLIENT);
    assert_eq!(crate::xml::trees_built_from_raw(), before, "no tree built");
    assert!(kept.children.is_raw());
    // Reading a child builds the tree, once, and it is the same.
    assert_eq!(kept.child("body", ns::CLIENT).unwrap().text(), "b");
    assert_eq!(kept.text(), "text");
    assert_eq!(crate::xml::trees_built_from_raw(), before + 1);
    assert_eq!(kept, tree);
    assert!(kept.children.is_raw(), "reading does not change it");
}

/// Every way of changing the children gives what it gives on the tree.
#[test]
fn changes_see_and_give_what_the_tree_does() {
    type Change = fn(&mut Element);
    let changes: &[(&str, Change)] = &[
        ("remove none", |e| e.remove_children(|c| c.name == "none")),
        ("remove stanza-id", |e| {
            e.remove_children(|c| c.is("stanza-id", "urn:xmpp:sid:0"))
        }),
        ("push", |e| {
            e.push_child(Element::new("stanza-id", "urn:xmpp:sid:0").with_attr("id", "1"))
        }),
        ("edit", |e| {
            e.child_mut("body", ns::CLIENT).unwrap().push_text("!")
        }),
        ("text", |e| e.push_text("t")),
        ("attrs only", |e| {
            e.set_attr("from", "a@b/c");
            e.set_attr("to", "d@e/f");
        }),
        ("renamespace", |e| {
            e.ns = ns::SERVER.into();
            for c in e.children_mut() {
                if c.ns == ns::CLIENT {
                    c.ns = ns::SERVER.into();
                }
            }
        }),
        ("take", |e| {
            let nodes = std::mem::take(&mut *e.children);
            e.children = nodes.into_iter().rev().collect::<Vec<Node>>().into();
        }),
    ];
    let stanza = "<message to='x@y' xml:lang='en'><body>hi &amp; bye</body>\
                  <stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='x@y'/>\
                  <active xmlns='http://jabber.org/protocol/chatstates'/></message>";
    for (what, change) in changes {
        let (kept, tree) = both(&HEADER[21..], stanza);
        let built = crate::xml::trees_built_from_raw();
        // Shared copies, as a fan-out makes them.
        let copy = kept.clone();
        let (mut kept, mut tree) = (kept, tree);
        change(&mut kept);
        change(&mut tree);
        assert_eq!(kept, tree, "{what}");
        assert_eq!(
            kept.children.is_raw(),
            ["remove none", "push", "attrs only"].contains(what),
            "{what}: only changes that need no tree keep the received bytes"
        );
        for parent in [ns::CLIENT, ns::SERVER, ""] {
            // The same to a reader: received bytes keep their attribute
            // order, which the tree does not.
            assert_eq!(
                read_in(parent, &kept.to_xml_in(parent)),
                read_in(parent, &tree.to_xml_in(parent)),
                "{what} in {parent:?}"
            );
            if !kept.children.is_raw() {
                assert_eq!(kept.to_xml_in(parent), tree.to_xml_in(parent), "{what}");
            }
        }
        assert_eq!(
            kept.child_names().count(),
            tree.child_names().count(),
            "{what}"
        );
        if *what == "push" {
            assert!(kept.has_child("stanza-id", "urn:xmpp:sid:0"));
            assert_eq!(
                kept.child_names().last(),
                Some(("stanza-id", "urn:xmpp:sid:0"))
            );
            assert_eq!(
                crate::xml::trees_built_from_raw(),
                built + 1,
                "only the comparison with the tree built one"
            );
        }
        // The unchanged copy is still the original.
        assert!(copy.children.is_raw(), "{what}");
        assert!(copy.has_child("stanza-id", "urn:xmpp:sid:0"), "{what}");
        assert!(copy.to_xml_in(ns::CLIENT).contains("hi &amp; bye</body>"));
    }
}

/// Written anywhere but a `jabber:client` parent, the content is the
/// tree's serialization; inside one (a carbon's `<forwarded/>` declares
/// `jabber:client` on the message), the received bytes.
#[test]
fn written_in_another_namespace_the_content_keeps_its_meaning() {
    let stanza = "<message to='a@b'><body>hi</body><x xmlns='urn:a'><y/></x></message>";
    let (kept, tree) = both(&HEADER[21..], stanza);
    for parent in [ns::SERVER, ns::COMPONENT, "", "urn:other"] {
        assert_eq!(kept.to_xml_in(parent), tree.to_xml_in(parent), "{parent}");
    }
    let wrap = |m: &Element| {
        Element::new("message", ns::CLIENT).with_child(
            Element::new("sent", "urn:xmpp:carbons:2")
                .with_child(Element::new("forwarded", "urn:xmpp:forward:0").with_child(m.clone())),
        )
    };
    let xml = wrap(&kept).to_xml_in(ns::SERVER);
    assert_eq!(xml, wrap(&tree).to_xml_in(ns::SERVER));
    assert!(
        xml.contains("<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' to='a@b'><body>hi</body>"),
        "{xml}"
    );
    assert!(kept.children.is_raw());
    // The content is the received bytes, byte for byte.
    let odd = "<message><body a=\"v\" >x&#65;y</body ></message>";
    let (kept, _) = both(&HEADER[21..], odd);
    assert_eq!(
        kept.to_xml_in(ns::CLIENT),
        "<message><body a=\"v\" >x&#65;y</body ></message>"
    );
}

/// Limits apply inside kept content exactly as in a tree.
#[test]
fn limits_apply_inside_kept_content() {
    let limits = Limits {
        max_stanza_bytes: 200,
        max_depth: 3,
        max_attrs: 3,
    };
    for (stanza, condition) in [
        ("<message><a><b><c/></b></a></message>", C::PolicyViolation),
        (
            "<message><a x='1' y='2' z='3' w='4'/></message>",
            C::PolicyViolation,
        ),
        (
            &*format!("<message><body>{}</body></message>", "x".repeat(200)),
            C::PolicyViolation,
        ),
        ("<message><a></b></message>", C::NotWellFormed),
        ("<message><p:a/></message>", C::BadNamespacePrefix),
        ("<message><a>\u{1}</a></message>", C::NotWellFormed),
        ("<message><a>&unknown;</a></message>", C::RestrictedXml),
    ] {
        let input = in_stream(stanza);
        let e = error_with(limits, &input);
        assert_eq!(e.condition, condition, "{stanza}: {e:?}");
        let mut trees = Framer::building_trees(limits, ns::CLIENT);
        let (_, tree_err) = run_chunks(&mut trees, [&input[..]]);
        assert_eq!(Some(e), tree_err, "{stanza}: the same error either way");
    }
    // Within the limits it passes.
    let (events, err) = run_with(limits, &in_stream("<message><a><b/></a></message>"));
    assert_eq!((events.len(), err), (2, None));
}
