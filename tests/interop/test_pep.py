"""PEP (XEP-0163) with slixmpp (issue #9): notifications filtered by entity
capabilities (+notify), last items at login, publish-options preconditions,
OMEMO devicelist and bundles fetched by a contact, bookmarks with #compat
(XEP-0402 read back through XEP-0049), an avatar published with XEP-0084
read back as a vCard (XEP-0398), and everything surviving a restart.

To show that something did *not* arrive, a marker message is sent after it
on the same path (``wxtest.client.barrier``): stanzas are delivered in order.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from xml.etree import ElementTree as ET

import pytest

from conftest import PASSWORD
from wxtest import STEP_TIMEOUT, subjects
from wxtest.steps import make_friends

pytestmark = pytest.mark.skipif(
    subjects.subject_name() != "waxwing",
    reason="scenarios written against waxwing's PEP (Prosody's needs mod_pep config)")

ALICE, BOB, CAROL = "alice@localhost", "bob@localhost", "carol@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD, CAROL: PASSWORD}

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_ERRORS = "http://jabber.org/protocol/pubsub#errors"
NS_DATA = "jabber:x:data"
NS_TUNE = "http://jabber.org/protocol/tune"
NS_DEVICES = "urn:xmpp:omemo:2:devices"
NS_BUNDLES = "urn:xmpp:omemo:2:bundles"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"


def options_xml(fields: dict[str, str]) -> str:
    if not fields:
        return ""
    return ("<publish-options><x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE' type='hidden'>"
            "<value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
            + "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
            + "</x></publish-options>")


async def publish(client, node: str, item_id: str, payload: str, options: dict | None = None):
    iq = client.make_iq("set", None, (
        f"<pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'><item id='{item_id}'>{payload}"
        f"</item></publish>{options_xml(options or {})}</pubsub>"))
    return await client.iq(iq)


async def items(client, owner: str, node: str):
    iq = client.make_iq("get", owner, f"<pubsub xmlns='{NS_PUBSUB}'><items node='{node}'/></pubsub>")
    return await client.iq(iq)


def item_elements(res) -> list[ET.Element]:
    return res.xml.findall(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}items/{{{NS_PUBSUB}}}item")


def events(client, node: str) -> list[ET.Element]:
    """Every notified item of ``node`` received by ``client``."""
    out = []
    for m in client.messages.seen:
        its = m.xml.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items")
        if its is not None and its.get("node") == node:
            out.extend(its.findall(f"{{{NS_EVENT}}}item"))
    return out


async def expect_event(client, node: str, item_id: str):
    def pred(m):
        its = m.xml.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items")
        return (its is not None and its.get("node") == node
                and any(i.get("id") == item_id for i in its.findall(f"{{{NS_EVENT}}}item")))
    msg = await client.messages.expect(pred, f"(event {node}#{item_id})")
    its = msg.xml.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items")
    return next(i for i in its.findall(f"{{{NS_EVENT}}}item") if i.get("id") == item_id)


async def marker(sender, receiver) -> None:
    """Everything the server routed to ``receiver`` before this is received."""
    body = f"marker-{uuid.uuid4().hex}"
    sender.send_message(receiver.jid.bare, body)
    await receiver.expect_message(body=body)


async def login(xmpp, srv, jid, plugins=(), interests=(), presence=True):
    c = xmpp.new(srv, jid, PASSWORD)
    for p in plugins:
        c.x.register_plugin(p)
    await c.login()
    if interests:
        for ns in interests:
            c.x.plugin["xep_0030"].add_feature(f"{ns}+notify", jid=c.jid)
        await c.x.plugin["xep_0115"].update_caps(c.jid, broadcast=False)
    await c.roster_get()
    if presence:
        await c.online()
    return c


def tune(title: str) -> str:
    return f"<tune xmlns='{NS_TUNE}'><title>{title}</title></tune>"


async def test_notify_filtering_last_item_at_login_and_preconditions(server, xmpp):
    srv = server(users=USERS)
    alice = await login(xmpp, srv, f"{ALICE}/a")
    carol = await login(xmpp, srv, f"{CAROL}/c", plugins=["xep_0115"])
    bob_plain = await login(xmpp, srv, f"{BOB}/plain")
    await make_friends(alice, carol)
    await make_friends(alice, bob_plain)

    res = await publish(alice, NS_TUNE, "t1", tune("First song"))
    assert res["type"] == "result", res

    # Bob logs in interested in tunes: once his caps are known he gets the
    # last item (XEP-0163 §4.3.2), then new ones.
    bob = await login(xmpp, srv, f"{BOB}/b", plugins=["xep_0115"], interests=[NS_TUNE])
    ev = await expect_event(bob, NS_TUNE, "t1")
    assert ev.find(f".//{{{NS_TUNE}}}title").text == "First song"
    res = await publish(alice, NS_TUNE, "t2", tune("Second song"))
    assert res["type"] == "result", res
    await expect_event(bob, NS_TUNE, "t2")
    # Carol (caps without +notify) and Bob's other resource (no caps) get nothing.
    await marker(alice, carol)
    await marker(alice, bob_plain)
    assert events(carol, NS_TUNE) == []
    assert events(bob_plain, NS_TUNE) == []

    # Publish-options: a matching precondition publishes; a different one
    # fails with precondition-not-met and leaves the node as it was.
    res = await publish(alice, NS_TUNE, "t3", tune("Third"), {"pubsub#access_model": "presence"})
    assert res["type"] == "result", res
    res = await publish(alice, NS_TUNE, "t4", tune("Fourth"), {"pubsub#access_model": "open"})
    assert res["type"] == "error", res
    assert res["error"]["condition"] == "conflict", res
    assert res.xml.find(f".//{{{NS_ERRORS}}}precondition-not-met") is not None, res
    ids = [i.get("id") for i in item_elements(await items(bob, ALICE, NS_TUNE))]
    assert "t4" not in ids and {"t1", "t2", "t3"} <= set(ids), ids


async def test_omemo_devicelist_and_bundle_fetched_by_a_contact_and_kept_across_restart(server, xmpp):
    srv = server(users=USERS)
    alice = await login(xmpp, srv, f"{ALICE}/a")
    bob = await login(xmpp, srv, f"{BOB}/b")
    carol = await login(xmpp, srv, f"{CAROL}/c")
    await make_friends(alice, bob)

    devices = f"<devices xmlns='{NS_DEVICES}'><device id='1001' label='phone'/></devices>"
    res = await publish(alice, NS_DEVICES, "current", devices, {"pubsub#access_model": "open"})
    assert res["type"] == "result", res
    bundle = (f"<bundle xmlns='{NS_BUNDLES}'><spk id='1'>c3Br</spk><spks>c2ln</spks>"
              f"<ik>aWs=</ik><prekeys><pk id='1'>cGsx</pk><pk id='2'>cGsy</pk></prekeys></bundle>")
    res = await publish(alice, NS_BUNDLES, "1001", bundle,
                        {"pubsub#access_model": "open", "pubsub#max_items": "max"})
    assert res["type"] == "result", res

    async def check(client):
        got = item_elements(await items(client, ALICE, NS_DEVICES))
        assert [i.get("id") for i in got] == ["current"], got
        assert got[0].find(f"{{{NS_DEVICES}}}devices/{{{NS_DEVICES}}}device").get("id") == "1001"
        got = item_elements(await items(client, ALICE, NS_BUNDLES))
        assert [i.get("id") for i in got] == ["1001"]
        pks = got[0].findall(f"{{{NS_BUNDLES}}}bundle/{{{NS_BUNDLES}}}prekeys/{{{NS_BUNDLES}}}pk")
        assert [p.text for p in pks] == ["cGsx", "cGsy"]

    await check(bob)
    # Open access: even a stranger may fetch the keys (OMEMO needs that).
    await check(carol)
    # The node's configuration says so, to its owner.
    iq = alice.make_iq("get", None,
                       "<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'>"
                       f"<configure node='{NS_BUNDLES}'/></pubsub>")
    res = await alice.iq(iq)
    fields = {f.get("var"): f.findtext(f"{{{NS_DATA}}}value")
              for f in res.xml.iter(f"{{{NS_DATA}}}field")}
    assert fields["pubsub#access_model"] == "open" and fields["pubsub#max_items"] == "max", fields

    srv.restart()
    bob = await login(xmpp, srv, f"{BOB}/b2")
    await check(bob)


async def test_bookmarks_published_with_xep_0402_read_with_xep_0049(server, xmpp):
    srv = server(users=USERS)
    alice = await login(xmpp, srv, f"{ALICE}/a", plugins=["xep_0049"])
    conf = (f"<conference xmlns='{NS_BOOKMARKS}' name='The Orchard' autojoin='true'>"
            "<nick>Ally</nick></conference>")
    res = await publish(alice, NS_BOOKMARKS, "orchard@conference.localhost", conf, {
        "pubsub#persist_items": "true", "pubsub#access_model": "whitelist",
        "pubsub#max_items": "max", "pubsub#send_last_published_item": "never"})
    assert res["type"] == "result", res

    iq = alice.make_iq("get", None,
                       "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>")
    res = await alice.iq(iq)
    assert res["type"] == "result", res
    rooms = res.xml.findall(".//{storage:bookmarks}conference")
    assert len(rooms) == 1, str(res)
    room = rooms[0]
    assert room.get("jid") == "orchard@conference.localhost"
    assert room.get("name") == "The Orchard"
    assert room.get("autojoin") in ("true", "1")
    assert room.findtext("{storage:bookmarks}nick") == "Ally"

    # Whitelist: the bookmarks stay private.
    bob = await login(xmpp, srv, f"{BOB}/b")
    res = await items(bob, ALICE, NS_BOOKMARKS)
    assert res["type"] == "error", res


async def test_avatar_published_with_pep_is_read_back_as_vcard(server, xmpp):
    srv = server(users=USERS)
    alice = await login(xmpp, srv, f"{ALICE}/a", plugins=["xep_0084"])
    bob = await login(xmpp, srv, f"{BOB}/b", plugins=["xep_0054"])
    await make_friends(alice, bob)

    # The account advertises the conversion.
    info = await bob.x.plugin["xep_0030"].get_info(jid=ALICE, timeout=STEP_TIMEOUT)
    assert "urn:xmpp:pep-vcard-conversion:0" in info["disco_info"]["features"]

    image = b"\x89PNG\r\n\x1a\n not really a png"
    digest = hashlib.sha1(image).hexdigest()
    await alice.x.plugin["xep_0084"].publish_avatar(image, timeout=STEP_TIMEOUT)
    await alice.x.plugin["xep_0084"].publish_avatar_metadata(
        [{"id": digest, "type": "image/png", "bytes": len(image)}], timeout=STEP_TIMEOUT)

    card = await bob.x.plugin["xep_0054"].get_vcard(ALICE, local=False, cached=False,
                                                     timeout=STEP_TIMEOUT)
    photo = card["vcard_temp"]["PHOTO"]
    assert photo["TYPE"] == "image/png", card
    assert photo["BINVAL"] == image, card

    # Presence now carries the photo hash for vCard-based clients.
    alice.x.send_presence(pstatus="with avatar")

    def with_hash(p):
        x = p.xml.find("{vcard-temp:x:update}x")
        return (p["from"].bare == ALICE and x is not None
                and x.findtext("{vcard-temp:x:update}photo") == digest)

    await bob.presences.expect(with_hash, "(presence with the photo hash)")

    # It survives a restart.
    srv.restart()
    bob = await login(xmpp, srv, f"{BOB}/b2", plugins=["xep_0054"])
    card = await bob.x.plugin["xep_0054"].get_vcard(ALICE, local=False, cached=False,
                                                     timeout=STEP_TIMEOUT)
    assert base64.b64encode(card["vcard_temp"]["PHOTO"]["BINVAL"]) == base64.b64encode(image)
