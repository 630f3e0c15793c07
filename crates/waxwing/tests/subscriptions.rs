//! RFC 6121 §3 subscriptions, driven through the Appendix A state chart
//! with two live accounts, plus presence broadcast and roster versioning.

mod support;

use std::collections::HashMap;

use support::*;
use waxwing_proto::ns;
use waxwing_proto::xml::Element;

const R: &str = "romeo@localhost";
const J: &str = "juliet@localhost";

/// A roster push about `jid` with exactly this visible state.
fn push(jid: &str, sub: &str, ask: bool, approved: bool) -> String {
    format!(
        "<iq type='set'><query xmlns='{}'><item jid='{jid}' subscription='{sub}' ask='{}' approved='{}'/></query></iq>",
        ns::ROSTER,
        if ask { "subscribe" } else { "{absent}" },
        if approved { "true" } else { "{absent}" },
    )
}

fn sub_presence(from: &str, ty: &str) -> String {
    format!("<presence from='{from}' type='{ty}'/>")
}

fn available_from(full: &str) -> String {
    format!("<presence from='{full}' type='{{absent}}'/>")
}

fn unavailable_from(full: &str) -> String {
    format!("<presence from='{full}' type='unavailable'/>")
}

fn show(els: &[Element]) -> String {
    els.iter()
        .map(|e| format!("  {}", e.to_xml_in(ns::CLIENT)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Visible roster state of the peer in one side's roster: (subscription, ask, approved).
type Visible = Option<(String, bool, bool)>;

fn visible_of(push: &Element) -> Visible {
    let item = push.child("query", ns::ROSTER)?.child("item", ns::ROSTER)?;
    let sub = item.attr("subscription")?;
    if sub == "remove" {
        return None;
    }
    Some((
        sub.to_string(),
        item.attr("ask") == Some("subscribe"),
        item.attr("approved") == Some("true"),
    ))
}

fn is_push(el: &Element) -> bool {
    el.name == "iq" && el.attr("type") == Some("set") && el.child("query", ns::ROSTER).is_some()
}

/// Checks that `got` is exactly `want` (any order). Roster pushes that
/// leave the visible state unchanged are collected in `redundant` so that
/// the rest of the table still runs; [`Pair::finish`] fails on them.
fn check(
    step: &str,
    side: &str,
    got: Vec<Element>,
    want: &[String],
    state: &mut Visible,
    redundant: &mut Vec<String>,
) {
    let mut left: Vec<&String> = want.iter().collect();
    let mut unexpected = Vec::new();
    for el in got {
        if let Some(i) = left.iter().position(|p| matches_pattern(&el, p)) {
            left.remove(i);
            if is_push(&el) {
                *state = visible_of(&el);
            }
        } else if is_push(&el) && visible_of(&el) == *state {
            redundant.push(format!("{step}: {side} got {}", el.to_xml_in(ns::CLIENT)));
        } else {
            unexpected.push(el);
        }
    }
    assert!(
        left.is_empty() && unexpected.is_empty(),
        "step `{step}`, {side}:\n missing:\n  {}\n unexpected:\n{}",
        left.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        show(&unexpected)
    );
}

struct Pair {
    romeo: Client,
    juliet: Client,
    state: HashMap<&'static str, Visible>,
    redundant: Vec<String>,
}

impl Pair {
    /// RFC 6121 §2.1.6: a push announces a changed roster item. Hidden
    /// state (Pending In) is not part of the item, so changing only that
    /// must not push (§3.1.3 lists no push for an inbound request).
    fn finish(self) {
        assert!(
            self.redundant.is_empty(),
            "roster pushes that changed nothing visible:\n{}",
            self.redundant.join("\n")
        );
    }

    async fn new(s: &TestServer) -> Pair {
        s.user("romeo").await;
        s.user("juliet").await;
        let romeo = s.login_available("romeo", "r", 0).await;
        let juliet = s.login_available("juliet", "j", 0).await;
        Pair {
            romeo,
            juliet,
            state: HashMap::from([("romeo", None), ("juliet", None)]),
            redundant: Vec::new(),
        }
    }

    /// `actor` sends a subscription presence of type `ty` to the other;
    /// then both connections are synced and compared with expectations.
    async fn step(
        &mut self,
        actor: &'static str,
        ty: &str,
        actor_gets: &[String],
        peer_gets: &[String],
    ) {
        let (peer, to) = if actor == "romeo" {
            ("juliet", J)
        } else {
            ("romeo", R)
        };
        let step = format!("{actor} sends {ty}");
        let (a, p) = if actor == "romeo" {
            (&mut self.romeo, &mut self.juliet)
        } else {
            (&mut self.juliet, &mut self.romeo)
        };
        a.send(&format!("<presence to='{to}' type='{ty}'/>")).await;
        // The actor's sync point comes after the whole local exchange.
        let got_a = a.sync().await;
        let got_p = p.sync().await;
        let mut sa = self.state[actor].clone();
        check(
            &step,
            actor,
            got_a,
            actor_gets,
            &mut sa,
            &mut self.redundant,
        );
        self.state.insert(actor, sa);
        let mut sp = self.state[peer].clone();
        check(&step, peer, got_p, peer_gets, &mut sp, &mut self.redundant);
        self.state.insert(peer, sp);
    }
}

#[tokio::test]
async fn subscribe_approve_mutual_then_unsubscribe_and_cancel() {
    let s = TestServer::start().await;
    let mut p = Pair::new(&s).await;
    let jf = "juliet@localhost/j";
    let rf = "romeo@localhost/r";
    // §3.1: None -> None + Pending Out; contact: None -> None + Pending In.
    p.step(
        "romeo",
        "subscribe",
        &[push(J, "none", true, false)],
        &[sub_presence(R, "subscribe")],
    )
    .await;
    // §3.1.5: contact approves. Romeo: To; Juliet: From; Romeo sees Juliet.
    p.step(
        "juliet",
        "subscribed",
        &[push(R, "from", false, false)],
        &[
            push(J, "to", false, false),
            sub_presence(J, "subscribed"),
            available_from(jf),
        ],
    )
    .await;
    // The other direction: Juliet asks, Romeo approves -> Both.
    p.step(
        "juliet",
        "subscribe",
        &[push(R, "from", true, false)],
        &[sub_presence(J, "subscribe")],
    )
    .await;
    p.step(
        "romeo",
        "subscribed",
        &[push(J, "both", false, false)],
        &[
            push(R, "both", false, false),
            sub_presence(R, "subscribed"),
            available_from(rf),
        ],
    )
    .await;
    // §3.3: Romeo unsubscribes from Juliet's presence. Romeo: From;
    // Juliet: To, and her server sends Romeo unavailable from her resources (§3.3.3).
    p.step(
        "romeo",
        "unsubscribe",
        &[push(J, "from", false, false), unavailable_from(jf)],
        &[push(R, "to", false, false), sub_presence(R, "unsubscribe")],
    )
    .await;
    // §3.2: Romeo cancels Juliet's subscription to him. Both None; Juliet
    // gets unavailable from Romeo's resources.
    p.step(
        "romeo",
        "unsubscribed",
        &[push(J, "none", false, false)],
        &[
            push(R, "none", false, false),
            sub_presence(R, "unsubscribed"),
            unavailable_from(rf),
        ],
    )
    .await;
    // Nothing more flows: presence changes are not broadcast to either.
    p.romeo.send("<presence><show>away</show></presence>").await;
    p.romeo.sync().await;
    p.juliet.expect_nothing().await;
    p.finish();
}

#[tokio::test]
async fn pre_approval_auto_answers_a_later_request() {
    let s = TestServer::start().await;
    let mut p = Pair::new(&s).await;
    // §3.4: Juliet pre-approves Romeo; he hears nothing.
    p.step("juliet", "subscribed", &[push(R, "none", false, true)], &[])
        .await;
    // His request is answered by her server; she never sees it.
    p.step(
        "romeo",
        "subscribe",
        &[
            push(J, "none", true, false),
            push(J, "to", false, false),
            sub_presence(J, "subscribed"),
            available_from("juliet@localhost/j"),
        ],
        &[push(R, "from", false, false)],
    )
    .await;
    p.finish();
}

#[tokio::test]
async fn denied_request_leaves_both_at_none() {
    let s = TestServer::start().await;
    let mut p = Pair::new(&s).await;
    p.step(
        "romeo",
        "subscribe",
        &[push(J, "none", true, false)],
        &[sub_presence(R, "subscribe")],
    )
    .await;
    // §3.2.1 used as a denial: Romeo's pending request is cancelled.
    p.step(
        "juliet",
        "unsubscribed",
        &[],
        &[
            push(J, "none", false, false),
            sub_presence(J, "unsubscribed"),
        ],
    )
    .await;
    // Not in her roster now.
    let roster = p.juliet.get_roster().await.unwrap();
    assert!(!roster.has_children(), "{roster}");
    p.finish();
}

#[tokio::test]
async fn inbound_subscribe_from_a_stranger_pushes_no_roster_item() {
    // RFC 6121 §3.1.3: the request is delivered; the contact's roster is
    // not changed (Pending In is not part of the roster), so no push.
    let s = TestServer::start().await;
    let mut p = Pair::new(&s).await;
    p.romeo
        .send(&format!("<presence to='{J}' type='subscribe'/>"))
        .await;
    p.romeo.sync().await;
    p.juliet.expect(&sub_presence(R, "subscribe")).await;
    p.juliet.expect_nothing().await;
}

#[tokio::test]
async fn subscribe_to_offline_contact_is_delivered_at_next_login() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    s.user("juliet").await;
    let mut romeo = s.login_available("romeo", "r", 0).await;
    romeo
        .send(&format!(
            "<presence to='{J}' type='subscribe'><status>hi</status></presence>"
        ))
        .await;
    romeo
        .expect_with("push with ask", |e| {
            matches_pattern(e, &push(J, "none", true, false))
        })
        .await;
    romeo.expect_nothing().await;
    // Juliet connects later: the request arrives after her initial presence.
    let mut juliet = s.login("juliet", "j").await;
    juliet.get_roster().await;
    let got = juliet.available(0).await;
    assert!(
        got.iter()
            .any(|e| matches_pattern(e, &sub_presence(R, "subscribe"))),
        "no stored subscription request in:\n{}",
        show(&got)
    );
    // … and she can approve it.
    juliet
        .send(&format!("<presence to='{R}' type='subscribed'/>"))
        .await;
    juliet.sync().await;
    romeo
        .expect_unordered(&[
            &push(J, "to", false, false),
            &sub_presence(J, "subscribed"),
            &available_from("juliet@localhost/j"),
        ])
        .await;
}

/// Romeo and Juliet subscribed both ways, both online.
async fn lovers(s: &TestServer) -> (Client, Client) {
    let mut p = Pair::new(s).await;
    for (a, b, ab, bb) in [("romeo", "juliet", R, J), ("juliet", "romeo", J, R)] {
        let _ = (a, b);
        let (x, y) = if a == "romeo" {
            (&mut p.romeo, &mut p.juliet)
        } else {
            (&mut p.juliet, &mut p.romeo)
        };
        x.send(&format!("<presence to='{bb}' type='subscribe'/>"))
            .await;
        x.sync().await;
        y.sync().await;
        y.send(&format!("<presence to='{ab}' type='subscribed'/>"))
            .await;
        y.sync().await;
        x.sync().await;
    }
    (p.romeo, p.juliet)
}

#[tokio::test]
async fn contacts_see_presence_both_ways_and_unavailable_when_a_socket_drops() {
    let s = TestServer::start().await;
    let (mut romeo, juliet) = lovers(&s).await;
    juliet.drop_abruptly();
    romeo.expect(&unavailable_from("juliet@localhost/j")).await;
    // She comes back: he sees her, she sees him (probe).
    let mut juliet = s.login("juliet", "j2").await;
    let got = juliet.available(3).await;
    assert!(
        got.iter()
            .any(|e| matches_pattern(e, &available_from("romeo@localhost/r"))),
        "probe answer missing:\n{}",
        show(&got)
    );
    romeo
        .expect("<presence from='juliet@localhost/j2'><priority>3</priority></presence>")
        .await;
    romeo.expect_nothing().await;
}

#[tokio::test]
async fn presence_is_broadcast_to_all_own_resources_including_the_sender() {
    // RFC 6121 §4.2.2 and §4.4.2: "to all of the user's available
    // resources, including the resource that generated the presence".
    let s = TestServer::start().await;
    s.user("juliet").await;
    let mut a = s.login("juliet", "a").await;
    let got = a.available(0).await;
    assert!(
        got.iter()
            .any(|e| matches_pattern(e, &available_from("juliet@localhost/a"))),
        "initial presence not reflected to its sender:\n{}",
        show(&got)
    );
    a.send("<presence><show>away</show></presence>").await;
    a.expect("<presence from='juliet@localhost/a'><show>away</show></presence>")
        .await;
}

#[tokio::test]
async fn roster_get_with_current_version_is_an_empty_result() {
    let s = TestServer::start().await;
    s.user("romeo").await;
    let mut romeo = s.login("romeo", "r").await;
    let q = romeo.get_roster().await.expect("full roster");
    let ver = q.attr("ver").expect("ver").to_string();
    assert!(romeo.get_roster_ver(Some(&ver)).await.is_none());
    romeo
        .send(&format!(
            "<iq type='set' id='add'><query xmlns='{}'><item jid='{J}' name='Juliet'/></query></iq>",
            ns::ROSTER
        ))
        .await;
    let pushed = romeo.expect(&push(J, "none", false, false)).await;
    let new_ver = pushed
        .child("query", ns::ROSTER)
        .unwrap()
        .attr("ver")
        .unwrap()
        .to_string();
    assert_ne!(new_ver, ver);
    romeo.expect("<iq type='result' id='add'/>").await;
    // An old version gets the whole roster with the new version.
    let q = romeo
        .get_roster_ver(Some(&ver))
        .await
        .expect("stale cache gets the roster");
    assert_eq!(q.attr("ver"), Some(new_ver.as_str()));
    assert!(matches_pattern(
        &q,
        &format!(
            "<query xmlns='{}'><item jid='{J}' name='Juliet' subscription='none'/></query>",
            ns::ROSTER
        )
    ));
    assert!(romeo.get_roster_ver(Some(&new_ver)).await.is_none());
}

#[tokio::test]
async fn subscription_requests_past_the_bound_bounce_until_one_is_answered() {
    // [limits] max_pending_subscriptions: each waiting request is a stored
    // row, so strangers cannot grow an account without bound. The one past
    // the bound is refused with resource-constraint (wait) and not shown;
    // the earlier ones stay.
    let s = TestServer::start_with("[limits]\nmax_pending_subscriptions = 2\n").await;
    for u in ["juliet", "romeo", "mercutio", "tybalt"] {
        s.user(u).await;
    }
    let mut juliet = s.online("juliet", "j").await;
    for u in ["romeo", "mercutio"] {
        let mut c = s.online(u, "x").await;
        c.send(&format!("<presence to='{J}' type='subscribe'/>"))
            .await;
        c.sync().await;
        juliet.expect(&sub_presence(&bare(u), "subscribe")).await;
    }
    let mut tybalt = s.online("tybalt", "t").await;
    tybalt
        .send(&format!("<presence to='{J}' type='subscribe'/>"))
        .await;
    // His own roster takes the pending-out item; Juliet's refuses the request.
    tybalt
        .expect_unordered(&[
            &push(J, "none", true, false),
            &format!(
                "<presence type='error' from='{J}'><error type='wait'><resource-constraint xmlns='{}'/></error></presence>",
                ns::STANZAS
            ),
        ])
        .await;
    juliet.expect_nothing().await;
    // Denying one frees a place: the retry is delivered.
    juliet
        .send(&format!("<presence to='{R}' type='unsubscribed'/>"))
        .await;
    juliet.sync().await;
    tybalt
        .send(&format!("<presence to='{J}' type='subscribe'/>"))
        .await;
    tybalt.sync().await;
    juliet
        .expect(&sub_presence(&bare("tybalt"), "subscribe"))
        .await;
    // Mercutio's request, seen before the flood, was never dropped.
    let rows = s
        .running
        .server
        .stores
        .roster
        .items(&jid("juliet"))
        .await
        .unwrap();
    let pending: Vec<String> = rows
        .iter()
        .filter(|i| i.pending_in)
        .map(|i| i.contact.to_string())
        .collect();
    assert_eq!(pending, vec![bare("mercutio"), bare("tybalt")]);
}

#[tokio::test]
async fn roster_set_past_max_roster_items_is_not_allowed() {
    // RFC 6121 §2.1.5: a full roster takes no new item; changing an
    // existing one still works.
    let s =
        TestServer::start_with("[limits]\nmax_roster_items = 2\nmax_pending_subscriptions = 2\n")
            .await;
    s.user("romeo").await;
    let mut romeo = s.online("romeo", "r").await;
    let set = |id: &str, jid: &str, name: &str| {
        format!(
            "<iq type='set' id='{id}'><query xmlns='{}'><item jid='{jid}' name='{name}'/></query></iq>",
            ns::ROSTER
        )
    };
    for (id, j) in [("a1", "a@localhost"), ("a2", "b@localhost")] {
        romeo.send(&set(id, j, "x")).await;
        romeo
            .expect_unordered(&[
                &push(j, "none", false, false),
                &format!("<iq type='result' id='{id}'/>"),
            ])
            .await;
    }
    romeo.send(&set("a3", "c@localhost", "x")).await;
    romeo
        .expect(&format!(
            "<iq type='error' id='a3'><error type='cancel'><not-allowed xmlns='{}'/></error></iq>",
            ns::STANZAS
        ))
        .await;
    romeo.send(&set("a4", "a@localhost", "renamed")).await;
    romeo
        .expect_unordered(&[
            &push("a@localhost", "none", false, false),
            "<iq type='result' id='a4'/>",
        ])
        .await;
    // A subscribe that needs a new row is refused the same way.
    romeo
        .send("<presence to='c@localhost' type='subscribe'/>")
        .await;
    romeo
        .expect(&format!(
            "<presence type='error'><error type='cancel'><not-allowed xmlns='{}'/></error></presence>",
            ns::STANZAS
        ))
        .await;
    let rows = s
        .running
        .server
        .stores
        .roster
        .items(&jid("romeo"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
}
