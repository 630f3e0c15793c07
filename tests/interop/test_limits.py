"""Configured limits seen from the wire (waxwing.example.toml `[limits]`)."""

import pytest

from conftest import PASSWORD
from test_negotiation import assert_stream_error_then_close
from wxtest.raw import NS_SASL, RawStream, q
from wxtest.subjects import subject_class

pytestmark = pytest.mark.skipif(subject_class().name != "waxwing",
                                reason="waxwing configuration keys")

ALICE = "alice@localhost"


def logged_in_raw(srv) -> RawStream:
    raw = RawStream(srv.c2s_port, domain=srv.domain)
    raw.open()
    raw.starttls()
    assert raw.sasl_plain("alice", PASSWORD).tag == q(NS_SASL, "success"), raw.text()
    raw.restart()
    raw.bind("raw")
    return raw


def test_oversized_stanza_is_policy_violation(server):
    srv = server({"limits": {"max_stanza_bytes": 10000}}, users={ALICE: PASSWORD})
    raw = logged_in_raw(srv)
    try:
        raw.send("<iq type='get' id='small' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        raw.send(f"<message to='{ALICE}'><body>{'x' * 30000}</body></message>")
    except OSError:
        pass  # closed while we were still writing: the error is already queued
    small = raw.next()  # a stanza under the limit is still served
    assert small is not None and small.get("id") == "small" and small.get("type") == "result", raw.text()
    assert_stream_error_then_close(raw, "policy-violation")
    raw.close()


def test_too_deep_nesting_is_policy_violation(server):
    srv = server({"limits": {"max_depth": 8}}, users={ALICE: PASSWORD})
    raw = logged_in_raw(srv)
    deep = "<a>" * 20 + "</a>" * 20
    try:
        raw.send(f"<message to='{ALICE}'><x xmlns='urn:example:deep'>{deep}</x></message>")
    except OSError:
        pass
    assert_stream_error_then_close(raw, "policy-violation")
    raw.close()


def test_unauthenticated_connection_times_out(server):
    srv = server({"limits": {"auth_timeout_secs": 1}}, users={ALICE: PASSWORD})
    raw = RawStream(srv.c2s_port, domain=srv.domain)
    raw.open()
    assert_stream_error_then_close(raw, "connection-timeout")
    raw.close()
