"""A slixmpp ``ComponentXMPP`` (XEP-0114) bound to one server under test,
with inboxes like ``wxtest.client.Client``."""

from __future__ import annotations

import asyncio
import itertools

from slixmpp.componentxmpp import ComponentXMPP
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

from . import STEP_TIMEOUT
from .client import Inbox

_counter = itertools.count(1)


class Component:
    """``Component(server, "gw.localhost", secret)``; ``await connect()``."""

    def __init__(self, server, domain: str, secret: str, plugins=("xep_0030", "xep_0199")):
        self.label = f"component {domain}#{next(_counter)}"
        self.wire: list[str] = []
        port = int(server.listeners["component"][0].rsplit(":", 1)[1])
        x = ComponentXMPP(domain, secret, "127.0.0.1", port)
        x.whitespace_keepalive = False
        for p in plugins:
            x.register_plugin(p)
        self.x = x
        self.messages = Inbox(self, "message")
        self.iqs = Inbox(self, "iq")
        self.stream_errors = Inbox(self, "stream error")
        self.session = asyncio.Event()
        self.disconnected = asyncio.Event()
        x.register_handler(Callback("wx messages", StanzaPath("message"), self.messages.put))
        x.add_event_handler("session_start", lambda _e: self.session.set())
        x.add_event_handler("stream_error", self.stream_errors.put)
        x.add_event_handler("disconnected", lambda _e: self.disconnected.set())
        x.add_event_handler("connection_failed", lambda _e: self.disconnected.set())
        orig_send_raw, orig_received = x.send_raw, x.data_received

        def send_raw(data):
            self.wire.append(f"SENT {data}")
            return orig_send_raw(data)

        def data_received(data):
            self.wire.append(f"RECV {data!r}")
            return orig_received(data)

        x.send_raw, x.data_received = send_raw, data_received

    def wire_text(self) -> str:
        return "\n".join(self.wire)

    async def connect(self, timeout: float = STEP_TIMEOUT) -> "Component":
        """Connects and waits for the accepted handshake."""
        self.x.connect()
        await asyncio.wait_for(self.session.wait(), timeout)
        return self

    async def refused(self, timeout: float = STEP_TIMEOUT) -> str:
        """Connects expecting a stream error; returns its condition."""
        self.x.connect()
        err = await self.stream_errors.expect(desc="(expected a refusal)", timeout=timeout)
        assert not self.session.is_set(), "the handshake was accepted"
        return err["condition"]

    async def close(self) -> None:
        if not self.disconnected.is_set():
            self.x.disconnect()
            try:
                await asyncio.wait_for(self.disconnected.wait(), 5)
            except asyncio.TimeoutError:
                self.x.abort()
