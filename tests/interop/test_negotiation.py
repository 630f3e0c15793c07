"""Stream negotiation transcripts over raw sockets (RFC 6120 §4–§7, §11):
no XMPP library between the test and the wire."""

import pytest

from conftest import PASSWORD
from wxtest.raw import (NS_BIND, NS_SASL, NS_SESSION, NS_STREAM, NS_TLS, RawStream,
                        StreamEnded, mechanisms, q, stream_error_condition, stream_header)
from wxtest.scram import ScramClient, tls_server_end_point
from wxtest.subjects import subject_class

ALICE = "alice@localhost"
USERS = {ALICE: PASSWORD}


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


def expected_mechanisms():
    subject = subject_class()
    mechs = {"SCRAM-SHA-1", "PLAIN"}
    if subject.scram_sha256:
        mechs.add("SCRAM-SHA-256")
    if subject.channel_bindings:
        mechs |= {"SCRAM-SHA-1-PLUS"} | ({"SCRAM-SHA-256-PLUS"} if subject.scram_sha256 else set())
    return mechs


def assert_stream_error_then_close(raw, condition):
    el = raw.next()
    assert stream_error_condition(el) == condition, \
        f"expected <{condition}/> stream error, got:\n{raw.text()}"
    # RFC 6120 §4.9.1.1: the error is followed by </stream:stream> and TCP close.
    try:
        closing = raw.next()
        assert closing is None, f"stanza after a stream error:\n{raw.text()}"
    except StreamEnded:
        pass  # closed without </stream:stream>: tolerated, the TCP close is what matters
    assert raw.wait_closed(), f"connection still open after the stream error:\n{raw.text()}"


def test_features_before_tls_require_starttls_and_hide_plain(server, raw_streams):
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    features = raw.open()
    header = raw.header
    assert header.tag == q(NS_STREAM, "stream"), raw.text()
    assert header.get("from") == srv.domain, raw.text()
    assert header.get("version") == "1.0", raw.text()
    assert header.get("id"), f"stream header without id:\n{raw.text()}"
    starttls = features.find(q(NS_TLS, "starttls"))
    assert starttls is not None, f"no <starttls/>:\n{raw.text()}"
    assert starttls.find(q(NS_TLS, "required")) is not None, f"<starttls/> not <required/>:\n{raw.text()}"
    assert "PLAIN" not in mechanisms(features), f"PLAIN offered in cleartext:\n{raw.text()}"


def test_auth_before_tls_is_refused(server, raw_streams):
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.open()
    raw.auth("PLAIN", f"\0alice\0{PASSWORD}".encode())
    try:
        reply = raw.next()
    except StreamEnded:
        reply = None
    assert reply is None or reply.tag != q(NS_SASL, "success"), \
        f"authenticated over cleartext:\n{raw.text()}"


def test_starttls_then_sasl_mechanisms(server, raw_streams):
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.open()
    features = raw.starttls()
    assert features.find(q(NS_TLS, "starttls")) is None, f"STARTTLS offered twice:\n{raw.text()}"
    offered = set(mechanisms(features))
    missing = expected_mechanisms() - offered
    assert not missing, f"mechanisms {sorted(missing)} not offered after TLS:\n{raw.text()}"


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_auth_then_bind(server, raw_streams, mech):
    if mech == "SCRAM-SHA-256" and not subject_class().scram_sha256:
        pytest.skip(f"{subject_class().name}: no SCRAM-SHA-256")
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.open()
    raw.starttls()
    result = raw.sasl_scram(ScramClient(mech, "alice", PASSWORD))
    assert result is not None and result.tag == q(NS_SASL, "success"), raw.text()
    features = raw.restart()
    bind = features.find(q(NS_BIND, "bind"))
    assert bind is not None, f"no <bind/> after SASL:\n{raw.text()}"
    assert features.find(q(NS_SASL, "mechanisms")) is None, f"SASL offered again:\n{raw.text()}"
    session = features.find(q(NS_SESSION, "session"))
    if session is not None:
        assert session.find(q(NS_SESSION, "optional")) is not None, \
            f"RFC 6121 says session establishment is <optional/>:\n{raw.text()}"
    reply = raw.bind("raw")
    assert reply.get("type") == "result" and reply.get("id") == "bind_1", raw.text()
    assert reply.findtext(f"{q(NS_BIND, 'bind')}/{q(NS_BIND, 'jid')}") == f"{ALICE}/raw", raw.text()


def test_bind_without_resource_gets_a_generated_one(server, raw_streams):
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.open()
    raw.starttls()
    assert raw.sasl_plain("alice", PASSWORD).tag == q(NS_SASL, "success"), raw.text()
    raw.restart()
    reply = raw.bind(None)
    jid = reply.findtext(f"{q(NS_BIND, 'bind')}/{q(NS_BIND, 'jid')}") or ""
    assert reply.get("type") == "result" and jid.startswith(f"{ALICE}/") and len(jid) > len(ALICE) + 1, \
        raw.text()


def test_wrong_password_is_not_authorized(server, raw_streams):
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.open()
    raw.starttls()
    reply = raw.sasl_scram(ScramClient("SCRAM-SHA-1", "alice", "wrong-password"))
    assert reply is not None and reply.tag == q(NS_SASL, "failure"), raw.text()
    assert reply.find(q(NS_SASL, "not-authorized")) is not None, raw.text()


def test_too_many_auth_failures_close_the_stream(server, raw_streams):
    """`[auth] max_failures_per_stream = 2`: two failures, then <policy-violation/>.
    The third attempt carries the right password: it must not get through."""
    if subject_class().name != "waxwing":
        pytest.skip("waxwing-specific limit")
    srv = server({"auth": {"max_failures_per_stream": 2}}, users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.open()
    raw.starttls()
    outcomes = []
    for attempt in range(3):
        password = PASSWORD if attempt == 2 else "wrong-password"
        try:
            raw.auth("PLAIN", f"\0alice\0{password}".encode())
        except OSError:
            pass  # the server may already have closed the connection
        try:
            el = raw.next()
        except StreamEnded:
            outcomes.append("eof")
            break
        if el is not None and el.tag == q(NS_SASL, "failure"):
            outcomes.append("failure")
            continue
        outcomes.append("success" if el is not None and el.tag == q(NS_SASL, "success")
                        else stream_error_condition(el) or "</stream:stream>")
        break
    assert outcomes == ["failure", "failure", "policy-violation"], f"{outcomes}\n{raw.text()}"
    assert raw.wait_closed(), raw.text()


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"])
def test_scram_plus_tls_server_end_point(server, raw_streams, mech):
    if "tls-server-end-point" not in subject_class().channel_bindings:
        pytest.skip(f"{subject_class().name}: no tls-server-end-point")
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.open()
    raw.starttls()
    cb = tls_server_end_point(raw.peer_cert_der())
    reply = raw.sasl_scram(ScramClient(mech, "alice", PASSWORD,
                                       cb_type="tls-server-end-point", cb_data=cb))
    assert reply is not None and reply.tag == q(NS_SASL, "success"), raw.text()


@pytest.mark.parametrize("engine_mech", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"])
def test_scram_plus_tls_exporter(server, raw_streams, engine_mech):
    """RFC 9266 tls-exporter (TLS 1.3), computed with pyOpenSSL."""
    if "tls-exporter" not in subject_class().channel_bindings:
        pytest.skip(f"{subject_class().name}: no tls-exporter")
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.open()
    raw.starttls(engine="pyopenssl")
    cb = raw.exporter(b"EXPORTER-Channel-Binding", 32)
    reply = raw.sasl_scram(ScramClient(engine_mech, "alice", PASSWORD,
                                       cb_type="tls-exporter", cb_data=cb))
    assert reply is not None and reply.tag == q(NS_SASL, "success"), raw.text()


def test_scram_plus_with_wrong_binding_fails(server, raw_streams):
    if "tls-exporter" not in subject_class().channel_bindings:
        pytest.skip(f"{subject_class().name}: no tls-exporter")
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.open()
    raw.starttls(engine="pyopenssl")
    wrong = bytes(32)
    reply = raw.sasl_scram(ScramClient("SCRAM-SHA-256-PLUS", "alice", PASSWORD,
                                       cb_type="tls-exporter", cb_data=wrong))
    assert reply is not None and reply.tag == q(NS_SASL, "failure"), raw.text()


def test_gs2_y_flag_when_plus_offered_is_refused(server, raw_streams):
    """RFC 5802 §6: a client saying 'y' (thinks the server lacks channel
    binding) while the server offers -PLUS is a downgrade; must fail."""
    if not subject_class().channel_bindings:
        pytest.skip(f"{subject_class().name}: offers no -PLUS")
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.open()
    raw.starttls()
    client = ScramClient("SCRAM-SHA-1", "alice", PASSWORD)
    client.gs2_header = "y,,"
    reply = raw.sasl_scram(client)
    assert reply is not None and reply.tag == q(NS_SASL, "failure"), raw.text()


def test_direct_tls_offers_sasl_immediately(server, raw_streams):
    srv = server(users=USERS)
    raw = raw_streams(srv.tls_port, direct_tls=True)
    features = raw.open()
    assert features.find(q(NS_TLS, "starttls")) is None, raw.text()
    assert expected_mechanisms() <= set(mechanisms(features)), raw.text()
    assert raw.sasl_plain("alice", PASSWORD).tag == q(NS_SASL, "success"), raw.text()


# -- restricted XML and unauthenticated stanzas (RFC 6120 §11.1, §4.9.3) --------

def test_dtd_with_entity_is_restricted_xml(server, raw_streams):
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.send("<?xml version='1.0'?>"
             "<!DOCTYPE stream:stream [<!ENTITY boom 'kaboom'>]>"
             + stream_header(srv.domain).removeprefix("<?xml version='1.0'?>"))
    raw.read_header()
    assert_stream_error_then_close(raw, subject_class().restricted_xml_error)


@pytest.mark.parametrize("payload", ["<!-- a comment -->", "<?pi some data?>"],
                         ids=["comment", "processing-instruction"])
def test_comment_or_pi_in_stream_is_restricted_xml(server, raw_streams, payload):
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.open()
    raw.send(payload)
    assert_stream_error_then_close(raw, subject_class().restricted_xml_error)


@pytest.mark.parametrize("stanza", [
    "<message to='alice@localhost' type='chat'><body>hi</body></message>",
    "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>",
    "<presence/>",
], ids=["message", "iq", "presence"])
def test_stanza_before_auth_is_not_authorized(server, raw_streams, stanza):
    if not subject_class().not_authorized_before_auth:
        pytest.skip(f"{subject_class().name} answers with stanza errors instead")
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.open()
    raw.starttls()
    raw.send(stanza)
    assert_stream_error_then_close(raw, "not-authorized")


def test_unknown_host_is_host_unknown(server, raw_streams):
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.send_header("no-such-host.example")
    raw.read_header()
    assert_stream_error_then_close(raw, "host-unknown")


def test_wrong_stream_namespace_is_invalid_namespace(server, raw_streams):
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.send("<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
             "xmlns='jabber:client' xmlns:stream='urn:example:not-streams'>")
    closed = raw.wait_closed()
    from_server = "".join(c for who, c in raw.transcript if who == "S")
    assert "invalid-namespace" in from_server, raw.text()
    assert closed, raw.text()


def test_not_well_formed_xml_closes_the_stream(server, raw_streams):
    srv = server(users=USERS)
    raw = raw_streams(srv.c2s_port)
    raw.open()
    raw.starttls()
    assert raw.sasl_plain("alice", PASSWORD).tag == q(NS_SASL, "success"), raw.text()
    raw.restart()
    raw.bind("raw")
    raw.send("<message to='alice@localhost'><body>unclosed</message>")
    assert_stream_error_then_close(raw, "not-well-formed")
