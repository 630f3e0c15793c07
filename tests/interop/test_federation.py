"""Federation with a real Prosody (the Debian package), both directions,
once over dialback and once over certificates from a test CA.

Setup, without touching the machine's global files:

- Waxwing serves ``WX`` and listens for s2s on ``127.0.0.X:5269`` (a loopback
  address of its own, free port 5269 there); it reaches Prosody through a
  static route (``[s2s.routes]``) to Prosody's ephemeral s2s port.
- Prosody serves ``PR`` and resolves ``WX`` through a private hosts file
  given to its resolver (libunbound's ``hoststxt``, Prosody's ``unbound``
  option). SRV lookups for the made-up names get NXDOMAIN, so Prosody falls
  back to ``WX:5269``, which the hosts file maps to ``127.0.0.X``.
- Prosody runs as the unprivileged ``prosody`` user (setpriv), from a
  private directory, and is stopped by PID.

Authentication, one run each (the ``federation`` fixture's parameter):
- "dialback": both sides use self-signed certificates, so neither can verify
  the other and both fall back to server dialback (XEP-0220) in all three
  roles; Waxwing's log is checked for it.
- "certificates": both present certificates from a throwaway test CA that
  the other trusts (Waxwing ``s2s.ca_bundle``, Prosody ``ssl.cafile``), and
  both refuse dialback (``dialback = "require-valid-certs"``,
  ``s2s_secure_auth = true``): SASL EXTERNAL (XEP-0178) in both directions.
- "dialback-bidi": as "dialback", with Prosody's mod_s2s_bidi on, so both
  sides offer and ask for XEP-0288 bidirectional streams, and Prosody's
  stream to the MUC service carries the room's stanzas back. (Without the
  module, as in the other runs, Prosody neither offers nor asks, and we fall
  back to one connection per direction.)
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from conftest import PASSWORD
from wxtest import STEP_TIMEOUT, subjects

WX = "wx.federation.test"
PR = "pr.federation.test"
MUC = f"conference.{WX}"  # Waxwing's MUC service ([muc] subdomain "conference")
PUBSUB = f"pubsub.{WX}"  # Waxwing's PubSub service; it asks remote clients for their caps

pytestmark = [
    pytest.mark.skipif(subjects.subject_name() != "waxwing",
                       reason="federation scenarios drive Waxwing against Prosody"),
    pytest.mark.skipif(shutil.which("prosody") is None or shutil.which("setpriv") is None,
                       reason="prosody (apt-get install prosody) and setpriv are needed"),
]


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _free_loopback_5269() -> str:
    """A 127.0.0.X address on which port 5269 is free (each test its own)."""
    candidates = list(range(20, 250))
    random.shuffle(candidates)
    for x in candidates:
        addr = f"127.0.0.{x}"
        with socket.socket() as s:
            try:
                s.bind((addr, 5269))
            except OSError:
                continue
            return addr
    pytest.skip("no 127.0.0.X address with port 5269 free")


class FederationCA:
    """A throwaway CA issuing end-entity certificates for WX and PR."""

    def __init__(self, dir: Path):
        def run(*argv):
            subprocess.run(argv, check=True, capture_output=True, cwd=dir)

        self.ca, ca_key = dir / "ca.pem", dir / "ca.key"
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
            "-out", str(self.ca), "-subj", "/CN=Waxwing federation test CA", "-days", "2",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self.certs: dict[str, tuple[Path, Path]] = {}
        for domain in (WX, PR):
            cert, key, csr, ext = (dir / f"{domain}.{x}" for x in ("pem", "key", "csr", "ext"))
            # Waxwing's certificate also names its MUC and PubSub services.
            names = f"DNS:{domain}" + (f",DNS:{MUC},DNS:{PUBSUB}" if domain == WX else "")
            ext.write_text(f"subjectAltName={names}\nbasicConstraints=CA:FALSE\n"
                           "keyUsage=digitalSignature,keyEncipherment\n"
                           "extendedKeyUsage=serverAuth,clientAuth\n")
            run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                "-out", str(csr), "-subj", f"/CN={domain}")
            run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca),
                "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert), "-days", "2",
                "-extfile", str(ext))
            self.certs[domain] = (cert, key)


class Prosody:
    """A Prosody serving PR, unprivileged, with its own config and data."""

    def __init__(self, hosts_file_lines: list[str], pki: "FederationCA | None" = None,
                 bidi: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="wx-prosody-"))
        self.c2s_port = _free_port()
        self.tls_port = _free_port()
        self.s2s_port = _free_port()
        self.domain = PR
        self.config_path = self.dir / "prosody.cfg.lua"
        self.log_path = self.dir / "prosody.log"
        self.proc: subprocess.Popen | None = None
        (self.dir / "data").mkdir()
        (self.dir / "certs").mkdir()
        (self.dir / "hosts").write_text("\n".join(hosts_file_lines) + "\n")
        cert, key = self.dir / "cert.pem", self.dir / "key.pem"
        if pki:
            shutil.copy(pki.certs[PR][0], cert)
            shutil.copy(pki.certs[PR][1], key)
            shutil.copy(pki.ca, self.dir / "ca.pem")
        else:
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                 "-out", str(cert), "-subj", f"/CN={PR}", "-days", "2",
                 "-addext", f"subjectAltName=DNS:{PR}"],
                check=True, capture_output=True,
            )
        cafile = f', cafile = "{self.dir}/ca.pem"' if pki else ""
        # With a shared test CA: certificates only (XEP-0178); else dialback.
        secure_auth = "true" if pki else "false"
        lines = [
            f'pidfile = "{self.dir}/prosody.pid"',
            f'data_path = "{self.dir}/data"',
            f'certificates = "{self.dir}/certs"',
            'interfaces = { "127.0.0.1" }',
            f"c2s_ports = {{ {self.c2s_port} }}",
            f"c2s_direct_tls_ports = {{ {self.tls_port} }}",
            f"s2s_ports = {{ {self.s2s_port} }}",
            "s2s_direct_tls_ports = { }",
            'modules_enabled = { "roster", "saslauth", "tls", "dialback", "disco", "ping",'
            ' "version", "time", "posix", "pep", "vcard"' + (', "s2s_bidi"' if bidi else "") + " }",
            'authentication = "internal_hashed"',
            'storage = "internal"',
            "c2s_require_encryption = true",
            "s2s_require_encryption = true",
            f"s2s_secure_auth = {secure_auth}",
            "s2s_timeout = 20",
            f'unbound = {{ hoststxt = "{self.dir}/hosts" }}',
            f'ssl = {{ certificate = "{cert}", key = "{key}"{cafile} }}',
            f'log = {{ {{ levels = {{ min = "info" }}, to = "console" }},'
            f' {{ levels = {{ min = "debug" }}, to = "file", filename = "{self.log_path}" }} }}',
            f'VirtualHost "{PR}"',
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
        uid, gid = pwd.getpwnam("prosody").pw_uid, pwd.getpwnam("prosody").pw_gid
        for root, dirs, files in os.walk(self.dir):
            os.chown(root, uid, gid)
            for f in files:
                os.chown(os.path.join(root, f), uid, gid)

    def _as_prosody(self, *argv: str) -> list[str]:
        return ["setpriv", "--reuid=prosody", "--regid=prosody", "--init-groups", *argv]

    def start(self) -> "Prosody":
        self.console = open(self.dir / "console.log", "wb")
        self.proc = subprocess.Popen(
            self._as_prosody("prosody", "--config", str(self.config_path), "-F"),
            stdin=subprocess.DEVNULL, stdout=self.console, stderr=subprocess.STDOUT,
            cwd=self.dir, preexec_fn=subjects._die_with_parent,
        )
        # Ready once both c2s and s2s accept connections.
        deadline = time.monotonic() + 30
        for port in (self.c2s_port, self.s2s_port):
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(f"prosody exited early:\n{self.logs()}", pytrace=False)
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"prosody did not listen in time:\n{self.logs()}",
                                    pytrace=False)
                    time.sleep(0.1)
        return self

    def add_user(self, local: str, password: str) -> None:
        res = subprocess.run(
            self._as_prosody("prosodyctl", "--config", str(self.config_path),
                             "register", local, PR, password),
            capture_output=True, text=True, timeout=60,
        )
        assert res.returncode == 0, f"prosodyctl register: {res.stdout}{res.stderr}"

    def logs(self) -> str:
        out = []
        for name in ("console.log", "prosody.log"):
            p = self.dir / name
            if p.exists():
                out.append(f"--- prosody {name} ---\n" + subjects.tail(p.read_text(errors="replace"), 300))
        return "\n".join(out)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "console", None):
            self.console.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(params=["dialback", "certificates", "dialback-bidi"])
def federation(server, request, tmp_path):
    """(waxwing, prosody, mode): federated by dialback (self-signed
    certificates), or by certificates from a shared test CA with dialback
    refused on both sides (SASL EXTERNAL, XEP-0178)."""
    mode = request.param
    addr = _free_loopback_5269()
    pki = FederationCA(tmp_path) if mode == "certificates" else None
    # Prosody must also reach (and dial back) Waxwing's MUC and PubSub services.
    prosody = Prosody([f"{addr} {WX}", f"{addr} {MUC}", f"{addr} {PUBSUB}"], pki,
                      bidi=mode == "dialback-bidi")
    s2s = {
        "connect_timeout_secs": 20,
        "routes": {PR: f"127.0.0.1:{prosody.s2s_port}"},
    }
    overrides = {"hosts": [WX], "listen": {"s2s": [f"{addr}:5269"]}, "s2s": s2s}
    if pki:
        s2s["ca_bundle"] = str(pki.ca)
        s2s["dialback"] = "require-valid-certs"
        cert, key = pki.certs[WX]
        overrides["tls"] = {"certificates": [{"host": WX, "cert": str(cert), "key": str(key)}]}
    try:
        prosody.start()
        wx = server(overrides=overrides, users={f"alice@{WX}": PASSWORD})
        prosody.add_user("bob", PASSWORD)
        yield wx, prosody, mode
    finally:
        # Attach Prosody's logs to the report via stdout (shown on failure).
        print(prosody.logs())
        prosody.stop()


async def test_messages_subscriptions_and_iqs_cross(federation, xmpp):
    wx, prosody, mode = federation
    alice = await xmpp.login(wx, f"alice@{WX}/pc", PASSWORD)
    bob = await xmpp.login(prosody, f"bob@{PR}/phone", PASSWORD)
    # Fetch the rosters first: Prosody delivers subscription approvals and
    # roster pushes only to "interested" resources (RFC 6121 §2.1.6).
    for c in (alice, bob):
        await c.roster_get()
        await c.online()

    # Chat, Waxwing -> Prosody (first contact: Waxwing's outgoing stream,
    # Prosody verifies our key by dialing back WX via its hosts file).
    alice.send_message(f"bob@{PR}", "hello prosody")
    m = await bob.expect_message(body="hello prosody", timeout=STEP_TIMEOUT * 2)
    assert str(m["from"]) == f"alice@{WX}/pc"

    # Chat, Prosody -> Waxwing (Prosody's outgoing stream; we dial back via the route).
    bob.send_message(f"alice@{WX}/pc", "hello waxwing")
    m = await alice.expect_message(body="hello waxwing", timeout=STEP_TIMEOUT * 2)
    assert str(m["from"]) == f"bob@{PR}/phone"

    # Subscription handshake initiated on Waxwing.
    alice.x.send_presence(pto=f"bob@{PR}", ptype="subscribe")
    await bob.expect_presence(sender=f"alice@{WX}", ptype="subscribe")
    bob.x.send_presence(pto=f"alice@{WX}", ptype="subscribed")
    await alice.expect_presence(sender=f"bob@{PR}", ptype="subscribed")
    p = await alice.expect_presence(sender=f"bob@{PR}", ptype="available")
    assert str(p["from"]) == f"bob@{PR}/phone"

    # And the reverse handshake initiated on Prosody.
    bob.x.send_presence(pto=f"alice@{WX}", ptype="subscribe")
    await alice.expect_presence(sender=f"bob@{PR}", ptype="subscribe")
    alice.x.send_presence(pto=f"bob@{PR}", ptype="subscribed")
    await bob.expect_presence(sender=f"alice@{WX}", ptype="subscribed")
    await bob.expect_presence(sender=f"alice@{WX}", ptype="available")

    # Presence updates now flow both ways.
    alice.x.send_presence(pshow="away", pstatus="lunch")
    p = await bob.expect_presence(sender=f"alice@{WX}/pc", ptype="available")
    bob.x.send_presence(pshow="dnd")
    await alice.expect_presence(sender=f"bob@{PR}/phone", ptype="available")

    # Rosters agree: both.
    r = await alice.roster_get()
    assert r["roster"]["items"][f"bob@{PR}"]["subscription"] == "both", r

    # IQ round trips: ping and disco and version of the other server.
    for client, target in ((alice, PR), (bob, WX)):
        res = await client.iq(client.make_iq("get", target, "<ping xmlns='urn:xmpp:ping'/>"))
        assert res["type"] == "result", res
        res = await client.iq(client.make_iq(
            "get", target, "<query xmlns='http://jabber.org/protocol/disco#info'/>"))
        assert res["type"] == "result", res
        assert "<identity" in str(res), res
        res = await client.iq(client.make_iq("get", target, "<query xmlns='jabber:iq:version'/>"))
        assert res["type"] == "result", res

    # An unknown account on the other side bounces back across.
    res = await alice.iq(alice.make_iq("get", f"nobody@{PR}",
                                       "<query xmlns='http://jabber.org/protocol/disco#info'/>"))
    assert res["type"] == "error", res

    wx_log = wx.log_text()
    if mode == "dialback":
        # Both directions authenticated with dialback, over two streams.
        assert "incoming s2s stream authenticated (dialback)" in wx_log, wx_log[-5000:]
        assert 'auth="dialback"' in wx_log, wx_log[-5000:]
        assert "bidi=false" in wx_log and "bidi=true" not in wx_log, wx_log[-5000:]
    elif mode == "dialback-bidi":
        # Our one outgoing stream became bidirectional, and so did Prosody's
        # (Prosody opens it to verify our dialback key and then keeps using
        # it, so it carries its own stanzas there): we never opened a second.
        assert 'auth="dialback" bidi=true' in wx_log, wx_log[-5000:]
        assert wx_log.count("outgoing s2s stream ready") == 1, wx_log[-5000:]
        assert "incoming s2s stream is bidirectional (XEP-0288)" in wx_log, wx_log[-5000:]
    else:
        # Prosody authenticated to us with its certificate, and we to it.
        assert "incoming s2s stream authenticated (SASL EXTERNAL)" in wx_log, wx_log[-5000:]
        assert 'auth="sasl-external"' in wx_log, wx_log[-5000:]
        assert "(dialback)" not in wx_log, wx_log[-5000:]


async def test_prosody_user_in_waxwing_muc_room(federation, xmpp):
    """A Prosody user joins room@conference.<WX> and exchanges groupchat
    messages with a Waxwing occupant (XEP-0045 across s2s)."""
    wx, prosody, _mode = federation
    room = f"lounge@{MUC}"
    ns_muc = "http://jabber.org/protocol/muc"
    alice = await xmpp.login(wx, f"alice@{WX}/pc", PASSWORD)
    bob = await xmpp.login(prosody, f"bob@{PR}/phone", PASSWORD)
    for c in (alice, bob):
        await c.online()

    # Alice creates the room (locked, XEP-0045 §10.1.2) and accepts the default
    # configuration, making it an instant room.
    join = alice.x.make_presence(pto=f"{room}/alice")
    join.append(ET.Element(f"{{{ns_muc}}}x"))
    join.send()
    own = await alice.presences.expect(lambda p: str(p["from"]) == f"{room}/alice",
                                       "(own room presence)")
    assert own["type"] != "error", own
    codes = {s.get("code") for s in own.xml.iter(f"{{{ns_muc}#user}}status")}
    assert {"110", "201"} <= codes, f"room creation status codes: {own}"
    res = await alice.iq(alice.make_iq(
        "set", room, f"<query xmlns='{ns_muc}#owner'><x xmlns='jabber:x:data' type='submit'/></query>"))
    assert res["type"] == "result", res

    # Bob, on Prosody, joins over s2s.
    join = bob.x.make_presence(pto=f"{room}/bob")
    join.append(ET.Element(f"{{{ns_muc}}}x"))
    join.send()
    seen = await bob.presences.expect(lambda p: str(p["from"]) == f"{room}/bob",
                                      "(own room presence)", timeout=STEP_TIMEOUT * 2)
    assert seen["type"] != "error", seen
    codes = {s.get("code") for s in seen.xml.iter(f"{{{ns_muc}#user}}status")}
    assert "110" in codes, f"self-presence without status 110: {seen}"
    assert bob.presences.matching(lambda p: str(p["from"]) == f"{room}/alice"), \
        "bob did not get alice's occupant presence before his own"
    await alice.presences.expect(lambda p: str(p["from"]) == f"{room}/bob", "(bob joined)",
                                 timeout=STEP_TIMEOUT * 2)

    # Groupchat both ways, reflected to everyone with the occupant JID as sender.
    alice.send_message(room, "hello from waxwing", mtype="groupchat")
    m = await bob.expect_message(body="hello from waxwing", mtype="groupchat",
                                 timeout=STEP_TIMEOUT * 2)
    assert str(m["from"]) == f"{room}/alice", m
    await alice.expect_message(body="hello from waxwing", mtype="groupchat")
    bob.send_message(room, "hello from prosody", mtype="groupchat")
    m = await alice.expect_message(body="hello from prosody", mtype="groupchat",
                                   timeout=STEP_TIMEOUT * 2)
    assert str(m["from"]) == f"{room}/bob", m
    m = await bob.expect_message(body="hello from prosody", mtype="groupchat",
                                 timeout=STEP_TIMEOUT * 2)
    assert str(m["from"]) == f"{room}/bob", m

    if _mode == "dialback-bidi":
        # Prosody's stream to the MUC service was bidirectional: the room's
        # stanzas went back over it.
        wx_log = wx.log_text()
        assert "incoming bidirectional stream is the route for this pair" in wx_log, \
            wx_log[-5000:]


TUNE = "http://jabber.org/protocol/tune"
NS_EVENT = "http://jabber.org/protocol/pubsub#event"


async def _befriend(alice, bob) -> None:
    """Mutual presence subscription between alice (WX) and bob (PR)."""
    alice.x.send_presence(pto=f"bob@{PR}", ptype="subscribe")
    await bob.expect_presence(sender=f"alice@{WX}", ptype="subscribe", timeout=STEP_TIMEOUT * 2)
    bob.x.send_presence(pto=f"alice@{WX}", ptype="subscribed")
    await alice.expect_presence(sender=f"bob@{PR}", ptype="available")
    bob.x.send_presence(pto=f"alice@{WX}", ptype="subscribe")
    await alice.expect_presence(sender=f"bob@{PR}", ptype="subscribe")
    alice.x.send_presence(pto=f"bob@{PR}", ptype="subscribed")
    await bob.expect_presence(sender=f"alice@{WX}", ptype="available")


async def _publish_tune(client, item_id: str, title: str) -> None:
    res = await client.iq(client.make_iq(
        "set", None,
        f"<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{TUNE}'>"
        f"<item id='{item_id}'><tune xmlns='{TUNE}'><title>{title}</title></tune></item>"
        "</publish></pubsub>"))
    assert res["type"] == "result", res


async def _expect_tune(client, sender: str, item_id: str):
    def pred(m):
        ev = m.xml.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items")
        return (str(m["from"]) == sender and ev is not None and ev.get("node") == TUNE
                and ev.find(f"{{{NS_EVENT}}}item[@id='{item_id}']") is not None)
    return await client.messages.expect(pred, f"(tune item {item_id} from {sender})",
                                        timeout=STEP_TIMEOUT * 2)


async def _notify_tunes(client) -> None:
    """Adds tune+notify to the client's caps and sends the new presence."""
    client.x.plugin["xep_0163"].add_interest(TUNE)
    await client.x.plugin["xep_0115"].update_caps(broadcast=True)


async def test_pep_notifications_cross_both_ways(federation, xmpp):
    """XEP-0163 across federation: a Prosody contact whose caps (+notify)
    reach Waxwing gets a Waxwing user's tune, last item then live; and the
    reverse, Prosody's PEP to a Waxwing user."""
    wx, prosody, _mode = federation
    alice = xmpp.new(wx, f"alice@{WX}/pc", PASSWORD)
    bob = xmpp.new(prosody, f"bob@{PR}/phone", PASSWORD)
    for c in (alice, bob):
        c.x.register_plugin("xep_0115")
        c.x.register_plugin("xep_0163")
        await c.login()
        await c.roster_get()
        await c.online()
    await _befriend(alice, bob)

    # Waxwing -> Prosody. Alice publishes before bob wants tunes; bob's new
    # caps reach Waxwing in his presence, Waxwing (pubsub.WX) asks his client
    # for its features over s2s, then sends him the last item.
    await _publish_tune(alice, "a1", "first")
    await _notify_tunes(bob)
    await _expect_tune(bob, f"alice@{WX}", "a1")
    await _publish_tune(alice, "a2", "second")
    await _expect_tune(bob, f"alice@{WX}", "a2")

    # Prosody -> Waxwing, the same way round.
    await _publish_tune(bob, "b1", "first")
    await _notify_tunes(alice)
    await _expect_tune(alice, f"bob@{PR}", "b1")
    await _publish_tune(bob, "b2", "second")
    await _expect_tune(alice, f"bob@{PR}", "b2")


async def test_vcard_lookups_cross_both_ways(federation, xmpp):
    """vcard-temp (XEP-0054) gets to a remote bare JID are routed and
    answered by the contact's server, both ways."""
    wx, prosody, _mode = federation
    alice = await xmpp.login(wx, f"alice@{WX}/pc", PASSWORD)
    bob = await xmpp.login(prosody, f"bob@{PR}/phone", PASSWORD)
    for client, name in ((alice, "Alice of Waxwing"), (bob, "Bob of Prosody")):
        res = await client.iq(client.make_iq(
            "set", None, f"<vCard xmlns='vcard-temp'><FN>{name}</FN></vCard>"))
        assert res["type"] == "result", res
    for client, target, name in ((bob, f"alice@{WX}", "Alice of Waxwing"),
                                 (alice, f"bob@{PR}", "Bob of Prosody")):
        res = await client.iq(client.make_iq("get", target, "<vCard xmlns='vcard-temp'/>"),
                              timeout=STEP_TIMEOUT * 2)
        assert res["type"] == "result", res
        assert str(res["from"]) == target, res
        fn = res.xml.find("{vcard-temp}vCard/{vcard-temp}FN")
        assert fn is not None and fn.text == name, res
