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


async def test_client_terminate_sends_unavailable(server, xmpp):
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


async def test_session_started_on_bosh_resumes_on_tcp(server, xmpp):
    """XEP-0198 across transports: stream management enabled over BOSH; a
    TCP connection resumes the session and gets what BOSH never delivered."""
    srv = server(users=USERS)
    bob = await xmpp.login(srv, BOB, USERS[BOB])
    raw = RawBosh(srv.http_port)
    jid = await raw.login("alice", USERS[ALICE])
    r = await raw.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
    enabled = r.find("{urn:xmpp:sm:3}enabled")
    assert enabled is not None and enabled.get("id"), ET.tostring(r)
    # One message arrives over BOSH (h = 1), the next is left unread.
    poll = asyncio.create_task(raw.send())
    bob.send_message(jid, "one")
    assert "one" in texts(await poll)
    bob.send_message(jid, "two")
    await bob.sync()

    alice_tcp = xmpp.new(srv, ALICE, USERS[ALICE])
    alice_tcp.x.register_plugin("xep_0198")
    plugin = alice_tcp.x.plugin["xep_0198"]
    plugin.sm_id = enabled.get("id")
    plugin.handled = 1
    plugin.allow_resume = True
    fut = asyncio.get_running_loop().create_future()
    alice_tcp.x.add_event_handler(
        "session_resumed", lambda ev: fut.done() or fut.set_result(ev), disposable=True)
    alice_tcp.x.connect(host="127.0.0.1", port=srv.c2s_port)
    await asyncio.wait_for(fut, 30)
    got = await alice_tcp.expect_message(body="two")
    assert str(got["to"]) == jid, got
    assert not alice_tcp.messages.matching(lambda m: str(m["body"]) == "one")
    # The BOSH session ended with the move.
    status, text = await raw.post(body(raw.next_rid(), raw.sid))
    assert ET.fromstring(text).get("type") == "terminate", text


async def test_a_body_over_the_size_limit_ends_the_stream_as_on_tcp(server):
    """Before authentication a body may be at most max_stanza_bytes_before_auth
    (as a stanza on TCP): a larger one ends the stream with policy-violation."""
    srv = server({"limits": {"max_stanza_bytes_before_auth": 2000}}, users=USERS)
    raw = RawBosh(srv.http_port)
    await raw.create()
    big = "<message xmlns='jabber:client'><body>" + "x" * 5000 + "</body></message>"
    r = await raw.send(big)
    assert condition(r) == ("terminate", "remote-stream-error"), ET.tostring(r)
    err = r.find("{http://etherx.jabber.org/streams}error")
    assert err is not None, ET.tostring(r)
    assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None, \
        ET.tostring(r)


async def test_session_started_on_tcp_resumes_on_bosh(server, xmpp):
    srv = server(users=USERS)
    alice_tcp = xmpp.new(srv, f"{ALICE}/phone", USERS[ALICE])
    alice_tcp.x.register_plugin("xep_0198")
    fut = asyncio.get_running_loop().create_future()
    alice_tcp.x.add_event_handler(
        "sm_enabled", lambda ev: fut.done() or fut.set_result(ev), disposable=True)
    await alice_tcp.login()
    await asyncio.wait_for(fut, 30)
    plugin = alice_tcp.x.plugin["xep_0198"]
    assert plugin.sm_id, "server did not offer resumption"
    bob = await xmpp.login(srv, BOB, USERS[BOB])
    await bob.online()
    alice_tcp.kill()
    await alice_tcp.wait_disconnected()
    bob.send_message(f"{ALICE}/phone", "waiting for the web page")
    await bob.sync()

    raw = RawBosh(srv.http_port)
    await raw.create()
    await raw.authenticate("alice", USERS[ALICE])
    r = await raw.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{plugin.sm_id}' "
                       f"h='{plugin.handled}'/>")
    assert r.find("{urn:xmpp:sm:3}resumed") is not None, ET.tostring(r)
    got = r if "waiting for the web page" in texts(r) else await raw.send()
    assert "waiting for the web page" in texts(got), ET.tostring(got)
    poll = asyncio.create_task(raw.send(
        f"<message xmlns='jabber:client' to='{BOB}' type='chat'><body>from BOSH</body></message>"))
    msg = await bob.expect_message(body="from BOSH")
    assert str(msg["from"]) == f"{ALICE}/phone"
    bob.send_message(f"{ALICE}/phone", "done")
    assert "done" in texts(await poll) or "done" in texts(await raw.send())


async def test_a_page_of_a_foreign_origin_is_refused_and_creates_no_session(server):
    srv = server({"bosh": {"max_sessions": 1}}, users=USERS)
    foreign = RawBosh(srv.http_port, origin="https://evil.example")
    status, text = await foreign.post(body(foreign.rid, to=DOMAIN, wait="60", hold="1", ver="1.6"))
    assert status == 403, (status, text)
    assert "sid=" not in text, text
    # The refused request took no session slot: the only one is still free.
    own = RawBosh(srv.http_port, origin=f"http://127.0.0.1:{srv.http_port}")
    r = await own.create()
    assert r.get("sid"), ET.tostring(r)
