//! The `pubsub.<host>` service (XEP-0060): node lifecycle, notifications,
//! retrieval with RSM, access models and owner management (issue 9).

mod support;

use support::*;
use waxwing_proto::xml::Element;

const PS: &str = "pubsub.localhost";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";

async fn online(s: &TestServer, user: &str, resource: &str) -> Client {
    let mut c = s.login_available(user, resource, 0).await;
    c.sync().await;
    c
}

/// Sends an IQ to the service and returns its answer, skipping anything else.
async fn iq(c: &mut Client, ty: &str, payload: &str) -> Element {
    let id = c.id("iq");
    c.send(&format!(
        "<iq type='{ty}' id='{id}' to='{PS}'>{payload}</iq>"
    ))
    .await;
    loop {
        let el = c.next(&format!("the answer to {id}")).await;
        if el.name == "iq" && el.attr("id") == Some(id.as_str()) {
            return el;
        }
    }
}

fn ok(el: &Element) {
    assert_eq!(el.attr("type"), Some("result"), "{el}");
}

fn create(node: &str, access: Option<&str>) -> String {
    let configure = match access {
        Some(a) => format!(
            "<configure><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
             <field var='pubsub#access_model'><value>{a}</value></field></x></configure>"
        ),
        None => String::new(),
    };
    format!("<pubsub xmlns='{PUBSUB}'><create node='{node}'/>{configure}</pubsub>")
}

fn publish(node: &str, id: &str, text: &str) -> String {
    format!(
        "<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{id}'>\
         <entry xmlns='http://www.w3.org/2005/Atom'><title>{text}</title></entry></item></publish></pubsub>"
    )
}

fn subscribe(node: &str, jid: &str) -> String {
    format!("<pubsub xmlns='{PUBSUB}'><subscribe node='{node}' jid='{jid}'/></pubsub>")
}

#[tokio::test]
async fn create_publish_subscribe_notify_retract_purge_delete() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.user(u).await;
    }
    let mut alice = online(&s, "alice", "a").await;
    let mut bob = online(&s, "bob", "b").await;
    let mut carol = online(&s, "carol", "c").await;

    // The server lists the service; the service describes itself.
    let id = bob.id("items");
    bob.send(&format!("<iq type='get' id='{id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")).await;
    bob.expect(&format!("<iq type='result' id='{id}'><query xmlns='http://jabber.org/protocol/disco#items'><item jid='{PS}'/></query></iq>")).await;
    let r = iq(
        &mut bob,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert!(
        matches_pattern(
            &r,
            "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='pubsub' type='service'/><feature var='http://jabber.org/protocol/pubsub'/></query></iq>"
        ),
        "{r}"
    );

    ok(&iq(&mut alice, "set", &create("news", None)).await);
    let r = iq(&mut bob, "set", &create("news", None)).await;
    assert!(has_stanza_error(&r, "conflict"), "{r}");
    ok(&iq(&mut alice, "set", &publish("news", "1", "first")).await);

    // Subscribing delivers the last published item, then notifications follow.
    let r = iq(&mut bob, "set", &subscribe("news", "bob@localhost/b")).await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result' from='{PS}'><pubsub xmlns='{PUBSUB}'><subscription node='news' jid='bob@localhost/b' subscription='subscribed'/></pubsub></iq>"
            )
        ),
        "{r}"
    );
    let mut got = bob.sync().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(matches_pattern(
        &got.remove(0),
        &format!(
            "<message from='{PS}'><event xmlns='{EVENT}'><items node='news'><item id='1'/></items></event></message>"
        )
    ));
    ok(&iq(&mut alice, "set", &publish("news", "2", "second")).await);
    bob.expect(&format!(
        "<message from='{PS}' to='bob@localhost/b'><event xmlns='{EVENT}'><items node='news'><item id='2'>\
         <entry xmlns='http://www.w3.org/2005/Atom'><title>second</title></entry></item></items></event></message>"
    ))
    .await;
    carol.expect_nothing().await;
    // Only publishers publish.
    let r = iq(&mut carol, "set", &publish("news", "3", "spam")).await;
    assert!(has_stanza_error(&r, "forbidden"), "{r}");

    // Items, newest first, paged with RSM.
    let r = iq(&mut carol, "get", &format!("<pubsub xmlns='{PUBSUB}'><items node='news'/><set xmlns='http://jabber.org/protocol/rsm'><max>1</max></set></pubsub>")).await;
    let items = r
        .child("pubsub", PUBSUB)
        .and_then(|p| p.child("items", PUBSUB))
        .expect("items");
    let ids: Vec<_> = items.children().filter_map(|i| i.attr("id")).collect();
    assert_eq!(ids, ["2"], "{r}");
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq><pubsub xmlns='{PUBSUB}'><set xmlns='http://jabber.org/protocol/rsm'><count>2</count><last>2</last></set></pubsub></iq>"
            )
        ),
        "{r}"
    );
    let r = iq(&mut carol, "get", &format!("<pubsub xmlns='{PUBSUB}'><items node='news'/><set xmlns='http://jabber.org/protocol/rsm'><max>5</max><after>2</after></set></pubsub>")).await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq><pubsub xmlns='{PUBSUB}'><items node='news'><item id='1'/></items></pubsub></iq>"
            )
        ),
        "{r}"
    );

    // Retract notifies.
    ok(&iq(&mut alice, "set", &format!("<pubsub xmlns='{PUBSUB}'><retract node='news' notify='1'><item id='1'/></retract></pubsub>")).await);
    bob.expect(&format!("<message from='{PS}'><event xmlns='{EVENT}'><items node='news'><retract id='1'/></items></event></message>")).await;
    // Purge and delete are the owner's, and notify too.
    let r = iq(
        &mut bob,
        "set",
        &format!("<pubsub xmlns='{OWNER}'><purge node='news'/></pubsub>"),
    )
    .await;
    assert!(has_stanza_error(&r, "forbidden"), "{r}");
    ok(&iq(
        &mut alice,
        "set",
        &format!("<pubsub xmlns='{OWNER}'><purge node='news'/></pubsub>"),
    )
    .await);
    bob.expect(&format!(
        "<message from='{PS}'><event xmlns='{EVENT}'><purge node='news'/></event></message>"
    ))
    .await;
    let r = iq(
        &mut carol,
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='news'/></pubsub>"),
    )
    .await;
    ok(&r);
    assert!(
        !r.child("pubsub", PUBSUB)
            .unwrap()
            .child("items", PUBSUB)
            .unwrap()
            .has_children(),
        "{r}"
    );
    // Unsubscribe, resubscribe, then delete.
    ok(&iq(
        &mut bob,
        "set",
        &format!(
            "<pubsub xmlns='{PUBSUB}'><unsubscribe node='news' jid='bob@localhost/b'/></pubsub>"
        ),
    )
    .await);
    ok(&iq(&mut bob, "set", &subscribe("news", "bob@localhost/b")).await);
    ok(&iq(
        &mut alice,
        "set",
        &format!("<pubsub xmlns='{OWNER}'><delete node='news'/></pubsub>"),
    )
    .await);
    bob.expect(&format!(
        "<message from='{PS}'><event xmlns='{EVENT}'><delete node='news'/></event></message>"
    ))
    .await;
    let r = iq(
        &mut carol,
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='news'/></pubsub>"),
    )
    .await;
    assert!(has_stanza_error(&r, "item-not-found"), "{r}");
}

#[tokio::test]
async fn whitelist_refuses_until_affiliated_and_authorize_needs_approval() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.user(u).await;
    }
    let mut alice = online(&s, "alice", "a").await;
    let mut bob = online(&s, "bob", "b").await;
    let mut carol = online(&s, "carol", "c").await;

    ok(&iq(&mut alice, "set", &create("club", Some("whitelist"))).await);
    let r = iq(&mut bob, "set", &subscribe("club", "bob@localhost")).await;
    assert!(has_stanza_error(&r, "not-allowed"), "{r}");
    assert!(
        r.child("error", "jabber:client")
            .and_then(|e| e.child("closed-node", "http://jabber.org/protocol/pubsub#errors"))
            .is_some(),
        "{r}"
    );
    let r = iq(
        &mut bob,
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='club'/></pubsub>"),
    )
    .await;
    assert!(has_stanza_error(&r, "not-allowed"), "{r}");
    ok(&iq(&mut alice, "set", &format!("<pubsub xmlns='{OWNER}'><affiliations node='club'><affiliation jid='bob@localhost' affiliation='member'/></affiliations></pubsub>")).await);
    let r = iq(
        &mut alice,
        "get",
        &format!("<pubsub xmlns='{OWNER}'><affiliations node='club'/></pubsub>"),
    )
    .await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><pubsub xmlns='{OWNER}'><affiliations node='club'><affiliation jid='alice@localhost' affiliation='owner'/><affiliation jid='bob@localhost' affiliation='member'/></affiliations></pubsub></iq>"
            )
        ),
        "{r}"
    );
    ok(&iq(&mut bob, "set", &subscribe("club", "bob@localhost")).await);
    // The last owner cannot leave.
    let r = iq(&mut alice, "set", &format!("<pubsub xmlns='{OWNER}'><affiliations node='club'><affiliation jid='alice@localhost' affiliation='none'/></affiliations></pubsub>")).await;
    assert!(has_stanza_error(&r, "not-acceptable"), "{r}");
    // Outcasts lose their subscription.
    ok(&iq(&mut alice, "set", &format!("<pubsub xmlns='{OWNER}'><affiliations node='club'><affiliation jid='bob@localhost' affiliation='outcast'/></affiliations></pubsub>")).await);
    ok(&iq(&mut alice, "set", &publish("club", "x", "secret")).await);
    bob.expect_nothing().await;

    // Authorize: pending, the owner gets a form, approves, the subscriber learns it.
    ok(&iq(&mut alice, "set", &create("guarded", Some("authorize"))).await);
    let r = iq(&mut carol, "set", &subscribe("guarded", "carol@localhost")).await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><pubsub xmlns='{PUBSUB}'><subscription node='guarded' subscription='pending'/></pubsub></iq>"
            )
        ),
        "{r}"
    );
    alice.expect(&format!("<message from='{PS}'><x xmlns='jabber:x:data' type='form'><field var='pubsub#subscriber_jid'><value>carol@localhost</value></field></x></message>")).await;
    let r = iq(
        &mut carol,
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='guarded'/></pubsub>"),
    )
    .await;
    assert!(has_stanza_error(&r, "not-authorized"), "{r}");
    ok(&iq(&mut alice, "set", &format!("<pubsub xmlns='{OWNER}'><subscriptions node='guarded'><subscription jid='carol@localhost' subscription='subscribed'/></subscriptions></pubsub>")).await);
    carol.expect(&format!("<message from='{PS}'><event xmlns='{EVENT}'><subscription node='guarded' jid='carol@localhost' subscription='subscribed'/></event></message>")).await;
    ok(&iq(&mut alice, "set", &publish("guarded", "g1", "hello")).await);
    carol.expect(&format!("<message from='{PS}' to='carol@localhost'><event xmlns='{EVENT}'><items node='guarded'><item id='g1'/></items></event></message>")).await;
    ok(&iq(
        &mut carol,
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='guarded'/></pubsub>"),
    )
    .await);
}

fn options_form(fields: &[(&str, &[&str])]) -> String {
    let mut x = String::from(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
         <value>http://jabber.org/protocol/pubsub#subscribe_options</value></field>",
    );
    for (var, values) in fields {
        x.push_str(&format!("<field var='{var}'>"));
        for v in *values {
            x.push_str(&format!("<value>{v}</value>"));
        }
        x.push_str("</field>");
    }
    x.push_str("</x>");
    x
}

#[tokio::test]
async fn subscription_options_filter_by_presence_and_turn_delivery_off() {
    let s = TestServer::start().await;
    for u in ["alice", "bob"] {
        s.user(u).await;
    }
    let mut alice = online(&s, "alice", "a").await;
    let mut bob = online(&s, "bob", "b").await;
    ok(&iq(&mut alice, "set", &create("opts", None)).await);

    // The default options (XEP-0060 §6.4).
    let r = iq(
        &mut bob,
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><default/></pubsub>"),
    )
    .await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><pubsub xmlns='{PUBSUB}'><default><x xmlns='jabber:x:data' type='form'>\
                 <field var='pubsub#deliver'><value>1</value></field></x></default></pubsub></iq>"
            )
        ),
        "{r}"
    );
    // Options of a subscription that does not exist.
    let r = iq(
        &mut bob,
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><options node='opts' jid='bob@localhost'/></pubsub>"),
    )
    .await;
    assert!(has_stanza_error(&r, "unexpected-request"), "{r}");

    // Subscribe and configure: only while showing "chat".
    let chat_only = options_form(&[("pubsub#show-values", &["chat"])]);
    ok(&iq(
        &mut bob,
        "set",
        &format!(
            "<pubsub xmlns='{PUBSUB}'><subscribe node='opts' jid='bob@localhost'/>\
             <options>{chat_only}</options></pubsub>"
        ),
    )
    .await);
    let r = iq(
        &mut bob,
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><options node='opts' jid='bob@localhost'/></pubsub>"),
    )
    .await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><pubsub xmlns='{PUBSUB}'><options node='opts' jid='bob@localhost'>\
                 <x xmlns='jabber:x:data' type='form'><field var='pubsub#show-values'><value>chat</value></field>\
                 </x></options></pubsub></iq>"
            )
        ),
        "{r}"
    );
    ok(&iq(&mut alice, "set", &publish("opts", "i1", "while online")).await);
    bob.expect_nothing().await;
    bob.send("<presence><show>chat</show></presence>").await;
    bob.sync().await;
    ok(&iq(&mut alice, "set", &publish("opts", "i2", "while chatty")).await);
    bob.expect(&format!(
        "<message from='{PS}' to='bob@localhost/b'><event xmlns='{EVENT}'><items node='opts'><item id='i2'/></items></event></message>"
    ))
    .await;

    // Delivery off: nothing, whatever the presence; bad values are refused.
    let bad = options_form(&[("pubsub#show-values", &["asleep"])]);
    let r = iq(
        &mut bob,
        "set",
        &format!("<pubsub xmlns='{PUBSUB}'><options node='opts' jid='bob@localhost'>{bad}</options></pubsub>"),
    )
    .await;
    assert!(has_stanza_error(&r, "bad-request"), "{r}");
    let off = options_form(&[("pubsub#deliver", &["0"]), ("pubsub#show-values", &[])]);
    ok(&iq(
        &mut bob,
        "set",
        &format!("<pubsub xmlns='{PUBSUB}'><options node='opts' jid='bob@localhost'>{off}</options></pubsub>"),
    )
    .await);
    ok(&iq(&mut alice, "set", &publish("opts", "i3", "muted")).await);
    bob.expect_nothing().await;
    // Subscribing again without options keeps them.
    ok(&iq(&mut bob, "set", &subscribe("opts", "bob@localhost")).await);
    ok(&iq(&mut alice, "set", &publish("opts", "i3b", "still muted")).await);
    bob.expect_nothing().await;
    // Someone else cannot read or change them.
    let r = iq(
        &mut alice,
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><options node='opts' jid='bob@localhost'/></pubsub>"),
    )
    .await;
    assert!(has_stanza_error(&r, "bad-request"), "{r}");
    // Back on, without a presence filter: notifications to the bare JID.
    let on = options_form(&[("pubsub#deliver", &["1"])]);
    ok(&iq(
        &mut bob,
        "set",
        &format!("<pubsub xmlns='{PUBSUB}'><options node='opts' jid='bob@localhost'>{on}</options></pubsub>"),
    )
    .await);
    ok(&iq(&mut alice, "set", &publish("opts", "i4", "again")).await);
    bob.expect(&format!(
        "<message from='{PS}' to='bob@localhost'><event xmlns='{EVENT}'><items node='opts'><item id='i4'/></items></event></message>"
    ))
    .await;
}

fn configure_form(fields: &[(&str, &str)]) -> String {
    let mut x = String::from(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
         <value>http://jabber.org/protocol/pubsub#node_config</value></field>",
    );
    for (var, value) in fields {
        x.push_str(&format!(
            "<field var='{var}'><value>{value}</value></field>"
        ));
    }
    x.push_str("</x>");
    x
}

fn create_with(node: &str, fields: &[(&str, &str)]) -> String {
    format!(
        "<pubsub xmlns='{PUBSUB}'><create node='{node}'/><configure>{}</configure></pubsub>",
        configure_form(fields)
    )
}

#[tokio::test]
async fn collections_list_children_and_notify_their_subscribers() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.user(u).await;
    }
    let mut alice = online(&s, "alice", "a").await;
    let mut bob = online(&s, "bob", "b").await;
    let mut carol = online(&s, "carol", "c").await;

    ok(&iq(
        &mut alice,
        "set",
        &create_with("news", &[("pubsub#node_type", "collection")]),
    )
    .await);
    ok(&iq(
        &mut alice,
        "set",
        &create_with(
            "sports",
            &[
                ("pubsub#node_type", "collection"),
                ("pubsub#collection", "news"),
            ],
        ),
    )
    .await);
    ok(&iq(
        &mut alice,
        "set",
        &create_with(
            "local",
            &[("pubsub#collection", "news"), ("pubsub#title", "Local")],
        ),
    )
    .await);
    ok(&iq(
        &mut alice,
        "set",
        &create_with("football", &[("pubsub#collection", "sports")]),
    )
    .await);
    // Only collections take children; someone else's collection refuses them.
    let r = iq(
        &mut alice,
        "set",
        &create_with("bad", &[("pubsub#collection", "local")]),
    )
    .await;
    assert!(has_stanza_error(&r, "not-acceptable"), "{r}");
    let r = iq(
        &mut carol,
        "set",
        &create_with("intruder", &[("pubsub#collection", "news")]),
    )
    .await;
    assert!(has_stanza_error(&r, "forbidden"), "{r}");
    // A collection cannot go below its own child.
    let r = iq(
        &mut alice,
        "set",
        &format!(
            "<pubsub xmlns='{OWNER}'><configure node='news'>{}</configure></pubsub>",
            configure_form(&[("pubsub#collection", "sports")])
        ),
    )
    .await;
    assert!(has_stanza_error(&r, "not-acceptable"), "{r}");

    // Discovery: the root lists top-level nodes; a collection its children.
    let r = iq(
        &mut bob,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#items'/>",
    )
    .await;
    let listed: Vec<&str> = r
        .children()
        .flat_map(|q| q.children())
        .filter_map(|i| i.attr("node"))
        .collect();
    assert_eq!(listed, ["news"], "{r}");
    let r = iq(
        &mut bob,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#items' node='news'/>",
    )
    .await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#items' node='news'>\
         <item jid='{PS}' node='local' name='Local'/><item jid='{PS}' node='sports'/></query></iq>"
            )
        ),
        "{r}"
    );
    let r = iq(
        &mut bob,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info' node='news'/>",
    )
    .await;
    assert!(
        matches_pattern(
            &r,
            "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='pubsub' type='collection'/></query></iq>"
        ),
        "{r}"
    );
    // The owner's form names the children.
    let r = iq(
        &mut alice,
        "get",
        &format!("<pubsub xmlns='{OWNER}'><configure node='news'/></pubsub>"),
    )
    .await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><pubsub xmlns='{OWNER}'><configure node='news'><x xmlns='jabber:x:data'>\
         <field var='pubsub#children'><value>local</value><value>sports</value></field></x></configure></pubsub></iq>"
            )
        ),
        "{r}"
    );

    // Items live on leaves.
    let r = iq(&mut alice, "set", &publish("news", "x", "nope")).await;
    assert!(has_stanza_error(&r, "feature-not-implemented"), "{r}");

    // Bob subscribes to the collection (depth 1), Carol with depth all.
    ok(&iq(&mut bob, "set", &subscribe("news", "bob@localhost")).await);
    ok(&iq(&mut carol, "set", &format!(
        "<pubsub xmlns='{PUBSUB}'><subscribe node='news' jid='carol@localhost'/><options>{}</options></pubsub>",
        options_form(&[("pubsub#subscription_depth", &["all"])])
    )).await);
    ok(&iq(&mut alice, "set", &publish("local", "l1", "town hall")).await);
    let ev = |who: &str, node: &str, id: &str| {
        format!(
            "<message from='{PS}' to='{who}@localhost'><event xmlns='{EVENT}'><items node='{node}'><item id='{id}'/></items></event></message>"
        )
    };
    bob.expect(&ev("bob", "local", "l1")).await;
    carol.expect(&ev("carol", "local", "l1")).await;
    // Two levels down: only the depth-all subscriber.
    ok(&iq(&mut alice, "set", &publish("football", "f1", "goal")).await);
    carol.expect(&ev("carol", "football", "f1")).await;
    bob.expect_nothing().await;

    // Setting pubsub#children re-associates: "local" leaves the collection.
    ok(&iq(
        &mut alice,
        "set",
        &format!(
            "<pubsub xmlns='{OWNER}'><configure node='news'>{}</configure></pubsub>",
            configure_form(&[("pubsub#children", "sports")])
        ),
    )
    .await);
    ok(&iq(&mut alice, "set", &publish("local", "l2", "no longer news")).await);
    bob.expect_nothing().await;
    carol.expect_nothing().await;
    // A collection created with its children takes them.
    ok(&iq(
        &mut alice,
        "set",
        &create_with(
            "weekend",
            &[
                ("pubsub#node_type", "collection"),
                ("pubsub#children", "local"),
            ],
        ),
    )
    .await);
    let r = iq(
        &mut bob,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#items' node='weekend'/>",
    )
    .await;
    assert!(
        matches_pattern(
            &r,
            &format!(
                "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#items' node='weekend'><item jid='{PS}' node='local'/></query></iq>"
            )
        ),
        "{r}"
    );
    ok(&iq(
        &mut alice,
        "set",
        &format!(
            "<pubsub xmlns='{OWNER}'><configure node='weekend'>{}</configure></pubsub>",
            configure_form(&[("pubsub#children", "")])
        ),
    )
    .await);
    // Deleting the collection frees its children.
    ok(&iq(
        &mut alice,
        "set",
        &format!("<pubsub xmlns='{OWNER}'><delete node='news'/></pubsub>"),
    )
    .await);
    let r = iq(
        &mut bob,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#items'/>",
    )
    .await;
    let listed: Vec<&str> = r
        .children()
        .flat_map(|q| q.children())
        .filter_map(|i| i.attr("node"))
        .collect();
    assert_eq!(listed, ["local", "sports", "weekend"], "{r}");
}

const RSM: &str = "http://jabber.org/protocol/rsm";

fn item_ids(r: &Element) -> Vec<String> {
    r.child("pubsub", PUBSUB)
        .and_then(|p| p.child("items", PUBSUB))
        .map(|items| {
            items
                .children()
                .filter_map(|i| i.attr("id").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn rsm_child(r: &Element, name: &str) -> Option<String> {
    r.child("pubsub", PUBSUB)
        .and_then(|p| p.child("set", RSM))
        .and_then(|s| s.child(name, RSM))
        .map(|e| e.text())
}

/// Issue 14: `<items/>` without RSM returned the whole node in one reply,
/// and `<max>` of u64::MAX with `<after>`/`<index>` panicked the handler.
/// Now a reply holds at most `max_items_per_reply` items, says so with an
/// RSM `<set/>`, and the rest is paged with `<after/>`.
#[tokio::test]
async fn items_without_rsm_are_bounded_and_huge_max_is_clamped() {
    let s = TestServer::start_with("[pubsub]\nmax_items_per_reply = 2\n").await;
    s.user("alice").await;
    let mut alice = online(&s, "alice", "a").await;
    ok(&iq(&mut alice, "set", &create("big", None)).await);
    for id in ["1", "2", "3", "4", "5"] {
        ok(&iq(&mut alice, "set", &publish("big", id, id)).await);
    }

    let r = iq(
        &mut alice,
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='big'/></pubsub>"),
    )
    .await;
    ok(&r);
    assert_eq!(item_ids(&r), ["5", "4"], "{r}");
    assert_eq!(rsm_child(&r, "count").as_deref(), Some("5"), "{r}");
    assert_eq!(rsm_child(&r, "last").as_deref(), Some("4"), "{r}");

    let huge = "18446744073709551615";
    for cursor in ["<after>4</after>", "<index>2</index>"] {
        let r = iq(
            &mut alice,
            "get",
            &format!(
                "<pubsub xmlns='{PUBSUB}'><items node='big'/>\
                 <set xmlns='{RSM}'><max>{huge}</max>{cursor}</set></pubsub>"
            ),
        )
        .await;
        ok(&r);
        assert_eq!(item_ids(&r), ["3", "2"], "{cursor}: {r}");
        assert_eq!(rsm_child(&r, "last").as_deref(), Some("2"), "{r}");
    }
    // The session survived all of it.
    let r = iq(
        &mut alice,
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='big'/><set xmlns='{RSM}'><after>2</after></set></pubsub>"),
    )
    .await;
    assert_eq!(item_ids(&r), ["1"], "{r}");
}
