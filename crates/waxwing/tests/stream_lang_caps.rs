//! What a stream header and the features say about languages and the
//! server itself: `xml:lang` (RFC 6120 §4.7.4) and the server's own
//! XEP-0115 capabilities in the stream features.

mod support;

use support::*;
use waxwing_modules::caps::{NS_CAPS, verification_string_hash};
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

/// Connects, in `lang`, up to the first features.
async fn open_in(server: &TestServer, lang: &str) -> Client {
    let mut c = Client::connect_plain(server.c2s).await;
    c.lang = lang.to_string();
    c.open_stream().await;
    c
}

fn header_lang(c: &Client) -> Option<String> {
    c.header.as_ref().and_then(|h| h.lang.clone())
}

#[tokio::test]
async fn the_reply_header_speaks_the_clients_language_where_supported() {
    let server = TestServer::start().await;
    let c = open_in(&server, "en-GB").await;
    assert_eq!(header_lang(&c).as_deref(), Some("en-GB"));
    // Not a language we have texts in: our default.
    let c = open_in(&server, "de").await;
    assert_eq!(header_lang(&c).as_deref(), Some("en"));
    // Not a language tag at all.
    let c = open_in(&server, "en GB").await;
    assert_eq!(header_lang(&c).as_deref(), Some("en"));
    // Each (re)started stream answers its own header.
    let mut c = open_in(&server, "en").await;
    c.lang = "en-US".into();
    c.starttls().await;
    assert_eq!(header_lang(&c).as_deref(), Some("en-US"));
}

#[tokio::test]
async fn stanzas_without_a_language_carry_the_streams() {
    let server = TestServer::start().await;
    server.user("alice").await;
    server.user("bob").await;
    let mut bob = server.online("bob", "phone").await;
    let mut alice = Client::connect_plain(server.c2s).await;
    alice.lang = "de".into();
    alice.open_stream().await;
    alice.starttls().await;
    alice.auth_scram_sha256("alice", &password("alice")).await;
    alice.bind(Some("pc")).await;
    alice.available(0).await;

    alice
        .send("<message to='bob@localhost' id='m1' type='chat'><body>Hallo</body></message>")
        .await;
    let m = bob.expect("<message id='m1'/>").await;
    assert_eq!(m.attr("xml:lang"), Some("de"), "{m}");
    // A stanza's own language wins over the stream's.
    alice
        .send("<message to='bob@localhost' id='m2' type='chat' xml:lang='fr'><body>Salut</body></message>")
        .await;
    let m = bob.expect("<message id='m2'/>").await;
    assert_eq!(m.attr("xml:lang"), Some("fr"), "{m}");
    // bob's stream said `en`: his stanzas carry `en`.
    bob.send("<message to='alice@localhost' id='m3' type='chat'><body>Hi</body></message>")
        .await;
    let m = alice.expect("<message id='m3'/>").await;
    assert_eq!(m.attr("xml:lang"), Some("en"), "{m}");
}

/// The server's `<c/>` in `c`'s post-authentication features.
fn server_caps(c: &Client) -> Element {
    c.features
        .as_ref()
        .and_then(|f| f.child("c", NS_CAPS))
        .cloned()
        .unwrap_or_else(|| panic!("no <c/> in {:?}", c.features))
}

/// The server's disco#info `<query/>`, as `c` gets it, optionally at `node`.
async fn server_info(c: &mut Client, node: Option<&str>) -> Element {
    let node = node.map(|n| format!(" node='{n}'")).unwrap_or_default();
    let r = c
        .iq(
            "get",
            Some(DOMAIN),
            &format!("<query xmlns='{}'{node}/>", ns::DISCO_INFO),
        )
        .await;
    assert!(is_result(&r), "{r}");
    r.child("query", ns::DISCO_INFO).cloned().expect("a query")
}

#[tokio::test]
async fn the_features_carry_the_servers_caps_which_hash_its_disco_info() {
    let server = TestServer::start().await;
    server.user("alice").await;
    let mut alice = server.login("alice", "pc").await;
    let c = server_caps(&alice);
    assert_eq!(c.attr("hash"), Some("sha-1"), "{c}");
    let (node, ver) = (c.attr("node").unwrap(), c.attr("ver").unwrap());
    assert!(!node.is_empty(), "{c}");

    // `ver` is the XEP-0115 hash of what disco#info answers.
    let info = server_info(&mut alice, None).await;
    assert_eq!(
        verification_string_hash(&info, "sha-1").as_deref(),
        Some(ver),
        "{info}"
    );
    // And `node#ver` is answered with that same information (§6.2).
    let at_node = server_info(&mut alice, Some(&format!("{node}#{ver}"))).await;
    assert_eq!(at_node.attr("node"), Some(format!("{node}#{ver}").as_str()));
    assert_eq!(
        verification_string_hash(&at_node, "sha-1").as_deref(),
        Some(ver)
    );

    // Other features (here: a contact address in the info's extended
    // form), other `ver`; the same features, the same `ver`.
    let other = TestServer::start_with("[contact]\nabuse = [\"mailto:abuse@localhost\"]\n").await;
    other.user("bob").await;
    let mut bob = other.login("bob", "phone").await;
    let other_ver = server_caps(&bob).attr("ver").unwrap().to_string();
    assert_ne!(other_ver, ver);
    let info = server_info(&mut bob, None).await;
    assert_eq!(verification_string_hash(&info, "sha-1"), Some(other_ver));
    server.user("carol").await;
    let carol = server.login("carol", "tab").await;
    assert_eq!(server_caps(&carol).attr("ver"), Some(ver));
}

#[tokio::test]
async fn caps_are_not_announced_before_authentication() {
    let server = TestServer::start().await;
    let c = open_in(&server, "en").await;
    let features = c.features.expect("features");
    assert!(features.child("c", NS_CAPS).is_none(), "{features}");
}
