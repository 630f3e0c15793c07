"""The admin API and `waxwing admin …` against a running server: every
endpoint, and requests without or with a wrong token refused (issue 19)."""

import json
import urllib.error
import urllib.request

import pytest

from conftest import PASSWORD
from wxtest.subjects import subject_class

pytestmark = pytest.mark.skipif(subject_class().name != "waxwing", reason="waxwing's admin API")

ALICE = "alice@localhost"
BOB = "bob@localhost"
ON = {"listen": {"http": ["127.0.0.1:0"]}, "admin": {"enabled": True}}


def explain(res) -> str:
    return f"exit {res.returncode}\n--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}"


def token(srv, name="ops") -> str:
    res = srv.cli("admin", "token", "create", name)
    assert res.returncode == 0, explain(res)
    return res.stdout.strip()


def admin(srv, tok, *args):
    res = srv.cli("admin", *args, "--token", tok, "--url", url(srv))
    assert res.returncode == 0, explain(res)
    return json.loads(res.stdout)


def url(srv) -> str:
    return f"http://{srv.listeners['http'][0]}"


def request(srv, method, path, tok=None, body=None):
    url = f"http://{srv.listeners['http'][0]}{path}"
    req = urllib.request.Request(url, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if tok is not None:
        req.add_header("Authorization", f"Bearer {tok}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


ENDPOINTS = [
    ("GET", "/admin/api/stats", None),
    ("GET", "/admin/api/sessions", None),
    ("DELETE", "/admin/api/sessions/alice@localhost", None),
    ("GET", "/admin/api/users", None),
    ("PUT", "/admin/api/users/alice@localhost/password", {"password": "new-password-1"}),
    ("GET", "/admin/api/rooms", None),
    ("POST", "/admin/api/announce", {"message": "hi"}),
    ("GET", "/admin/api/blocked-domains", None),
    ("PUT", "/admin/api/blocked-domains/evil.example", None),
    ("DELETE", "/admin/api/blocked-domains/evil.example", None),
    ("GET", "/admin/api/invites", None),
    ("POST", "/admin/api/invites", {}),
    ("DELETE", "/admin/api/invites/0123456789ab", None),
]


def test_every_endpoint_refuses_missing_and_wrong_tokens(server):
    srv = server(ON, users={ALICE: PASSWORD})
    good = token(srv)
    for method, path, body in ENDPOINTS:
        status, _ = request(srv, method, path, None, body)
        assert status == 401, (method, path, status)
        status, _ = request(srv, method, path, "wxa_wrong", body)
        assert status == 401, (method, path, status)
        status, _ = request(srv, method, path, good[:-1], body)
        assert status == 401, (method, path, status)
    # A revoked token stops working at once.
    assert request(srv, "GET", "/admin/api/stats", good)[0] == 200
    res = srv.cli("admin", "token", "revoke", "ops")
    assert res.returncode == 0, explain(res)
    assert request(srv, "GET", "/admin/api/stats", good)[0] == 401
    # The token file holds no token.
    assert good[4:] not in (srv.data_dir / "admin-tokens").read_text()


def test_admin_api_is_off_by_default(server):
    srv = server({"listen": {"http": ["127.0.0.1:0"]}}, users={ALICE: PASSWORD})
    tok = token(srv)
    assert request(srv, "GET", "/admin/api/stats", tok)[0] == 404


async def test_every_endpoint_through_the_cli(server, xmpp):
    srv = server(ON, users={ALICE: PASSWORD, BOB: PASSWORD})
    tok = token(srv)
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    bob = await xmpp.login(srv, BOB, PASSWORD)
    await alice.online()
    await bob.online()

    stats = admin(srv, tok, "stats")
    assert stats["sessions"] == 2 and stats["hosts"]["localhost"]["accounts"] == 2, stats
    sessions = admin(srv, tok, "sessions")["sessions"]
    assert sorted(s["jid"].split("/")[0] for s in sessions) == [ALICE, BOB], sessions
    assert admin(srv, tok, "users")["users"] == [ALICE, BOB]
    assert admin(srv, tok, "users", "localhost")["users"] == [ALICE, BOB]
    assert admin(srv, tok, "rooms") == {"rooms": []}

    sent = admin(srv, tok, "announce", "maintenance at noon", "--subject", "Notice")
    assert sent == {"sent": 2}
    await alice.expect_message(body="maintenance at noon", mtype="headline")
    await bob.expect_message(body="maintenance at noon", mtype="headline")

    assert admin(srv, tok, "block", "evil.example") == {"domain": "evil.example", "blocked": True}
    assert "evil.example" in admin(srv, tok, "blocked")["blocked"]
    bob.send_message("someone@evil.example", "hello?")
    err = await bob.expect_message(sender="someone@evil.example", mtype="error")
    assert err["error"]["condition"] == "not-allowed", err
    assert admin(srv, tok, "unblock", "evil.example")["blocked"] is False
    assert "evil.example" not in admin(srv, tok, "blocked")["blocked"]

    assert admin(srv, tok, "kick", BOB) == {"kicked": 1}
    await bob.wait_disconnected()

    res = admin(srv, tok, "passwd", ALICE, "--password", "brand-new-pass-1")
    assert res["sessions_closed"] == 1, res
    await alice.wait_disconnected()
    old = xmpp.new(srv, ALICE, PASSWORD)
    assert await old.connect() == "failed_auth"
    await xmpp.login(srv, ALICE, "brand-new-pass-1")

    missing = srv.cli("admin", "kick", "nobody@localhost", "--token", tok, "--url", url(srv))
    assert missing.returncode != 0 and "404" in missing.stderr, explain(missing)
    wrong = srv.cli("admin", "stats", "--token", "wxa_wrong", "--url", url(srv))
    assert wrong.returncode != 0 and "401" in wrong.stderr, explain(wrong)
