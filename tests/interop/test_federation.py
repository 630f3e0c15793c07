"""Federation with real servers (the Debian packages), both directions:
Prosody and ejabberd, each over dialback and over certificates from a test CA.

The peers, the CA and the DNS server ejabberd needs are in
``wxtest/federation.py``. Waxwing serves ``WX`` and listens for s2s on
``127.0.0.X:5269`` (a loopback address of its own); it reaches the peer
through a static route (``[s2s.routes]``); the peer resolves ``WX`` (and its
MUC and PubSub services) to ``127.0.0.X`` and, with no SRV record, uses port
5269.

Authentication, one run per peer and mode (the ``federation`` fixture's
parameter):
- "dialback": both sides use self-signed certificates, so neither can verify
  the other and both fall back to server dialback (XEP-0220) in all three
  roles; Waxwing's log is checked for it. ejabberd still offers SASL
  EXTERNAL on its streams and refuses it, and dialback follows on the same
  stream; its own outgoing stream finds no EXTERNAL offered and dials back.
- "certificates": both present certificates from a throwaway test CA that
  the other trusts (Waxwing ``s2s.ca_bundle``, Prosody ``ssl.cafile``,
  ejabberd ``ca_file``), and both refuse dialback (``dialback =
  "require-valid-certs"``; Prosody ``s2s_secure_auth = true``; ejabberd
  without mod_s2s_dialback): SASL EXTERNAL (XEP-0178) in both directions.
- "dialback-bidi" (Prosody only; ejabberd has no XEP-0288): as "dialback",
  with Prosody's mod_s2s_bidi on, so both sides offer and ask for XEP-0288
  bidirectional streams, and Prosody's stream to the MUC service carries
  the room's stanzas back. (Without the module, as in the other runs,
  Prosody neither offers nor asks, and we fall back to one connection per
  direction.)

A peer that is not installed fails the test: `scripts/test.sh` installs both.
"""

from __future__ import annotations

import shutil
from xml.etree import ElementTree as ET

import pytest

from conftest import PASSWORD
from wxtest import STEP_TIMEOUT, subjects
from wxtest.federation import MUC, WX, Ejabberd, FederationCA, Prosody, free_loopback_5269

pytestmark = [
    pytest.mark.skipif(subjects.subject_name() != "waxwing",
                       reason="federation scenarios drive Waxwing against Prosody and ejabberd"),
]

PEERS = {"prosody": Prosody, "ejabberd": Ejabberd}
RUNS = [("prosody", "dialback"), ("prosody", "certificates"), ("prosody", "dialback-bidi"),
        ("ejabberd", "dialback"), ("ejabberd", "certificates")]
NEEDS = {"prosody": ("prosody", "setpriv"), "ejabberd": ("ejabberdctl", "setpriv", "unshare")}


@pytest.fixture(params=RUNS, ids=[f"{p}-{m}" for p, m in RUNS])
def federation(server, request, tmp_path):
    """(waxwing, peer, mode): federated by dialback (self-signed
    certificates), or by certificates from a shared test CA with dialback
    refused on both sides (SASL EXTERNAL, XEP-0178)."""
    kind, mode = request.param
    missing = [tool for tool in NEEDS[kind] if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{kind} federation needs {missing} (scripts/test.sh installs them)",
                    pytrace=False)
    addr = free_loopback_5269()
    cls = PEERS[kind]
    pki = FederationCA(tmp_path, cls.domain) if mode == "certificates" else None
    peer = (Prosody(addr, pki, bidi=mode == "dialback-bidi") if kind == "prosody"
            else Ejabberd(addr, pki))
    try:
        peer.start()
        s2s = {
            "connect_timeout_secs": 20,
            "routes": {peer.domain: f"{peer.s2s_addr}:{peer.s2s_port}"},
        }
        overrides = {"hosts": [WX], "listen": {"s2s": [f"{addr}:5269"]}, "s2s": s2s}
        if pki:
            s2s["ca_bundle"] = str(pki.ca)
            s2s["dialback"] = "require-valid-certs"
            cert, key = pki.certs[WX]
            overrides["tls"] = {"certificates": [{"host": WX, "cert": str(cert), "key": str(key)}]}
        wx = server(overrides=overrides, users={f"alice@{WX}": PASSWORD})
        peer.add_user("bob", PASSWORD)
        yield wx, peer, mode
    finally:
        # Attach the peer's logs to the report via stdout (shown on failure).
        print(peer.logs())
        peer.stop()


async def test_messages_subscriptions_and_iqs_cross(federation, xmpp):
    wx, peer, mode = federation
    alice = await xmpp.login(wx, f"alice@{WX}/pc", PASSWORD)
    bob = await xmpp.login(peer, f"bob@{peer.domain}/phone", PASSWORD)
    # Fetch the rosters first: Prosody and ejabberd deliver subscription
    # approvals and roster pushes only to "interested" resources (RFC 6121 §2.1.6).
    for c in (alice, bob):
        await c.roster_get()
        await c.online()

    # Chat, Waxwing -> peer (first contact: Waxwing's outgoing stream; in
    # dialback mode the peer verifies our key by dialing back WX, resolved
    # through its hosts file or DNS server).
    alice.send_message(f"bob@{peer.domain}", "hello peer")
    m = await bob.expect_message(body="hello peer", timeout=STEP_TIMEOUT * 2)
    assert str(m["from"]) == f"alice@{WX}/pc"

    # Chat, peer -> Waxwing (the peer's outgoing stream; we dial back via the route).
    bob.send_message(f"alice@{WX}/pc", "hello waxwing")
    m = await alice.expect_message(body="hello waxwing", timeout=STEP_TIMEOUT * 2)
    assert str(m["from"]) == f"bob@{peer.domain}/phone"

    # Subscription handshake initiated on Waxwing.
    alice.x.send_presence(pto=f"bob@{peer.domain}", ptype="subscribe")
    await bob.expect_presence(sender=f"alice@{WX}", ptype="subscribe")
    bob.x.send_presence(pto=f"alice@{WX}", ptype="subscribed")
    await alice.expect_presence(sender=f"bob@{peer.domain}", ptype="subscribed")
    p = await alice.expect_presence(sender=f"bob@{peer.domain}", ptype="available")
    assert str(p["from"]) == f"bob@{peer.domain}/phone"

    # And the reverse handshake initiated on the peer.
    bob.x.send_presence(pto=f"alice@{WX}", ptype="subscribe")
    await alice.expect_presence(sender=f"bob@{peer.domain}", ptype="subscribe")
    alice.x.send_presence(pto=f"bob@{peer.domain}", ptype="subscribed")
    await bob.expect_presence(sender=f"alice@{WX}", ptype="subscribed")
    await bob.expect_presence(sender=f"alice@{WX}", ptype="available")

    # Presence updates now flow both ways.
    alice.x.send_presence(pshow="away", pstatus="lunch")
    p = await bob.expect_presence(sender=f"alice@{WX}/pc", ptype="available")
    bob.x.send_presence(pshow="dnd")
    await alice.expect_presence(sender=f"bob@{peer.domain}/phone", ptype="available")

    # Rosters agree: both.
    r = await alice.roster_get()
    assert r["roster"]["items"][f"bob@{peer.domain}"]["subscription"] == "both", r

    # IQ round trips: ping and disco and version of the other server.
    for client, target in ((alice, peer.domain), (bob, WX)):
        res = await client.iq(client.make_iq("get", target, "<ping xmlns='urn:xmpp:ping'/>"))
        assert res["type"] == "result", res
        res = await client.iq(client.make_iq(
            "get", target, "<query xmlns='http://jabber.org/protocol/disco#info'/>"))
        assert res["type"] == "result", res
        assert "<identity" in str(res), res
        res = await client.iq(client.make_iq("get", target, "<query xmlns='jabber:iq:version'/>"))
        assert res["type"] == "result", res

    # An unknown account on the other side bounces back across.
    res = await alice.iq(alice.make_iq("get", f"nobody@{peer.domain}",
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
        # The peer authenticated to us with its certificate, and we to it.
        assert "incoming s2s stream authenticated (SASL EXTERNAL)" in wx_log, wx_log[-5000:]
        assert 'auth="sasl-external"' in wx_log, wx_log[-5000:]
        assert "(dialback)" not in wx_log, wx_log[-5000:]


async def test_peer_user_in_waxwing_muc_room(federation, xmpp):
    """A user of the peer joins room@conference.<WX> and exchanges groupchat
    messages with a Waxwing occupant (XEP-0045 across s2s)."""
    wx, peer, _mode = federation
    room = f"lounge@{MUC}"
    ns_muc = "http://jabber.org/protocol/muc"
    alice = await xmpp.login(wx, f"alice@{WX}/pc", PASSWORD)
    bob = await xmpp.login(peer, f"bob@{peer.domain}/phone", PASSWORD)
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

    # Bob, on the peer, joins over s2s.
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
    bob.send_message(room, "hello from the peer", mtype="groupchat")
    m = await alice.expect_message(body="hello from the peer", mtype="groupchat",
                                   timeout=STEP_TIMEOUT * 2)
    assert str(m["from"]) == f"{room}/bob", m
    m = await bob.expect_message(body="hello from the peer", mtype="groupchat",
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


async def _befriend(alice, bob, peer) -> None:
    """Mutual presence subscription between alice (WX) and bob (on the peer)."""
    alice.x.send_presence(pto=f"bob@{peer.domain}", ptype="subscribe")
    await bob.expect_presence(sender=f"alice@{WX}", ptype="subscribe", timeout=STEP_TIMEOUT * 2)
    bob.x.send_presence(pto=f"alice@{WX}", ptype="subscribed")
    await alice.expect_presence(sender=f"bob@{peer.domain}", ptype="available")
    bob.x.send_presence(pto=f"alice@{WX}", ptype="subscribe")
    await alice.expect_presence(sender=f"bob@{peer.domain}", ptype="subscribe")
    alice.x.send_presence(pto=f"bob@{peer.domain}", ptype="subscribed")
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
    """XEP-0163 across federation: a contact on the peer whose caps
    (+notify) reach Waxwing gets a Waxwing user's tune, last item then live;
    and the reverse, the peer's PEP to a Waxwing user."""
    wx, peer, _mode = federation
    alice = xmpp.new(wx, f"alice@{WX}/pc", PASSWORD)
    bob = xmpp.new(peer, f"bob@{peer.domain}/phone", PASSWORD)
    for c in (alice, bob):
        c.x.register_plugin("xep_0115")
        c.x.register_plugin("xep_0163")
        await c.login()
        await c.roster_get()
        await c.online()
    await _befriend(alice, bob, peer)

    # Waxwing -> peer. Alice publishes before bob wants tunes; bob's new
    # caps reach Waxwing in his presence, Waxwing (pubsub.WX) asks his client
    # for its features over s2s, then sends him the last item.
    await _publish_tune(alice, "a1", "first")
    await _notify_tunes(bob)
    await _expect_tune(bob, f"alice@{WX}", "a1")
    await _publish_tune(alice, "a2", "second")
    await _expect_tune(bob, f"alice@{WX}", "a2")

    # Peer -> Waxwing, the same way round.
    await _publish_tune(bob, "b1", "first")
    await _notify_tunes(alice)
    await _expect_tune(alice, f"bob@{peer.domain}", "b1")
    await _publish_tune(bob, "b2", "second")
    await _expect_tune(alice, f"bob@{peer.domain}", "b2")


async def test_vcard_lookups_cross_both_ways(federation, xmpp):
    """vcard-temp (XEP-0054) gets to a remote bare JID are routed and
    answered by the contact's server, both ways."""
    wx, peer, _mode = federation
    alice = await xmpp.login(wx, f"alice@{WX}/pc", PASSWORD)
    bob = await xmpp.login(peer, f"bob@{peer.domain}/phone", PASSWORD)
    for client, name in ((alice, "Alice of Waxwing"), (bob, "Bob of the peer")):
        res = await client.iq(client.make_iq(
            "set", None, f"<vCard xmlns='vcard-temp'><FN>{name}</FN></vCard>"))
        assert res["type"] == "result", res
    for client, target, name in ((bob, f"alice@{WX}", "Alice of Waxwing"),
                                 (alice, f"bob@{peer.domain}", "Bob of the peer")):
        res = await client.iq(client.make_iq("get", target, "<vCard xmlns='vcard-temp'/>"),
                              timeout=STEP_TIMEOUT * 2)
        assert res["type"] == "result", res
        assert str(res["from"]) == target, res
        fn = res.xml.find("{vcard-temp}vCard/{vcard-temp}FN")
        assert fn is not None and fn.text == name, res
