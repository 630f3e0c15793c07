"""Modern IM extensions driven by slixmpp's own plugins: stream management
(XEP-0198), carbons (XEP-0280), MAM (XEP-0313), CSI (XEP-0352), blocking
(XEP-0191), admin ad-hoc commands (XEP-0050/0133), push (XEP-0357), vCard
(XEP-0054), private storage (XEP-0049) and last activity (XEP-0012).

Where a slixmpp plugin is missing (XEP-0357 in slixmpp 1.17) or only offers
the server side (XEP-0133), the stanzas are built by hand with ``make_iq``;
each place says so.
"""

from __future__ import annotations

import asyncio
import uuid
from xml.etree import ElementTree as ET

from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath, StanzaPath

import pytest

from conftest import PASSWORD
from wxtest import STEP_TIMEOUT, subjects
from wxtest.client import Inbox, barrier

ALICE = "alice@localhost"
BOB = "bob@localhost"
CAROL = "carol@localhost"
ADMIN = "admin@localhost"
APP = "pushsvc@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD, CAROL: PASSWORD}

pytestmark = pytest.mark.skipif(
    subjects.subject_name() != "waxwing",
    reason="the Prosody subject's config loads none of these modules (MAM, carbons, CSI, …)")

NS_MAM = "urn:xmpp:mam:2"
NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_DATA = "jabber:x:data"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"


async def online(xmpp, srv, full_jid, plugins=(), priority=None):
    client = xmpp.new(srv, full_jid, PASSWORD)
    for p in plugins:
        client.x.register_plugin(p)
    await client.login()
    await client.online(priority=priority)
    return client


async def wait_event(client, name, timeout=STEP_TIMEOUT):
    fut = asyncio.get_running_loop().create_future()
    client.x.add_event_handler(
        name, lambda ev: fut.done() or fut.set_result(ev), disposable=True)
    try:
        return await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"{client.label}: no {name!r} within {timeout:.0f}s\n"
                             f"wire:\n{client.wire_text()}") from None


async def subscribe(watcher, contact):
    """``watcher`` gets a 'to' subscription to ``contact``'s presence."""
    await watcher.roster_get()
    await contact.roster_get()
    watcher.x.send_presence(pto=contact.jid.bare, ptype="subscribe")
    await contact.expect_presence(sender=watcher.jid.bare, ptype="subscribe")
    contact.x.send_presence(pto=watcher.jid.bare, ptype="subscribed")
    await watcher.expect_presence(sender=contact.jid.bare, ptype="subscribed")
    await watcher.expect_presence(sender=str(contact.jid), ptype="available")


# -- XEP-0198 -------------------------------------------------------------------

async def test_sm_resume_after_tcp_cut_delivers_everything_exactly_once(server, xmpp):
    srv = server(users=USERS)
    bob = xmpp.new(srv, f"{BOB}/phone", PASSWORD)
    bob.x.register_plugin("xep_0198")
    enabled = asyncio.ensure_future(wait_event(bob, "sm_enabled"))
    await bob.login()
    await enabled
    sm = bob.x.plugin["xep_0198"]
    assert sm.sm_id, "server did not offer resumption (<enabled resume='true' id=…/>)"
    await bob.online()
    alice = await online(xmpp, srv, f"{ALICE}/pc")
    await barrier(alice, bob)  # bob's stream is live and acking

    # Cut TCP: no </stream:stream>, no TLS close_notify.
    bob.kill()
    await bob.wait_disconnected()

    n = 20
    bodies = [f"in flight {i}" for i in range(n)]
    for b in bodies:
        alice.send_message(f"{BOB}/phone", b)
    await alice.sync()  # the server has routed all 20 (into bob's SM queue)

    resumed = asyncio.ensure_future(wait_event(bob, "session_resumed"))
    bob.x.connect(host="127.0.0.1", port=bob.port)
    await resumed
    for b in bodies:
        await bob.expect_message(body=b, sender=f"{ALICE}/pc")
    await barrier(alice, bob)
    got = [m["body"] for m in bob.messages.seen if m["body"].startswith("in flight")]
    assert sorted(got) == sorted(bodies), f"lost or duplicated after resume: {got}"
    assert got == bodies, f"out of order after resume: {got}"


# -- XEP-0280 -------------------------------------------------------------------

async def test_carbons_sent_and_received_copies(server, xmpp):
    srv = server(users=USERS)
    phone = await online(xmpp, srv, f"{BOB}/phone", plugins=["xep_0280"], priority=5)
    laptop = await online(xmpp, srv, f"{BOB}/laptop", plugins=["xep_0280"], priority=1)
    for c in (phone, laptop):
        res = await c.x.plugin["xep_0280"].enable()
        assert res["type"] == "result", res
    alice = await online(xmpp, srv, f"{ALICE}/pc")

    received = asyncio.ensure_future(wait_event(laptop, "carbon_received"))
    alice.send_message(f"{BOB}/phone", "to the phone", mid="rcv-1")
    await phone.expect_message(body="to the phone", sender=f"{ALICE}/pc")
    copy = await received
    fwd = copy["carbon_received"]
    assert copy["from"] == laptop.jid.bare, f"carbon not from own bare JID: {copy}"
    assert fwd["body"] == "to the phone" and str(fwd["from"]) == f"{ALICE}/pc", copy
    assert str(fwd["to"]) == f"{BOB}/phone", copy

    sent = asyncio.ensure_future(wait_event(phone, "carbon_sent"))
    laptop.send_message(ALICE, "from the laptop", mid="snt-1")
    await alice.expect_message(body="from the laptop", sender=f"{BOB}/laptop")
    copy = await sent
    fwd = copy["carbon_sent"]
    assert fwd["body"] == "from the laptop", copy
    assert str(fwd["from"]) == f"{BOB}/laptop" and fwd["to"].bare == ALICE, copy
    # The sender itself gets no copy of its own message.
    await barrier(alice, laptop)
    assert not [m for m in laptop.messages.seen if "from the laptop" in str(m)], \
        "sending resource got a carbon of its own message"


# -- XEP-0313 -------------------------------------------------------------------

async def mam_page(client, **rsm):
    iq = await client.x.plugin["xep_0313"].retrieve(rsm=rsm, timeout=STEP_TIMEOUT)
    assert iq["type"] == "result", iq
    results = iq["mam"]["results"]
    ids = [r["mam_result"]["id"] for r in results]
    bodies = [r["mam_result"]["forwarded"]["stanza"]["body"] for r in results]
    fin = iq.xml.find(f"{{{NS_MAM}}}fin")
    assert fin is not None, iq
    return ids, bodies, fin.get("complete") in ("true", "1")


async def test_mam_pages_forwards_and_backwards_and_survives_restart(server, xmpp):
    srv = server(users=USERS)
    bob = await online(xmpp, srv, f"{BOB}/b", plugins=["xep_0059", "xep_0313"])
    alice = await online(xmpp, srv, f"{ALICE}/a")
    n = 250
    expected = [f"archived {i:03d}" for i in range(n)]
    for b in expected:
        alice.send_message(BOB, b)
    await bob.expect_message(body=expected[-1])

    async def walk(client):
        # Forwards with <after/>.
        fwd_ids, fwd_bodies, after, complete, pages = [], [], None, False, 0
        while not complete:
            rsm = {"max": 100} if after is None else {"max": 100, "after": after}
            ids, bodies, complete = await mam_page(client, **rsm)
            assert ids or complete, "empty page that is not the last"
            fwd_ids += ids
            fwd_bodies += bodies
            after = ids[-1] if ids else after
            pages += 1
            assert pages <= 5, "forward paging does not terminate"
        mine = [b for b in fwd_bodies if b.startswith("archived")]
        assert mine == expected, f"forward paging: {len(mine)} messages, gaps/dupes/order wrong"
        assert len(set(fwd_ids)) == len(fwd_ids), "duplicate archive ids going forwards"

        # Backwards with <before/>, starting at the end.
        # An empty <before/> asks for the last page (XEP-0059 §2.5); the
        # plugin stringifies RSM values, so this one query is built by hand.
        qid = f"last-{uuid.uuid4().hex[:8]}"
        res = await client.iq(client.make_iq("set", None, f"""
            <query xmlns='{NS_MAM}' queryid='{qid}'>
              <set xmlns='http://jabber.org/protocol/rsm'><max>1</max><before/></set>
            </query>"""))
        assert res["type"] == "result", res
        last = [m for m in client.messages.seen
                if m.xml.find(f"{{{NS_MAM}}}result[@queryid='{qid}']") is not None]
        last_ids = [m.xml.find(f"{{{NS_MAM}}}result").get("id") for m in last]
        last_bodies = [m["mam_result"]["forwarded"]["stanza"]["body"] for m in last]
        assert last_ids == [fwd_ids[-1]], f"last page via empty <before/>: {last_ids}"
        back_ids, back_bodies = list(last_ids), list(last_bodies)
        before, pages, complete = last_ids[0], 0, False
        while not complete:
            ids, bodies, complete = await mam_page(client, max=100, before=before)
            assert ids or complete, "empty page that is not the first"
            back_ids = ids + back_ids
            back_bodies = bodies + back_bodies
            before = ids[0] if ids else before
            pages += 1
            assert pages <= 5, "backward paging does not terminate"
        assert back_ids == fwd_ids, "backward paging differs from forward paging"
        assert back_bodies == fwd_bodies

    await walk(bob)
    await bob.close()
    await alice.close()
    srv.restart()
    bob2 = await online(xmpp, srv, f"{BOB}/b2", plugins=["xep_0059", "xep_0313"])
    await walk(bob2)


# -- XEP-0352 -------------------------------------------------------------------

async def test_csi_holds_presence_and_flushes_only_latest(server, xmpp):
    srv = server(users=USERS)
    bob = await online(xmpp, srv, f"{BOB}/b", plugins=["xep_0198", "xep_0352"])
    alice = await online(xmpp, srv, f"{ALICE}/a")
    await subscribe(bob, alice)
    acks = Inbox(bob, "SM ack")
    bob.x.register_handler(Callback("wx sm acks", MatchXPath("{urn:xmpp:sm:3}a"), acks.put))

    bob.x.plugin["xep_0352"].send_inactive()
    await bob.sync()
    for status in ("one", "two", "three"):
        alice.x.send_presence(pstatus=status)
    await alice.sync()  # routed to bob's session by now
    # Barrier on bob's stream that does not end the hold: an SM <r/> nonza is
    # answered with <a/> (an IQ result, being urgent, would flush the queue).
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


# -- XEP-0191 -------------------------------------------------------------------

async def test_blocking_both_directions(server, xmpp):
    srv = server(users=USERS)
    bob = await online(xmpp, srv, f"{BOB}/b", plugins=["xep_0191"])
    alice = await online(xmpp, srv, f"{ALICE}/a")
    carol = await online(xmpp, srv, f"{CAROL}/c")
    res = await bob.x.plugin["xep_0191"].block(ALICE)
    assert res["type"] == "result", res
    blocked = await bob.x.plugin["xep_0191"].get_blocked_jids()
    assert {str(j) for j in blocked} == {ALICE}, blocked

    # Inbound: alice's message is not delivered.
    alice.send_message(BOB, "can you hear me")
    await alice.sync()
    await barrier(carol, bob)
    assert [m for m in bob.messages.seen if m["body"] == "can you hear me"] == [], \
        "blocked contact's message was delivered"

    # Outbound: bob's message to alice is refused with not-acceptable.
    sent = bob.send_message(ALICE, "to a blocked contact", mid="out-blocked")
    err = await bob.messages.expect(lambda m: m["type"] == "error" and m["id"] == "out-blocked",
                                    "(error for message to blocked contact)")
    assert err["error"]["condition"] == "not-acceptable", err
    assert err.xml.find(".//{urn:xmpp:blocking:errors}blocked") is not None, err
    await barrier(carol, alice)
    assert [m for m in alice.messages.seen if m["body"] == "to a blocked contact"] == []
    assert sent["id"] == "out-blocked"

    # Unblocking restores delivery.
    res = await bob.x.plugin["xep_0191"].unblock(ALICE)
    assert res["type"] == "result", res
    alice.send_message(f"{BOB}/b", "after unblock")
    await bob.expect_message(body="after unblock", sender=f"{ALICE}/a")


# -- XEP-0050 / XEP-0133 --------------------------------------------------------

ADD_USER = "http://jabber.org/protocol/admin#add-user"


async def add_user_via_adhoc(client, domain, account, password):
    """slixmpp's xep_0133 plugin only implements the server side and xep_0050's
    client API is callback-session based, so the command IQs are built here."""
    start = await client.iq(client.make_iq(
        "set", domain, f"<command xmlns='{NS_COMMANDS}' node='{ADD_USER}' action='execute'/>"))
    if start["type"] != "result":
        return start
    cmd = start.xml.find(f"{{{NS_COMMANDS}}}command")
    assert cmd is not None and cmd.get("status") == "executing", start
    assert cmd.find(f"{{{NS_DATA}}}x") is not None, f"no form: {start}"
    sid = cmd.get("sessionid")
    return await client.iq(client.make_iq("set", domain, f"""
        <command xmlns='{NS_COMMANDS}' node='{ADD_USER}' sessionid='{sid}' action='complete'>
          <x xmlns='{NS_DATA}' type='submit'>
            <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/admin</value></field>
            <field var='accountjid'><value>{account}</value></field>
            <field var='password'><value>{password}</value></field>
            <field var='password-verify'><value>{password}</value></field>
          </x>
        </command>"""))


async def test_admin_add_user_command(server, xmpp):
    srv = server(overrides={"admins": [ADMIN]}, users={**USERS, ADMIN: PASSWORD})
    admin = await online(xmpp, srv, f"{ADMIN}/console", plugins=["xep_0050"])
    res = await add_user_via_adhoc(admin, srv.domain, "dave@localhost", "dave-pass-1")
    assert res["type"] == "result", res
    cmd = res.xml.find(f"{{{NS_COMMANDS}}}command")
    assert cmd is not None and cmd.get("status") == "completed", res
    dave = await xmpp.login(srv, "dave@localhost/d", "dave-pass-1")
    assert dave.jid.bare == "dave@localhost"

    alice = await online(xmpp, srv, f"{ALICE}/a", plugins=["xep_0050"])
    res = await add_user_via_adhoc(alice, srv.domain, "eve@localhost", "eve-pass-1")
    assert res["type"] == "error", f"non-admin ran add-user: {res}"
    assert res["error"]["condition"] == "forbidden", res
    eve = xmpp.new(srv, "eve@localhost/e", "eve-pass-1")
    assert await eve.connect() != "session_start", "account created by a non-admin"


# -- XEP-0357 -------------------------------------------------------------------

async def test_push_summary_published_when_client_offline(server, xmpp):
    srv = server(users={**USERS, APP: PASSWORD})
    app = await online(xmpp, srv, f"{APP}/appserver")
    publishes = Inbox(app, "pubsub publish")
    app.x.register_handler(Callback("push publishes", StanzaPath("iq@type=set"),
                                    lambda iq: publishes.put(iq)))
    bob = await online(xmpp, srv, f"{BOB}/phone")
    # slixmpp 1.17 has no XEP-0357 plugin: raw <enable/>.
    res = await bob.iq(bob.make_iq("set", None, f"""
        <enable xmlns='urn:xmpp:push:0' jid='{APP}/appserver' node='node-bob-1'/>"""))
    assert res["type"] == "result", res
    await bob.close()

    alice = await online(xmpp, srv, f"{ALICE}/a")
    alice.send_message(BOB, "wake up")
    iq = await publishes.expect(lambda iq: iq.xml.find(f".//{{{NS_PUBSUB}}}publish") is not None,
                                "(push publish)")
    publish = iq.xml.find(f".//{{{NS_PUBSUB}}}publish")
    assert publish.get("node") == "node-bob-1", iq
    values = {f.get("var"): [v.text for v in f.findall(f"{{{NS_DATA}}}value")]
              for f in publish.iter(f"{{{NS_DATA}}}field")}
    assert values.get("FORM_TYPE") == ["urn:xmpp:push:summary"], iq
    assert "wake up" not in str(iq), f"push leaked the body: {iq}"


async def test_push_published_for_an_inactive_session_but_not_an_active_one(server, xmpp):
    """A message delivered to a session that is online but inactive (CSI)
    wakes the phone; one to the same session while active does not. The
    router asks the push module before it queues a message whether the
    delivery concerns it (and keeps no copy for the event when it does not),
    so the publish for the inactive session depends on that check."""
    srv = server(users={**USERS, APP: PASSWORD})
    app = await online(xmpp, srv, f"{APP}/appserver")
    publishes = Inbox(app, "pubsub publish")
    app.x.register_handler(Callback("push publishes", StanzaPath("iq@type=set"),
                                    lambda iq: publishes.put(iq)))
    bob = await online(xmpp, srv, f"{BOB}/phone", plugins=["xep_0352"])
    res = await bob.iq(bob.make_iq("set", None, f"""
        <enable xmlns='urn:xmpp:push:0' jid='{APP}/appserver' node='node-bob-2'/>"""))
    assert res["type"] == "result", res
    alice = await online(xmpp, srv, f"{ALICE}/a")

    def is_publish(iq):
        return iq.xml.find(f".//{{{NS_PUBSUB}}}publish") is not None

    bob.x.plugin["xep_0352"].send_inactive()
    await bob.sync()
    alice.send_message(f"{BOB}/phone", "while inactive")
    iq = await publishes.expect(is_publish, "(push publish)")
    assert iq.xml.find(f".//{{{NS_PUBSUB}}}publish").get("node") == "node-bob-2", iq
    bob.x.plugin["xep_0352"].send_active()
    await bob.expect_message(body="while inactive")

    # Active again: delivered, nothing published. A notification would be
    # queued for the app server while alice's message is handled, so before
    # the marker alice sends it next.
    alice.send_message(f"{BOB}/phone", "while active")
    await bob.expect_message(body="while active")
    await barrier(alice, app)
    assert len(publishes.matching(is_publish)) == 1, \
        f"a message to an active session was pushed: {publishes.seen}"


# -- XEP-0054 / XEP-0049 / XEP-0012 --------------------------------------------

async def test_vcard_private_storage_and_last_activity(server, xmpp):
    srv = server(users=USERS)
    bob = await online(xmpp, srv, f"{BOB}/b", plugins=["xep_0054", "xep_0049"])

    vc = bob.x.plugin["xep_0054"].make_vcard()
    vc["FN"] = "Bob Builder"
    vc["NICKNAME"] = "bobby"
    # publish_vcard returns nothing; an error response raises IqError.
    await bob.x.plugin["xep_0054"].publish_vcard(vc, timeout=STEP_TIMEOUT)

    # Private storage: an arbitrary namespaced element round-trips.
    store = bob.make_iq("set", None,
                        "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'>"
                        "<colour>teal</colour></prefs></query>")
    res = await bob.iq(store)
    assert res["type"] == "result", res
    got = await bob.iq(bob.make_iq("get", None,
                                   "<query xmlns='jabber:iq:private'>"
                                   "<prefs xmlns='urn:example:prefs'/></query>"))
    assert got["type"] == "result", got
    colour = got.xml.find(".//{urn:example:prefs}colour")
    assert colour is not None and colour.text == "teal", got
    # ... and jabber:iq:private refuses a reserved namespace.
    bad = await bob.iq(bob.make_iq("set", None,
                                   "<query xmlns='jabber:iq:private'>"
                                   "<query xmlns='jabber:iq:roster'/></query>"))
    assert bad["type"] == "error", bad

    alice = await online(xmpp, srv, f"{ALICE}/a", plugins=["xep_0054", "xep_0012"])
    card = await alice.x.plugin["xep_0054"].get_vcard(BOB, local=False, cached=False,
                                                      timeout=STEP_TIMEOUT)
    assert card["vcard_temp"]["FN"] == "Bob Builder", card
    assert card["vcard_temp"]["NICKNAME"] in ("bobby", ["bobby"]), card

    # Last activity of an offline contact needs a subscription (XEP-0012 §5).
    await subscribe(alice, bob)
    bob.x.send_presence(ptype="unavailable", pstatus="gone fishing")
    await alice.expect_presence(sender=f"{BOB}/b", ptype="unavailable")
    await bob.close()
    last = await alice.x.plugin["xep_0012"].get_last_activity(BOB, timeout=STEP_TIMEOUT)
    assert last["type"] == "result", last
    seconds = last["last_activity"]["seconds"]
    assert 0 <= seconds < 60, last
    assert last["last_activity"]["status"] == "gone fishing", last
