"""The built-in STUN/TURN server (`[turn]`), driven by coturn's own test
clients: a slixmpp client gets TURN credentials over XEP-0215, then
`turnutils_uclient` allocates, creates permissions, binds channels and
relays data through it to a `turnutils_peer` echo peer, over UDP and TCP.
Expired and forged credentials, a peer on loopback (refused by default)
and the per-user allocation quota are checked against the same clients.
`turnutils_stunclient` checks plain STUN Binding."""

import asyncio
import base64
import hashlib
import hmac
import re
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import PASSWORD
from wxtest import STEP_TIMEOUT

pytestmark = pytest.mark.allowed_skip(reason="the TURN server is a waxwing configuration")

ALICE = "alice@localhost"
USERS = {ALICE: PASSWORD}
NS = "urn:xmpp:extdisco:2"
SECRET = "turn-shared-secret-0123456789"


def config(**turn):
    return {
        "turn": {
            "enabled": True,
            "listen_udp": ["127.0.0.1:0"],
            "listen_tcp": ["127.0.0.1:0"],
            "secret": SECRET,
            **turn,
        },
        "external_services": {"credential_ttl_secs": 600},
    }


# The peer is on loopback: only allowed when listed (what an operator
# would do for a media server on the same machine).
LOOPBACK_PEER = {"allowed_peers": ["127.0.0.1"]}


def tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the Debian package coturn "
                    "(scripts/packages/turn.list)", pytrace=False)
    return path


def port(srv, kind):
    return int(srv.listeners[kind][0].rsplit(":", 1)[1])


def udp_port_taken(p):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            return True
        return False


class Peer:
    """`turnutils_peer`: a UDP echo server on a loopback port."""

    def __init__(self):
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            self.proc = subprocess.Popen(
                [tool("turnutils_peer"), "-L", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + STEP_TIMEOUT
            while self.proc.poll() is None and time.monotonic() < deadline:
                if udp_port_taken(self.port):
                    return
                time.sleep(0.02)
            self.stop()
        pytest.fail("turnutils_peer did not start", pytrace=False)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def peer():
    p = Peer()
    yield p
    p.stop()


async def uclient(srv, user, password, peer_port, *flags, messages=20, tcp=False):
    """Runs turnutils_uclient against the server; (exit code, output)."""
    listener = "turn_tcp" if tcp else "turn_udp"
    argv = [tool("turnutils_uclient"), "-u", user, "-w", password,
            "-p", str(port(srv, listener)), "-e", "127.0.0.1", "-r", str(peer_port),
            "-n", str(messages), "-l", "120", "-z", "5", *flags]
    if tcp:
        argv.append("-t")
    argv.append("127.0.0.1")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 4 * STEP_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail(f"turnutils_uclient hung:\n{out.decode(errors='replace')}")
    return proc.returncode, out.decode(errors="replace")


def stats(out):
    """(sent, received, lost) of a uclient run, from its summary lines."""
    # The final summary, not the per-interval "msz=" lines.
    total = re.search(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", out)
    lost = re.search(r"Total lost packets (\d+)", out)
    assert total and lost, out
    return int(total[1]), int(total[2]), int(lost[1])


async def credentials(xmpp, srv):
    """TURN services and credentials as a client gets them (XEP-0215)."""
    alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
    res = await alice.iq(alice.make_iq("get", "localhost", f"<services xmlns='{NS}'/>"))
    assert res["type"] == "result", str(res)
    el = res.xml.find(f"{{{NS}}}services")
    return [s.attrib for s in el.findall(f"{{{NS}}}service")]


def rest_credentials(expiry, user=ALICE, secret=SECRET):
    username = f"{expiry}:{user}"
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(mac).decode()


def metric(srv, name, **labels):
    with urllib.request.urlopen(f"http://{srv.listeners['http'][0]}/metrics", timeout=10) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pat = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    m = re.search("^" + pat + "$", text, re.M)
    assert m, f"{name} {labels} not in /metrics:\n{text}"
    return float(m[1])


async def test_extdisco_credentials_relay_data_over_udp_and_tcp(server, xmpp, peer):
    srv = server(config(**LOOPBACK_PEER), users=USERS)
    services = await credentials(xmpp, srv)
    got = {(s["type"], s.get("transport"), s["host"], int(s["port"])) for s in services}
    assert got == {
        ("stun", "udp", "127.0.0.1", port(srv, "turn_udp")),
        ("turn", "udp", "127.0.0.1", port(srv, "turn_udp")),
        ("turn", "tcp", "127.0.0.1", port(srv, "turn_tcp")),
    }, services
    turn_udp = next(s for s in services if s["type"] == "turn" and s["transport"] == "udp")
    turn_tcp = next(s for s in services if s["type"] == "turn" and s["transport"] == "tcp")
    assert turn_udp["username"].endswith(f":{ALICE}"), turn_udp

    # Channels (ChannelBind + ChannelData) over UDP, without RTCP (-c).
    code, out = await uclient(srv, turn_udp["username"], turn_udp["password"], peer.port, "-c")
    assert code == 0, out
    sent, received, lost = stats(out)
    assert sent == 20 and received == sent and lost == 0, out

    # Send/Data indications (-s) over UDP.
    code, out = await uclient(srv, turn_udp["username"], turn_udp["password"], peer.port,
                              "-c", "-s")
    assert code == 0, out
    sent, received, lost = stats(out)
    assert sent == 20 and received == sent and lost == 0, out

    # Channels over TCP.
    code, out = await uclient(srv, turn_tcp["username"], turn_tcp["password"], peer.port,
                              "-c", tcp=True)
    assert code == 0, out
    sent, received, lost = stats(out)
    assert sent == 20 and received == sent and lost == 0, out

    # Every relayed message went to the peer and back.
    assert metric(srv, "waxwing_turn_relayed_bytes_total", direction="to_peer") >= 60 * 120
    assert metric(srv, "waxwing_turn_relayed_bytes_total", direction="from_peer") >= 60 * 120


async def test_stun_binding_reflects_the_client_address(server):
    srv = server(config())
    proc = await asyncio.create_subprocess_exec(
        tool("turnutils_stunclient"), "-p", str(port(srv, "turn_udp")), "127.0.0.1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), STEP_TIMEOUT)
    out = out.decode(errors="replace")
    assert proc.returncode == 0, out
    assert re.search(r"UDP reflexive addr: 127\.0\.0\.1:\d+", out), out


async def test_expired_and_forged_credentials_are_refused(server, peer):
    srv = server(config(**LOOPBACK_PEER))
    now = int(time.time())
    # Signed with the right secret, but expired a minute ago.
    user, password = rest_credentials(now - 60)
    code, out = await uclient(srv, user, password, peer.port, "-c", messages=3)
    assert code != 0 and "tot_recv_msgs" not in out, out
    # Not expired, but signed with another secret.
    user, password = rest_credentials(now + 600, secret="not-the-servers-secret")
    code, out = await uclient(srv, user, password, peer.port, "-c", messages=3)
    assert code != 0 and "tot_recv_msgs" not in out, out
    # The same request with genuine credentials goes through.
    user, password = rest_credentials(now + 600)
    code, out = await uclient(srv, user, password, peer.port, "-c", messages=3)
    assert code == 0 and stats(out)[1] == 3, out
    assert metric(srv, "waxwing_turn_relayed_bytes_total", direction="to_peer") == 3 * 120


async def test_relay_to_loopback_is_refused_by_default(server, peer):
    srv = server(config())
    user, password = rest_credentials(int(time.time()) + 600)
    for tcp in (False, True):
        code, out = await uclient(srv, user, password, peer.port, "-c", messages=3, tcp=tcp)
        assert code != 0, out
        assert "403" in out or "Forbidden" in out, out
    assert metric(srv, "waxwing_turn_refused_requests_total", reason="peer_refused") >= 2
    assert metric(srv, "waxwing_turn_relayed_bytes_total", direction="to_peer") == 0


async def test_the_per_user_allocation_quota(server, peer):
    srv = server(config(max_allocations_per_user=2, **LOOPBACK_PEER))
    user, password = rest_credentials(int(time.time()) + 600)
    # Each uclient session allocates an RTP/RTCP pair (EVEN-PORT and a
    # reservation): two sessions (-m 2) need four allocations.
    code, out = await uclient(srv, user, password, peer.port, "-m", "2", messages=3)
    assert code != 0, out
    assert "486" in out or "Quota" in out, out
    assert metric(srv, "waxwing_turn_refused_requests_total", reason="quota") >= 1
    # Another user is not affected.
    other, other_password = rest_credentials(int(time.time()) + 600, user="bob@localhost")
    code, out = await uclient(srv, other, other_password, peer.port, "-c", messages=3)
    assert code == 0 and stats(out)[1] == 3, out


async def test_bandwidth_limit_drops_what_exceeds_it(server, peer):
    rate = 8192
    srv = server(config(allocation_bandwidth_bytes_per_sec=rate,
                        user_bandwidth_bytes_per_sec=rate, **LOOPBACK_PEER))
    user, password = rest_credentials(int(time.time()) + 600)
    # 100 messages of 1000 bytes in about a fifth of a second, echoed: far
    # over 8 KiB/s with a burst of one second's worth.
    argv_extra = ("-c", "-l", "1000", "-z", "2")
    code, out = await uclient(srv, user, password, peer.port, *argv_extra, messages=100)
    assert code == 0, out
    sent, received, _lost = stats(out)
    assert sent == 100, out
    # Both directions share the allocation's bucket: the first few messages
    # take the burst, and what the send rate refills in the fraction of a
    # second the sending lasts; the rest (and most echoes) are dropped.
    relayed = (metric(srv, "waxwing_turn_relayed_bytes_total", direction="to_peer")
               + metric(srv, "waxwing_turn_relayed_bytes_total", direction="from_peer"))
    assert 1000 <= relayed <= 3 * rate, (relayed, out)
    assert received < 20, out
    assert metric(srv, "waxwing_turn_dropped_datagrams_total", reason="bandwidth") >= 80
