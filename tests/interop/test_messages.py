"""Message routing between local users (RFC 6121 §8.5, RFC 6120 §8.1.2.1).

Non-delivery is proven with a barrier (wxtest.client.barrier): a marker sent
after the stanza under test on the same stream, so nothing is left in flight.
"""

import asyncio

from conftest import PASSWORD
from wxtest.client import barrier

ALICE = "alice@localhost"
BOB = "bob@localhost"
CAROL = "carol@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD, CAROL: PASSWORD}


async def online(xmpp, srv, full_jid, priority=None):
    client = await xmpp.login(srv, full_jid, PASSWORD)
    await client.online(priority=priority)
    return client


def bodies(client, body):
    return [m for m in client.messages.seen if m["body"] == body]


async def test_bare_jid_goes_to_highest_priority_resource(server, xmpp):
    srv = server(users=USERS)
    high = await online(xmpp, srv, f"{BOB}/high", priority=5)
    low = await online(xmpp, srv, f"{BOB}/low", priority=1)
    alice = await online(xmpp, srv, f"{ALICE}/a")
    alice.send_message(BOB, "for the best one")
    got = await high.expect_message(body="for the best one", sender=f"{ALICE}/a")
    assert got["type"] == "chat"
    await barrier(alice, low)
    assert bodies(low, "for the best one") == [], "lower-priority resource got a bare-JID message"


async def test_bare_jid_goes_to_all_equal_highest_priority_resources(server, xmpp):
    """RFC 6121 §8.5.2.1.1 lets the server pick one or all; waxwing delivers to
    all non-negative resources sharing the highest priority."""
    srv = server(users=USERS)
    one = await online(xmpp, srv, f"{BOB}/one", priority=3)
    two = await online(xmpp, srv, f"{BOB}/two", priority=3)
    low = await online(xmpp, srv, f"{BOB}/low", priority=0)
    alice = await online(xmpp, srv, f"{ALICE}/a")
    alice.send_message(BOB, "for both")
    await one.expect_message(body="for both", sender=f"{ALICE}/a")
    await two.expect_message(body="for both", sender=f"{ALICE}/a")
    await barrier(alice, low)
    assert bodies(low, "for both") == []


async def test_negative_priority_never_gets_bare_jid_messages(server, xmpp):
    srv = server(users=USERS)
    zero = await online(xmpp, srv, f"{BOB}/zero", priority=0)
    neg = await online(xmpp, srv, f"{BOB}/neg", priority=-1)
    alice = await online(xmpp, srv, f"{ALICE}/a")
    alice.send_message(BOB, "not for negative")
    await zero.expect_message(body="not for negative")
    await barrier(alice, neg)
    assert bodies(neg, "not for negative") == [], "negative-priority resource got a bare-JID message"
    # ... but a message to its full JID does reach it (§8.5.3.1).
    alice.send_message(f"{BOB}/neg", "direct")
    await neg.expect_message(body="direct", sender=f"{ALICE}/a")


async def test_full_jid_goes_only_to_that_resource(server, xmpp):
    srv = server(users=USERS)
    one = await online(xmpp, srv, f"{BOB}/one", priority=5)
    two = await online(xmpp, srv, f"{BOB}/two", priority=1)
    alice = await online(xmpp, srv, f"{ALICE}/a")
    alice.send_message(f"{BOB}/two", "only two")
    got = await two.expect_message(body="only two", sender=f"{ALICE}/a")
    assert str(got["to"]) == f"{BOB}/two"
    await barrier(alice, one)
    assert bodies(one, "only two") == []


async def test_chat_to_unavailable_full_jid_falls_back_to_bare_jid(server, xmpp):
    """§8.5.3.2.1: no resource matches, type chat -> treated as addressed to the bare JID."""
    srv = server(users=USERS)
    home = await online(xmpp, srv, f"{BOB}/home", priority=2)
    alice = await online(xmpp, srv, f"{ALICE}/a")
    alice.send_message(f"{BOB}/gone", "anyone there?", mtype="chat")
    await home.expect_message(body="anyone there?", sender=f"{ALICE}/a")


async def test_groupchat_to_unavailable_full_jid_is_bounced(server, xmpp):
    """§8.5.3.2.1: groupchat to a full JID with no matching resource -> error,
    which SHOULD be <service-unavailable/>."""
    srv = server(users=USERS)
    home = await online(xmpp, srv, f"{BOB}/home", priority=2)
    alice = await online(xmpp, srv, f"{ALICE}/a")
    sent = alice.send_message(f"{BOB}/gone", "room talk", mtype="groupchat")
    bounce = await alice.messages.expect(lambda m: m["type"] == "error", "(groupchat bounce)")
    assert bounce["id"] == sent["id"], f"error does not carry the original id: {bounce}"
    assert bounce["error"]["condition"] == "service-unavailable", str(bounce)
    assert bounce["from"].bare == BOB, str(bounce)
    await barrier(alice, home)
    assert bodies(home, "room talk") == []


async def test_error_message_to_unavailable_full_jid_is_dropped(server, xmpp):
    """§8.5.3.2.1: type error, no matching resource -> silently ignored
    (no error in reply to an error, no delivery to other resources)."""
    srv = server(users=USERS)
    home = await online(xmpp, srv, f"{BOB}/home", priority=2)
    alice = await online(xmpp, srv, f"{ALICE}/a")
    msg = alice.x.make_message(mto=f"{BOB}/gone", mtype="error")
    msg["id"] = "err-1"
    msg["error"]["type"] = "cancel"
    msg["error"]["condition"] = "item-not-found"
    msg.send()
    await alice.sync()
    await barrier(alice, home)
    assert [m for m in alice.messages.seen if m["id"] == "err-1"] == [], \
        "server answered an error message"
    assert [m for m in home.messages.seen if m["id"] == "err-1"] == [], \
        "error message was redirected to another resource"


async def test_message_content_and_id_survive_routing(server, xmpp):
    srv = server(users=USERS)
    bob = await online(xmpp, srv, f"{BOB}/b")
    alice = await online(xmpp, srv, f"{ALICE}/a")
    body = "<tag> & \"quotes\" 'apos' ünïcödé 🐦 " + "x" * 2000
    alice.send_message(BOB, body, mid="keep-this-id")
    got = await bob.expect_message(body=body)
    assert got["id"] == "keep-this-id"
    assert str(got["from"]) == f"{ALICE}/a"
    assert got["type"] == "chat"


async def test_spoofed_from_is_not_trusted(server, xmpp):
    """RFC 6120 §8.1.2.1: the server stamps or rejects a 'from' the client may not use."""
    srv = server(users=USERS)
    carol = await online(xmpp, srv, f"{CAROL}/c")
    alice = await online(xmpp, srv, f"{ALICE}/a")
    msg = alice.x.make_message(mto=CAROL, mbody="I am bob", mtype="chat")
    msg["from"] = f"{BOB}/fake"
    msg.send()
    # Either the message arrives stamped with alice's JID, or alice's stream
    # is closed with <invalid-from/>; never does carol see it from bob.
    arrived = asyncio.ensure_future(carol.expect_message(body="I am bob"))
    errored = asyncio.ensure_future(alice.stream_errors.expect(desc="(invalid-from)"))
    done, pending = await asyncio.wait({arrived, errored}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    if arrived in done:
        assert str(arrived.result()["from"]) == f"{ALICE}/a", str(arrived.result())
    else:
        assert errored.result()["condition"] == "invalid-from", str(errored.result())
    assert [m for m in carol.messages.seen if m["from"].bare == BOB] == []
