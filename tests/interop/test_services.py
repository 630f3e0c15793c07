"""Server-side services: disco (XEP-0030), ping (XEP-0199), version
(XEP-0092), entity time (XEP-0202), and IQ error rules (RFC 6120 §8.2.3, §8.4,
RFC 6121 §8.5)."""

import datetime as dt
import re
from xml.etree import ElementTree as ET

from conftest import PASSWORD

ALICE = "alice@localhost"
BOB = "bob@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD}

NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"


def error_condition(iq) -> str | None:
    return iq["error"]["condition"] if iq["type"] == "error" else None


async def test_disco_info_on_server(server, xmpp):
    srv = server(users=USERS)
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    res = await alice.x.plugin["xep_0030"].get_info(jid=srv.domain, local=False, timeout=15)
    assert res["type"] == "result", str(res)
    info = res["disco_info"]
    identities = {(cat, typ) for cat, typ, _lang, _name in info["identities"]}
    assert ("server", "im") in identities, identities
    features = set(info["features"])
    for feature in (NS_DISCO_INFO, NS_DISCO_ITEMS, "urn:xmpp:ping", "jabber:iq:version",
                    "urn:xmpp:time"):
        assert feature in features, f"{feature} missing from {sorted(features)}"


async def test_disco_items_on_server(server, xmpp):
    srv = server(users=USERS)
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    res = await alice.x.plugin["xep_0030"].get_items(jid=srv.domain, local=False, timeout=15)
    assert res["type"] == "result", str(res)


async def test_disco_info_on_own_account(server, xmpp):
    """XEP-0030 §3.1 / RFC 6121 §8.5.2: the server answers for the bare JID."""
    srv = server(users=USERS)
    alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
    res = await alice.x.plugin["xep_0030"].get_info(jid=ALICE, local=False, timeout=15)
    assert res["type"] == "result", str(res)
    assert str(res["from"]) == ALICE, str(res)
    identities = {(cat, typ) for cat, typ, _lang, _name in res["disco_info"]["identities"]}
    assert ("account", "registered") in identities, identities


async def test_ping_server(server, xmpp):
    srv = server(users=USERS)
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    iq = alice.x.Iq()
    iq["type"], iq["to"] = "get", srv.domain
    iq.enable("ping")
    res = await alice.iq(iq)
    assert res["type"] == "result", str(res)
    assert str(res["from"]) == srv.domain, str(res)
    assert res["id"] == iq["id"]


async def test_software_version(server, xmpp):
    srv = server(users=USERS)
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    res = await alice.iq(alice.make_iq("get", srv.domain, "<query xmlns='jabber:iq:version'/>"))
    assert res["type"] == "result", str(res)
    assert res["software_version"]["name"] == srv.product_name, str(res)
    assert res["software_version"]["version"], f"empty version: {res}"


async def test_entity_time(server, xmpp):
    srv = server(users=USERS)
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    res = await alice.iq(alice.make_iq("get", srv.domain, "<time xmlns='urn:xmpp:time'/>"))
    assert res["type"] == "result", str(res)
    el = res.xml.find("{urn:xmpp:time}time")
    assert el is not None, str(res)
    tzo = el.findtext("{urn:xmpp:time}tzo")
    utc = el.findtext("{urn:xmpp:time}utc")
    assert tzo and re.fullmatch(r"[+-]\d\d:\d\d|Z", tzo), f"bad tzo {tzo!r}"
    assert utc and utc.endswith("Z"), f"bad utc {utc!r}"
    server_now = dt.datetime.fromisoformat(utc.replace("Z", "+00:00"))
    skew = abs(dt.datetime.now(dt.timezone.utc) - server_now)
    assert skew < dt.timedelta(minutes=2), f"server utc {utc} is off by {skew}"


async def test_unknown_namespace_to_server_is_service_unavailable(server, xmpp):
    srv = server(users=USERS)
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    iq = alice.make_iq("get", srv.domain, "<query xmlns='urn:example:no-such-thing'/>")
    res = await alice.iq(iq)
    assert error_condition(res) == "service-unavailable", str(res)
    assert res["id"] == iq["id"]


async def test_unknown_namespace_to_bare_jid_is_service_unavailable(server, xmpp):
    """RFC 6121 §8.5.2: the server answers IQs to a bare JID on the user's behalf."""
    srv = server(users=USERS)
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    await xmpp.login(srv, BOB, PASSWORD)
    res = await alice.iq(alice.make_iq("get", BOB, "<query xmlns='urn:example:no-such-thing'/>"))
    assert error_condition(res) == "service-unavailable", str(res)


async def test_iq_to_full_jid_reaches_the_client(server, xmpp):
    srv = server(users=USERS)
    alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
    bob = await xmpp.login(srv, f"{BOB}/b", PASSWORD)
    res = await alice.iq(alice.make_iq("get", str(bob.jid), "<ping xmlns='urn:xmpp:ping'/>"))
    assert res["type"] == "result", str(res)
    assert str(res["from"]) == f"{BOB}/b", str(res)


async def test_iq_to_unavailable_full_jid_is_service_unavailable(server, xmpp):
    """RFC 6121 §8.5.3.2.1 (IQ): no matching resource -> <service-unavailable/>."""
    srv = server(users=USERS)
    alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
    await xmpp.login(srv, f"{BOB}/b", PASSWORD)
    res = await alice.iq(alice.make_iq("get", f"{BOB}/nope", "<ping xmlns='urn:xmpp:ping'/>"))
    assert error_condition(res) == "service-unavailable", str(res)


async def test_iq_get_with_two_payloads_is_bad_request(server, xmpp):
    """RFC 6120 §8.2.3: an IQ get/set has exactly one payload child."""
    srv = server(users=USERS)
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    iq = alice.make_iq("get", srv.domain, "<ping xmlns='urn:xmpp:ping'/>")
    iq.append(ET.fromstring("<query xmlns='jabber:iq:version'/>"))
    res = await alice.iq(iq)
    assert error_condition(res) == "bad-request", str(res)
