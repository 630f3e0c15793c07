//! Panic isolation on client streams and for events: a handler that panics
//! (the test module `support::panic::Panicker`, on demand) fails the one
//! stanza with `internal-server-error` or misses the one event; the stream,
//! the other handlers and the server go on. The s2s side is in `s2s.rs`.

mod support;

use support::panic::{ON_BOUND, ON_CLOSE, trigger};
use support::*;
use waxwing_proto::ns;

/// An error reply with `internal-server-error`.
fn is_internal_error(el: &waxwing_proto::xml::Element) -> bool {
    has_stanza_error(el, "internal-server-error")
}

#[tokio::test]
async fn a_panicking_iq_handler_fails_the_iq_and_the_session_goes_on() {
    let server = TestServer::start().await;
    server.user("alice").await;
    let mut alice = server.online("alice", "pc").await;

    // To the server and to the account: both IqTargets.
    for to in [Some(DOMAIN), None] {
        let reply = alice
            .iq(
                "get",
                to,
                &format!("<panic xmlns='{}'/>", support::panic::NS),
            )
            .await;
        assert!(is_internal_error(&reply), "{reply}");
    }
    // The same stream still works, and so does the server for others.
    alice.sync().await;
    server.user("bob").await;
    let mut bob = server.online("bob", "phone").await;
    bob.sync().await;
}

#[tokio::test]
async fn a_panicking_hook_fails_the_message_and_the_session_goes_on() {
    let server = TestServer::start().await;
    server.user("alice").await;
    server.user("bob").await;
    let mut alice = server.online("alice", "pc").await;
    let mut bob = server.online("bob", "phone").await;

    for on in ["outbound", "inbound"] {
        alice
            .send(&format!(
                "<message to='bob@localhost' id='{on}' type='chat'><body>x</body>{}</message>",
                trigger(on)
            ))
            .await;
        let err = alice
            .expect_with("the error", |e| e.attr("id") == Some(on))
            .await;
        assert!(is_internal_error(&err), "{err}");
    }
    bob.expect_nothing().await;
    alice
        .send("<message to='bob@localhost' type='chat'><body>still here</body></message>")
        .await;
    bob.expect("<message from='alice@localhost/pc'><body>still here</body></message>")
        .await;
}

#[tokio::test]
async fn a_panic_under_a_session_lock_does_not_wedge_deliveries_to_the_account() {
    let server = TestServer::start().await;
    server.user("alice").await;
    server.user("bob").await;
    let mut alice = server.online("alice", "pc").await;
    let mut bob = server.online("bob", "phone").await;

    // Poisons alice's session presence lock.
    alice
        .send(&format!(
            "<message to='bob@localhost' id='p' type='chat'>{}</message>",
            trigger("presence-lock")
        ))
        .await;
    let err = alice
        .expect_with("the error", |e| e.attr("id") == Some("p"))
        .await;
    assert!(is_internal_error(&err), "{err}");

    // Delivery to alice reads that lock: it must still work.
    bob.send("<message to='alice@localhost' id='m' type='chat'><body>hi</body></message>")
        .await;
    alice
        .expect("<message from='bob@localhost/phone' id='m'><body>hi</body></message>")
        .await;
    bob.expect_nothing().await;
}

#[tokio::test]
async fn a_panic_in_session_bound_leaves_the_session_working() {
    let server = TestServer::start().await;
    server.user("alice").await;
    server.user("bob").await;
    // Binding emits SessionBound, whose handler panics; the bind must
    // still succeed and the session must be reachable.
    let mut alice = server.online("alice", ON_BOUND).await;
    let mut bob = server.online("bob", "phone").await;
    bob.send(&format!(
        "<message to='alice@localhost/{ON_BOUND}' id='m' type='chat'><body>hi</body></message>"
    ))
    .await;
    alice
        .expect("<message id='m'><body>hi</body></message>")
        .await;
    bob.expect_nothing().await;
}

#[tokio::test]
async fn a_panic_in_session_closed_does_not_stop_the_other_handlers() {
    let server = TestServer::start().await;
    server.user("alice").await;
    server.user("bob").await;
    server.befriend("alice", "bob").await;
    let mut bob = server.online("bob", "phone").await;
    let mut alice = server.online("alice", ON_CLOSE).await;
    bob.expect(&format!("<presence from='alice@localhost/{ON_CLOSE}'/>"))
        .await;
    // The test module panics first on SessionClosed; the presence engine,
    // after it, must still tell bob that alice left.
    alice.close_stream().await;
    bob.expect(&format!(
        "<presence from='alice@localhost/{ON_CLOSE}' type='unavailable'/>"
    ))
    .await;
}

#[tokio::test]
async fn a_panic_in_message_delivered_does_not_fail_the_delivered_message() {
    let server = TestServer::start().await;
    server.user("alice").await;
    server.user("bob").await;
    let mut alice = server.online("alice", "pc").await;
    let mut bob = server.online("bob", "phone").await;
    alice
        .send(&format!(
            "<message to='bob@localhost' id='d' type='chat'><body>x</body>{}</message>",
            trigger("delivered")
        ))
        .await;
    bob.expect("<message id='d'><body>x</body></message>").await;
    // Delivered is delivered: the sender gets no error for a bug that ran after.
    alice.expect_nothing().await;
    // The ping of expect_nothing proved the session alive; so is the server.
    let r = alice
        .iq(
            "get",
            Some(DOMAIN),
            &format!("<ping xmlns='{}'/>", ns::PING),
        )
        .await;
    assert!(is_result(&r), "{r}");
}
