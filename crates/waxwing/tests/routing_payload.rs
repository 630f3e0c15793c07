//! Issue 21: a routed chat message's payload is passed on as received: the
//! hooks on its way (blocking, carbons, archiving, CSI, push, offline) look
//! at the names of its children, and none needs their tree.
//!
//! One test in its own binary: it counts trees built on the test's thread
//! (`#[tokio::test]` runs the in-process server there too).

mod support;

use support::*;
use waxwing_proto::ns;
use waxwing_proto::xml::trees_built_from_raw;

const CARBONS: &str = "urn:xmpp:carbons:2";
const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
const RECEIPTS: &str = "urn:xmpp:receipts";
const SID: &str = "urn:xmpp:sid:0";

#[tokio::test]
async fn routed_chat_messages_are_passed_on_as_received() {
    for mam in [false, true] {
        let s = TestServer::start_with(&format!("[mam]\nenabled = {mam}\n")).await;
        for u in ["romeo", "juliet"] {
            s.user(u).await;
        }
        let mut desk = s.online("romeo", "desk").await;
        let mut phone = s.online("romeo", "phone").await;
        let mut juliet = s.online("juliet", "balcony").await;
        desk.sync().await;
        for c in [&mut desk, &mut phone] {
            let r = c
                .iq("set", None, &format!("<enable xmlns='{CARBONS}'/>"))
                .await;
            assert!(is_result(&r), "{r}");
        }
        // The recipient is inactive (CSI): chat with a body is urgent, so
        // it still comes at once.
        desk.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
        desk.sync().await;

        let before = trees_built_from_raw();
        juliet
            .send(&format!(
                "<message to='romeo@localhost/desk' type='chat' id='m1'>\
                 <body>hi &amp; &#x1F600; bye</body><active xmlns='{CHATSTATES}'/>\
                 <request xmlns='{RECEIPTS}'/>\
                 <stanza-id xmlns='{SID}' by='romeo@localhost' id='forged'/></message>"
            ))
            .await;
        let m = desk.next("the message").await;
        let carbon = phone.next("its carbon").await;
        assert_eq!(
            trees_built_from_raw(),
            before + u64::from(mam),
            "mam {mam}: only the forged stanza-id, which must be read to be judged, needs a tree"
        );
        // All there, as sent, bar the forged id; MAM's own id appended.
        assert_eq!(m.attr("from"), Some("juliet@localhost/balcony"));
        assert_eq!(
            m.child("body", ns::CLIENT).unwrap().text(),
            "hi & \u{1F600} bye"
        );
        assert!(m.has_child("active", CHATSTATES) && m.has_child("request", RECEIPTS));
        let ids: Vec<_> = m
            .children()
            .filter(|c| c.is("stanza-id", SID))
            .map(|c| c.attr("id").unwrap_or_default().to_owned())
            .collect();
        if mam {
            assert_eq!(ids.len(), 1, "{m}");
            assert_ne!(ids[0], "forged", "{m}");
        } else {
            assert_eq!(ids, ["forged"], "without MAM nobody judges it: {m}");
        }
        let inner = carbon
            .child("received", CARBONS)
            .and_then(|r| r.child("forwarded", "urn:xmpp:forward:0"))
            .and_then(|f| f.child("message", ns::CLIENT))
            .unwrap_or_else(|| panic!("a carbon: {carbon}"));
        assert_eq!(
            inner.child("body", ns::CLIENT).unwrap().text(),
            "hi & \u{1F600} bye"
        );

        // Without a forged id, nothing at all is built, MAM or not.
        let before = trees_built_from_raw();
        juliet
            .send(&format!(
                "<message to='romeo@localhost' type='chat' id='m2'>\
                 <body>again</body><active xmlns='{CHATSTATES}'/></message>"
            ))
            .await;
        let m = desk.next("the second message").await;
        let _ = phone.next("the second message or carbon").await;
        assert_eq!(trees_built_from_raw(), before, "mam {mam}");
        assert!(m.children.is_raw());
        assert_eq!(m.has_child("stanza-id", SID), mam, "{m}");
        assert_eq!(m.child("body", ns::CLIENT).unwrap().text(), "again");
    }
}
