"""Cluster mode while PostgreSQL or Redis is briefly unreachable: two real
`waxwing` nodes, slixmpp clients on both.

PostgreSQL is *frozen* (SIGSTOP to the postmaster and its backends: open
connections stay up and nothing answers, the worst case of a network
partition or a stalled server), in an instance of the test's own (the
shared per-worker instance serves the tests running in parallel). Redis is
frozen the same way for longer than `dead_after_secs`.

What must hold (docs/operating.md, Cluster): sessions stay up and keep
exchanging messages, on one node and across nodes; what needs the database
fails within a bound with a stanza error (`wait`), never hangs; nothing
that was delivered or acknowledged is lost; the nodes recover without a
restart when the server is back."""

from __future__ import annotations

import asyncio
import time

import pytest
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from conftest import PASSWORD
from test_cluster import start_cluster, status, until
from test_modern_im import mam_page, online
from wxtest import STEP_TIMEOUT
from wxtest.client import Inbox
from wxtest.steps import make_friends
from wxtest.services import Postgres
from wxtest.subjects import subject_class

pytestmark = pytest.mark.skipif(not subject_class().has_cli,
                                reason=f"{subject_class().name}: no cluster mode")

ALICE = "alice@localhost"
BOB = "bob@localhost"
CAROL = "carol@localhost"
DAVE = "dave@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD, CAROL: PASSWORD}
MAM = ["xep_0059", "xep_0313"]


@pytest.fixture
def own_postgres():
    """A PostgreSQL instance for this test alone: it will be frozen."""
    pg = Postgres()
    yield pg
    pg.stop()


def _archive_failures(node) -> float:
    """``waxwing_archive_write_failures_total`` from the node's /metrics."""
    import urllib.request
    with urllib.request.urlopen(f"http://{node.listeners['http'][0]}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("waxwing_archive_write_failures_total"):
                return float(line.split()[-1])
    raise AssertionError("no waxwing_archive_write_failures_total in /metrics")


# The bound on one database call (waxwing-store, postgres/breaker.rs): the
# first calls after the freeze wait this long, later ones fail at once.
DB_BOUND = 10.0
METRICS = {"listen": {"c2s": ["127.0.0.1:0"], "c2s_direct_tls": ["127.0.0.1:0"],
                      "http": ["127.0.0.1:0"]},
           "metrics": {"enabled": True}}


async def test_postgres_frozen_sessions_go_on_and_nothing_is_lost(server, xmpp, own_postgres,
                                                                  redis):
    pg = own_postgres
    n1, n2 = start_cluster(server, pg, redis, n=2, users={**USERS, DAVE: PASSWORD},
                           extra=METRICS)
    alice = await online(xmpp, n1, f"{ALICE}/a", plugins=[*MAM, "xep_0198"])
    await alice.roster_get()
    carol = await online(xmpp, n1, f"{CAROL}/c")
    bob = await online(xmpp, n2, f"{BOB}/b", plugins=MAM)
    await bob.roster_get()
    await make_friends(alice, bob)  # contacts: the default policy archives their messages
    alice.send_message(f"{BOB}/b", "before")
    await bob.expect_message(body="before", sender=f"{ALICE}/a")
    acks = Inbox(alice, "SM ack")
    alice.x.register_handler(Callback("wx sm acks", MatchXPath("{urn:xmpp:sm:3}a"), acks.put))
    failures_before = _archive_failures(n1)
    alice.x.send_raw("<r xmlns='urn:xmpp:sm:3'/>")
    handled_before = int((await acks.expect(desc="(<a/> before the freeze)")).xml.get("h"))

    pg.pause()
    try:
        t0 = time.monotonic()
        # Local (n1 -> n1) and across nodes (n1 -> n2, n2 -> n1): delivered,
        # in order, once each; the first calls wait out the bound, then
        # archiving fails at once and the messages go on without it.
        for i in range(5):
            alice.send_message(f"{CAROL}/c", f"local {i}")
            alice.send_message(f"{BOB}/b", f"across {i}")
            bob.send_message(f"{ALICE}/a", f"back {i}")
        for i in range(5):
            await carol.expect_message(body=f"local {i}", sender=f"{ALICE}/a",
                                       timeout=DB_BOUND + STEP_TIMEOUT)
            await bob.expect_message(body=f"across {i}", sender=f"{ALICE}/a",
                                     timeout=DB_BOUND + STEP_TIMEOUT)
            await alice.expect_message(body=f"back {i}", sender=f"{BOB}/b",
                                       timeout=DB_BOUND + STEP_TIMEOUT)
        first_round = time.monotonic() - t0
        assert first_round < 2 * DB_BOUND, f"delivery took {first_round:.1f}s"
        # Once the nodes know the database is away, delivery is immediate.
        t1 = time.monotonic()
        for i in range(5):
            alice.send_message(f"{BOB}/b", f"fast {i}")
        for i in range(5):
            await bob.expect_message(body=f"fast {i}", sender=f"{ALICE}/a")
        assert time.monotonic() - t1 < 5, f"delivery with the breaker open took {time.monotonic() - t1:.1f}s"
        for who, prefix in ((carol, "local"), (bob, "across"), (alice, "back")):
            got = [m["body"] for m in who.messages.seen if (m["body"] or "").startswith(prefix)]
            assert got == [f"{prefix} {i}" for i in range(5)], got
        # Delivered without being archived: the operator sees it.
        assert _archive_failures(n1) > failures_before

        # What needs the database fails with a `wait` error, within the bound.
        t2 = time.monotonic()
        res = await alice.iq(alice.make_iq("set", None, "<query xmlns='urn:xmpp:mam:2'/>"),
                             timeout=DB_BOUND + STEP_TIMEOUT)
        assert res["type"] == "error", res
        assert res["error"]["type"] == "wait", res
        assert res["error"]["condition"] == "internal-server-error", res
        res = await alice.roster_set(DAVE, name="Dave")
        assert res["type"] == "error" and res["error"]["type"] == "wait", res
        # A message for an account with nobody online cannot be stored:
        # the sender is told (RFC 6120 §8.3.2 `wait`), nothing vanishes.
        alice.send_message(DAVE, "for offline dave", mid="to-dave")
        err = await alice.messages.expect(lambda m: m["type"] == "error" and m["id"] == "to-dave",
                                          "(error for the message that could not be stored)")
        assert err["error"]["type"] == "wait", err
        assert err["error"]["condition"] == "internal-server-error", err
        # A login needs the accounts: refused as a temporary failure, not hung.
        late = xmpp.new(n2, f"{CAROL}/late", PASSWORD)
        outcome = await late.connect(timeout=DB_BOUND + STEP_TIMEOUT)
        assert outcome != "session_start", late.wire_text()
        assert "temporary-auth-failure" in late.wire_text(), late.wire_text()
        assert time.monotonic() - t2 < DB_BOUND + STEP_TIMEOUT
        # XEP-0198: the server acknowledged all 18 stanzas alice sent during
        # the freeze, each having been handled (delivered, or refused with
        # an error): nothing it acknowledged is left to be lost.
        alice.x.send_raw("<r xmlns='urn:xmpp:sm:3'/>")
        await acks.expect(lambda a: int(a.xml.get("h")) >= handled_before + 18,
                          "(<a/> counting every stanza sent during the freeze)")
    finally:
        pg.resume()

    # Back: each node finds the database again by itself (no restart), within
    # a cool-down; what is then sent is archived and stored again.
    async def mam_works():
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            res = await bob.iq(bob.make_iq("set", None, "<query xmlns='urn:xmpp:mam:2'/>"))
            if res["type"] == "result":
                return
            assert time.monotonic() < deadline, f"the archive still fails: {res}"
            await asyncio.sleep(0.5)  # the breaker's cool-down: nothing to wait on
    await mam_works()
    alice.send_message(f"{BOB}/b", "after")
    await bob.expect_message(body="after", sender=f"{ALICE}/a")
    # Presence broadcast (it reads the roster) reaches contacts again.
    alice.x.send_presence(pstatus="back after the outage")
    await bob.presences.expect(lambda p: p["status"] == "back after the outage",
                               "(presence broadcast after the outage)")
    alice.send_message(DAVE, "for dave, stored")
    await alice.sync()
    dave = await online(xmpp, n2, f"{DAVE}/d")
    await dave.expect_message(body="for dave, stored", sender=f"{ALICE}/a")
    _, bodies, _ = await mam_page(bob, max=100)
    assert "before" in bodies and "after" in bodies, bodies


async def test_redis_frozen_longer_than_dead_after(server, xmpp, postgres, redis):
    """Redis stops answering for longer than `dead_after_secs` (3 s here),
    with its data intact when it is back (a stalled host, a partition)."""
    n1, n2 = start_cluster(server, postgres, redis, n=2, users={**USERS, DAVE: PASSWORD})
    alice = await online(xmpp, n1, f"{ALICE}/a")
    await alice.roster_get()
    carol = await online(xmpp, n1, f"{CAROL}/c")
    bob = await online(xmpp, n2, f"{BOB}/b")
    await bob.roster_get()
    dave = await online(xmpp, n2, f"{DAVE}/d")
    await make_friends(alice, bob)
    alice.send_message(f"{BOB}/b", "before")
    await bob.expect_message(body="before", sender=f"{ALICE}/a")

    redis.pause()
    try:
        # Local traffic on each node goes on, at once.
        for i in range(5):
            alice.send_message(f"{CAROL}/c", f"local n1 {i}")
            bob.send_message(f"{DAVE}/d", f"local n2 {i}")
        for i in range(5):
            await carol.expect_message(body=f"local n1 {i}", sender=f"{ALICE}/a")
            await dave.expect_message(body=f"local n2 {i}", sender=f"{BOB}/b")
        # Across nodes: handled by n1 (acknowledged), waiting for Redis.
        for i in range(10):
            alice.send_message(f"{BOB}/b", f"during {i}")
        await alice.sync()
        # The outage itself: longer than dead_after_secs (3). Nothing to
        # wait on: the duration is the scenario.
        await asyncio.sleep(5)
        # Still local traffic, after the heartbeats have lapsed.
        alice.send_message(f"{CAROL}/c", "still local")
        await carol.expect_message(body="still local", sender=f"{ALICE}/a")
    finally:
        redis.resume()

    # Everything sent across during the freeze arrives, in order, once.
    for i in range(10):
        await bob.expect_message(body=f"during {i}", sender=f"{ALICE}/a", timeout=20)
    got = [m["body"] for m in bob.messages.seen if (m["body"] or "").startswith("during")]
    assert got == [f"during {i}" for i in range(10)], got
    # Neither node was taken for dead (its heartbeat expired while nobody
    # could observe it): both still list their sessions, and nobody was
    # told the other's users went offline.
    st = await until(lambda: (s := status(n1)) and s.get("n1", {}).get("sessions") == 2
                     and s.get("n2", {}).get("sessions") == 2 and s,
                     "both nodes list their sessions again")
    assert all(n["alive"] for n in st.values()), st
    bob.send_message(f"{ALICE}/a", "after")
    await alice.expect_message(body="after", sender=f"{BOB}/b")
    alice.send_message(f"{BOB}/b", "after, too")
    await bob.expect_message(body="after, too", sender=f"{ALICE}/a")
    gone = [p for p in alice.presences.seen
            if str(p["from"]) == f"{BOB}/b" and p.xml.get("type") == "unavailable"]
    assert gone == [], f"n1 took bob's node for dead: {gone}"
    gone = [p for p in bob.presences.seen
            if str(p["from"]) == f"{ALICE}/a" and p.xml.get("type") == "unavailable"]
    assert gone == [], f"n2 took alice's node for dead: {gone}"
