"""XEP-0227 export of accounts and their data, import into a fresh server,
and the imported account used by a real client (issue 19, "Backups")."""

import xml.etree.ElementTree as ET

import pytest

from conftest import PASSWORD
from wxtest.subjects import subject_class

pytestmark = pytest.mark.skipif(not subject_class().has_cli,
                                reason=f"{subject_class().name}: no waxwing CLI")

ALICE = "alice@localhost"
BOB = "bob@localhost"
CAROL = "carol@localhost"
PIE = "urn:xmpp:pie:0"
PUBSUB = "http://jabber.org/protocol/pubsub"


def import_stopped(srv, path):
    """`waxwing import` needs the server stopped; it is started again after."""
    running = srv.cli("import", str(path))
    assert running.returncode != 0 and "stop" in running.stderr, explain(running)
    srv.stop()
    res = srv.cli("import", str(path))
    srv.exit_code = None
    srv.proc = None
    srv.start()
    return res


def explain(res) -> str:
    return f"exit {res.returncode}\n--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}"


async def ok(client, itype, payload, to=None):
    res = await client.iq(client.make_iq(itype, to, payload))
    assert res["type"] == "result", res
    return res


async def fill_alice(xmpp, srv):
    """Alice's data of every kind, made through the protocol."""
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    await alice.roster_set(BOB, name="Bobby", groups=["Friends", "Work"])
    await ok(alice, "set", "<vCard xmlns='vcard-temp'><FN>Alice Liddell</FN>"
                           "<NICKNAME>al</NICKNAME></vCard>")
    await ok(alice, "set", "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'>"
                           "<colour>teal</colour></prefs></query>")
    await ok(alice, "set", f"<pubsub xmlns='{PUBSUB}'><publish node='urn:example:mood'>"
                           "<item id='current'><mood xmlns='urn:example:mood'>happy</mood></item>"
                           "</publish></pubsub>")
    await alice.close()
    bob = await xmpp.login(srv, BOB, PASSWORD)
    await bob.online()
    bob.send_message(ALICE, "while you were out")
    await bob.sync()
    await bob.close()


async def check_alice(xmpp, srv):
    """What fill_alice made, seen by Alice on `srv` with her old password."""
    alice = await xmpp.login(srv, ALICE, PASSWORD, mech="SCRAM-SHA-256")
    roster = await alice.roster_get()
    items = {i.get("jid"): i for i in roster.xml.iter("{jabber:iq:roster}item")}
    assert BOB in items, roster
    assert items[BOB].get("name") == "Bobby", roster
    assert sorted(g.text for g in items[BOB].iter("{jabber:iq:roster}group")) == ["Friends", "Work"]
    vcard = await ok(alice, "get", "<vCard xmlns='vcard-temp'/>")
    assert vcard.xml.find(".//{vcard-temp}FN").text == "Alice Liddell", vcard
    private = await ok(alice, "get", "<query xmlns='jabber:iq:private'>"
                                     "<prefs xmlns='urn:example:prefs'/></query>")
    assert private.xml.find(".//{urn:example:prefs}colour").text == "teal", private
    items = await ok(alice, "get", f"<pubsub xmlns='{PUBSUB}'><items node='urn:example:mood'/></pubsub>",
                     to=ALICE)
    mood = items.xml.find(".//{urn:example:mood}mood")
    assert mood is not None and mood.text == "happy", items
    await alice.online()
    await alice.expect_message(body="while you were out", sender=BOB)
    return alice


async def test_export_one_user_then_import_into_a_fresh_server(server, xmpp, tmp_path):
    srv = server(users={ALICE: PASSWORD, BOB: PASSWORD, CAROL: PASSWORD})
    await fill_alice(xmpp, srv)

    out = tmp_path / "alice.xml"
    res = srv.cli("export", str(out), "--user", ALICE)
    assert res.returncode == 0, explain(res)
    assert out.stat().st_mode & 0o777 == 0o600
    doc = ET.parse(out).getroot()
    assert doc.tag == f"{{{PIE}}}server-data"
    users = [u.get("name") for u in doc.iter(f"{{{PIE}}}user")]
    assert users == ["alice"], users
    scram = doc.findall(f".//{{{PIE}#scram}}scram-credentials")
    assert {s.get("mechanism") for s in scram} == {"SCRAM-SHA-1", "SCRAM-SHA-256"}
    assert "password=" not in out.read_text(), "a password in the export"
    # Only client data: no FAST tokens or other internal keys.
    assert "fast:" not in out.read_text()

    fresh = server()
    res = import_stopped(fresh, out)
    assert res.returncode == 0, explain(res)
    assert f"imported {ALICE}" in res.stdout, explain(res)
    await check_alice(xmpp, fresh)

    # A second import does not overwrite the account: it is reported.
    again = import_stopped(fresh, out)
    assert again.returncode != 0, explain(again)
    assert "already exists" in again.stderr, explain(again)


async def test_export_all_users_then_import(server, xmpp, tmp_path):
    srv = server(users={ALICE: PASSWORD, BOB: PASSWORD, CAROL: PASSWORD})
    await fill_alice(xmpp, srv)
    out = tmp_path / "all.xml"
    res = srv.cli("export", str(out))
    assert res.returncode == 0, explain(res)
    fresh = server()
    res = import_stopped(fresh, out)
    assert res.returncode == 0, explain(res)
    listed = fresh.cli("user", "list")
    assert sorted(listed.stdout.split()) == [ALICE, BOB, CAROL], explain(listed)
    await check_alice(xmpp, fresh)
    await xmpp.login(fresh, CAROL, PASSWORD, mech="SCRAM-SHA-1")


def test_import_refuses_a_document_that_is_not_xep0227(server, tmp_path):
    srv = server()
    bad = tmp_path / "bad.xml"
    bad.write_text("<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>")
    res = import_stopped(srv, bad)
    assert res.returncode != 0, explain(res)
    listed = srv.cli("user", "list")
    assert listed.stdout.strip() == "", explain(listed)
