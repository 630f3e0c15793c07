"""XEP-0174 link-local messaging: ``waxwing link-local`` (standalone) and the
server's bridge at ``lan.localhost``, with real mDNS inside a network
namespace each test creates (multicast never leaves it).

Peers: the standalone mode, and a scripted peer on PyPI ``zeroconf``
(``wxtest/llpeer.py``, no TLS). Server users are slixmpp clients, outside
the namespace, reaching the server through ``wxtest/nsforward.py``.
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import PASSWORD, SERVERS
from wxtest.linklocal import NetNs, ScriptedPeer, StandalonePeer
from wxtest.subjects import WaxwingServer, subject_name

pytestmark = pytest.mark.skipif(subject_name() != "waxwing",
                                reason="link-local messaging is Waxwing's own feature")

ALICE = "alice@localhost"
DAVE = "dave@localhost"
GW = "lan.localhost"
SERVER_ADDR = "127.0.0.2"


@pytest.fixture
def ns():
    n = NetNs()
    yield n
    n.close()


@pytest.fixture
def bridge(request, ns, tmp_path):
    """Factory: a waxwing server in the namespace, bridging ALICE (only)."""
    started = []
    request.node.stash[SERVERS] = started

    def start(**link_local):
        workdir = tmp_path / "server"
        workdir.mkdir()
        ll = {"enabled": True, "interface": SERVER_ADDR, "port": 0, "machine": "srv",
              "users": [ALICE], "publish_jid": True}
        ll.update(link_local)
        srv = WaxwingServer(workdir, {"link_local": ll}, request.node.name)
        srv.prefix = ns.argv([])
        started.append(srv)
        srv.start()
        for jid in (ALICE, DAVE):
            srv.add_user(jid, PASSWORD)
        # Clients live outside the namespace.
        srv.c2s_port = ns.forward("127.0.0.1", srv.c2s_port)
        return srv

    yield start
    for srv in started:
        srv.stop()


def peer_jid(instance: str) -> str:
    user, machine = instance.rsplit("@", 1)
    return f"{user}%{machine}@{GW}"


async def test_two_standalone_peers_chat_over_tls_and_see_each_other_come_and_go(ns, tmp_path):
    anna = StandalonePeer(ns, "anna", "m1", "127.0.0.3", tmp_path)
    ben = StandalonePeer(ns, "ben", "m2", "127.0.0.4", tmp_path)
    try:
        await anna.expect(lambda l: l == "waxwing: ready", "ready")
        await ben.expect(lambda l: l == "waxwing: ready", "ready")
        await anna.expect(lambda l: l == "presence ben@m2 available", "ben available")
        await ben.expect(lambda l: l == "presence anna@m1 available", "anna available")

        anna.write("/to ben@m2")
        anna.write("hello ben, how are you?")
        await ben.expect(lambda l: l == "message anna@m1 hello ben, how are you?", "anna's message")
        ben.write("/to anna@m1")
        ben.write("fine, and you?")
        await anna.expect(lambda l: l == "message ben@m2 fine, and you?", "ben's reply")

        # Both sides offer TLS by default: the streams are encrypted.
        logs = anna.stderr() + ben.stderr()
        assert "stream out peer=ben@m2 tls=true" in logs and "stream in peer=anna@m1 tls=true" in logs

        ben.write("/status away lunch")
        await anna.expect(lambda l: l == "presence ben@m2 available [away] lunch", "ben away")

        ben.write("/quit")
        await anna.expect(lambda l: l == "presence ben@m2 unavailable", "ben gone")
        ben.proc.wait(15)
        assert ben.proc.returncode == 0, ben.stderr()
        anna.write("/to ben@m2")
        anna.write("are you there?")
        line = await anna.expect(lambda l: l.startswith("error"), "an error for a gone peer")
        assert "ben@m2" in line
    finally:
        anna.stop()
        ben.stop()


async def test_standalone_peer_and_server_user_chat_through_the_bridge(ns, bridge, xmpp, tmp_path):
    srv = bridge()
    bob = StandalonePeer(ns, "bob", "m3", "127.0.0.3", tmp_path)
    try:
        await bob.expect(lambda l: l == "waxwing: ready", "ready")
        alice = await xmpp.login(srv, f"{ALICE}/phone", PASSWORD)
        await alice.online(show="chat", status="on my phone")

        await bob.expect(lambda l: l == "presence alice@srv available on my phone", "alice on LAN")
        p = await alice.expect_presence(sender=peer_jid("bob@m3"), ptype="available")
        assert p.xml.find("{http://jabber.org/protocol/nick}nick") is None, "bob has no nick"

        alice.send_message(peer_jid("bob@m3"), "hi bob, from the server")
        await bob.expect(lambda l: l == "message alice@srv hi bob, from the server", "alice's message")
        bob.write("/to alice@srv")
        bob.write("hi alice, from the LAN")
        m = await alice.expect_message(body="hi alice, from the LAN")
        assert str(m["from"]) == peer_jid("bob@m3")
        assert m["to"].bare == ALICE

        bob.write("/quit")
        await alice.expect_presence(sender=peer_jid("bob@m3"), ptype="unavailable")
        # A message to a peer that is gone comes back as an error.
        alice.send_message(peer_jid("bob@m3"), "still there?")
        err = await alice.expect_message(mtype="error", sender=peer_jid("bob@m3"))
        assert err["error"]["condition"] == "recipient-unavailable"
    finally:
        bob.stop()


async def test_scripted_zeroconf_peer_and_server_user_through_the_bridge(ns, bridge, xmpp, tmp_path):
    srv = bridge()
    carol = ScriptedPeer(ns, "carol", "m4", "127.0.0.4", tmp_path)
    try:
        await carol.event("ready")
        dave = await xmpp.login(srv, f"{DAVE}/pc", PASSWORD)
        await dave.online()
        alice = await xmpp.login(srv, f"{ALICE}/pc", PASSWORD)
        await alice.online(status="at my desk")

        # Alice on the LAN: the TXT record carries her presence (XEP-0174 §5).
        up = await carol.event("peer_up", name="alice@srv")
        assert up["txt"]["txtvers"] == "1"
        assert up["status"] == "avail" and up["msg"] == "at my desk"
        assert up["txt"]["jid"] == ALICE and up["txt"]["port.p2pj"] == str(up["port"])
        assert up["addr"] == SERVER_ADDR, "announced only on the configured interface"
        # Carol to Alice, with her TXT presence and nickname.
        p = await alice.expect_presence(sender=peer_jid("carol@m4"), ptype="available")
        assert p.xml.find("{http://jabber.org/protocol/nick}nick").text == "Carol"

        # Presence follows: away with a status.
        mark = len(carol.lines)
        await alice.online(show="xa", status="gone fishing")
        up = await carol.event("peer_up", name="alice@srv", status="away", since=mark)
        assert up["msg"] == "gone fishing"
        carol.command(cmd="status", status="dnd", msg="busy")
        p = await alice.expect_presence(sender=peer_jid("carol@m4"), ptype="available")
        while p["show"] != "dnd":
            p = await alice.expect_presence(sender=peer_jid("carol@m4"), ptype="available")
        assert p["status"] == "busy"

        # Messages both ways. Carol's stanza names a remote `to`: on the LAN
        # stream it is for alice@srv whatever it says, so it reaches Alice and
        # never federation.
        carol.command(cmd="send", to="alice@srv", body="hello from zeroconf",
                      stanza_to="someone@remote.example")
        m = await alice.expect_message(body="hello from zeroconf")
        assert str(m["from"]) == peer_jid("carol@m4")
        alice.send_message(peer_jid("carol@m4"), "hello from slixmpp")
        got = await carol.event("message", body="hello from slixmpp")
        assert got["from"] == "alice@srv" and got["to"] == "carol@m4"
        assert got["type"] == "chat"
        # The scripted peer does not take the offered STARTTLS: plain stream.
        assert "stream in peer=carol@m4 tls=false" in srv.log_text()

        # Dave did not opt in: not on the LAN, and the gateway refuses him.
        dave.send_message(peer_jid("carol@m4"), "let me in")
        err = await dave.expect_message(mtype="error")
        assert err["error"]["condition"] == "service-unavailable"
        names = {json.loads(l).get("name") for l in carol.lines if '"peer_up"' in l}
        assert names == {"alice@srv"}, names

        # A subscription to a LAN peer is approved by the gateway.
        alice.x.send_presence(pto=peer_jid("carol@m4"), ptype="subscribe")
        await alice.expect_presence(sender=peer_jid("carol@m4"), ptype="subscribed")

        # Carol leaves (mDNS goodbye): Alice sees her unavailable.
        carol.command(cmd="goodbye")
        await alice.expect_presence(sender=peer_jid("carol@m4"), ptype="unavailable")

        # Alice logs off: she leaves the LAN.
        carol.command(cmd="quit")
        carol.proc.wait(15)
        carol2 = ScriptedPeer(ns, "carol", "m5", "127.0.0.5", tmp_path)
        try:
            await carol2.event("peer_up", name="alice@srv")
            await alice.close()
            await carol2.event("peer_down", name="alice@srv")
        finally:
            carol2.stop()
    finally:
        carol.stop()


async def test_a_flooding_peer_is_cut_off(ns, bridge, xmpp, tmp_path):
    srv = bridge(stanza_rate=2, stanza_burst=5)
    eve = ScriptedPeer(ns, "eve", "m6", "127.0.0.6", tmp_path)
    try:
        await eve.event("ready")
        alice = await xmpp.login(srv, f"{ALICE}/pc", PASSWORD)
        await alice.online()
        await eve.event("peer_up", name="alice@srv")
        t0 = time.monotonic()
        eve.command(cmd="flood", to="alice@srv", count=300)
        err = await eve.event("stream_error")
        assert err["condition"] == "policy-violation"
        elapsed = time.monotonic() - t0
        # What got through arrives before the cut; a ping makes sure the
        # server has routed all of it to Alice.
        await alice.sync()
        flood = alice.messages.matching(lambda m: str(m["body"]).startswith("flood "))
        assert 1 <= len(flood) <= 5 + 2 * (elapsed + 1), (len(flood), elapsed)
        # The server is fine and Alice still on the LAN for others.
        alice.send_message(peer_jid("eve@m6"), "still here")
        got = await eve.event("message", body="still here")
        assert got["from"] == "alice@srv"
    finally:
        eve.stop()


async def test_a_peer_that_vanishes_without_goodbye_is_seen_unavailable(ns, bridge, xmpp, tmp_path):
    """A crashed peer sends no mDNS goodbye; the failed connection makes the
    server verify its records (RFC 6762 §10.4), which nobody answers."""
    srv = bridge()
    zoe = ScriptedPeer(ns, "zoe", "m7", "127.0.0.7", tmp_path)
    try:
        await zoe.event("ready")
        alice = await xmpp.login(srv, f"{ALICE}/pc", PASSWORD)
        await alice.online()
        await alice.expect_presence(sender=peer_jid("zoe@m7"), ptype="available")
        zoe.proc.kill()
        zoe.proc.wait(10)
        alice.send_message(peer_jid("zoe@m7"), "are you there?")
        err = await alice.expect_message(mtype="error", sender=peer_jid("zoe@m7"))
        assert err["error"]["condition"] == "recipient-unavailable"
        await alice.expect_presence(sender=peer_jid("zoe@m7"), ptype="unavailable")
    finally:
        zoe.stop()
