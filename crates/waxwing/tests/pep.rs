//! Personal eventing (issue 9): PEP (XEP-0163) with `+notify` filtering from
//! entity capabilities (XEP-0115), publish-options preconditions
//! (XEP-0060 §7.1.5 / XEP-0223), OMEMO nodes (XEP-0384), avatars and
//! nicknames (XEP-0084, XEP-0172), bookmarks with `#compat` (XEP-0402).

mod support;

use base64::Engine;
use sha2::Digest;
use support::*;
use waxwing_proto::xml::Element;

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const DEVICES: &str = "urn:xmpp:omemo:2:devices";
const BUNDLES: &str = "urn:xmpp:omemo:2:bundles";

/// XEP-0115 ver (sha-256) of a client with one identity and `features`.
fn ver(features: &[String]) -> String {
    // XEP-0115 §5.1: sorted on the bare values, then each gets its '<'.
    let mut f: Vec<String> = features.iter().map(|f| f.to_string()).collect();
    f.sort();
    let f: Vec<String> = f.into_iter().map(|f| format!("{f}<")).collect();
    let s = format!("client/pc//Test<{}", f.concat());
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Sends available presence with caps for `features`, answers the server's
/// disco#info query if it asks, and returns everything else that arrived.
async fn announce_caps(c: &mut Client, features: &[&str]) -> Vec<Element> {
    let features: Vec<String> = features.iter().map(|f| f.to_string()).collect();
    let v = ver(&features);
    c.send(&format!(
        "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-256' \
         node='https://waxwing.test' ver='{v}'/></presence>"
    ))
    .await;
    let mut other = Vec::new();
    for el in c.sync().await {
        if el.name == "iq"
            && el.attr("type") == Some("get")
            && el
                .child("query", "http://jabber.org/protocol/disco#info")
                .is_some()
        {
            assert_eq!(el.attr("from"), Some("pubsub.localhost"), "{el}");
            let feats: String = features
                .iter()
                .map(|f| format!("<feature var='{f}'/>"))
                .collect();
            c.send(&format!(
                "<iq type='result' id='{}' to='pubsub.localhost'>\
                 <query xmlns='http://jabber.org/protocol/disco#info' node='https://waxwing.test#{v}'>\
                 <identity category='client' type='pc' name='Test'/>{feats}</query></iq>",
                el.attr("id").unwrap()
            ))
            .await;
        } else {
            other.push(el);
        }
    }
    other.extend(c.sync().await);
    other
}

fn devicelist(ids: &[u32]) -> String {
    let devices: String = ids.iter().map(|i| format!("<device id='{i}'/>")).collect();
    format!("<devices xmlns='{DEVICES}'>{devices}</devices>")
}

fn publish(node: &str, id: &str, payload: &str, options: &[(&str, &str)]) -> String {
    let mut opts = String::new();
    if !options.is_empty() {
        opts.push_str(
            "<publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'>\
             <value>http://jabber.org/protocol/pubsub#publish-options</value></field>",
        );
        for (k, v) in options {
            opts.push_str(&format!("<field var='{k}'><value>{v}</value></field>"));
        }
        opts.push_str("</x></publish-options>");
    }
    format!(
        "<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{id}'>{payload}</item></publish>{opts}</pubsub>"
    )
}

fn is_event(el: &Element, node: &str) -> bool {
    el.name == "message"
        && el
            .child("event", "http://jabber.org/protocol/pubsub#event")
            .and_then(|e| e.child("items", "http://jabber.org/protocol/pubsub#event"))
            .is_some_and(|i| i.attr("node") == Some(node))
}

#[tokio::test]
async fn omemo_devicelist_reaches_notify_contacts_only_and_last_item_at_login() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol", "dave"] {
        s.user(u).await;
    }
    s.befriend("alice", "bob").await;
    s.befriend("alice", "carol").await;
    let notify = format!("{DEVICES}+notify");
    let mut bob = s.online("bob", "laptop").await;
    announce_caps(&mut bob, &["urn:xmpp:omemo:2", &notify]).await;
    let mut carol = s.online("carol", "old").await;
    announce_caps(&mut carol, &["urn:xmpp:omemo:2"]).await;
    let mut alice = s.online("alice", "phone").await;
    // Alice's available presence reached both contacts.
    bob.sync().await;
    carol.sync().await;

    let r = alice
        .iq(
            "set",
            None,
            &publish(
                DEVICES,
                "current",
                &devicelist(&[1, 2]),
                &[("pubsub#access_model", "open")],
            ),
        )
        .await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><pubsub xmlns='{PUBSUB}'><publish node='{DEVICES}'><item id='current'/></publish></pubsub></iq>"
            )
        ),
        "{r}"
    );
    let ev = bob.expect(&format!(
        "<message from='alice@localhost' type='headline'><event xmlns='http://jabber.org/protocol/pubsub#event'>\
         <items node='{DEVICES}'><item id='current'><devices xmlns='{DEVICES}'><device id='1'/><device id='2'/></devices></item></items></event></message>"
    )).await;
    assert!(is_event(&ev, DEVICES));
    carol.expect_nothing().await;

    // Same options again: fine. Conflicting precondition: refused, nothing published.
    let r = alice
        .iq(
            "set",
            None,
            &publish(
                DEVICES,
                "current",
                &devicelist(&[1, 2, 3]),
                &[("pubsub#access_model", "open")],
            ),
        )
        .await;
    assert!(is_result(&r), "{r}");
    bob.expect_with("devicelist update", |e| is_event(e, DEVICES))
        .await;
    let r = alice
        .iq(
            "set",
            None,
            &publish(
                DEVICES,
                "current",
                &devicelist(&[9]),
                &[("pubsub#access_model", "whitelist")],
            ),
        )
        .await;
    assert!(has_stanza_error(&r, "conflict"), "{r}");
    assert!(
        r.child("error", "jabber:client")
            .and_then(|e| e.child(
                "precondition-not-met",
                "http://jabber.org/protocol/pubsub#errors"
            ))
            .is_some(),
        "{r}"
    );
    bob.expect_nothing().await;

    // Bundle with max_items=max; a stranger reads it (open access).
    let bundle = format!("<bundle xmlns='{BUNDLES}'><spk id='1'>AAAA</spk><ik>BBBB</ik></bundle>");
    let r = alice
        .iq(
            "set",
            None,
            &publish(
                BUNDLES,
                "2",
                &bundle,
                &[("pubsub#access_model", "open"), ("pubsub#max_items", "max")],
            ),
        )
        .await;
    assert!(is_result(&r), "{r}");
    let mut dave = s.online("dave", "pc").await;
    let r = dave
        .iq(
            "get",
            Some("alice@localhost"),
            &format!(
                "<pubsub xmlns='{PUBSUB}'><items node='{BUNDLES}'><item id='2'/></items></pubsub>"
            ),
        )
        .await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result' from='alice@localhost'><pubsub xmlns='{PUBSUB}'><items node='{BUNDLES}'>\
                      <item id='2'><bundle xmlns='{BUNDLES}'><ik>BBBB</ik></bundle></item></items></pubsub></iq>"
            )
        ),
        "{r}"
    );
    let r = dave
        .iq(
            "get",
            Some("alice@localhost"),
            &format!("<pubsub xmlns='{PUBSUB}'><items node='{DEVICES}'/></pubsub>"),
        )
        .await;
    assert!(is_result(&r), "{r}");

    // Last item at login: a new resource of bob with the same (now known) caps.
    let mut phone = s.online("bob", "phone").await;
    let got = announce_caps(&mut phone, &["urn:xmpp:omemo:2", &notify]).await;
    let last: Vec<_> = got.iter().filter(|e| is_event(e, DEVICES)).collect();
    assert_eq!(last.len(), 1, "{got:?}");
    assert!(
        matches_pattern(
            last[0],
            &format!(
                "<message from='alice@localhost'><event xmlns='http://jabber.org/protocol/pubsub#event'>\
                      <items node='{DEVICES}'><item id='current'><devices xmlns='{DEVICES}'><device id='3'/></devices></item></items></event></message>"
            )
        ),
        "{}",
        last[0]
    );
    // A late-joining client without +notify gets nothing.
    let mut carol2 = s.online("carol", "new").await;
    let got = announce_caps(&mut carol2, &["urn:xmpp:omemo:2", "urn:x:other"]).await;
    assert!(got.iter().all(|e| !is_event(e, DEVICES)), "{got:?}");
}

#[tokio::test]
async fn presence_access_nick_and_avatar_and_account_disco() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "eve"] {
        s.user(u).await;
    }
    s.befriend("alice", "bob").await;
    let mut alice = s.online("alice", "a").await;
    let mut bob = s.online("bob", "b").await;
    let mut eve = s.online("eve", "e").await;

    let r = bob
        .iq(
            "get",
            Some("alice@localhost"),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert!(
        matches_pattern(
            &r,
            "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='pubsub' type='pep'/>\
             <feature var='http://jabber.org/protocol/pubsub#publish-options'/>\
             <feature var='urn:xmpp:bookmarks:1#compat'/></query></iq>"
        ),
        "{r}"
    );

    let nick = "<nick xmlns='http://jabber.org/protocol/nick'>Ally</nick>";
    let r = alice
        .iq(
            "set",
            None,
            &publish("http://jabber.org/protocol/nick", "current", nick, &[]),
        )
        .await;
    assert!(is_result(&r), "{r}");
    let meta = "<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='3' id='abc' type='image/png'/></metadata>";
    let r = alice
        .iq(
            "set",
            None,
            &publish("urn:xmpp:avatar:metadata", "abc", meta, &[]),
        )
        .await;
    assert!(is_result(&r), "{r}");
    let get = |node: &str| format!("<pubsub xmlns='{PUBSUB}'><items node='{node}'/></pubsub>");
    let r = bob
        .iq(
            "get",
            Some("alice@localhost"),
            &get("http://jabber.org/protocol/nick"),
        )
        .await;
    assert!(
        matches_pattern(
            &r,
            "<iq type='result'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items><item id='current'><nick xmlns='http://jabber.org/protocol/nick'>Ally</nick></item></items></pubsub></iq>"
        ),
        "{r}"
    );
    let r = bob
        .iq(
            "get",
            Some("alice@localhost"),
            &get("urn:xmpp:avatar:metadata"),
        )
        .await;
    assert!(is_result(&r), "{r}");
    // Presence access (the default): no subscription, no items.
    let r = eve
        .iq(
            "get",
            Some("alice@localhost"),
            &get("urn:xmpp:avatar:metadata"),
        )
        .await;
    assert!(has_stanza_error(&r, "not-authorized"), "{r}");
    // Nobody but the owner publishes to or configures a PEP node.
    let r = eve
        .iq(
            "set",
            Some("alice@localhost"),
            &publish("urn:xmpp:avatar:metadata", "x", meta, &[]),
        )
        .await;
    assert!(has_stanza_error(&r, "forbidden"), "{r}");
    let r = eve.iq("get",
        Some("alice@localhost"),
        "<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='urn:xmpp:avatar:metadata'/></pubsub>",
    )
    .await;
    assert!(has_stanza_error(&r, "forbidden"), "{r}");
    let r = alice.iq("get",
        None,
        "<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='urn:xmpp:avatar:metadata'/></pubsub>",
    )
    .await;
    assert!(
        matches_pattern(
            &r,
            "<iq type='result'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='urn:xmpp:avatar:metadata'><x xmlns='jabber:x:data' type='form'><field var='pubsub#access_model'><value>presence</value></field></x></configure></pubsub></iq>"
        ),
        "{r}"
    );

    // The owner sees its nodes in disco#items.
    let r = alice
        .iq(
            "get",
            None,
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .await;
    assert!(
        matches_pattern(
            &r,
            "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#items'>\
             <item jid='alice@localhost' node='http://jabber.org/protocol/nick'/>\
             <item jid='alice@localhost' node='urn:xmpp:avatar:metadata'/></query></iq>"
        ),
        "{r}"
    );

    // Deleting the account removes its PEP nodes.
    let stores = &s.running.server.stores;
    assert_eq!(stores.pubsub.nodes(&jid("alice")).await.unwrap().len(), 2);
    s.running
        .server
        .clone()
        .delete_account(&jid("alice"))
        .await
        .unwrap();
    assert!(stores.pubsub.nodes(&jid("alice")).await.unwrap().is_empty());
}

#[tokio::test]
async fn bookmarks_are_mirrored_to_private_storage() {
    let s = TestServer::start().await;
    s.user("alice").await;
    let mut alice = s.online("alice", "a").await;
    let conf = "<conference xmlns='urn:xmpp:bookmarks:1' name='Council' autojoin='true'><nick>ally</nick></conference>";
    let r = alice
        .iq(
            "set",
            None,
            &publish(
                "urn:xmpp:bookmarks:1",
                "council@conference.localhost",
                conf,
                &[
                    ("pubsub#persist_items", "true"),
                    ("pubsub#max_items", "max"),
                    ("pubsub#send_last_published_item", "never"),
                    ("pubsub#access_model", "whitelist"),
                ],
            ),
        )
        .await;
    assert!(is_result(&r), "{r}");
    let get = "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>";
    let r = alice.iq("get", None, get).await;
    assert!(
        matches_pattern(
            &r,
            "<iq type='result'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>\
             <conference jid='council@conference.localhost' name='Council' autojoin='true'><nick>ally</nick></conference>\
             </storage></query></iq>"
        ),
        "{r}"
    );
    let r = alice.iq("set",
        None,
        "<pubsub xmlns='http://jabber.org/protocol/pubsub'><retract node='urn:xmpp:bookmarks:1' notify='true'>\
         <item id='council@conference.localhost'/></retract></pubsub>",
    )
    .await;
    assert!(is_result(&r), "{r}");
    let r = alice.iq("get", None, get).await;
    let st = r
        .child("query", "jabber:iq:private")
        .and_then(|q| q.child("storage", "storage:bookmarks"))
        .expect("storage");
    assert!(!st.has_children(), "{r}");

    // The other direction: XEP-0049 writes show up in the PEP node.
    let set = "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>\
               <conference jid='tea@conference.localhost' name='Tea' autojoin='true'><nick>al</nick></conference>\
               </storage></query>";
    assert!(is_result(&alice.iq("set", None, set).await));
    let r = alice
        .iq(
            "get",
            None,
            &format!("<pubsub xmlns='{PUBSUB}'><items node='urn:xmpp:bookmarks:1'/></pubsub>"),
        )
        .await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><pubsub xmlns='{PUBSUB}'><items node='urn:xmpp:bookmarks:1'>\
                 <item id='tea@conference.localhost'><conference xmlns='urn:xmpp:bookmarks:1' name='Tea' autojoin='true'>\
                 <nick>al</nick></conference></item></items></pubsub></iq>"
            )
        ),
        "{r}"
    );
}

#[tokio::test]
async fn avatar_conversion_between_pep_and_vcard() {
    use sha1::Digest as _;
    let s = TestServer::start().await;
    for u in ["alice", "bob"] {
        s.user(u).await;
    }
    s.befriend("alice", "bob").await;
    let mut alice = s.online("alice", "a").await;
    let mut bob = s.online("bob", "b").await;

    // The server and the account advertise the conversion.
    for to in ["localhost", "alice@localhost"] {
        let r = bob
            .iq(
                "get",
                Some(to),
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            )
            .await;
        assert!(
            matches_pattern(
                &r,
                "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'>\
                 <feature var='urn:xmpp:pep-vcard-conversion:0'/></query></iq>"
            ),
            "{to}: {r}"
        );
    }

    // PEP → vCard.
    let image = b"\x89PNG fake image bytes";
    let b64 = base64::engine::general_purpose::STANDARD.encode(image);
    let hash: String = sha1::Sha1::digest(image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let data = format!("<data xmlns='urn:xmpp:avatar:data'>{b64}</data>");
    let r = alice
        .iq(
            "set",
            None,
            &publish("urn:xmpp:avatar:data", &hash, &data, &[]),
        )
        .await;
    assert!(is_result(&r), "{r}");
    let meta = format!(
        "<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='{}' id='{hash}' type='image/png'/>\
         <info id='other' url='https://example.org/a.png' type='image/png' bytes='9'/></metadata>",
        image.len()
    );
    let r = alice
        .iq(
            "set",
            None,
            &publish("urn:xmpp:avatar:metadata", &hash, &meta, &[]),
        )
        .await;
    assert!(is_result(&r), "{r}");
    let r = bob
        .iq(
            "get",
            Some("alice@localhost"),
            "<vCard xmlns='vcard-temp'/>",
        )
        .await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE>\
                 <BINVAL>{b64}</BINVAL></PHOTO></vCard></iq>"
            )
        ),
        "{r}"
    );

    // Presence carries the hash, unless the client set its own <photo/>.
    alice
        .send("<presence><status>here</status></presence>")
        .await;
    bob.expect(&format!(
        "<presence from='alice@localhost/a'><x xmlns='vcard-temp:x:update'><photo>{hash}</photo></x></presence>"
    ))
    .await;
    alice
        .send("<presence><x xmlns='vcard-temp:x:update'><photo/></x></presence>")
        .await;
    let p = bob.expect("<presence from='alice@localhost/a'/>").await;
    let photo = p
        .child("x", "vcard-temp:x:update")
        .and_then(|x| x.child("photo", "vcard-temp:x:update"))
        .map(|p| p.text());
    assert_eq!(photo.as_deref(), Some(""), "{p}");

    // vCard → PEP: a vCard with another photo publishes data and metadata.
    let image2 = b"GIF89a another one";
    let b64_2 = base64::engine::general_purpose::STANDARD.encode(image2);
    let hash2: String = sha1::Sha1::digest(image2)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let r = alice
        .iq(
            "set",
            None,
            &format!(
                "<vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><TYPE>image/gif</TYPE>\
                 <BINVAL>{b64_2}</BINVAL></PHOTO></vCard>"
            ),
        )
        .await;
    assert!(is_result(&r), "{r}");
    let get = |node: &str| format!("<pubsub xmlns='{PUBSUB}'><items node='{node}'/></pubsub>");
    let r = bob
        .iq(
            "get",
            Some("alice@localhost"),
            &get("urn:xmpp:avatar:metadata"),
        )
        .await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><pubsub xmlns='{PUBSUB}'><items node='urn:xmpp:avatar:metadata'>\
                 <item id='{hash2}'><metadata xmlns='urn:xmpp:avatar:metadata'>\
                 <info bytes='{}' id='{hash2}' type='image/gif'/></metadata></item></items></pubsub></iq>",
                image2.len()
            )
        ),
        "{r}"
    );
    let r = bob
        .iq("get", Some("alice@localhost"), &get("urn:xmpp:avatar:data"))
        .await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><pubsub xmlns='{PUBSUB}'><items node='urn:xmpp:avatar:data'>\
                 <item id='{hash2}'><data xmlns='urn:xmpp:avatar:data'>{b64_2}</data></item></items></pubsub></iq>"
            )
        ),
        "{r}"
    );
    // The vCard the client wrote is kept as written.
    let r = alice.iq("get", None, "<vCard xmlns='vcard-temp'/>").await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><BINVAL>{b64_2}</BINVAL></PHOTO></vCard></iq>"
            )
        ),
        "{r}"
    );
    alice.send("<presence/>").await;
    bob.expect(&format!(
        "<presence from='alice@localhost/a'><x xmlns='vcard-temp:x:update'><photo>{hash2}</photo></x></presence>"
    ))
    .await;

    // Removing the photo disables the PEP avatar; disabling the PEP
    // avatar removes the photo.
    let r = alice
        .iq(
            "set",
            None,
            "<vCard xmlns='vcard-temp'><FN>Alice</FN></vCard>",
        )
        .await;
    assert!(is_result(&r), "{r}");
    let r = bob
        .iq(
            "get",
            Some("alice@localhost"),
            &get("urn:xmpp:avatar:metadata"),
        )
        .await;
    let newest = r
        .child("pubsub", PUBSUB)
        .and_then(|p| p.child("items", PUBSUB))
        .and_then(|i| i.children().next())
        .and_then(|i| i.children().next())
        .cloned();
    let newest = newest.expect("a metadata item");
    assert!(newest.children().next().is_none(), "{r}");
    let r = alice
        .iq(
            "set",
            None,
            &publish("urn:xmpp:avatar:data", &hash, &data, &[]),
        )
        .await;
    assert!(is_result(&r), "{r}");
    let r = alice
        .iq(
            "set",
            None,
            &publish("urn:xmpp:avatar:metadata", &hash, &meta, &[]),
        )
        .await;
    assert!(is_result(&r), "{r}");
    let r = alice
        .iq(
            "set",
            None,
            &publish(
                "urn:xmpp:avatar:metadata",
                "current",
                "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
                &[],
            ),
        )
        .await;
    assert!(is_result(&r), "{r}");
    let r = alice.iq("get", None, "<vCard xmlns='vcard-temp'/>").await;
    let card = r.child("vCard", "vcard-temp").expect("a vCard").clone();
    assert!(card.child("PHOTO", "vcard-temp").is_none(), "{r}");
    assert!(card.child("FN", "vcard-temp").is_some(), "{r}");
}

#[tokio::test]
async fn pep_authorize_answered_with_the_owners_form() {
    let s = TestServer::start().await;
    for u in ["alice", "bob"] {
        s.user(u).await;
    }
    let mut alice = s.online("alice", "a").await;
    let mut bob = s.online("bob", "b").await;
    let r = alice
        .iq(
            "set",
            None,
            &publish(
                "urn:example:diary",
                "d1",
                "<entry xmlns='urn:example:diary'>secret</entry>",
                &[("pubsub#access_model", "authorize")],
            ),
        )
        .await;
    assert!(is_result(&r), "{r}");
    let r = bob
        .iq(
            "set",
            Some("alice@localhost"),
            &format!(
                "<pubsub xmlns='{PUBSUB}'><subscribe node='urn:example:diary' jid='bob@localhost'/></pubsub>"
            ),
        )
        .await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><pubsub xmlns='{PUBSUB}'><subscription subscription='pending'/></pubsub></iq>"
            )
        ),
        "{r}"
    );
    alice
        .expect("<message from='alice@localhost'><x xmlns='jabber:x:data' type='form'><field var='pubsub#subscriber_jid'><value>bob@localhost</value></field></x></message>")
        .await;
    let answer = |allow: &str, subscriber: &str| {
        format!(
            "<message to='alice@localhost'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#subscribe_authorization</value></field>\
             <field var='pubsub#node'><value>urn:example:diary</value></field>\
             <field var='pubsub#subscriber_jid'><value>{subscriber}</value></field>\
             <field var='pubsub#allow'><value>{allow}</value></field></x></message>"
        )
    };
    // Answering for someone who did not ask is refused.
    alice.send(&answer("true", "eve@localhost")).await;
    alice
        .expect("<message type='error'><error><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
        .await;
    alice.send(&answer("true", "bob@localhost")).await;
    bob.expect(
        "<message from='alice@localhost'><event xmlns='http://jabber.org/protocol/pubsub#event'>\
         <subscription node='urn:example:diary' jid='bob@localhost' subscription='subscribed'/></event></message>",
    )
    .await;
    let r = bob
        .iq(
            "get",
            Some("alice@localhost"),
            &format!("<pubsub xmlns='{PUBSUB}'><items node='urn:example:diary'/></pubsub>"),
        )
        .await;
    assert!(is_result(&r), "{r}");
    // The form never reached Alice's other clients as a message.
    alice.expect_nothing().await;
}

#[tokio::test]
async fn pep_nodes_past_max_pep_nodes_are_not_created_by_publish_or_create() {
    // [pubsub] max_pep_nodes bounds what auto-create (XEP-0163 §3) can
    // grow; publishing to existing nodes is unaffected.
    let s = TestServer::start_with("[pubsub]\nmax_pep_nodes = 2\n").await;
    s.user("romeo").await;
    let mut c = s.online("romeo", "r").await;
    let publish = |node: &str| {
        format!(
            "<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='current'>\
             <x xmlns='urn:example:{node}'/></item></publish></pubsub>"
        )
    };
    for node in ["n1", "n2"] {
        let r = c.iq("set", None, &publish(node)).await;
        assert!(is_result(&r), "{r}");
    }
    let over = c.iq("set", None, &publish("n3")).await;
    assert!(has_stanza_error(&over, "not-allowed"), "{over}");
    let error = over.child("error", waxwing_proto::ns::CLIENT).unwrap();
    assert_eq!(error.attr("type"), Some("cancel"), "{over}");
    assert!(
        error
            .child(
                "max-nodes-exceeded",
                "http://jabber.org/protocol/pubsub#errors"
            )
            .is_some(),
        "{over}"
    );
    let create = c
        .iq(
            "set",
            None,
            &format!("<pubsub xmlns='{PUBSUB}'><create node='n4'/></pubsub>"),
        )
        .await;
    assert!(has_stanza_error(&create, "not-allowed"), "{create}");
    let again = c.iq("set", None, &publish("n1")).await;
    assert!(is_result(&again), "{again}");
    let nodes = s
        .running
        .server
        .stores
        .pubsub
        .nodes(&jid("romeo"))
        .await
        .unwrap();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
}
