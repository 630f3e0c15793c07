"""A scripted XEP-0174 peer (``python llpeer.py --user carol --machine m4
--addr 127.0.0.4``), run inside the test's network namespace.

mDNS with the ``zeroconf`` library; serverless streams with plain sockets
and ``xml.etree``'s pull parser (no TLS: it ignores an offered STARTTLS,
which also tests that path). Commands are JSON lines on stdin, events JSON
lines on stdout:

    {"cmd": "send", "to": "alice@m1", "body": "hi", "stanza_to": optional}
    {"cmd": "flood", "to": "alice@m1", "count": 200}
    {"cmd": "status", "status": "away", "msg": "..."}
    {"cmd": "goodbye"}           # unregister: an mDNS goodbye
    {"cmd": "quit"}

    {"event": "ready", "port": N}
    {"event": "peer_up", "name": "alice@m1", "status": "avail", "msg": ..., "txt": {...}}
    {"event": "peer_down", "name": "alice@m1"}
    {"event": "message", "from": ..., "to": ..., "body": ..., "type": ...}
    {"event": "stream_error", "condition": ..., "direction": "out"|"in"}
    {"event": "closed", "peer": ..., "direction": ...}
    {"event": "gone"}
"""

import argparse
import json
import socket
import sys
import threading
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

TYPE = "_presence._tcp.local."
NS_STREAM = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"

out_lock = threading.Lock()


def emit(**event) -> None:
    with out_lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def header(frm: str, to: str | None) -> bytes:
    to_attr = f" to={quoteattr(to)}" if to else ""
    return (f"<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAM}'"
            f" from={quoteattr(frm)}{to_attr} version='1.0'>").encode()


class Stream:
    """One serverless stream (either direction), read by its own thread."""

    def __init__(self, sock: socket.socket, me: str, direction: str, on_stanza):
        self.sock = sock
        self.me = me
        self.peer: str | None = None
        self.direction = direction
        self.on_stanza = on_stanza
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.header = threading.Event()
        self.features = threading.Event()
        self.lock = threading.Lock()
        self.closed = False

    def send(self, data: bytes) -> bool:
        with self.lock:
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                return False

    def run(self) -> None:
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.parser.feed(data)
                for ev, el in self.parser.read_events():
                    if ev == "start":
                        self.depth += 1
                        if self.depth == 1:
                            self.on_header(el)
                    else:
                        self.depth -= 1
                        if self.depth == 1:
                            self.on_element(el)
                        if self.depth == 0:
                            raise EOFError
        except (OSError, EOFError, ET.ParseError):
            pass
        self.closed = True
        emit(event="closed", peer=self.peer, direction=self.direction)
        try:
            self.sock.close()
        except OSError:
            pass

    def on_header(self, el) -> None:
        self.peer = self.peer or el.get("from")
        if self.direction == "in":
            self.send(header(self.me, el.get("from")) + b"<stream:features/>")
        self.header.set()

    def on_element(self, el) -> None:
        if el.tag == f"{{{NS_STREAM}}}features":
            self.features.set()  # STARTTLS, if offered, is not taken
        elif el.tag == f"{{{NS_STREAM}}}error":
            cond = next((c.tag.split("}")[1] for c in el if c.tag.startswith(f"{{{NS_ERR}}}")
                         and not c.tag.endswith("}text")), None)
            emit(event="stream_error", condition=cond, direction=self.direction)
        else:
            self.on_stanza(el)
        el.clear()


class Peer:
    def __init__(self, user: str, machine: str, addr: str, nick: str | None):
        self.me = f"{user}@{machine}"
        self.machine = machine
        self.addr = addr
        self.zc = Zeroconf(interfaces=[addr], ip_version=IPVersion.V4Only)
        self.listener = socket.socket()
        self.listener.bind((addr, 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.props = {"txtvers": "1", "port.p2pj": str(self.port), "status": "avail",
                      "1st": user.capitalize(), "node": "https://waxwing.invalid/llpeer",
                      "ver": "abc=", "hash": "sha-1"}
        if nick:
            self.props["nick"] = nick
        self.info = self._info()
        self.peers: dict[str, tuple[str, int]] = {}
        self.streams: dict[str, Stream] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self.accept_loop, daemon=True).start()
        self.zc.register_service(self.info)
        self.browser = ServiceBrowser(self.zc, TYPE, handlers=[self.on_change])

    def _info(self) -> ServiceInfo:
        return ServiceInfo(TYPE, f"{self.me}.{TYPE}", addresses=[socket.inet_aton(self.addr)],
                           port=self.port, properties=self.props, server=f"{self.machine}.local.")

    def on_change(self, zeroconf, service_type, name, state_change) -> None:
        inst = name[: -len(TYPE) - 1]
        if inst == self.me:
            return
        if state_change is ServiceStateChange.Removed:
            with self.lock:
                self.peers.pop(inst.lower(), None)
            emit(event="peer_down", name=inst)
            return
        info = zeroconf.get_service_info(service_type, name, timeout=3000)
        if info is None or not info.parsed_addresses():
            return
        with self.lock:
            self.peers[inst.lower()] = (info.parsed_addresses()[0], info.port)
        txt = {k.decode(): (v.decode() if v is not None else None)
               for k, v in info.properties.items()}
        emit(event="peer_up", name=inst, status=txt.get("status"), msg=txt.get("msg"),
             txt=txt, addr=info.parsed_addresses()[0], port=info.port)

    def on_stanza(self, el) -> None:
        if el.tag == f"{{{NS_CLIENT}}}message":
            body = el.find(f"{{{NS_CLIENT}}}body")
            emit(event="message", **{"from": el.get("from")}, to=el.get("to"),
                 type=el.get("type"), body=body.text if body is not None else None)

    def accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            s = Stream(sock, self.me, "in", self.on_stanza)
            threading.Thread(target=self._serve_in, args=(s,), daemon=True).start()

    def _serve_in(self, s: Stream) -> None:
        def remember():
            if s.header.wait(10) and s.peer:
                with self.lock:
                    self.streams[s.peer.lower()] = s
        threading.Thread(target=remember, daemon=True).start()
        s.run()

    def stream_to(self, to: str) -> Stream:
        with self.lock:
            s = self.streams.get(to.lower())
            if s is not None and not s.closed:
                return s
            addr = self.peers.get(to.lower())
        if addr is None:
            raise KeyError(f"no peer {to}")
        sock = socket.socket()
        sock.bind((self.addr, 0))  # from the announced address
        sock.connect(addr)
        s = Stream(sock, self.me, "out", self.on_stanza)
        s.peer = to
        threading.Thread(target=s.run, daemon=True).start()
        s.send(header(self.me, to))
        if not (s.header.wait(10) and s.features.wait(10)):
            raise TimeoutError("no stream header or features")
        with self.lock:
            self.streams[to.lower()] = s
        return s

    def message(self, to: str, body: str, stanza_to: str | None = None) -> bytes:
        return (f"<message type='chat' from={quoteattr(self.me)} to={quoteattr(stanza_to or to)}>"
                f"<body>{escape(body)}</body></message>").encode()

    def command(self, c: dict) -> bool:
        cmd = c["cmd"]
        if cmd == "send":
            s = self.stream_to(c["to"])
            s.send(self.message(c["to"], c["body"], c.get("stanza_to")))
        elif cmd == "flood":
            s = self.stream_to(c["to"])
            for i in range(c["count"]):
                if not s.send(self.message(c["to"], f"flood {i}")):
                    break
        elif cmd == "status":
            self.props["status"] = c["status"]
            if c.get("msg"):
                self.props["msg"] = c["msg"]
            else:
                self.props.pop("msg", None)
            self.info = self._info()
            self.zc.update_service(self.info)
        elif cmd == "goodbye":
            self.zc.unregister_service(self.info)
            emit(event="gone")
        elif cmd == "quit":
            return False
        return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--user", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--nick")
    a = ap.parse_args()
    peer = Peer(a.user, a.machine, a.addr, a.nick)
    emit(event="ready", port=peer.port, name=peer.me)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            if not peer.command(json.loads(line)):
                break
            emit(event="done", cmd=json.loads(line)["cmd"])
        except Exception as e:  # reported to the test, which fails on it
            emit(event="command_failed", error=repr(e))
    peer.zc.close()


if __name__ == "__main__":
    main()
