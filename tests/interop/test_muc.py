"""Group chat (issue #7) driven by slixmpp's own MUC plugins: XEP-0045
(rooms, roles, affiliations, history, subject, invitations, destruction),
XEP-0249 direct invitations, XEP-0313 on a room with RSM paging, XEP-0410
self-ping, XEP-0421 occupant ids, XEP-0425 moderation, and the XEP-0433
channel directory of the MUC service, plus persistence across a restart.

slixmpp's ``xep_0045`` has a call for most of it (``join_muc_wait``,
``set_room_config``, ``set_role``, ``set_affiliation``, ``destroy``,
``invite``, ``request_voice`` …). Where it has none — nickname
registration (§7.10), answering a voice request (§8.6), XEP-0433 search —
the stanzas are built by hand with ``make_iq``/``make_message``; each
place says so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from xml.etree import ElementTree as ET

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError, PresenceError
from slixmpp.plugins.xep_0410.self_ping import PingStatus

from conftest import PASSWORD
from wxtest import STEP_TIMEOUT, subjects
from wxtest.client import barrier

pytestmark = pytest.mark.skipif(
    subjects.subject_name() != "waxwing",
    reason="the Prosody subject's config has no MUC component")

ALICE = "alice@localhost"
BOB = "bob@localhost"
CAROL = "carol@localhost"
DAVE = "dave@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD, CAROL: PASSWORD, DAVE: PASSWORD}
SERVICE = "conference.localhost"

NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = f"{NS_MUC}#user"
NS_ROOMCONFIG = f"{NS_MUC}#roomconfig"
NS_REQUEST = f"{NS_MUC}#request"
NS_DATA = "jabber:x:data"
NS_REGISTER = "jabber:iq:register"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"
NS_SID = "urn:xmpp:sid:0"
NS_SEARCH = "urn:xmpp:channel-search:0:search"
NS_SEARCH_PARAMS = "urn:xmpp:channel-search:0:search-params"
NS_RETRACT = "urn:xmpp:message-retract:1"
NS_MODERATE = "urn:xmpp:message-moderate:1"
NS_RSM = "http://jabber.org/protocol/rsm"

PLUGINS = ["xep_0004", "xep_0045", "xep_0059", "xep_0249", "xep_0297", "xep_0313",
           "xep_0359", "xep_0410", "xep_0421", "xep_0425"]


def room(name: str) -> str:
    return f"{name}@{SERVICE}"


# -- helpers --------------------------------------------------------------------

async def user(xmpp, srv, jid: str, resource: str = "pc"):
    client = xmpp.new(srv, f"{jid}/{resource}", PASSWORD)
    for p in PLUGINS:
        client.x.register_plugin(p)
    await client.login()
    await client.online()
    return client


def muc(client):
    return client.x.plugin["xep_0045"]


def codes(stanza) -> set[int]:
    return {int(s.get("code")) for s in stanza.xml.iter(f"{{{NS_USER}}}status")}


def item(stanza) -> ET.Element:
    el = stanza.xml.find(f"{{{NS_USER}}}x/{{{NS_USER}}}item")
    assert el is not None, f"no muc#user item in {stanza}"
    return el


def occupant_id(stanza) -> str | None:
    el = stanza.xml.find(f"{{{NS_OCCUPANT_ID}}}occupant-id")
    return el.get("id") if el is not None else None


def stanza_id(msg, by: str) -> str:
    for el in msg.xml.iter(f"{{{NS_SID}}}stanza-id"):
        if el.get("by") == by:
            return el.get("id")
    raise AssertionError(f"no stanza-id by {by} in {msg}")


async def join(client, room_jid: str, nick: str, **kw):
    """Joins with slixmpp's join_muc_wait; returns (self presence, subject
    message, presences of the other occupants, history messages)."""
    own, subject, occupants, history = await muc(client).join_muc_wait(
        JID(room_jid), nick, timeout=STEP_TIMEOUT, **kw)
    # slixmpp counts the self-presence among the occupants.
    others = [p for p in occupants if p["from"] != own["from"]]
    assert len(others) == len(occupants) - 1, f"no single self-presence among {occupants}"
    return own, subject, others, history


async def join_refused(client, room_jid: str, nick: str, **kw) -> PresenceError:
    with pytest.raises(PresenceError) as e:
        await join(client, room_jid, nick, **kw)
    return e.value


def value(fields, var: str):
    """A field's value; slixmpp gives hidden fields as a list."""
    v = fields[var]["value"]
    return v[0] if isinstance(v, list) and len(v) == 1 else v


def submit_form(client, values: dict | None = None, form_type: str = NS_ROOMCONFIG, types=None):
    form = client.x.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value=form_type)
    for var, value in (values or {}).items():
        form.add_field(var=var, ftype=(types or {}).get(var), value=value)
    return form


async def configure(client, room_jid: str, values: dict):
    """Fetches the configuration form (§10.2), checks that every field we set
    is in it, and submits those values with the types the server declared."""
    form = await muc(client).get_room_config(JID(room_jid))
    fields = form.get_fields()
    missing = [v for v in values if v not in fields]
    assert not missing, f"config form lacks {missing}: {form}"
    types = {var: fields[var]["type"] for var in values}
    await muc(client).set_room_config(JID(room_jid), submit_form(client, values, types=types))
    return form


async def create(client, room_jid: str, nick: str, values: dict | None = None):
    """Creates a room: join (201, locked), then the configuration form
    (§10.1.3, reserved room) or an empty submission (§10.1.2, instant room)."""
    own, _subject, _occupants, _history = await join(client, room_jid, nick)
    assert {110, 201} <= codes(own), f"new room must say 110 and 201: {own}"
    assert item(own).get("affiliation") == "owner" and item(own).get("role") == "moderator", own
    if values:
        await configure(client, room_jid, values)
    else:
        await muc(client).set_room_config(JID(room_jid), submit_form(client))
    return own


async def say(client, room_jid: str, body: str):
    msg = client.x.make_message(mto=room_jid, mbody=body, mtype="groupchat")
    msg["id"] = uuid.uuid4().hex
    msg.send()
    return msg


async def expect_groupchat(client, room_jid: str, body: str, nick: str | None = None):
    def pred(m):
        return (m["type"] == "groupchat" and m["body"] == body and m["from"].bare == room_jid
                and (nick is None or m["from"].resource == nick))
    return await client.messages.expect(pred, f"(groupchat {body!r} in {room_jid})")


async def expect_muc_presence(client, room_jid: str, nick: str, pred=lambda p: True, desc=""):
    full = f"{room_jid}/{nick}"
    return await client.presences.expect(lambda p: str(p["from"]) == full and pred(p),
                                         f"(presence of {full} {desc})")


async def disco_info(client, jid: str):
    iq = client.make_iq("get", jid, f"<query xmlns='{NS_DISCO_INFO}'/>")
    res = await client.iq(iq)
    assert res["type"] == "result", res
    q = res.xml.find(f"{{{NS_DISCO_INFO}}}query")
    features = {f.get("var") for f in q.findall(f"{{{NS_DISCO_INFO}}}feature")}
    info = {}
    for x in q.findall(f"{{{NS_DATA}}}x"):
        for f in x.findall(f"{{{NS_DATA}}}field"):
            info[f.get("var")] = [v.text or "" for v in f.findall(f"{{{NS_DATA}}}value")]
    return features, info


async def room_search(client, q: str | None = None, all_rooms: bool = False, max_: int | None = None,
                      after: str | None = None):
    """XEP-0433 (no slixmpp plugin): a search on the MUC service."""
    fields = f"<field var='FORM_TYPE' type='hidden'><value>{NS_SEARCH_PARAMS}</value></field>"
    if q is not None:
        fields += f"<field var='q'><value>{q}</value></field>"
    if all_rooms:
        fields += "<field var='all'><value>true</value></field>"
    rsm = ""
    if max_ is not None or after is not None:
        rsm = f"<set xmlns='{NS_RSM}'>"
        rsm += f"<max>{max_}</max>" if max_ is not None else ""
        rsm += f"<after>{after}</after>" if after is not None else ""
        rsm += "</set>"
    iq = client.make_iq("get", SERVICE, f"<search xmlns='{NS_SEARCH}'>"
                        f"<x xmlns='{NS_DATA}' type='submit'>{fields}</x>{rsm}</search>")
    res = await client.iq(iq)
    assert res["type"] == "result", res
    result = res.xml.find(f"{{{NS_SEARCH}}}result")
    assert result is not None, res
    items = []
    for it in result.findall(f"{{{NS_SEARCH}}}item"):
        entry = {"address": it.get("address")}
        for child in it:
            entry[child.tag.split("}", 1)[1]] = child.text or ""
        items.append(entry)
    last = result.find(f"{{{NS_RSM}}}set/{{{NS_RSM}}}last")
    count = result.find(f"{{{NS_RSM}}}set/{{{NS_RSM}}}count")
    return items, (last.text if last is not None else None), \
        (int(count.text) if count is not None else None)


# -- creation and configuration ----------------------------------------------------

async def test_instant_room_is_locked_until_the_owner_submits_the_form(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    r = room("instant")
    own, subject, occupants, history = await join(alice, r, "alice")
    assert {110, 201} <= codes(own), own
    assert occupants == [] and history == [], (occupants, history)
    # §10.1.1: nobody else may enter a room that awaits its configuration.
    err = await join_refused(bob, r, "bob")
    assert err.condition == "item-not-found", err.presence
    # §10.1.2: an empty submission makes an instant room with the defaults.
    await muc(alice).set_room_config(JID(r), submit_form(alice))
    own, _, occupants, _ = await join(bob, r, "bob")
    assert 110 in codes(own) and 201 not in codes(own), own
    assert [str(p["from"]) for p in occupants] == [f"{r}/alice"], occupants
    await expect_muc_presence(alice, r, "bob", lambda p: p.xml.get("type") is None)


async def test_reserved_room_configuration_form_round_trip(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    r = room("reserved")
    await join(alice, r, "alice")
    form = await muc(alice).get_room_config(JID(r))
    assert form["type"] == "form", form
    fields = form.get_fields()
    assert value(fields, "FORM_TYPE") == NS_ROOMCONFIG, form
    for var in ("muc#roomconfig_roomname", "muc#roomconfig_roomdesc", "muc#roomconfig_persistentroom",
                "muc#roomconfig_publicroom", "muc#roomconfig_membersonly",
                "muc#roomconfig_moderatedroom", "muc#roomconfig_passwordprotectedroom",
                "muc#roomconfig_roomsecret", "muc#roomconfig_maxusers", "muc#roomconfig_whois",
                "muc#roomconfig_changesubject", "muc#roomconfig_enablelogging",
                "muc#roomconfig_roomowners", "muc#roomconfig_roomadmins",
                "muc#roomconfig_allowinvites", "muc#roomconfig_allowpm",
                "muc#roomconfig_lang", "muc#roomconfig_getmemberlist",
                "muc#roomconfig_presencebroadcast", "muc#roomconfig_allowvoicerequests"):
        assert var in fields, f"{var} missing from the config form"
    values = {
        "muc#roomconfig_roomname": "Reading Room",
        "muc#roomconfig_roomdesc": "Quiet, please",
        "muc#roomconfig_lang": "en",
        "muc#roomconfig_persistentroom": True,
        "muc#roomconfig_publicroom": True,
        "muc#roomconfig_moderatedroom": True,
        "muc#roomconfig_whois": "anyone",
        "muc#roomconfig_changesubject": False,
        "muc#roomconfig_maxusers": "20",
        "muc#roomconfig_enablelogging": True,
        "muc#roomconfig_roomadmins": [CAROL],
    }
    await configure(alice, r, values)
    after = (await muc(alice).get_room_config(JID(r))).get_fields()
    assert after["muc#roomconfig_roomname"]["value"] == "Reading Room"
    assert after["muc#roomconfig_roomdesc"]["value"] == "Quiet, please"
    assert after["muc#roomconfig_persistentroom"]["value"] is True
    assert after["muc#roomconfig_moderatedroom"]["value"] is True
    assert after["muc#roomconfig_whois"]["value"] == "anyone"
    assert after["muc#roomconfig_maxusers"]["value"] == "20"
    assert [str(j) for j in after["muc#roomconfig_roomadmins"]["value"]] == [CAROL]
    assert [str(j) for j in after["muc#roomconfig_roomowners"]["value"]] == [ALICE]

    # §6.4: disco#info shows the configuration, with muc#roominfo.
    features, info = await disco_info(bob, r)
    for f in (NS_MUC, "muc_persistent", "muc_public", "muc_moderated", "muc_nonanonymous",
              "muc_open", "muc_unsecured", "urn:xmpp:mam:2", NS_OCCUPANT_ID):
        assert f in features, f"{f} not in disco#info features {features}"
    assert info["FORM_TYPE"] == [f"{NS_MUC}#roominfo"], info
    assert info["muc#roominfo_description"] == ["Quiet, please"], info
    assert info["muc#roominfo_lang"] == ["en"], info
    assert info["muc#roominfo_occupants"] == ["1"], info
    assert info["muc#roomconfig_changesubject"] == ["0"], info
    assert info["muc#roominfo_subjectmod"] == ["0"], info
    assert info["muc#roomconfig_roomname"] == ["Reading Room"], info
    assert info["muc#roominfo_subject"] == [""], info
    assert info["muc#roominfo_contactjid"] == [ALICE], info

    # Non-anonymous and logged: a joiner is told so (100, 170); moderated:
    # a newcomer without affiliation is a visitor.
    own, *_ = await join(bob, r, "bob")
    assert {110, 100, 170} <= codes(own), own
    assert item(own).get("role") == "visitor", own

    # §10.2.1: a change while occupied is announced with 104 (and 173 for
    # becoming semi-anonymous); only the owner may configure.
    await configure(alice, r, {"muc#roomconfig_whois": "moderators"})
    note = await bob.messages.expect(lambda m: m["from"] == JID(r) and 104 in codes(m),
                                     "(config change notice)")
    assert 173 in codes(note), note
    with pytest.raises(IqError) as e:
        await muc(bob).get_room_config(JID(r))
    assert e.value.condition == "forbidden", e.value.iq


async def test_owner_cancelling_the_initial_form_destroys_the_room(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    r = room("cancelled")
    await join(alice, r, "alice")
    await muc(alice).cancel_config(JID(r))
    gone = await expect_muc_presence(alice, r, "alice", lambda p: p.xml.get("type") == "unavailable")
    assert gone.xml.find(f"{{{NS_USER}}}x/{{{NS_USER}}}destroy") is not None, gone
    # A fresh join creates a new room (201 again).
    own, *_ = await join(alice, r, "alice")
    assert 201 in codes(own), own


# -- joining, leaving, nicks ----------------------------------------------------------

async def test_join_leave_nick_conflict_and_nick_change(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    carol = await user(xmpp, srv, CAROL)
    r = room("lobby")
    await create(alice, r, "alice")
    own, _, occupants, _ = await join(bob, r, "bob")
    assert item(own).get("role") == "participant" and item(own).get("affiliation") == "none", own
    # Semi-anonymous by default: a participant does not see real JIDs, a moderator does.
    assert [str(p["from"]) for p in occupants] == [f"{r}/alice"]
    assert item(occupants[0]).get("jid") is None, occupants[0]
    seen = await expect_muc_presence(alice, r, "bob", lambda p: p.xml.get("type") is None)
    assert item(seen).get("jid") == f"{BOB}/pc", seen

    # §7.2.9: a nickname in use by someone else is a conflict (409).
    err = await join_refused(carol, r, "bob")
    assert err.condition == "conflict" and err.etype == "cancel", err.presence

    # §7.6: nick change: unavailable with 303 and the new nick, then available.
    carol_own, *_ = await join(carol, r, "carol")
    new = await muc(bob).set_self_nick(JID(r), "robert", timeout=STEP_TIMEOUT)
    assert new == "robert"
    left = await expect_muc_presence(carol, r, "bob", lambda p: p.xml.get("type") == "unavailable")
    assert 303 in codes(left) and item(left).get("nick") == "robert", left
    await expect_muc_presence(carol, r, "robert", lambda p: p.xml.get("type") is None)
    # Changing to a nick in use is a conflict, and nothing changes.
    bob.x.send_presence(pto=f"{r}/carol")
    conflict = await bob.presences.expect(
        lambda p: p.xml.get("type") == "error" and str(p["from"]) == f"{r}/carol", "(nick conflict)")
    assert conflict["error"]["condition"] == "conflict", conflict

    # §7.14: leaving: everyone (the leaver too, with 110) gets unavailable.
    muc(bob).leave_muc(JID(r), "robert")
    mine = await expect_muc_presence(bob, r, "robert",
                                     lambda p: p.xml.get("type") == "unavailable" and 110 in codes(p))
    assert item(mine).get("role") == "none", mine
    await expect_muc_presence(carol, r, "robert", lambda p: p.xml.get("type") == "unavailable"
                              and 303 not in codes(p))
    # Not an occupant any more: groupchat messages are refused.
    msg = await say(bob, r, "still here?")
    err = await bob.messages.expect(lambda m: m["type"] == "error" and m["id"] == msg["id"],
                                    "(error for a non-occupant's groupchat)")
    assert err["error"]["condition"] == "not-acceptable", err
    # A presence update (no <x/>) from someone not in the room is a client
    # out of sync: answered with a kick (110, 307, 333), not a silent join.
    bob.x.send_presence(pto=f"{r}/robert", pshow="away")
    kick = await expect_muc_presence(bob, r, "robert", lambda p: p.xml.get("type") == "unavailable"
                                     and 333 in codes(p))
    assert {110, 307, 333} <= codes(kick), kick
    await barrier(bob, carol)
    assert not carol.presences.matching(
        lambda p: str(p["from"]) == f"{r}/robert" and p.xml.get("type") is None
        and p["show"] == "away"), "the out-of-sync presence joined the room"


async def test_an_error_from_an_occupant_removes_it_with_333(server, xmpp):
    """§16.1: a session that answers the room with an error is gone."""
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    r = room("flaky")
    await create(alice, r, "alice")
    await join(bob, r, "bob")
    bob.x.send_presence(pto=f"{r}/bob", ptype="error")
    gone = await expect_muc_presence(alice, r, "bob", lambda p: p.xml.get("type") == "unavailable")
    assert 333 in codes(gone) and item(gone).get("role") == "none", gone
    # It is no longer an occupant.
    msg = await say(bob, r, "am I here?")
    err = await bob.messages.expect(lambda m: m["type"] == "error" and m["id"] == msg["id"],
                                    "(error for a removed occupant)")
    assert err["error"]["condition"] == "not-acceptable", err


async def test_history_on_join_honours_maxstanzas_maxchars_seconds_since(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    r = room("history")
    await create(alice, r, "alice")
    bodies = [f"line {i}" for i in range(5)]
    for b in bodies:
        await say(alice, r, b)
        await expect_groupchat(alice, r, b)

    async def history(**kw):
        nick = f"bob{uuid.uuid4().hex[:6]}"
        _, subject, _, hist = await join(bob, r, nick, **kw)
        muc(bob).leave_muc(JID(r), nick)
        await expect_muc_presence(bob, r, nick, lambda p: p.xml.get("type") == "unavailable")
        for m in hist:
            delay = m.xml.find("{urn:xmpp:delay}delay")
            assert delay is not None and delay.get("from") == r and delay.get("stamp"), m
            assert m["from"] == JID(f"{r}/alice"), m
        return [m["body"] for m in hist]

    assert await history() == bodies, "default history"
    assert await history(maxstanzas=2) == bodies[-2:]
    assert await history(maxstanzas=0) == []
    assert await history(maxchars=0) == []
    assert await history(maxchars=1) == [], "no stanza fits in one character"
    assert await history(maxchars=100_000) == bodies
    assert await history(maxstanzas=3, seconds=3600) == bodies[-3:], "limits combine"
    assert await history(seconds=3600) == bodies
    assert await history(seconds=0) == []
    now = dt.datetime.now(dt.timezone.utc)
    assert await history(since=now - dt.timedelta(hours=1)) == bodies
    assert await history(since=now + dt.timedelta(hours=1)) == []


async def test_subject_is_shown_on_join_and_restricted_by_configuration(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    r = room("topical")
    await create(alice, r, "alice", {"muc#roomconfig_changesubject": False})
    _, subject, _, _ = await join(bob, r, "bob")
    # §7.2.15: no subject yet is an empty <subject/>.
    empty = subject.xml.find("{jabber:client}subject")
    assert empty is not None and not empty.text and subject["body"] == "", subject
    muc(alice).set_subject(r, "Today: ravens")
    got = await bob.messages.expect(lambda m: m["subject"] == "Today: ravens", "(subject change)")
    assert got["from"] == JID(f"{r}/alice") and got["type"] == "groupchat", got
    # A participant may not change it when the room says so (§8.1).
    muc(bob).set_subject(r, "Today: crows")
    err = await bob.messages.expect(lambda m: m["type"] == "error", "(subject refused)")
    assert err["error"]["condition"] == "forbidden", err
    await barrier(alice, bob)
    assert not bob.messages.matching(lambda m: m["subject"] == "Today: crows" and m["type"] != "error")
    # A later joiner gets the subject, from the occupant who set it, last.
    carol = await user(xmpp, srv, CAROL)
    _, subject, _, _ = await join(carol, r, "carol")
    assert subject["subject"] == "Today: ravens" and subject["from"] == JID(f"{r}/alice"), subject


# -- roles and affiliations -----------------------------------------------------------

async def test_kick_ban_voice_and_affiliation_changes(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    carol = await user(xmpp, srv, CAROL)
    dave = await user(xmpp, srv, DAVE)
    r = room("court")
    await create(alice, r, "alice")
    for c, nick in ((bob, "bob"), (carol, "carol"), (dave, "dave")):
        await join(c, r, nick)

    # Voice revoked (§8.4) and granted back (§8.3): presence shows the role.
    await muc(alice).set_role(r, "bob", "visitor", reason="calm down")
    p = await expect_muc_presence(carol, r, "bob", lambda p: item(p).get("role") == "visitor")
    mine = await expect_muc_presence(bob, r, "bob", lambda p: item(p).get("role") == "visitor")
    assert 110 in codes(mine), mine
    await say(bob, r, "can I speak?")
    err = await bob.messages.expect(lambda m: m["type"] == "error", "(visitor may not speak)")
    assert err["error"]["condition"] == "forbidden", err
    await muc(alice).set_role(r, "bob", "participant")
    await expect_muc_presence(carol, r, "bob", lambda p: item(p).get("role") == "participant")
    # A participant may not change roles.
    with pytest.raises(IqError) as e:
        await muc(carol).set_role(r, "bob", "visitor")
    assert e.value.condition in ("forbidden", "not-allowed"), e.value.iq

    # Affiliations (§9.3, §10.3, §10.6): member, admin, owner, shown to everyone.
    for aff, role in (("member", "participant"), ("admin", "moderator"), ("owner", "moderator")):
        await muc(alice).set_affiliation(r, aff, jid=CAROL)
        p = await expect_muc_presence(dave, r, "carol",
                                      lambda p, aff=aff: item(p).get("affiliation") == aff)
        assert item(p).get("role") == role, p
    await muc(alice).set_affiliation(r, "member", jid=CAROL)
    await expect_muc_presence(dave, r, "carol", lambda p: item(p).get("affiliation") == "member")
    await muc(alice).set_affiliation(r, "member", jid=DAVE)
    members = {str(j) for j in await muc(alice).get_affiliation_list(r, "member")}
    assert members == {CAROL, DAVE}, members
    owners = {str(j) for j in await muc(alice).get_affiliation_list(r, "owner")}
    assert owners == {ALICE}, owners
    # Nobody but an admin may read the admin list.
    with pytest.raises(IqError) as e:
        await muc(bob).get_affiliation_list(r, "admin")
    assert e.value.condition == "forbidden", e.value.iq
    # The last owner cannot step down (§10.6).
    with pytest.raises(IqError) as e:
        await muc(alice).set_affiliation(r, "member", jid=ALICE)
    assert e.value.condition == "conflict", e.value.iq

    # Kick (§8.2): 307, actor and reason; the kicked one may come back.
    await muc(alice).set_role(r, "dave", "none", reason="out")
    kicked = await expect_muc_presence(dave, r, "dave", lambda p: p.xml.get("type") == "unavailable")
    assert {110, 307} <= codes(kicked), kicked
    assert item(kicked).find(f"{{{NS_USER}}}reason").text == "out", kicked
    assert item(kicked).find(f"{{{NS_USER}}}actor").get("nick") == "alice", kicked
    seen = await expect_muc_presence(carol, r, "dave", lambda p: p.xml.get("type") == "unavailable")
    assert 307 in codes(seen) and 110 not in codes(seen), seen
    await join(dave, r, "dave")

    # Ban (§9.1): 301, and a banned user cannot come back.
    await muc(alice).set_affiliation(r, "outcast", jid=BOB, reason="spam")
    banned = await expect_muc_presence(bob, r, "bob", lambda p: p.xml.get("type") == "unavailable")
    assert {110, 301} <= codes(banned), banned
    await expect_muc_presence(carol, r, "bob", lambda p: p.xml.get("type") == "unavailable"
                              and 301 in codes(p))
    err = await join_refused(bob, r, "bob")
    assert err.condition == "forbidden", err.presence
    outcasts = await alice.iq(alice.make_iq(
        "get", r, f"<query xmlns='{NS_MUC}#admin'><item affiliation='outcast'/></query>"))
    items = outcasts.xml.findall(f"{{{NS_MUC}#admin}}query/{{{NS_MUC}#admin}}item")
    assert [(i.get("jid"), i.findtext(f"{{{NS_MUC}#admin}}reason")) for i in items] == \
        [(BOB, "spam")], outcasts
    # Unbanned, the user may join again.
    await muc(alice).set_affiliation(r, "none", jid=BOB)
    await join(bob, r, "bob")


async def test_moderated_room_voice_request_is_approved_by_a_moderator(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    r = room("stage")
    await create(alice, r, "alice", {"muc#roomconfig_moderatedroom": True,
                                      "muc#roomconfig_allowvoicerequests": True})
    own, *_ = await join(bob, r, "bob")
    assert item(own).get("role") == "visitor", own
    features, _ = await disco_info(bob, r)
    assert NS_REQUEST in features, features
    # §7.13: the request, with slixmpp's call; the moderator gets a form.
    muc(bob).request_voice(r, "participant")
    req = await alice.messages.expect(
        lambda m: m.xml.find(f"{{{NS_DATA}}}x") is not None and m["from"] == JID(r),
        "(voice request form)")
    fields = req["form"].get_fields()
    assert value(fields, "FORM_TYPE") == NS_REQUEST, req
    assert value(fields, "muc#roomnick") == "bob", req
    # §8.6: approving it (no slixmpp call: the form goes back by hand).
    answer = alice.x.make_message(mto=r)
    form = submit_form(alice, {"muc#role": "participant", "muc#jid": str(value(fields, "muc#jid")),
                               "muc#roomnick": "bob", "muc#request_allow": True},
                       form_type=NS_REQUEST, types={"muc#request_allow": "boolean"})
    answer.append(form)
    answer.send()
    await expect_muc_presence(bob, r, "bob", lambda p: item(p).get("role") == "participant"
                              and 110 in codes(p))
    await say(bob, r, "thank you")
    await expect_groupchat(alice, r, "thank you", "bob")


async def test_members_only_and_password_protected_rooms_refuse_outsiders(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    carol = await user(xmpp, srv, CAROL)
    club = room("club")
    await create(alice, club, "alice", {"muc#roomconfig_membersonly": True})
    features, _ = await disco_info(bob, club)
    assert "muc_membersonly" in features, features
    err = await join_refused(bob, club, "bob")
    assert err.condition == "registration-required" and err.etype == "auth", err.presence
    await muc(alice).set_affiliation(club, "member", jid=BOB)
    await join(bob, club, "bob")
    # Membership revoked: removed with 321.
    await muc(alice).set_affiliation(club, "none", jid=BOB)
    out = await expect_muc_presence(bob, club, "bob", lambda p: p.xml.get("type") == "unavailable")
    assert 321 in codes(out), out

    vault = room("vault")
    await create(alice, vault, "alice", {"muc#roomconfig_passwordprotectedroom": True,
                                          "muc#roomconfig_roomsecret": "s3same"})
    features, _ = await disco_info(carol, vault)
    assert "muc_passwordprotected" in features, features
    err = await join_refused(carol, vault, "carol")
    assert err.condition == "not-authorized" and err.etype == "auth", err.presence
    err = await join_refused(carol, vault, "carol", password="wrong")
    assert err.condition == "not-authorized", err.presence
    await join(carol, vault, "carol", password="s3same")


async def test_nickname_registration_reserves_the_nick(server, xmpp):
    """§7.10 (no slixmpp call): register a nickname with the room."""
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    carol = await user(xmpp, srv, CAROL)
    r = room("registry")
    await create(alice, r, "alice")
    got = await bob.iq(bob.make_iq("get", r, f"<query xmlns='{NS_REGISTER}'/>"))
    assert got["type"] == "result", got
    assert got.xml.find(f"{{{NS_REGISTER}}}query/{{{NS_DATA}}}x") is not None, got
    form = (f"<query xmlns='{NS_REGISTER}'><x xmlns='{NS_DATA}' type='submit'>"
            f"<field var='FORM_TYPE'><value>{NS_MUC}#register</value></field>"
            f"<field var='muc#register_roomnick'><value>bobby</value></field></x></query>")
    res = await bob.iq(bob.make_iq("set", r, form))
    assert res["type"] == "result", res
    # §7.12: the reserved nick can be discovered.
    res = await bob.iq(bob.make_iq("get", r,
                                   f"<query xmlns='{NS_DISCO_INFO}' node='x-roomuser-item'/>"))
    ident = res.xml.find(f"{{{NS_DISCO_INFO}}}query/{{{NS_DISCO_INFO}}}identity")
    assert ident is not None and ident.get("name") == "bobby", res
    # Registration made bob a member; nobody else may take the nick.
    members = {str(j) for j in await muc(alice).get_affiliation_list(r, "member")}
    assert BOB in members, members
    err = await join_refused(carol, r, "bobby")
    assert err.condition == "conflict", err.presence
    await join(bob, r, "bobby")


# -- messages ---------------------------------------------------------------------

async def test_groupchat_private_messages_and_occupant_ids(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    carol = await user(xmpp, srv, CAROL)
    r = room("chatter")
    await create(alice, r, "alice")
    # (slixmpp 1.17's xep_0421 has_feature() is broken: it calls get_features on the Iq.)
    features, _ = await disco_info(alice, r)
    assert NS_OCCUPANT_ID in features, features
    own_b, _, occ_b, _ = await join(bob, r, "bob")
    await join(carol, r, "carol")

    # XEP-0421: presence and messages carry the sender's occupant id,
    # distinct per user and stable across a rejoin under another nick.
    bob_id = occupant_id(own_b)
    alice_id = occupant_id(occ_b[0])
    assert bob_id and alice_id and bob_id != alice_id, (own_b, occ_b)
    await say(bob, r, "hello all")
    for c in (alice, bob, carol):
        m = await expect_groupchat(c, r, "hello all", "bob")
        assert occupant_id(m) == bob_id, m
        stanza_id(m, r)
    # A client cannot forge an occupant id.
    forged = bob.x.make_message(mto=r, mbody="forged", mtype="groupchat")
    forged.append(ET.fromstring(f"<occupant-id xmlns='{NS_OCCUPANT_ID}' id='{alice_id}'/>"))
    forged.send()
    m = await expect_groupchat(carol, r, "forged", "bob")
    assert occupant_id(m) == bob_id, m
    muc(bob).leave_muc(JID(r), "bob")
    await expect_muc_presence(carol, r, "bob", lambda p: p.xml.get("type") == "unavailable")
    own_b2, *_ = await join(bob, r, "bobby")
    assert occupant_id(own_b2) == bob_id, own_b2

    # §7.5: a private message to room/nick arrives from the sender's occupant
    # JID (not its real JID), with <x xmlns=muc#user/>; replies work the same way.
    bob.send_message(f"{r}/carol", "psst", mtype="chat")
    pm = await carol.expect_message(body="psst")
    assert str(pm["from"]) == f"{r}/bobby" and pm["type"] == "chat", pm
    assert pm.xml.find(f"{{{NS_USER}}}x") is not None, pm
    assert occupant_id(pm) == bob_id, pm
    carol.send_message(f"{r}/bobby", "what?", mtype="chat")
    reply = await bob.expect_message(body="what?")
    assert str(reply["from"]) == f"{r}/carol", reply
    # To a nick that is not there: item-not-found.
    m = bob.send_message(f"{r}/nobody", "hello?", mtype="chat")
    err = await bob.messages.expect(lambda e: e["type"] == "error" and e["id"] == m["id"],
                                    "(PM to a missing nick)")
    assert err["error"]["condition"] == "item-not-found", err


async def test_mediated_and_direct_invitations(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    carol = await user(xmpp, srv, CAROL)
    r = room("party")
    await create(alice, r, "alice", {"muc#roomconfig_membersonly": True})

    # §7.8.2: mediated invitation through the room, from the room's JID; in
    # a members-only room the invitee becomes a member.
    invited = asyncio.get_running_loop().create_future()
    bob.x.add_event_handler("groupchat_invite", lambda m: invited.done() or invited.set_result(m))
    muc(alice).invite(r, BOB, reason="cake")
    inv = await asyncio.wait_for(invited, STEP_TIMEOUT)
    assert inv["from"] == JID(r), inv
    invite = inv.xml.find(f"{{{NS_USER}}}x/{{{NS_USER}}}invite")
    assert invite.get("from").startswith(ALICE), inv
    assert invite.findtext(f"{{{NS_USER}}}reason") == "cake", inv
    await join(bob, r, "bob")
    # A decline goes back to the inviter, from the room. (slixmpp 1.17 only
    # raises groupchat_decline for components, so the inbox is read instead.)
    muc(alice).invite(r, CAROL)
    await carol.messages.expect(lambda m: m.xml.find(f"{{{NS_USER}}}x/{{{NS_USER}}}invite")
                                is not None, "(invitation)")
    muc(carol).decline(r, f"{ALICE}/pc", reason="busy")
    dec = await alice.messages.expect(
        lambda m: m.xml.find(f"{{{NS_USER}}}x/{{{NS_USER}}}decline") is not None, "(decline)")
    assert dec["from"] == JID(r), dec
    decline = dec.xml.find(f"{{{NS_USER}}}x/{{{NS_USER}}}decline")
    assert decline.get("from") == CAROL and decline.findtext(f"{{{NS_USER}}}reason") == "busy", dec

    # XEP-0249: a direct invitation goes client to client; the room lets the
    # invitee in once an admin makes it a member.
    direct = asyncio.get_running_loop().create_future()
    carol.x.add_event_handler("groupchat_direct_invite",
                              lambda m: direct.done() or direct.set_result(m))
    alice.x.plugin["xep_0249"].send_invitation(JID(CAROL), JID(r), reason="come after all")
    got = await asyncio.wait_for(direct, STEP_TIMEOUT)
    assert got["groupchat_invite"]["jid"] == JID(r) and got["from"].bare == ALICE, got
    assert got["groupchat_invite"]["reason"] == "come after all", got
    await join(carol, r, "carol")


async def test_destroy_with_alternate_venue(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    r = room("doomed")
    await create(alice, r, "alice", {"muc#roomconfig_persistentroom": True})
    await join(bob, r, "bob")
    with pytest.raises(IqError) as e:
        await muc(bob).destroy(r, reason="mine now")
    assert e.value.condition == "forbidden", e.value.iq
    await muc(alice).destroy(r, reason="moved", altroom=room("newhome"))
    gone = await expect_muc_presence(bob, r, "bob", lambda p: p.xml.get("type") == "unavailable")
    destroy = gone.xml.find(f"{{{NS_USER}}}x/{{{NS_USER}}}destroy")
    assert destroy is not None and destroy.get("jid") == room("newhome"), gone
    assert destroy.findtext(f"{{{NS_USER}}}reason") == "moved", gone
    # The room is gone: a new join creates it afresh.
    own, *_ = await join(bob, r, "bob")
    assert 201 in codes(own), own


# -- XEP-0410, XEP-0313, XEP-0425 ----------------------------------------------------

async def test_self_ping(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    r = room("pingable")
    await create(alice, r, "alice")
    features, _ = await disco_info(alice, r)
    assert f"{NS_MUC}#self-ping-optimization" in features, features
    ping = alice.x.plugin["xep_0410"]
    assert await ping.send_self_ping(JID(f"{r}/alice"), timeout=STEP_TIMEOUT) == PingStatus.JOINED
    # Not joined: the answer says so (not-acceptable), whatever the nick.
    res = await bob.iq(bob.make_iq("get", f"{r}/alice", "<ping xmlns='urn:xmpp:ping'/>"))
    assert res["type"] == "error" and res["error"]["condition"] == "not-acceptable", res
    assert await bob.x.plugin["xep_0410"].send_self_ping(JID(f"{r}/alice"),
                                                         timeout=STEP_TIMEOUT) \
        == PingStatus.DISCONNECTED
    # After leaving, one's own old nick answers the same.
    muc(alice).leave_muc(JID(r), "alice")
    await expect_muc_presence(alice, r, "alice", lambda p: p.xml.get("type") == "unavailable")
    assert await ping.send_self_ping(JID(f"{r}/alice"), timeout=STEP_TIMEOUT) \
        == PingStatus.DISCONNECTED


async def mam_page(client, room_jid: str, **rsm):
    iq = await client.x.plugin["xep_0313"].retrieve(jid=JID(room_jid), rsm=rsm, timeout=STEP_TIMEOUT)
    assert iq["type"] == "result", iq
    results = iq["mam"]["results"]
    ids = [res["mam_result"]["id"] for res in results]
    msgs = [res["mam_result"]["forwarded"]["stanza"] for res in results]
    return iq, ids, msgs


async def test_room_archive_paging_and_moderation(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    r = room("minutes")
    await create(alice, r, "alice", {"muc#roomconfig_enablelogging": True})
    await join(bob, r, "bob")
    bodies = [f"minute {i}" for i in range(7)]
    sids = []
    for b in bodies:
        await say(bob, r, b)
        m = await expect_groupchat(alice, r, b, "bob")
        sids.append(stanza_id(m, r))

    # XEP-0313 on the room, paged with RSM; the result ids are the stanza-ids
    # occupants saw.
    iq, ids, msgs = await mam_page(alice, r, max=3)
    assert [m["body"] for m in msgs] == bodies[:3] and ids == sids[:3], msgs
    assert iq["mam_fin"].xml.get("complete") not in ("true", "1"), iq
    last = iq["mam_fin"]["rsm"]["last"]
    iq, ids, msgs = await mam_page(alice, r, max=3, after=last)
    assert [m["body"] for m in msgs] == bodies[3:6], msgs
    iq, ids, msgs = await mam_page(alice, r, max=3, after=iq["mam_fin"]["rsm"]["last"])
    assert [m["body"] for m in msgs] == bodies[6:], msgs
    assert iq["mam_fin"].xml.get("complete") == "true", iq
    assert all(str(m["from"]) == f"{r}/bob" for m in msgs), msgs
    # Backwards from an id.
    _, ids, msgs = await mam_page(alice, r, max=2, before=sids[5])
    assert [m["body"] for m in msgs] == bodies[3:5] and ids == sids[3:5], msgs
    # The last page first, as clients do on opening a room: an empty
    # <before/> (XEP-0059 §2.5; the plugin stringifies RSM values, so this
    # one query is built by hand).
    qid = f"last-{uuid.uuid4().hex[:8]}"
    res = await alice.iq(alice.make_iq("set", r, f"""
        <query xmlns='urn:xmpp:mam:2' queryid='{qid}'>
          <set xmlns='{NS_RSM}'><max>2</max><before/></set>
        </query>"""))
    assert res["type"] == "result", res
    last = [m["mam_result"]["forwarded"]["stanza"]["body"] for m in alice.messages.seen
            if m.xml.find(f"{{urn:xmpp:mam:2}}result[@queryid='{qid}']") is not None]
    assert last == bodies[-2:], last

    # XEP-0425: a participant may not moderate; a moderator retracts.
    with pytest.raises(IqError) as e:
        await bob.x.plugin["xep_0425"].moderate(JID(r), sids[2], "nope")
    assert e.value.condition == "forbidden", e.value.iq
    await alice.x.plugin["xep_0425"].moderate(JID(r), sids[2], "off topic")
    for c in (alice, bob):
        ann = await c.messages.expect(
            lambda m: m.xml.find(f"{{{NS_RETRACT}}}retract") is not None, "(moderation)")
        retract = ann.xml.find(f"{{{NS_RETRACT}}}retract")
        assert retract.get("id") == sids[2] and ann["from"] == JID(r), ann
        assert retract.find(f"{{{NS_MODERATE}}}moderated") is not None \
            or ann.xml.find(f"{{{NS_MODERATE}}}moderated") is not None, ann
    # The archive now holds a tombstone instead of the message.
    _, ids, msgs = await mam_page(alice, r, max=10)
    assert ids == sids, ids
    assert msgs[2]["body"] == "" and msgs[2].xml.find(f"{{{NS_RETRACT}}}retracted") is not None, \
        msgs[2]
    # Nor does a new joiner see it in the history.
    carol = await user(xmpp, srv, CAROL)
    _, _, _, hist = await join(carol, r, "carol")
    assert [m["body"] for m in hist] == bodies[:2] + bodies[3:], hist


# -- persistence and the directory -------------------------------------------------

async def test_persistent_room_survives_a_restart(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    r = room("keep")
    await create(alice, r, "alice", {"muc#roomconfig_persistentroom": True,
                                      "muc#roomconfig_roomname": "Keepers",
                                      "muc#roomconfig_membersonly": True,
                                      "muc#roomconfig_enablelogging": True})
    await muc(alice).set_affiliation(r, "member", jid=BOB)
    await muc(alice).set_affiliation(r, "admin", jid=CAROL)
    await muc(alice).set_affiliation(r, "outcast", jid=DAVE, reason="troll")
    muc(alice).set_subject(r, "Kept subject")
    await alice.messages.expect(lambda m: m["subject"] == "Kept subject", "(subject)")
    await say(alice, r, "before the restart")
    await expect_groupchat(alice, r, "before the restart")

    assert srv.restart() == 0, "unclean exit on SIGTERM"

    bob = await user(xmpp, srv, BOB)
    own, subject, _, hist = await join(bob, r, "bob")
    assert item(own).get("affiliation") == "member", own
    assert subject["subject"] == "Kept subject" and subject["from"] == JID(f"{r}/alice"), subject
    assert [m["body"] for m in hist] == ["before the restart"], hist
    alice = await user(xmpp, srv, ALICE)
    await join(alice, r, "alice")
    fields = (await muc(alice).get_room_config(JID(r))).get_fields()
    assert fields["muc#roomconfig_roomname"]["value"] == "Keepers"
    assert fields["muc#roomconfig_membersonly"]["value"] is True
    assert {str(j) for j in await muc(alice).get_affiliation_list(r, "admin")} == {CAROL}
    dave = await user(xmpp, srv, DAVE)
    err = await join_refused(dave, r, "dave")
    assert err.condition == "forbidden", err.presence


async def test_directory_search(server, xmpp):
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    bob = await user(xmpp, srv, BOB)
    info = await bob.x.plugin["xep_0030"].get_info(jid=SERVICE, timeout=STEP_TIMEOUT)
    assert NS_SEARCH in info["disco_info"]["features"], info
    for name, title, desc, public in (("birds", "Birdwatchers", "Ravens and crows", True),
                                      ("fish", "Anglers", "Rods, reels and birds of prey", True),
                                      ("secret", "Secret birds", "not listed", False)):
        await create(alice, room(name), "alice", {
            "muc#roomconfig_roomname": title, "muc#roomconfig_roomdesc": desc,
            "muc#roomconfig_publicroom": public, "muc#roomconfig_persistentroom": True})
    await join(bob, room("birds"), "bob")

    items, _, count = await room_search(bob, q="birds")
    # Hidden rooms are not listed; the busier room first (nusers order).
    assert [i["address"] for i in items] == [room("birds"), room("fish")], items
    assert count == 2, count
    birds = items[0]
    assert birds["name"] == "Birdwatchers" and birds["nusers"] == "2", birds
    assert birds["description"] == "Ravens and crows" and birds.get("is-open") is not None, birds
    items, _, _ = await room_search(bob, q="reels")
    assert [i["address"] for i in items] == [room("fish")], items
    # Everything, one page at a time.
    page1, last, count = await room_search(bob, all_rooms=True, max_=1)
    assert len(page1) == 1 and count == 2 and last, (page1, last, count)
    page2, _, _ = await room_search(bob, all_rooms=True, max_=1, after=last)
    assert [i["address"] for i in page1 + page2] == [room("birds"), room("fish")]
    # disco#items of the service lists the same public rooms.
    listed = await bob.x.plugin["xep_0030"].get_items(jid=SERVICE, timeout=STEP_TIMEOUT)
    assert {str(i[0]) for i in listed["disco_items"]["items"]} == {room("birds"), room("fish")}


async def test_done_means_public_room_found_joined_and_kept_across_restart(server, xmpp):
    """Issue #7's "done means": a stock client creates a persistent public
    room; a second finds it through directory search and joins, sees history
    and the subject; everything survives a restart."""
    srv = server(users=USERS)
    alice = await user(xmpp, srv, ALICE)
    r = room("townsquare")
    # History outlives the process through the room archive: new rooms log
    # by default ([muc] log_by_default), so the owner sets nothing for it.
    await create(alice, r, "alice", {"muc#roomconfig_persistentroom": True,
                                      "muc#roomconfig_publicroom": True,
                                      "muc#roomconfig_roomname": "Town Square",
                                      "muc#roomconfig_roomdesc": "Everyone welcome"})
    muc(alice).set_subject(r, "Market day")
    await alice.messages.expect(lambda m: m["subject"] == "Market day", "(subject)")
    for b in ("first post", "second post"):
        await say(alice, r, b)
        await expect_groupchat(alice, r, b)

    async def find_and_join(client):
        items, _, _ = await room_search(client, q="town square")
        assert [i["address"] for i in items] == [r], items
        _, subject, occupants, hist = await join(client, items[0]["address"], "bob")
        assert subject["subject"] == "Market day", subject
        return occupants, [m["body"] for m in hist]

    bob = await user(xmpp, srv, BOB)
    occupants, hist = await find_and_join(bob)
    assert [str(p["from"]) for p in occupants] == [f"{r}/alice"], occupants
    assert hist == ["first post", "second post"], hist
    await say(bob, r, "hi alice")
    await expect_groupchat(alice, r, "hi alice", "bob")

    assert srv.restart() == 0, "unclean exit on SIGTERM"

    bob = await user(xmpp, srv, BOB)
    occupants, hist = await find_and_join(bob)
    # Nobody is in the room after a restart, but it is still there, with its
    # configuration, subject and history.
    assert occupants == [], occupants
    assert hist == ["first post", "second post", "hi alice"], hist
    features, info = await disco_info(bob, r)
    assert {"muc_persistent", "muc_public"} <= features, features
    assert info["muc#roominfo_description"] == ["Everyone welcome"], info
    alice = await user(xmpp, srv, ALICE)
    own, *_ = await join(alice, r, "alice")
    assert item(own).get("affiliation") == "owner", own
