"""Cluster mode: three real `waxwing` nodes sharing one real PostgreSQL
database and one real Redis, driven by slixmpp clients connected to
different nodes. Users on different nodes chat, subscribe and see each
other's presence; a full JID bound on a second node replaces the first
(conflict); a node killed with SIGKILL under traffic loses nothing its
senders were told was handled; Redis restarted (empty: no persistence)
loses nothing either."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from conftest import PASSWORD
from test_admin import admin, token
from test_modern_im import mam_page, online
from wxtest.steps import make_friends
from wxtest.subjects import subject_class

pytestmark = pytest.mark.skipif(not subject_class().has_cli,
                                reason=f"{subject_class().name}: no cluster mode")

ALICE = "alice@localhost"
BOB = "bob@localhost"
CAROL = "carol@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD, CAROL: PASSWORD}
MAM = ["xep_0059", "xep_0313"]


def start_cluster(server, postgres, redis, n=3, users=USERS, extra=None):
    """``n`` nodes named n1…nN on one database and one Redis; quick
    heartbeats so that a dead node is noticed within seconds."""
    db = postgres.database()
    nodes = []
    for i in range(1, n + 1):
        nodes.append(server({
            "storage": {"database": db},
            "cluster": {"redis": redis.url, "node": f"n{i}",
                        "heartbeat_secs": 1, "dead_after_secs": 3,
                        "advertise": f"n{i}.cluster.test:5222"},
            **(extra or {}),
        }, users=users if i == 1 else None))
    return nodes


def status(node) -> dict:
    res = node.cli("cluster", "status", "--json")
    assert res.returncode == 0, res.stderr
    return {n["node"]: n for n in json.loads(res.stdout)}


async def until(pred, what: str, timeout: float = 15.0):
    """Polls ``pred`` (for state only a CLI can show: there is no event to await)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = pred()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_users_on_three_nodes_chat_subscribe_and_see_presence(server, xmpp, postgres, redis):
    n1, n2, n3 = start_cluster(server, postgres, redis)
    alice = await online(xmpp, n1, f"{ALICE}/a", plugins=MAM)
    await alice.roster_get()
    bob = await online(xmpp, n2, f"{BOB}/b")
    await bob.roster_get()
    # Subscription handshake and presence across nodes (roster pushes,
    # subscription requests, presence broadcast and probes).
    await make_friends(alice, bob)

    # Chat both ways, in order.
    for i in range(20):
        alice.send_message(f"{BOB}/b", f"a->b {i}")
    for i in range(20):
        await bob.expect_message(body=f"a->b {i}", sender=f"{ALICE}/a")
    seen = [m["body"] for m in bob.messages.seen if m["body"].startswith("a->b")]
    assert seen == [f"a->b {i}" for i in range(20)], seen
    bob.send_message(ALICE, "hello from n2")
    await alice.expect_message(body="hello from n2", sender=f"{BOB}/b")

    # A third node joins the conversation: carol sees bob's presence after
    # subscribing, and bob's second resource on n3 gets what is for his bare
    # JID when its priority is the highest (RFC 6121 §8.5.2.1.1).
    carol = await online(xmpp, n3, f"{CAROL}/c")
    await carol.roster_get()
    await make_friends(carol, bob)
    bob2 = await online(xmpp, n3, f"{BOB}/b2", priority=10)
    await carol.expect_presence(sender=f"{BOB}/b2")
    await alice.expect_presence(sender=f"{BOB}/b2")
    await bob.expect_presence(sender=f"{BOB}/b2")  # the account's own resources
    alice.send_message(BOB, "to the best resource")
    await bob2.expect_message(body="to the best resource", sender=f"{ALICE}/a")
    await bob.sync()
    assert not [m for m in bob.messages.seen if m["body"] == "to the best resource"]

    # Going offline on one node is seen on the others.
    await bob2.close()
    await alice.expect_presence(sender=f"{BOB}/b2", ptype="unavailable")
    await carol.expect_presence(sender=f"{BOB}/b2", ptype="unavailable")

    # Offline storage only when no resource is online anywhere: bob leaves
    # n2, alice writes, bob logs in on n3 and gets it.
    await bob.close()
    await alice.expect_presence(sender=f"{BOB}/b", ptype="unavailable")
    alice.send_message(BOB, "while you were away")
    await alice.sync()
    bob3 = await online(xmpp, n3, f"{BOB}/b3")
    await bob3.expect_message(body="while you were away", sender=f"{ALICE}/a")

    # The archive is shared: alice's MAM on n1 has what she sent and got.
    _, bodies, _ = await mam_page(alice, max=100)
    assert "hello from n2" in bodies and "a->b 19" in bodies, bodies

    st = await until(lambda: (s := status(n1)) and s["n1"]["sessions"] == 1
                     and s["n3"]["sessions"] == 2 and s, "cluster status")
    assert set(st) == {"n1", "n2", "n3"} and all(n["alive"] for n in st.values()), st


async def test_resumable_sessions_name_their_node(server, xmpp, postgres, redis):
    """XEP-0198 §5 `location`: a client resumes at the node holding its session."""
    _, n2 = start_cluster(server, postgres, redis, n=2)
    client = xmpp.new(n2, f"{ALICE}/sm", PASSWORD)
    client.x.register_plugin("xep_0198")
    enabled = asyncio.get_running_loop().create_future()
    client.x.add_event_handler(
        "sm_enabled", lambda ev: enabled.done() or enabled.set_result(ev), disposable=True)
    await client.login()
    ev = await asyncio.wait_for(enabled, 20)
    assert ev.xml.get("location") == "n2.cluster.test:5222", ev
    assert ev.xml.get("resume") in ("true", "1"), ev


async def test_the_same_full_jid_on_another_node_replaces_the_first(server, xmpp, postgres, redis):
    n1, n2, n3 = start_cluster(server, postgres, redis)
    first = await online(xmpp, n1, f"{ALICE}/desk")
    bob = await online(xmpp, n3, f"{BOB}/b")
    second = await online(xmpp, n2, f"{ALICE}/desk")
    err = await first.stream_errors.expect(desc="conflict stream error")
    assert err["condition"] == "conflict", err
    await first.wait_disconnected()
    # What is for alice/desk now reaches the session on n2.
    bob.send_message(f"{ALICE}/desk", "which desk?")
    await second.expect_message(body="which desk?", sender=f"{BOB}/b")


async def test_a_killed_node_loses_no_acknowledged_message(server, xmpp, postgres, redis):
    n1, n2, n3 = start_cluster(server, postgres, redis)
    alice = await online(xmpp, n1, f"{ALICE}/a")
    await alice.roster_get()
    bob = await online(xmpp, n2, f"{BOB}/b", plugins=MAM)
    await bob.roster_get()
    await make_friends(alice, bob)

    sent = [f"m{i:03d}" for i in range(200)]
    for i, body in enumerate(sent):
        alice.send_message(BOB, body)
        if i == 100:
            # Under traffic: bob's node dies without a goodbye.
            n2.proc.send_signal(signal.SIGKILL)
            n2.proc.wait()
    # Every message alice sent is handled by n1 once this returns (RFC 6120
    # §10.1, in-order processing): what n1 acknowledged must not be lost.
    await alice.sync()

    # The survivors notice the death (heartbeat) and alice hears bob went offline.
    await alice.expect_presence(sender=f"{BOB}/b", ptype="unavailable", timeout=20)
    st = await until(lambda: (s := status(n1)) and "n2" not in s and s, "n2 removed")
    assert set(st) == {"n1", "n3"}, st

    # Bob reconnects to another node: what he had received before the kill,
    # plus his archive, is everything alice sent, each once.
    got_before = [m["body"] for m in bob.messages.seen]
    bob2 = await online(xmpp, n3, f"{BOB}/b2", plugins=MAM)
    archived = []
    after = None
    while True:
        rsm = {"max": 100} if after is None else {"max": 100, "after": after}
        ids, bodies, complete = await mam_page(bob2, **rsm)
        archived += bodies
        if complete or not ids:
            break
        after = ids[-1]
    assert [b for b in archived if b in sent] == sent, archived
    assert set(got_before) <= set(sent)
    # Messages that were on their way to the dead node reach bob as
    # offline messages too, or were in the session he saw: none vanish.
    alice.send_message(BOB, "after the failover")
    await bob2.expect_message(body="after the failover", sender=f"{ALICE}/a")


async def test_redis_restart_loses_nothing(server, xmpp, postgres, redis):
    n1, n2, _ = start_cluster(server, postgres, redis)
    alice = await online(xmpp, n1, f"{ALICE}/a")
    bob = await online(xmpp, n2, f"{BOB}/b", plugins=MAM)
    alice.send_message(f"{BOB}/b", "before")
    await bob.expect_message(body="before")

    redis.restart()  # empty: no persistence
    # Local traffic goes on meanwhile.
    carol = await online(xmpp, n1, f"{CAROL}/c")
    alice.send_message(f"{CAROL}/c", "local during the restart")
    await carol.expect_message(body="local during the restart")
    # Cross-node traffic sent around the restart arrives once Redis is back
    # (the nodes publish their sessions again; the sender retries).
    for i in range(20):
        alice.send_message(f"{BOB}/b", f"around {i}")
    await alice.sync()
    for i in range(20):
        await bob.expect_message(body=f"around {i}", timeout=20)
    got = [m["body"] for m in bob.messages.seen if m["body"].startswith("around")]
    assert got == [f"around {i}" for i in range(20)], got
    # And the registry is whole again: a new session on n2 is reachable from n1.
    # Each node publishes its sessions again at its own next heartbeat:
    # wait for both before reading n1's count.
    st = await until(lambda: (s := status(n1)) and s.get("n2", {}).get("sessions") == 1
                     and "n1" in s and s, "both nodes' sessions published again")
    assert st["n1"]["sessions"] == 2, st
    bob.send_message(f"{ALICE}/a", "after")
    await alice.expect_message(body="after", sender=f"{BOB}/b")


async def test_a_drained_node_sends_its_clients_to_another(server, xmpp, postgres, redis):
    n1, n2 = start_cluster(server, postgres, redis, n=2, extra={
        "listen": {"c2s": ["127.0.0.1:0"], "c2s_direct_tls": ["127.0.0.1:0"],
                   "http": ["127.0.0.1:0"]},
        "admin": {"enabled": True}})
    alice = await online(xmpp, n1, f"{ALICE}/a")
    # slixmpp would follow the redirect to the address it was first given
    # (it reconnects to its custom address): the test follows it instead.
    alice.x.max_redirects = -1
    bob = await online(xmpp, n2, f"{BOB}/b")
    alice.send_message(f"{BOB}/b", "crossing to n2")
    await bob.expect_message(body="crossing to n2", sender=f"{ALICE}/a")
    tok = token(n1)
    target = f"127.0.0.1:{n2.c2s_port}"
    out = admin(n1, tok, "drain", "--to", target)
    assert out == {"closed": 1}, out
    # RFC 6120 §4.9.3.19: the other host inside <see-other-host/>.
    err = await alice.stream_errors.expect(desc="see-other-host")
    assert err["condition"] == "see-other-host" and err["see_other_host"] == target, err
    await alice.wait_disconnected()
    alice2 = await online(xmpp, n2, f"{ALICE}/a")
    bob.send_message(f"{ALICE}/a", "found you on n2")
    await alice2.expect_message(body="found you on n2", sender=f"{BOB}/b")
    # A newcomer at the drained node is sent on too, before authenticating.
    carol = xmpp.new(n1, f"{CAROL}/c", PASSWORD)
    carol.x.max_redirects = -1
    assert await carol.connect() == "disconnected", carol.wire_text()
    assert [(e["condition"], e["see_other_host"]) for e in carol.stream_errors.seen] == [
        ("see-other-host", target)], carol.wire_text()
    st = await until(lambda: (s := status(n2)) and s["n2"]["sessions"] == 2 and s,
                     "the sessions on n2")
    assert st["n1"]["sessions"] == 0, st
    # n1's own view (admin stats): it sent envelopes, knows n2's sessions.
    stats = admin(n1, tok, "stats")
    assert stats["sessions"] == 0, stats
    assert stats["cluster"]["node"] == "n1", stats
    assert stats["cluster"]["envelopes_sent"] >= 1, stats
    await until(lambda: admin(n1, tok, "stats")["cluster"]["remote_sessions"].get("n2") == 2,
                "n1 sees n2's two sessions")
