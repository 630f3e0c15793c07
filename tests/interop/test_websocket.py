"""XMPP over WebSocket (RFC 7395), driven by a real JavaScript client library
(``@xmpp/client`` under Node.js), next to slixmpp over TCP: login, roster,
messages across transports, XEP-0198 resumption over WebSocket and across
transports (WebSocket → TCP, TCP → WebSocket), the size limit, and the
refusal of upgrades without the ``xmpp`` subprotocol or from a foreign
``Origin``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import pytest

from conftest import PASSWORD
from wxtest import STEP_TIMEOUT, subjects
from wxtest.client import barrier
from wxtest.node import websocket_url

pytestmark = pytest.mark.skipif(
    subjects.subject_name() != "waxwing", reason="WebSocket is Waxwing's HTTP listener")

ALICE = "alice@localhost"
BOB = "bob@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD}


def start(server, overrides: dict | None = None):
    merged = {"listen": {"http": ["127.0.0.1:0"]}}
    for k, v in (overrides or {}).items():
        merged[k] = v
    return server(merged, users=USERS)


async def wait_event(client, name, timeout=STEP_TIMEOUT):
    fut = asyncio.get_running_loop().create_future()
    client.x.add_event_handler(
        name, lambda ev: fut.done() or fut.set_result(ev), disposable=True)
    try:
        return await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"{client.label}: no {name!r} within {timeout:.0f}s\n"
                             f"wire:\n{client.wire_text()}") from None


def message(to: str, body: str) -> str:
    return f"<message xmlns='jabber:client' to='{to}' type='chat'><body>{body}</body></message>"


async def test_login_roster_and_messages_with_a_tcp_client(server, xmpp, node):
    srv = start(server)
    url = websocket_url(srv)
    alice = await node.new("alice-ws")
    jid = await alice.login(url, "alice", PASSWORD, resource="browser")
    assert jid.startswith(f"{ALICE}/browser"), jid
    roster = await alice.iq("<query xmlns='jabber:iq:roster'/>")
    assert "type=\"result\"" in roster and "jabber:iq:roster" in roster, roster
    await alice.send("<presence xmlns='jabber:client'/>")

    bob = await xmpp.login(srv, f"{BOB}/desk", PASSWORD)
    await bob.online()
    # WebSocket → TCP
    await alice.send(message(f"{BOB}/desk", "hello from the browser"))
    got = await bob.expect_message(body="hello from the browser")
    assert str(got["from"]) == jid
    # TCP → WebSocket
    bob.send_message(jid, "hello from the desktop")
    stanza = await alice.expect_stanza("hello from the desktop")
    assert f'from="{BOB}/desk"' in stanza, stanza


async def test_sm_resumption_over_websocket(server, xmpp, node):
    srv = start(server)
    url = websocket_url(srv)
    alice = await node.new("alice-ws")
    jid = await alice.login(url, "alice", PASSWORD, resource="tab")
    sm = await alice.sm()
    assert sm["enabled"] and sm["sm_id"], f"stream management not enabled: {sm}"
    bob = await xmpp.login(srv, f"{BOB}/desk", PASSWORD)
    bob.send_message(jid, "before the cut")
    await alice.expect_stanza("before the cut")

    # The WebSocket's TCP connection dies without a <close/>: the library
    # reconnects and resumes the session (XEP-0198 via SASL2 inline).
    await alice.command("kill")
    bob.send_message(jid, "while the socket was down")
    await alice.expect(lambda e: e.get("event") == "resumed", "resumed",
                       fail_on_error=False)
    await alice.expect_stanza("while the socket was down")
    after = await alice.sm()
    assert after["sm_id"] == sm["sm_id"], f"a new session instead of the old one: {after}"
    # Still the same session: bob's next message reaches the same full JID.
    bob.send_message(jid, "after the resumption")
    await alice.expect_stanza("after the resumption")


async def test_session_started_on_websocket_resumes_on_tcp(server, xmpp, node):
    srv = start(server)
    url = websocket_url(srv)
    alice_ws = await node.new("alice-ws")
    jid = await alice_ws.login(url, "alice", PASSWORD, resource="tab")
    bob = await xmpp.login(srv, f"{BOB}/desk", PASSWORD)
    bob.send_message(jid, "one")
    await alice_ws.expect_stanza(">one<")
    sm = await alice_ws.sm()
    assert sm["enabled"] and sm["sm_id"], sm
    await alice_ws.command("detach")
    bob.send_message(jid, "sent while detached")
    await bob.sync()

    # slixmpp over TCP takes the session over with <resume previd=… h=…/>.
    alice_tcp = xmpp.new(srv, ALICE, PASSWORD)
    alice_tcp.x.register_plugin("xep_0198")
    plugin = alice_tcp.x.plugin["xep_0198"]
    plugin.sm_id = sm["sm_id"]
    plugin.handled = sm["inbound"]
    plugin.allow_resume = True
    resumed = asyncio.ensure_future(wait_event(alice_tcp, "session_resumed"))
    alice_tcp.x.connect(host="127.0.0.1", port=srv.c2s_port)
    await resumed
    got = await alice_tcp.expect_message(body="sent while detached")
    assert str(got["to"]) == jid, f"not the WebSocket session's JID: {got['to']}"
    bob.send_message(jid, "after the move")
    await alice_tcp.expect_message(body="after the move")


async def test_session_started_on_tcp_resumes_on_websocket(server, xmpp, node):
    srv = start(server)
    alice_tcp = xmpp.new(srv, f"{ALICE}/phone", PASSWORD)
    alice_tcp.x.register_plugin("xep_0198")
    enabled = asyncio.ensure_future(wait_event(alice_tcp, "sm_enabled"))
    await alice_tcp.login()
    await enabled
    plugin = alice_tcp.x.plugin["xep_0198"]
    assert plugin.sm_id, "server did not offer resumption"
    bob = await xmpp.login(srv, f"{BOB}/desk", PASSWORD)
    await barrier(bob, alice_tcp)

    alice_tcp.kill()
    await alice_tcp.wait_disconnected()
    bob.send_message(f"{ALICE}/phone", "waiting for the browser")
    await bob.sync()

    alice_ws = await node.new("alice-ws")
    await alice_ws.command("start", service=websocket_url(srv), domain="localhost",
                           username="alice", password=PASSWORD, resource="phone",
                           resume={"id": plugin.sm_id, "h": plugin.handled})
    await alice_ws.expect(lambda e: e.get("event") == "resumed", "resumed")
    stanza = await alice_ws.expect_stanza("waiting for the browser")
    assert f'to="{ALICE}/phone"' in stanza, stanza
    sm = await alice_ws.sm()
    assert sm["sm_id"] == plugin.sm_id, sm
    await alice_ws.send(message(BOB + "/desk", "answer over WebSocket"))
    got = await bob.expect_message(body="answer over WebSocket")
    assert str(got["from"]) == f"{ALICE}/phone"


async def test_oversized_message_is_refused_with_policy_violation(server, xmpp, node):
    srv = start(server, {"limits": {"max_stanza_bytes": 20000}})
    alice = await node.new("alice-ws")
    await alice.login(websocket_url(srv), "alice", PASSWORD)
    await alice.send(message(f"{BOB}/x", "x" * 30000))
    err = await alice.expect(lambda e: e.get("event") == "error", "a stream error",
                             fail_on_error=False)
    assert "policy-violation" in err["message"], err
    await alice.expect(lambda e: e.get("event") == "status" and e.get("status") in
                       ("disconnect", "offline", "close"), "the end of the connection",
                       fail_on_error=False)


# -- the HTTP handshake, checked on the wire ------------------------------------

def handshake(port: int, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """Sends a WebSocket upgrade request; returns the status and headers."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /xmpp-websocket HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ] + [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    fields = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        fields[k.strip().lower()] = v.strip()
    return status, fields


def http_port(srv) -> int:
    return int(srv.listeners["http"][0].rsplit(":", 1)[1])


async def test_upgrade_without_the_xmpp_subprotocol_is_refused(server):
    srv = start(server)
    port = http_port(srv)
    status, _ = await asyncio.to_thread(handshake, port, {})
    assert status == 400, status
    status, _ = await asyncio.to_thread(handshake, port, {"Sec-WebSocket-Protocol": "chat"})
    assert status == 400, status
    status, fields = await asyncio.to_thread(
        handshake, port, {"Sec-WebSocket-Protocol": "chat, xmpp"})
    assert status == 101, status
    assert fields.get("sec-websocket-protocol") == "xmpp", fields


async def test_upgrade_from_a_foreign_origin_is_refused(server):
    srv = start(server)
    port = http_port(srv)
    status, _ = await asyncio.to_thread(
        handshake, port, {"Sec-WebSocket-Protocol": "xmpp", "Origin": "https://evil.example"})
    assert status == 403, status
    status, _ = await asyncio.to_thread(
        handshake, port, {"Sec-WebSocket-Protocol": "xmpp", "Origin": f"http://127.0.0.1:{port}"})
    assert status == 101, status
