"""XEP-0114 external components, driven by slixmpp's ``ComponentXMPP``: the
handshake, routing of the whole component domain both ways, ``from``
checking, bounces while disconnected, disco#items, replacement on
reconnect."""

import pytest
from slixmpp.exceptions import IqError

from conftest import PASSWORD
from wxtest.client import barrier
from wxtest.component import Component

pytestmark = pytest.mark.allowed_skip(reason="components are a waxwing configuration")

ALICE = "alice@localhost"
BOB = "bob@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD}
GW = "gw.localhost"
SECRET = "component-secret-0123456789"


def config(**extra):
    return {
        "listen": {"component": ["127.0.0.1:0"]},
        "components": [{"domain": GW, "secret": SECRET, "name": "Test gateway"}],
        **extra,
    }


@pytest.fixture
def components(request):
    made: list[Component] = []

    def make(srv, secret=SECRET, domain=GW):
        c = Component(srv, domain, secret)
        made.append(c)
        return c

    yield made, make


async def _close_all(made):
    for c in made:
        await c.close()


async def test_component_receives_stanzas_for_its_domain_and_answers(server, xmpp, components):
    made, make = components
    srv = server(config(), users=USERS)
    try:
        gw = await make(srv).connect()

        async def echo(msg):
            reply = gw.x.make_message(mto=msg["from"], mfrom=msg["to"],
                                      mbody="echo: " + msg["body"], mtype="chat")
            reply.send()

        gw.x.add_event_handler("message", echo)
        alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
        alice.send_message(f"echo@{GW}", "hello", mtype="chat")
        got = await gw.messages.expect(lambda m: m["body"] == "hello", "hello")
        assert str(got["from"]) == f"{ALICE}/a", str(got)
        assert str(got["to"]) == f"echo@{GW}", str(got)
        reply = await alice.expect_message(body="echo: hello")
        assert str(reply["from"]) == f"echo@{GW}", str(reply)

        # An IQ to the component's domain is answered by the component
        # (slixmpp's disco plugin), not by the server.
        res = await alice.x.plugin["xep_0030"].get_info(jid=GW, local=False, timeout=15)
        assert res["type"] == "result" and str(res["from"]) == GW, str(res)
        # A ping to the component itself, and from the component to a user.
        await alice.x.plugin["xep_0199"].send_ping(GW, timeout=15)
        await gw.x.plugin["xep_0199"].send_ping(f"{ALICE}/a", ifrom=GW, timeout=15)

        # The server lists the component in its disco#items, with its name.
        items = await alice.x.plugin["xep_0030"].get_items(jid="localhost", local=False,
                                                            timeout=15)
        listed = {(str(j), n) for j, _node, n in items["disco_items"]["items"]}
        assert (GW, "Test gateway") in listed, listed
    finally:
        await _close_all(made)


async def test_wrong_secret_is_refused(server, components):
    made, make = components
    srv = server(config())
    try:
        cond = await make(srv, secret="not-the-secret-at-all").refused()
        assert cond == "not-authorized", cond
    finally:
        await _close_all(made)


async def test_unknown_component_domain_is_refused(server, components):
    made, make = components
    srv = server(config())
    try:
        cond = await make(srv, domain="other.localhost").refused()
        assert cond == "host-unknown", cond
    finally:
        await _close_all(made)


async def test_spoofed_from_is_refused(server, xmpp, components):
    made, make = components
    srv = server(config(), users=USERS)
    try:
        gw = await make(srv).connect()
        alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
        bob = await xmpp.login(srv, f"{BOB}/b", PASSWORD)
        gw.x.make_message(mto=f"{ALICE}/a", mfrom=BOB, mbody="spoofed", mtype="chat").send()
        err = await gw.stream_errors.expect(desc="invalid-from")
        assert err["condition"] == "invalid-from", str(err)
        await gw.disconnected.wait()
        # Everything bob sends after this arrives after anything the
        # component's stream had routed: the spoofed message never came.
        await barrier(bob, alice)
        assert not alice.messages.matching(lambda m: m["body"] == "spoofed")
    finally:
        await _close_all(made)


async def test_disconnected_component_bounces_service_unavailable(server, xmpp, components):
    made, make = components
    srv = server(config(), users=USERS)
    try:
        alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
        with pytest.raises(IqError) as e:
            await alice.x.plugin["xep_0030"].get_info(jid=GW, local=False, timeout=15)
        assert e.value.iq["error"]["condition"] == "service-unavailable", str(e.value.iq)
        alice.send_message(f"someone@{GW}", "anyone there?", mtype="chat")
        bounce = await alice.messages.expect(lambda m: m["type"] == "error", "error bounce")
        assert bounce["error"]["condition"] == "service-unavailable", str(bounce)

        # Connected, then gone: bounces again.
        gw = await make(srv).connect()
        await alice.x.plugin["xep_0199"].send_ping(GW, timeout=15)
        await gw.close()
        with pytest.raises(IqError) as e:
            await alice.x.plugin["xep_0199"].send_ping(GW, timeout=15)
        assert e.value.iq["error"]["condition"] == "service-unavailable", str(e.value.iq)
    finally:
        await _close_all(made)


async def test_reconnect_replaces_the_old_stream(server, xmpp, components):
    made, make = components
    srv = server(config(), users=USERS)
    try:
        first = await make(srv).connect()
        second = await make(srv).connect()
        err = await first.stream_errors.expect(desc="conflict")
        assert err["condition"] == "conflict", str(err)
        alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
        alice.send_message(f"x@{GW}", "to the new one", mtype="chat")
        await second.messages.expect(lambda m: m["body"] == "to the new one", "message")
    finally:
        await _close_all(made)


async def test_oversized_stanza_from_component_is_a_stream_error(server, components):
    made, make = components
    srv = server(config(limits={"max_stanza_bytes": 10000}))
    try:
        gw = await make(srv).connect()
        gw.x.make_message(mto=ALICE, mfrom=GW, mbody="x" * 20000).send()
        err = await gw.stream_errors.expect(desc="policy-violation")
        assert err["condition"] == "policy-violation", str(err)
    finally:
        await _close_all(made)
