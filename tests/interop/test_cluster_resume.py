"""XEP-0198 resumption on another cluster node: real `waxwing` nodes on real
PostgreSQL and Redis, stock slixmpp clients (its stream-management plugin)
steered to reconnect to another node's port. The node holding a session
hands it over to the node the client resumes at: counters, unacknowledged
and queued stanzas, presence. A session on a node that died cannot move:
the client gets <failed/> at once and binds anew, and finds in its archive
everything its senders were told was handled."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from conftest import PASSWORD
from test_cluster import ALICE, BOB, CAROL, MAM, start_cluster, status, until
from test_metrics import scrape, value
from test_modern_im import mam_page, online, wait_event
from wxtest.client import barrier
from wxtest.steps import make_friends
from wxtest.subjects import subject_class

pytestmark = pytest.mark.skipif(not subject_class().has_cli,
                                reason=f"{subject_class().name}: no cluster mode")

# The resuming node waits this long for the holder (cluster::handoff::ASK_TIMEOUT).
ASK_TIMEOUT = 3.0
# With the HTTP listener, for /metrics.
LISTEN = {"listen": {"c2s": ["127.0.0.1:0"], "c2s_direct_tls": ["127.0.0.1:0"],
                     "http": ["127.0.0.1:0"]}}
HANDOFFS = "waxwing_cluster_handoffs_total"


async def sm_session(xmpp, node, full_jid, plugins=()):
    """A client with a resumable stream-managed session, online."""
    client = xmpp.new(node, full_jid, PASSWORD)
    client.x.register_plugin("xep_0198")
    for p in plugins:
        client.x.register_plugin(p)
    enabled = asyncio.ensure_future(wait_event(client, "sm_enabled"))
    await client.login()
    await enabled
    assert client.x.plugin["xep_0198"].sm_id, "no resumable session"
    await client.online()
    return client


def resumer(xmpp, node, full_jid, old, password=PASSWORD):
    """A new slixmpp client that will resume ``old``'s session (its id and
    count) when it connects to ``node``."""
    client = xmpp.new(node, full_jid, password)
    client.x.register_plugin("xep_0198")
    sm, prev = client.x.plugin["xep_0198"], old.x.plugin["xep_0198"]
    sm.sm_id = prev.sm_id
    sm.handled = prev.handled
    sm.allow_resume = True
    return client


def bodies(client, prefix):
    return [m["body"] for m in client.messages.seen if m["body"].startswith(prefix)]


async def test_a_detached_session_resumes_on_another_node(server, xmpp, postgres, redis):
    n1, n2, n3 = start_cluster(server, postgres, redis, extra=LISTEN)
    bob = await sm_session(xmpp, n1, f"{BOB}/phone")
    await bob.roster_get()
    alice = await online(xmpp, n1, f"{ALICE}/pc")  # bob's node
    await alice.roster_get()
    carol = await online(xmpp, n3, f"{CAROL}/c")  # a third node
    await make_friends(alice, bob)
    await barrier(alice, bob)

    bob.kill()  # no </stream:stream>: the session waits on n1, detached
    await bob.wait_disconnected()
    for i in range(15):
        alice.send_message(f"{BOB}/phone", f"from alice {i}")
        carol.send_message(f"{BOB}/phone", f"from carol {i}")
    await alice.sync()
    await carol.sync()  # both have routed all 15 (into the session on n1)

    bob2 = resumer(xmpp, n2, f"{BOB}/phone", bob)
    resumed = asyncio.ensure_future(wait_event(bob2, "session_resumed"))
    bob2.x.connect(host="127.0.0.1", port=n2.c2s_port)
    ev = await resumed
    assert ev.xml.get("previd") == bob.x.plugin["xep_0198"].sm_id, ev
    for i in range(15):
        await bob2.expect_message(body=f"from carol {i}", sender=f"{CAROL}/c")
        await bob2.expect_message(body=f"from alice {i}", sender=f"{ALICE}/pc")
    await barrier(alice, bob2)
    await barrier(carol, bob2)
    # Each exactly once and, per sender, in order.
    assert bodies(bob2, "from alice") == [f"from alice {i}" for i in range(15)]
    assert bodies(bob2, "from carol") == [f"from carol {i}" for i in range(15)]

    # The session lives on n2 now, for every node; it did not end on the
    # way (alice, a contact, never saw bob go offline).
    st = await until(lambda: (s := status(n3)) and s["n1"]["sessions"] == 1
                     and s["n2"]["sessions"] == 1 and s, "bob's session counted on n2")
    assert st["n3"]["sessions"] == 1, st
    alice.send_message(f"{BOB}/phone", "after the move")
    await bob2.expect_message(body="after the move", sender=f"{ALICE}/pc")
    bob2.send_message(f"{ALICE}/pc", "from n2")
    await alice.expect_message(body="from n2", sender=f"{BOB}/phone")
    assert not alice.presences.matching(
        lambda p: str(p["from"]) == f"{BOB}/phone" and p["type"] == "unavailable"), \
        "a resumption elsewhere told contacts the session ended"
    gave, took = scrape(n1), scrape(n2)
    assert value(gave, HANDOFFS, direction="out", result="success") == 1, gave
    assert value(took, HANDOFFS, direction="in", result="success") == 1, took
    assert value(took, HANDOFFS, direction="in", result="failure") == 0, took


async def test_resuming_elsewhere_closes_the_old_connection(server, xmpp, postgres, redis):
    n1, n2 = start_cluster(server, postgres, redis, n=2)
    bob = await sm_session(xmpp, n1, f"{BOB}/phone")
    alice = await online(xmpp, n2, f"{ALICE}/pc")
    alice.send_message(f"{BOB}/phone", "while attached")
    await bob.expect_message(body="while attached")
    await barrier(alice, bob)

    # The old connection is still open (a client on a phone that switched
    # networks and has not noticed yet).
    bob2 = resumer(xmpp, n2, f"{BOB}/phone", bob)
    resumed = asyncio.ensure_future(wait_event(bob2, "session_resumed"))
    bob2.x.connect(host="127.0.0.1", port=n2.c2s_port)
    await resumed
    err = await bob.stream_errors.expect(desc="the old connection's end")
    assert err["condition"] == "conflict", err
    await bob.wait_disconnected()
    alice.send_message(f"{BOB}/phone", "to the new connection")
    await bob2.expect_message(body="to the new connection", sender=f"{ALICE}/pc")
    assert not bob2.messages.matching(lambda m: m["body"] == "while attached"), \
        "an acknowledged stanza was sent again"


async def test_a_previd_is_only_good_for_its_own_account(server, xmpp, postgres, redis):
    n1, n2 = start_cluster(server, postgres, redis, n=2)
    bob = await sm_session(xmpp, n1, f"{BOB}/phone")
    # Carol has a session on n1 too, so n2 asks n1 for hers.
    await online(xmpp, n1, f"{CAROL}/desk")
    bob.kill()
    await bob.wait_disconnected()

    thief = resumer(xmpp, n2, f"{CAROL}/phone", bob)
    failed = asyncio.ensure_future(wait_event(thief, "sm_failed"))
    thief.x.connect(host="127.0.0.1", port=n2.c2s_port)
    await failed
    # (Another resource: slixmpp binds one after <failed/>, and the same
    # full JID would replace bob's detached session.)
    forged = resumer(xmpp, n2, f"{BOB}/other", bob)
    forged.x.plugin["xep_0198"].sm_id = "forged-" + bob.x.plugin["xep_0198"].sm_id
    failed = asyncio.ensure_future(wait_event(forged, "sm_failed"))
    forged.x.connect(host="127.0.0.1", port=n2.c2s_port)
    await failed
    await forged.close()

    # Neither took bob's session: its owner still resumes it.
    alice = await online(xmpp, n2, f"{ALICE}/pc")
    alice.send_message(f"{BOB}/phone", "still yours")
    await alice.sync()
    bob2 = resumer(xmpp, n2, f"{BOB}/phone", bob)
    resumed = asyncio.ensure_future(wait_event(bob2, "session_resumed"))
    bob2.x.connect(host="127.0.0.1", port=n2.c2s_port)
    await resumed
    await bob2.expect_message(body="still yours", sender=f"{ALICE}/pc")


async def test_resuming_a_session_of_a_dead_node_fails_fast_and_loses_nothing(
        server, xmpp, postgres, redis):
    n1, n2 = start_cluster(server, postgres, redis, n=2)
    bob = await sm_session(xmpp, n1, f"{BOB}/phone", plugins=MAM)
    alice = await online(xmpp, n2, f"{ALICE}/pc")
    await barrier(alice, bob)
    bob.kill()
    await bob.wait_disconnected()
    sent = [f"to the dead {i}" for i in range(10)]
    for body in sent:
        alice.send_message(f"{BOB}/phone", body)
    await alice.sync()  # acknowledged: n2 has archived and routed them all
    n1.proc.send_signal(signal.SIGKILL)
    n1.proc.wait()

    # Whether n2 has noticed the death yet or not, the answer is quick.
    bob2 = resumer(xmpp, n2, f"{BOB}/phone", bob)
    bob2.x.register_plugin("xep_0059")
    bob2.x.register_plugin("xep_0313")
    failed = asyncio.ensure_future(wait_event(bob2, "sm_failed"))
    bound = asyncio.ensure_future(wait_event(bob2, "session_start"))
    t0 = time.monotonic()
    bob2.x.connect(host="127.0.0.1", port=n2.c2s_port)
    await failed
    assert time.monotonic() - t0 < ASK_TIMEOUT + 5, "the refusal took too long"
    await bound  # slixmpp binds a new session after <failed/>

    # Nothing alice was told was handled is lost: it is in bob's archive.
    archived = []
    after = None
    while True:
        rsm = {"max": 50} if after is None else {"max": 50, "after": after}
        ids, got, complete = await mam_page(bob2, **rsm)
        archived += got
        if complete or not ids:
            break
        after = ids[-1]
    assert [b for b in archived if b in sent] == sent, archived
