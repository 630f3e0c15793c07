//! XEP-0313 message archives: both sides archived, XEP-0359 stanza-ids,
//! XEP-0059 paging in both directions, filters, preferences, and the
//! corrections/retractions of issue 6 item 10.

mod support;

use support::*;
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

const MAM: &str = "urn:xmpp:mam:2";
const RSM: &str = "http://jabber.org/protocol/rsm";
const FORWARD: &str = "urn:xmpp:forward:0";
const SID: &str = "urn:xmpp:sid:0";

/// What a query returned: the result messages, in order, and the `<fin/>`.
struct Answer {
    results: Vec<Element>,
    fin: Element,
}

impl Answer {
    /// `<result id>` of each result.
    fn ids(&self) -> Vec<String> {
        self.results
            .iter()
            .map(|m| result_of(m).attr("id").unwrap().to_string())
            .collect()
    }

    /// The body of each archived message.
    fn bodies(&self) -> Vec<String> {
        self.results
            .iter()
            .map(|m| {
                forwarded_message(m)
                    .child("body", ns::CLIENT)
                    .map(|b| b.text())
                    .unwrap_or_default()
            })
            .collect()
    }

    fn complete(&self) -> bool {
        self.fin.attr("complete") == Some("true")
    }

    fn rsm(&self, name: &str) -> Option<String> {
        self.fin
            .child("set", RSM)
            .and_then(|s| s.child(name, RSM))
            .map(|e| e.text())
    }
}

fn result_of(m: &Element) -> &Element {
    m.child("result", MAM).expect("a MAM result")
}

fn forwarded_message(m: &Element) -> &Element {
    result_of(m)
        .child("forwarded", FORWARD)
        .and_then(|f| f.child("message", ns::CLIENT))
        .expect("a forwarded message")
}

/// Sends `<query queryid='…'>inner</query>` and collects the answer. Other
/// stanzas arriving meanwhile (presence) are skipped.
async fn query(c: &mut Client, inner: &str) -> Answer {
    match query_raw(c, inner).await {
        Ok(a) => a,
        Err(e) => panic!("query failed: {e}"),
    }
}

async fn query_raw(c: &mut Client, inner: &str) -> Result<Answer, Element> {
    let id = c.id("mam");
    let qid = format!("q-{id}");
    c.send(&format!(
        "<iq type='set' id='{id}'><query xmlns='{MAM}' queryid='{qid}'>{inner}</query></iq>"
    ))
    .await;
    let mut results = Vec::new();
    loop {
        let el = c.next(&format!("MAM results for {id}")).await;
        if el.name == "iq" && el.attr("id") == Some(id.as_str()) {
            if el.attr("type") != Some("result") {
                return Err(el);
            }
            let fin = el.child("fin", MAM).expect("<fin/> in the result").clone();
            return Ok(Answer { results, fin });
        }
        if el.name == "message" && el.child("result", MAM).is_some() {
            let r = result_of(&el);
            assert_eq!(r.attr("queryid"), Some(qid.as_str()), "{el}");
            assert_eq!(el.attr("from"), Some(bare_of(c).as_str()), "{el}");
            assert!(
                r.child("forwarded", FORWARD)
                    .and_then(|f| f.child("delay", ns::DELAY))
                    .and_then(|d| d.attr("stamp"))
                    .is_some(),
                "{el}"
            );
            results.push(el);
        }
    }
}

fn bare_of(c: &Client) -> String {
    c.full().split('/').next().unwrap().to_string()
}

fn form(fields: &str) -> String {
    format!(
        "<x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>{fields}</x>"
    )
}

fn field(var: &str, value: &str) -> String {
    format!("<field var='{var}'><value>{value}</value></field>")
}

fn rsm(inner: &str) -> String {
    format!("<set xmlns='{RSM}'>{inner}</set>")
}

/// The next message (skipping presence).
async fn next_message(c: &mut Client) -> Element {
    loop {
        let el = c.next("a message").await;
        if el.name == "message" {
            return el;
        }
    }
}

async fn online(s: &TestServer, user: &str, resource: &str) -> Client {
    let mut c = s.login(user, resource).await;
    c.available(0).await;
    c
}

async fn say(c: &mut Client, to: &str, body: &str) {
    c.send(&format!(
        "<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>"
    ))
    .await;
}

fn stanza_id(m: &Element, by: &str) -> Option<String> {
    m.children()
        .find(|c| c.is("stanza-id", SID) && c.attr("by") == Some(by))
        .and_then(|c| c.attr("id"))
        .map(str::to_string)
}

#[tokio::test]
async fn both_sides_are_archived_and_the_delivered_stanza_id_is_the_archive_id() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut romeo = online(&s, "romeo", "orchard").await;
    let mut juliet = online(&s, "juliet", "balcony").await;

    say(&mut romeo, "juliet@localhost", "hello").await;
    let got = next_message(&mut juliet).await;
    assert_eq!(got.child("body", ns::CLIENT).unwrap().text(), "hello");
    let sid = stanza_id(&got, "juliet@localhost").expect("stanza-id stamped by the archive");

    let j = query(&mut juliet, "").await;
    assert_eq!(j.ids(), std::slice::from_ref(&sid));
    assert_eq!(j.bodies(), ["hello"]);
    let fwd = forwarded_message(&j.results[0]);
    assert_eq!(fwd.attr("from"), Some("romeo@localhost/orchard"));
    assert!(j.complete());
    assert_eq!(j.rsm("count").as_deref(), Some("1"));
    assert_eq!(j.rsm("first"), Some(sid.clone()));
    assert_eq!(j.rsm("last"), Some(sid.clone()));

    let r = query(&mut romeo, "").await;
    assert_eq!(r.bodies(), ["hello"]);
    assert_eq!(
        forwarded_message(&r.results[0]).attr("to"),
        Some("juliet@localhost")
    );
    // The sender's archive has its own id; the recipient's is not leaked to the sender.
    assert_ne!(r.ids(), [sid]);

    // Juliet answers; both archives now hold the conversation in order.
    say(&mut juliet, "romeo@localhost/orchard", "who is there").await;
    let got = next_message(&mut romeo).await;
    let rsid = stanza_id(&got, "romeo@localhost").unwrap();
    let r = query(&mut romeo, "").await;
    assert_eq!(r.bodies(), ["hello", "who is there"]);
    assert_eq!(r.ids()[1], rsid);
    let j = query(&mut juliet, "").await;
    assert_eq!(j.bodies(), ["hello", "who is there"]);
}

#[tokio::test]
async fn paging_backwards_from_the_end_and_forwards_by_id() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut romeo = online(&s, "romeo", "r").await;
    for i in 1..=7 {
        say(&mut romeo, "juliet@localhost", &format!("m{i}")).await;
    }
    romeo.sync().await;

    // The last page, then older pages with <before>first</before>.
    let page = query(&mut romeo, &rsm("<max>3</max><before/>")).await;
    assert_eq!(page.bodies(), ["m5", "m6", "m7"]);
    assert!(!page.complete());
    assert_eq!(page.rsm("count").as_deref(), Some("7"));
    let all = query(&mut romeo, "").await.ids();
    assert_eq!(page.rsm("first").as_deref(), Some(all[4].as_str()));
    assert_eq!(page.rsm("last").as_deref(), Some(all[6].as_str()));
    let index = page
        .fin
        .child("set", RSM)
        .and_then(|s| s.child("first", RSM))
        .and_then(|f| f.attr("index"));
    assert_eq!(index, Some("4"));

    let page = query(
        &mut romeo,
        &rsm(&format!("<max>3</max><before>{}</before>", all[4])),
    )
    .await;
    assert_eq!(page.bodies(), ["m2", "m3", "m4"]);
    assert!(!page.complete());
    let page = query(
        &mut romeo,
        &rsm(&format!("<max>3</max><before>{}</before>", all[1])),
    )
    .await;
    assert_eq!(page.bodies(), ["m1"]);
    assert!(page.complete(), "reached the start of the archive");

    // Flipped: the same last page, newest first.
    let page = query(
        &mut romeo,
        &format!("{}<flip-page/>", rsm("<max>3</max><before/>")),
    )
    .await;
    assert_eq!(page.bodies(), ["m7", "m6", "m5"]);

    // Forwards: after-id in the form, then RSM <after> from the page's last.
    let page = query(
        &mut romeo,
        &format!(
            "{}{}",
            form(&field("after-id", &all[2])),
            rsm("<max>2</max>")
        ),
    )
    .await;
    assert_eq!(page.bodies(), ["m4", "m5"]);
    assert!(!page.complete());
    assert_eq!(page.rsm("count").as_deref(), Some("4"));
    let last = page.rsm("last").unwrap();
    let page = query(
        &mut romeo,
        &format!(
            "{}{}",
            form(&field("after-id", &all[2])),
            rsm(&format!("<max>2</max><after>{last}</after>"))
        ),
    )
    .await;
    assert_eq!(page.bodies(), ["m6", "m7"]);
    assert!(page.complete());

    // A range between two ids, and single items by id.
    let page = query(
        &mut romeo,
        &form(&format!(
            "{}{}",
            field("after-id", &all[1]),
            field("before-id", &all[4])
        )),
    )
    .await;
    assert_eq!(page.bodies(), ["m3", "m4"]);
    let page = query(
        &mut romeo,
        &form(&format!(
            "<field var='ids'><value>{}</value><value>{}</value></field>",
            all[6], all[0]
        )),
    )
    .await;
    assert_eq!(page.bodies(), ["m1", "m7"]);

    // Unknown ids are item-not-found.
    for inner in [
        form(&field("after-id", "nope")),
        form(&field("ids", "nope")),
        rsm("<before>nope</before>"),
        rsm("<after>nope</after>"),
    ] {
        let err = query_raw(&mut romeo, &inner).await.err().expect("an error");
        assert!(has_stanza_error(&err, "item-not-found"), "{err}");
    }
    // Unknown form fields are refused.
    let err = query_raw(&mut romeo, &form(&field("include-groupchat", "true")))
        .await
        .err()
        .expect("an error");
    assert!(has_stanza_error(&err, "feature-not-implemented"), "{err}");
}

#[tokio::test]
async fn with_filter_matches_bare_and_full_jids_and_time_bounds_apply() {
    let s = TestServer::start().await;
    for u in ["romeo", "juliet", "nurse"] {
        s.user(u).await;
    }
    let mut romeo = online(&s, "romeo", "r").await;
    let mut juliet = online(&s, "juliet", "balcony").await;
    let mut nurse = online(&s, "nurse", "kitchen").await;
    say(&mut juliet, "romeo@localhost", "from juliet").await;
    next_message(&mut romeo).await;
    say(&mut nurse, "romeo@localhost", "from nurse").await;
    next_message(&mut romeo).await;
    say(&mut romeo, "juliet@localhost", "to juliet").await;
    next_message(&mut juliet).await;

    let q = query(&mut romeo, &form(&field("with", "juliet@localhost"))).await;
    assert_eq!(q.bodies(), ["from juliet", "to juliet"]);
    let q = query(
        &mut romeo,
        &form(&field("with", "juliet@localhost/balcony")),
    )
    .await;
    assert_eq!(q.bodies(), ["from juliet"]);
    let q = query(&mut romeo, &form(&field("with", "nurse@localhost"))).await;
    assert_eq!(q.bodies(), ["from nurse"]);

    let q = query(&mut romeo, &form(&field("start", "2000-01-01T00:00:00Z"))).await;
    assert_eq!(q.results.len(), 3);
    let q = query(&mut romeo, &form(&field("end", "2000-01-01T00:00:00Z"))).await;
    assert!(q.results.is_empty() && q.complete());
    let q = query(&mut romeo, &form(&field("start", "2999-01-01T00:00:00Z"))).await;
    assert!(q.results.is_empty());
}

#[tokio::test]
async fn offline_messages_are_archived_and_arrive_stamped() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut romeo = online(&s, "romeo", "r").await;
    say(&mut romeo, "juliet@localhost", "while you slept").await;
    romeo.expect_nothing().await;

    let mut juliet = s.login("juliet", "balcony").await;
    let got = juliet.available(0).await;
    let msg = got
        .iter()
        .find(|e| e.name == "message")
        .expect("the offline message");
    assert!(msg.child("delay", ns::DELAY).is_some(), "{msg}");
    let sid = stanza_id(msg, "juliet@localhost").expect("stanza-id on the offline copy");
    let q = query(&mut juliet, "").await;
    assert_eq!(q.ids(), [sid]);
    assert_eq!(q.bodies(), ["while you slept"]);
}

#[tokio::test]
async fn prefs_never_keeps_messages_out_of_the_archive() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut romeo = online(&s, "romeo", "r").await;
    let mut juliet = online(&s, "juliet", "balcony").await;

    // Default prefs before any are set.
    juliet
        .send(&format!(
            "<iq type='get' id='p0'><prefs xmlns='{MAM}'/></iq>"
        ))
        .await;
    juliet
        .expect(&format!(
            "<iq type='result' id='p0'><prefs xmlns='{MAM}' default='always'/></iq>"
        ))
        .await;
    juliet
        .send(&format!(
            "<iq type='set' id='p1'><prefs xmlns='{MAM}' default='never'>\
             <always><jid>nurse@localhost</jid></always></prefs></iq>"
        ))
        .await;
    juliet
        .expect(&format!(
            "<iq type='result' id='p1'><prefs xmlns='{MAM}' default='never'>\
             <always><jid>nurse@localhost</jid></always><never/></prefs></iq>"
        ))
        .await;

    say(&mut romeo, "juliet@localhost", "secret").await;
    let got = next_message(&mut juliet).await;
    assert_eq!(stanza_id(&got, "juliet@localhost"), None, "{got}");
    assert!(query(&mut juliet, "").await.results.is_empty());
    // Romeo's own archive follows Romeo's preferences.
    assert_eq!(query(&mut romeo, "").await.bodies(), ["secret"]);

    // A <no-store/> hint keeps it out of both.
    romeo
        .send(
            "<message to='juliet@localhost' type='chat'><body>hinted</body>\
             <no-store xmlns='urn:xmpp:hints'/></message>",
        )
        .await;
    next_message(&mut juliet).await;
    assert_eq!(query(&mut romeo, "").await.bodies(), ["secret"]);
}

#[tokio::test]
async fn corrections_and_retractions_are_archived_even_without_a_body() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut romeo = online(&s, "romeo", "r").await;
    let mut juliet = online(&s, "juliet", "balcony").await;
    say(&mut romeo, "juliet@localhost", "helo").await;
    next_message(&mut juliet).await;
    romeo
        .send(
            "<message to='juliet@localhost' type='chat' id='fix'><body>hello</body>\
             <replace xmlns='urn:xmpp:message-correct:0' id='helo'/></message>",
        )
        .await;
    let fix = next_message(&mut juliet).await;
    assert!(stanza_id(&fix, "juliet@localhost").is_some());
    romeo
        .send(
            "<message to='juliet@localhost' type='chat' id='undo'>\
             <retract xmlns='urn:xmpp:message-retract:1' id='helo'/>\
             <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:message-retract:1'/></message>",
        )
        .await;
    let undo = next_message(&mut juliet).await;
    assert!(stanza_id(&undo, "juliet@localhost").is_some(), "{undo}");
    // Chat states are not archived.
    romeo
        .send(
            "<message to='juliet@localhost' type='chat'>\
             <active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        )
        .await;
    next_message(&mut juliet).await;

    for c in [&mut juliet, &mut romeo] {
        let q = query(c, "").await;
        assert_eq!(q.results.len(), 3);
        let fwd: Vec<&Element> = q.results.iter().map(forwarded_message).collect();
        assert!(
            fwd[1]
                .child("replace", "urn:xmpp:message-correct:0")
                .is_some()
        );
        assert_eq!(
            fwd[2]
                .child("retract", "urn:xmpp:message-retract:1")
                .and_then(|r| r.attr("id")),
            Some("helo")
        );
    }
}

#[tokio::test]
async fn spoofed_stanza_ids_are_stripped() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut romeo = online(&s, "romeo", "r").await;
    let mut juliet = online(&s, "juliet", "balcony").await;
    romeo
        .send(&format!(
            "<message to='juliet@localhost' type='chat'><body>trust me</body>\
             <stanza-id xmlns='{SID}' by='juliet@localhost' id='forged'/>\
             <stanza-id xmlns='{SID}' by='elsewhere.example' id='kept'/></message>"
        ))
        .await;
    let got = next_message(&mut juliet).await;
    let ours: Vec<_> = got
        .children()
        .filter(|c| c.is("stanza-id", SID) && c.attr("by") == Some("juliet@localhost"))
        .collect();
    assert_eq!(ours.len(), 1, "{got}");
    assert_ne!(ours[0].attr("id"), Some("forged"));
    assert_eq!(
        stanza_id(&got, "elsewhere.example").as_deref(),
        Some("kept")
    );
}

#[tokio::test]
async fn discovery_form_metadata_and_access_control() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut romeo = online(&s, "romeo", "r").await;

    romeo
        .send("<iq type='get' id='d'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let info = romeo.expect("<iq type='result' id='d'/>").await;
    let features: Vec<&str> = info
        .child("query", "http://jabber.org/protocol/disco#info")
        .unwrap()
        .children()
        .filter_map(|f| f.attr("var"))
        .collect();
    for f in [MAM, "urn:xmpp:mam:2#extended", SID] {
        assert!(features.contains(&f), "{f} missing from {features:?}");
    }

    romeo
        .send(&format!(
            "<iq type='get' id='f'><query xmlns='{MAM}'/></iq>"
        ))
        .await;
    let form = romeo.expect("<iq type='result' id='f'/>").await;
    let vars: Vec<&str> = form
        .child("query", MAM)
        .and_then(|q| q.child("x", "jabber:x:data"))
        .unwrap()
        .children()
        .filter_map(|f| f.attr("var"))
        .collect();
    assert_eq!(
        vars,
        [
            "FORM_TYPE",
            "with",
            "start",
            "end",
            "before-id",
            "after-id",
            "ids"
        ]
    );

    // Metadata: empty, then first and last.
    romeo
        .send(&format!(
            "<iq type='get' id='m0'><metadata xmlns='{MAM}'/></iq>"
        ))
        .await;
    let md = romeo.expect("<iq type='result' id='m0'/>").await;
    assert!(!md.child("metadata", MAM).unwrap().has_children(), "{md}");
    for i in 1..=3 {
        say(&mut romeo, "juliet@localhost", &format!("n{i}")).await;
    }
    romeo.sync().await;
    let ids = query(&mut romeo, "").await.ids();
    romeo
        .send(&format!(
            "<iq type='get' id='m1'><metadata xmlns='{MAM}'/></iq>"
        ))
        .await;
    let md = romeo.expect("<iq type='result' id='m1'/>").await;
    let md = md.child("metadata", MAM).unwrap();
    assert_eq!(
        md.child("start", MAM).unwrap().attr("id"),
        Some(ids[0].as_str())
    );
    assert_eq!(
        md.child("end", MAM).unwrap().attr("id"),
        Some(ids[2].as_str())
    );
    assert!(md.child("end", MAM).unwrap().attr("timestamp").is_some());

    // Someone else's archive is forbidden.
    romeo
        .send(&format!(
            "<iq type='set' id='x' to='juliet@localhost'><query xmlns='{MAM}'/></iq>"
        ))
        .await;
    let err = romeo.expect("<iq type='error' id='x'/>").await;
    assert!(has_stanza_error(&err, "forbidden"), "{err}");
}

#[tokio::test]
async fn deleting_an_account_removes_its_archive() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut romeo = online(&s, "romeo", "r").await;
    say(&mut romeo, "juliet@localhost", "bye").await;
    romeo.sync().await;
    let archive = s.running.server.stores.archive.clone();
    let owner = waxwing_store::ArchiveOwner::User(
        waxwing_proto::jid::BareJid::parse("juliet@localhost").unwrap(),
    );
    let all = waxwing_store::ArchiveQuery {
        max: 10,
        ..Default::default()
    };
    assert_eq!(archive.query(&owner, &all).await.unwrap().count, 1);
    s.running
        .server
        .clone()
        .delete_account(owner.jid())
        .await
        .unwrap();
    assert_eq!(archive.query(&owner, &all).await.unwrap().count, 0);
}

#[tokio::test]
async fn retention_purges_expired_messages() {
    let s = TestServer::start_with("[mam]\nretention_days = 1\n").await;
    s.user("romeo").await;
    let archive = s.running.server.stores.archive.clone();
    let owner = waxwing_store::ArchiveOwner::User(
        waxwing_proto::jid::BareJid::parse("romeo@localhost").unwrap(),
    );
    let with = waxwing_proto::jid::Jid::parse("juliet@localhost").unwrap();
    let day = std::time::Duration::from_secs(86_400);
    for (age, body) in [(2 * day, "old"), (day / 2, "recent")] {
        archive
            .append(
                &owner,
                waxwing_store::NewItem {
                    with: &with,
                    stamp: std::time::SystemTime::now() - age,
                    stanza: &format!(
                        "<message xmlns='jabber:client'><body>{body}</body></message>"
                    ),
                },
            )
            .await
            .unwrap();
    }
    // The purge task starts with the first session and runs at once.
    let mut romeo = online(&s, "romeo", "r").await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let q = query(&mut romeo, "").await;
        if q.bodies() == ["recent"] {
            break;
        }
        assert_eq!(q.bodies(), ["old", "recent"]);
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired message not purged"
        );
        tokio::task::yield_now().await;
    }
}
