"""Cluster mode, the IM extensions across nodes: message carbons (XEP-0280),
blocking (XEP-0191), client state indication (XEP-0352), push (XEP-0357)
and the shared archive (XEP-0313), each with the users' sessions on
different `waxwing` nodes (one real PostgreSQL, one real Redis, slixmpp
clients). Each scenario asserts what the single-node test of the same
feature in `test_modern_im.py` asserts. Also presence probes at login and
offline storage only when no resource (of non-negative priority) is online
on any node; best-resource routing of bare-JID messages is in
`test_cluster.py::test_users_on_three_nodes_chat_subscribe_and_see_presence`.

Sessions' flags (carbons enabled, inactive, detached) reach the other nodes
through the Redis registry a Redis round trip after they change; the
scenarios set them up before the traffic that depends on them, with at
least a login in between (see docs/operating.md, Cluster)."""

from __future__ import annotations

import asyncio

from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath, StanzaPath

import pytest

from conftest import PASSWORD
from test_admin import admin, token
from test_cluster import start_cluster, status, until
from test_modern_im import mam_page, online, subscribe, wait_event
from wxtest.client import Inbox, barrier
from wxtest.steps import make_friends
from wxtest.subjects import subject_class

pytestmark = pytest.mark.skipif(not subject_class().has_cli,
                                reason=f"{subject_class().name}: no cluster mode")

ALICE = "alice@localhost"
BOB = "bob@localhost"
CAROL = "carol@localhost"
DAVE = "dave@localhost"
APP = "pushsvc@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD, CAROL: PASSWORD, DAVE: PASSWORD, APP: PASSWORD}
MAM = ["xep_0059", "xep_0313"]
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"
ADMIN_API = {"listen": {"c2s": ["127.0.0.1:0"], "c2s_direct_tls": ["127.0.0.1:0"],
                        "http": ["127.0.0.1:0"]},
             "admin": {"enabled": True}}


async def test_carbons_copy_to_the_resource_on_the_other_node(server, xmpp, postgres, redis):
    n1, n2, n3 = start_cluster(server, postgres, redis, users=USERS)
    phone = await online(xmpp, n1, f"{BOB}/phone", plugins=["xep_0280"], priority=5)
    laptop = await online(xmpp, n2, f"{BOB}/laptop", plugins=["xep_0280"], priority=1)
    for c in (phone, laptop):
        res = await c.x.plugin["xep_0280"].enable()
        assert res["type"] == "result", res
    alice = await online(xmpp, n3, f"{ALICE}/pc")

    # Received copy: alice (n3) writes to bob's phone (n1); his laptop (n2) gets a copy.
    received = asyncio.ensure_future(wait_event(laptop, "carbon_received"))
    alice.send_message(f"{BOB}/phone", "to the phone", mid="rcv-1")
    await phone.expect_message(body="to the phone", sender=f"{ALICE}/pc")
    copy = await received
    fwd = copy["carbon_received"]
    assert copy["from"] == laptop.jid.bare, f"carbon not from own bare JID: {copy}"
    assert fwd["body"] == "to the phone" and str(fwd["from"]) == f"{ALICE}/pc", copy
    assert str(fwd["to"]) == f"{BOB}/phone", copy

    # Sent copy: the laptop (n2) writes to alice (n3); the phone (n1) gets a copy.
    sent = asyncio.ensure_future(wait_event(phone, "carbon_sent"))
    laptop.send_message(ALICE, "from the laptop", mid="snt-1")
    await alice.expect_message(body="from the laptop", sender=f"{BOB}/laptop")
    copy = await sent
    fwd = copy["carbon_sent"]
    assert fwd["body"] == "from the laptop", copy
    assert str(fwd["from"]) == f"{BOB}/laptop" and fwd["to"].bare == ALICE, copy
    await barrier(alice, laptop)
    assert not [m for m in laptop.messages.seen if "from the laptop" in str(m)], \
        "sending resource got a carbon of its own message"

    # XEP-0280 §7: a message marked <private/> (with <no-copy/>) is not copied.
    msg = alice.x.make_message(mto=f"{BOB}/phone", mbody="just for the phone", mtype="chat")
    msg["id"] = "priv-1"
    msg.append(_element("<private xmlns='urn:xmpp:carbons:2'/>"))
    msg.append(_element("<no-copy xmlns='urn:xmpp:hints'/>"))
    msg.send()
    await phone.expect_message(body="just for the phone", sender=f"{ALICE}/pc")
    # The marker takes the same path (n3's stream to n2) after any copy.
    await barrier(alice, laptop)
    leaked = [m for m in laptop.messages.seen if "just for the phone" in str(m)]
    assert leaked == [], f"private message copied to the other node: {leaked}"

    # A resource of bob's that did not enable carbons (on n3) gets no copies.
    tablet = await online(xmpp, n3, f"{BOB}/tablet")
    alice.send_message(f"{BOB}/phone", "not for the tablet")
    await phone.expect_message(body="not for the tablet")
    await barrier(alice, tablet)
    assert not [m for m in tablet.messages.seen if "not for the tablet" in str(m)], \
        "a resource without carbons got a copy"


def _element(xml: str):
    from xml.etree import ElementTree as ET
    return ET.fromstring(xml)


async def test_blocking_a_user_on_another_node(server, xmpp, postgres, redis):
    n1, n2 = start_cluster(server, postgres, redis, n=2, users=USERS)
    alice = await online(xmpp, n1, f"{ALICE}/a")
    await alice.roster_get()
    bob = await online(xmpp, n2, f"{BOB}/b", plugins=["xep_0191"])
    await bob.roster_get()
    # Markers: carol shares alice's node, dave bob's. The n1 -> n2 stream
    # carries everything n1 routes to n2 in order, so carol's marker to bob
    # arrives after anything of alice's that was wrongly let through.
    carol = await online(xmpp, n1, f"{CAROL}/c")
    dave = await online(xmpp, n2, f"{DAVE}/d")
    await make_friends(alice, bob)

    res = await bob.x.plugin["xep_0191"].block(ALICE)
    assert res["type"] == "result", res
    blocked = await bob.x.plugin["xep_0191"].get_blocked_jids()
    assert {str(j) for j in blocked} == {ALICE}, blocked
    # XEP-0191 §3.3: the blocked contact sees the user go offline.
    await alice.expect_presence(sender=f"{BOB}/b", ptype="unavailable")

    # Inbound, decided on alice's node against bob's list in PostgreSQL:
    # neither her messages nor her presence reach bob on n2.
    alice.send_message(BOB, "can you hear me")
    alice.send_message(f"{BOB}/b", "can you hear me (full JID)")
    alice.x.send_presence(pstatus="blocked status")
    await alice.sync()
    await barrier(carol, bob)
    got = [m["body"] for m in bob.messages.seen if "can you hear me" in (m["body"] or "")]
    assert got == [], f"blocked contact's messages were delivered across nodes: {got}"
    assert not [p for p in bob.presences.seen if p["status"] == "blocked status"], \
        "blocked contact's presence was delivered across nodes"

    # Outbound: bob's message to alice is refused with not-acceptable + <blocked/>.
    bob.send_message(ALICE, "to a blocked contact", mid="out-blocked")
    err = await bob.messages.expect(lambda m: m["type"] == "error" and m["id"] == "out-blocked",
                                    "(error for message to blocked contact)")
    assert err["error"]["condition"] == "not-acceptable", err
    assert err.xml.find(".//{urn:xmpp:blocking:errors}blocked") is not None, err
    await barrier(dave, alice)
    assert [m for m in alice.messages.seen if m["body"] == "to a blocked contact"] == []

    # Unblocking restores delivery and presence, across nodes.
    res = await bob.x.plugin["xep_0191"].unblock(ALICE)
    assert res["type"] == "result", res
    await alice.expect_presence(sender=f"{BOB}/b", ptype="available")
    alice.send_message(f"{BOB}/b", "after unblock")
    await bob.expect_message(body="after unblock", sender=f"{ALICE}/a")
    alice.x.send_presence(pstatus="back in touch")
    await bob.presences.expect(lambda p: p["status"] == "back in touch",
                               "(presence after unblock)")


async def test_csi_on_one_node_holds_what_another_routes(server, xmpp, postgres, redis):
    n1, n2 = start_cluster(server, postgres, redis, n=2, users=USERS, extra=ADMIN_API)
    bob = await online(xmpp, n2, f"{BOB}/b", plugins=["xep_0198", "xep_0352"])
    alice = await online(xmpp, n1, f"{ALICE}/a")
    await subscribe(bob, alice)
    acks = Inbox(bob, "SM ack")
    bob.x.register_handler(Callback("wx sm acks", MatchXPath("{urn:xmpp:sm:3}a"), acks.put))
    tok = token(n2)

    bob.x.plugin["xep_0352"].send_inactive()
    await bob.sync()
    before = admin(n2, tok, "stats")["cluster"]["envelopes_received"]
    for status in ("one", "two", "three"):
        alice.x.send_presence(pstatus=status)
    await alice.sync()  # routed on n1: three envelopes on their way to n2
    # Nothing the client can see tells that n2 has them (they are held):
    # n2's envelope counter does.
    await until(lambda: admin(n2, tok, "stats")["cluster"]["envelopes_received"] >= before + 3,
                "n2 received alice's three presences")
    bob.x.send_raw("<r xmlns='urn:xmpp:sm:3'/>")
    await acks.expect(desc="(<a/> for our <r/>)")
    held = [p for p in bob.presences.seen if p["status"] in ("one", "two", "three")]
    assert held == [], f"presence reached an inactive client: {held}"

    bob.x.plugin["xep_0352"].send_active()
    p = await bob.presences.expect(lambda p: p["status"] in ("one", "two", "three"),
                                   "(flushed presence)")
    assert p["status"] == "three" and str(p["from"]) == f"{ALICE}/a", p
    await bob.sync()
    await barrier(alice, bob)
    stale = [p["status"] for p in bob.presences.seen if p["status"] in ("one", "two")]
    assert stale == [], f"superseded presence delivered after flush: {stale}"

    # An urgent stanza (a message with a body) from the other node flushes at once.
    bob.x.plugin["xep_0352"].send_inactive()
    await bob.sync()
    alice.x.send_presence(pstatus="four")
    alice.send_message(f"{BOB}/b", "wake up")
    await bob.expect_message(body="wake up", sender=f"{ALICE}/a")
    assert [p["status"] for p in bob.presences.seen if p["status"] == "four"] == ["four"]


def _push_inbox(app) -> Inbox:
    publishes = Inbox(app, "pubsub publish")
    app.x.register_handler(Callback("push publishes", StanzaPath("iq@type=set"),
                                    lambda iq: publishes.put(iq)))
    return publishes


def _summary(iq) -> dict:
    publish = iq.xml.find(f".//{{{NS_PUBSUB}}}publish")
    values = {f.get("var"): [v.text for v in f.findall(f"{{{NS_DATA}}}value")]
              for f in publish.iter(f"{{{NS_DATA}}}field")}
    return {"node": publish.get("node"), **values}


async def _enable_push(client, node: str):
    # slixmpp 1.17 has no XEP-0357 plugin: raw <enable/> (as in test_modern_im).
    res = await client.iq(client.make_iq("set", None, f"""
        <enable xmlns='urn:xmpp:push:0' jid='{APP}/appserver' node='{node}'/>"""))
    assert res["type"] == "result", res


async def test_push_for_a_session_on_another_node(server, xmpp, postgres, redis):
    n1, n2, n3 = start_cluster(server, postgres, redis, users=USERS)
    app = await online(xmpp, n3, f"{APP}/appserver")
    publishes = _push_inbox(app)

    # A stream-managed phone on n2 whose connection breaks: detached, waiting
    # to be resumed. A message routed on n1 is queued for it on n2, and n1
    # publishes the push (the detached flag came through the registry).
    phone = xmpp.new(n2, f"{BOB}/phone", PASSWORD)
    phone.x.register_plugin("xep_0198")
    enabled = asyncio.ensure_future(wait_event(phone, "sm_enabled"))
    await phone.login()
    await enabled
    await phone.online()
    await _enable_push(phone, "node-phone")
    phone.kill()
    await phone.wait_disconnected()
    alice = await online(xmpp, n1, f"{ALICE}/a")
    alice.send_message(BOB, "are you there")
    iq = await publishes.expect(lambda iq: iq.xml.find(f".//{{{NS_PUBSUB}}}publish") is not None,
                                "(push publish for the detached session)")
    summary = _summary(iq)
    assert summary["node"] == "node-phone", iq
    assert summary.get("FORM_TYPE") == ["urn:xmpp:push:summary"], iq
    assert summary.get("last-message-sender") == [ALICE], iq
    assert "are you there" not in str(iq), f"push leaked the body: {iq}"
    # The message waits in the detached session on n2: resuming there gets it.
    resumed = asyncio.ensure_future(wait_event(phone, "session_resumed"))
    phone.x.connect(host="127.0.0.1", port=phone.port)
    await resumed
    await phone.expect_message(body="are you there", sender=f"{ALICE}/a")

    # Offline on every node: the push comes from the sender's node (n1),
    # the registration being in PostgreSQL, and the message is stored.
    await phone.close()
    other = await online(xmpp, n2, f"{BOB}/other")
    await _enable_push(other, "node-other")
    await other.close()
    # n1 must know bob is gone from n2 (the registry), not only n2.
    await until(lambda: (s := status(n1)) and s["n2"]["sessions"] == 0, "bob offline on n2")
    alice.send_message(BOB, "wake up")
    iq = await publishes.expect(
        lambda iq: _summary(iq)["node"] == "node-other", "(push publish while offline)")
    assert "wake up" not in str(iq), f"push leaked the body: {iq}"
    back = await online(xmpp, n3, f"{BOB}/back")
    await back.expect_message(body="wake up", sender=f"{ALICE}/a")


async def test_mam_across_nodes_is_one_archive(server, xmpp, postgres, redis):
    n1, n2, n3 = start_cluster(server, postgres, redis, users=USERS)
    alice = await online(xmpp, n1, f"{ALICE}/a", plugins=MAM)
    bob = await online(xmpp, n2, f"{BOB}/b", plugins=MAM)
    await alice.roster_get()
    await bob.roster_get()
    await make_friends(alice, bob)  # the default policy archives contacts' messages
    for i in range(5):
        alice.send_message(BOB, f"a2b {i}")
        bob.send_message(ALICE, f"b2a {i}")
    for i in range(5):
        await bob.expect_message(body=f"a2b {i}")
        await alice.expect_message(body=f"b2a {i}")
    # Each recipient's copy carries the stanza-id its own archive gave it.
    got = [m for m in bob.messages.seen if (m["body"] or "").startswith("a2b")]
    assert all(m.xml.find("{urn:xmpp:sid:0}stanza-id[@by='bob@localhost']") is not None
               for m in got), got

    # Both archives, each read from the third node.
    expected = sorted([f"a2b {i}" for i in range(5)] + [f"b2a {i}" for i in range(5)])
    for user in (ALICE, BOB):
        reader = await online(xmpp, n3, f"{user}/reader", plugins=MAM)
        _, bodies, complete = await mam_page(reader, max=100)
        assert complete, bodies
        assert sorted(b for b in bodies if b and b[:3] in ("a2b", "b2a")) == expected, \
            (user, bodies)


async def test_probes_and_offline_storage_across_nodes(server, xmpp, postgres, redis):
    n1, n2, n3 = start_cluster(server, postgres, redis, users=USERS)
    alice = await online(xmpp, n1, f"{ALICE}/a")
    await alice.roster_get()
    bob = await online(xmpp, n2, f"{BOB}/b", priority=3)
    await bob.roster_get()
    await make_friends(alice, bob)

    # Presence probes (RFC 6121 §4.3): alice logs in again on n3; her
    # initial presence probes bob, whose node answers with his presence.
    await alice.close()
    await bob.expect_presence(sender=f"{ALICE}/a", ptype="unavailable")
    alice = xmpp.new(n3, f"{ALICE}/again", PASSWORD)
    await alice.login()
    await alice.roster_get()
    await alice.online()
    p = await alice.expect_presence(sender=f"{BOB}/b", ptype="available")
    assert p["priority"] == 3, p
    await bob.expect_presence(sender=f"{ALICE}/again", ptype="available")

    # Online on another node: a bare-JID message, and one for a resource
    # that is not bound (RFC 6121 §8.5.3.2.1), reach bob live, not storage.
    alice.send_message(BOB, "live, bare")
    alice.send_message(f"{BOB}/gone", "live, unknown resource")
    await bob.expect_message(body="live, bare", sender=f"{ALICE}/again")
    await bob.expect_message(body="live, unknown resource", sender=f"{ALICE}/again")

    # Only a negative-priority resource online (on n2): bare-JID messages
    # are stored as if nobody were online (RFC 6121 §8.5.2.1.1).
    await bob.close()
    await alice.expect_presence(sender=f"{BOB}/b", ptype="unavailable")
    shy = await online(xmpp, n2, f"{BOB}/shy", priority=-1)
    await alice.expect_presence(sender=f"{BOB}/shy", ptype="available")
    alice.send_message(BOB, "stored while shy")
    await barrier(alice, shy)
    assert not [m for m in shy.messages.seen if m["body"] == "stored while shy"], \
        "a negative-priority resource got a bare-JID message"
    await shy.close()
    await alice.expect_presence(sender=f"{BOB}/shy", ptype="unavailable")
    alice.send_message(BOB, "stored while away")
    await alice.sync()

    # Bob comes back on n1: the stored messages, in order, and none of the
    # ones he had received live.
    back = await online(xmpp, n1, f"{BOB}/back")
    await back.expect_message(body="stored while shy", sender=f"{ALICE}/again")
    await back.expect_message(body="stored while away", sender=f"{ALICE}/again")
    await barrier(alice, back)
    bodies = [m["body"] for m in back.messages.seen if (m["body"] or "").startswith(("live", "stored"))]
    assert bodies == ["stored while shy", "stored while away"], bodies
