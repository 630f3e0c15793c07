"""Offline messages (XEP-0160, RFC 6121 §8.5.2.2, XEP-0203 delay stamps)."""

import datetime as dt

from conftest import PASSWORD
from wxtest.client import barrier
from wxtest.steps import make_friends

ALICE = "alice@localhost"
BOB = "bob@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD}
NS_DELAY = "urn:xmpp:delay"


def delay_of(msg):
    el = msg.xml.find(f"{{{NS_DELAY}}}delay")
    assert el is not None, f"offline message without <delay xmlns='{NS_DELAY}'/>: {msg}"
    return el


def parse_stamp(stamp: str) -> dt.datetime:
    # XEP-0082 DateTime: UTC, 'Z' or +00:00, optional fraction.
    value = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert value.tzinfo is not None and value.utcoffset() == dt.timedelta(0), stamp
    return value


async def send_and_settle(sender, to, bodies, mtype="chat"):
    for body in bodies:
        sender.send_message(to, body, mtype=mtype)
    # In-order processing: once this round trip returns, the messages are stored.
    await sender.sync()


async def test_offline_messages_delivered_in_order_with_delay(server, xmpp):
    srv = server(users=USERS)
    alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    await send_and_settle(alice, BOB, ["first", "second", "third"])
    after = dt.datetime.now(dt.timezone.utc)

    bob = await xmpp.login(srv, f"{BOB}/b", PASSWORD)
    await bob.sync()
    # XEP-0160 §3: delivered once the recipient sends available presence, not at bind.
    assert bob.messages.matching(lambda m: m["body"] in ("first", "second", "third")) == [], \
        "offline messages delivered before initial presence"
    await bob.online()
    got = [await bob.expect_message(body=b) for b in ("first", "second", "third")]
    order = [m["body"] for m in bob.messages.seen if m["body"] in ("first", "second", "third")]
    assert order == ["first", "second", "third"], order
    for msg in got:
        assert msg["from"].bare == ALICE, str(msg)
        delay = delay_of(msg)
        assert delay.get("from") == srv.domain, f"delay 'from' should be the server: {msg}"
        stamp = parse_stamp(delay.get("stamp"))
        assert before - dt.timedelta(seconds=2) <= stamp <= after + dt.timedelta(seconds=2), \
            f"stamp {stamp} outside [{before}, {after}]"


async def test_message_after_logout_is_stored(server, xmpp):
    srv = server(users=USERS)
    alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
    await alice.roster_get()
    await alice.online()
    bob = await xmpp.login(srv, f"{BOB}/b", PASSWORD)
    await bob.roster_get()
    await bob.online()
    await make_friends(alice, bob)
    await bob.close()
    # Bob's unavailable presence proves the server has retired his session.
    await alice.expect_presence(sender=f"{BOB}/b", ptype="unavailable")
    await send_and_settle(alice, BOB, ["while you were out"])

    again = await xmpp.login(srv, f"{BOB}/b2", PASSWORD)
    await again.online()
    got = await again.expect_message(body="while you were out", sender=f"{ALICE}/a")
    delay_of(got)


async def test_only_negative_priority_resources_means_offline(server, xmpp):
    """RFC 6121 §8.5.2.1.1: if every available resource has a negative
    priority, the message is handled as if there were none (stored)."""
    srv = server(users=USERS)
    neg = await xmpp.login(srv, f"{BOB}/neg", PASSWORD)
    await neg.online(priority=-5)
    alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
    await send_and_settle(alice, BOB, ["keep it for later"])
    await barrier(alice, neg)
    assert [m for m in neg.messages.seen if m["body"] == "keep it for later"] == []

    pos = await xmpp.login(srv, f"{BOB}/pos", PASSWORD)
    await pos.online(priority=1)
    got = await pos.expect_message(body="keep it for later", sender=f"{ALICE}/a")
    delay_of(got)


async def test_headline_is_not_stored_and_groupchat_bounces(server, xmpp):
    """RFC 6121 §8.5.2.2.1, no available resource: headline is silently
    ignored; groupchat returns an error (SHOULD be service-unavailable)."""
    srv = server(users=USERS)
    alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
    alice.send_message(BOB, "headline news", mtype="headline")
    sent = alice.send_message(BOB, "group noise", mtype="groupchat")
    bounce = await alice.messages.expect(lambda m: m["type"] == "error", "(groupchat bounce)")
    assert bounce["id"] == sent["id"], str(bounce)
    assert bounce["error"]["condition"] == "service-unavailable", str(bounce)
    await send_and_settle(alice, BOB, ["plain chat"])

    bob = await xmpp.login(srv, f"{BOB}/b", PASSWORD)
    await bob.online()
    await bob.expect_message(body="plain chat")
    await barrier(alice, bob)
    stored = [m["body"] for m in bob.messages.seen if m["body"] in ("headline news", "group noise")]
    assert stored == [], f"delivered from offline storage: {stored}"


async def test_offline_storage_survives_restart(server, xmpp):
    """DESIGN.md: anything acknowledged survives a restart (here a clean one)."""
    srv = server(users=USERS)
    alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
    await send_and_settle(alice, BOB, ["across restarts"])
    await alice.close()
    srv.restart()
    bob = await xmpp.login(srv, f"{BOB}/b", PASSWORD)
    await bob.online()
    got = await bob.expect_message(body="across restarts")
    delay_of(got)
