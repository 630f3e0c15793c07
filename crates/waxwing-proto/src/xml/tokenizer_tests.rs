//! The tokenizer against rxml: every rule of `tokenizer`'s module docs as a
//! hand-written case, each fed whole, byte by byte and split at every
//! position (and with idle releases), through the framer, the framer
//! building every tree (so a message's content is read in full mode, not
//! only validated) and `reference::RxmlFramer`, which must all agree;
//! each case also states the
//! outcome it expects, so that agreeing on a wrong answer fails too. Then
//! generated streams (proptest) built from the same fragments.

use super::reference::{Outcome, RxmlFramer, compare};
use super::{Framer, Limits, StreamEvent};
use crate::ns;
use crate::stanza::StreamCondition as C;
use proptest::prelude::*;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:p='urn:p' to='example.com' \
    version='1.0' xml:lang='en'>";

const LIMITS: Limits = Limits {
    max_stanza_bytes: 4096,
    max_depth: 8,
    max_attrs: 8,
};

/// Small limits: a 300-byte stanza, depth 4, 3 attributes, and so a
/// token limit of 300 too.
const TINY: Limits = Limits {
    max_stanza_bytes: 300,
    max_depth: 4,
    max_attrs: 3,
};

fn agree(limits: Limits, input: &[u8]) {
    let check = |chunks: &[&[u8]], release: &[bool]| {
        if let Err(d) = compare(limits, ns::CLIENT, chunks, release) {
            panic!(
                "the framer differs (from itself building trees, or from rxml) on {:?} \
                 in chunks {:?}\n  new:   {:?}\n  other: {:?}",
                String::from_utf8_lossy(input),
                chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
                d.0,
                d.1
            );
        }
    };
    check(&[input], &[]);
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    check(&bytes, &[]);
    check(&bytes, &vec![true; bytes.len()]);
    for at in 1..input.len() {
        let (a, b) = input.split_at(at);
        check(&[a, b], &[true]);
    }
}

/// The framer's outcome for `body` after the header (fed whole, then a
/// NUL), after checking that rxml agrees at every split.
fn outcome_with(limits: Limits, body: &str) -> Outcome {
    outcome_bytes(limits, format!("{HEADER}{body}").as_bytes())
}

fn outcome_bytes(limits: Limits, input: &[u8]) -> Outcome {
    agree(limits, input);
    let mut f = Framer::new(limits, ns::CLIENT);
    let mut events = Vec::new();
    f.feed(input);
    loop {
        match f.next_event() {
            Ok(Some(ev)) => events.push(ev),
            Ok(None) => break,
            Err(e) => {
                return Outcome {
                    events: events.iter().map(|e| format!("{e:?}")).collect(),
                    buffered: Vec::new(),
                    error: Some(e.condition),
                };
            }
        }
    }
    Outcome {
        events: events.iter().map(|e| format!("{e:?}")).collect(),
        buffered: vec![f.buffered()],
        error: None,
    }
}

/// The condition `body` ends the stream with (the NUL appended by
/// `compare` is not part of it: here the body itself must be refused).
fn error(body: &str) -> C {
    error_with(LIMITS, body)
}

fn error_with(limits: Limits, body: &str) -> C {
    outcome_with(limits, body)
        .error
        .unwrap_or_else(|| panic!("no error for {body:?}"))
}

fn error_bytes(body: &[u8]) -> C {
    let mut input = HEADER.as_bytes().to_vec();
    input.extend_from_slice(body);
    outcome_bytes(LIMITS, &input)
        .error
        .unwrap_or_else(|| panic!("no error for {:?}", String::from_utf8_lossy(body)))
}

/// The stanzas `body` gives, as XML, and that it gives no error.
fn stanzas(body: &str) -> Vec<String> {
    let o = outcome_with(LIMITS, body);
    assert_eq!(o.error, None, "{body:?}");
    let mut f = Framer::new(LIMITS, ns::CLIENT);
    f.feed(format!("{HEADER}{body}").as_bytes());
    let mut out = Vec::new();
    while let Some(ev) = f.next_event().unwrap() {
        if let StreamEvent::Stanza(el) = ev {
            out.push(el.to_xml_in(ns::CLIENT));
        }
    }
    out
}

fn one(body: &str) -> String {
    let s = stanzas(body);
    assert_eq!(s.len(), 1, "{body:?}: {s:?}");
    s.into_iter().next().unwrap()
}

#[test]
fn stanzas_come_out_alike() {
    // Attributes in rxml's order: by namespace, then name.
    assert_eq!(
        one("<message to='a@b' type='chat' id='1'><body>hi</body></message>"),
        "<message id='1' to='a@b' type='chat'><body>hi</body></message>"
    );
    assert_eq!(stanzas(" <a/>\n<b/>\t<c></c>\r\n").len(), 3);
}

#[test]
fn utf8_and_the_char_production() {
    assert_eq!(one("<m>é€😀</m>"), "<m>é€😀</m>");
    // Invalid UTF-8: a stray continuation byte, a truncated sequence, an
    // overlong form, a surrogate, beyond U+10FFFF.
    for bad in [
        &b"<m>\x80</m>"[..],
        b"<m>\xc3</m>",
        b"<m>\xc0\xaf</m>",
        b"<m>\xed\xa0\x80</m>",
        b"<m>\xf4\x90\x80\x80</m>",
        b"<m a='\xff'/>",
        b"<m\xff/>",
    ] {
        assert_eq!(error_bytes(bad), C::NotWellFormed);
    }
    // C0 controls other than tab, LF and CR; U+FFFE and U+FFFF.
    for c in [0x01u8, 0x08, 0x0b, 0x0c, 0x1f] {
        assert_eq!(
            error_bytes(&[b'<', b'm', b'>', c, b'<', b'/', b'm', b'>']),
            C::NotWellFormed
        );
        assert_eq!(
            error_bytes(&[b'<', b'm', b' ', b'a', b'=', b'"', c, b'"', b'/', b'>']),
            C::NotWellFormed
        );
    }
    assert_eq!(error("<m>\u{fffe}</m>"), C::NotWellFormed);
    assert_eq!(error("<m>\u{ffff}</m>"), C::NotWellFormed);
    assert_eq!(error("<m a='\u{ffff}'/>"), C::NotWellFormed);
    assert_eq!(error("<m><![CDATA[\u{fffe}]]></m>"), C::NotWellFormed);
    assert_eq!(
        one("<m>\u{fffd}\u{10ffff}\u{7f}\u{85}</m>"),
        "<m>\u{fffd}\u{10ffff}\u{7f}\u{85}</m>"
    );
}

/// The fast paths skip the character checks for ASCII runs only (a
/// message's start tag, a kept leaf's text): a non-ASCII byte anywhere in
/// them, first or after ASCII, before or after a quote, is checked as
/// before.
#[test]
fn non_ascii_bytes_in_ascii_fast_paths_are_checked() {
    let msg = |to: &str, body: &str| {
        format!("<message to='{to}' type='chat' id='k'><body>{body}</body></message>")
    };
    let fine = msg("é@b/\"ü\"", "x é 😀 y");
    assert_eq!(
        one(&fine),
        "<message id='k' to='é@b/&quot;ü&quot;' type='chat'><body>x é 😀 y</body></message>"
    );
    for bad in [
        msg("\u{fffe}", "x"),
        msg("a@b/é\u{ffff}", "x"),
        msg("a@b/\"\u{ffff}", "x"),
        msg("a@b", "\u{fffe}"),
        msg("a@b", "x é\u{ffff}"),
    ] {
        assert_eq!(error(&bad), C::NotWellFormed, "{bad}");
    }
    for bad in [
        &b"<message to='a@b\xff' id='k'><body>x</body></message>"[..],
        b"<message to='\xc3' id='k'><body>x</body></message>",
        b"<message to='a@b' id='k'><body>x\xc3</body></message>",
        b"<message to='a@b' id='k'><body>\xe9t\xe9</body></message>",
    ] {
        assert_eq!(error_bytes(bad), C::NotWellFormed);
    }
}

#[test]
fn names() {
    assert_eq!(one("<a.b-c_d é='1'/>"), "<a.b-c_d é='1'/>");
    assert_eq!(one("<ĉu><ĉu/></ĉu>"), "<ĉu><ĉu/></ĉu>");
    for bad in [
        "<1a/>",
        "<-a/>",
        "<.a/>",
        "<a:b:c xmlns:a='u'/>",
        "<:a/>",
        "<a:/>",
        "<a 1b='x'/>",
        "<a b:='x'/>",
        "< a/>",
        "<a/ >",
        "<a></b>",
        "<a><b></a></b>",
        "<a></ a>",
        "<a>\u{2000}</a><\u{2000}/>",
        "<a\u{37e}/>",
        "<a b='1'c='2'/>",
        "<a b/>",
        "<a b=/>",
        "<a b='1' ='2'/>",
        "<a 'x'/>",
        "</a>",
        "<a></a b>",
        "<a></a 'x'>",
    ] {
        assert_eq!(error(bad), C::NotWellFormed, "{bad}");
    }
    // The end tag must repeat the prefix, not just the namespace.
    assert_eq!(error("<p:a></a>"), C::NotWellFormed);
}

#[test]
fn line_ends_and_attribute_values_are_normalised() {
    assert_eq!(one("<m>a\r\nb\rc\r\r\nd</m>"), "<m>a\nb\nc\n\nd</m>");
    assert_eq!(one("<m a='x\ty\nz\r\nw'/>"), "<m a='x y z w'/>");
    assert_eq!(stanzas("<m a='\"' b=\"'\"/>").len(), 1);
    assert_eq!(error("<m a='<'/>"), C::NotWellFormed);
    // rxml's deviations, which the tokenizer keeps (module docs).
    assert_eq!(error("<m a='x\ry'/>"), C::NotWellFormed);
    assert_eq!(one("<m a='x\r'/>"), "<m a='x'/>");
    assert_eq!(one("<m><![CDATA[a]\rb]]></m>"), "<m>a]&#13;b</m>");
    assert_eq!(
        one("<m xmlns='urn:a' xmlns='urn:b'/>"),
        "<m xmlns='urn:b'/>"
    );
}

#[test]
fn references() {
    assert_eq!(
        one("<m a='&lt;&#x41;&#66;'>&amp;&lt;&gt;&apos;&quot;&#x1F600;&#0000065;</m>"),
        "<m a='&lt;AB'>&amp;&lt;&gt;'\"😀A</m>"
    );
    for bad in [
        "<m>&#0;</m>",
        "<m>&#xD800;</m>",
        "<m>&#xFFFE;</m>",
        "<m>&#x110000;</m>",
        "<m>&#;</m>",
        "<m>&#x;</m>",
        "<m>&;</m>",
        "<m>&#X41;</m>",
        "<m>&#12a;</m>",
        "<m>&am p;</m>",
        "<m>&</m>",
        "<m a='&#1;'/>",
    ] {
        assert_eq!(error(bad), C::NotWellFormed, "{bad}");
    }
    for bad in [
        "<m>&nbsp;</m>",
        "<m a='&foo;'/>",
        "<m>&#000000065;</m>",
        "<m>&abcdefghi;</m>",
        "<m>&a:b;</m>",
    ] {
        assert_eq!(error(bad), C::RestrictedXml, "{bad}");
    }
    // Eight digits are allowed, nine are not.
    assert_eq!(one("<m>&#00000065;</m>"), "<m>A</m>");
}

#[test]
fn cdata_and_the_cdata_end_in_text() {
    assert_eq!(one("<m><![CDATA[<&]]]]></m>"), "<m>&lt;&amp;]]</m>");
    assert_eq!(one("<m>]] ]>]</m>"), "<m>]] ]&gt;]</m>");
    assert_eq!(error("<m>]]></m>"), C::NotWellFormed);
    assert_eq!(error("<m>a]]]></m>"), C::NotWellFormed);
    assert_eq!(error("<m><![CDAT[x]]></m>"), C::NotWellFormed);
    // At stream level: text is bad-format, whitespace in CDATA or a
    // reference is not a keepalive.
    assert_eq!(error("<![CDATA[x]]>"), C::BadFormat);
    assert_eq!(error("<![CDATA[ ]]>"), C::NotWellFormed);
    assert_eq!(error("&#32;"), C::NotWellFormed);
    assert_eq!(error("x"), C::BadFormat);
}

#[test]
fn restricted_xml() {
    for bad in [
        "<m><!-- c --></m>",
        "<!-- c -->",
        "<?xml version='1.0'?>",
        "<m><?pi x?></m>",
        "<!DOCTYPE x>",
        "<m><!ENTITY x 'y'></m>",
    ] {
        assert_eq!(error(bad), C::RestrictedXml, "{bad}");
    }
    assert_eq!(error("<m><!-x></m>"), C::NotWellFormed);
    assert_eq!(error("<m><!1></m>"), C::NotWellFormed);
}

#[test]
fn duplicates_and_namespaces() {
    assert_eq!(
        stanzas("<m xmlns:a='urn:x' a:k='1' k='2'><a:c/></m>").len(),
        1
    );
    for bad in [
        "<m k='1' k='2'/>",
        "<m xmlns:a='urn:x' xmlns:b='urn:x' a:k='1' b:k='2'/>",
        "<m xmlns:a='urn:x' xmlns:a='urn:y'/>",
        "<m xmlns:a=''/>",
    ] {
        assert_eq!(error(bad), C::NotWellFormed, "{bad}");
    }
    for bad in [
        "<q:m/>",
        "<m q:k='1'/>",
        "<m xmlns:xmlns='urn:x'/>",
        "<m xmlns:xml='urn:x'/>",
        "<m xmlns:a='http://www.w3.org/XML/1998/namespace'/>",
        "<m xmlns='http://www.w3.org/XML/1998/namespace'/>",
        "<xmlns:m/>",
        "<m><x:y xmlns:x='urn:x'/><x:y/></m>",
    ] {
        assert_eq!(error(bad), C::BadNamespacePrefix, "{bad}");
    }
    // The header's prefix is in scope; xml is bound; a default can be
    // undeclared (and a stanza in no namespace is then refused).
    assert_eq!(
        stanzas("<m><p:x xml:lang='de' xmlns:xml='http://www.w3.org/XML/1998/namespace'/></m>")
            .len(),
        1
    );
    assert_eq!(error("<message xmlns=''/>"), C::InvalidNamespace);
    assert_eq!(stanzas("<m><x xmlns=''/></m>").len(), 1);
    assert_eq!(error("<stream:stream>"), C::BadFormat);
}

/// A message's content, which the framer keeps as bytes and the tokenizer
/// only validates, is refused exactly as content that is built (`agree`
/// runs both, and rxml): every rule and every limit still holds in it.
#[test]
fn kept_content_is_checked_like_built_content() {
    let kept = |content: &str| format!("<message to='a@b' id='k'>{content}</message>");
    for (content, want) in [
        ("<x k='1' k='2'/>", C::NotWellFormed),
        ("<x a='1' b='2' c='3' a='4'/>", C::NotWellFormed),
        (
            "<x xmlns:a='urn:x' xmlns:b='urn:x' a:k='1' b:k='2'/>",
            C::NotWellFormed,
        ),
        ("<x xml:lang='en' xml:lang='de'/>", C::NotWellFormed),
        ("<x k='1' q:k='1' k='2'/>", C::BadNamespacePrefix),
        ("<x q:k='1'/>", C::BadNamespacePrefix),
        ("<q:x/>", C::BadNamespacePrefix),
        ("<x xmlns:xml='urn:x'/>", C::BadNamespacePrefix),
        ("<x k='&#0;'/>", C::NotWellFormed),
        ("<x k='&nbsp;'/>", C::RestrictedXml),
        ("<x k='a<b'/>", C::NotWellFormed),
        ("<x k='\u{1}'/>", C::NotWellFormed),
        ("<x k='1'k='2'/>", C::NotWellFormed),
        (
            "<x a='1' b='2' c='3' d='4' e='5' f='6' g='7' h='8' i='9'/>",
            C::PolicyViolation,
        ),
        (
            "<a><b><c><d><e><f><g><h/></g></f></e></d></c></b></a>",
            C::PolicyViolation,
        ),
        ("<x>a &foo; b</x>", C::RestrictedXml),
        ("<x>]]></x>", C::NotWellFormed),
        ("<x></y>", C::NotWellFormed),
    ] {
        assert_eq!(error(&kept(content)), want, "{content}");
    }
    // The same rules pass what they should, and the recorded child names
    // are checked against the bytes (`reference::check_child_names`).
    let fine = one(&kept(
        "<body xml:lang='en' a='&apos;' b=\"'\">x &amp; <![CDATA[<y>]]></body>\
         <active xmlns='http://jabber.org/protocol/chatstates'/>\
         <origin-id xmlns='urn:xmpp:sid:0' id='5f3c9e2a-7b1d-4c8e-9a6f-000000000001'/>\
         <x xmlns='urn:x'><y k='1'><z/></y></x>",
    ));
    // Kept as it came (the content was validated, not rebuilt).
    assert!(fine.contains("x &amp; <![CDATA[<y>]]></body>"), "{fine}");
}

#[test]
fn attribute_order_and_duplicates() {
    // Sorted by namespace (none first), then local name; the same local
    // name in different namespaces (or none) is no duplicate.
    assert_eq!(
        one("<m xmlns:b='urn:y' xmlns:a='urn:x' b:k='1' a:k='2' k='3' xml:lang='en'/>"),
        "<m k='3' xml:lang='en' xmlns:ns0='urn:x' ns0:k='2' xmlns:ns1='urn:y' ns1:k='1'/>"
    );
    // A prefix declaration and an attribute may share a name; a
    // declaration may come after the attribute that uses it.
    assert_eq!(one("<m a='1' xmlns:a='urn:x'/>"), "<m a='1'/>");
    assert_eq!(
        one("<m a:k='1' xmlns:a='urn:x'/>"),
        "<m xmlns:ns0='urn:x' ns0:k='1'/>"
    );
    for bad in [
        "<m xmlns:a='urn:x' xmlns:a='urn:x'/>",
        "<m xmlns:a='urn:x' k='1' xmlns:a='urn:y'/>",
        // Two prefixes for one namespace: one attribute twice.
        "<m xmlns:a='urn:x' a:k='1' xmlns:b='urn:x' b:k='2'/>",
        "<m xmlns:a='urn:p' a:k='1' p:k='2'/>",
        "<m xml:lang='en' xml:lang='de'/>",
        "<m b='1' a='2' b='3'/>",
    ] {
        assert_eq!(error(bad), C::NotWellFormed, "{bad}");
    }
    // A duplicate before an undeclared prefix is reported, an undeclared
    // prefix before a duplicate is.
    assert_eq!(error("<m k='1' k='2' q:k='3'/>"), C::NotWellFormed);
    assert_eq!(error("<m k='1' q:k='3' k='2'/>"), C::BadNamespacePrefix);
}

#[test]
fn long_attribute_lists() {
    // Past the insertion-sorted length: sorted and checked for duplicates
    // as a whole, with the same outcomes.
    let limits = Limits {
        max_attrs: 64,
        ..LIMITS
    };
    let names: Vec<String> = (0..64).rev().map(|i| format!("a{i:02}")).collect();
    let attrs =
        |names: &[String]| -> String { names.iter().map(|n| format!(" {n}='v'")).collect() };
    let body = format!("<m{} p:z='1' xml:lang='en'/>", attrs(&names[2..]));
    let o = outcome_with(limits, &body);
    assert_eq!(o.error, None);
    let mut sorted = names[2..].to_vec();
    sorted.sort();
    let want = format!(
        "<m{} xml:lang='en' xmlns:ns0='urn:p' ns0:z='1'/>",
        attrs(&sorted)
    );
    let mut f = Framer::new(limits, ns::CLIENT);
    f.feed(format!("{HEADER}{body}").as_bytes());
    let mut got = Vec::new();
    while let Some(ev) = f.next_event().unwrap() {
        if let StreamEvent::Stanza(el) = ev {
            got.push(el.to_xml_in(ns::CLIENT));
        }
    }
    assert_eq!(got, [want]);
    // The maximum count, and one more.
    let full = format!("<m{}/>", attrs(&names));
    assert_eq!(outcome_with(limits, &full).error, None);
    let over = format!("<m{} x='1'/>", attrs(&names));
    assert_eq!(error_with(limits, &over), C::PolicyViolation);
    // A duplicate at the very end of a long list, of its first or last
    // attribute in sorted order; duplicates outrank the count limit.
    for (dup, within) in [
        ("a00", 64),
        ("a63", 64),
        ("a31", 64),
        ("a24", 40),
        ("a40", 40),
    ] {
        let body = format!("<m{} {dup}='w'/>", attrs(&names[..within]));
        assert_eq!(error_with(limits, &body), C::NotWellFormed, "{dup}");
    }
    // The duplicate is namespaced, through two prefixes.
    let body = format!(
        "<m xmlns:a='urn:x' a:k='1'{} xmlns:b='urn:x' b:k='2'/>",
        attrs(&names[..30])
    );
    assert_eq!(error_with(limits, &body), C::NotWellFormed);
    // Undeclared prefix after or before the duplicate.
    let body = format!("<m{} a40='x' q:k='1'/>", attrs(&names[..30]));
    assert_eq!(error_with(limits, &body), C::NotWellFormed);
    let body = format!("<m q:k='1'{} a40='x'/>", attrs(&names[..30]));
    assert_eq!(error_with(limits, &body), C::BadNamespacePrefix);
}

#[test]
fn text_runs_on_through_references_in_a_stanza() {
    // One text, whatever the references, at any depth.
    assert_eq!(
        one("<m>a&amp;b\r\n&lt;c&#x41;]&gt;<b>&apos;x&quot;</b>&amp;</m>"),
        "<m>a&amp;b\n&lt;cA]&gt;<b>'x\"</b>&amp;</m>"
    );
    // What comes before a reference is checked at the reference, before
    // the reference itself: an invalid character is not-well-formed even
    // when the reference after it is restricted.
    for bad in [
        &b"<m>\xff&foo;</m>"[..],
        b"<m>\xc3&amp;</m>",
        b"<m>a&amp;\xef\xbf\xbe&foo;</m>",
    ] {
        assert_eq!(error_bytes(bad), C::NotWellFormed, "{bad:?}");
    }
    assert_eq!(error("<m>\u{fffe}&foo;</m>"), C::NotWellFormed);
    assert_eq!(error("<m>é&amp;\u{fffe}</m>"), C::NotWellFormed);
    assert_eq!(error("<m>é&amp;ü&foo;</m>"), C::RestrictedXml);
    // Past the token limit the text is still split, references or not.
    let limits = Limits {
        max_stanza_bytes: 40_000,
        ..LIMITS
    };
    let input = format!("{HEADER}<m>{}</m>", "é&amp;xyz&lt;".repeat(2500)).into_bytes();
    for at in [1, 300, 17_000, 30_001, input.len() - 3] {
        let (a, b) = input.split_at(at);
        assert!(
            compare(limits, ns::CLIENT, &[a, b], &[true]).is_ok(),
            "split at {at}"
        );
    }
    let mut f = Framer::new(limits, ns::CLIENT);
    f.feed(&input);
    let mut text = None;
    while let Some(ev) = f.next_event().unwrap() {
        if let StreamEvent::Stanza(el) = ev {
            text = Some(el.text());
        }
    }
    assert_eq!(text.as_deref(), Some("é&xyz<".repeat(2500).as_str()));
    // At stream level, text is still handed out before a reference.
    assert_eq!(error(" &amp; "), C::BadFormat);
}

#[test]
fn many_prefix_declarations() {
    // Past the length where declarations are indexed by prefix: lookups,
    // shadowing and its end, and duplicates, as with a few.
    let decls: String = (0..40).map(|i| format!(" xmlns:p{i}='urn:{i}'")).collect();
    let inner: String = (0..40)
        .map(|i| format!(" xmlns:p{i}='urn:in{i}'"))
        .collect();
    let el = one(&format!(
        "<m{decls} p3:k='1' p39:k='2'><p5:c{inner} p5:k='x' p0:j='y'/><p5:d p7:k='z'/></m>"
    ));
    assert!(
        el.contains("<c xmlns='urn:in5'")
            && el.contains("xmlns:ns0='urn:in0' ns0:j='y'")
            && el.contains("<d xmlns='urn:5'")
            && el.contains("xmlns:ns0='urn:7' ns0:k='z'"),
        "{el}"
    );
    for bad in [
        format!("<m{decls} xmlns:p7='urn:x'/>"),
        format!("<m{decls} xmlns:p39='urn:39'/>"),
        format!("<m><c{decls}/><d{decls} p1:k='1' xmlns:p0='u'/></m>"),
        format!("<m{decls} p1:k='1' p1:k='2'/>"),
    ] {
        assert_eq!(error(&bad), C::NotWellFormed, "{bad}");
    }
    // The first tag's declarations are gone with it.
    let bad = format!("<m><c{decls}/><p1:d/></m>");
    assert_eq!(error(&bad), C::BadNamespacePrefix);
    // A redeclaration on a child is no duplicate.
    assert_eq!(
        stanzas(&format!("<m{decls}><c{decls}/><c{decls}/></m>")).len(),
        1
    );
}

#[test]
fn limits_fire_at_the_same_byte() {
    let deep = "<a><b><c><d><e>".to_string();
    assert_eq!(error_with(TINY, &deep), C::PolicyViolation);
    assert_eq!(
        error_with(TINY, "<a w='1' x='2' y='3' z='4'/>"),
        C::PolicyViolation
    );
    assert_eq!(
        outcome_with(TINY, "<a w='1' x='2' y='3' xmlns:z='u'/>").error,
        None
    );
    let big = format!("<m>{}</m>", "x".repeat(400));
    assert_eq!(error_with(TINY, &big), C::PolicyViolation);
    // Just under the size limit, the stanza comes through.
    let fits = format!("<m>{}</m>", "x".repeat(280));
    assert_eq!(outcome_with(TINY, &fits).events.len(), 2);
    // Names and values over the token limit (the stanza limit caps it).
    let limits = Limits {
        max_stanza_bytes: 60_000,
        ..LIMITS
    };
    for body in [
        format!("<{}/>", "n".repeat(16 * 1024 + 1)),
        format!("<m {}='1'/>", "n".repeat(16 * 1024 + 1)),
        format!("<m a='{}'/>", "v".repeat(16 * 1024 + 1)),
        format!("<m a='{}&amp;'/>", "v".repeat(16 * 1024)),
    ] {
        let mut f = Framer::new(limits, ns::CLIENT);
        f.feed(format!("{HEADER}{body}").as_bytes());
        let mut err = None;
        for _ in 0..4 {
            if let Err(e) = f.next_event() {
                err = Some(e.condition);
                break;
            }
        }
        assert_eq!(err, Some(C::PolicyViolation), "{}", &body[..20]);
    }
    // The same against rxml, where the token limit (16 KiB) is below the
    // stanza limit: whole, byte by byte and split in a few places.
    let long = 16 * 1024;
    for body in [
        format!("<{}/>", "n".repeat(long)),
        format!("<{}/>", "n".repeat(long + 1)),
        format!("<m {}='1'/>", "n".repeat(long + 1)),
        format!("<m a='{}'/>", "v".repeat(long)),
        format!("<m a='{}'/>", "v".repeat(long + 1)),
        format!("<m a='{}&amp;'/>", "v".repeat(long - 1)),
        format!("<m a='{}&amp;'/>", "v".repeat(long)),
        format!("<m a='{}&amp;x'/>", "v".repeat(long)),
        format!("<m a='{}\r\r'/>", "v".repeat(long)),
        format!("<m>{}&amp;{}</m>", "t".repeat(long), "u".repeat(long)),
        format!("<m><![CDATA[{}]]]]></m>", "c".repeat(long * 2)),
        format!("{}<m/>", " ".repeat(long * 2)),
        format!("{}&#32;<m/>", " ".repeat(long)),
        format!("<m>{}é</m>", "t".repeat(long - 1)),
    ] {
        let input = format!("{HEADER}{body}").into_bytes();
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let mut splits: Vec<Vec<&[u8]>> = vec![vec![&input[..]], bytes];
        for at in [HEADER.len() + 1, HEADER.len() + long, input.len() - 3] {
            let (a, b) = input.split_at(at);
            splits.push(vec![a, b]);
        }
        for chunks in splits {
            let release = vec![true; chunks.len()];
            if let Err(d) = compare(limits, ns::CLIENT, &chunks, &release) {
                panic!(
                    "{}…: new {:?}, rxml {:?}",
                    &body[..12],
                    d.0.error,
                    d.1.error
                );
            }
        }
    }
    // Long text is fine, split or not.
    let text = format!("<m>{}</m>", "t".repeat(20_000));
    let mut f = Framer::new(limits, ns::CLIENT);
    f.feed(format!("{HEADER}{text}").as_bytes());
    assert!(f.next_event().unwrap().is_some());
    assert!(matches!(
        f.next_event().unwrap(),
        Some(StreamEvent::Stanza(_))
    ));
}

/// `<stream:stream …/>` opens and at once ends the stream, as rxml says;
/// the tokenizer is never built from such a header (found by the
/// `framer_chunks` fuzz target: `regressions/framer_chunks-empty-root`).
#[test]
fn an_empty_stream_header_opens_and_ends_the_stream() {
    let empty = HEADER.replace("xml:lang='en'>", "xml:lang='en'/>");
    for tail in ["", "</stream:stream>", "<message/>", "</\u{15}trea"] {
        let o = outcome_bytes(LIMITS, format!("{empty}{tail}").as_bytes());
        assert_eq!(o.error, None, "{tail:?}");
        assert_eq!(o.events.len(), 2, "{tail:?}: {:?}", o.events);
        assert!(o.events[0].starts_with("Open("), "{:?}", o.events);
        assert_eq!(o.events[1], "Close");
    }
}

#[test]
fn keepalives_and_the_stream_end() {
    let o = outcome_with(LIMITS, "  \n\t <a/>   </stream:stream>ignored");
    assert_eq!(o.error, None);
    assert_eq!(o.events.len(), 3);
    assert_eq!(error("\u{a0}"), C::BadFormat);
}

/// Fragments the generated streams are made of: well-formed pieces, and
/// a few that break a rule.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("<message to='a@b' type='chat'><body>hi</body></message>".to_string()),
        2 => Just("<iq type='get' id='1'><q xmlns='urn:q' xmlns:z='urn:z' z:a='1' a='2'/></iq>".to_string()),
        2 => Just(" \r\n".to_string()),
        1 => Just("<presence><p:x xml:lang='en'>&amp;&#x41;&#66;<![CDATA[]]]]></p:x></presence>".to_string()),
        1 => Just("<m>é😀\r\r\n]]</m>".to_string()),
        1 => Just("<m a='\t\r\nx'>".to_string()),
        1 => Just("</m>".to_string()),
        1 => "[<>&;#x'\"= /!?\\[\\]a-z:é\r\n\t-]{1,12}",
        1 => prop::sample::select(vec![
            "<!-- c -->", "&foo;", "<?x?>", "]]>", "<q:a/>", "<a k='1' k='2'/>",
            "<m>\u{fffe}</m>", "<!DOCTYPE>", "<m xmlns:a=''/>", "&#0;",
        ]).prop_map(str::to_string),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn generated_streams_agree(
        parts in prop::collection::vec(fragment(), 1..8),
        splits in prop::collection::vec(1usize..40, 1..20),
        tiny in any::<bool>(),
    ) {
        let input = format!("{HEADER}{}", parts.concat()).into_bytes();
        let mut chunks = Vec::new();
        let mut release = Vec::new();
        let mut at = 0;
        for (i, s) in splits.iter().cycle().enumerate() {
            if at >= input.len() {
                break;
            }
            let end = (at + s).min(input.len());
            chunks.push(&input[at..end]);
            release.push(i % 3 == 0);
            at = end;
        }
        let limits = if tiny { TINY } else { LIMITS };
        if let Err(d) = compare(limits, ns::CLIENT, &chunks, &release) {
            prop_assert!(false, "{:?}\n new: {:?}\n rxml: {:?}", String::from_utf8_lossy(&input), d.0, d.1);
        }
    }
}

/// Found by the framer_diff fuzz target
/// (`fuzz/regressions/framer_diff-cr-run-before-reference`): between
/// stanzas a run of CRs, each read ending in a CR (so that neither parser
/// hands the text out yet, a LF may follow), then a reference. Both hand
/// out the whitespace before the `&`, a keepalive; `reference::RxmlFramer`
/// had kept only the last 16 of its bytes and could not judge a text
/// shorter than its bytes (CRs become LFs, CR LF one LF), so its boundary
/// stayed before the run and its `buffered()` counted it.
#[test]
fn a_cr_run_before_a_reference_between_stanzas_is_a_keepalive() {
    let run = format!("\r\n{}", "\r".repeat(26));
    let body = format!("{run}&quot;{}:rxmlns:xml->>", "\r".repeat(15));
    // Text at stream level, so bad-format, at every split.
    assert_eq!(error_bytes(body.as_bytes()), C::BadFormat);
    // The run in reads of 3 bytes, as the fuzz target fed it.
    let input = format!("{HEADER}{body}");
    let chunks: Vec<&[u8]> = input.as_bytes().chunks(3).collect();
    if let Err(d) = compare(LIMITS, ns::CLIENT, &chunks, &[]) {
        panic!("the framer differs\n  new:   {:?}\n  other: {:?}", d.0, d.1);
    }
    // Exactly the bytes after the keepalive are buffered, in both.
    let mut new = Framer::new(LIMITS, ns::CLIENT);
    let mut old = RxmlFramer::new(LIMITS, ns::CLIENT);
    let mut buffered = Vec::new();
    for part in [HEADER, &run, "&q"] {
        new.feed(part.as_bytes());
        old.feed(part.as_bytes());
        while new.next_event().unwrap().is_some() {}
        while old.next_event().unwrap().is_some() {}
        buffered.push((new.buffered(), old.buffered()));
    }
    assert_eq!(buffered, [(0, 0), (run.len(), run.len()), (2, 2)]);
}
