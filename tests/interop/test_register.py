"""In-band registration (XEP-0077): creating accounts when `[registration]
open = true`, refusal when closed, password change and account removal."""

import asyncio

import pytest

from slixmpp.exceptions import IqError, IqTimeout

from conftest import PASSWORD
from wxtest import STEP_TIMEOUT
from wxtest.raw import NS_STANZA_ERRORS, RawStream, q, stream_error_condition

ALICE = "alice@localhost"
NS_REGISTER = "jabber:iq:register"
NS_REGISTER_FEATURE = "http://jabber.org/features/iq-register"
OPEN = {"registration": {"open": True}}


def registering_client(xmpp, srv, jid, password):
    """A slixmpp client that registers `jid` in-band before authenticating.
    Returns (client, future of the registration IQ outcome)."""
    client = xmpp.new(srv, jid, password)
    client.x.plugin["xep_0077"].force_registration = True
    outcome: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_register(_form):
        resp = client.x.Iq()
        resp["type"] = "set"
        resp["register"]["username"] = client.x.boundjid.user
        resp["register"]["password"] = password
        try:
            res = await resp.send(timeout=STEP_TIMEOUT)
        except IqError as e:
            res = e.iq
        except IqTimeout:
            res = None
        if not outcome.done():
            outcome.set_result(res)

    client.x.add_event_handler("register", on_register)
    return client, outcome


async def test_open_registration_creates_account_that_can_log_in(server, xmpp):
    srv = server(OPEN)
    newbie, registered = registering_client(xmpp, srv, "newbie@localhost", "fresh-password-1")
    assert await newbie.connect() == "session_start", newbie.wire_text()
    res = registered.result()
    assert res is not None and res["type"] == "result", f"registration failed: {res}"
    assert any(NS_REGISTER_FEATURE in f for f in newbie.features), \
        f"open registration but no <register xmlns='{NS_REGISTER_FEATURE}'/> feature: {newbie.features}"
    await newbie.close()
    again = await xmpp.login(srv, "newbie@localhost", "fresh-password-1")
    assert str(again.jid.bare) == "newbie@localhost"


async def test_registering_an_existing_username_is_conflict(server, xmpp):
    srv = server(OPEN, users={ALICE: PASSWORD})
    thief, registered = registering_client(xmpp, srv, ALICE, "other-password-1")
    await thief.connect()
    res = await asyncio.wait_for(registered, STEP_TIMEOUT)
    assert res is not None and res["type"] == "error", f"expected an error: {res}"
    assert res["error"]["condition"] == "conflict", str(res)
    # The original password still works.
    await xmpp.login(srv, ALICE, PASSWORD)


async def test_registration_refused_when_closed(server, xmpp):
    """Default `open = false`: the register feature is not advertised and a
    registration attempt is refused (XEP-0077 §3.1 / §8)."""
    srv = server(users={ALICE: PASSWORD})
    raw = RawStream(srv.c2s_port, domain=srv.domain)
    try:
        raw.open()
        features = raw.starttls()
        assert features.find(q(NS_REGISTER_FEATURE, "register")) is None, raw.text()
        raw.send(f"<iq type='set' id='reg1'><query xmlns='{NS_REGISTER}'>"
                 "<username>intruder</username><password>intruder-pw-1</password></query></iq>")
        reply = raw.next()
        if stream_error_condition(reply) is not None:
            # Treating it as a stanza before authentication is a refusal too.
            assert stream_error_condition(reply) == "not-authorized", raw.text()
        else:
            assert reply is not None and reply.get("type") == "error" and reply.get("id") == "reg1", \
                raw.text()
            error = reply.find("{jabber:client}error")
            conditions = [c.tag.split("}")[1] for c in error
                          if c.tag.startswith(f"{{{NS_STANZA_ERRORS}}}")]
            assert set(conditions) & {"not-allowed", "forbidden", "service-unavailable",
                                      "registration-required"}, raw.text()
    finally:
        raw.close()
    intruder = xmpp.new(srv, "intruder@localhost", "intruder-pw-1", mech="SCRAM-SHA-1")
    assert await intruder.connect() == "failed_auth"


async def test_registration_enforces_min_password_length(server, xmpp):
    srv = server({"registration": {"open": True, "min_password_length": 8}})
    if srv.name != "waxwing":
        pytest.skip(f"{srv.name} has no minimum password length by default")
    shorty, registered = registering_client(xmpp, srv, "shorty@localhost", "short")
    await shorty.connect()
    res = await asyncio.wait_for(registered, STEP_TIMEOUT)
    assert res is not None and res["type"] == "error", f"short password accepted: {res}"
    probe = xmpp.new(srv, "shorty@localhost", "short", mech="SCRAM-SHA-1")
    assert await probe.connect() == "failed_auth"


async def test_password_change_then_login_with_new_password(server, xmpp):
    srv = server(users={ALICE: PASSWORD})
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    try:
        res = await alice.x.plugin["xep_0077"].change_password("brand-new-pass", timeout=STEP_TIMEOUT)
    except IqError as e:
        res = e.iq
    assert res["type"] == "result", str(res)
    await alice.close()
    old = xmpp.new(srv, ALICE, PASSWORD, mech="SCRAM-SHA-1")
    assert await old.connect() == "failed_auth"
    for mech in ("SCRAM-SHA-1", "PLAIN"):
        await xmpp.login(srv, ALICE, "brand-new-pass", mech=mech)


async def test_account_removal_then_login_fails(server, xmpp):
    srv = server(users={ALICE: PASSWORD})
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    try:
        res = await alice.x.plugin["xep_0077"].cancel_registration(timeout=STEP_TIMEOUT)
    except IqError as e:
        res = e.iq
    assert res["type"] == "result", str(res)
    gone = xmpp.new(srv, ALICE, PASSWORD, mech="SCRAM-SHA-1")
    assert await gone.connect() == "failed_auth"
