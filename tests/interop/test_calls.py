"""Call signalling passes through: XEP-0353 Jingle Message Initiation
(propose/proceed) with carbons to the other resources of both parties and
archiving, then XEP-0166/0167 Jingle session-initiate/accept IQs between
the chosen resources."""

from xml.etree import ElementTree as ET

import pytest
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from conftest import PASSWORD
from wxtest.client import Inbox

pytestmark = pytest.mark.allowed_skip(reason="uses waxwing's carbons and MAM")

ALICE = "alice@localhost"
BOB = "bob@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD}
JMI = "urn:xmpp:jingle-message:0"
JINGLE = "urn:xmpp:jingle:1"
RTP = "urn:xmpp:jingle:apps:rtp:1"
ICE = "urn:xmpp:jingle:transports:ice-udp:1"
CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"


async def online(xmpp, srv, full_jid):
    c = xmpp.new(srv, full_jid, PASSWORD)
    c.x.register_plugin("xep_0280")
    c.x.register_plugin("xep_0313")
    await c.login()
    await c.online()
    res = await c.x.plugin["xep_0280"].enable()
    assert res["type"] == "result", str(res)
    # Jingle IQs: collected and acknowledged (XEP-0166 §6.2: ack first).
    c.jingle = Inbox(c, "jingle iq")

    def on_jingle(iq):
        c.jingle.put(iq)
        iq.reply().send()

    c.x.register_handler(Callback("wx jingle", MatchXPath(f"{{jabber:client}}iq/{{{JINGLE}}}jingle"),
                                  on_jingle))
    return c


def jmi(client, to, kind, sid, with_description=False, hint=True):
    msg = client.x.make_message(mto=to, mtype="chat")
    el = ET.Element(f"{{{JMI}}}{kind}", id=sid)
    if with_description:
        ET.SubElement(el, f"{{{RTP}}}description", media="audio")
    msg.append(el)
    if hint:
        ET.SubElement(msg.xml, "{urn:xmpp:hints}store")
    msg.send()


def has_jmi(kind, sid, carbon=None):
    """A message carrying <kind id=sid/>, directly or (carbon='sent'/'received') forwarded."""
    def pred(m):
        x = m.xml
        if carbon:
            wrap = x.find(f"{{{CARBONS}}}{carbon}")
            if wrap is None:
                return False
            x = wrap.find(f"{{{FORWARD}}}forwarded/{{jabber:client}}message")
            if x is None:
                return False
        el = x.find(f"{{{JMI}}}{kind}")
        return el is not None and el.get("id") == sid
    return pred


def jingle_iq(client, to, action, sid):
    iq = client.x.make_iq_set(ito=to)
    j = ET.SubElement(iq.xml, f"{{{JINGLE}}}jingle", action=action, sid=sid)
    if action == "session-initiate":
        j.set("initiator", str(client.jid))
    else:
        j.set("responder", str(client.jid))
    content = ET.SubElement(j, f"{{{JINGLE}}}content", creator="initiator", name="voice")
    ET.SubElement(content, f"{{{RTP}}}description", media="audio")
    ET.SubElement(content, f"{{{ICE}}}transport", ufrag="u1", pwd="p1-0123456789abcdef")
    return iq


async def test_jmi_propose_proceed_and_jingle_session_pass_through(server, xmpp):
    srv = server(users=USERS)
    laptop = await online(xmpp, srv, f"{ALICE}/laptop")
    phone = await online(xmpp, srv, f"{ALICE}/phone")
    bob_pc = await online(xmpp, srv, f"{BOB}/pc")
    bob_tab = await online(xmpp, srv, f"{BOB}/tablet")
    sid = "call-42"

    # Alice's laptop rings Bob (bare JID): every Bob client hears it (directly
    # or as a carbon), and Alice's phone gets a sent carbon.
    jmi(laptop, BOB, "propose", sid, with_description=True)
    for c in (bob_pc, bob_tab):
        await c.messages.expect(lambda m: has_jmi("propose", sid)(m)
                                or has_jmi("propose", sid, "received")(m), "propose")
    await phone.messages.expect(has_jmi("propose", sid, "sent"), "sent carbon of propose")

    # Bob's pc proceeds to the proposing resource; Alice's phone and Bob's
    # tablet learn of it by carbons (and stop ringing).
    # (No <store/> hint: the server archives JMI messages by itself.)
    jmi(bob_pc, f"{ALICE}/laptop", "proceed", sid, hint=False)
    got = await laptop.messages.expect(has_jmi("proceed", sid), "proceed")
    assert str(got["from"]) == f"{BOB}/pc", str(got)
    await phone.messages.expect(has_jmi("proceed", sid, "received"), "received carbon of proceed")
    await bob_tab.messages.expect(has_jmi("proceed", sid, "sent"), "sent carbon of proceed")

    # The Jingle session between the two chosen resources, full JID to full JID.
    res = await laptop.iq(jingle_iq(laptop, f"{BOB}/pc", "session-initiate", sid))
    assert res["type"] == "result", str(res)
    init = await bob_pc.jingle.expect(desc="session-initiate")
    j = init.xml.find(f"{{{JINGLE}}}jingle")
    assert j.get("action") == "session-initiate" and j.get("sid") == sid, str(init)
    assert j.find(f"{{{JINGLE}}}content/{{{ICE}}}transport").get("ufrag") == "u1", str(init)
    assert str(init["from"]) == f"{ALICE}/laptop", str(init)

    res = await bob_pc.iq(jingle_iq(bob_pc, f"{ALICE}/laptop", "session-accept", sid))
    assert res["type"] == "result", str(res)
    acc = await laptop.jingle.expect(desc="session-accept")
    assert acc.xml.find(f"{{{JINGLE}}}jingle").get("action") == "session-accept", str(acc)
    assert str(acc["from"]) == f"{BOB}/pc", str(acc)
    # Jingle IQs are not carbon-copied and reach no other resource.
    assert not phone.jingle.seen and not bob_tab.jingle.seen

    # XEP-0353: the proposal and the answer are in both archives (a client
    # that was away sees the call).
    for client, kinds in ((laptop, ("propose", "proceed")), (bob_tab, ("propose", "proceed"))):
        iq = await client.x.plugin["xep_0313"].retrieve(timeout=15)
        assert iq["type"] == "result", str(iq)
        archived = [r["mam_result"]["forwarded"]["stanza"].xml for r in iq["mam"]["results"]]
        for kind in kinds:
            assert any((el := m.find(f"{{{JMI}}}{kind}")) is not None and el.get("id") == sid
                       for m in archived), f"{kind} not archived for {client.label}"
