"""Authentication: STARTTLS and direct TLS, each SASL mechanism, failures,
resource conflicts (RFC 6120 §5, §6, §7.7.2.2; XEP-0368; RFC 7677; RFC 9266 / RFC 5929)."""

import base64
import re

import pytest

from conftest import PASSWORD
from wxtest.subjects import subject_class

ALICE = "alice@localhost"
BOB = "bob@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD}


def only_on_capable(capable: bool, why: str) -> None:
    """Prosody (scenario validation) lacks some mechanisms; waxwing has all of them."""
    if not capable:
        pytest.skip(f"{subject_class().name}: {why}")


def sent_auth_payloads(client) -> list[bytes]:
    """Decoded initial responses of the <auth/> elements the client sent."""
    out = []
    for _t, who, chunk in client.wire:
        if who == "C":
            for m in re.finditer(r"<auth [^>]*>([^<]*)</auth>", chunk):
                out.append(base64.b64decode(m.group(1)))
    return out


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
async def test_starttls_then_sasl_login(server, xmpp, mech):
    if mech == "SCRAM-SHA-256":
        only_on_capable(subject_class().scram_sha256, "no SCRAM-SHA-256 with internal_hashed")
    srv = server(users=USERS)
    alice = await xmpp.login(srv, f"{ALICE}/laptop", PASSWORD, mech=mech)
    assert alice.encrypted, "session is not TLS-protected"
    assert "starttls" in alice.features[0], f"first features lacked <starttls/>: {alice.features[0]}"
    assert alice.sasl_mechanism == mech
    assert str(alice.jid) == f"{ALICE}/laptop"


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"])
async def test_scram_plus_with_tls_server_end_point(server, xmpp, mech):
    only_on_capable("tls-server-end-point" in subject_class().channel_bindings,
                    "no tls-server-end-point channel binding")
    srv = server(users=USERS)
    alice = await xmpp.login(srv, ALICE, PASSWORD, mechs=[mech],
                             channel_binding="tls-server-end-point")
    assert alice.sasl_mechanism == mech
    gs2 = [p.split(b",", 1)[0] for p in sent_auth_payloads(alice)]
    assert gs2 == [b"p=tls-server-end-point"], gs2


async def test_scram_plus_with_wrong_binding_data_is_refused(server, xmpp):
    only_on_capable("tls-server-end-point" in subject_class().channel_bindings,
                    "no tls-server-end-point channel binding")
    srv = server(users=USERS)
    alice = xmpp.new(srv, ALICE, PASSWORD, mechs=["SCRAM-SHA-256-PLUS"], channel_binding="bogus")
    outcome = await alice.connect()
    assert outcome in ("failed_auth", "failed_all_auth"), outcome


async def test_stock_slixmpp_picks_strongest_mechanism_it_can_do(server, xmpp):
    """Stock slixmpp cannot do -PLUS on TLS 1.3 (no tls-exporter in Python's ssl),
    so it must land on the best plain SCRAM, never on PLAIN."""
    srv = server(users=USERS)
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    expected = "SCRAM-SHA-256" if subject_class().scram_sha256 else "SCRAM-SHA-1"
    assert alice.sasl_mechanism == expected


async def test_direct_tls_login(server, xmpp):
    srv = server(users=USERS)
    alice = await xmpp.login(srv, f"{ALICE}/phone", PASSWORD, tls="direct")
    assert alice.encrypted
    assert not any("starttls" in f for f in alice.features), \
        "STARTTLS offered on a stream that is already TLS"
    assert str(alice.jid) == f"{ALICE}/phone"


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
async def test_wrong_password_fails(server, xmpp, mech):
    if mech == "SCRAM-SHA-256":
        only_on_capable(subject_class().scram_sha256, "no SCRAM-SHA-256 with internal_hashed")
    srv = server(users=USERS)
    alice = xmpp.new(srv, ALICE, "not-the-password", mech=mech)
    sessions = []
    alice.x.add_event_handler("session_start", sessions.append)
    outcome = await alice.connect()
    assert outcome == "failed_auth", outcome
    assert sessions == []
    failures = [c for _t, who, c in alice.wire if who == "S" and "<failure" in c]
    assert failures and "not-authorized" in failures[0], failures


async def test_unknown_user_fails(server, xmpp):
    srv = server(users=USERS)
    ghost = xmpp.new(srv, "ghost@localhost", PASSWORD, mech="SCRAM-SHA-1")
    assert await ghost.connect() == "failed_auth"


async def test_resource_conflict_kicks_the_older_session(server, xmpp):
    """RFC 6120 §7.7.2.2: binding an existing full JID; waxwing (like Prosody's
    default) terminates the old session with <conflict/>."""
    srv = server(users=USERS)
    first = await xmpp.login(srv, f"{ALICE}/desk", PASSWORD)
    await first.online()
    second = await xmpp.login(srv, f"{ALICE}/desk", PASSWORD)
    err = await first.stream_errors.expect(desc="(conflict)")
    assert err["condition"] == "conflict", str(err)
    await first.wait_disconnected()
    assert str(second.jid) == f"{ALICE}/desk"
    # The new session is fully usable: it receives a message to the full JID.
    bob = await xmpp.login(srv, BOB, PASSWORD)
    bob.send_message(f"{ALICE}/desk", "still there?")
    await second.expect_message(body="still there?", sender=BOB)
