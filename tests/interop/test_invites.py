"""Invitations (issue 19 item 7): XEP-0401 ad-hoc commands, XEP-0445
pre-authenticated in-band registration, XEP-0379 pre-authenticated roster
subscription, the landing page and its sign-up form, and the admin API/CLI
that makes, lists and revokes invitations. Registration stays closed
(`[registration] open = false`, the default) in every scenario: the token
is the permission."""

import asyncio
import datetime
import json
import re
import time
import urllib.parse

from xml.etree import ElementTree as ET

import aiohttp
import pytest
from selenium.webdriver.common.by import By
from slixmpp.stanza import StreamFeatures
from slixmpp.xmlstream import ElementBase, register_stanza_plugin

from conftest import PASSWORD
from test_web_client import browser, console, screenshot, wait_for, wait_text
from wxtest.subjects import subject_class

pytestmark = pytest.mark.skipif(subject_class().name != "waxwing", reason="waxwing's invitations")

ALICE = "alice@localhost"
BOB = "bob@localhost"
ADMIN = "admin@localhost"
NS_PARS = "urn:xmpp:pars:0"
NS_IBR_TOKEN = "urn:xmpp:ibr-token:0"
NS_REGISTER = "jabber:iq:register"
NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_DATA = "jabber:x:data"
NS_ROSTER = "jabber:iq:roster"
HTTP = {"listen": {"http": ["127.0.0.1:0"]}}
ADMIN_API = {**HTTP, "admin": {"enabled": True}}


class IbrTokenFeature(ElementBase):
    """XEP-0445 §3: `<register xmlns='urn:xmpp:ibr-token:0'/>` in the stream
    features, so that slixmpp runs our handler when the server offers it."""
    name = "register"
    namespace = NS_IBR_TOKEN
    plugin_attrib = "ibr_token"
    interfaces = set()


register_stanza_plugin(StreamFeatures, IbrTokenFeature)


def invited_client(xmpp, srv, jid, password, token, username=None):
    """A slixmpp client doing XEP-0445 as Conversations does: on the
    ibr-token stream feature (after STARTTLS, before SASL) it sends
    `<preauth/>` with the token, then registers `username` (default: the
    JID's localpart) with XEP-0077, then logs in with SASL as usual.
    Returns (client, future of (step, reply IQ))."""
    client = xmpp.new(srv, jid, password)
    # slixmpp holds back stanzas before the session starts, except its own
    # registration IQs; <preauth/> must go out before SASL.
    client.x._always_send_everything = True
    outcome = asyncio.get_running_loop().create_future()
    user = username or jid.split("@")[0]

    async def on_feature(_features):
        pre = await client.iq(client.make_iq(
            "set", srv.domain, f"<preauth xmlns='{NS_PARS}' token='{token}'/>"))
        if pre["type"] != "result":
            outcome.set_result(("preauth", pre))
            return False
        reg = await client.iq(client.make_iq(
            "set", srv.domain,
            f"<query xmlns='{NS_REGISTER}'><username>{user}</username>"
            f"<password>{password}</password></query>"))
        outcome.set_result(("register", reg))
        return False

    # Before SASL (order 100), after STARTTLS (which restarts the stream).
    client.x.register_feature("ibr_token", on_feature, restart=False, order=50)
    return client, outcome


def explain(res) -> str:
    return f"exit {res.returncode}\n--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}"


def admin_token(srv) -> str:
    res = srv.cli("admin", "token", "create", "ops")
    assert res.returncode == 0, explain(res)
    return res.stdout.strip()


def admin(srv, tok, *args):
    res = srv.cli("admin", *args, "--token", tok, "--url", base(srv))
    assert res.returncode == 0, explain(res)
    return json.loads(res.stdout)


def base(srv) -> str:
    return f"http://{srv.listeners['http'][0]}"


def token_of(uri: str) -> str:
    m = re.search(r"preauth=([0-9A-Za-z]+)", uri)
    assert m, uri
    return m.group(1)


def error_condition(iq) -> str:
    return iq["error"]["condition"]


async def run_command(client, domain, node, fields=None):
    """Executes an ad-hoc command; with `fields`, submits them to its form.
    Returns the final <command/> element (or the error IQ)."""
    start = await client.iq(client.make_iq(
        "set", domain, f"<command xmlns='{NS_COMMANDS}' node='{node}' action='execute'/>"))
    if start["type"] != "result":
        return start
    cmd = start.xml.find(f"{{{NS_COMMANDS}}}command")
    if cmd.get("status") == "completed":
        return cmd
    assert cmd.get("status") == "executing" and cmd.find(f"{{{NS_DATA}}}x") is not None, start
    values = "".join(f"<field var='{k}'><value>{v}</value></field>"
                     for k, v in (fields or {}).items())
    done = await client.iq(client.make_iq("set", domain, f"""
        <command xmlns='{NS_COMMANDS}' node='{node}' sessionid='{cmd.get("sessionid")}'
                 action='complete'><x xmlns='{NS_DATA}' type='submit'>{values}</x></command>"""))
    if done["type"] != "result":
        return done
    return done.xml.find(f"{{{NS_COMMANDS}}}command")


def form_values(cmd) -> dict:
    x = cmd.find(f"{{{NS_DATA}}}x")
    assert x is not None and x.get("type") == "result", cmd
    return {f.get("var"): f.findtext(f"{{{NS_DATA}}}value") for f in x.findall(f"{{{NS_DATA}}}field")}


async def roster_of(client) -> dict:
    res = await client.roster_get()
    assert res["type"] == "result", res
    items = res.xml.find(f"{{{NS_ROSTER}}}query").findall(f"{{{NS_ROSTER}}}item")
    return {i.get("jid"): i.get("subscription") for i in items}


async def wait_for_expiry(expires: str) -> None:
    """Until the wall clock is past an XEP-0082 instant (the server's clock)."""
    until = datetime.datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp()
    while time.time() <= until + 0.2:
        await asyncio.sleep(max(0.05, until + 0.2 - time.time()))


async def page(session, url, method="GET", **kw):
    async with session.request(method, url, **kw) as r:
        return r.status, await r.text(), r.headers


# -- XEP-0445 through the admin CLI ----------------------------------------------

async def test_admin_invitation_creates_an_account_while_registration_is_closed(server, xmpp):
    srv = server(ADMIN_API)
    tok = admin_token(srv)
    made = admin(srv, tok, "invite", "create")
    assert made["uri"] == f"xmpp:localhost?register;preauth={made['token']}", made
    port = srv.listeners["http"][0].rsplit(":", 1)[1]
    assert made["landing_url"] == f"http://localhost:{port}/invite/{made['token']}", made
    assert len(made["token"]) >= 32 and made["kind"] == "register" and made["max_uses"] == 1

    newbie, outcome = invited_client(xmpp, srv, "newbie@localhost", "newbie-pass-1", made["token"])
    assert await newbie.connect() == "session_start", newbie.wire_text()
    step, reply = outcome.result()
    assert (step, reply["type"]) == ("register", "result"), reply
    assert any(NS_IBR_TOKEN in f for f in newbie.features), newbie.features
    await newbie.close()
    await xmpp.login(srv, "newbie@localhost", "newbie-pass-1")

    # Single use: the same token is refused at <preauth/> (XEP-0445 §4).
    again, outcome = invited_client(xmpp, srv, "second@localhost", "second-pass-1", made["token"])
    assert await again.connect() == "failed_auth"
    step, reply = outcome.result()
    assert step == "preauth" and error_condition(reply) == "item-not-found", reply
    listed = admin(srv, tok, "invite", "list")["invites"]
    assert [(i["id"], i["uses"], i["valid"]) for i in listed] == [(made["id"], 1, False)], listed


async def test_expired_revoked_and_unknown_tokens_are_refused(server, xmpp):
    srv = server(ADMIN_API)
    tok = admin_token(srv)
    short = admin(srv, tok, "invite", "create", "--valid-secs", "1")
    revoked = admin(srv, tok, "invite", "create")
    kept = admin(srv, tok, "invite", "create", "--username", "kept")
    listed = {i["id"] for i in admin(srv, tok, "invite", "list")["invites"]}
    assert listed == {short["id"], revoked["id"], kept["id"]}
    # Listing never shows a token.
    listing = srv.cli("admin", "invite", "list", "--token", tok, "--url", base(srv)).stdout
    for made in (short, revoked, kept):
        assert made["token"] not in listing
    assert admin(srv, tok, "invite", "revoke", revoked["id"]) == {"revoked": revoked["id"]}
    assert {i["id"] for i in admin(srv, tok, "invite", "list")["invites"]} == {short["id"], kept["id"]}
    gone = srv.cli("admin", "invite", "revoke", revoked["id"], "--token", tok, "--url", base(srv))
    assert gone.returncode != 0 and "404" in gone.stderr, explain(gone)
    await wait_for_expiry(short["expires"])

    for token in (short["token"], revoked["token"], "0" * 40):
        c, outcome = invited_client(xmpp, srv, "intruder@localhost", "intruder-pass-1", token)
        assert await c.connect() == "failed_auth", c.wire_text()
        step, reply = outcome.result()
        assert step == "preauth" and error_condition(reply) == "item-not-found", reply

    # An invitation for a fixed username creates that account only.
    c, outcome = invited_client(xmpp, srv, "other@localhost", "other-pass-1", kept["token"])
    assert await c.connect() == "failed_auth"
    step, reply = outcome.result()
    assert step == "register" and error_condition(reply) == "not-acceptable", reply
    c, outcome = invited_client(xmpp, srv, "kept@localhost", "kept-pass-1", kept["token"])
    assert await c.connect() == "session_start", c.wire_text()

    async with aiohttp.ClientSession() as s:
        status, body, _ = await page(s, f"{base(srv)}/invite/{short['token']}")
        assert status == 410 and "expired" in body, (status, body)
        status, body, _ = await page(s, f"{base(srv)}/invite/{revoked['token']}")
        assert status == 404 and "revoked" in body, (status, body)
        status, body, _ = await page(s, f"{base(srv)}/invite/{kept['token']}")
        assert status == 410 and "already been used" in body, (status, body)


async def test_too_many_wrong_tokens_end_the_stream(server, xmpp):
    srv = server()
    c = xmpp.new(srv, "guesser@localhost", "guesser-pass-1")
    c.x._always_send_everything = True
    replies = []

    async def on_feature(_features):
        for n in range(3):
            replies.append(await c.iq(c.make_iq(
                "set", srv.domain, f"<preauth xmlns='{NS_PARS}' token='guess{n}'/>")))
        # The fourth is answered with a stream error.
        c.x.send_raw(f"<iq type='set' id='guess3' to='{srv.domain}'>"
                     f"<preauth xmlns='{NS_PARS}' token='guess3'/></iq>")
        return True

    c.x.register_feature("ibr_token", on_feature, restart=True, order=50)
    await c.connect()
    await c.wait_disconnected()
    assert [error_condition(r) for r in replies] == ["item-not-found"] * 3, replies
    assert [e["condition"] for e in c.stream_errors.seen] == ["policy-violation"], c.wire_text()


# -- XEP-0379 and XEP-0401 ad-hoc commands -----------------------------------------

async def test_roster_preauth_makes_inviter_and_invitee_mutual_contacts(server, xmpp):
    srv = server(HTTP, users={ALICE: PASSWORD, BOB: PASSWORD})
    alice = await xmpp.login(srv, f"{ALICE}/phone", PASSWORD)
    await alice.roster_get()
    await alice.online()
    cmd = await run_command(alice, srv.domain, "urn:xmpp:invite#invite")
    values = form_values(cmd)
    assert values["FORM_TYPE"] == "urn:xmpp:invite#invitation", values
    # Users' invitations do not create accounts unless the operator says so.
    assert re.fullmatch(rf"xmpp:{ALICE}\?roster;preauth=[0-9a-f]{{40}}", values["uri"]), values
    assert values["landing-url"].endswith(f"/invite/{token_of(values['uri'])}"), values
    assert values["expire"], values

    # Bob's client follows XEP-0379 §3.4: pre-approves Alice, then asks
    # with the token.
    bob = await xmpp.login(srv, f"{BOB}/laptop", PASSWORD)
    await bob.roster_get()
    await bob.online()
    bob.x.send_presence(pto=ALICE, ptype="subscribed")
    sub = bob.x.make_presence(pto=ALICE, ptype="subscribe")
    sub.append(ET.fromstring(f"<preauth xmlns='{NS_PARS}' token='{token_of(values['uri'])}'/>"))
    sub.send()

    # Nobody is asked anything; both rosters end up with "both".
    await alice.roster_pushes.expect(
        lambda iq: any(i.get("subscription") == "both"
                       for i in iq.xml.iter(f"{{{NS_ROSTER}}}item") if i.get("jid") == BOB),
        "(bob, both)")
    await bob.roster_pushes.expect(
        lambda iq: any(i.get("subscription") == "both"
                       for i in iq.xml.iter(f"{{{NS_ROSTER}}}item") if i.get("jid") == ALICE),
        "(alice, both)")
    assert (await roster_of(alice))[BOB] == "both"
    assert (await roster_of(bob))[ALICE] == "both"
    assert not alice.presences.matching(lambda p: p.xml.get("type") == "subscribe"), \
        "the pre-authenticated request was shown to Alice"

    # The token is spent: used again, it is an ordinary request Alice sees.
    await alice.roster_set(BOB, subscription="remove")
    carol_pw = "carol-pass-1"
    srv.add_user("carol@localhost", carol_pw)
    carol = await xmpp.login(srv, "carol@localhost/c", carol_pw)
    sub = carol.x.make_presence(pto=ALICE, ptype="subscribe")
    sub.append(ET.fromstring(f"<preauth xmlns='{NS_PARS}' token='{token_of(values['uri'])}'/>"))
    sub.send()
    await alice.expect_presence(sender="carol@localhost", ptype="subscribe")
    assert "carol@localhost" not in (await roster_of(alice))


async def test_contact_invitation_with_account_creation(server, xmpp):
    srv = server({**HTTP, "invites": {"users_can_invite_accounts": True}},
                 users={ALICE: PASSWORD})
    alice = await xmpp.login(srv, f"{ALICE}/phone", PASSWORD)
    await alice.roster_get()
    await alice.online()
    values = form_values(await run_command(alice, srv.domain, "urn:xmpp:invite#invite"))
    assert values["uri"].startswith(f"xmpp:{ALICE}?roster;preauth=") and values["uri"].endswith(";ibr=y")
    juliet, outcome = invited_client(xmpp, srv, "juliet@localhost", "juliet-pass-1",
                                     token_of(values["uri"]))
    assert await juliet.connect() == "session_start", juliet.wire_text()
    assert outcome.result()[1]["type"] == "result"
    # XEP-0401 §5.3: the inviter learns of the new contact by a roster push.
    await alice.roster_pushes.expect(
        lambda iq: any(i.get("subscription") == "both"
                       for i in iq.xml.iter(f"{{{NS_ROSTER}}}item")
                       if i.get("jid") == "juliet@localhost"),
        "(juliet, both)")
    assert (await roster_of(juliet))[ALICE] == "both"


async def test_create_account_command_is_for_admins(server, xmpp):
    srv = server({**HTTP, "admins": [ADMIN]}, users={ADMIN: PASSWORD, ALICE: PASSWORD})
    boss = await xmpp.login(srv, f"{ADMIN}/console", PASSWORD)
    alice = await xmpp.login(srv, f"{ALICE}/phone", PASSWORD)
    refused = await run_command(alice, srv.domain, "urn:xmpp:invite#create-account")
    assert refused["type"] == "error" and error_condition(refused) == "forbidden", refused
    items = await alice.iq(alice.make_iq(
        "get", srv.domain, f"<query xmlns='http://jabber.org/protocol/disco#items' node='{NS_COMMANDS}'/>"))
    nodes = [i.get("node") for i in items.xml.iter("{http://jabber.org/protocol/disco#items}item")]
    assert "urn:xmpp:invite#invite" in nodes and "urn:xmpp:invite#create-account" not in nodes, nodes

    cmd = await run_command(boss, srv.domain, "urn:xmpp:invite#create-account",
                            {"username": "romeo", "roster-subscription": "1"})
    values = form_values(cmd)
    assert re.fullmatch(r"xmpp:romeo@localhost\?register;preauth=[0-9a-f]{40}", values["uri"]), values
    # The name is reserved for the invitee.
    taken = await run_command(boss, srv.domain, "urn:xmpp:invite#create-account",
                              {"username": "romeo"})
    assert taken["type"] == "error" and error_condition(taken) == "conflict", taken
    romeo, outcome = invited_client(xmpp, srv, "romeo@localhost", "romeo-pass-1",
                                    token_of(values["uri"]))
    assert await romeo.connect() == "session_start", romeo.wire_text()
    assert (await roster_of(romeo))[ADMIN] == "both"


# -- the landing page --------------------------------------------------------------

async def test_landing_page_form_creates_the_account(server, xmpp):
    srv = server(ADMIN_API, users={ALICE: PASSWORD})
    tok = admin_token(srv)
    made = admin(srv, tok, "invite", "create", "--inviter", ALICE)
    url = f"{base(srv)}/invite/{made['token']}"
    async with aiohttp.ClientSession() as s:
        status, body, headers = await page(
            s, url, headers={"User-Agent": "Mozilla/5.0 (Linux; Android 14; Pixel 8)"})
        assert status == 200, body
        assert headers["Cache-Control"] == "no-store"
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "<script" not in body
        assert f"{ALICE} invites you to chat" in body
        assert f'href="xmpp:{ALICE}?roster;preauth={made["token"]};ibr=y"' in body
        assert "<svg" in body and 'id="qr"' in body
        # The visitor's platform is listed first.
        assert body.index('id="platform-android"') < body.index('id="platform-ios"')
        assert "Android (your device)" in body and "Conversations" in body

        form = {"username": "newcomer", "password": "newcomer-pass-1",
                "password_again": "newcomer-pass-1"}
        # Another site cannot submit it for a visitor.
        status, body, _ = await page(s, url, "POST", data=form,
                                     headers={"Origin": "https://evil.example"})
        assert status == 403, body
        mismatch = {**form, "password_again": "something-else"}
        status, body, _ = await page(s, url, "POST", data=mismatch, headers={"Origin": base(srv)})
        assert status == 400 and "not the same" in body, body
        status, body, _ = await page(s, url, "POST", data=form, headers={"Origin": base(srv)})
        assert status == 200, body
        assert "newcomer@localhost" in body and "Welcome" in body
        assert f"You and {ALICE} are now contacts" in body
        # Used: the page now says so, and a second sign-up is refused.
        status, body, _ = await page(s, url)
        assert status == 410 and "already been used" in body
        again = {**form, "username": "second"}
        status, body, _ = await page(s, url, "POST", data=again, headers={"Origin": base(srv)})
        assert status == 410, body
    newcomer = await xmpp.login(srv, "newcomer@localhost", "newcomer-pass-1")
    assert (await roster_of(newcomer))[ALICE] == "both"
    probe = xmpp.new(srv, "second@localhost", "newcomer-pass-1")
    assert await probe.connect() == "failed_auth"


def test_admin_api_invite_endpoints_need_the_token(server):
    srv = server(ADMIN_API)
    tok = admin_token(srv)
    import urllib.error
    import urllib.request
    for method, path, body in [("GET", "/admin/api/invites", None),
                               ("POST", "/admin/api/invites", {}),
                               ("DELETE", "/admin/api/invites/abc", None)]:
        for presented in (None, "wxa_wrong", tok[:-1]):
            req = urllib.request.Request(
                base(srv) + path, method=method,
                data=json.dumps(body).encode() if body is not None else None)
            req.add_header("Content-Type", "application/json")
            if presented:
                req.add_header("Authorization", f"Bearer {presented}")
            try:
                urllib.request.urlopen(req, timeout=10)
                raise AssertionError(f"{method} {path} with {presented!r} answered")
            except urllib.error.HTTPError as e:
                assert e.code == 401, (method, path, e.code)
    # Bad input is a 400 with a reason, not a 500.
    req = urllib.request.Request(base(srv) + "/admin/api/invites", method="POST",
                                 data=json.dumps({"username": "not a name@"}).encode())
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {tok}")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("a bad username was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 400 and "username" in e.read().decode()


async def test_landing_page_renders_and_signs_up_in_chromium(server, xmpp, tmp_path):
    """The page as a friend sees it in a real browser: the invitation, the
    QR code, the app list, the button; then the form creates the account."""
    srv = server(ADMIN_API)
    tok = admin_token(srv)
    made = admin(srv, tok, "invite", "create")
    port = srv.listeners["http"][0].rsplit(":", 1)[1]
    driver = browser()
    try:
        driver.get(f"http://localhost:{port}/invite/{made['token']}")
        assert "You are invited to join localhost" in wait_for(driver, "h1").text
        qr = wait_for(driver, "#qr svg")
        assert qr.size["width"] >= 200 and qr.size["height"] >= 200, qr.size
        link = wait_for(driver, "#xmpp-link")
        assert link.get_attribute("href") == f"xmpp:localhost?register;preauth={made['token']}"
        assert wait_for(driver, "#apps li a").get_attribute("href").startswith("https://")
        wait_for(driver, "#username").send_keys("webby")
        wait_for(driver, "#password").send_keys("webby-pass-1")
        wait_for(driver, "#password_again").send_keys("webby-pass-1")
        screenshot(driver, tmp_path, "invite-landing-page")
        wait_for(driver, "#create").click()
        wait_text(driver, "#account", "webby@localhost")
        assert wait_for(driver, "#web-client").get_attribute("href") == f"http://localhost:{port}/"
        screenshot(driver, tmp_path, "invite-account-created")
        log = console(driver)
        assert "Content Security Policy" not in log and "Refused to" not in log, log
    finally:
        driver.quit()
    await xmpp.login(srv, "webby@localhost", "webby-pass-1")
