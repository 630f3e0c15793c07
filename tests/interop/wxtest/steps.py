"""Multi-step protocol building blocks shared by the scenarios."""

from __future__ import annotations

from .client import Client


def roster_item_in(push, jid: str) -> dict | None:
    for item_jid, item in push["roster"]["items"].items():
        if str(item_jid) == jid:
            return dict(item)
    return None


def current_subscription(client: Client, jid: str) -> str:
    """The subscription state of ``jid`` according to the last roster push seen."""
    state = "none"
    for push in client.roster_pushes.seen:
        item = roster_item_in(push, jid)
        if item is not None:
            state = item["subscription"]
    return state


async def expect_roster_state(client: Client, jid: str, subscription: str, ask: str | None = None):
    """Wait for a roster push about ``jid`` with that subscription (and ask)."""
    def pred(push):
        item = roster_item_in(push, jid)
        return (item is not None and item["subscription"] == subscription
                and (ask is None or item["ask"] == ask))
    return await client.roster_pushes.expect(
        pred, f"(roster push: {jid} subscription={subscription} ask={ask})")


async def subscribe(user: Client, contact: Client) -> None:
    """``user`` subscribes to ``contact``'s presence and ``contact`` approves
    (RFC 6121 §3.1), checking every hop. Both must have requested the roster
    (only interested resources get roster pushes, §2.1.6)."""
    user_bare, contact_bare = user.jid.bare, contact.jid.bare
    user_before = current_subscription(user, contact_bare)        # none | from
    contact_before = current_subscription(contact, user_bare)     # none | to

    user.x.send_presence(pto=contact_bare, ptype="subscribe")
    # §3.1.2: roster push to the user with ask='subscribe'
    await expect_roster_state(user, contact_bare, user_before, ask="subscribe")
    # §3.1.3: delivered to the contact, stamped with the user's bare JID
    request = await contact.expect_presence(sender=user_bare, ptype="subscribe")
    assert str(request["from"]) == user_bare, \
        f"subscription request must come from the bare JID: {request}"

    contact.x.send_presence(pto=user_bare, ptype="subscribed")
    # §3.1.5: roster push to the contact: none -> from, to -> both
    await expect_roster_state(contact, user_bare, {"none": "from", "to": "both"}[contact_before])
    # §3.1.6: the user gets <subscribed/> from the bare JID and a roster push
    approval = await user.expect_presence(sender=contact_bare, ptype="subscribed")
    assert str(approval["from"]) == contact_bare, approval
    await expect_roster_state(user, contact_bare, {"none": "to", "from": "both"}[user_before])


async def make_friends(a: Client, b: Client) -> None:
    """Mutual subscription a <-> b; both rosters end at 'both'."""
    await subscribe(a, b)
    await subscribe(b, a)
