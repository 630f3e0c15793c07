"""A raw XMPP client stream: socket + ssl (or pyOpenSSL), no XMPP library.

Used for transcript-level checks where a client library would hide what is
on the wire (stream features, stream errors, restricted XML). Every read is
bounded by a deadline; the whole wire transcript is kept for failure output.
"""

from __future__ import annotations

import base64
import collections
import select
import socket
import ssl
import time
import xml.etree.ElementTree as ET

from . import DOMAIN, STEP_TIMEOUT

NS_STREAM = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def stream_header(to: str = DOMAIN, version: str = "1.0") -> str:
    return (
        "<?xml version='1.0'?>"
        f"<stream:stream to='{to}' version='{version}' xml:lang='en' "
        f"xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAM}'>"
    )


def insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class StreamEnded(AssertionError):
    pass


# -- connections: plain, stdlib TLS, pyOpenSSL TLS -------------------------------

class _Plain:
    def __init__(self, sock: socket.socket):
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.settimeout(STEP_TIMEOUT)
        self.sock.sendall(data)

    def recv(self, deadline: float) -> bytes | None:
        """Bytes, b'' at EOF, None when the deadline passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return None
        except (ConnectionResetError, BrokenPipeError):
            return b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _StdTls(_Plain):
    def __init__(self, sock: socket.socket, server_hostname: str):
        sock.settimeout(STEP_TIMEOUT)
        self.sock = insecure_context().wrap_socket(sock, server_hostname=server_hostname)

    def recv(self, deadline: float) -> bytes | None:
        try:
            return super().recv(deadline)
        except ssl.SSLZeroReturnError:
            return b""
        except ssl.SSLError as e:
            if "EOF" in str(e) or "UNEXPECTED_EOF" in str(e):
                return b""
            raise

    def peer_cert_der(self) -> bytes:
        return self.sock.getpeercert(binary_form=True)

    def tls_version(self) -> str:
        return self.sock.version()

    def exporter(self, label: bytes, length: int) -> bytes:
        raise NotImplementedError("Python's ssl module has no keying-material exporter; use tls_engine='pyopenssl'")


class _PyOpenSsl:
    """pyOpenSSL, for the RFC 9266 tls-exporter channel binding (stdlib ssl lacks it)."""

    def __init__(self, sock: socket.socket, server_hostname: str):
        from OpenSSL import SSL

        self.SSL = SSL
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        sock.setblocking(False)
        self.sock = sock
        self.conn = SSL.Connection(ctx, sock)
        self.conn.set_tlsext_host_name(server_hostname.encode())
        self.conn.set_connect_state()
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            try:
                self.conn.do_handshake()
                break
            except SSL.WantReadError:
                self._wait(deadline, read=True)
            except SSL.WantWriteError:
                self._wait(deadline, read=False)

    def _wait(self, deadline: float, read: bool) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("TLS I/O timed out")
        r, w, _ = select.select([self.sock] if read else [], [] if read else [self.sock], [], remaining)
        return bool(r or w)

    def send(self, data: bytes) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        view = memoryview(data)
        while view:
            try:
                n = self.conn.send(view.tobytes())
                view = view[n:]
            except self.SSL.WantWriteError:
                self._wait(deadline, read=False)
            except self.SSL.WantReadError:
                self._wait(deadline, read=True)

    def recv(self, deadline: float) -> bytes | None:
        SSL = self.SSL
        while True:
            try:
                return self.conn.recv(65536)
            except SSL.WantReadError:
                if time.monotonic() >= deadline:
                    return None
                if not self._wait_quiet(deadline):
                    return None
            except SSL.ZeroReturnError:
                return b""
            except SSL.SysCallError:
                return b""

    def _wait_quiet(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        r, _, _ = select.select([self.sock], [], [], remaining)
        return bool(r)

    def peer_cert_der(self) -> bytes:
        from OpenSSL import crypto

        return crypto.dump_certificate(crypto.FILETYPE_ASN1, self.conn.get_peer_certificate())

    def tls_version(self) -> str:
        return self.conn.get_protocol_version_name()

    def exporter(self, label: bytes, length: int) -> bytes:
        return self.conn.export_keying_material(label, length, None)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# -- the stream -------------------------------------------------------------------

class RawStream:
    def __init__(self, port: int, *, host: str = "127.0.0.1", domain: str = DOMAIN,
                 direct_tls: bool = False, tls_engine: str = "stdlib"):
        self.domain = domain
        self.port = port
        self.transcript: list[tuple[str, str]] = []
        sock = socket.create_connection((host, port), timeout=STEP_TIMEOUT)
        self.conn = _Plain(sock)
        self.tls = False
        if direct_tls:
            self._wrap_tls(tls_engine)
        self._reset_parser()

    # -- plumbing

    def _reset_parser(self) -> None:
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.root: ET.Element | None = None
        self.events: collections.deque = collections.deque()
        self.eof = False

    def _wrap_tls(self, engine: str) -> None:
        sock = self.conn.sock
        self.conn = _PyOpenSsl(sock, self.domain) if engine == "pyopenssl" else _StdTls(sock, self.domain)
        self.tls = True
        self.transcript.append(("--", f"TLS established ({self.conn.tls_version()}, {engine})"))

    def send(self, data: str | bytes) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.transcript.append(("C", raw.decode("utf-8", "replace")))
        self.conn.send(raw)

    def _pump(self, deadline: float) -> bool:
        """Read once and parse. False when the deadline passed with nothing read."""
        if self.eof:
            return True
        data = self.conn.recv(deadline)
        if data is None:
            return False
        if data == b"":
            self.eof = True
            self.transcript.append(("--", "EOF (server closed the connection)"))
            self.events.append(("eof", None))
            return True
        self.transcript.append(("S", data.decode("utf-8", "replace")))
        try:
            self.parser.feed(data)
            for event, el in self.parser.read_events():
                if event == "start":
                    if self.depth == 0:
                        self.root = el
                        header = ET.Element(el.tag, dict(el.attrib))
                        self.events.append(("header", header))
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth == 1:
                        self.events.append(("element", el))
                        if self.root is not None:
                            self.root.remove(el)  # keep memory flat; attributes stay
                    elif self.depth == 0:
                        self.events.append(("close", el))
        except ET.ParseError as e:
            raise AssertionError(f"server sent XML we cannot parse: {e}\n{self.text()}") from e
        return True

    def _event(self, timeout: float) -> tuple[str, ET.Element | None]:
        deadline = time.monotonic() + timeout
        while not self.events:
            if self.eof:
                return ("eof", None)
            if not self._pump(deadline):
                raise AssertionError(f"nothing from the server within {timeout:.0f}s\n{self.text()}")
        return self.events.popleft()

    # -- API

    def text(self) -> str:
        """The wire transcript, for assertion messages."""
        out = [f"--- transcript (port {self.port}) ---"]
        for who, chunk in self.transcript:
            out.append(f"{who}: {chunk}")
        return "\n".join(out)

    def send_header(self, to: str | None = None) -> None:
        self.send(stream_header(to or self.domain))

    def read_header(self, timeout: float = STEP_TIMEOUT) -> ET.Element:
        kind, el = self._event(timeout)
        if kind != "header":
            raise AssertionError(f"expected a stream header, got {kind} {_show(el)}\n{self.text()}")
        return el

    def next(self, timeout: float = STEP_TIMEOUT) -> ET.Element | None:
        """The next top-level element; None when the server closed its stream.
        Raises StreamEnded on EOF without </stream:stream>."""
        kind, el = self._event(timeout)
        if kind == "element":
            return el
        if kind == "close":
            return None
        if kind == "eof":
            self.events.appendleft(("eof", None))
            raise StreamEnded(f"connection closed\n{self.text()}")
        raise AssertionError(f"unexpected {kind} {_show(el)}\n{self.text()}")

    def expect(self, tag: str, timeout: float = STEP_TIMEOUT) -> ET.Element:
        el = self.next(timeout)
        if el is None or el.tag != tag:
            raise AssertionError(f"expected {tag}, got {_show(el)}\n{self.text()}")
        return el

    def open(self, to: str | None = None) -> ET.Element:
        """Send our header; return the server's <stream:features/>."""
        self.send_header(to)
        self.header = self.read_header()
        return self.expect(q(NS_STREAM, "features"))

    def restart(self) -> ET.Element:
        self._reset_parser()
        return self.open()

    def starttls(self, engine: str = "stdlib") -> ET.Element:
        """STARTTLS; returns the features of the new stream."""
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        self.expect(q(NS_TLS, "proceed"))
        self._wrap_tls(engine)
        return self.restart()

    def wait_closed(self, timeout: float = STEP_TIMEOUT) -> bool:
        """Read (and keep) everything until EOF; True if the server closed the TCP connection."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._pump(deadline):
                return False
        return True

    def remaining_elements(self) -> list[ET.Element]:
        return [el for kind, el in self.events if kind == "element"]

    def close(self) -> None:
        self.conn.close()

    # -- SASL and bind

    def auth(self, mechanism: str, initial: bytes | None) -> None:
        payload = "=" if initial == b"" else (base64.b64encode(initial).decode() if initial else "")
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{payload}</auth>")

    def sasl_plain(self, user: str, password: str) -> ET.Element:
        self.auth("PLAIN", f"\0{user}\0{password}".encode())
        return self.next()

    def sasl_scram(self, client) -> ET.Element:
        """Runs a wxtest.scram.ScramClient; returns the final <success/> or <failure/>."""
        self.auth(client.mech, client.client_first())
        el = self.next()
        if el is None or el.tag != q(NS_SASL, "challenge"):
            return el
        final = client.client_final(base64.b64decode(el.text or ""))
        self.send(f"<response xmlns='{NS_SASL}'>{base64.b64encode(final).decode()}</response>")
        el = self.next()
        if el is not None and el.tag == q(NS_SASL, "success"):
            client.verify_server_final(base64.b64decode(el.text or ""))
        return el

    def peer_cert_der(self) -> bytes:
        return self.conn.peer_cert_der()

    def exporter(self, label: bytes, length: int) -> bytes:
        return self.conn.exporter(label, length)

    def bind(self, resource: str | None = "raw") -> ET.Element:
        body = f"<resource>{resource}</resource>" if resource else ""
        self.send(f"<iq type='set' id='bind_1'><bind xmlns='{NS_BIND}'>{body}</bind></iq>")
        return self.expect(q(NS_CLIENT, "iq"))


def _show(el: ET.Element | None) -> str:
    if el is None:
        return "</stream:stream>"
    return ET.tostring(el, encoding="unicode")


def mechanisms(features: ET.Element) -> list[str]:
    mechs = features.find(q(NS_SASL, "mechanisms"))
    if mechs is None:
        return []
    return [m.text or "" for m in mechs.findall(q(NS_SASL, "mechanism"))]


def stream_error_condition(el: ET.Element | None) -> str | None:
    if el is None or el.tag != q(NS_STREAM, "error"):
        return None
    for child in el:
        if child.tag.startswith(f"{{{NS_STREAM_ERRORS}}}") and child.tag != q(NS_STREAM_ERRORS, "text"):
            return child.tag.split("}", 1)[1]
    return None
