"""`/metrics` on the HTTP listener, read by the Prometheus project's own
OpenMetrics parser, with the numbers moving as slixmpp clients log in,
chat and join a room (issue 19, "Metrics")."""

import re
import urllib.error
import xml.etree.ElementTree as ET
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import PASSWORD
from wxtest.subjects import REPO_ROOT, subject_class

pytestmark = pytest.mark.skipif(subject_class().name != "waxwing",
                                reason="waxwing's own metrics")

ALICE = "alice@localhost"
BOB = "bob@localhost"
ROOM = "lobby@conference.localhost"
HTTP = {"listen": {"http": ["127.0.0.1:0"]}}


def metrics_url(srv) -> str:
    return f"http://{srv.listeners['http'][0]}/metrics"


def scrape(srv) -> dict:
    """{(sample name, frozenset of labels): value}, parsed strictly."""
    with urllib.request.urlopen(metrics_url(srv), timeout=10) as resp:
        assert resp.status == 200
        ctype = resp.headers["Content-Type"]
        assert ctype.startswith("application/openmetrics-text"), ctype
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_counters_move_as_clients_log_in_and_chat(server, xmpp):
    srv = server(HTTP, users={ALICE: PASSWORD, BOB: PASSWORD})
    before = scrape(srv)
    assert value(before, "waxwing_uptime_seconds") > 0
    build = [k for k in before if k[0] == "waxwing_build_info"]
    assert build and dict(build[0][1]).get("version"), build

    wrong = xmpp.new(srv, ALICE, "not-the-password", mech="SCRAM-SHA-256")
    assert await wrong.connect() == "failed_auth"
    alice = await xmpp.login(srv, ALICE, PASSWORD, mech="SCRAM-SHA-256")
    bob = await xmpp.login(srv, BOB, PASSWORD, mech="SCRAM-SHA-256")
    await alice.online()
    await bob.online()
    for i in range(3):
        alice.send_message(BOB, f"hello {i}")
    for i in range(3):
        await bob.expect_message(body=f"hello {i}", sender=ALICE)

    # A room with one occupant.
    join = alice.x.make_presence(pto=f"{ROOM}/alice")
    join.append(ET.Element("{http://jabber.org/protocol/muc}x"))
    join.send()
    await alice.expect_presence(sender=f"{ROOM}/alice")

    after = scrape(srv)
    auth = "waxwing_auth_total"
    assert value(after, auth, mechanism="SCRAM-SHA-256", result="success") \
        - value(before, auth, mechanism="SCRAM-SHA-256", result="success") == 2
    assert value(after, auth, mechanism="SCRAM-SHA-256", result="failure") \
        - value(before, auth, mechanism="SCRAM-SHA-256", result="failure") == 1
    sin = "waxwing_stanzas_in_total"
    sout = "waxwing_stanzas_out_total"
    assert value(after, sin, kind="message", peer="c2s") \
        - value(before, sin, kind="message", peer="c2s") >= 3
    assert value(after, sout, kind="message", peer="c2s") \
        - value(before, sout, kind="message", peer="c2s") >= 3
    assert value(after, sin, kind="presence", peer="c2s") >= 3  # 2 initial + 1 join
    assert value(after, "waxwing_sessions", transport="tcp", state="active") == 2
    assert value(after, "waxwing_connections", listener="c2s") >= 2
    assert value(after, "waxwing_muc_rooms", domain="conference.localhost") == 1
    assert value(after, "waxwing_muc_occupants", domain="conference.localhost") == 1
    # Three logins, two accounts: each account's first reads its secrets,
    # roster and avatar hash in one go (op login_reads, SQLite's batched
    # read); alice's second one finds them in the account cache
    # ([storage] cache_accounts), not in the store.
    assert value(after, "waxwing_storage_seconds_count", store="accounts", op="login_reads") >= 2
    assert value(after, "waxwing_storage_seconds_sum", store="accounts", op="login_reads") > 0
    # Every metric the Grafana dashboard plots exists.
    dashboard = (REPO_ROOT / "contrib" / "grafana" / "waxwing.json").read_text()
    names = {k[0] for k in after}
    for used in set(re.findall(r"waxwing_[a-z0-9_]+", dashboard)):
        assert used in names, f"dashboard uses {used}, which /metrics does not have"
    assert value(after, "waxwing_queue_overflows_total") == 0

    await bob.close()
    await bob.wait_disconnected()
    # The session count follows: poll the endpoint (no event to await).
    for _ in range(100):
        if value(scrape(srv), "waxwing_sessions", transport="tcp", state="active") == 1:
            break
        await alice.sync()
    assert value(scrape(srv), "waxwing_sessions", transport="tcp", state="active") == 1


def test_metrics_can_be_switched_off(server):
    srv = server({**HTTP, "metrics": {"enabled": False}})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(metrics_url(srv), timeout=10)
    assert e.value.code == 404
