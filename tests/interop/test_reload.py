"""Reload without restart (issue 19 item 4): SIGHUP and `waxwing admin
reload` apply live settings and new certificates to new connections while
established sessions go on untouched; an invalid file changes nothing;
restart-only changes are named; certificate files replaced on disk are
picked up without a signal; `waxwing cert status`."""

import datetime
import hashlib
import json
import os
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import PASSWORD
from test_negotiation import assert_stream_error_then_close
from wxtest.raw import NS_CLIENT, NS_SASL, RawStream, q
from wxtest.subjects import subject_class

pytestmark = pytest.mark.skipif(subject_class().name != "waxwing",
                                reason="waxwing's reload, signals and CLI")

ALICE = "alice@localhost"
BOB = "bob@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD}


class Cert:
    """A self-made certificate for localhost, written as PEM files."""

    def __init__(self, directory: Path, label: str, days: int = 30):
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Test issuer {label}")]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.key_pem = key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        self.sha256 = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        self.issuer = f"CN=Test issuer {label}"
        self.not_after = int(cert.not_valid_after_utc.timestamp())
        self.cert = directory / f"{label}.crt"
        self.key = directory / f"{label}.key"
        self.cert.write_bytes(self.cert_pem)
        self.key.write_bytes(self.key_pem)

    def install(self, cert: Path, key: Path) -> None:
        """Replaces the files in place, key first (as an operator's copy would)."""
        key.write_bytes(self.key_pem)
        cert.write_bytes(self.cert_pem)


def served(port: int, sni: str = "localhost") -> str:
    """SHA-256 of the certificate a new TLS handshake on ``port`` gets."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname=sni) as t:
            return hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest()


def metric_not_after(srv, domain: str) -> int:
    """``waxwing_certificate_not_after_seconds{domain}`` from /metrics."""
    with urllib.request.urlopen(f"http://{srv.listeners['http'][0]}/metrics", timeout=10) as r:
        text = r.read().decode()
    prefix = f'waxwing_certificate_not_after_seconds{{domain="{domain}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, text
    return int(lines[0][len(prefix):])


def https_port(srv) -> int:
    return int(srv.listeners["https"][0].rsplit(":", 1)[1])


def logged_in(srv, user: str) -> RawStream:
    """A raw c2s stream over STARTTLS, authenticated and bound."""
    raw = RawStream(srv.c2s_port, domain=srv.domain)
    raw.open()
    raw.starttls()
    assert raw.sasl_plain(user, PASSWORD).tag == q(NS_SASL, "success"), raw.text()
    raw.restart()
    raw.bind("raw")
    return raw


def ping(raw: RawStream, ident: str) -> None:
    raw.send(f"<iq type='get' id='{ident}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = raw.expect(q(NS_CLIENT, "iq"))
    assert reply.get("id") == ident and reply.get("type") == "result", raw.text()


def fingerprint(raw: RawStream) -> str:
    return hashlib.sha256(raw.peer_cert_der()).hexdigest()


def with_certificate(live_cert: Path, live_key: Path, extra: dict | None = None) -> dict:
    config = {
        "tls": {"certificates": [{"host": "localhost", "cert": str(live_cert), "key": str(live_key)}],
                "watch_interval_secs": 0},
        "limits": {"max_stanza_bytes": 100000},
        "admin": {"enabled": True},
    }
    for k, v in (extra or {}).items():
        config.setdefault(k, {}).update(v)
    return config


def explain(res) -> str:
    return f"exit {res.returncode}\n--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}"


def admin(srv, tok: str, *args: str):
    return srv.cli("admin", *args, "--token", tok, "--url", f"http://{srv.listeners['http'][0]}")


def post(srv, path: str, tok: str) -> tuple[int, str]:
    req = urllib.request.Request(f"http://{srv.listeners['http'][0]}{path}", method="POST")
    req.add_header("Authorization", f"Bearer {tok}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def token(srv) -> str:
    res = srv.cli("admin", "token", "create", "ops")
    assert res.returncode == 0, explain(res)
    return res.stdout.strip()


def test_sighup_applies_a_new_limit_and_certificate_to_new_connections_only(server, tmp_path):
    one, two = Cert(tmp_path, "one"), Cert(tmp_path, "two")
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    one.install(live_cert, live_key)
    srv = server(with_certificate(live_cert, live_key), users=USERS)

    old = logged_in(srv, "alice")
    assert fingerprint(old) == one.sha256
    assert served(srv.tls_port) == one.sha256
    assert served(https_port(srv)) == one.sha256

    two.install(live_cert, live_key)
    srv.config["limits"]["max_stanza_bytes"] = 20000
    srv.write_config()
    assert srv.sighup() == "waxwing: reloaded"

    # New handshakes, on every TLS listener, get the new certificate.
    assert served(srv.tls_port) == two.sha256
    assert served(https_port(srv)) == two.sha256
    new = logged_in(srv, "bob")
    assert fingerprint(new) == two.sha256

    # The session from before keeps working, with the limit it started with:
    # 30 KB is over the new limit and under the old one.
    big = "x" * 30000
    old.send(f"<message to='{BOB}/raw' id='big' type='chat'><body>{big}</body></message>")
    got = new.expect(q(NS_CLIENT, "message"))
    assert got.get("id") == "big" and got.findtext(q(NS_CLIENT, "body")) == big, new.text()
    ping(old, "old-still-there")

    # The connection made after the reload has the new limit.
    try:
        new.send("<iq type='get' id='small' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        new.send(f"<message to='{ALICE}/raw'><body>{big}</body></message>")
    except OSError:
        pass  # closed while we were still writing: the error is already queued
    small = new.next()
    assert small is not None and small.get("id") == "small", new.text()
    assert_stream_error_then_close(new, "policy-violation")
    new.close()

    ping(old, "old-after-all")
    old.close()


def test_an_invalid_file_on_reload_keeps_the_old_configuration_and_says_why(server, tmp_path):
    one = Cert(tmp_path, "one")
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    one.install(live_cert, live_key)
    srv = server(with_certificate(live_cert, live_key), users=USERS)
    tok = token(srv)
    before = logged_in(srv, "alice")

    # A certificate change is waiting, and the file has a mistake: nothing
    # at all is applied, the certificate included.
    Cert(tmp_path, "two").install(live_cert, live_key)
    good = srv.config_path.read_text()
    bad = good.replace("max_stanza_bytes = 100000", "max_stanza_bytes = 0")
    assert bad != good
    srv.config_path.write_text("not_a_setting = 1\n" + bad)
    line = srv.sighup()
    assert line.startswith("waxwing: reload refused:"), line
    assert "still running on the previous configuration" in line, line

    # The API says why (the CLI cannot even read the file, and says so too).
    status, body = post(srv, "/admin/api/reload", tok)
    assert status == 422 and "not_a_setting" in body and "line 1" in body, (status, body)
    res = admin(srv, tok, "reload")
    assert res.returncode != 0 and "not_a_setting" in res.stderr, explain(res)
    assert "configuration reload refused" in srv.log_text()
    assert served(srv.tls_port) == one.sha256

    # Still serving, on the old limit, old session and new alike.
    ping(before, "still-there")
    again = logged_in(srv, "bob")
    again.send(f"<message to='{ALICE}/raw' id='big'><body>{'x' * 30000}</body></message>")
    got = before.expect(q(NS_CLIENT, "message"))
    assert got.get("id") == "big", before.text()
    before.close()
    again.close()


def test_admin_reload_reports_what_needs_a_restart(server, tmp_path):
    srv = server({"admin": {"enabled": True}}, users=USERS)
    tok = token(srv)
    srv.config["listen"]["c2s"] = ["127.0.0.1:0", "[::1]:0"]
    srv.config["storage"] = {"synchronous": "full"}
    srv.config["limits"] = {"max_resources": 3}
    srv.config["contact"] = {"abuse": ["mailto:abuse@localhost"]}
    srv.write_config()

    res = admin(srv, tok, "reload")
    assert res.returncode == 0, explain(res)
    report = json.loads(res.stdout)
    assert report["needs_restart"] == ["listen.c2s", "storage.synchronous"], report
    assert report["applied"] == ["contact.abuse", "limits.max_resources"], report
    assert report["certificates_refused"] == [], report
    assert "needs restart: listen.c2s, storage.synchronous" in srv.log_text()

    # SIGHUP reports the same on stdout; nothing new is applied the second time.
    assert srv.sighup() == "waxwing: reloaded; needs restart: listen.c2s, storage.synchronous"


async def test_live_settings_reach_clients(server, xmpp):
    """A reload reaches what modules read (XEP-0157 contact addresses in
    disco#info) for clients already connected."""
    srv = server({"admin": {"enabled": True}}, users=USERS)
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    info = await alice.x.plugin["xep_0030"].get_info(jid="localhost", local=False, timeout=15)
    assert "mailto:abuse@localhost" not in str(info)
    srv.config["contact"] = {"abuse": ["mailto:abuse@localhost"]}
    srv.write_config()
    assert srv.sighup() == "waxwing: reloaded"
    info = await alice.x.plugin["xep_0030"].get_info(jid="localhost", local=False, timeout=15)
    assert "mailto:abuse@localhost" in str(info), info


def test_certificate_files_replaced_on_disk_are_picked_up_without_a_signal(server, tmp_path):
    """certbot's layout: live/ holds symlinks into archive/, and a renewal
    writes new archive files and points the links at them."""
    archive, live = tmp_path / "archive", tmp_path / "live"
    archive.mkdir()
    live.mkdir()
    one, bad, two = Cert(archive, "one"), Cert(archive, "bad"), Cert(archive, "two", days=90)
    live_cert, live_key = live / "fullchain.pem", live / "privkey.pem"

    def point_at(cert: Path, key: Path) -> None:
        for link, target in ((live_key, key), (live_cert, cert)):
            tmp = link.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            os.replace(tmp, link)

    point_at(one.cert, one.key)
    srv = server(with_certificate(live_cert, live_key, {"tls": {"watch_interval_secs": 1}}),
                 users=USERS)
    old = logged_in(srv, "alice")
    assert served(srv.tls_port) == one.sha256
    assert metric_not_after(srv, "localhost") == one.not_after

    # A half-done renewal (a certificate whose key is another's) is refused,
    # and the working certificate stays.
    mark = srv.log_size()
    point_at(bad.cert, two.key)
    srv.wait_log("new certificate refused", after=mark)
    assert served(srv.tls_port) == one.sha256

    mark = srv.log_size()
    point_at(two.cert, two.key)
    srv.wait_log("certificate loaded; new TLS handshakes use it", after=mark)
    assert served(srv.tls_port) == two.sha256
    assert served(https_port(srv)) == two.sha256
    assert fingerprint(logged_in(srv, "bob")) == two.sha256
    assert metric_not_after(srv, "localhost") == two.not_after
    ping(old, "unbothered")
    assert fingerprint(old) == one.sha256
    old.close()


def test_cert_status_lists_every_name_from_the_server_and_from_the_files(server, tmp_path):
    one = Cert(tmp_path, "one")
    config = with_certificate(one.cert, one.key)
    config["hosts"] = ["localhost", "example.test"]
    srv = server(config, users=USERS)
    tok = token(srv)
    res = srv.cli("cert", "status", "--json", "--token", tok, "--url", f"http://{srv.listeners['http'][0]}")
    assert res.returncode == 0, explain(res)
    running = json.loads(res.stdout)
    by_name = {c["name"]: c for c in running}
    assert sorted(by_name) == ["example.test", "localhost"], running
    assert by_name["localhost"]["source"] == "configured"
    assert by_name["localhost"]["sha256"] == one.sha256
    assert by_name["localhost"]["issuer"] == one.issuer
    assert by_name["localhost"]["names"] == ["localhost"]
    assert by_name["example.test"]["source"] == "self-signed"
    assert by_name["example.test"]["names"] == ["example.test"]
    not_after = datetime.datetime.fromisoformat(by_name["localhost"]["not_after"].replace("Z", "+00:00"))
    assert datetime.timedelta(days=29) < not_after - datetime.datetime.now(datetime.timezone.utc) \
        < datetime.timedelta(days=31)

    # Without a token: read from the files, same answer.
    res = srv.cli("cert", "status", "--json")
    assert res.returncode == 0, explain(res)
    assert json.loads(res.stdout) == running
    res = srv.cli("cert", "status")
    assert res.returncode == 0, explain(res)
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("localhost\tconfigured\tnot after "), res.stdout
    assert "days left" in lines[1], res.stdout


async def test_feeds_added_and_removed_by_a_reload_start_and_stop(server):
    from test_pubsub_feeds import FeedServer, rss
    feeds = FeedServer()
    try:
        feeds.set("/old", "o0", rss([]))
        feeds.set("/new", "n0", rss([]))
        old_feed = {"url": feeds.url("/old"), "node": "old-news", "interval_secs": 1}
        srv = server({"pubsub": {"feed_min_interval_secs": 1, "feeds": [old_feed]}})
        await feeds.fetched_more("/old", 1)
        assert feeds.count("/new") == 0

        srv.config["pubsub"]["feeds"] = [
            {"url": feeds.url("/new"), "node": "new-news", "interval_secs": 1}]
        srv.write_config()
        assert srv.sighup() == "waxwing: reloaded"
        srv.wait_log("feed no longer configured, stopped")
        stopped_at = feeds.count("/old")
        # The new feed is polled (three fetches: two intervals at least)...
        await feeds.fetched_more("/new", 3)
        # ...and the old one no more (one fetch may have been under way).
        assert feeds.count("/old") <= stopped_at + 1, (feeds.count("/old"), stopped_at)
    finally:
        feeds.close()


def test_log_level_changes_at_once(server, monkeypatch):
    # RUST_LOG would pin the filter (by design): the server must not inherit one.
    monkeypatch.delenv("RUST_LOG", raising=False)
    srv = server({"admin": {"enabled": True}}, users=USERS)
    tok = token(srv)
    raw = logged_in(srv, "alice")
    raw.close()
    assert "authenticated user=alice@localhost" in srv.log_text()
    srv.config["log"]["level"] = "warn"
    srv.write_config()
    res = admin(srv, tok, "reload")
    assert res.returncode == 0, explain(res)
    report = json.loads(res.stdout)
    assert report["applied"] == ["log.level"] and report["warnings"] == [], report
    mark = srv.log_size()
    raw = logged_in(srv, "bob")
    ping(raw, "after")
    raw.close()
    # Something at warn level after bob's login, to know the log caught up.
    srv.config["listen"]["c2s"] = ["127.0.0.1:0", "127.0.0.1:0"]
    srv.write_config()
    assert srv.sighup().startswith("waxwing: reloaded; needs restart: listen.c2s")
    srv.wait_log("needs restart: listen.c2s", after=mark)
    tail = srv.log_path.read_bytes()[mark:].decode()
    assert "authenticated" not in tail and " INFO " not in tail, tail
