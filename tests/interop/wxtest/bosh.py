"""A raw BOSH (XEP-0124/0206) client over plain HTTP, for the tests that need
the wire itself: request ids out of order, unknown sessions, inactivity.

Each request is one HTTP/1.1 POST on its own connection, run in a thread so
that several can be held by the server at once.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import re
import secrets
import xml.etree.ElementTree as ET

from . import DOMAIN, STEP_TIMEOUT

HTTPBIND = "http://jabber.org/protocol/httpbind"
XBOSH = "urn:xmpp:xbosh"


def body(rid: int, sid: str | None = None, payload: str = "", **attrs: str) -> str:
    a = {"rid": str(rid), "xmlns": HTTPBIND, "xmlns:xmpp": XBOSH}
    if sid:
        a["sid"] = sid
    a.update({k.replace("__", ":"): v for k, v in attrs.items()})
    text = " ".join(f"{k}='{v}'" for k, v in a.items())
    return f"<body {text}>{payload}</body>" if payload else f"<body {text}/>"


class RawBosh:
    def __init__(self, port: int, host: str = "127.0.0.1", path: str = "/http-bind",
                 origin: str | None = None):
        self.port = port
        self.host = host
        self.path = path
        self.origin = origin  # sent as the Origin header, as a browser page would
        self.sid: str | None = None
        self.rid = secrets.randbelow(2**40) + 1
        self.transcript: list[str] = []

    def _post(self, data: str, timeout: float) -> tuple[int, str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        headers = {"Content-Type": "text/xml; charset=utf-8"}
        if self.origin:
            headers["Origin"] = self.origin
        try:
            conn.request("POST", self.path, body=data.encode(), headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    async def post(self, data: str, timeout: float = STEP_TIMEOUT + 70) -> tuple[int, str]:
        self.transcript.append(f"SEND {data}")
        status, text = await asyncio.to_thread(self._post, data, timeout)
        self.transcript.append(f"RECV {status} {text}")
        return status, text

    def next_rid(self) -> int:
        self.rid += 1
        return self.rid

    async def create(self, wait: int = 60, hold: int = 1, **attrs: str) -> ET.Element:
        status, text = await self.post(body(
            self.rid, to=DOMAIN, wait=str(wait), hold=str(hold), ver="1.6",
            xmpp__version="1.0", **{"xml:lang": "en"}, **attrs))
        assert status == 200, text
        el = ET.fromstring(text)
        self.sid = el.get("sid")
        assert self.sid, f"no sid in {text}"
        return el

    async def send(self, payload: str = "", rid: int | None = None, **attrs: str) -> ET.Element:
        status, text = await self.post(body(rid or self.next_rid(), self.sid, payload, **attrs))
        assert status == 200, text
        return ET.fromstring(text)

    async def login(self, user: str, password: str, resource: str = "raw") -> str:
        """Creates a session, then SASL PLAIN, restart, bind; the full JID."""
        features = await self.create()
        if features.find("{http://etherx.jabber.org/streams}features") is None:
            await self.send()
        return await self.login_after_create(user, password, resource)

    async def authenticate(self, user: str, password: str) -> None:
        """SASL PLAIN and the stream restart, on a created session."""
        cred = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        r = await self.send(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>")
        assert r.find("{urn:ietf:params:xml:ns:xmpp-sasl}success") is not None, ET.tostring(r)
        r = await self.send(to=DOMAIN, xmpp__restart="true")
        assert r.find("{http://etherx.jabber.org/streams}features") is not None, ET.tostring(r)

    async def login_after_create(self, user: str, password: str, resource: str = "raw") -> str:
        """SASL PLAIN, restart, bind on a created session; the full JID."""
        cred = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        r = await self.send(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>")
        assert r.find("{urn:ietf:params:xml:ns:xmpp-sasl}success") is not None, ET.tostring(r)
        r = await self.send(to=DOMAIN, xmpp__restart="true")
        assert r.find("{http://etherx.jabber.org/streams}features") is not None, ET.tostring(r)
        r = await self.send(
            "<iq xmlns='jabber:client' type='set' id='bind'>"
            "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            f"<resource>{resource}</resource></bind></iq>")
        jid = r.find(".//{urn:ietf:params:xml:ns:xmpp-bind}jid")
        assert jid is not None, ET.tostring(r)
        return jid.text or ""

    def wire(self) -> str:
        return "\n".join(self.transcript)


def condition(el: ET.Element) -> tuple[str | None, str | None]:
    return el.get("type"), el.get("condition")


def texts(el: ET.Element) -> list[str]:
    return [b.text or "" for b in el.iter("{jabber:client}body")]


__all__ = ["RawBosh", "body", "condition", "texts", "re"]
