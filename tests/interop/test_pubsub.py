"""The pubsub.<host> service (XEP-0060) with slixmpp (issue #9): every
access model, the authorize flow with the owner's form, notifications and
the last item on subscribe, subscription options, collections, and
persistence across a restart.
"""

from __future__ import annotations

from xml.etree import ElementTree as ET

import pytest

from conftest import PASSWORD
from wxtest import STEP_TIMEOUT, subjects
from wxtest.steps import make_friends

pytestmark = pytest.mark.skipif(
    subjects.subject_name() != "waxwing",
    reason="scenarios written against waxwing's pubsub.<host> service")

SERVICE = "pubsub.localhost"
ALICE, BOB, CAROL = "alice@localhost", "bob@localhost", "carol@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD, CAROL: PASSWORD}

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_OWNER = "http://jabber.org/protocol/pubsub#owner"
NS_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_ERRORS = "http://jabber.org/protocol/pubsub#errors"
NS_DATA = "jabber:x:data"
NS_ATOM = "http://www.w3.org/2005/Atom"


def form(form_type: str, fields: dict[str, str | list[str]], ftype: str = "submit") -> str:
    out = [f"<x xmlns='{NS_DATA}' type='{ftype}'>"
           f"<field var='FORM_TYPE' type='hidden'><value>{form_type}</value></field>"]
    for var, value in fields.items():
        values = value if isinstance(value, list) else [value]
        out.append(f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in values)
                   + "</field>")
    out.append("</x>")
    return "".join(out)


def node_config(fields: dict) -> str:
    return form("http://jabber.org/protocol/pubsub#node_config", fields)


async def request(client, itype: str, payload: str):
    return await client.iq(client.make_iq(itype, SERVICE, payload))


async def create(client, node: str, fields: dict | None = None):
    configure = f"<configure>{node_config(fields)}</configure>" if fields else ""
    res = await request(client, "set",
                        f"<pubsub xmlns='{NS_PUBSUB}'><create node='{node}'/>{configure}</pubsub>")
    assert res["type"] == "result", res
    return res


def entry(title: str) -> str:
    return f"<entry xmlns='{NS_ATOM}'><title>{title}</title></entry>"


async def publish(client, node: str, item_id: str, title: str):
    return await request(client, "set", (
        f"<pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'>"
        f"<item id='{item_id}'>{entry(title)}</item></publish></pubsub>"))


async def subscribe(client, node: str, options: dict | None = None):
    opts = ""
    if options:
        opts = ("<options>" + form("http://jabber.org/protocol/pubsub#subscribe_options", options)
                + "</options>")
    return await request(client, "set", (
        f"<pubsub xmlns='{NS_PUBSUB}'><subscribe node='{node}' jid='{client.jid.bare}'/>"
        f"{opts}</pubsub>"))


async def items(client, node: str):
    return await request(client, "get", f"<pubsub xmlns='{NS_PUBSUB}'><items node='{node}'/></pubsub>")


def subscription_state(res) -> str | None:
    sub = res.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}subscription")
    return None if sub is None else sub.get("subscription")


def error_of(res) -> tuple[str, list[str]]:
    """(condition, application-specific error names)."""
    assert res["type"] == "error", res
    err = res.xml.find("{jabber:client}error")
    prefix = f"{{{NS_ERRORS}}}"
    app = [c.tag[len(prefix):] for c in err if c.tag.startswith(prefix)]
    return res["error"]["condition"], app


def notified(client, node: str) -> list[str]:
    """Ids of every item of ``node`` notified to ``client``."""
    out = []
    for m in client.messages.seen:
        its = m.xml.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items")
        if its is not None and its.get("node") == node:
            out += [i.get("id") for i in its.findall(f"{{{NS_EVENT}}}item")]
    return out


async def expect_item(client, node: str, item_id: str):
    await client.messages.expect(lambda _m: item_id in notified(client, node),
                                 f"(notification {node}#{item_id})")


async def marker(sender, receiver) -> None:
    import uuid

    body = f"marker-{uuid.uuid4().hex}"
    sender.send_message(receiver.jid.bare, body)
    await receiver.expect_message(body=body)


async def login(xmpp, srv, jid):
    c = await xmpp.login(srv, jid, PASSWORD)
    await c.roster_get()
    await c.online()
    return c


async def test_access_models(server, xmpp):
    srv = server(users=USERS)
    alice = await login(xmpp, srv, f"{ALICE}/a")
    bob = await login(xmpp, srv, f"{BOB}/b")
    carol = await login(xmpp, srv, f"{CAROL}/c")
    # Bob is Alice's contact, in her group "Friends"; Carol is a stranger.
    await make_friends(alice, bob)
    res = await alice.roster_set(BOB, groups=["Friends"])
    assert res["type"] == "result", res

    for model, extra in [("open", {}), ("presence", {}),
                         ("roster", {"pubsub#roster_groups_allowed": "Friends"}),
                         ("whitelist", {}), ("authorize", {})]:
        await create(alice, f"n-{model}", {"pubsub#access_model": model, **extra})
        assert (await publish(alice, f"n-{model}", "i1", model))["type"] == "result"

    async def outcome(client, model):
        res = await items(client, f"n-{model}")
        return "ok" if res["type"] == "result" else error_of(res)

    assert await outcome(carol, "open") == "ok"
    assert await outcome(bob, "open") == "ok"
    assert await outcome(bob, "presence") == "ok"
    assert await outcome(carol, "presence") == ("not-authorized", ["presence-subscription-required"])
    assert await outcome(bob, "roster") == "ok"
    assert await outcome(carol, "roster") == ("not-authorized", ["not-in-roster-group"])
    assert await outcome(bob, "whitelist") == ("not-allowed", ["closed-node"])
    assert await outcome(carol, "authorize") == ("not-authorized", ["pending-subscription"])
    # A roster group that Bob is not in refuses him too.
    res = await request(alice, "set", (
        f"<pubsub xmlns='{NS_OWNER}'><configure node='n-roster'>"
        f"{node_config({'pubsub#roster_groups_allowed': 'Family'})}</configure></pubsub>"))
    assert res["type"] == "result", res
    assert await outcome(bob, "roster") == ("not-authorized", ["not-in-roster-group"])

    # Whitelist: members get in, subscriptions are refused before.
    assert error_of(await subscribe(bob, "n-whitelist"))[0] == "not-allowed"
    res = await request(alice, "set", (
        f"<pubsub xmlns='{NS_OWNER}'><affiliations node='n-whitelist'>"
        f"<affiliation jid='{BOB}' affiliation='member'/></affiliations></pubsub>"))
    assert res["type"] == "result", res
    assert await outcome(bob, "whitelist") == "ok"
    assert subscription_state(await subscribe(bob, "n-whitelist")) == "subscribed"
    # Outcasts are out.
    res = await request(alice, "set", (
        f"<pubsub xmlns='{NS_OWNER}'><affiliations node='n-open'>"
        f"<affiliation jid='{CAROL}' affiliation='outcast'/></affiliations></pubsub>"))
    assert res["type"] == "result", res
    assert (await outcome(carol, "open"))[0] == "forbidden"


async def test_authorize_flow_with_the_owners_form(server, xmpp):
    srv = server(users=USERS)
    alice = await login(xmpp, srv, f"{ALICE}/a")
    bob = await login(xmpp, srv, f"{BOB}/b")
    carol = await login(xmpp, srv, f"{CAROL}/c")
    await create(alice, "club", {"pubsub#access_model": "authorize"})
    assert (await publish(alice, "club", "welcome", "Welcome"))["type"] == "result"

    async def ask(client):
        res = await subscribe(client, "club")
        assert subscription_state(res) == "pending", res

        def is_request(m):
            x = m.xml.find(f"{{{NS_DATA}}}x")
            return x is not None and any(
                f.get("var") == "pubsub#subscriber_jid"
                and f.findtext(f"{{{NS_DATA}}}value") == client.jid.bare
                for f in x.findall(f"{{{NS_DATA}}}field"))

        msg = await alice.messages.expect(is_request, f"(authorization request for {client.jid.bare})")
        assert str(msg["from"]) == SERVICE
        fields = {f.get("var"): f.findtext(f"{{{NS_DATA}}}value")
                  for f in msg.xml.find(f"{{{NS_DATA}}}x").findall(f"{{{NS_DATA}}}field")}
        assert fields["pubsub#node"] == "club"
        assert fields["FORM_TYPE"] == "http://jabber.org/protocol/pubsub#subscribe_authorization"
        return msg

    async def answer(client, allow: bool):
        reply = alice.x.make_message(mto=SERVICE)
        reply.append(ET.fromstring(form(
            "http://jabber.org/protocol/pubsub#subscribe_authorization",
            {"pubsub#node": "club", "pubsub#subscriber_jid": client.jid.bare,
             "pubsub#allow": "true" if allow else "false"})))
        reply.send()

    def sub_event(client, state):
        def pred(m):
            sub = m.xml.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}subscription")
            return sub is not None and sub.get("node") == "club" and sub.get("subscription") == state
        return client.messages.expect(pred, f"(subscription {state})")

    # Bob is approved: he is told, gets the last item, and may read.
    await ask(bob)
    assert error_of(await items(bob, "club"))[0] == "not-authorized"
    await answer(bob, True)
    await sub_event(bob, "subscribed")
    await expect_item(bob, "club", "welcome")
    assert (await items(bob, "club"))["type"] == "result"
    # Carol is denied: her subscription is gone.
    await ask(carol)
    await answer(carol, False)
    await sub_event(carol, "none")
    assert error_of(await items(carol, "club"))[0] == "not-authorized"
    res = await request(alice, "get", f"<pubsub xmlns='{NS_OWNER}'><subscriptions node='club'/></pubsub>")
    subs = {s.get("jid"): s.get("subscription")
            for s in res.xml.iter(f"{{{NS_OWNER}}}subscription")}
    assert subs == {BOB: "subscribed"}, subs
    # Only the owner may answer.
    forged = carol.x.make_message(mto=SERVICE)
    forged.append(ET.fromstring(form(
        "http://jabber.org/protocol/pubsub#subscribe_authorization",
        {"pubsub#node": "club", "pubsub#subscriber_jid": CAROL, "pubsub#allow": "true"})))
    forged.send()
    err = await carol.messages.expect(lambda m: m["type"] == "error", "(error for a forged approval)")
    assert err["error"]["condition"] == "forbidden"


async def test_notifications_last_item_options_and_collections(server, xmpp):
    srv = server(users=USERS)
    alice = await login(xmpp, srv, f"{ALICE}/a")
    bob = await login(xmpp, srv, f"{BOB}/b")
    carol = await login(xmpp, srv, f"{CAROL}/c")
    await create(alice, "blog")
    assert (await publish(alice, "blog", "p1", "Hello"))["type"] == "result"

    # The last item on subscribe, then each new one.
    assert subscription_state(await subscribe(bob, "blog")) == "subscribed"
    await expect_item(bob, "blog", "p1")
    assert (await publish(alice, "blog", "p2", "Again"))["type"] == "result"
    await expect_item(bob, "blog", "p2")

    # Subscription options: delivery off means nothing, on again means items.
    res = await request(bob, "get", (
        f"<pubsub xmlns='{NS_PUBSUB}'><options node='blog' jid='{BOB}'/></pubsub>"))
    fields = {f.get("var"): f.findtext(f"{{{NS_DATA}}}value")
              for f in res.xml.iter(f"{{{NS_DATA}}}field")}
    assert fields["pubsub#deliver"] == "1", res
    set_opts = lambda deliver: request(bob, "set", (  # noqa: E731
        f"<pubsub xmlns='{NS_PUBSUB}'><options node='blog' jid='{BOB}'>"
        + form("http://jabber.org/protocol/pubsub#subscribe_options", {"pubsub#deliver": deliver})
        + "</options></pubsub>"))
    assert (await set_opts("0"))["type"] == "result"
    assert (await publish(alice, "blog", "p3", "Quiet"))["type"] == "result"
    await marker(alice, bob)
    assert "p3" not in notified(bob, "blog")
    assert (await set_opts("1"))["type"] == "result"
    assert (await publish(alice, "blog", "p4", "Loud"))["type"] == "result"
    await expect_item(bob, "blog", "p4")

    # Collections: a subscriber of the collection hears about its leaves.
    await create(alice, "all-news", {"pubsub#node_type": "collection"})
    await create(alice, "sports", {"pubsub#collection": "all-news"})
    info = await carol.x.plugin["xep_0030"].get_items(jid=SERVICE, node="all-news",
                                                       timeout=STEP_TIMEOUT)
    assert [n for (_j, n, _name) in info["disco_items"]["items"]] == ["sports"]
    assert subscription_state(await subscribe(carol, "all-news")) == "subscribed"
    assert (await publish(alice, "sports", "s1", "Goal"))["type"] == "result"
    await expect_item(carol, "sports", "s1")
    res = await publish(alice, "all-news", "x", "no")
    assert error_of(res)[0] == "feature-not-implemented"


async def test_nodes_items_and_subscriptions_survive_restart(server, xmpp):
    srv = server(users=USERS)
    alice = await login(xmpp, srv, f"{ALICE}/a")
    bob = await login(xmpp, srv, f"{BOB}/b")
    await create(alice, "diary", {"pubsub#access_model": "whitelist", "pubsub#title": "Diary"})
    res = await request(alice, "set", (
        f"<pubsub xmlns='{NS_OWNER}'><affiliations node='diary'>"
        f"<affiliation jid='{BOB}' affiliation='member'/></affiliations></pubsub>"))
    assert res["type"] == "result", res
    assert subscription_state(await subscribe(bob, "diary")) == "subscribed"
    for i in range(3):
        assert (await publish(alice, "diary", f"d{i}", f"Day {i}"))["type"] == "result"

    srv.restart()
    alice = await login(xmpp, srv, f"{ALICE}/a2")
    bob = await login(xmpp, srv, f"{BOB}/b2")
    res = await items(bob, "diary")
    ids = [i.get("id") for i in res.xml.iter(f"{{{NS_PUBSUB}}}item")]
    assert ids == ["d2", "d1", "d0"], res
    titles = [t.text for t in res.xml.iter(f"{{{NS_ATOM}}}title")]
    assert titles == ["Day 2", "Day 1", "Day 0"]
    res = await request(alice, "get", f"<pubsub xmlns='{NS_OWNER}'><configure node='diary'/></pubsub>")
    fields = {f.get("var"): f.findtext(f"{{{NS_DATA}}}value")
              for f in res.xml.iter(f"{{{NS_DATA}}}field")}
    assert fields["pubsub#access_model"] == "whitelist" and fields["pubsub#title"] == "Diary"
    # The subscription is still there: a new item reaches Bob.
    assert (await publish(alice, "diary", "d3", "Day 3"))["type"] == "result"
    await expect_item(bob, "diary", "d3")
