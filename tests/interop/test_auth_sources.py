"""Account sources per host (issue 20): SASL ANONYMOUS guests on a host of
their own (XEP-0175) and the ejabberd/Prosody extauth protocol."""

import json
import xml.etree.ElementTree as ET
import sqlite3
import sys
from pathlib import Path

import pytest

from conftest import PASSWORD
from wxtest.raw import RawStream
from wxtest.subjects import subject_name

# Waxwing's own configuration ([auth.hosts]); Prosody configures these differently.
pytestmark = pytest.mark.skipif(subject_name() != "waxwing", reason="waxwing configuration")

GUEST_HOST = "guest.localhost"
ALICE = "alice@localhost"
FIXTURES = Path(__file__).parent / "fixtures"

ANONYMOUS = {
    "hosts": ["localhost", GUEST_HOST],
    "auth": {"hosts": {GUEST_HOST: {"source": "anonymous"}}},
}


def rows_mentioning(db: Path, needle: str) -> list[tuple[str, tuple]]:
    """Every row of every table with a text or blob column containing `needle`."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found = []
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for t in tables:
            for row in con.execute(f'SELECT * FROM "{t}"'):
                for v in row:
                    if isinstance(v, bytes):
                        v = v.decode("utf-8", "replace")
                    if isinstance(v, str) and needle in v:
                        found.append((t, row))
                        break
        return found
    finally:
        con.close()


def features_of(srv, domain: str) -> str:
    """The stream features after STARTTLS, as XML text."""
    raw = RawStream(srv.c2s_port, domain=domain)
    try:
        raw.open(to=domain)
        features = raw.starttls()
        return ET.tostring(features, encoding="unicode")
    finally:
        raw.close()


async def test_anonymous_guest_chats_and_leaves_nothing_behind(server, xmpp):
    srv = server(ANONYMOUS, users={ALICE: PASSWORD})
    alice = await xmpp.login(srv, f"{ALICE}/desk", PASSWORD)
    await alice.online()
    guest = await xmpp.login(srv, GUEST_HOST, "", mech="ANONYMOUS")
    gjid = guest.jid
    assert guest.sasl_mechanism == "ANONYMOUS"
    assert gjid.domain == GUEST_HOST
    assert len(gjid.user) >= 16, f"guest localpart {gjid.user!r} is not random enough"
    # A second guest gets a different account.
    other = await xmpp.login(srv, GUEST_HOST, "", mech="ANONYMOUS")
    assert other.jid.bare != gjid.bare

    # The guest talks to staff and back, and uses per-account storage
    # (roster, private XML, MAM through the chat), which must all go.
    await guest.online()
    guest.send_message(ALICE, "hello from a guest")
    got = await alice.expect_message(body="hello from a guest")
    assert got["from"].bare == gjid.bare
    alice.send_message(str(gjid), "hello guest")
    await guest.expect_message(body="hello guest")
    await guest.roster_set(ALICE, name="Support")
    iq = guest.make_iq("set", payload=(
        "<query xmlns='jabber:iq:private'><note xmlns='urn:test:note'>kept?</note></query>"))
    res = await guest.iq(iq)
    assert res["type"] == "result", str(res)

    db = srv.data_dir / "waxwing.db"
    assert rows_mentioning(db, gjid.user), "the guest's account and data should exist while online"
    # The server closes its side of the stream only after the account is
    # gone (slixmpp's close waits for that).
    await guest.close()
    alice.send_message(gjid.bare, "still there?")
    bounced = await alice.messages.expect(
        lambda m: m["type"] == "error" and m["from"].bare == gjid.bare, "bounce from the guest")
    assert bounced["error"]["condition"] == "service-unavailable", str(bounced)
    # A graceful stop flushes every pending write (e.g. last-activity group
    # commits), so what is in the database now is all there will be.
    await alice.close()
    srv.stop()
    # Alice's own archive keeps her side of the conversation: that is hers.
    leftovers = [(t, r) for t, r in rows_mentioning(db, gjid.user)
                 if not (t == "archive_items" and ALICE in r)]
    assert leftovers == [], f"guest data left after logout: {leftovers}"


async def test_anonymous_host_offers_only_anonymous_and_real_hosts_never(server):
    srv = server(ANONYMOUS)
    guest_features = features_of(srv, GUEST_HOST)
    assert ">ANONYMOUS</" in guest_features, guest_features
    assert "SCRAM-SHA" not in guest_features and ">PLAIN<" not in guest_features, guest_features
    main_features = features_of(srv, "localhost")
    assert "ANONYMOUS" not in main_features, main_features


async def test_anonymous_logins_are_rate_limited_per_address(server, xmpp):
    srv = server({**ANONYMOUS, "auth": {**ANONYMOUS["auth"], "anonymous_max_per_address": 2}})
    for _ in range(2):
        await xmpp.login(srv, GUEST_HOST, "", mech="ANONYMOUS")
    third = xmpp.new(srv, GUEST_HOST, "", mech="ANONYMOUS")
    assert await third.connect() in ("failed_auth", "failed_all_auth")
    assert "temporary-auth-failure" in third.wire_text()


async def test_anonymous_guest_cannot_set_a_password(server, xmpp):
    srv = server(ANONYMOUS)
    guest = await xmpp.login(srv, GUEST_HOST, "", mech="ANONYMOUS")
    iq = guest.make_iq("set", to=GUEST_HOST, payload=(
        f"<query xmlns='jabber:iq:register'><username>{guest.jid.user}</username>"
        "<password>a-long-password</password></query>"))
    res = await guest.iq(iq)
    assert res["type"] == "error" and res["error"]["condition"] == "not-allowed", str(res)


def test_stale_guest_accounts_are_purged_at_start(server):
    srv = server(ANONYMOUS)
    srv.add_user(f"leftover@{GUEST_HOST}", PASSWORD)
    srv.stop()
    srv.start()
    out = srv.cli("user", "list").stdout
    assert f"leftover@{GUEST_HOST}" not in out, out


# -- extauth


def extauth_config(tmp_path: Path, users: dict, **extra) -> tuple[dict, Path]:
    users_path = tmp_path / "extauth-users.json"
    users_path.write_text(json.dumps(users), encoding="utf-8")
    log = tmp_path / "extauth.log"
    ext = {"command": [sys.executable, str(FIXTURES / "extauth.py"), str(users_path), str(log)],
           **extra}
    return {
        "hosts": ["localhost"],
        "auth": {"hosts": {"localhost": {"source": "extauth", "extauth": ext}}},
    }, log


async def test_extauth_plain_login_and_wrong_password(server, xmpp, tmp_path):
    overrides, log = extauth_config(tmp_path, {ALICE: "directory-pw", "bob@localhost": "bob-pw"})
    srv = server(overrides)
    features = features_of(srv, "localhost")
    # Before TLS nothing can carry a password; after it, PLAIN only.
    alice = await xmpp.login(srv, f"{ALICE}/a", "directory-pw")
    assert alice.sasl_mechanism == "PLAIN"
    bob = await xmpp.login(srv, "bob@localhost/b", "bob-pw")
    await bob.online()
    alice.send_message("bob@localhost", "via extauth")
    await bob.expect_message(body="via extauth")
    wrong = xmpp.new(srv, ALICE, "not-the-password")
    assert await wrong.connect() in ("failed_auth", "failed_all_auth")
    assert "not-authorized" in wrong.wire_text()
    lines = log.read_text().splitlines()
    assert "auth alice@localhost len=12" in lines, lines
    assert "auth alice@localhost len=16" in lines, lines
    assert "SCRAM" not in features


async def test_extauth_program_restarted_after_crash_and_hang(server, xmpp, tmp_path):
    overrides, log = extauth_config(tmp_path, {ALICE: "directory-pw"}, timeout_secs=2)
    srv = server(overrides)
    crash = xmpp.new(srv, ALICE, "crash")
    assert await crash.connect() in ("failed_auth", "failed_all_auth")
    assert "temporary-auth-failure" in crash.wire_text()
    await xmpp.login(srv, f"{ALICE}/after-crash", "directory-pw")
    hang = xmpp.new(srv, ALICE, "hang")
    assert await hang.connect() in ("failed_auth", "failed_all_auth")
    assert "temporary-auth-failure" in hang.wire_text()
    await xmpp.login(srv, f"{ALICE}/after-hang", "directory-pw")
    starts = log.read_text().splitlines().count("started")
    assert starts == 3, log.read_text()


async def test_extauth_cache_scram_opt_in(server, xmpp, tmp_path):
    overrides, log = extauth_config(tmp_path, {ALICE: "directory-pw"})
    host = overrides["auth"]["hosts"]["localhost"]
    host["cache_scram"] = True
    host["mechanisms"] = ["SCRAM-SHA-256", "PLAIN"]
    srv = server(overrides)
    # First login must be PLAIN: nothing is cached yet.
    await xmpp.login(srv, f"{ALICE}/1", "directory-pw", mech="PLAIN")
    before = log.read_text().count("auth alice@localhost")
    again = await xmpp.login(srv, f"{ALICE}/2", "directory-pw", mech="SCRAM-SHA-256")
    assert again.sasl_mechanism == "SCRAM-SHA-256"
    assert log.read_text().count("auth alice@localhost") == before, "SCRAM asked the program"


def test_config_check_refuses_extauth_without_plain(server, tmp_path):
    overrides, _log = extauth_config(tmp_path, {})
    srv = server()
    srv.stop()
    bad = srv.config_path.read_text() + "\n"
    path = tmp_path / "bad.toml"
    import tomllib
    cfg = tomllib.loads(bad)
    cfg["auth"] = {"allow_plain": False, **overrides["auth"]}
    from wxtest import tomlw
    path.write_text(tomlw.dumps(cfg), encoding="utf-8")
    res = srv.cli("config", "check", "--config", str(path), config=False)
    assert res.returncode != 0
    assert "needs PLAIN" in (res.stdout + res.stderr), res.stdout + res.stderr


# -- LDAP (a real slapd, see wxtest/ldap.py)

NS_COMMANDS = "http://jabber.org/protocol/commands"
ADD_USER = "http://jabber.org/protocol/admin#add-user"


def ldap_config(directory, **ldap) -> dict:
    from wxtest.ldap import SERVICE_DN, SERVICE_PW, SUFFIX
    settings = {
        "url": directory.url,
        "bind_dn": SERVICE_DN,
        "bind_password": SERVICE_PW,
        "base": f"ou=people,{SUFFIX}",
        "filter": "(&(objectClass=inetOrgPerson)(uid=%u))",
        "admin_group": f"cn=xmpp-admins,ou=groups,{SUFFIX}",
        **ldap,
    }
    settings = {k: v for k, v in settings.items() if v is not None}
    return {"hosts": ["localhost"],
            "auth": {"hosts": {"localhost": {"source": "ldap", "ldap": settings}}}}


async def start_admin_command(client) -> str:
    res = await client.iq(client.make_iq(
        "set", "localhost", f"<command xmlns='{NS_COMMANDS}' node='{ADD_USER}' action='execute'/>"))
    if res["type"] == "error":
        return res["error"]["condition"]
    return res.xml.find(f"{{{NS_COMMANDS}}}command").get("status")


async def test_ldap_search_then_bind_and_admin_group(server, xmpp, tmp_path):
    from wxtest.ldap import Slapd
    with Slapd(tmp_path / "ldap", {"alice": "alice-ldap-pw", "bob": "bob-ldap-pw"},
               admins=["bob"]) as directory:
        srv = server(ldap_config(directory))
        alice = await xmpp.login(srv, f"{ALICE}/a", "alice-ldap-pw")
        assert alice.sasl_mechanism == "PLAIN"
        bob = await xmpp.login(srv, "bob@localhost/b", "bob-ldap-pw")
        await bob.online()
        alice.send_message("bob@localhost", "from the directory")
        await bob.expect_message(body="from the directory")
        for jid, pw in ((ALICE, "wrong-password"), ("nobody@localhost", "alice-ldap-pw")):
            bad = xmpp.new(srv, jid, pw)
            assert await bad.connect() in ("failed_auth", "failed_all_auth"), jid
            assert "not-authorized" in bad.wire_text()
        # A filter metacharacter in the name must not widen the search.
        star = xmpp.new(srv, "*@localhost", "alice-ldap-pw")
        assert await star.connect() in ("failed_auth", "failed_all_auth", "disconnected")
        assert "<success" not in star.wire_text()
        # Group membership in the directory makes an admin.
        assert await start_admin_command(bob) == "executing"
        assert await start_admin_command(alice) == "forbidden"


async def test_ldap_direct_bind_template(server, xmpp, tmp_path):
    from wxtest.ldap import SUFFIX, Slapd
    with Slapd(tmp_path / "ldap", {"carol": "carol-ldap-pw"}) as directory:
        srv = server(ldap_config(directory, base=None, filter=None, bind_dn=None,
                                 bind_password=None, admin_group=None,
                                 user_dn=f"uid=%u,ou=people,{SUFFIX}"))
        carol = await xmpp.login(srv, "carol@localhost/c", "carol-ldap-pw")
        assert carol.jid.bare == "carol@localhost"
        bad = xmpp.new(srv, "carol@localhost", "nope-nope")
        assert await bad.connect() in ("failed_auth", "failed_all_auth")


async def test_ldap_unreachable_is_a_temporary_failure(server, xmpp, tmp_path):
    from wxtest.ldap import Slapd
    with Slapd(tmp_path / "ldap", {"alice": "alice-ldap-pw"}) as directory:
        config = ldap_config(directory)
    # The directory is gone now.
    srv = server(config)
    c = xmpp.new(srv, ALICE, "alice-ldap-pw")
    assert await c.connect() in ("failed_auth", "failed_all_auth")
    assert "temporary-auth-failure" in c.wire_text()


# -- mechanism lists per listener


async def test_listener_list_narrows_what_one_port_offers(server, xmpp):
    from wxtest.federation import free_ports
    starttls_port, direct_port = free_ports(2)
    plain_addr = f"127.0.0.1:{starttls_port}"
    srv = server({
        "listen": {"c2s": [plain_addr], "c2s_direct_tls": [f"127.0.0.1:{direct_port}"]},
        "auth": {"listeners": {plain_addr: ["SCRAM-SHA-256"]}},
    }, users={ALICE: PASSWORD})
    features = features_of(srv, "localhost")
    mechanisms = sorted(m.text for m in ET.fromstring(features).iter(
        "{urn:ietf:params:xml:ns:xmpp-sasl}mechanism"))
    assert mechanisms == ["SCRAM-SHA-256"], features
    refused = xmpp.new(srv, ALICE, PASSWORD, mech="PLAIN")
    assert await refused.connect() in ("failed_auth", "failed_all_auth", "disconnected")
    assert "<success" not in refused.wire_text()
    await xmpp.login(srv, f"{ALICE}/scram", PASSWORD, mech="SCRAM-SHA-256")
    # The other listener keeps the host's full list.
    direct = await xmpp.login(srv, f"{ALICE}/direct", PASSWORD, mech="PLAIN", tls="direct")
    assert direct.sasl_mechanism == "PLAIN"


async def test_extauth_isuser_lets_directory_users_receive_before_first_login(server, xmpp, tmp_path):
    overrides, log = extauth_config(tmp_path, {ALICE: "directory-pw", "carol@localhost": "carol-pw"})
    srv = server(overrides)
    alice = await xmpp.login(srv, f"{ALICE}/a", "directory-pw")
    alice.send_message("nobody@localhost", "to nobody")
    bounce = await alice.messages.expect(
        lambda m: m["type"] == "error" and m["from"].bare == "nobody@localhost", "bounce")
    assert bounce["error"]["condition"] == "service-unavailable", str(bounce)
    # Carol never logged in, but the program knows her: stored offline.
    alice.send_message("carol@localhost", "waiting for you")
    await alice.sync()
    assert "isuser carol@localhost" in log.read_text().splitlines()
    carol = await xmpp.login(srv, "carol@localhost/c", "carol-pw")
    await carol.online()
    await carol.expect_message(body="waiting for you")


# -- FAST (XEP-0484) only where the local password is the credential

NS_SASL2 = "urn:xmpp:sasl:2"
NS_FAST = "urn:xmpp:fast:0"
CORP = "corp.localhost"


def sasl2_features(srv, domain: str) -> tuple[RawStream, ET.Element]:
    raw = RawStream(srv.c2s_port, domain=domain)
    raw.open(to=domain)
    features = raw.starttls()
    auth = features.find(f"{{{NS_SASL2}}}authentication")
    assert auth is not None, f"no SASL2 feature for {domain}:\n{raw.text()}"
    return raw, auth


def fast_offered(srv, domain: str) -> bool:
    raw, auth = sasl2_features(srv, domain)
    raw.close()
    return auth.find(f"{{{NS_SASL2}}}inline/{{{NS_FAST}}}fast") is not None


def ht_attempt(srv, domain: str, user: str) -> str:
    """An HT-SHA-256-NONE <authenticate/> with a made-up token: the failure's condition."""
    import base64
    import hashlib
    import hmac
    raw, _ = sasl2_features(srv, domain)
    try:
        proof = hmac.new(b"a token never issued", b"Initiator", hashlib.sha256).digest()
        initial = base64.b64encode(user.encode() + b"\0" + proof).decode()
        raw.send(f"<authenticate xmlns='{NS_SASL2}' mechanism='HT-SHA-256-NONE'>"
                 f"<initial-response>{initial}</initial-response>"
                 f"<user-agent id='d4f5a0b2-0000-4000-8000-000000000001'/>"
                 f"<fast xmlns='{NS_FAST}'/></authenticate>")
        reply = raw.expect(f"{{{NS_SASL2}}}failure")
        return [c.tag.split("}")[1] for c in reply if c.tag.startswith("{urn:ietf:params:xml:ns:xmpp-sasl}")][0]
    finally:
        raw.close()


async def test_fast_is_refused_on_external_and_anonymous_hosts(server, xmpp, tmp_path):
    """A FAST token is bound to the account's local SCRAM secrets: on a host whose
    passwords live in a directory (or that has guests only) it would outlive a
    password changed there, so FAST is neither offered, issued nor accepted."""
    from wxtest.scram import ScramClient
    import base64
    overrides, log = extauth_config(tmp_path, {f"alice@{CORP}": "directory-pw"})
    corp = overrides["auth"]["hosts"].pop("localhost")
    corp.update(cache_scram=True, mechanisms=["SCRAM-SHA-256", "PLAIN"])
    srv = server({"hosts": ["localhost", CORP, GUEST_HOST],
                  "auth": {"hosts": {CORP: corp, GUEST_HOST: {"source": "anonymous"}}}},
                 users={ALICE: PASSWORD})
    assert fast_offered(srv, "localhost"), "the internal host should still offer FAST"
    assert not fast_offered(srv, CORP)
    assert not fast_offered(srv, GUEST_HOST)
    assert ht_attempt(srv, CORP, "alice") == "invalid-mechanism"
    assert ht_attempt(srv, GUEST_HOST, "anyone") == "invalid-mechanism"

    # With a cached SCRAM secret (after one PLAIN login), a SASL2 SCRAM
    # login asking for a token gets in, but gets no token.
    await xmpp.login(srv, f"alice@{CORP}/first", "directory-pw", mech="PLAIN")
    raw, _ = sasl2_features(srv, CORP)
    try:
        scram = ScramClient("SCRAM-SHA-256", "alice", "directory-pw")
        raw.send(f"<authenticate xmlns='{NS_SASL2}' mechanism='SCRAM-SHA-256'>"
                 f"<initial-response>{base64.b64encode(scram.client_first()).decode()}"
                 "</initial-response><user-agent id='d4f5a0b2-0000-4000-8000-000000000002'/>"
                 f"<request-token xmlns='{NS_FAST}' mechanism='HT-SHA-256-NONE'/></authenticate>")
        challenge = raw.expect(f"{{{NS_SASL2}}}challenge")
        final = scram.client_final(base64.b64decode(challenge.text or ""))
        raw.send(f"<response xmlns='{NS_SASL2}'>{base64.b64encode(final).decode()}</response>")
        success = raw.expect(f"{{{NS_SASL2}}}success")
        assert success.find(f"{{{NS_FAST}}}token") is None, raw.text()
    finally:
        raw.close()


async def test_subscription_to_a_directory_user_who_never_logged_in(server, xmpp, tmp_path):
    """Item 4 of issue 20: a presence subscription request to an extauth user
    without a local record asks the program (`isuser`) and waits for them,
    like one to any other account; a name the program does not know is
    dropped (RFC 6121 §3.1.3: no such user)."""
    overrides, log = extauth_config(tmp_path, {ALICE: "directory-pw", "carol@localhost": "carol-pw"})
    srv = server(overrides)
    alice = await xmpp.login(srv, f"{ALICE}/a", "directory-pw")
    await alice.online()
    alice.x.send_presence(pto="carol@localhost", ptype="subscribe")
    alice.x.send_presence(pto="nobody@localhost", ptype="subscribe")
    await alice.sync()
    lines = log.read_text().splitlines()
    assert "isuser carol@localhost" in lines and "isuser nobody@localhost" in lines, lines
    users = srv.cli("user", "list").stdout
    assert "carol@localhost" in users and "nobody@localhost" not in users, users
    carol = await xmpp.login(srv, "carol@localhost/c", "carol-pw")
    await carol.online()
    request = await carol.expect_presence(sender=ALICE, ptype="subscribe")
    assert request["from"].bare == ALICE
