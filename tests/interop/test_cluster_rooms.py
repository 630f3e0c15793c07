"""Rooms, pubsub nodes and federation in a cluster (issue #16 items 3 and
4): real ``waxwing`` nodes on one real PostgreSQL and one real Redis,
slixmpp clients on different nodes.

- A MUC room is served by one node (a lease in Redis, ``wx:lease:…``);
  occupants on the other nodes reach it through the cluster transport.
- When that node is killed (SIGKILL), the room moves to a survivor, which
  loads it from PostgreSQL; the survivors' occupants are not in it any
  more (their presence was in the dead process), are told so when they
  speak (``not-acceptable``, XEP-0045 §7.2 / XEP-0410) and join again.
- PEP and pubsub service nodes across nodes.
- Federation: a two-node cluster and a real Prosody; one outgoing stream
  for the domain pair cluster-wide, dialback keys made on one node and
  checked on the other (the shared secret), a user on each node.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import uuid

import pytest
from slixmpp import JID

from conftest import PASSWORD
from test_cluster import start_cluster, status, until
from test_muc import (PLUGINS as MUC_PLUGINS, codes, create, expect_groupchat, join, muc,
                      say)
from test_pep import expect_event, login as pep_login, publish, tune, NS_TUNE
from wxtest import STEP_TIMEOUT
from wxtest.federation import WX, Prosody, free_loopback_5269
from wxtest.steps import make_friends
from wxtest.subjects import subject_class

pytestmark = pytest.mark.skipif(not subject_class().has_cli,
                                reason=f"{subject_class().name}: no cluster mode")

ALICE = "alice@localhost"
BOB = "bob@localhost"
CAROL = "carol@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD, CAROL: PASSWORD}
SERVICE = "conference.localhost"


def lease_holder(redis, key: str) -> str | None:
    """The node named in a lease (``"<node> <incarnation>"``), read with redis-cli."""
    out = subprocess.run(["redis-cli", "-p", str(redis.port), "GET", key],
                         capture_output=True, text=True, check=True).stdout.strip()
    return out.split(" ")[0] if out else None


def registry_text(redis, node: str) -> str:
    """A node's published sessions (``wx:reg:<node>``), as text."""
    return subprocess.run(["redis-cli", "-p", str(redis.port), "HVALS", f"wx:reg:{node}"],
                          capture_output=True, text=True, check=True).stdout


def room_lease(room_jid: str) -> str:
    return f"wx:lease:svc:{SERVICE}:{room_jid}"


async def muc_user(xmpp, srv, jid: str):
    c = xmpp.new(srv, jid, PASSWORD)
    for p in MUC_PLUGINS:
        c.x.register_plugin(p)
    await c.login()
    await c.online()
    return c


async def test_occupants_on_three_nodes_chat_in_one_room(server, xmpp, postgres, redis):
    n1, n2, n3 = start_cluster(server, postgres, redis, users=USERS)
    alice = await muc_user(xmpp, n1, f"{ALICE}/a")
    bob = await muc_user(xmpp, n2, f"{BOB}/b")
    carol = await muc_user(xmpp, n3, f"{CAROL}/c")
    r = f"lobby-{uuid.uuid4().hex[:8]}@{SERVICE}"

    await create(alice, r, "alice")
    # The node where the room's first stanza entered owns it.
    assert lease_holder(redis, room_lease(r)) == "n1"
    _, _, others, _ = await join(bob, r, "bob")
    assert [str(p["from"]) for p in others] == [f"{r}/alice"], others
    _, _, others, _ = await join(carol, r, "carol")
    assert sorted(str(p["from"]) for p in others) == [f"{r}/alice", f"{r}/bob"], others
    for c, nick in ((alice, "carol"), (bob, "carol")):
        await c.presences.expect(lambda p, nick=nick: str(p["from"]) == f"{r}/{nick}",
                                 f"(carol's join seen)")

    # Everyone's messages reach everyone, in order per sender.
    for i in range(10):
        await say(bob, r, f"bob {i}")
    await say(carol, r, "carol here")
    for c in (alice, bob, carol):
        for i in range(10):
            await expect_groupchat(c, r, f"bob {i}", nick="bob")
        await expect_groupchat(c, r, "carol here", nick="carol")
    got = [m["body"] for m in alice.messages.seen
           if m["type"] == "groupchat" and m["body"].startswith("bob ")]
    assert got == [f"bob {i}" for i in range(10)], got

    # Private messages between occupants on different nodes, through the room.
    msg = bob.x.make_message(mto=f"{r}/carol", mbody="psst", mtype="chat")
    msg.send()
    pm = await carol.expect_message(body="psst")
    assert str(pm["from"]) == f"{r}/bob", pm

    # The room's disco#info is answered by its owner for every node's users.
    iq = carol.make_iq("get", r, "<query xmlns='http://jabber.org/protocol/disco#info'/>")
    res = await carol.iq(iq)
    assert res["type"] == "result", res

    st = status(n1)
    assert st["n1"]["leases"] >= 1, st

    # Leaving from another node is seen by the others.
    muc(bob).leave_muc(JID(r), "bob")
    await alice.presences.expect(
        lambda p: str(p["from"]) == f"{r}/bob" and p["type"] == "unavailable", "(bob leaves)")
    assert lease_holder(redis, room_lease(r)) == "n1"


async def test_killed_owner_room_moves_and_occupants_rejoin(server, xmpp, postgres, redis):
    n1, n2, n3 = start_cluster(server, postgres, redis, users=USERS)
    alice = await muc_user(xmpp, n1, f"{ALICE}/a")
    bob = await muc_user(xmpp, n2, f"{BOB}/b")
    carol = await muc_user(xmpp, n3, f"{CAROL}/c")
    r = f"keep-{uuid.uuid4().hex[:8]}@{SERVICE}"

    # A persistent room, created on n1 (which owns it), with bob a member.
    await create(alice, r, "alice", {
        "muc#roomconfig_roomname": "Kept Room",
        "muc#roomconfig_persistentroom": True,
    })
    assert lease_holder(redis, room_lease(r)) == "n1"
    await join(bob, r, "bob")
    await join(carol, r, "carol")
    await say(bob, r, "before")
    await expect_groupchat(carol, r, "before", nick="bob")
    # A second room, served by n3, with alice (on n1) in it.
    r3 = f"other-{uuid.uuid4().hex[:8]}@{SERVICE}"
    await create(carol, r3, "carol")
    assert lease_holder(redis, room_lease(r3)) == "n3"
    await join(alice, r3, "alice")
    # Her directed presence to it is in the registry (written a moment
    # after the join, like all session state).
    await until(lambda: r3 in registry_text(redis, "n1"), "alice's directed presence published")

    # The owner dies without a goodbye.
    n1.proc.send_signal(signal.SIGKILL)
    n1.proc.wait()
    await until(lambda: (s := status(n2)) and "n1" not in s and s, "n1 removed", timeout=30)
    # Alice's session died with n1: the room on n3 hears she is gone
    # (her directed presence was in the registry) and drops her.
    await carol.presences.expect(
        lambda p: str(p["from"]) == f"{r3}/alice" and p["type"] == "unavailable",
        "(alice out of the room on n3)", timeout=20)
    assert lease_holder(redis, room_lease(r3)) == "n3"

    # Bob speaks: the room has moved (to the first survivor with a stanza
    # for it: his node, or the one that removed n1 and told the room alice
    # had left) and he is no longer an occupant there: not-acceptable,
    # XEP-0410's sign to join again.
    err_msg = await say(bob, r, "anyone?")
    err = await bob.messages.expect(
        lambda m: m["type"] == "error" and m["id"] == err_msg["id"], "(error for 'anyone?')")
    assert err["error"]["condition"] == "not-acceptable", err
    assert lease_holder(redis, room_lease(r)) in ("n2", "n3")

    # They join again: the room came back from PostgreSQL with its
    # configuration; it is not new (no 201), and bob is alone at first.
    own, _, others, _ = await join(bob, r, "bob")
    assert 201 not in codes(own), own
    assert others == [], others
    _, _, others, _ = await join(carol, r, "carol")
    assert [str(p["from"]) for p in others] == [f"{r}/bob"], others
    res = await carol.iq(carol.make_iq(
        "get", r, "<query xmlns='http://jabber.org/protocol/disco#info'/>"))
    assert "Kept Room" in str(res), res

    # And chat on.
    await say(carol, r, "after the move")
    await expect_groupchat(bob, r, "after the move", nick="carol")
    await say(bob, r, "still here")
    await expect_groupchat(carol, r, "still here", nick="bob")
    st = status(n3)
    assert set(st) == {"n2", "n3"}, st


async def test_pep_and_pubsub_nodes_across_nodes(server, xmpp, postgres, redis):
    n1, n2 = start_cluster(server, postgres, redis, n=2, users=USERS)
    alice = await pep_login(xmpp, n1, f"{ALICE}/a")
    bob = await pep_login(xmpp, n2, f"{BOB}/b", plugins=["xep_0115"], interests=[NS_TUNE])
    await make_friends(alice, bob)

    # PEP: alice (n1) publishes; bob (n2), whose caps ask for tunes, is
    # notified: n1 learns his caps from the presence in the registry and
    # asks his client (the answer comes back to n1 through n2), then sends
    # him the item; the next one goes to him at once.
    res = await publish(alice, NS_TUNE, "t1", tune("Across"))
    assert res["type"] == "result", res
    ev = await expect_event(bob, NS_TUNE, "t1")
    assert ev.find(f".//{{{NS_TUNE}}}title").text == "Across"
    res = await publish(alice, NS_TUNE, "t2", tune("Again"))
    assert res["type"] == "result", res
    await expect_event(bob, NS_TUNE, "t2")
    # And the other way: bob publishes on n2, alice (no +notify) gets
    # nothing, bob's own session does.
    res = await publish(bob, NS_TUNE, "b1", tune("Bob's"))
    assert res["type"] == "result", res
    await expect_event(bob, NS_TUNE, "b1")
    res = await bob.iq(bob.make_iq(
        "get", ALICE,
        f"<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='{NS_TUNE}'/></pubsub>"))
    assert "Across" in str(res), res

    # The pubsub service: a node created from n1, subscribed to from n2,
    # published to from n1; the node has one owner (a lease) and bob's
    # subscription gets the item.
    node = f"news-{uuid.uuid4().hex[:6]}"
    ps = "pubsub.localhost"
    ns = "http://jabber.org/protocol/pubsub"
    res = await alice.iq(alice.make_iq("set", ps, f"<pubsub xmlns='{ns}'><create node='{node}'/></pubsub>"))
    assert res["type"] == "result", res
    assert lease_holder(redis, f"wx:lease:svc:{ps}:{node}") == "n1"
    res = await bob.iq(bob.make_iq(
        "set", ps, f"<pubsub xmlns='{ns}'><subscribe node='{node}' jid='{bob.jid}'/></pubsub>"))
    assert res["type"] == "result", res
    res = await alice.iq(alice.make_iq("set", ps, (
        f"<pubsub xmlns='{ns}'><publish node='{node}'><item id='i1'>"
        f"<entry xmlns='http://www.w3.org/2005/Atom'><title>Hello</title></entry>"
        f"</item></publish></pubsub>")))
    assert res["type"] == "result", res
    await expect_event(bob, node, "i1")
    # Creating it again from the other node finds it (one node, one owner).
    res = await bob.iq(bob.make_iq(
        "set", ps, f"<pubsub xmlns='{ns}'><create node='{node}'/></pubsub>"))
    assert res["type"] == "error" and res["error"]["condition"] == "conflict", res


@pytest.fixture
def prosody_peer(tmp_path):
    """A real Prosody (dialback, self-signed) resolving Waxwing's domain to
    the first node's s2s address."""
    missing = [t for t in ("prosody", "setpriv") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"federation needs {missing} (scripts/test.sh installs them)", pytrace=False)
    addr = free_loopback_5269()
    peer = Prosody(addr)
    try:
        peer.start()
        peer.add_user("bob", PASSWORD)
        yield addr, peer
    finally:
        print(peer.logs())
        peer.stop()


async def test_two_node_cluster_federates_with_prosody(server, xmpp, postgres, redis,
                                                       prosody_peer):
    addr, peer = prosody_peer
    db = postgres.database()
    s2s = {"connect_timeout_secs": 20,
           "routes": {peer.domain: f"{peer.s2s_addr}:{peer.s2s_port}"}}
    nodes = []
    # Prosody reaches the cluster at n1's address only (as DNS would name
    # one node); n2 listens elsewhere.
    for i, listen in ((1, addr), (2, free_loopback_5269(exclude=(addr,)))):
        nodes.append(server({
            "hosts": [WX],
            "listen": {"s2s": [f"{listen}:5269"]},
            "s2s": s2s,
            "storage": {"database": db},
            "cluster": {"redis": redis.url, "node": f"n{i}",
                        "heartbeat_secs": 1, "dead_after_secs": 3},
        }, users={f"alice@{WX}": PASSWORD, f"carol@{WX}": PASSWORD} if i == 1 else None))
    n1, n2 = nodes
    alice = await xmpp.login(n1, f"alice@{WX}/pc", PASSWORD)
    carol = await xmpp.login(n2, f"carol@{WX}/pc", PASSWORD)
    bob = await xmpp.login(peer, f"bob@{peer.domain}/phone", PASSWORD)
    for c in (alice, carol, bob):
        await c.roster_get()
        await c.online()

    # First contact from n2: n2 takes the pair's lease and opens the one
    # stream; Prosody verifies n2's dialback key by connecting to n1, which
    # knows the shared secret.
    carol.send_message(f"bob@{peer.domain}", "from n2")
    m = await bob.expect_message(body="from n2", timeout=STEP_TIMEOUT * 2)
    assert str(m["from"]) == f"carol@{WX}/pc"
    assert lease_holder(redis, f"wx:lease:s2s:{WX}:{peer.domain}") == "n2"
    # Then from n1: forwarded to n2's stream, not a second one.
    for i in range(5):
        alice.send_message(f"bob@{peer.domain}", f"from n1 #{i}")
    for i in range(5):
        m = await bob.expect_message(body=f"from n1 #{i}", timeout=STEP_TIMEOUT * 2)
        assert str(m["from"]) == f"alice@{WX}/pc"
    got = [m["body"] for m in bob.messages.seen if m["body"].startswith("from n1")]
    assert got == [f"from n1 #{i}" for i in range(5)], got

    # Prosody's own stream comes in at n1; what is for carol crosses to n2.
    bob.send_message(f"carol@{WX}/pc", "to n2")
    bob.send_message(f"alice@{WX}/pc", "to n1")
    m = await carol.expect_message(body="to n2", timeout=STEP_TIMEOUT * 2)
    assert str(m["from"]) == f"bob@{peer.domain}/phone"
    await alice.expect_message(body="to n1", timeout=STEP_TIMEOUT * 2)
    # An IQ round trip from n1 through n2's stream.
    res = await alice.iq(alice.make_iq("get", peer.domain, "<ping xmlns='urn:xmpp:ping'/>"))
    assert res["type"] == "result", res

    n1_log, n2_log = n1.log_text(), n2.log_text()
    assert n2_log.count("outgoing s2s stream ready") == 1, n2_log[-5000:]
    assert "outgoing s2s stream ready" not in n1_log, n1_log[-5000:]
    # n1 answered Prosody's check of n2's key.
    assert "answering a dialback verification" in n1_log and "valid=true" in n1_log, \
        n1_log[-5000:]
    assert "valid=false" not in n1_log, n1_log[-5000:]
