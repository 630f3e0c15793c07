//! What a stream header and the features say about languages and the
//! server itself: `xml:lang` (RFC 6120 §4.7.4) and the server's own
//! XEP-0115 capabilities in the stream features.

mod support;

use support::*;

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
