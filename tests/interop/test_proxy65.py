"""XEP-0065 SOCKS5 bytestreams through the server's proxy at proxy.<host>,
driven by slixmpp's xep_0065 plugin on both ends: discovery, a file
transfer, the bandwidth cap, activation rules and the per-user limit."""

import asyncio
import hashlib
import os
import time

import pytest
from slixmpp.exceptions import IqError

from conftest import PASSWORD
from wxtest import STEP_TIMEOUT

pytestmark = pytest.mark.allowed_skip(reason="the proxy is a waxwing configuration")

ALICE = "alice@localhost"
BOB = "bob@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD}
NS = "http://jabber.org/protocol/bytestreams"


def config(**extra):
    return {"proxy65": {"enabled": True, "listen": ["127.0.0.1:0"], **extra}}


async def client(xmpp, srv, jid, accept=False):
    c = xmpp.new(srv, jid, PASSWORD)
    c.x.register_plugin("xep_0065")
    c.x.plugin["xep_0065"].auto_accept = accept
    await c.login()
    return c


class Receiver:
    """Collects what arrives on the target's SOCKS5 connection."""

    def __init__(self, c):
        self.data = bytearray()
        self.changed = asyncio.Event()
        c.x.add_event_handler("socks5_data", self._on_data)

    def _on_data(self, data):
        self.data.extend(data)
        self.changed.set()

    async def until(self, n):
        deadline = time.monotonic() + 4 * STEP_TIMEOUT
        while len(self.data) < n:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), deadline - time.monotonic())


async def test_file_transfer_through_the_proxy_with_bandwidth_cap(server, xmpp):
    rate = 131072
    srv = server(config(bandwidth_bytes_per_sec=rate), users=USERS)
    alice = await client(xmpp, srv, f"{ALICE}/a")
    bob = await client(xmpp, srv, f"{BOB}/b", accept=True)
    received = Receiver(bob)

    proxies = await alice.x.plugin["xep_0065"].discover_proxies(timeout=15)
    assert list(map(str, proxies)) == ["proxy.localhost"], proxies
    host, port = proxies["proxy.localhost"]
    assert host == "127.0.0.1" and int(port) == int(srv.listeners["proxy65"][0].rsplit(":", 1)[1])

    sock = await alice.x.plugin["xep_0065"].handshake(bob.jid, timeout=15)
    assert sock is not None, "no bytestream"
    payload = os.urandom(4 * rate)
    start = time.monotonic()
    await sock.write(payload)
    await received.until(len(payload))
    elapsed = time.monotonic() - start
    assert hashlib.sha256(received.data).digest() == hashlib.sha256(payload).digest()
    # One burst of `rate` bytes, then `rate` per second: 3 s at least.
    assert elapsed >= 2.5, f"{len(payload)} bytes in {elapsed:.2f}s: the cap did not hold"


async def test_activation_needs_both_connections_and_a_local_user(server, xmpp):
    srv = server(config(), users=USERS)
    alice = await client(xmpp, srv, f"{ALICE}/a")
    iq = alice.x.Iq(sto="proxy.localhost", stype="set")
    iq["socks"]["sid"] = "nobody-connected"
    iq["socks"]["activate"] = f"{BOB}/b"
    with pytest.raises(IqError) as e:
        await iq.send(timeout=15)
    assert e.value.iq["error"]["condition"] == "item-not-found", str(e.value.iq)

    info = await alice.x.plugin["xep_0030"].get_info(jid="proxy.localhost", local=False,
                                                      timeout=15)
    assert ("proxy", "bytestreams") in {(c, t) for c, t, _l, _n in
                                        info["disco_info"]["identities"]}
    assert NS in info["disco_info"]["features"]


async def test_per_user_stream_limit(server, xmpp):
    srv = server(config(max_streams_per_user=1), users=USERS)
    alice = await client(xmpp, srv, f"{ALICE}/a")
    bob = await client(xmpp, srv, f"{BOB}/b", accept=True)
    first = await alice.x.plugin["xep_0065"].handshake(bob.jid, timeout=15)
    assert first is not None
    with pytest.raises(IqError) as e:
        await alice.x.plugin["xep_0065"].handshake(bob.jid, timeout=15)
    assert e.value.iq["error"]["condition"] == "resource-constraint", str(e.value.iq)
    # Closing the first frees the slot (slixmpp's deactivate() is broken in
    # 1.17: it calls close() on the protocol, so close the transport).
    first.transport.close()
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        try:
            third = await alice.x.plugin["xep_0065"].handshake(bob.jid, timeout=15)
            break
        except IqError as err:
            # The relay notices the closed socket asynchronously.
            assert err.iq["error"]["condition"] == "resource-constraint", str(err.iq)
            assert time.monotonic() < deadline, "the slot was never freed"
            await asyncio.sleep(0.1)
    assert third is not None
