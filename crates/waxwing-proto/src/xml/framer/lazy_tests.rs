//! Message content kept as bytes (see the framer's module docs): it must
//! mean exactly what the tree the framer would otherwise build means, when
//! read, compared, and written back anywhere.

use super::*;
use crate::stanza::StreamCondition as C;

/// A stream header that also declares a prefix, as some clients do.
const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:p='urn:p' to='example.com' \
    version='1.0' xml:lang='en'>";

const HEADER_S2S: &str = "<stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:p='urn:p' xml:lang='en'>";

/// The stanzas of `body` framed by `framer` fed `chunk` bytes at a time.
fn frame_with(framer: Framer, header: &str, body: &str, chunk: usize) -> Vec<Element> {
    let mut f = framer;
    let input = format!("{header}{body}");
    let mut out = Vec::new();
    for piece in input.as_bytes().chunks(chunk) {
        f.feed(piece);
        while let Some(ev) = f.next_event().unwrap_or_else(|e| panic!("{body}: {e:?}")) {
            if let StreamEvent::Stanza(el) = ev {
                out.push(el);
            }
        }
    }
    out
}

fn lazy(body: &str) -> Element {
    one(frame_with(
        Framer::new(Limits::default(), ns::CLIENT),
        HEADER,
        body,
        usize::MAX,
    ))
}

fn eager(body: &str) -> Element {
    one(frame_with(
        Framer::new(Limits::default(), ns::CLIENT).eager(),
        HEADER,
        body,
        usize::MAX,
    ))
}

fn one(mut v: Vec<Element>) -> Element {
    assert_eq!(v.len(), 1);
    v.pop().unwrap()
}

/// The same element with its children built as a tree (no raw bytes).
/// The stream error `body` (after the header) meets under `limits`, if any.
fn first_error(limits: Limits, body: &str) -> Option<C> {
    let mut f = Framer::new(limits, ns::CLIENT);
    f.feed(format!("{HEADER}{body}").as_bytes());
    loop {
        match f.next_event() {
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(e) => return Some(e.condition),
        }
    }
}

fn as_tree(el: &Element) -> Element {
    Element {
        children: el.children.to_vec().into(),
        ..el.clone()
    }
}

#[test]
fn a_chat_message_is_routed_without_parsing_its_content() {
    let body = "<message to='juliet@example.com' type='chat' id='a1'>\
        <body>Wherefore art thou?</body><active xmlns=\"http://jabber.org/protocol/chatstates\"/>\
        <request xmlns='urn:xmpp:receipts'   /><origin-id xmlns='urn:xmpp:sid:0' id='o1'/></message>";
    let el = lazy(body);
    assert!(el.children.is_unparsed());
    assert!(el.has_child("body", ns::CLIENT));
    assert!(el.has_child("request", "urn:xmpp:receipts"));
    assert!(!el.has_child("body", "urn:xmpp:receipts"));
    assert!(!el.has_child("private", "urn:xmpp:carbons:2"));
    assert!(el.has_children());
    assert_eq!(
        el.child_names().collect::<Vec<_>>(),
        [
            ("body", ns::CLIENT),
            ("active", "http://jabber.org/protocol/chatstates"),
            ("request", "urn:xmpp:receipts"),
            ("origin-id", "urn:xmpp:sid:0"),
        ]
    );
    let mut routed = el.clone();
    routed.set_attr("from", "romeo@example.net/orchard");
    // Written back in the namespace it came in: the bytes as they came.
    let out = routed.to_xml_in(ns::CLIENT);
    assert_eq!(
        out,
        "<message id='a1' to='juliet@example.com' type='chat' from='romeo@example.net/orchard'>\
         <body>Wherefore art thou?</body><active xmlns=\"http://jabber.org/protocol/chatstates\"/>\
         <request xmlns='urn:xmpp:receipts'   /><origin-id xmlns='urn:xmpp:sid:0' id='o1'/></message>"
    );
    assert!(el.children.is_unparsed() && routed.children.is_unparsed());
    // Reading parses it, into what the eager framer builds.
    assert_eq!(
        el.child("body", ns::CLIENT).unwrap().text(),
        "Wherefore art thou?"
    );
    assert!(!el.children.is_unparsed());
    assert_eq!(el, eager(body));
}

/// Contents that exercise escaping, CDATA, references, namespaces and
/// prefixes (declared inside, on the stanza, on the stream header).
const CONTENTS: &[&str] = &[
    "<body>&lt;&amp;&gt;&quot;&apos; and ]]&gt; and &#x1F600;&#13;&#10;&#9;x</body>",
    "<body><![CDATA[<b> & ]]]]><![CDATA[> ]]></body>",
    "<body>line\r\nbreaks\rand\ttabs</body>",
    "<body xml:lang='de'>Hallo</body><subject xml:lang=\"fr\">Salut</subject>",
    "<x xmlns='urn:x'><y/><z xmlns=''>in no namespace</z><body>in urn:x</body></x>",
    "<x xmlns='urn:x' a='&lt;&#10;&#x9;' b=\"it's\"><y c='\r\n\t'/></x>",
    "<q:x xmlns:q='urn:q'><q:y/></q:x>",
    "<x xmlns='urn:x' xmlns:q='urn:q' q:a='1'/>",
    "<p:x/>",
    "<x xmlns='urn:x' p:a='v'/>",
    "\n  <body>indented</body>\n  <active xmlns='http://jabber.org/protocol/chatstates'/>\n",
    "   ",
    "just text &amp; more",
    "<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' to='a@b'>\
     <body>inner</body></message></forwarded>",
    "<stream:error xmlns:stream='http://etherx.jabber.org/streams'/>",
];

#[test]
fn kept_content_means_what_the_tree_means() {
    for content in CONTENTS {
        for stanza_tag in [
            "<message to='a@b'>",
            "<message xmlns='jabber:client' xmlns:s='urn:s' xml:lang='en'>",
        ] {
            let body = format!("{stanza_tag}{content}</message>");
            let expected = eager(&body);
            for chunk in [usize::MAX, 7, 1] {
                let got = one(frame_with(
                    Framer::new(Limits::default(), ns::CLIENT),
                    HEADER,
                    &body,
                    chunk,
                ));
                // Written back as they are, and parsed again: directly,
                // and inside a forwarding wrapper in each stream namespace.
                let xml = got.to_xml_in(ns::CLIENT);
                let back = crate::xml::parse_stanza(&xml, ns::CLIENT)
                    .unwrap_or_else(|e| panic!("{xml}: {e:?}"));
                assert_eq!(back, expected, "{body} written as {xml}");
                for stream_ns in [ns::CLIENT, ns::SERVER] {
                    for el in [got.clone(), as_tree(&got)] {
                        let wrapper =
                            Element::new("forwarded", "urn:xmpp:forward:0").with_child(el);
                        let xml = wrapper.to_xml_in(stream_ns);
                        let back = crate::xml::parse_stanza(&xml, stream_ns)
                            .unwrap_or_else(|e| panic!("{xml}: {e:?}"));
                        assert_eq!(
                            back.first_child(),
                            Some(&expected),
                            "{body} written as {xml}"
                        );
                    }
                }
                assert_eq!(got, expected, "{body} in chunks of {chunk}");
                assert_eq!(
                    got.child_names().collect::<Vec<_>>(),
                    expected.child_names().collect::<Vec<_>>()
                );
            }
        }
    }
}

#[test]
fn content_with_prefixes_is_built_as_a_tree() {
    // Declared on the stream header, on the stanza, inside: all built.
    for body in [
        "<message><p:x/></message>",
        "<message xmlns:s='urn:s'><s:x/></message>",
        "<message><x xmlns:q='urn:q' q:a='1'/></message>",
    ] {
        let el = lazy(body);
        assert!(!el.children.is_unparsed(), "{body}");
        assert_eq!(el, eager(body));
    }
    // The stream's prefix still resolves after a reset (a new header).
    let el = lazy("<message><p:x/></message>");
    assert!(el.has_child("x", "urn:p"));
    // `xml:` needs no declaration, and declaring a prefix is not using it.
    for body in [
        "<message><body xml:lang='en'>hi</body></message>",
        "<message><x xmlns='urn:x' xmlns:q='urn:q'/></message>",
    ] {
        assert!(lazy(body).children.is_unparsed(), "{body}");
    }
}

#[test]
fn only_messages_in_the_stream_namespace_are_kept_as_bytes() {
    for body in [
        "<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<presence><show>away</show></presence>",
        // A prefixed stanza whose content has another default namespace.
        "<c:message xmlns:c='jabber:client' xmlns='urn:other'><body/></c:message>",
    ] {
        let el = lazy(body);
        assert!(!el.children.is_unparsed(), "{body}");
        assert_eq!(el, eager(body));
    }
    assert!(
        lazy("<message><body>x</body></message>")
            .children
            .is_unparsed()
    );
}

#[test]
fn s2s_content_is_kept_in_its_namespace() {
    let body = "<message from='a@x' to='b@y'><body>hi</body></message>";
    let el = one(frame_with(
        Framer::new(Limits::default(), ns::SERVER),
        HEADER_S2S,
        body,
        usize::MAX,
    ));
    assert!(el.children.is_unparsed());
    assert!(el.has_child("body", ns::SERVER));
    assert!(!el.has_child("body", ns::CLIENT));
    // Into a client stream: the message keeps its namespace, its content
    // is the bytes.
    assert_eq!(
        el.to_xml_in(ns::CLIENT),
        "<message xmlns='jabber:server' from='a@x' to='b@y'><body>hi</body></message>"
    );
    // Moved into jabber:client (content no longer in its default
    // namespace): written from the tree.
    let mut moved = el.clone();
    moved.ns = ns::intern(ns::CLIENT);
    assert_eq!(
        moved.to_xml_in(ns::CLIENT),
        "<message from='a@x' to='b@y'><body xmlns='jabber:server'>hi</body></message>"
    );
}

#[test]
fn appending_keeps_the_bytes_and_other_changes_parse_them() {
    let body =
        "<message><body>hi</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>";
    let el = lazy(body);
    let shared = el.clone();
    let mut changed = el.clone();
    changed.push_child(Element::new("stanza-id", "urn:xmpp:sid:0").with_attr("id", "1"));
    assert!(
        changed.children.is_unparsed(),
        "a stamp is appended to the bytes"
    );
    assert!(changed.has_child("stanza-id", "urn:xmpp:sid:0"));
    assert!(changed.has_child("body", ns::CLIENT));
    assert_eq!(
        changed
            .child("stanza-id", "urn:xmpp:sid:0")
            .unwrap()
            .attr("id"),
        Some("1")
    );
    assert_eq!(
        changed.to_xml_in(ns::CLIENT),
        "<message><body>hi</body><active xmlns='http://jabber.org/protocol/chatstates'/>\
         <stanza-id xmlns='urn:xmpp:sid:0' id='1'/></message>"
    );
    changed.remove_children(|c| c.name == "active");
    assert!(!changed.has_child("active", "http://jabber.org/protocol/chatstates"));
    assert_eq!(
        changed.to_xml_in(ns::CLIENT),
        "<message><body>hi</body><stanza-id xmlns='urn:xmpp:sid:0' id='1'/></message>"
    );
    // The others still share the bytes, unchanged.
    assert!(shared.children.is_unparsed() || shared == eager(body));
    assert_eq!(shared.to_xml_in(ns::CLIENT), body);
    assert_eq!(el, eager(body));
}

#[test]
fn limits_hold_inside_kept_content() {
    let limits = Limits {
        max_stanza_bytes: 256,
        max_depth: 4,
        max_attrs: 3,
    };
    let run = |body: &str| first_error(limits, body);
    assert_eq!(run("<message><a><b><c/></b></a></message>"), None);
    assert_eq!(
        run("<message><a><b><c><d/></c></b></a></message>"),
        Some(C::PolicyViolation)
    );
    assert_eq!(
        run("<message><a w='1' x='2' y='3' z='4'/></message>"),
        Some(C::PolicyViolation)
    );
    assert_eq!(
        run(&format!(
            "<message><body>{}</body></message>",
            "x".repeat(300)
        )),
        Some(C::PolicyViolation)
    );
    assert_eq!(
        run("<message><body>\u{1}</body></message>"),
        Some(C::NotWellFormed)
    );
    assert_eq!(
        run("<message><q:x/></message>"),
        Some(C::BadNamespacePrefix)
    );
    assert_eq!(
        run("<message><body>&foo;</body></message>"),
        Some(C::RestrictedXml)
    );
    assert_eq!(run("<message><a></b></message>"), Some(C::NotWellFormed));
}

/// The tokenizer enforces the limits inside kept content itself (the
/// framer sees no token of it): limits changed while such content is
/// arriving apply from then on, as they do where a tree is built.
#[test]
fn limits_changed_inside_kept_content_apply() {
    let tight = Limits {
        max_stanza_bytes: 4096,
        max_depth: 3,
        max_attrs: 1,
    };
    let run = |framer: Framer, rest: &str| {
        let mut f = framer;
        f.feed(format!("{HEADER}<message><a><b/>").as_bytes());
        assert!(matches!(f.next_event(), Ok(Some(StreamEvent::Open(_)))));
        assert_eq!(f.next_event(), Ok(None));
        f.set_limits(tight);
        f.feed(rest.as_bytes());
        match f.next_event() {
            Ok(Some(StreamEvent::Stanza(el))) => Ok(el),
            Ok(ev) => panic!("{rest}: {ev:?}"),
            Err(e) => Err(e),
        }
    };
    for rest in [
        "<c/></a></message>",
        "<b><c/></b></a></message>",
        "<c x='1' y='2'/></a></message>",
        "</a><c x='1'/></message>",
    ] {
        let lazy = run(Framer::new(Limits::default(), ns::CLIENT), rest);
        let eager = run(Framer::new(Limits::default(), ns::CLIENT).eager(), rest);
        assert_eq!(lazy, eager, "{rest}");
        let refused = !rest.starts_with("</a>") && rest != "<c/></a></message>";
        assert_eq!(lazy.is_err(), refused, "{rest}: {lazy:?}");
    }
}

/// Leaves of kept content (`<body>text</body>`, `<active xmlns='…'/>`)
/// are noted in one step when all of one is at hand (see the tokenizer's
/// `checked_leaf`): the same names, limits and refusals as tag by tag,
/// which is what a leaf split between reads still goes through.
#[test]
fn kept_leaves_are_noted_as_their_tags_would_be() {
    for content in [
        "<body>h\u{e9}llo \u{263a} \u{1d11e}</body>",
        "<body></body><body>a</body>",
        "<body>x</body ><body >y</body>",
        "<active xmlns='http://jabber.org/protocol/chatstates'/>\
         <origin-id xmlns='urn:xmpp:sid:0' id='5f3c'/><request xmlns='urn:xmpp:receipts'></request>",
        "<x xmlns='urn:x'><y>in urn:x</y><z xmlns='urn:z'>z</z></x><body>after</body>",
        "<body>a > b and a ] b</body><subject>it's \"quoted\"</subject>",
    ] {
        let body = format!("<message to='a@b'>{content}</message>");
        let expected = eager(&body);
        for chunk in [usize::MAX, 7, 1] {
            let got = one(frame_with(
                Framer::new(Limits::default(), ns::CLIENT),
                HEADER,
                &body,
                chunk,
            ));
            assert!(got.children.is_unparsed(), "{body}");
            assert_eq!(
                got.child_names().collect::<Vec<_>>(),
                expected.child_names().collect::<Vec<_>>(),
                "{body} in chunks of {chunk}"
            );
            assert_eq!(got, expected, "{body} in chunks of {chunk}");
        }
    }
    let limits = Limits {
        max_stanza_bytes: 256,
        max_depth: 3,
        max_attrs: 3,
    };
    let run = |body: &str| first_error(limits, body);
    assert_eq!(run("<message><a><b>at the limit</b></a></message>"), None);
    assert_eq!(
        run("<message><a><b><c>too deep</c></b></a></message>"),
        Some(C::PolicyViolation)
    );
    assert_eq!(
        run("<message><a><b><c/></b></a></message>"),
        Some(C::PolicyViolation)
    );
    assert_eq!(run("<message><a x='1' y='2' z='3'>t</a></message>"), None);
    assert_eq!(
        run("<message><a w='0' x='1' y='2' z='3'>t</a></message>"),
        Some(C::PolicyViolation)
    );
    assert_eq!(
        run("<message><a w='0' x='1' y='2' z='3'/></message>"),
        Some(C::PolicyViolation)
    );
    assert_eq!(
        run("<message><body>x</bod></message>"),
        Some(C::NotWellFormed)
    );
    assert_eq!(
        run("<message><body>x</body</message>"),
        Some(C::NotWellFormed)
    );
    assert_eq!(
        run("<message><body>\u{fffe}</body></message>"),
        Some(C::NotWellFormed)
    );
    assert_eq!(
        run("<message><a x='1' x='2'>t</a></message>"),
        Some(C::NotWellFormed)
    );
    assert_eq!(
        run("<message><a xmlns='http://www.w3.org/XML/1998/namespace'>t</a></message>"),
        Some(C::BadNamespacePrefix)
    );
}

#[test]
fn a_child_pushed_as_xml_means_what_the_same_child_pushed_as_a_tree_means() {
    let body = "<message to='room@muc.example.com' type='groupchat'><body>hi</body></message>";
    let child = Element::new("occupant-id", "urn:xmpp:occupant-id:0").with_attr("id", "a&b");
    let mut xml = String::new();
    child.write_to(&mut xml, "");
    for mut el in [
        lazy(body),
        as_tree(&lazy(body)),
        Element::new("message", ns::CLIENT),
    ] {
        let raw = el.children.is_unparsed();
        let mut pushed = el.clone();
        el.push_child(child.clone());
        pushed.push_child_xml("occupant-id", "urn:xmpp:occupant-id:0", &xml);
        // Raw content stays raw: the bytes are appended.
        assert_eq!(pushed.children.is_unparsed(), raw);
        assert!(pushed.has_child("occupant-id", "urn:xmpp:occupant-id:0"));
        assert_eq!(pushed.to_xml_in(ns::CLIENT), el.to_xml_in(ns::CLIENT));
        assert_eq!(as_tree(&pushed), as_tree(&el));
    }
}
