"""Legacy DIGEST-MD5 (RFC 2831, historic per RFC 6331; issue 20): off by
default, offered only on a host with `legacy_digest_md5 = true`, and only
usable by accounts whose password was set while that was on (the separate
HA1 secret). Driven by slixmpp's own DIGEST-MD5 implementation, and by a raw
stream for what a library would hide (replayed responses)."""

from __future__ import annotations

import base64
import hashlib
import re
import xml.etree.ElementTree as ET

import pytest

from conftest import PASSWORD
from wxtest.raw import NS_SASL, RawStream, mechanisms, q
from wxtest.subjects import subject_name

pytestmark = pytest.mark.skipif(subject_name() != "waxwing", reason="waxwing configuration")

ALICE = "alice@localhost"
ENABLED = {"auth": {"hosts": {"localhost": {"legacy_digest_md5": True}}}}


def features(srv) -> ET.Element:
    raw = RawStream(srv.c2s_port)
    try:
        raw.open()
        return raw.starttls()
    finally:
        raw.close()


def digest_response(challenge: bytes, user: str, password: str, uri: str = "xmpp/localhost",
                    cnonce: str = "0a4f113b") -> bytes:
    """A textbook RFC 2831 client response (qop=auth, md5-sess)."""
    fields = dict(re.findall(r'(\w[\w-]*)="?([^",]*)"?', challenge.decode()))
    realm, nonce = fields["realm"], fields["nonce"]
    md5 = lambda b: hashlib.md5(b).digest()  # noqa: E731
    hexmd5 = lambda b: hashlib.md5(b).hexdigest()  # noqa: E731
    a1 = md5(f"{user}:{realm}:{password}".encode()) + f":{nonce}:{cnonce}".encode()
    a2 = f"AUTHENTICATE:{uri}".encode()
    resp = hexmd5(f"{hexmd5(a1)}:{nonce}:00000001:{cnonce}:auth:{hexmd5(a2)}".encode())
    return (f'username="{user}",realm="{realm}",nonce="{nonce}",cnonce="{cnonce}",nc=00000001,'
            f'qop=auth,digest-uri="{uri}",response={resp},charset=utf-8').encode()


def raw_digest(srv, user: str, password: str, **kw) -> tuple[RawStream, ET.Element, bytes]:
    """Runs the exchange on a raw stream; returns the stream, the last
    element and the response sent (for replaying it)."""
    raw = RawStream(srv.c2s_port)
    raw.open()
    raw.starttls()
    raw.auth("DIGEST-MD5", None)
    challenge = raw.expect(q(NS_SASL, "challenge"))
    response = digest_response(base64.b64decode(challenge.text or ""), user, password, **kw)
    raw.send(f"<response xmlns='{NS_SASL}'>{base64.b64encode(response).decode()}</response>")
    el = raw.next()
    if el is not None and el.tag == q(NS_SASL, "challenge"):
        assert base64.b64decode(el.text or "").startswith(b"rspauth="), raw.text()
        raw.send(f"<response xmlns='{NS_SASL}'/>")
        el = raw.next()
    return raw, el, response


def condition(el: ET.Element) -> str:
    return [c.tag.split("}")[1] for c in el][0]


async def test_digest_md5_is_refused_by_default(server, xmpp):
    srv = server(users={ALICE: PASSWORD})
    assert "DIGEST-MD5" not in mechanisms(features(srv))
    raw = RawStream(srv.c2s_port)
    raw.open()
    raw.starttls()
    raw.auth("DIGEST-MD5", None)
    failure = raw.expect(q(NS_SASL, "failure"))
    assert condition(failure) == "invalid-mechanism", raw.text()
    raw.close()
    refused = xmpp.new(srv, ALICE, PASSWORD, mech="DIGEST-MD5")
    assert await refused.connect() in ("failed_auth", "failed_all_auth", "disconnected")
    assert "<success" not in refused.wire_text()


async def test_digest_md5_works_when_enabled_and_refuses_a_wrong_password(server, xmpp):
    srv = server(ENABLED, users={ALICE: PASSWORD})
    offered = mechanisms(features(srv))
    assert offered[-1] == "DIGEST-MD5" and "SCRAM-SHA-256" in offered, offered
    alice = await xmpp.login(srv, f"{ALICE}/legacy", PASSWORD, mech="DIGEST-MD5")
    assert alice.sasl_mechanism == "DIGEST-MD5"
    await alice.online()
    wrong = xmpp.new(srv, ALICE, "not-the-password", mech="DIGEST-MD5")
    assert await wrong.connect() in ("failed_auth", "failed_all_auth")
    assert "not-authorized" in wrong.wire_text()
    # The other mechanisms are unaffected.
    await xmpp.login(srv, f"{ALICE}/scram", PASSWORD, mech="SCRAM-SHA-256")


def test_digest_md5_responses_cannot_be_replayed_or_aimed_elsewhere(server):
    srv = server(ENABLED, users={ALICE: PASSWORD})
    raw, result, response = raw_digest(srv, "alice", PASSWORD)
    assert result.tag == q(NS_SASL, "success"), raw.text()
    raw.close()
    # The same response on a new stream answers a nonce that is gone.
    raw = RawStream(srv.c2s_port)
    raw.open()
    raw.starttls()
    raw.auth("DIGEST-MD5", None)
    raw.expect(q(NS_SASL, "challenge"))
    raw.send(f"<response xmlns='{NS_SASL}'>{base64.b64encode(response).decode()}</response>")
    failure = raw.expect(q(NS_SASL, "failure"))
    assert condition(failure) == "not-authorized", raw.text()
    raw.close()
    # A response computed for another server's digest-uri.
    raw, result, _ = raw_digest(srv, "alice", PASSWORD, uri="xmpp/elsewhere.example")
    assert result.tag == q(NS_SASL, "failure") and condition(result) == "not-authorized", raw.text()
    raw.close()


async def test_account_without_the_digest_secret_is_refused_until_its_password_is_set(server, xmpp):
    # The password was set while the option was off: no HA1 was kept.
    srv = server(users={ALICE: PASSWORD})
    srv.stop()
    srv.config["auth"] = ENABLED["auth"]
    srv.start()
    raw, result, _ = raw_digest(srv, "alice", PASSWORD)
    assert result.tag == q(NS_SASL, "failure") and condition(result) == "not-authorized", raw.text()
    raw.close()
    assert "DIGEST-MD5: the account has no digest secret" in srv.log_text()
    # Setting the password (here in-band) while the option is on makes it.
    alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD, mech="SCRAM-SHA-256")
    iq = alice.make_iq("set", to="localhost", payload=(
        "<query xmlns='jabber:iq:register'><username>alice</username>"
        "<password>a-new-password</password></query>"))
    res = await alice.iq(iq)
    assert res["type"] == "result", str(res)
    raw, result, _ = raw_digest(srv, "alice", "a-new-password")
    assert result.tag == q(NS_SASL, "success"), raw.text()
    raw.close()
