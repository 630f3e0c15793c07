use super::*;
use crate::xml::{Element, Limits};
use std::time::{Duration, Instant};

fn req(xml: &str) -> Request {
    parse_request(xml.as_bytes(), Limits::default()).expect("parses")
}

fn creation(rid: u64) -> Request {
    req(&format!(
        "<body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}' rid='{rid}' to='example.com' \
         xml:lang='en' ver='1.6' wait='60' hold='1' xmpp:version='1.0'/>"
    ))
}

fn empty(rid: u64) -> Request {
    req(&format!("<body xmlns='{HTTPBIND}' sid='s1' rid='{rid}'/>"))
}

fn with_msg(rid: u64, text: &str) -> Request {
    req(&format!(
        "<body xmlns='{HTTPBIND}' sid='s1' rid='{rid}'>\
         <message xmlns='jabber:client' to='a@example.com'><body>{text}</body></message></body>"
    ))
}

fn msg(text: &str) -> Element {
    Element::new("message", crate::ns::CLIENT)
        .with_child(Element::new("body", crate::ns::CLIENT).with_text(text))
}

fn features() -> Element {
    Element::new("features", crate::ns::STREAM)
}

/// Drains actions into (responses by token, payload texts, other actions).
#[derive(Default, Debug)]
struct Out {
    responses: Vec<(Token, Response)>,
    payloads: Vec<String>,
    starts: Vec<bool>,
    closed: Option<Closed>,
}

fn drain(s: &mut Session) -> Out {
    let mut out = Out::default();
    while let Some(a) = s.poll_action() {
        match a {
            Action::Respond { token, response } => out.responses.push((token, response)),
            Action::Payload(el) => out
                .payloads
                .push(el.children().next().map(Element::text).unwrap_or_default()),
            Action::StreamStart { restart, .. } => out.starts.push(restart),
            Action::Closed(c) => {
                assert!(out.closed.is_none(), "closed twice");
                out.closed = Some(c);
            }
        }
    }
    out
}

/// A session whose creation request (rid 100, token 0) was answered with
/// the first features.
fn open_session(now: Instant) -> Session {
    let mut s = Session::new("s1".into(), &Policy::default(), creation(100), 0, now);
    s.set_stream_info("stream-id", "example.com");
    s.push(&features(), now);
    let out = drain(&mut s);
    assert_eq!(out.starts, vec![false]);
    assert_eq!(out.responses.len(), 1);
    s
}

fn body_of(out: &Out, token: Token) -> &str {
    &out.responses
        .iter()
        .find(|(t, _)| *t == token)
        .unwrap_or_else(|| panic!("no response for {token}: {out:?}"))
        .1
        .body
}

fn parse_body(xml: &str) -> Element {
    // Responses must be well-formed bodies readable by our own parser.
    let header = format!(
        "<stream:stream xmlns='jabber:client' xmlns:stream='{}'>",
        crate::ns::STREAM
    );
    let mut f = crate::xml::Framer::new(Limits::default(), crate::ns::CLIENT);
    f.feed(header.as_bytes());
    f.feed(xml.as_bytes());
    f.next_event().unwrap();
    match f.next_event().unwrap() {
        Some(crate::xml::StreamEvent::Stanza(el)) => el,
        other => panic!("not a body: {other:?}"),
    }
}

#[test]
fn creation_answer_carries_session_attributes_and_features() {
    let now = Instant::now();
    let mut s = Session::new("s1".into(), &Policy::default(), creation(100), 7, now);
    let out = drain(&mut s);
    assert_eq!(out.starts, vec![false]);
    assert!(out.responses.is_empty(), "held until features exist");
    s.set_stream_info("abc", "example.com");
    s.push(&features(), now);
    let out = drain(&mut s);
    let body = parse_body(body_of(&out, 7));
    assert!(body.is("body", HTTPBIND));
    for (k, v) in [
        ("sid", "s1"),
        ("wait", "60"),
        ("hold", "1"),
        ("requests", "2"),
        ("inactivity", "30"),
        ("polling", "2"),
        ("maxpause", "120"),
        ("ver", "1.6"),
        ("ack", "100"),
        ("from", "example.com"),
        ("authid", "abc"),
    ] {
        assert_eq!(body.attr(k), Some(v), "{k}");
    }
    assert_eq!(body.attr(&format!("{{{XBOSH}}}version")), Some("1.0"));
    assert_eq!(body.attr(&format!("{{{XBOSH}}}restartlogic")), Some("true"));
    assert!(body.child("features", crate::ns::STREAM).is_some());
    assert!(body_of(&out, 7).contains("<stream:features"));
}

#[test]
fn wait_and_hold_are_clamped_to_policy() {
    let now = Instant::now();
    let r = req(&format!(
        "<body xmlns='{HTTPBIND}' rid='5' to='x' ver='1.11' wait='3600' hold='5'/>"
    ));
    let s = Session::new("s".into(), &Policy::default(), r, 0, now);
    assert_eq!(s.wait(), Duration::from_secs(60));
    assert_eq!(s.hold(), 1);
    let r = req(&format!(
        "<body xmlns='{HTTPBIND}' rid='5' to='x' ver='1.11' wait='10' hold='0'/>"
    ));
    let s = Session::new("s".into(), &Policy::default(), r, 0, now);
    assert_eq!(s.wait(), Duration::from_secs(10));
    assert_eq!(s.hold(), 0);
}

#[test]
fn payloads_go_out_in_rid_order_and_the_held_request_is_answered() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(1, empty(101), now);
    assert!(drain(&mut s).responses.is_empty(), "held");
    s.handle(2, with_msg(102, "hi"), now);
    let out = drain(&mut s);
    assert_eq!(out.payloads, vec!["hi"]);
    // hold=1: the older request is answered as the newer one is held.
    assert_eq!(out.responses.len(), 1);
    assert_eq!(out.responses[0].0, 1);
    s.push(&msg("back"), now);
    let out = drain(&mut s);
    let b = body_of(&out, 2);
    assert!(b.contains("back"), "{b}");
    let body = parse_body(b);
    assert_eq!(body.children().next().unwrap().ns, "jabber:client");
}

#[test]
fn out_of_order_rids_are_processed_in_order() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(2, with_msg(102, "second"), now);
    let out = drain(&mut s);
    assert!(out.payloads.is_empty(), "waits for 101");
    assert!(out.responses.is_empty());
    s.handle(1, with_msg(101, "first"), now);
    let out = drain(&mut s);
    assert_eq!(out.payloads, vec!["first", "second"]);
    // Answered in rid order: 101 first, 102 stays held.
    assert_eq!(
        out.responses.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![1]
    );
    s.push(&msg("x"), now);
    assert_eq!(drain(&mut s).responses[0].0, 2);
}

#[test]
fn rid_beyond_the_window_is_item_not_found() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(1, empty(103), now); // window is 101..=102
    let out = drain(&mut s);
    assert!(body_of(&out, 1).contains("condition='item-not-found'"));
    assert!(body_of(&out, 1).contains("type='terminate'"));
    assert_eq!(
        out.closed,
        Some(Closed::Error(BindingCondition::ItemNotFound))
    );
    assert!(s.is_closed());
}

#[test]
fn repeated_rid_gets_the_same_answer_and_an_old_one_item_not_found() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(1, empty(101), now);
    s.push(&msg("once"), now);
    let first = body_of(&drain(&mut s), 1).to_owned();
    s.handle(2, empty(101), now);
    let out = drain(&mut s);
    assert_eq!(body_of(&out, 2), first, "resent from the cache");
    assert!(out.payloads.is_empty());
    // The creation answer (rid 100) is still kept (requests=2)...
    s.handle(3, empty(100), now);
    assert!(body_of(&drain(&mut s), 3).contains("sid='s1'"));
    // ...but rid 99 was never seen.
    s.handle(4, empty(99), now);
    let out = drain(&mut s);
    assert!(body_of(&out, 4).contains("item-not-found"));
    assert!(s.is_closed());
}

#[test]
fn resending_too_often_is_a_policy_violation() {
    let now = Instant::now();
    let mut s = open_session(now);
    for t in 1..=MAX_RESENDS_FOR_TEST {
        s.handle(t, empty(100), now);
        assert!(!drain(&mut s).responses[0].1.body.contains("terminate"));
    }
    s.handle(99, empty(100), now);
    let out = drain(&mut s);
    assert!(body_of(&out, 99).contains("policy-violation"));
}
const MAX_RESENDS_FOR_TEST: u64 = 3;

#[test]
fn repeated_rid_while_held_answers_the_old_connection_recoverably() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(1, empty(101), now);
    s.handle(2, empty(101), now);
    let out = drain(&mut s);
    assert!(body_of(&out, 1).contains("type='error'"));
    s.push(&msg("to the new one"), now);
    assert!(body_of(&drain(&mut s), 2).contains("to the new one"));
}

#[test]
fn empty_answer_after_wait() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(1, empty(101), now);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(60)));
    s.handle_timeout(now + Duration::from_secs(59));
    assert!(drain(&mut s).responses.is_empty());
    s.handle_timeout(now + Duration::from_secs(60));
    let out = drain(&mut s);
    let b = parse_body(body_of(&out, 1));
    assert!(!b.has_children());
    assert!(b.attr("type").is_none());
}

#[test]
fn inactivity_ends_the_session_quietly() {
    let now = Instant::now();
    let mut s = open_session(now);
    // Nothing held after the creation answer: the inactivity clock runs.
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(30)));
    s.handle_timeout(now + Duration::from_secs(30));
    let out = drain(&mut s);
    assert!(out.responses.is_empty());
    assert_eq!(out.closed, Some(Closed::Inactive));
    assert!(s.is_closed());
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_held_request_keeps_the_session_alive() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(1, empty(101), now);
    s.handle_timeout(now + Duration::from_secs(45));
    assert!(drain(&mut s).closed.is_none());
}

#[test]
fn pause_answers_everything_and_stretches_inactivity_until_the_next_request() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(1, empty(101), now);
    s.handle(
        2,
        req(&format!(
            "<body xmlns='{HTTPBIND}' sid='s1' rid='102' pause='600'/>"
        )),
        now,
    );
    let out = drain(&mut s);
    assert_eq!(out.responses.len(), 2);
    assert!(!parse_body(body_of(&out, 2)).has_children());
    // Clamped to maxpause.
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(120)));
    s.handle_timeout(now + Duration::from_secs(100));
    assert!(drain(&mut s).closed.is_none());
    let later = now + Duration::from_secs(100);
    s.handle(3, empty(103), later);
    s.handle_timeout(later + Duration::from_secs(60));
    let out = drain(&mut s);
    assert!(body_of(&out, 3).len() < 80);
    assert_eq!(s.poll_timeout(), Some(later + Duration::from_secs(90)));
}

#[test]
fn too_many_simultaneous_requests_is_a_policy_violation() {
    let now = Instant::now();
    let mut s = open_session(now);
    // 101 missing; 102 waits. A third open request exceeds requests=2.
    s.handle(2, with_msg(102, "a"), now);
    s.handle(1, with_msg(101, "b"), now);
    drain(&mut s);
    // Now 102 is held; 104 with 103 missing, then 103 — fine; but three
    // open at once is not.
    s.handle(4, with_msg(104, "c"), now);
    let out = drain(&mut s);
    assert!(out.closed.is_none(), "{out:?}");
    s.handle(5, with_msg(103, "d"), now);
    let out = drain(&mut s);
    assert!(body_of(&out, 5).contains("policy-violation"), "{out:?}");
    assert!(body_of(&out, 2).contains("other-request"));
    assert!(body_of(&out, 4).contains("other-request"));
}

#[test]
fn polling_faster_than_allowed_is_a_policy_violation() {
    let now = Instant::now();
    let r = req(&format!(
        "<body xmlns='{HTTPBIND}' rid='10' to='x' ver='1.11' wait='60' hold='0'/>"
    ));
    let mut s = Session::new("s1".into(), &Policy::default(), r, 0, now);
    s.push(&features(), now);
    drain(&mut s);
    let t1 = now + Duration::from_secs(5);
    s.handle(1, empty(11), t1);
    assert!(
        parse_body(body_of(&drain(&mut s), 1))
            .attr("type")
            .is_none()
    );
    // The poll got nothing; the next one comes after 1 s of the 2 allowed.
    s.handle(2, empty(12), t1 + Duration::from_secs(1));
    let out = drain(&mut s);
    assert!(body_of(&out, 2).contains("policy-violation"));
}

#[test]
fn polling_at_the_allowed_rate_is_fine() {
    let now = Instant::now();
    let r = req(&format!(
        "<body xmlns='{HTTPBIND}' rid='10' to='x' ver='1.11' wait='60' hold='0'/>"
    ));
    let mut s = Session::new("s1".into(), &Policy::default(), r, 0, now);
    s.push(&features(), now);
    drain(&mut s);
    for i in 1..5u64 {
        s.handle(i, empty(10 + i), now + Duration::from_secs(2 * i));
        assert!(drain(&mut s).closed.is_none());
    }
}

#[test]
fn restart_starts_a_new_stream_and_ignores_payloads() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(
        1,
        req(&format!(
            "<body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}' sid='s1' rid='101' \
             to='example.com' xmpp:restart='true'><message xmlns='jabber:client'/></body>"
        )),
        now,
    );
    let out = drain(&mut s);
    assert_eq!(out.starts, vec![true]);
    assert!(out.payloads.is_empty());
    assert!(out.responses.is_empty(), "held for the new features");
    s.push(&features(), now);
    let b = drain(&mut s);
    let body = body_of(&b, 1);
    assert!(body.contains("<stream:features"));
    assert!(!body.contains("sid="), "creation attributes only once");
}

#[test]
fn client_terminate_delivers_payloads_and_answers_all() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(1, empty(101), now);
    s.handle(
        2,
        req(&format!(
            "<body xmlns='{HTTPBIND}' sid='s1' rid='102' type='terminate'>\
             <presence xmlns='jabber:client' type='unavailable'/></body>"
        )),
        now,
    );
    let out = drain(&mut s);
    assert_eq!(out.payloads.len(), 1);
    assert!(body_of(&out, 1).contains("type='terminate'"));
    assert!(!body_of(&out, 2).contains("terminate"));
    assert_eq!(out.closed, Some(Closed::ClientTerminated));
    s.handle(3, empty(103), now);
    assert!(body_of(&drain(&mut s), 3).contains("item-not-found"));
}

#[test]
fn server_close_with_a_stream_error_reaches_the_client() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(1, empty(101), now);
    drain(&mut s);
    s.push(&msg("last words"), now);
    // The push answered 101; nothing is held when the close comes.
    drain(&mut s);
    s.push(&msg("queued"), now);
    let err = crate::stanza::StreamError::new(crate::stanza::StreamCondition::Conflict);
    s.close(Some(serialize_payload(&err.to_element())), now);
    assert!(drain(&mut s).responses.is_empty());
    s.handle(2, empty(102), now);
    let out = drain(&mut s);
    let body = parse_body(body_of(&out, 2));
    assert_eq!(body.attr("type"), Some("terminate"));
    assert_eq!(body.attr("condition"), Some("remote-stream-error"));
    assert!(body.child("error", crate::ns::STREAM).is_some());
    assert!(body_of(&out, 2).contains("queued"));
    assert_eq!(out.closed, Some(Closed::ServerClosed));
}

#[test]
fn server_close_answers_a_held_request_at_once() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(1, empty(101), now);
    s.close(None, now);
    let out = drain(&mut s);
    assert!(body_of(&out, 1).contains("type='terminate'"));
    assert_eq!(out.closed, Some(Closed::ServerClosed));
}

#[test]
fn outgoing_queue_reports_full() {
    let now = Instant::now();
    let policy = Policy {
        max_outgoing_bytes: 1000,
        ..Policy::default()
    };
    let mut s = Session::new("s1".into(), &policy, creation(100), 0, now);
    s.push(&features(), now);
    drain(&mut s);
    let big = "x".repeat(600);
    assert!(!s.push(&msg(&big), now));
    assert!(s.push(&msg(&big), now), "full");
    s.handle(1, empty(101), now);
    let out = drain(&mut s);
    assert!(body_of(&out, 1).len() > 1200);
    assert!(!s.is_full(), "drained by the answer");
}

#[test]
fn acked_answers_are_forgotten() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(
        1,
        req(&format!(
            "<body xmlns='{HTTPBIND}' sid='s1' rid='101' ack='100'/>"
        )),
        now,
    );
    drain(&mut s);
    s.handle(2, empty(100), now);
    assert!(body_of(&drain(&mut s), 2).contains("item-not-found"));
}

#[test]
fn ack_attribute_reports_requests_received_beyond_the_answered_one() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(1, empty(101), now);
    s.handle(2, with_msg(102, "m"), now);
    let out = drain(&mut s);
    assert_eq!(parse_body(body_of(&out, 1)).attr("ack"), Some("102"));
    s.push(&msg("r"), now);
    // Answering 102 itself: no ack attribute.
    assert_eq!(parse_body(body_of(&drain(&mut s), 2)).attr("ack"), None);
}

#[test]
fn key_sequence_is_checked() {
    fn sha1_hex(s: &str) -> String {
        use sha1::{Digest, Sha1};
        super::session::hex_for_test(&Sha1::digest(s.as_bytes()))
    }
    let k1 = sha1_hex("seed");
    let k2 = sha1_hex(&k1);
    let k3 = sha1_hex(&k2);
    let now = Instant::now();
    let r = req(&format!(
        "<body xmlns='{HTTPBIND}' rid='1' to='x' ver='1.11' newkey='{k3}'/>"
    ));
    let mut s = Session::new("s1".into(), &Policy::default(), r, 0, now);
    s.push(&features(), now);
    drain(&mut s);
    s.handle(
        1,
        req(&format!(
            "<body xmlns='{HTTPBIND}' sid='s1' rid='2' key='{k2}'/>"
        )),
        now,
    );
    assert!(drain(&mut s).closed.is_none());
    s.push(&msg("x"), now);
    drain(&mut s);
    // Reusing a key (or a wrong one) ends the session.
    s.handle(
        2,
        req(&format!(
            "<body xmlns='{HTTPBIND}' sid='s1' rid='3' key='{k2}'/>"
        )),
        now,
    );
    let out = drain(&mut s);
    assert!(body_of(&out, 2).contains("item-not-found"));
}

#[test]
fn stanza_in_a_foreign_namespace_is_a_stream_error() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(
        1,
        req(&format!(
            "<body xmlns='{HTTPBIND}' sid='s1' rid='101'><message xmlns='jabber:server'/></body>"
        )),
        now,
    );
    let out = drain(&mut s);
    assert!(body_of(&out, 1).contains("invalid-namespace"));
    assert!(s.is_closed());
}

#[test]
fn legacy_client_errors_are_http_statuses() {
    let now = Instant::now();
    let r = req(&format!("<body xmlns='{HTTPBIND}' rid='1' to='x'/>"));
    let mut s = Session::new("s1".into(), &Policy::default(), r, 0, now);
    s.push(&features(), now);
    drain(&mut s);
    s.handle(1, empty(50), now);
    let out = drain(&mut s);
    assert_eq!(out.responses[0].1.status, 404);
}

#[test]
fn an_unfilled_gap_ends_the_session() {
    let now = Instant::now();
    let mut s = open_session(now);
    s.handle(2, empty(102), now);
    let due = s.poll_timeout().unwrap();
    assert_eq!(due, now + Duration::from_secs(60));
    s.handle_timeout(due);
    let out = drain(&mut s);
    assert!(body_of(&out, 2).contains("item-not-found"));
    assert!(s.is_closed());
}

// ---- the wrapper parser ----

#[test]
fn parses_attributes() {
    let r = req(&format!(
        "<?xml version='1.0' encoding='utf-8'?><body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}' \
         rid='9007199254740991' to='example.com' xml:lang='de' ver='1.10' wait='60' hold='1' \
         ack='1' xmpp:version='1.0' route='xmpp:example.com:5222'/>"
    ));
    assert_eq!(r.rid, MAX_RID);
    assert_eq!(r.to.as_deref(), Some("example.com"));
    assert_eq!(r.lang.as_deref(), Some("de"));
    assert_eq!(r.ver, Some((1, 10)));
    assert_eq!(r.wait, Some(60));
    assert_eq!(r.ack, Some(1));
    assert_eq!(r.xmpp_version.as_deref(), Some("1.0"));
    assert!(r.sid.is_none());
}

#[test]
fn payloads_without_a_namespace_are_jabber_client() {
    let r = req(&format!(
        "<body xmlns='{HTTPBIND}' sid='s' rid='2'>\n  <message to='a@b'><body>x</body></message>\n  \
         <auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>\n</body>"
    ));
    assert_eq!(r.payloads.len(), 2);
    assert_eq!(r.payloads[0].ns, "jabber:client");
    assert_eq!(r.payloads[0].children().next().unwrap().ns, "jabber:client");
    assert_eq!(r.payloads[1].ns, "urn:ietf:params:xml:ns:xmpp-sasl");
}

#[test]
fn refuses_bad_wrappers() {
    let bad_binding = [
        format!("<body xmlns='{HTTPBIND}'/>"),
        format!("<body xmlns='{HTTPBIND}' rid='0'/>"),
        format!("<body xmlns='{HTTPBIND}' rid='-1'/>"),
        format!("<body xmlns='{HTTPBIND}' rid='9007199254740992'/>"),
        format!("<body xmlns='{HTTPBIND}' rid='1' wait='x'/>"),
        format!("<body xmlns='{HTTPBIND}' rid='1' type='other'/>"),
        format!("<body xmlns='{HTTPBIND}' rid='1'>text</body>"),
        "<body rid='1'/>".to_owned(),
        format!("<notbody xmlns='{HTTPBIND}' rid='1'/>"),
    ];
    for b in bad_binding {
        assert!(
            matches!(
                parse_request(b.as_bytes(), Limits::default()),
                Err(ParseError::Binding(_))
            ),
            "{b}"
        );
    }
    let bad_xml = [
        format!("<body xmlns='{HTTPBIND}' rid='1'>"),
        format!("<body xmlns='{HTTPBIND}' rid='1'/><body/>"),
        format!("<!DOCTYPE x><body xmlns='{HTTPBIND}' rid='1'/>"),
        format!("<body xmlns='{HTTPBIND}' rid='1'><!-- c --></body>"),
        format!("<body xmlns='{HTTPBIND}' rid='1'><message>&ent;</message></body>"),
        "<?xml version='1.0' encoding='ISO-8859-1'?><body/>".to_owned(),
        "not xml".to_owned(),
    ];
    for b in bad_xml {
        assert!(
            matches!(
                parse_request(b.as_bytes(), Limits::default()),
                Err(ParseError::Xml(_))
            ),
            "{b}"
        );
    }
}

#[test]
fn size_and_depth_limits_hold() {
    let limits = Limits {
        max_stanza_bytes: 200,
        max_depth: 3,
        max_attrs: 8,
    };
    let big = format!(
        "<body xmlns='{HTTPBIND}' rid='1'><message><body>{}</body></message></body>",
        "x".repeat(300)
    );
    let Err(ParseError::Xml(e)) = parse_request(big.as_bytes(), limits) else {
        panic!("too big accepted")
    };
    assert_eq!(e.condition, crate::stanza::StreamCondition::PolicyViolation);
    // Three levels below <body/> are fine, four are not.
    let ok = format!("<body xmlns='{HTTPBIND}' rid='1'><a><b><c/></b></a></body>");
    assert!(parse_request(ok.as_bytes(), limits).is_ok());
    let deep = format!("<body xmlns='{HTTPBIND}' rid='1'><a><b><c><d/></c></b></a></body>");
    assert!(parse_request(deep.as_bytes(), limits).is_err());
}

#[test]
fn unknown_session_and_unreadable_answers() {
    let r = unknown_session();
    assert!(r.body.contains("condition='item-not-found'"));
    assert!(r.body.contains("type='terminate'"));
    let r = unreadable(&ParseError::Binding("x".into()));
    assert!(r.body.contains("bad-request"));
    let r = unreadable(&ParseError::Xml(crate::stanza::StreamError::new(
        crate::stanza::StreamCondition::RestrictedXml,
    )));
    let body = parse_body(&r.body);
    assert_eq!(body.attr("condition"), Some("remote-stream-error"));
    assert!(r.body.contains("restricted-xml"));
}
