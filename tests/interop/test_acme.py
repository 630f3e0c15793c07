"""Certificates from a real ACME CA (Debian's pebble, ``wxtest.acme``):
issuance for the host and every service domain over http-01 (and
tls-alpn-01), the served chain verified against pebble's root, renewal of
short-lived certificates swapped in while clients stay connected and keep
chatting, and a failed order that backs off and keeps the old certificate.

Pebble's validators connect to the port its configuration names, so the
server's HTTP listener (http-01) or HTTPS listener (tls-alpn-01) is bound to
a port picked beforehand instead of port 0; its mock DNS answers 127.0.0.1
for every name."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import ssl
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import PASSWORD
from wxtest.acme import Pebble
from wxtest.services import free_port

pytestmark = pytest.mark.allowed_skip(reason="ACME is waxwing's own feature")

HOST = "wx.acme.test"
NAMES = [HOST, f"conference.{HOST}", f"pubsub.{HOST}", f"upload.{HOST}", f"proxy.{HOST}"]
ALICE, BOB = f"alice@{HOST}", f"bob@{HOST}"
USERS = {ALICE: PASSWORD, BOB: PASSWORD}
# Generous: pebble validates every name over loopback, on a busy 2-core CI machine.
ISSUE_TIMEOUT = 90.0


@pytest.fixture
def pebble_factory():
    started: list[Pebble] = []

    def start(**kw) -> Pebble:
        p = Pebble(**kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def acme_config(pebble: Pebble, http_port: int, https_port: int = 0, **acme) -> dict:
    return {
        "hosts": [HOST],
        "listen": {"http": [f"127.0.0.1:{http_port}"],
                   "https": [f"127.0.0.1:{https_port}"]},
        "proxy65": {"enabled": True, "listen": ["127.0.0.1:0"]},
        "acme": {
            "enabled": True,
            "terms_agreed": True,
            "directory": pebble.directory,
            "ca_file": str(pebble.ca_file),
            "contact": ["ops@acme.example"],
            "retry_initial_secs": 1,
            "retry_max_secs": 4,
            **acme,
        },
    }


def served_cert(port: int, name: str, root_pem: bytes) -> bytes:
    """The leaf served on direct TLS for SNI ``name``, after verifying the
    chain against ``root_pem`` and the name against the certificate."""
    ctx = ssl.create_default_context(cadata=root_pem.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=name) as tls:
            return tls.getpeercert(binary_form=True)


async def wait_for_cert(port: int, name: str, root_pem: bytes, other_than: bytes | None = None,
                        timeout: float = ISSUE_TIMEOUT) -> bytes:
    """Waits until the certificate served for ``name`` verifies against
    pebble's root (and differs from ``other_than``)."""
    deadline = time.monotonic() + timeout
    last = "nothing tried"
    while time.monotonic() < deadline:
        try:
            der = await asyncio.to_thread(served_cert, port, name, root_pem)
            if der != other_than:
                return der
            last = "still the previous certificate"
        except (ssl.SSLError, OSError) as e:
            last = repr(e)
        await asyncio.sleep(0.2)  # polling an outside process: no event to wait on
    raise AssertionError(f"no pebble-issued certificate for {name} within {timeout:.0f}s ({last})")


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()[:16]


def scrape_counter(srv, result: str) -> float:
    url = f"http://{srv.listeners['http'][0]}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf'^waxwing_acme_orders_total\{{result="{result}"\}} (\S+)$', text, re.M)
    assert m, f"no waxwing_acme_orders_total{{result={result!r}}} in /metrics"
    return float(m.group(1))


def assert_private(path: Path) -> None:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600, f"{path} has mode {oct(mode)}, not 0600"


async def test_issuance_for_the_host_and_its_service_domains(server, pebble_factory, xmpp):
    http_port = free_port()
    pebble = pebble_factory(http_port=http_port)
    srv = server(acme_config(pebble, http_port), users=USERS)
    root = pebble.root_pem()
    first = await wait_for_cert(srv.tls_port, HOST, root)
    # One certificate covers the host and every service domain: each name
    # gets it by SNI and it verifies for that name against pebble's root.
    for name in NAMES:
        assert await asyncio.to_thread(served_cert, srv.tls_port, name, root) == first, name
    # The HTTPS listener serves it too.
    https_port = int(srv.listeners["https"][0].rsplit(":", 1)[1])
    assert await asyncio.to_thread(served_cert, https_port, f"upload.{HOST}", root) == first

    # The challenge route answers only tokens of an order in progress.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(
            f"http://127.0.0.1:{http_port}/.well-known/acme-challenge/no-such-token", timeout=10)
    assert e.value.code == 404

    acme_dir = srv.data_dir / "acme"
    for f in [acme_dir / f"{HOST}.crt", acme_dir / f"{HOST}.key", *acme_dir.glob("account-*.json")]:
        assert_private(f)
    assert list(acme_dir.glob("account-*.json")), "no ACME account stored"
    assert scrape_counter(srv, "success") == 1
    assert scrape_counter(srv, "failure") == 0

    # A client logs in over the new certificate, verified.
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    assert alice.encrypted

    # After a restart the stored certificate is served at once, no new order.
    srv.restart()
    assert await asyncio.to_thread(served_cert, srv.tls_port, HOST, root) == first
    assert scrape_counter(srv, "success") == 0, "a valid stored certificate was ordered again"


async def test_renewal_swaps_the_certificate_while_clients_keep_chatting(
        server, pebble_factory, xmpp):
    http_port = free_port()
    # 30-second certificates: renewed when a third of the lifetime remains.
    pebble = pebble_factory(http_port=http_port, validity_secs=30)
    srv = server(acme_config(pebble, http_port), users=USERS)
    root = pebble.root_pem()
    first = await wait_for_cert(srv.tls_port, HOST, root)

    alice = await xmpp.login(srv, f"{ALICE}/chat", PASSWORD)
    bob = await xmpp.login(srv, f"{BOB}/chat", PASSWORD)
    renewed = asyncio.create_task(wait_for_cert(srv.tls_port, HOST, root, other_than=first))
    n = 0
    while not renewed.done():
        n += 1
        alice.send_message(f"{BOB}/chat", f"before-or-during {n}")
        await bob.expect_message(f"before-or-during {n}")
        bob.send_message(f"{ALICE}/chat", f"reply {n}")
        await alice.expect_message(f"reply {n}")
        await asyncio.wait({renewed}, timeout=0.5)  # pace the chat, not a synchronisation
    second = renewed.result()
    assert second != first
    # The sessions that started on the first certificate are still there.
    for c in (alice, bob):
        assert not c.disconnected.is_set(), f"{c.label} was disconnected by the renewal"
    alice.send_message(f"{BOB}/chat", "after the renewal")
    await bob.expect_message("after the renewal")
    # New connections get the renewed certificate, for every name.
    for name in NAMES:
        assert await asyncio.to_thread(served_cert, srv.tls_port, name, root) == second
    carol = await xmpp.login(srv, f"{ALICE}/new", PASSWORD)
    assert carol.encrypted
    assert scrape_counter(srv, "success") >= 2
    assert "ACME certificate issued and installed" in srv.log_text()


async def test_a_failed_order_backs_off_and_keeps_the_old_certificate(server, pebble_factory):
    http_port = free_port()
    pebble = pebble_factory(http_port=http_port)
    proxy = f"proxy.{HOST}"
    srv = server(acme_config(pebble, http_port, exclude=[proxy]))
    root = pebble.root_pem()
    first = await wait_for_cert(srv.tls_port, HOST, root)
    covered = [n for n in NAMES if n != proxy]

    # The name a restart adds resolves to an address where nothing
    # listens: its http-01 validation fails, and with it the whole order.
    # It has to be a name never validated: pebble reuses a valid
    # authorization 1 % of the time even with PEBBLE_AUTHZREUSE=0 (its
    # test is `rand.Intn(100) > percent`), so breaking a name the first
    # order proved would fail only 99 times in 100.
    pebble.set_address(proxy, "127.0.0.2")
    del srv.config["acme"]["exclude"]
    srv.restart()
    deadline = time.monotonic() + ISSUE_TIMEOUT
    while scrape_counter(srv, "failure") < 2:
        assert time.monotonic() < deadline, "the order did not fail twice:\n" + pebble.log()
        await asyncio.sleep(0.2)  # polling an outside process
    # Still the old certificate, for every name it covers; the new name
    # has none from the CA yet.
    for name in covered:
        assert await asyncio.to_thread(served_cert, srv.tls_port, name, root) == first, name
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.to_thread(served_cert, srv.tls_port, proxy, root)
    assert scrape_counter(srv, "success") == 0
    log = srv.log_text()
    waits = [int(w) for w in re.findall(r"ACME order failed.*?retry_in_secs=(\d+)", log)]
    assert waits[:2] == [1, 2], f"no doubling backoff in the log: {waits}"
    # The CA's reason, for the name that failed, is in the log.
    failure = next(l for l in log.splitlines() if "ACME order failed" in l)
    assert f"authorization of {proxy} is Invalid" in failure, failure
    assert "127.0.0.2" in failure, failure

    # Once the name resolves again, the next attempt succeeds and covers
    # the new name too.
    pebble.clear_address(proxy)
    second = await wait_for_cert(srv.tls_port, HOST, root, other_than=first)
    for name in NAMES:
        assert await asyncio.to_thread(served_cert, srv.tls_port, name, root) == second, name
    assert scrape_counter(srv, "success") == 1


@pytest.mark.parametrize("listener", ["https", "c2s_direct_tls"])
async def test_tls_alpn_01_on_a_direct_tls_listener(server, pebble_factory, listener):
    http_port, tls_port = free_port(), free_port()
    pebble = pebble_factory(http_port=http_port, tls_port=tls_port)
    config = acme_config(pebble, http_port, challenges=["tls-alpn-01"])
    config["listen"][listener] = [f"127.0.0.1:{tls_port}"]
    srv = server(config)
    root = pebble.root_pem()
    first = await wait_for_cert(tls_port, HOST, root)
    for name in NAMES:
        assert await asyncio.to_thread(served_cert, tls_port, name, root) == first, name
    # Only tls-alpn-01 was answered (no http-01 token was ever served).
    log = srv.log_text()
    assert re.search(r'ACME challenge ready.*challenge="?tls-alpn-01', log), log[-3000:]
    assert not re.search(r'ACME challenge ready.*challenge="?http-01', log)
    # A validator's handshake gets nothing but the validation certificate:
    # with no order open, an `acme-tls/1` handshake is refused.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["acme-tls/1"])
    with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as sock:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(sock, server_hostname=HOST).close()
