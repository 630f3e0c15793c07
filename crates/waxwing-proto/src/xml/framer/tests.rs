use super::*;
use crate::stanza::StreamCondition as C;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.com' \
    version='1.0' xml:lang='en'>";

/// Feeds `chunks` one at a time, draining events after each, and stops at
/// the first error.
fn run_chunks<'a>(
    f: &mut Framer,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<StreamEvent>, Option<StreamError>) {
    let mut events = Vec::new();
    for chunk in chunks {
        f.feed(chunk);
        loop {
            match f.next_event() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
        }
    }
    (events, None)
}

fn run_with(limits: Limits, input: &[u8]) -> (Vec<StreamEvent>, Option<StreamError>) {
    run_chunks(&mut Framer::new(limits, ns::CLIENT), [input])
}

fn run(input: &[u8]) -> (Vec<StreamEvent>, Option<StreamError>) {
    run_with(Limits::default(), input)
}

/// The error `input` ends in, checking it is also what one-byte feeding gives.
fn error_of(input: &[u8]) -> StreamError {
    error_with(Limits::default(), input)
}

fn error_with(limits: Limits, input: &[u8]) -> StreamError {
    let (_, whole) = run_with(limits, input);
    let mut f = Framer::new(limits, ns::CLIENT);
    let (_, bytewise) = run_chunks(&mut f, input.chunks(1));
    let whole =
        whole.unwrap_or_else(|| panic!("no error for {:?}", String::from_utf8_lossy(input)));
    assert_eq!(
        Some(&whole),
        bytewise.as_ref(),
        "chunking changed the error"
    );
    whole
}

fn in_stream(body: &str) -> Vec<u8> {
    format!("{HEADER}{body}").into_bytes()
}

fn stanzas(events: &[StreamEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Stanza(el) => Some(el.to_xml_in(ns::CLIENT)),
            _ => None,
        })
        .collect()
}

/// A whole c2s session as a client sends it, split where the server
/// resets the framer.
const TRANSCRIPT: [&str; 3] = [
    "<?xml version='1.0'?>\n<stream:stream xmlns='jabber:client' \
     xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>\n\
     <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
     to='example.com' version='1.0' xml:lang='en'>\
     <auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldAByMG0zMG15cjBtMzA=</auth>",
    "<stream:stream xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\" \
     to=\"example.com\" version=\"1.0\">\
     <iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>balcony</resource></bind></iq>\
     \n \n<presence/>\r\n\
     <message to='romeo@example.net' type='chat' xml:lang='en'><body>Art thou not Romeo, &amp; a Montague?</body>\
     <thread>e0ffe42b</thread><x:y xmlns:x='urn:x' x:a='1'/><![CDATA[<raw>]]></message> \
     </stream:stream>",
];

fn transcript_events(split: impl Fn(&[u8]) -> Vec<&[u8]>) -> Vec<StreamEvent> {
    let mut f = Framer::new(Limits::default(), ns::CLIENT);
    let mut all = Vec::new();
    for (i, part) in TRANSCRIPT.iter().enumerate() {
        if i > 0 {
            assert_eq!(f.buffered(), 0, "nothing pending at the reset point");
            f.reset();
        }
        let (events, err) = run_chunks(&mut f, split(part.as_bytes()));
        assert_eq!(err, None);
        all.extend(events);
    }
    all
}

#[test]
fn full_c2s_transcript() {
    let events = transcript_events(|b| vec![b]);
    let header = |lang: Option<&str>| {
        StreamEvent::Open(StreamHeader {
            ns: ns::CLIENT.into(),
            to: Some("example.com".into()),
            from: None,
            id: None,
            version: Some("1.0".into()),
            lang: lang.map(Into::into),
        })
    };
    assert_eq!(events[0], header(None));
    assert_eq!(
        events[1],
        StreamEvent::Stanza(Element::new("starttls", ns::TLS))
    );
    assert_eq!(events[2], header(Some("en")));
    assert_eq!(
        events[3],
        StreamEvent::Stanza(
            Element::new("auth", ns::SASL)
                .with_attr("mechanism", "PLAIN")
                .with_text("AGp1bGlldAByMG0zMG15cjBtMzA=")
        )
    );
    assert_eq!(events[4], header(None));
    assert_eq!(events[8], StreamEvent::Close);
    assert_eq!(events.len(), 9);
    assert_eq!(
        stanzas(&events[5..]),
        [
            // rxml hands attributes over sorted, so document order is lost.
            "<iq id='b1' type='set'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>balcony</resource></bind></iq>",
            "<presence/>",
            "<message to='romeo@example.net' type='chat' xml:lang='en'>\
             <body>Art thou not Romeo, &amp; a Montague?</body><thread>e0ffe42b</thread>\
             <y xmlns='urn:x' xmlns:ns0='urn:x' ns0:a='1'/>&lt;raw&gt;</message>",
        ]
    );
    let StreamEvent::Stanza(msg) = &events[7] else {
        panic!()
    };
    assert_eq!(msg.child("y", "urn:x").unwrap().attr("{urn:x}a"), Some("1"));
}

#[test]
fn chunking_does_not_change_events() {
    let whole = transcript_events(|b| vec![b]);
    assert_eq!(transcript_events(|b| b.chunks(1).collect()), whole);
    assert_eq!(transcript_events(|b| b.chunks(7).collect()), whole);
    for (part, text) in TRANSCRIPT.iter().enumerate() {
        for at in 0..=text.len() {
            let events = transcript_events(|b| {
                if b == text.as_bytes() {
                    let (x, y) = b.split_at(at);
                    vec![x, y]
                } else {
                    vec![b]
                }
            });
            assert_eq!(events, whole, "split part {part} at byte {at}");
        }
    }
}

#[test]
fn serialized_stanzas_reparse_identically() {
    let events = transcript_events(|b| vec![b]);
    let body: String = stanzas(&events).concat();
    let (again, err) = run(&in_stream(&body));
    assert_eq!(err, None);
    assert_eq!(stanzas(&again), stanzas(&events));
}

#[test]
fn keepalives_between_stanzas_are_ignored() {
    let (events, err) = run(&in_stream(" \n\t<presence/>\r\n  \n<presence/> "));
    assert_eq!(err, None);
    assert_eq!(stanzas(&events), ["<presence/>", "<presence/>"]);
}

#[test]
fn keepalives_reset_the_size_window() {
    // Whitespace alone, far beyond the limit in total, is not a stanza.
    let limits = Limits {
        max_stanza_bytes: 256,
        ..Limits::default()
    };
    let mut f = Framer::new(limits, ns::CLIENT);
    let header = HEADER.as_bytes().to_vec();
    let (_, err) = run_chunks(&mut f, [&header[..]]);
    assert_eq!(err, None);
    for _ in 0..100 {
        let (events, err) = run_chunks(&mut f, [&b"   \n"[..]]);
        assert_eq!((events, err), (vec![], None));
    }
}

#[test]
fn text_at_stream_level_is_bad_format() {
    assert_eq!(
        error_of(&in_stream("hello<presence/>")).condition,
        C::BadFormat
    );
    assert_eq!(error_of(&in_stream("  x")).condition, C::BadFormat);
}

#[test]
fn close_ends_the_stream() {
    let (events, err) = run(&in_stream("<presence/></stream:stream>"));
    assert_eq!(err, None);
    assert_eq!(events.last(), Some(&StreamEvent::Close));
    // Whatever follows the close is not our business any more.
    let mut f = Framer::new(Limits::default(), ns::CLIENT);
    let (events, err) = run_chunks(&mut f, [&in_stream("</stream:stream>junk<")[..]]);
    assert_eq!((events.len(), err), (2, None));
    assert_eq!(f.next_event(), Ok(None));
}

#[test]
fn header_attributes() {
    let (events, err) = run(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
        xmlns='jabber:client' from='juliet@example.com' to='example.com' id='++TR84Sm6A3hnt3Q065SnAbbk3Y=' \
        version='1.0' xml:lang='de'>");
    assert_eq!(err, None);
    assert_eq!(
        events,
        [StreamEvent::Open(StreamHeader {
            ns: ns::CLIENT.into(),
            to: Some("example.com".into()),
            from: Some("juliet@example.com".into()),
            id: Some("++TR84Sm6A3hnt3Q065SnAbbk3Y=".into()),
            version: Some("1.0".into()),
            lang: Some("de".into()),
        })]
    );
}

#[test]
fn root_namespace_and_name_checks() {
    let e = error_of(b"<stream:stream xmlns:stream='urn:wrong' xmlns='jabber:client'>");
    assert_eq!(e.condition, C::InvalidNamespace);
    let e = error_of(b"<stream xmlns='jabber:client'>");
    assert_eq!(e.condition, C::InvalidNamespace);
    let e = error_of(b"<stream:strem xmlns:stream='http://etherx.jabber.org/streams'>");
    assert_eq!(e.condition, C::BadFormat);
    let e =
        error_of(b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client'>");
    assert_eq!(e.condition, C::BadNamespacePrefix);
    let e = error_of(b"<stream xmlns='http://etherx.jabber.org/streams'>");
    assert_eq!(e.condition, C::BadNamespacePrefix);
}

#[test]
fn content_namespace_checks() {
    // Declared default namespace is for s2s, on a c2s stream.
    let e = error_of(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>",
    );
    assert_eq!(e.condition, C::InvalidNamespace);
    // Declared with references, still recognised.
    let (_, err) = run(
        b"<stream:stream xmlns='jabber&#x3a;client' xmlns:stream='http://etherx.jabber.org/streams'>",
    );
    assert_eq!(err, None);
    // No default namespace: stanzas land in no namespace.
    let bare = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
    let (events, err) = run(bare);
    assert_eq!((events.len(), err), (1, None));
    let mut input = bare.to_vec();
    input.extend_from_slice(b"<message/>");
    assert_eq!(error_of(&input).condition, C::InvalidNamespace);
    // A stanza re-declaring another content namespace.
    let e = error_of(&in_stream("<iq xmlns='jabber:server' type='get' id='1'/>"));
    assert_eq!(e.condition, C::InvalidNamespace);
    let e = error_of(&in_stream("<foo xmlns=''/>"));
    assert_eq!(e.condition, C::InvalidNamespace);
    // Nonzas in their own namespaces are fine; so are unknown ones, which
    // the negotiation layer answers.
    let (events, err) = run(&in_stream(
        "<r xmlns='urn:xmpp:sm:3'/><z xmlns='urn:unknown'/>",
    ));
    assert_eq!((stanzas(&events).len(), err), (2, None));
    // Children may be in any namespace, including none.
    let (_, err) = run(&in_stream("<message><x xmlns=''/></message>"));
    assert_eq!(err, None);
}

#[test]
fn s2s_framer_uses_its_content_namespace() {
    let mut f = Framer::new(Limits::default(), ns::SERVER);
    let input =
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>\
        <message from='a@b' to='c@d'/>";
    let (events, err) = run_chunks(&mut f, [&input[..]]);
    assert_eq!(err, None);
    let StreamEvent::Stanza(m) = &events[1] else {
        panic!()
    };
    assert!(m.is("message", ns::SERVER));
    let mut f = Framer::new(Limits::default(), ns::SERVER);
    let (_, err) = run_chunks(&mut f, [&in_stream("")[..]]);
    assert_eq!(err.unwrap().condition, C::InvalidNamespace);
}

#[test]
fn doctype_is_restricted() {
    let e = error_of(b"<?xml version='1.0'?><!DOCTYPE stream:stream><stream:stream>");
    assert_eq!(e.condition, C::RestrictedXml);
    let e = error_of(b"<!DOCTYPE x [<!ENTITY a 'b'>]><stream:stream>");
    assert_eq!(e.condition, C::RestrictedXml);
    assert_eq!(
        error_of(&in_stream("<!DOCTYPE x>")).condition,
        C::RestrictedXml
    );
}

#[test]
fn entity_declaration_is_restricted() {
    let e = error_of(&in_stream("<message><!ENTITY lol 'lol'></message>"));
    assert_eq!(e.condition, C::RestrictedXml);
}

#[test]
fn undeclared_entity_is_restricted() {
    let e = error_of(&in_stream("<message><body>&foo;</body></message>"));
    assert_eq!(e.condition, C::RestrictedXml);
    let e = error_of(&in_stream("<message to='&foo;'/>"));
    assert_eq!(e.condition, C::RestrictedXml);
}

#[test]
fn processing_instructions_are_restricted() {
    assert_eq!(
        error_of(&in_stream("<?pi data?>")).condition,
        C::RestrictedXml
    );
    assert_eq!(
        error_of(&in_stream("<message><?pi?></message>")).condition,
        C::RestrictedXml
    );
    assert_eq!(
        error_of(b"<?pi?><stream:stream>").condition,
        C::RestrictedXml
    );
    // An XML declaration anywhere but the very start is a PI too.
    let e = error_of(&in_stream("<?xml version='1.0'?>"));
    assert_eq!(e.condition, C::RestrictedXml);
    // Before the root, rxml calls a misplaced declaration a syntax error;
    // it is one (XML 1.0 §2.8), so not-well-formed is right too.
    assert_eq!(
        error_of(b" <?xml version='1.0'?>").condition,
        C::NotWellFormed
    );
}

#[test]
fn comments_are_restricted() {
    assert_eq!(
        error_of(&in_stream("<!-- c -->")).condition,
        C::RestrictedXml
    );
    let e = error_of(&in_stream("<message><!-- c --></message>"));
    assert_eq!(e.condition, C::RestrictedXml);
}

#[test]
fn unbound_prefix() {
    let e = error_of(&in_stream("<foo:message/>"));
    assert_eq!(e.condition, C::BadNamespacePrefix);
    let e = error_of(&in_stream("<message foo:bar='1'/>"));
    assert_eq!(e.condition, C::BadNamespacePrefix);
    let e = error_of(b"<stream:stream xmlns='jabber:client'>");
    assert_eq!(e.condition, C::BadNamespacePrefix);
}

#[test]
fn invalid_utf8_is_not_well_formed() {
    let mut input = in_stream("<message><body>");
    input.extend_from_slice(&[0xC3, 0x28]);
    input.extend_from_slice(b"</body></message>");
    assert_eq!(error_of(&input).condition, C::NotWellFormed);
}

#[test]
fn other_well_formedness_errors() {
    for bad in [
        "<message></presence>",
        "<message a='1' a='2'/>",
        "<message><</message>",
        "<message>\u{1}</message>",
        "</foo>",
    ] {
        assert_eq!(
            error_of(&in_stream(bad)).condition,
            C::NotWellFormed,
            "{bad}"
        );
    }
}

#[test]
fn non_utf8_encoding_declaration() {
    let e = error_of(b"<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream>");
    assert_eq!(e.condition, C::UnsupportedEncoding);
}

fn small() -> Limits {
    Limits {
        max_stanza_bytes: 256,
        max_depth: 4,
        max_attrs: 3,
    }
}

#[test]
fn oversized_stanza() {
    let body = "x".repeat(1000);
    let e = error_with(
        small(),
        &in_stream(&format!("<message><body>{body}</body></message>")),
    );
    assert_eq!(e.condition, C::PolicyViolation);
    // Just under the limit is fine, even many of them in one read.
    let ok = format!("<message><body>{}</body></message>", "x".repeat(200));
    let (events, err) = run_with(small(), &in_stream(&ok.repeat(10)));
    assert_eq!((stanzas(&events).len(), err), (10, None));
}

#[test]
fn oversized_start_tag_fails_before_it_ends() {
    let mut f = Framer::new(small(), ns::CLIENT);
    let (_, err) = run_chunks(&mut f, [&in_stream("<message")[..]]);
    assert_eq!(err, None);
    let mut fed = "<message".len();
    let err = loop {
        let (events, err) = run_chunks(&mut f, [&b" a='1'"[..]]);
        assert!(events.is_empty());
        fed += 6;
        if let Some(e) = err {
            break e;
        }
        assert!(fed <= 256, "still buffering after {fed} bytes");
    };
    assert_eq!(err.condition, C::PolicyViolation);
    // One huge attribute value trips rxml's token limit instead; same answer.
    let e = error_with(
        small(),
        &in_stream(&format!("<message to='{}", "a".repeat(1000))),
    );
    assert_eq!(e.condition, C::PolicyViolation);
    // The default limits use a capped token length; a long value fails too.
    let e = error_of(&in_stream(&format!(
        "<message to='{}'/>",
        "a".repeat(20_000)
    )));
    assert_eq!(e.condition, C::PolicyViolation);
}

#[test]
fn oversized_header() {
    let e = error_with(
        small(),
        format!("<stream:stream{}", " a='b'".repeat(100)).as_bytes(),
    );
    assert_eq!(e.condition, C::PolicyViolation);
}

#[test]
fn depth_limit() {
    // stream (0) > message (1) > a (2) > b (3) > c (4) is the deepest allowed.
    let (_, err) = run_with(small(), &in_stream("<message><a><b><c/></b></a></message>"));
    assert_eq!(err, None);
    let e = error_with(
        small(),
        &in_stream("<message><a><b><c><d/></c></b></a></message>"),
    );
    assert_eq!(e.condition, C::PolicyViolation);
}

#[test]
fn attribute_limit() {
    let (_, err) = run_with(small(), &in_stream("<message a='1' b='2' c='3'/>"));
    assert_eq!(err, None);
    let e = error_with(
        small(),
        &in_stream("<message><x a='1' b='2' c='3' d='4'/></message>"),
    );
    assert_eq!(e.condition, C::PolicyViolation);
    // Namespace declarations are not attributes.
    let (_, err) = run_with(
        small(),
        &in_stream("<message xmlns:p='urn:p' xmlns:q='urn:q' a='1' b='2' c='3'/>"),
    );
    assert_eq!(err, None);
}

#[test]
fn errors_poison_the_framer() {
    let mut f = Framer::new(Limits::default(), ns::CLIENT);
    let (_, err) = run_chunks(&mut f, [&in_stream("<!-- -->")[..]]);
    let err = err.unwrap();
    f.feed(b"<presence/>");
    assert_eq!(f.next_event(), Err(err.clone()));
    assert_eq!(f.next_event(), Err(err));
}

#[test]
fn buffered_counts_bytes_after_the_last_event() {
    let mut f = Framer::new(Limits::default(), ns::CLIENT);
    let input = in_stream("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    let (events, err) = run_chunks(&mut f, [&input[..]]);
    assert_eq!((events.len(), err), (2, None));
    assert_eq!(f.buffered(), 0);
    // Plaintext injected behind <starttls/> in the same read
    // (CVE-2011-0411): parsed or not, it must show up here.
    let injected = b"<iq type='set' id='x'><query xmlns='jabber:iq:roster'/>";
    f.feed(injected);
    assert_eq!(f.buffered(), injected.len());
    assert_eq!(f.next_event(), Ok(None));
    assert_eq!(f.buffered(), injected.len());
    f.feed(b"</iq>");
    assert!(matches!(f.next_event(), Ok(Some(StreamEvent::Stanza(_)))));
    assert_eq!(f.buffered(), 0);
    f.feed(b"  ");
    assert_eq!(f.next_event(), Ok(None));
    assert_eq!(f.buffered(), 0, "a keepalive is an event");
}

#[test]
fn reset_reparses_pipelined_bytes() {
    // A client that sends its new header right behind the SASL exchange:
    // the bytes the old parser already consumed belong to the new stream.
    let mut f = Framer::new(Limits::default(), ns::CLIENT);
    let input = in_stream(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AA==</auth>{HEADER}<presence/>"
    ));
    f.feed(&input);
    assert!(matches!(f.next_event(), Ok(Some(StreamEvent::Open(_)))));
    let Ok(Some(StreamEvent::Stanza(auth))) = f.next_event() else {
        panic!()
    };
    assert!(auth.is("auth", ns::SASL));
    f.reset();
    assert!(matches!(f.next_event(), Ok(Some(StreamEvent::Open(_)))));
    let Ok(Some(StreamEvent::Stanza(p))) = f.next_event() else {
        panic!()
    };
    assert!(p.is("presence", ns::CLIENT));
    assert_eq!(f.next_event(), Ok(None));
}

#[test]
fn a_new_header_read_before_reset_is_bad_format() {
    // Callers reset right after the element that restarts the stream (the
    // c2s task does). A header that reaches the old parser anyway is a
    // stream header inside the stream, refused at once rather than waited
    // on as an element that never closes.
    let mut f = Framer::new(Limits::default(), ns::CLIENT);
    f.feed(&in_stream(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
    ));
    assert!(matches!(f.next_event(), Ok(Some(StreamEvent::Open(_)))));
    assert!(matches!(f.next_event(), Ok(Some(StreamEvent::Stanza(_)))));
    f.feed(&HEADER.as_bytes()[21..]); // without the XML declaration
    f.feed(b"<presence/>");
    let err = f.next_event().unwrap_err();
    assert_eq!(err.condition, C::BadFormat);
}

#[test]
fn rxml_error_messages_we_match_on() {
    // map_error matches rxml's RestrictedXml strings; if rxml rewords
    // them, this fails instead of the mapping silently degrading.
    let parse_err = |opts: rxml::Options, input: &[u8]| {
        let mut p = Parser::with_options(opts);
        let mut r = input;
        loop {
            match p.parse(&mut r, false) {
                Ok(_) => continue,
                Err(EndOrError::Error(e)) => return e,
                Err(EndOrError::NeedMoreData) => panic!("no error"),
            }
        }
    };
    let short = rxml::Options {
        max_token_length: 8,
        ..Default::default()
    };
    assert_eq!(
        parse_err(short, b"<a b='0123456789'/>"),
        rxml::Error::RestrictedXml("long name or reference")
    );
    assert_eq!(
        parse_err(
            rxml::Options::default(),
            b"<?xml version='1.0' encoding='latin1'?>"
        ),
        rxml::Error::RestrictedXml("only utf-8 encoding is allowed")
    );
}

#[test]
fn scan_start_tag_reads_default_namespace() {
    let (q, d) = scan_start_tag(b"\n <stream:stream a=\"x'\" xmlns = 'a&amp;b' b='&#60;'>");
    assert_eq!((q, d.as_deref()), (&b"stream:stream"[..], Some("a&b")));
    let (q, d) = scan_start_tag(b"<stream:stream xmlns:stream='s'/>");
    assert_eq!((q, d), (&b"stream:stream"[..], None));
    assert_eq!(unescape(b"&lt;&#x41;&#66;&bogus;&"), "<AB&");
}

#[test]
fn releasing_idle_buffers_keeps_the_stream_intact() {
    let mut f = Framer::new(Limits::default(), ns::CLIENT);
    f.feed(&in_stream("<presence/>"));
    assert!(matches!(f.next_event(), Ok(Some(StreamEvent::Open(_)))));
    assert!(matches!(f.next_event(), Ok(Some(StreamEvent::Stanza(_)))));
    f.release_idle_buffers();
    // Mid-stanza it must do nothing harmful either.
    f.feed(b"<message><bo");
    assert_eq!(f.next_event(), Ok(None));
    f.release_idle_buffers();
    f.feed(b"dy>hi</body></message>");
    let Ok(Some(StreamEvent::Stanza(m))) = f.next_event() else {
        panic!("the split message")
    };
    assert_eq!(
        m.child("body", ns::CLIENT).map(|b| b.text()).as_deref(),
        Some("hi")
    );
}

#[test]
fn a_released_parser_comes_back_with_the_headers_namespaces() {
    let header = "<?xml version='1.0'?>\n <stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' xmlns:x='urn:x' to='example.com' \
        version='1.0' xml:lang='en'>";
    let mut f = Framer::new(Limits::default(), ns::CLIENT);
    f.feed(format!("{header}<presence/>").as_bytes());
    assert!(matches!(f.next_event(), Ok(Some(StreamEvent::Open(_)))));
    assert!(matches!(f.next_event(), Ok(Some(StreamEvent::Stanza(_)))));
    assert_eq!(f.next_event(), Ok(None));
    f.release_idle_buffers();
    assert!(
        f.tokenizer.is_none() && f.parser.is_none(),
        "idle: no parser held"
    );
    // A prefix declared only on the stream header still resolves.
    f.feed(b"<message><x:y/></message>");
    let Ok(Some(StreamEvent::Stanza(m))) = f.next_event() else {
        panic!("the message after the release")
    };
    assert!(m.child("y", "urn:x").is_some());
    f.release_idle_buffers();
    // Limits and stream close still work on a rebuilt parser.
    f.feed(b"</stream:stream>");
    assert_eq!(f.next_event(), Ok(Some(StreamEvent::Close)));
}

#[test]
fn a_released_parser_still_enforces_the_size_limit() {
    let limits = Limits {
        max_stanza_bytes: 256,
        ..Limits::default()
    };
    let mut f = Framer::new(limits, ns::CLIENT);
    f.feed(format!("{HEADER}<presence/>").as_bytes());
    assert!(matches!(f.next_event(), Ok(Some(StreamEvent::Open(_)))));
    assert!(matches!(f.next_event(), Ok(Some(StreamEvent::Stanza(_)))));
    f.release_idle_buffers();
    f.feed(b"<");
    assert_eq!(f.next_event(), Ok(None));
    f.feed(format!("message>{}", "x".repeat(300)).as_bytes());
    assert!(matches!(f.next_event(), Err(e) if e.condition == C::PolicyViolation));
}

#[test]
fn a_huge_header_keeps_its_tokenizer() {
    let pad = "p".repeat(MAX_REOPEN_HEADER);
    let header = HEADER.replace("to='example.com'", &format!("to='example.com' pad='{pad}'"));
    let mut f = Framer::new(Limits::default(), ns::CLIENT);
    f.feed(format!("{header}<presence/>").as_bytes());
    assert!(matches!(f.next_event(), Ok(Some(StreamEvent::Open(_)))));
    assert!(matches!(f.next_event(), Ok(Some(StreamEvent::Stanza(_)))));
    f.release_idle_buffers();
    assert!(
        f.tokenizer.is_some(),
        "no re-parse of a huge header per wake-up"
    );
}

/// Issue 14: a stanza trickled in holds about its own size, not the parsed
/// bytes and the tree both (a 200 KB text node held about 470 KB).
#[test]
fn a_partial_stanza_costs_about_its_own_size() {
    let mut f = Framer::new(Limits::default(), ns::CLIENT);
    let (events, err) = run_chunks(&mut f, [&in_stream("<presence><status>")[..]]);
    assert_eq!((events.len(), err), (1, None));
    let chunk = [b'x'; 2048];
    for _ in 0..100 {
        let (events, err) = run_chunks(&mut f, [&chunk[..]]);
        assert_eq!((events.len(), err), (0, None));
    }
    assert_eq!(f.buffered(), "<presence><status>".len() + 204_800);
    assert!(
        f.buf.capacity() <= 4 * chunk.len(),
        "parsed bytes are not kept: {} bytes of buffer",
        f.buf.capacity()
    );
    let text = match f.nodes.last() {
        Some(crate::xml::element::Node::Text(t)) => t.capacity(),
        other => panic!("expected text, got {other:?}"),
    };
    assert!(text <= 204_800 * 9 / 8 + 4096, "text capacity {text}");
    // And the stanza still comes out whole.
    let (events, err) = run_chunks(&mut f, [&b"</status></presence>"[..]]);
    assert_eq!(err, None);
    let [StreamEvent::Stanza(el)] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(el.children().next().unwrap().text().len(), 204_800);
}

/// The same for a message, whose content is kept as bytes instead of a
/// tree (see the module docs): the buffer holds it, grown by an eighth at
/// a time, and nothing else does.
#[test]
fn a_partial_message_costs_about_its_own_size() {
    let mut f = Framer::new(Limits::default(), ns::CLIENT);
    let (events, err) = run_chunks(&mut f, [&in_stream("<message><body>")[..]]);
    assert_eq!((events.len(), err), (1, None));
    let chunk = [b'x'; 2048];
    for _ in 0..100 {
        let (events, err) = run_chunks(&mut f, [&chunk[..]]);
        assert_eq!((events.len(), err), (0, None));
    }
    assert_eq!(f.buffered(), "<message><body>".len() + 204_800);
    assert!(
        f.buf.capacity() <= 204_800 * 9 / 8 + 4096,
        "{} bytes of buffer",
        f.buf.capacity()
    );
    assert!(f.nodes.is_empty() && f.stack.len() == 1, "no tree is built");
    let (events, err) = run_chunks(&mut f, [&b"</body></message>"[..]]);
    assert_eq!(err, None);
    let [StreamEvent::Stanza(el)] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(el.children().next().unwrap().text().len(), 204_800);
}

/// The tight limits before authentication give way to the ordinary ones.
#[test]
fn limits_can_be_raised_between_elements() {
    let mut f = Framer::new(small(), ns::CLIENT);
    let big = format!("<message><body>{}</body></message>", "x".repeat(400));
    let (events, err) = run_chunks(&mut f, [&in_stream("")[..]]);
    assert_eq!((events.len(), err), (1, None));
    f.set_limits(Limits::default());
    assert_eq!(f.limits(), Limits::default());
    let (events, err) = run_chunks(&mut f, [big.as_bytes()]);
    assert_eq!((stanzas(&events).len(), err), (1, None));
    // And lowered: the next element is held to the small limit.
    f.set_limits(small());
    let (_, err) = run_chunks(&mut f, [big.as_bytes()]);
    assert_eq!(err.map(|e| e.condition), Some(C::PolicyViolation));
}

/// Found by the framer_chunks fuzz target: an invalid byte in the
/// whitespace between stanzas, which rxml reports only when the text ends,
/// was lost when the framer released its idle parser right after the text
/// event that covered it, and the next stanza came through.
#[test]
fn an_invalid_byte_between_stanzas_is_not_lost_by_an_idle_release() {
    let header = "<stream:stream xmlns='jabber:client' \
                  xmlns:stream='http://etherx.jabber.org/streams' to='localhost'>";
    for split in 1..8 {
        let mut f = Framer::new(Limits::default(), ns::CLIENT);
        f.feed(header.as_bytes());
        assert!(matches!(f.next_event(), Ok(Some(StreamEvent::Open(_)))));
        let rest: &[u8] = b"\n\n\n\n\x8a\n<message/>";
        let (a, b) = rest.split_at(split);
        let mut got = Vec::new();
        'feed: for chunk in [a, b] {
            f.feed(chunk);
            loop {
                match f.next_event() {
                    Ok(Some(ev)) => got.push(Ok(ev)),
                    Ok(None) => break,
                    Err(e) => {
                        got.push(Err(e));
                        break 'feed;
                    }
                }
            }
            f.release_idle_buffers();
        }
        assert!(
            matches!(got.as_slice(), [Err(e)] if e.condition == C::NotWellFormed),
            "split at {split}: {got:?}"
        );
    }
}

/// rxml's event lengths come out short when a multi-byte character is
/// split between reads (TCP and TLS split them all the time). Offsets are
/// taken from the bytes consumed at element boundaries instead, so such a
/// split does not make a later whitespace keepalive look like stray bytes
/// (which ended the stream with not-well-formed) or leave bytes "buffered"
/// forever (which kept an idle session's parser).
#[test]
fn split_multibyte_characters_do_not_shift_offsets() {
    let body = "<iq a='\u{e9}'><body>caf\u{e9} \u{1F600}</body ></iq> \n\
                <message><body>\u{1F600}</body></message>\t<iq/>";
    for chunk in [1, 2, 3, 5, 7] {
        let mut f = Framer::new(Limits::default(), ns::CLIENT);
        let (events, err) = run_chunks(&mut f, in_stream(body).chunks(chunk));
        assert_eq!(err, None, "chunks of {chunk}");
        assert_eq!(events.len(), 4, "chunks of {chunk}");
        assert_eq!(f.buffered(), 0, "chunks of {chunk}");
        let [_, _, StreamEvent::Stanza(m), _] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!(
            m.to_xml_in(ns::CLIENT),
            "<message><body>\u{1F600}</body></message>"
        );
    }
}

/// Each element's children are its own, however the text around and
/// inside its children is split: text is merged within one element, never
/// with a parent's or a child's text.
#[test]
fn text_stays_with_its_own_element() {
    let input = in_stream(
        "<message>a<body>b<x/>c</body>d<e>f<g>h</g></e>i<k/><l>m</l></message><presence/>",
    );
    let expected = Element::new("message", ns::CLIENT)
        .with_text("a")
        .with_child(
            Element::new("body", ns::CLIENT)
                .with_text("b")
                .with_child(Element::new("x", ns::CLIENT))
                .with_text("c"),
        )
        .with_text("d")
        .with_child(
            Element::new("e", ns::CLIENT)
                .with_text("f")
                .with_child(Element::new("g", ns::CLIENT).with_text("h")),
        )
        .with_text("i")
        .with_child(Element::new("k", ns::CLIENT))
        .with_child(Element::new("l", ns::CLIENT).with_text("m"));
    for size in [1, 2, 3, input.len()] {
        let mut f = Framer::new(Limits::default(), ns::CLIENT);
        let (events, err) = run_chunks(&mut f, input.chunks(size));
        assert_eq!(err, None);
        let [
            StreamEvent::Open(_),
            StreamEvent::Stanza(m),
            StreamEvent::Stanza(p),
        ] = &events[..]
        else {
            panic!("{events:?}")
        };
        assert_eq!(*m, expected, "chunks of {size}");
        assert_eq!(m.children.len(), 7, "a text node per run, chunks of {size}");
        assert_eq!(*p, Element::new("presence", ns::CLIENT));
        assert!(f.nodes.is_empty() && f.stack.is_empty());
    }
}
