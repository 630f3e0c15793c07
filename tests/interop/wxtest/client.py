"""slixmpp clients for the scenarios.

Every wait is on an event or a future, bounded by STEP_TIMEOUT: there is no
sleep anywhere. To prove that something did NOT arrive, scenarios use a
*barrier* (``barrier()``): a marker stanza sent after the stanza under test on
the same stream. RFC 6120 §10.1 requires in-order processing, so once the
marker has arrived anything the first stanza caused has arrived too.

Each client keeps its own wire transcript (``Client.wire``); conftest.py
attaches the transcripts of all clients of a failed test to its report.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
import uuid
from typing import Any, Callable

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.stanza import Iq
from slixmpp.util.sasl import client as sasl_client
from slixmpp.util.sasl.mechanisms import SCRAM
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath, StanzaPath

from . import STEP_TIMEOUT
from .scram import tls_server_end_point

PLUGINS = ["xep_0030", "xep_0199", "xep_0092", "xep_0202", "xep_0203", "xep_0077"]
NS_STREAM = "http://etherx.jabber.org/streams"

_counter = itertools.count(1)


# -- SCRAM-*-PLUS with a caller-chosen channel-binding type ---------------------
#
# slixmpp only knows tls-unique (undefined on TLS 1.3) and tls-exporter (which
# Python's ssl module cannot compute). Waxwing offers tls-exporter and
# tls-server-end-point; the latter needs only the server certificate, so the
# harness teaches slixmpp to send `p=tls-server-end-point` when the
# credentials callback supplies a `cb_type`. Without `cb_type` it behaves
# exactly like stock slixmpp (and cancels -PLUS on TLS 1.3).

class _ScramWithCbType(SCRAM):
    optional_credentials = SCRAM.optional_credentials | {"cb_type"}

    def process_1(self, challenge: bytes) -> bytes:
        first = super().process_1(challenge)
        cb_type = self.credentials.get("cb_type")
        if cb_type and self.use_channel_binding and self.gs2_header.startswith(b"p="):
            authzid = self.gs2_header.split(b",")[1]
            self.gs2_header = b"p=" + cb_type + b"," + authzid + b","
            self.client_first_message = self.gs2_header + self.client_first_message_bare
            return self.client_first_message
        return first


for _name in list(sasl_client.MECHANISMS):
    if _name.startswith("SCRAM-") and _name.endswith("-PLUS"):
        sasl_client.MECHANISMS[_name] = _ScramWithCbType


# -- inboxes --------------------------------------------------------------------

class Inbox:
    """Stanzas of one kind received by one client, consumed by expect()."""

    def __init__(self, owner: "Client", what: str):
        self.owner = owner
        self.what = what
        self.pending: list[Any] = []
        self.seen: list[Any] = []
        self._changed = asyncio.Event()

    def put(self, item: Any) -> None:
        self.pending.append(item)
        self.seen.append(item)
        self._changed.set()

    def matching(self, pred: Callable[[Any], bool]) -> list[Any]:
        """Everything ever received that matches (consumed or not)."""
        return [s for s in self.seen if pred(s)]

    async def expect(self, pred: Callable[[Any], bool] = lambda s: True, desc: str = "",
                     timeout: float = STEP_TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for i, item in enumerate(self.pending):
                if pred(item):
                    del self.pending[i]
                    return item
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got = "\n".join(f"  {s}" for s in self.seen) or "  (nothing)"
                raise AssertionError(
                    f"{self.owner.label}: no {self.what} {desc} within {timeout:.0f}s; "
                    f"all {self.what}s received:\n{got}")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass


# -- the client -----------------------------------------------------------------

class Client:
    """A slixmpp ClientXMPP bound to one server under test.

    ``tls`` is ``"starttls"`` (c2s port, STARTTLS required) or ``"direct"``
    (c2s_direct_tls port, XEP-0368). ``mech`` restricts SASL to one mechanism.
    ``channel_binding`` is None (stock slixmpp), ``"tls-server-end-point"``,
    or ``"bogus"`` (a tls-server-end-point claim with wrong data).
    """

    def __init__(self, server, jid: str, password: str, *, tls: str = "starttls",
                 mech: str | None = None, mechs: list[str] | None = None,
                 channel_binding: str | None = None, label: str | None = None):
        self.server = server
        self.label = label or f"{jid}#{next(_counter)}"
        self.password = password
        x = slixmpp.ClientXMPP(jid, password, sasl_mech=mech)
        if mechs:
            x.plugin["feature_mechanisms"].use_mechs = set(mechs)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        x.ssl_context = ctx
        if tls not in ("starttls", "direct"):
            raise ValueError(tls)
        self.tls_mode = tls
        x.enable_direct_tls = tls == "direct"
        x.enable_starttls = tls == "starttls"
        x.enable_plaintext = False
        x.whitespace_keepalive = False
        # Subscription requests are answered by the scenarios, not by slixmpp.
        x.roster.auto_authorize = None
        x.roster.auto_subscribe = False
        for plugin in PLUGINS:
            x.register_plugin(plugin)
        self.x = x
        self.port = server.tls_port if tls == "direct" else server.c2s_port

        self.messages = Inbox(self, "message")
        self.presences = Inbox(self, "presence")
        self.roster_pushes = Inbox(self, "roster push")
        self.stream_errors = Inbox(self, "stream error")
        self.features: list[str] = []
        self.wire: list[tuple[float, str, str]] = []
        self.t0 = time.monotonic()
        self.outcome: str | None = None
        self.disconnected = asyncio.Event()
        self.was_connected = False

        x.register_handler(Callback("wx messages", StanzaPath("message"), self.messages.put))
        x.register_handler(Callback("wx presences", StanzaPath("presence"), self.presences.put))
        x.register_handler(Callback("wx roster pushes", StanzaPath("iq@type=set/roster"),
                                    self.roster_pushes.put))
        x.register_handler(Callback("wx features", MatchXPath(f"{{{NS_STREAM}}}features"),
                                    lambda s: self.features.append(str(s))))
        x.add_event_handler("stream_error", self.stream_errors.put)
        x.add_event_handler("disconnected", lambda _e: self.disconnected.set())
        x.add_event_handler("connected", self._on_connected)
        if channel_binding:
            self._install_channel_binding(channel_binding)
        self._tap_wire()

    # -- wire transcript

    def _tap_wire(self) -> None:
        x = self.x
        orig_send_raw, orig_data_received = x.send_raw, x.data_received

        def send_raw(data):
            self.wire.append((time.monotonic() - self.t0, "C", data if isinstance(data, str) else data.decode("utf-8", "replace")))
            return orig_send_raw(data)

        def data_received(data):
            self.wire.append((time.monotonic() - self.t0, "S", data if isinstance(data, str) else data.decode("utf-8", "replace")))
            return orig_data_received(data)

        x.send_raw = send_raw
        x.data_received = data_received

    def wire_text(self) -> str:
        return "\n".join(f"{t:7.3f} {who}: {chunk}" for t, who, chunk in self.wire) or "(no traffic)"

    def _on_connected(self, _event) -> None:
        self.was_connected = True
        self.disconnected.clear()

    def _install_channel_binding(self, kind: str) -> None:
        mech_plugin = self.x.plugin["feature_mechanisms"]
        default = mech_plugin._default_credentials

        def credentials(required, optional):
            result = default(required, optional)
            wanted = set(required) | set(optional)
            if "channel_binding" in wanted:
                der = self.x.socket.getpeercert(True) if self.x.socket is not None else None
                if der:
                    data = tls_server_end_point(der)
                    result["channel_binding"] = bytes(len(data)) if kind == "bogus" else data
            if "cb_type" in wanted:
                result["cb_type"] = b"tls-server-end-point"
            return result

        mech_plugin.sasl_callback = credentials

    # -- session lifecycle

    async def connect(self, timeout: float = STEP_TIMEOUT) -> str:
        """Connect and wait for the first of: session_start, failed_auth,
        failed_all_auth, disconnected. Returns its name (also in .outcome)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def setter(name):
            def handler(_event=None):
                if not done.done():
                    done.set_result(name)
            return handler

        for name in ("session_start", "failed_auth", "failed_all_auth", "no_auth", "disconnected"):
            self.x.add_event_handler(name, setter(name), disposable=True)
        self.x.connect(host="127.0.0.1", port=self.port)
        try:
            self.outcome = await asyncio.wait_for(done, timeout)
        except asyncio.TimeoutError:
            self.outcome = "timeout"
        if self.outcome in ("timeout", "disconnected"):
            self.x.cancel_connection_attempt()
        return self.outcome

    async def login(self, timeout: float = STEP_TIMEOUT) -> "Client":
        outcome = await self.connect(timeout)
        if outcome != "session_start":
            raise AssertionError(
                f"{self.label}: login on port {self.port} ({self.tls_mode}) ended with {outcome!r}, "
                f"not session_start; stream errors: {[str(e) for e in self.stream_errors.seen]}\n"
                f"wire:\n{self.wire_text()}")
        return self

    @property
    def jid(self) -> slixmpp.JID:
        return self.x.boundjid

    @property
    def sasl_mechanism(self) -> str | None:
        mech = self.x.plugin["feature_mechanisms"].mech
        return mech.name if mech is not None else None

    @property
    def encrypted(self) -> bool:
        transport = self.x.transport
        return transport is not None and transport.get_extra_info("ssl_object") is not None

    @property
    def connected(self) -> bool:
        return self.x.transport is not None

    async def close(self, timeout: float = 5.0) -> None:
        """Clean logout: </stream:stream>, wait for the server's close."""
        if self.x.is_connecting():
            self.x.cancel_connection_attempt()
        if not self.connected:
            return
        try:
            await asyncio.wait_for(self.x.disconnect(wait=timeout), timeout + 1)
        except asyncio.TimeoutError:
            self.x.abort()
        if self.connected:
            self.x.abort()

    def kill(self) -> None:
        """Abrupt loss: drop TCP with no </stream:stream> and no TLS close_notify."""
        transport = self.x.transport
        if transport is not None:
            transport.abort()

    async def wait_disconnected(self, timeout: float = STEP_TIMEOUT) -> None:
        try:
            await asyncio.wait_for(self.disconnected.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.label}: still connected after {timeout:.0f}s\n"
                                 f"wire:\n{self.wire_text()}") from None

    # -- stanzas

    async def iq(self, iq: Iq, timeout: float = STEP_TIMEOUT) -> Iq:
        """Send an IQ; return the response, result or error (no exception)."""
        try:
            return await iq.send(timeout=timeout)
        except IqError as e:
            return e.iq
        except IqTimeout:
            raise AssertionError(f"{self.label}: no response to IQ within {timeout:.0f}s: {iq}") from None

    def make_iq(self, itype: str, to: str | None = None, payload: str | None = None) -> Iq:
        iq = self.x.Iq()
        iq["type"] = itype
        if to:
            iq["to"] = to
        if payload:
            from xml.etree import ElementTree as ET

            iq.append(ET.fromstring(payload))
        return iq

    async def sync(self) -> None:
        """Round trip to the server (XEP-0199 ping; any response will do).

        RFC 6120 §10.1: the server processes our stanzas in order, so when the
        answer arrives everything we sent before has been processed."""
        iq = self.x.Iq()
        iq["type"] = "get"
        iq["to"] = self.server.domain
        iq.enable("ping")
        await self.iq(iq)

    async def online(self, priority: int | None = None, show: str | None = None,
                     status: str | None = None) -> None:
        """Send (initial) presence and make sure the server has processed it."""
        self.x.send_presence(ppriority=priority, pshow=show, pstatus=status)
        await self.sync()

    def send_message(self, to: str, body: str | None, mtype: str = "chat", mid: str | None = None):
        msg = self.x.make_message(mto=to, mbody=body, mtype=mtype)
        msg["id"] = mid or uuid.uuid4().hex
        msg.send()
        return msg

    async def expect_message(self, body: str | None = None, sender: str | None = None,
                             mtype: str | None = None, timeout: float = STEP_TIMEOUT):
        def pred(m):
            return ((body is None or m["body"] == body)
                    and (sender is None or str(m["from"]) == sender or m["from"].bare == sender)
                    and (mtype is None or m["type"] == mtype))
        return await self.messages.expect(pred, f"(body={body!r} from={sender!r} type={mtype!r})",
                                          timeout)

    async def expect_presence(self, sender: str | None = None, ptype: str | None = None,
                              timeout: float = STEP_TIMEOUT):
        """ptype uses wire values: None matches any; 'available' means no type attribute."""
        def pred(p):
            wire_type = p.xml.get("type") or "available"
            return ((sender is None or str(p["from"]) == sender or p["from"].bare == sender)
                    and (ptype is None or wire_type == ptype))
        return await self.presences.expect(pred, f"(from={sender!r} type={ptype!r})", timeout)

    async def roster_get(self, ver: str | None = None) -> Iq:
        iq = self.x.Iq()
        iq["type"] = "get"
        iq.enable("roster")
        if ver is not None:
            iq["roster"].xml.set("ver", ver)
        return await self.iq(iq)

    async def roster_set(self, jid: str, name: str | None = None, groups: list[str] | None = None,
                         subscription: str | None = None) -> Iq:
        iq = self.x.Iq()
        iq["type"] = "set"
        item = {}
        if name is not None:
            item["name"] = name
        if groups is not None:
            item["groups"] = groups
        if subscription is not None:
            item["subscription"] = subscription
        iq["roster"]["items"] = {jid: item}
        return await self.iq(iq)


async def barrier(sender: Client, receiver: Client) -> None:
    """Returns once a marker sent by ``sender`` to ``receiver``'s full JID has
    arrived: every stanza ``sender`` sent earlier has been routed by then."""
    marker = f"barrier-{uuid.uuid4().hex}"
    sender.send_message(str(receiver.jid), marker, mtype="chat")
    await receiver.expect_message(body=marker)


class ClientPool:
    """All clients of one test; closed after the test body, inside its loop."""

    def __init__(self):
        self.clients: list[Client] = []

    def new(self, server, jid: str, password: str, **kw) -> Client:
        client = Client(server, jid, password, **kw)
        self.clients.append(client)
        return client

    async def login(self, server, jid: str, password: str, **kw) -> Client:
        return await self.new(server, jid, password, **kw).login()

    async def aclose(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
