"""Presence and subscriptions (RFC 6121 §3, §4)."""

import pytest

from conftest import PASSWORD
from wxtest.subjects import subject_class
from wxtest.client import barrier
from wxtest.steps import expect_roster_state, make_friends, roster_item_in

ALICE = "alice@localhost"
BOB = "bob@localhost"
CAROL = "carol@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD, CAROL: PASSWORD}


async def login_interested(xmpp, srv, jid):
    """Log in, request the roster (so we get pushes), send initial presence."""
    client = await xmpp.login(srv, jid, PASSWORD)
    res = await client.roster_get()
    assert res["type"] == "result", str(res)
    await client.online()
    return client


def presences_from(client, full_jid: str, ptype: str):
    return client.presences.matching(
        lambda p: str(p["from"]) == full_jid and (p.xml.get("type") or "available") == ptype)


async def test_initial_presence_is_reflected_to_the_sender(server, xmpp):
    """§4.2.2: initial presence goes to all of the user's available resources,
    "including the resource that generated the presence notification"."""
    srv = server(users=USERS)
    one = await xmpp.login(srv, f"{ALICE}/one", PASSWORD)
    one.x.send_presence(pstatus="me")
    echo = await one.expect_presence(sender=f"{ALICE}/one", ptype="available")
    assert echo["status"] == "me"


async def test_initial_presence_reaches_the_users_other_resources(server, xmpp):
    srv = server(users=USERS)
    one = await xmpp.login(srv, f"{ALICE}/one", PASSWORD)
    await one.online()
    two = await xmpp.login(srv, f"{ALICE}/two", PASSWORD)
    two.x.send_presence(pstatus="hello")
    seen = await one.expect_presence(sender=f"{ALICE}/two", ptype="available")
    assert seen["status"] == "hello"
    # ... and the newcomer learns about the resource already online.
    await two.expect_presence(sender=f"{ALICE}/one", ptype="available")
    await two.close()
    await one.expect_presence(sender=f"{ALICE}/two", ptype="unavailable")


async def test_subscription_handshake_both_ways(server, xmpp):
    srv = server(users=USERS)
    alice = await login_interested(xmpp, srv, f"{ALICE}/a")
    bob = await login_interested(xmpp, srv, f"{BOB}/b")

    await make_friends(alice, bob)

    # Nothing was ever removed from either roster: a 'remove' push would tell
    # the client to delete an item it never had.
    for client, contact in ((alice, BOB), (bob, ALICE)):
        removes = [str(p) for p in client.roster_pushes.seen
                   if (roster_item_in(p, contact) or {}).get("subscription") == "remove"]
        assert removes == [], f"spurious roster push(es) to {client.label}: {removes}"

    # Both rosters say 'both'.
    for client, contact in ((alice, BOB), (bob, ALICE)):
        res = await client.roster_get()
        item = roster_item_in(res, contact)
        assert item is not None and item["subscription"] == "both", str(res)
        assert item["ask"] in ("", None), f"ask still pending: {res}"

    # §3.1.6: after approval the contact's available resources' presence is sent.
    await alice.expect_presence(sender=f"{BOB}/b", ptype="available")
    await bob.expect_presence(sender=f"{ALICE}/a", ptype="available")

    # A presence change reaches the subscriber.
    bob.x.send_presence(pshow="away", pstatus="lunch")
    away = await alice.expect_presence(sender=f"{BOB}/b", ptype="available")
    while away["show"] != "away":
        away = await alice.expect_presence(sender=f"{BOB}/b", ptype="available")
    assert away["status"] == "lunch"


async def test_unsubscribe_makes_contact_unavailable(server, xmpp):
    """§3.3: after the user unsubscribes, the contact's server sends
    unavailable presence from each of the contact's resources."""
    if not subject_class().unavailable_after_unsubscribe:
        pytest.skip(f"{subject_class().name} does not implement RFC 6121 §3.3.3 step 3")
    srv = server(users=USERS)
    alice = await login_interested(xmpp, srv, f"{ALICE}/a")
    bob = await login_interested(xmpp, srv, f"{BOB}/b")
    await make_friends(alice, bob)
    await alice.expect_presence(sender=f"{BOB}/b", ptype="available")

    alice.x.send_presence(pto=BOB, ptype="unsubscribe")
    await expect_roster_state(alice, BOB, "from")
    await bob.expect_presence(sender=ALICE, ptype="unsubscribe")
    await expect_roster_state(bob, ALICE, "to")
    await alice.expect_presence(sender=f"{BOB}/b", ptype="unavailable")

    # Bob's later presence no longer reaches Alice (bob still sees alice).
    bob.x.send_presence(pstatus="after unsubscribe")
    await barrier(bob, alice)
    late = [p for p in alice.presences.seen if p["status"] == "after unsubscribe"]
    assert late == [], f"presence leaked after unsubscribe: {late}"


async def test_cancelled_subscription_makes_contact_unavailable(server, xmpp):
    """§3.2: the contact cancels (unsubscribed) -> the user sees it unavailable."""
    srv = server(users=USERS)
    alice = await login_interested(xmpp, srv, f"{ALICE}/a")
    bob = await login_interested(xmpp, srv, f"{BOB}/b")
    await make_friends(alice, bob)
    await alice.expect_presence(sender=f"{BOB}/b", ptype="available")

    bob.x.send_presence(pto=ALICE, ptype="unsubscribed")
    await expect_roster_state(bob, ALICE, "to")
    await alice.expect_presence(sender=BOB, ptype="unsubscribed")
    await expect_roster_state(alice, BOB, "from")
    await alice.expect_presence(sender=f"{BOB}/b", ptype="unavailable")


async def test_presence_probe_on_login(server, xmpp):
    """§4.3: a user coming online learns the presence of contacts already online."""
    srv = server(users=USERS)
    alice = await login_interested(xmpp, srv, f"{ALICE}/a")
    bob = await login_interested(xmpp, srv, f"{BOB}/b")
    await make_friends(alice, bob)
    await alice.close()

    again = await xmpp.login(srv, f"{ALICE}/again", PASSWORD)
    await again.online()
    await again.expect_presence(sender=f"{BOB}/b", ptype="available")
    # ... and the contact learns that the user came online.
    await bob.expect_presence(sender=f"{ALICE}/again", ptype="available")


async def test_clean_logout_sends_unavailable(server, xmpp):
    srv = server(users=USERS)
    alice = await login_interested(xmpp, srv, f"{ALICE}/a")
    bob = await login_interested(xmpp, srv, f"{BOB}/b")
    await make_friends(alice, bob)
    await alice.expect_presence(sender=f"{BOB}/b", ptype="available")
    await bob.close()
    await alice.expect_presence(sender=f"{BOB}/b", ptype="unavailable")


async def test_abrupt_disconnect_sends_unavailable(server, xmpp):
    """The TCP connection is dropped without </stream:stream>: the server must
    still broadcast unavailable presence for the lost resource."""
    srv = server(users=USERS)
    alice = await login_interested(xmpp, srv, f"{ALICE}/a")
    bob = await login_interested(xmpp, srv, f"{BOB}/b")
    await make_friends(alice, bob)
    await alice.expect_presence(sender=f"{BOB}/b", ptype="available")
    bob.kill()
    await alice.expect_presence(sender=f"{BOB}/b", ptype="unavailable")


async def test_no_presence_without_subscription(server, xmpp):
    srv = server(users=USERS)
    alice = await login_interested(xmpp, srv, f"{ALICE}/a")
    carol = await login_interested(xmpp, srv, f"{CAROL}/c")
    alice.x.send_presence(pstatus="private")
    await barrier(alice, carol)
    leaked = [p for p in carol.presences.seen if p["from"].bare == ALICE]
    assert leaked == [], f"presence reached a non-subscriber: {leaked}"


async def test_directed_presence(server, xmpp):
    """§4.6: presence sent to a JID reaches it even without a subscription."""
    srv = server(users=USERS)
    alice = await login_interested(xmpp, srv, f"{ALICE}/a")
    carol = await login_interested(xmpp, srv, f"{CAROL}/c")
    alice.x.send_presence(pto=f"{CAROL}/c", pstatus="just for you")
    got = await carol.expect_presence(sender=f"{ALICE}/a", ptype="available")
    assert got["status"] == "just for you"
