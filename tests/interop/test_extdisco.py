"""XEP-0215 external service discovery with TURN REST credentials."""

import base64
import hashlib
import hmac
import time
from datetime import datetime

import pytest

from conftest import PASSWORD

pytestmark = pytest.mark.allowed_skip(reason="extdisco is a waxwing configuration")

ALICE = "alice@localhost"
USERS = {ALICE: PASSWORD}
NS = "urn:xmpp:extdisco:2"
TURN_SECRET = "turn-rest-secret-0123456789"


def config(ttl=600):
    return {
        "external_services": {
            "secret": TURN_SECRET,
            "credential_ttl_secs": ttl,
            "services": [
                {"type": "stun", "host": "stun.example.org", "port": 3478},
                {"type": "turn", "host": "turn.example.org", "port": 3478, "transport": "udp"},
                {"type": "turns", "host": "turn.example.org", "transport": "tcp"},
            ],
        }
    }


def services_of(iq, wrapper="services"):
    el = iq.xml.find(f"{{{NS}}}{wrapper}")
    assert el is not None, str(iq)
    return [s.attrib for s in el.findall(f"{{{NS}}}service")]


def check_turn_rest(svc, user, ttl):
    expiry, name = svc["username"].split(":", 1)
    assert name == user, svc
    now = time.time()
    assert now + ttl - 30 <= int(expiry) <= now + ttl + 30, (svc, now)
    want = base64.b64encode(hmac.new(TURN_SECRET.encode(), svc["username"].encode(),
                                     hashlib.sha1).digest()).decode()
    assert svc["password"] == want, svc
    expires = datetime.fromisoformat(svc["expires"].replace("Z", "+00:00"))
    assert abs(expires.timestamp() - int(expiry)) < 2, svc


async def test_services_with_turn_rest_credentials(server, xmpp):
    srv = server(config(ttl=600), users=USERS)
    alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
    info = await alice.x.plugin["xep_0030"].get_info(jid="localhost", local=False, timeout=15)
    assert NS in info["disco_info"]["features"]

    res = await alice.iq(alice.make_iq("get", "localhost", f"<services xmlns='{NS}'/>"))
    assert res["type"] == "result", str(res)
    got = services_of(res)
    assert [(s["type"], s["port"]) for s in got] == [
        ("stun", "3478"), ("turn", "3478"), ("turns", "5349")], got
    assert "username" not in got[0] and "restricted" not in got[0], got[0]
    for turn in got[1:]:
        assert turn["restricted"] in ("1", "true"), turn
        check_turn_rest(turn, ALICE, 600)

    # Filtered by type.
    res = await alice.iq(alice.make_iq("get", "localhost", f"<services xmlns='{NS}' type='turn'/>"))
    assert [s["type"] for s in services_of(res)] == ["turn"], str(res)

    # XEP-0215 §3.3: fresh credentials for one service.
    res = await alice.iq(alice.make_iq(
        "get", "localhost",
        f"<credentials xmlns='{NS}'><service type='turn' host='turn.example.org'/></credentials>"))
    assert res["type"] == "result", str(res)
    [cred] = services_of(res, "credentials")
    check_turn_rest(cred, ALICE, 600)

    res = await alice.iq(alice.make_iq(
        "get", "localhost",
        f"<credentials xmlns='{NS}'><service type='turn' host='nope.example.org'/></credentials>"))
    assert res["type"] == "error" and res["error"]["condition"] == "item-not-found", str(res)
