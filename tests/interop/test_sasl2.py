"""SASL2 (XEP-0388) with Bind2 (XEP-0386), inline stream management and FAST
(XEP-0484), on raw sockets: slixmpp 1.17 speaks neither SASL2 nor FAST, and
these scenarios are about the exact wire exchange anyway.

SCRAM-SHA-256 comes from wxtest.scram (checked against the RFC vectors);
HT-SHA-256-NONE is HMAC-SHA-256(token, "Initiator") with no channel binding
(draft-schmaus-kitten-sasl-ht), the server proving itself with
HMAC-SHA-256(token, "Responder") in <additional-data/>.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

import pytest

from conftest import PASSWORD
from wxtest import subjects
from wxtest.raw import NS_CLIENT, NS_STREAM, RawStream, q
from wxtest.scram import ScramClient

NS_SASL2 = "urn:xmpp:sasl:2"
NS_BIND2 = "urn:xmpp:bind:0"
NS_SM = "urn:xmpp:sm:3"
NS_FAST = "urn:xmpp:fast:0"
ALICE = "alice@localhost"
USERS = {ALICE: PASSWORD}

pytestmark = pytest.mark.skipif(subjects.subject_name() != "waxwing",
                                reason="Debian's Prosody 0.12 has no SASL2/Bind2/FAST")


@pytest.fixture
def raw_streams():
    streams = []

    def make(port, **kw):
        stream = RawStream(port, **kw)
        streams.append(stream)
        return stream

    yield make
    for stream in streams:
        stream.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ht(token: str, label: bytes) -> bytes:
    return hmac.new(token.encode(), label, hashlib.sha256).digest()


def sasl2_stream(raw_streams, srv):
    raw = raw_streams(srv.c2s_port)
    raw.open()
    features = raw.starttls()
    auth = features.find(q(NS_SASL2, "authentication"))
    assert auth is not None, f"no SASL2 <authentication/> feature:\n{raw.text()}"
    return raw, auth


def offered(auth_feature) -> list[str]:
    return [m.text for m in auth_feature.findall(q(NS_SASL2, "mechanism"))]


def scram_login_with_token(raw, agent: str, tag: str,
                           mechanism: str = "HT-SHA-256-NONE") -> tuple:
    """SCRAM-SHA-256 over SASL2 with Bind2 + inline SM + a FAST token request.
    Returns (success element, token string)."""
    scram = ScramClient("SCRAM-SHA-256", "alice", PASSWORD)
    raw.send(
        f"<authenticate xmlns='{NS_SASL2}' mechanism='SCRAM-SHA-256'>"
        f"<initial-response>{b64(scram.client_first())}</initial-response>"
        f"<user-agent id='{agent}'><software>wxtest</software><device>pytest</device></user-agent>"
        f"<bind xmlns='{NS_BIND2}'><tag>{tag}</tag><enable xmlns='{NS_SM}' resume='true'/></bind>"
        f"<request-token xmlns='{NS_FAST}' mechanism='{mechanism}'/>"
        f"</authenticate>")
    challenge = raw.expect(q(NS_SASL2, "challenge"))
    final = scram.client_final(base64.b64decode(challenge.text or ""))
    raw.send(f"<response xmlns='{NS_SASL2}'>{b64(final)}</response>")
    success = raw.expect(q(NS_SASL2, "success"))
    extra = success.find(q(NS_SASL2, "additional-data"))
    assert extra is not None, f"SCRAM server-final not in <additional-data/>:\n{raw.text()}"
    scram.verify_server_final(base64.b64decode(extra.text or ""))  # raises if the server lies
    token = success.find(q(NS_FAST, "token"))
    assert token is not None and token.get("token"), f"no FAST <token/> in <success/>:\n{raw.text()}"
    assert token.get("expiry"), f"token without expiry:\n{raw.text()}"
    # XEP-0388: no stream restart; the server sends fresh features at once.
    raw.expect(q(NS_STREAM, "features"))
    return success, token.get("token")


def assert_session_works(raw) -> None:
    raw.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = raw.expect(q(NS_CLIENT, "iq"))
    assert reply.get("type") == "result" and reply.get("id") == "p1", raw.text()


def test_sasl2_scram_bind2_inline_sm_and_fast_token(server, raw_streams):
    srv = server(users=USERS)
    raw, feature = sasl2_stream(raw_streams, srv)
    assert "SCRAM-SHA-256" in offered(feature), raw.text()
    inline = feature.find(q(NS_SASL2, "inline"))
    assert inline is not None, f"no SASL2 <inline/>:\n{raw.text()}"
    assert inline.find(q(NS_BIND2, "bind")) is not None, f"Bind2 not offered inline:\n{raw.text()}"
    assert inline.find(q(NS_FAST, "fast")) is not None, f"FAST not offered inline:\n{raw.text()}"
    fast_mechs = [m.text for m in inline.find(q(NS_FAST, "fast")).findall(q(NS_FAST, "mechanism"))]
    assert "HT-SHA-256-NONE" in fast_mechs, raw.text()

    agent = str(uuid.uuid4())
    success, _token = scram_login_with_token(raw, agent, "X")
    authzid = success.findtext(q(NS_SASL2, "authorization-identifier"))
    assert authzid and authzid.startswith(f"{ALICE}/X"), \
        f"authorization-identifier is not a full JID with the Bind2 tag: {authzid!r}\n{raw.text()}"
    bound = success.find(q(NS_BIND2, "bound"))
    assert bound is not None, f"no Bind2 <bound/>:\n{raw.text()}"
    enabled = bound.find(q(NS_SM, "enabled"))
    assert enabled is not None and enabled.get("id"), f"SM not enabled inline:\n{raw.text()}"
    assert enabled.get("resume") in ("true", "1"), raw.text()
    # Bound: no stream restart, stanzas flow at once, and SM counts them.
    assert_session_works(raw)
    raw.send(f"<r xmlns='{NS_SM}'/>")
    ack = raw.expect(q(NS_SM, "a"))
    assert ack.get("h") == "1", f"SM should have counted the one ping:\n{raw.text()}"


def test_fast_token_authenticates_with_ht_sha256_none(server, raw_streams):
    srv = server(users=USERS)
    agent = str(uuid.uuid4())
    first, _ = sasl2_stream(raw_streams, srv)
    _, token = scram_login_with_token(first, agent, "X")

    raw, feature = sasl2_stream(raw_streams, srv)
    proof = ht(token, b"Initiator")
    raw.send(
        f"<authenticate xmlns='{NS_SASL2}' mechanism='HT-SHA-256-NONE'>"
        f"<initial-response>{b64(b'alice' + bytes(1) + proof)}</initial-response>"
        f"<user-agent id='{agent}'><software>wxtest</software></user-agent>"
        f"<fast xmlns='{NS_FAST}'/>"
        f"</authenticate>")
    success = raw.expect(q(NS_SASL2, "success"))
    extra = success.findtext(q(NS_SASL2, "additional-data"))
    assert extra is not None, f"no <additional-data/> in FAST success:\n{raw.text()}"
    assert base64.b64decode(extra) == ht(token, b"Responder"), \
        f"server's Responder proof is wrong:\n{raw.text()}"
    authzid = success.findtext(q(NS_SASL2, "authorization-identifier"))
    assert authzid and authzid.split("/")[0] == ALICE, raw.text()


def test_fast_token_with_tls_exporter_binding(server, raw_streams):
    """HT-SHA-256-EXPR: the proof covers RFC 9266 tls-exporter, which the
    server derives from the TLS 1.3 exporter secret (its TLS stream has no
    exporter call of its own); the client here is OpenSSL (pyOpenSSL)."""
    srv = server(users=USERS)
    agent = str(uuid.uuid4())
    first, _ = sasl2_stream(raw_streams, srv)
    _, token = scram_login_with_token(first, agent, "X", mechanism="HT-SHA-256-EXPR")

    raw = raw_streams(srv.c2s_port)
    raw.open()
    feature = raw.starttls(engine="pyopenssl").find(q(NS_SASL2, "authentication"))
    assert feature is not None, raw.text()
    fast = feature.find(f"{q(NS_SASL2, 'inline')}/{q(NS_FAST, 'fast')}")
    assert fast is not None, raw.text()
    offered_fast = [m.text for m in fast.findall(q(NS_FAST, "mechanism"))]
    assert "HT-SHA-256-EXPR" in offered_fast, raw.text()
    binding = raw.exporter(b"EXPORTER-Channel-Binding", 32)
    raw.send(
        f"<authenticate xmlns='{NS_SASL2}' mechanism='HT-SHA-256-EXPR'>"
        f"<initial-response>{b64(b'alice' + bytes(1) + ht(token, b'Initiator' + binding))}"
        f"</initial-response>"
        f"<user-agent id='{agent}'><software>wxtest</software></user-agent>"
        f"<fast xmlns='{NS_FAST}'/>"
        f"</authenticate>")
    success = raw.expect(q(NS_SASL2, "success"))
    extra = success.findtext(q(NS_SASL2, "additional-data"))
    assert extra is not None, raw.text()
    assert base64.b64decode(extra) == ht(token, b"Responder" + binding), \
        f"server's Responder proof does not cover our tls-exporter:\n{raw.text()}"


def test_fast_rejects_wrong_proof_and_foreign_agent(server, raw_streams):
    srv = server(users=USERS)
    agent = str(uuid.uuid4())
    first, _ = sasl2_stream(raw_streams, srv)
    _, token = scram_login_with_token(first, agent, "X")

    # Right token, wrong client installation: tokens are per user-agent id.
    for ua, key in ((str(uuid.uuid4()), token), (agent, token + "x")):
        raw, _ = sasl2_stream(raw_streams, srv)
        raw.send(
            f"<authenticate xmlns='{NS_SASL2}' mechanism='HT-SHA-256-NONE'>"
            f"<initial-response>{b64(b'alice' + bytes(1) + ht(key, b'Initiator'))}</initial-response>"
            f"<user-agent id='{ua}'/><fast xmlns='{NS_FAST}'/>"
            f"</authenticate>")
        reply = raw.next()
        assert reply is not None and reply.tag == q(NS_SASL2, "failure"), \
            f"FAST accepted a bad proof (agent {ua}):\n{raw.text()}"
        assert reply.find(q("urn:ietf:params:xml:ns:xmpp-sasl", "not-authorized")) is not None, \
            raw.text()
