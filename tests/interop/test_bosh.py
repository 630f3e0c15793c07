"""BOSH (XEP-0124, XEP-0206) at /http-bind on the HTTP listener.

A real BOSH client library (strophe.js under Node, ``wxtest.node``) logs in,
uses the roster and chats with a slixmpp client on TCP; the wire-level rules
(request ids out of order, unknown sessions, inactivity, the session cap)
are driven with raw HTTP (``wxtest.bosh``).
"""

import asyncio

import pytest

from wxtest import DOMAIN
from wxtest.bosh import RawBosh, body, condition, texts
from wxtest.strophe import StropheClient

import xml.etree.ElementTree as ET


ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
USERS = {ALICE: "alice-password", BOB: "bob-password"}


def url(srv) -> str:
    return f"http://127.0.0.1:{srv.http_port}/http-bind"


@pytest.fixture
def node(xmpp):
    """Factory of strophe.js clients, closed with the test's slixmpp clients."""
    async def new(label: str) -> StropheClient:
        c = await StropheClient(label).start()
        xmpp.clients.append(c)
        return c

    return new


async def test_strophe_logs_in_uses_the_roster_and_chats_with_a_tcp_client(server, xmpp, node):
    srv = server(users=USERS)
    bob = await xmpp.login(srv, BOB, USERS[BOB])
    await bob.online()
    alice = await node("strophe-alice")
    await alice.connect(url(srv), f"{ALICE}/web", USERS[ALICE])

    # Roster: add bob, read it back.
    r = await alice.iq(
        "<iq xmlns='jabber:client' type='set' id='r1'><query xmlns='jabber:iq:roster'>"
        f"<item jid='{BOB}' name='Bob'><group>Friends</group></item></query></iq>")
    assert r["type"] == "result", r
    r = await alice.iq("<iq xmlns='jabber:client' type='get' id='r2'>"
                       "<query xmlns='jabber:iq:roster'/></iq>")
    assert r["type"] == "result" and f"jid=\"{BOB}\"" in r["xml"] and "Friends" in r["xml"], r

    # Presence and messages both ways between BOSH and TCP.
    alice.send("<presence xmlns='jabber:client'/>")
    alice.send(f"<message xmlns='jabber:client' to='{BOB}' type='chat'>"
               "<body>hello from BOSH</body></message>")
    msg = await bob.expect_message(body="hello from BOSH")
    assert str(msg["from"]) == f"{ALICE}/web"
    bob.send_message(f"{ALICE}/web", "hello from TCP")
    got = await alice.expect_stanza("hello from TCP")
    assert f"from=\"{BOB}/" in got

    alice.command(op="disconnect")
    await alice.status("DISCONNECTED")


async def test_strophe_with_a_wrong_password_fails_auth(server, node):
    srv = server(users=USERS)
    alice = await node("strophe-wrong")
    alice.command(op="connect", url=url(srv), jid=f"{ALICE}/web", password="nope")
    ev = await alice.status("CONNECTED", "AUTHFAIL", "CONNFAIL")
    assert ev["status"] == "AUTHFAIL", ev


async def test_out_of_order_request_ids_are_processed_in_order(server, xmpp):
    srv = server(users=USERS)
    bob = await xmpp.login(srv, BOB, USERS[BOB])
    await bob.online()
    raw = RawBosh(srv.http_port)
    await raw.login("alice", USERS[ALICE])
    first, second = raw.rid + 1, raw.rid + 2
    msg = lambda text: (f"<message xmlns='jabber:client' to='{BOB}' type='chat'>"
                        f"<body>{text}</body></message>")
    # The later request first, twice: the server holds it until the gap is
    # filled, and answers the older copy with the recoverable error
    # (XEP-0124 §14.3) as the newer one takes its place. That answer proves
    # the later request is waiting before the earlier one is sent.
    early = [asyncio.create_task(raw.post(body(second, raw.sid, msg("two"))))
             for _ in range(2)]
    done, _ = await asyncio.wait(early, return_when=asyncio.FIRST_COMPLETED, timeout=30)
    assert done, raw.wire()
    status, text = done.pop().result()
    assert status == 200 and ET.fromstring(text).get("type") == "error", raw.wire()
    waiting = next(t for t in early if not t.done())
    # Now the gap is filled: both are processed, the earlier first.
    status, text = await raw.post(body(first, raw.sid, msg("one")))
    assert status == 200, text
    answer = ET.fromstring(text)
    assert answer.get("type") is None, text
    assert answer.get("ack") == str(second), f"acks the later request: {text}"
    await bob.expect_message(body="one")
    await bob.expect_message(body="two")
    bodies = [str(m["body"]) for m in bob.messages.seen if str(m["body"]) in ("one", "two")]
    assert bodies == ["one", "two"], bodies
    raw.rid = second
    # The later request is still held; a message for alice answers it.
    bob.send_message(f"{ALICE}/raw", "back")
    status, text = await waiting
    assert "back" in texts(ET.fromstring(text)), text


async def test_request_id_outside_the_window_ends_the_session(server):
    srv = server(users=USERS)
    raw = RawBosh(srv.http_port)
    await raw.create()
    status, text = await raw.post(body(raw.rid + 5, raw.sid))
    assert status == 200
    assert condition(ET.fromstring(text)) == ("terminate", "item-not-found"), text
    status, text = await raw.post(body(raw.rid + 1, raw.sid))
    assert condition(ET.fromstring(text)) == ("terminate", "item-not-found"), text


async def test_unknown_session_gets_item_not_found(server):
    srv = server(users=USERS)
    raw = RawBosh(srv.http_port)
    status, text = await raw.post(body(12345, "no-such-session"))
    assert status == 200
    assert condition(ET.fromstring(text)) == ("terminate", "item-not-found"), text
    # Not XML, or not a BOSH body: answered, and no session is harmed.
    status, text = await raw.post("<body")
    assert condition(ET.fromstring(text)) == ("terminate", "remote-stream-error"), text
    status, text = await raw.post("<body xmlns='http://jabber.org/protocol/httpbind'/>")
    assert condition(ET.fromstring(text)) == ("terminate", "bad-request"), text
    status, text = await raw.post(body(1, to="unknown.example"))
    assert condition(ET.fromstring(text)) == ("terminate", "host-unknown"), text


async def test_inactivity_ends_the_session(server, xmpp):
    srv = server({"bosh": {"inactivity_secs": 2}}, users=USERS)
    bob = await xmpp.login(srv, BOB, USERS[BOB])
    raw = RawBosh(srv.http_port)
    # wait=1: a held request is answered after a second, and then the
    # client makes no more requests.
    features = await raw.create(wait=1)
    assert features.get("inactivity") == "2" and features.get("wait") == "1"
    await raw.login_after_create("alice", USERS[ALICE])
    # Directed presence: bob is told when the session ends (RFC 6121 §4.6.3).
    await raw.send("<presence xmlns='jabber:client'/>"
                   f"<presence xmlns='jabber:client' to='{bob.jid}'/>")
    await bob.expect_presence(sender=f"{ALICE}/raw")
    await bob.expect_presence(sender=f"{ALICE}/raw", ptype="unavailable")
    status, text = await raw.post(body(raw.next_rid(), raw.sid))
    assert condition(ET.fromstring(text)) == ("terminate", "item-not-found"), text


async def test_too_many_sessions_are_refused(server):
    srv = server({"bosh": {"max_sessions": 2}}, users=USERS)
    a, b, c = RawBosh(srv.http_port), RawBosh(srv.http_port), RawBosh(srv.http_port)
    await a.create()
    await b.create()
    status, text = await c.post(body(c.rid, to=DOMAIN, wait="60", hold="1", ver="1.6"))
    assert condition(ET.fromstring(text)) == ("terminate", "policy-violation"), text
    # A session that ends makes room.
    r = await a.send(type="terminate")
    assert r.get("type") == "terminate", ET.tostring(r)
    await c.create()


async def test_client_terminate_sends_unavailable_and_cross_origin_is_checked(server, xmpp):
    srv = server(users=USERS)
    bob = await xmpp.login(srv, BOB, USERS[BOB])
    raw = RawBosh(srv.http_port)
    await raw.login("alice", USERS[ALICE])
    await raw.send("<presence xmlns='jabber:client'/>"
                   f"<presence xmlns='jabber:client' to='{bob.jid}'/>")
    await bob.expect_presence(sender=f"{ALICE}/raw")
    r = await raw.send("<presence xmlns='jabber:client' type='unavailable'/>", type="terminate")
    assert r.get("type") == "terminate", ET.tostring(r)
    await bob.expect_presence(sender=f"{ALICE}/raw", ptype="unavailable")
