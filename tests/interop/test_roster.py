"""Roster management (RFC 6121 §2): get, set, update, remove, pushes to the
account's other interested resources, roster versioning (§2.6)."""

from conftest import PASSWORD

ALICE = "alice@localhost"
BOB = "bob@localhost"
CAROL = "carol@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD, CAROL: PASSWORD}
NS_ROSTERVER = "urn:xmpp:features:rosterver"


def items(iq) -> dict:
    assert iq["type"] == "result", f"roster IQ failed: {iq}"
    return {str(jid): dict(item) for jid, item in iq["roster"]["items"].items()}


def push_item(push, jid: str) -> dict:
    got = {str(j): dict(item) for j, item in push["roster"]["items"].items()}
    assert list(got) == [jid], f"push should carry exactly one item for {jid}: {push}"
    return got[jid]


def assert_push_from_ok(push, account: str) -> None:
    # RFC 6121 §2.1.6: no 'from', or the user's bare JID.
    sender = push.xml.get("from")
    assert sender in (None, account), f"roster push from {sender!r}: {push}"


async def two_resources(xmpp, srv):
    one = await xmpp.login(srv, f"{ALICE}/one", PASSWORD)
    two = await xmpp.login(srv, f"{ALICE}/two", PASSWORD)
    # Only resources that requested the roster are "interested" (§2.1.6).
    assert items(await one.roster_get()) == {}
    assert items(await two.roster_get()) == {}
    return one, two


async def test_roster_add_update_remove_with_pushes(server, xmpp):
    srv = server(users=USERS)
    one, two = await two_resources(xmpp, srv)

    # add
    res = await one.roster_set(BOB, name="Bob", groups=["Friends", "Work"])
    assert res["type"] == "result", str(res)
    for client in (one, two):
        push = await client.roster_pushes.expect(desc="(add bob)")
        assert_push_from_ok(push, ALICE)
        item = push_item(push, BOB)
        assert item["name"] == "Bob"
        assert sorted(item["groups"]) == ["Friends", "Work"]
        assert item["subscription"] == "none"
    roster = items(await one.roster_get())
    assert list(roster) == [BOB]
    assert roster[BOB]["name"] == "Bob"
    assert sorted(roster[BOB]["groups"]) == ["Friends", "Work"]
    assert roster[BOB]["subscription"] == "none"

    # update: new name, one group dropped
    res = await two.roster_set(BOB, name="Robert", groups=["Friends"])
    assert res["type"] == "result", str(res)
    push = await one.roster_pushes.expect(desc="(update bob)")
    item = push_item(push, BOB)
    assert (item["name"], item["groups"]) == ("Robert", ["Friends"])
    await two.roster_pushes.expect(desc="(update bob, own push)")

    # a second contact
    await one.roster_set(CAROL, name="Carol")
    await two.roster_pushes.expect(lambda p: CAROL in {str(j) for j in p["roster"]["items"]})
    roster = items(await two.roster_get())
    assert sorted(roster) == [BOB, CAROL]
    assert roster[BOB]["name"] == "Robert"
    assert roster[BOB]["groups"] == ["Friends"]

    # remove
    res = await one.roster_set(BOB, subscription="remove")
    assert res["type"] == "result", str(res)
    push = await two.roster_pushes.expect(lambda p: BOB in {str(j) for j in p["roster"]["items"]},
                                          desc="(remove bob)")
    assert push_item(push, BOB)["subscription"] == "remove"
    assert sorted(items(await two.roster_get())) == [CAROL]


async def test_roster_survives_reconnect(server, xmpp):
    srv = server(users=USERS)
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    await alice.roster_set(BOB, name="Bob", groups=["G"])
    await alice.close()
    again = await xmpp.login(srv, ALICE, PASSWORD)
    roster = items(await again.roster_get())
    assert roster[BOB]["name"] == "Bob" and roster[BOB]["groups"] == ["G"], roster


async def test_removing_unknown_item_is_item_not_found(server, xmpp):
    srv = server(users=USERS)
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    res = await alice.roster_set("nobody@localhost", subscription="remove")
    assert res["type"] == "error" and res["error"]["condition"] == "item-not-found", str(res)


async def test_roster_set_with_two_items_is_bad_request(server, xmpp):
    srv = server(users=USERS)
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    iq = alice.make_iq("set", payload=(
        "<query xmlns='jabber:iq:roster'>"
        f"<item jid='{BOB}'/><item jid='{CAROL}'/></query>"))
    res = await alice.iq(iq)
    assert res["type"] == "error" and res["error"]["condition"] == "bad-request", str(res)
    assert items(await alice.roster_get()) == {}


async def test_roster_versioning(server, xmpp):
    srv = server(users=USERS)
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    assert NS_ROSTERVER in alice.features[-1], \
        f"rosterver not advertised in post-auth features: {alice.features[-1]}"

    first = await alice.roster_get(ver="")
    assert first["type"] == "result", str(first)
    assert first["roster"].xml.get("ver") is not None, \
        f"no 'ver' on the roster result although requested: {first}"

    await alice.roster_set(CAROL, name="Carol")
    push = await alice.roster_pushes.expect(desc="(add carol)")
    v1 = push["roster"].xml.get("ver")
    assert v1 is not None, f"roster push without 'ver': {push}"

    await alice.roster_set(BOB, name="Bob")
    push = await alice.roster_pushes.expect(desc="(add bob)")
    v2 = push["roster"].xml.get("ver")
    assert v2 is not None and v2 != v1, f"push ver {v2!r} vs initial {v1!r}: {push}"

    # Up to date: an empty result, or the full roster at the same version.
    same = await alice.roster_get(ver=v2)
    assert same["type"] == "result", str(same)
    if same.xml.find("{jabber:iq:roster}query") is not None:
        assert same["roster"].xml.get("ver") == v2
        assert BOB in {str(j) for j in same["roster"]["items"]}

    # Stale: the full roster at the latest version, or an empty result plus pushes.
    stale = await alice.roster_get(ver=v1)
    assert stale["type"] == "result", str(stale)
    if stale.xml.find("{jabber:iq:roster}query") is not None:
        assert stale["roster"].xml.get("ver") == v2, str(stale)
        assert BOB in {str(j) for j in stale["roster"]["items"]}
    else:
        await alice.roster_pushes.expect(lambda p: BOB in {str(j) for j in p["roster"]["items"]},
                                         desc="(bob, replayed for a stale version)")
