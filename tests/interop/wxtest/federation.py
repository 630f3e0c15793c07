"""Real federation peers for ``test_federation.py``: Prosody and ejabberd
(the Debian packages), a throwaway CA, and a tiny DNS server.

Every peer runs unprivileged from a private directory, serves one domain,
has its c2s listener on ``127.0.0.1:<ephemeral>`` (the test clients connect
there) and its s2s listener on a loopback address of its own, port 5269.

Name resolution without touching the machine's global files:

- Waxwing reaches the peer through a static route (``[s2s.routes]``).
- Prosody resolves Waxwing's domains through a private hosts file given to
  its resolver (libunbound's ``hoststxt``, Prosody's ``unbound`` option).
- ejabberd resolves with pure DNS (``inet_res`` for SRV, ``getaddrinfo`` for
  A; no static routes): it runs in a private mount and PID namespace whose
  ``/etc/resolv.conf`` is bind-mounted to point at a :class:`DnsServer` the
  test runs on that peer's loopback address (A records for the test domains,
  NXDOMAIN for everything else, so SRV lookups fail fast and the peer falls
  back to port 5269).
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from . import subjects

WX = "wx.federation.test"
MUC = f"conference.{WX}"  # Waxwing's MUC service ([muc] subdomain "conference")
PUBSUB = f"pubsub.{WX}"  # Waxwing's PubSub service; it asks remote clients for their caps
WX_NAMES = (WX, MUC, PUBSUB)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports (all bound at once, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_loopback_5269(udp53: bool = False, exclude: tuple[str, ...] = ()) -> str:
    """A 127.0.0.X address on which TCP port 5269 (and, with ``udp53``, UDP
    port 53 for a DNS server) is free: each server of each test its own."""
    candidates = list(range(20, 250))
    random.shuffle(candidates)
    for x in candidates:
        addr = f"127.0.0.{x}"
        if addr in exclude:
            continue
        with socket.socket() as s:
            try:
                s.bind((addr, 5269))
            except OSError:
                continue
            if not udp53:
                return addr
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((addr, 53))
                except OSError:
                    continue
            return addr
    pytest.fail("no 127.0.0.X address with port 5269 free", pytrace=False)


def wait_listening(proc: subprocess.Popen, addrs: list[tuple[str, int]], what: str,
                   logs, timeout: float = 60) -> None:
    """Until every (host, port) accepts a connection; fails if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    for host, port in addrs:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{what} exited early ({proc.returncode}):\n{logs()}", pytrace=False)
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{what} did not listen on {host}:{port} in time:\n{logs()}",
                                pytrace=False)
                time.sleep(0.1)


def chown_tree(root: Path, user: str) -> None:
    uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
    for dirpath, _dirs, files in os.walk(root):
        os.chown(dirpath, uid, gid)
        for f in files:
            os.chown(os.path.join(dirpath, f), uid, gid)


def self_signed(dir: Path, domain: str) -> tuple[Path, Path]:
    cert, key = dir / "cert.pem", dir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-subj", f"/CN={domain}", "-days", "2",
         "-addext", f"subjectAltName=DNS:{domain}"],
        check=True, capture_output=True,
    )
    return cert, key


class FederationCA:
    """A throwaway CA issuing end-entity certificates for WX and ``peer``."""

    def __init__(self, dir: Path, peer: str):
        def run(*argv):
            subprocess.run(argv, check=True, capture_output=True, cwd=dir)

        self.ca, ca_key = dir / "ca.pem", dir / "ca.key"
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
            "-out", str(self.ca), "-subj", "/CN=Waxwing federation test CA", "-days", "2",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self.certs: dict[str, tuple[Path, Path]] = {}
        for domain in (WX, peer):
            cert, key, csr, ext = (dir / f"{domain}.{x}" for x in ("pem", "key", "csr", "ext"))
            # Waxwing's certificate also names its MUC and PubSub services.
            names = ",".join(f"DNS:{n}" for n in (WX_NAMES if domain == WX else (domain,)))
            ext.write_text(f"subjectAltName={names}\nbasicConstraints=CA:FALSE\n"
                           "keyUsage=digitalSignature,keyEncipherment\n"
                           "extendedKeyUsage=serverAuth,clientAuth\n")
            run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                "-out", str(csr), "-subj", f"/CN={domain}")
            run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca),
                "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert), "-days", "2",
                "-extfile", str(ext))
            self.certs[domain] = (cert, key)


class DnsServer:
    """A UDP DNS server on ``addr:53`` answering A queries for ``records``
    (name -> IPv4), NODATA for other types of those names, NXDOMAIN for
    every other name. One thread; enough for a test's resolver."""

    def __init__(self, addr: str, records: dict[str, str]):
        self.records = {name.lower().rstrip("."): ip for name, ip in records.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, 53))
        self.addr = addr
        self.queries: list[tuple[str, int]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @staticmethod
    def _question(msg: bytes) -> tuple[str, int, int]:
        """(name, qtype, end of the question section)."""
        labels, i = [], 12
        while msg[i]:
            n = msg[i]
            labels.append(msg[i + 1:i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        qtype = struct.unpack("!H", msg[i + 1:i + 3])[0]
        return ".".join(labels).lower(), qtype, i + 5

    def answer(self, msg: bytes) -> bytes:
        (qid, flags, qdcount) = struct.unpack("!HHH", msg[:6])
        name, qtype, end = self._question(msg)
        self.queries.append((name, qtype))
        ip = self.records.get(name)
        rd = flags & 0x0100
        # QR, AA, RD copied, RA; RCODE 3 (NXDOMAIN) for unknown names.
        rflags = 0x8400 | rd | 0x0080 | (0 if ip else 3)
        answers = b""
        if ip and qtype == 1:
            answers = (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4)
                       + socket.inet_aton(ip))
        header = struct.pack("!HHHHHH", qid, rflags, qdcount and 1, 1 if answers else 0, 0, 0)
        return header + msg[12:end] + answers

    def _serve(self) -> None:
        while not self._closed:
            try:
                msg, peer = self.sock.recvfrom(4096)
            except OSError:
                return  # closed
            if self._closed:
                return
            try:
                self.sock.sendto(self.answer(msg), peer)
            except (IndexError, struct.error, OSError):
                continue  # not a query we understand: no answer

    def close(self) -> None:
        """Stops the thread and frees the port (a plain close would leave the
        blocked recvfrom holding the socket)."""
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(timeout=5)
        self.sock.close()


class Peer:
    """What the scenarios use of a federation peer (as of a server under test)."""

    name = "?"
    domain = "?"
    c2s_port = 0
    tls_port = 0
    s2s_addr = "127.0.0.1"
    s2s_port = 5269

    def start(self) -> "Peer":
        raise NotImplementedError

    def add_user(self, local: str, password: str) -> None:
        raise NotImplementedError

    def logs(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Prosody(Peer):
    """A Prosody serving ``pr.federation.test``, unprivileged, with its own
    config and data; it resolves Waxwing's names to ``wx_addr`` through a
    private hosts file.

    With ``pki``: certificates from the test CA only (``s2s_secure_auth``,
    SASL EXTERNAL); else self-signed, dialback. ``bidi`` loads mod_s2s_bidi
    (XEP-0288)."""

    name = "prosody"
    domain = "pr.federation.test"

    def __init__(self, wx_addr: str, pki: FederationCA | None = None, bidi: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="wx-prosody-"))
        self.c2s_port, self.tls_port, self.s2s_port = free_ports(3)
        self.config_path = self.dir / "prosody.cfg.lua"
        self.log_path = self.dir / "prosody.log"
        self.proc: subprocess.Popen | None = None
        (self.dir / "data").mkdir()
        (self.dir / "certs").mkdir()
        (self.dir / "hosts").write_text("".join(f"{wx_addr} {n}\n" for n in WX_NAMES))
        if pki:
            cert, key = self.dir / "cert.pem", self.dir / "key.pem"
            shutil.copy(pki.certs[self.domain][0], cert)
            shutil.copy(pki.certs[self.domain][1], key)
            shutil.copy(pki.ca, self.dir / "ca.pem")
        else:
            cert, key = self_signed(self.dir, self.domain)
        cafile = f', cafile = "{self.dir}/ca.pem"' if pki else ""
        # With a shared test CA: certificates only (XEP-0178); else dialback.
        secure_auth = "true" if pki else "false"
        lines = [
            f'pidfile = "{self.dir}/prosody.pid"',
            f'data_path = "{self.dir}/data"',
            f'certificates = "{self.dir}/certs"',
            'interfaces = { "127.0.0.1" }',
            f"c2s_ports = {{ {self.c2s_port} }}",
            f"c2s_direct_tls_ports = {{ {self.tls_port} }}",
            f"s2s_ports = {{ {self.s2s_port} }}",
            "s2s_direct_tls_ports = { }",
            'modules_enabled = { "roster", "saslauth", "tls", "dialback", "disco", "ping",'
            ' "version", "time", "posix", "pep", "vcard"' + (', "s2s_bidi"' if bidi else "") + " }",
            'authentication = "internal_hashed"',
            'storage = "internal"',
            "c2s_require_encryption = true",
            "s2s_require_encryption = true",
            f"s2s_secure_auth = {secure_auth}",
            "s2s_timeout = 20",
            f'unbound = {{ hoststxt = "{self.dir}/hosts" }}',
            f'ssl = {{ certificate = "{cert}", key = "{key}"{cafile} }}',
            f'log = {{ {{ levels = {{ min = "info" }}, to = "console" }},'
            f' {{ levels = {{ min = "debug" }}, to = "file", filename = "{self.log_path}" }} }}',
            f'VirtualHost "{self.domain}"',
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
        chown_tree(self.dir, "prosody")

    def _as_prosody(self, *argv: str) -> list[str]:
        return ["setpriv", "--reuid=prosody", "--regid=prosody", "--init-groups", *argv]

    def start(self) -> "Prosody":
        self.console = open(self.dir / "console.log", "wb")
        self.proc = subprocess.Popen(
            self._as_prosody("prosody", "--config", str(self.config_path), "-F"),
            stdin=subprocess.DEVNULL, stdout=self.console, stderr=subprocess.STDOUT,
            cwd=self.dir, preexec_fn=subjects._die_with_parent,
        )
        wait_listening(self.proc, [("127.0.0.1", self.c2s_port), ("127.0.0.1", self.s2s_port)],
                       "prosody", self.logs, timeout=30)
        return self

    def add_user(self, local: str, password: str) -> None:
        res = subprocess.run(
            self._as_prosody("prosodyctl", "--config", str(self.config_path),
                             "register", local, self.domain, password),
            capture_output=True, text=True, timeout=60,
        )
        assert res.returncode == 0, f"prosodyctl register: {res.stdout}{res.stderr}"

    def logs(self) -> str:
        out = []
        for name in ("console.log", "prosody.log"):
            p = self.dir / name
            if p.exists():
                out.append(f"--- prosody {name} ---\n" + subjects.tail(p.read_text(errors="replace"), 300))
        return "\n".join(out)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "console", None):
            self.console.close()
        shutil.rmtree(self.dir, ignore_errors=True)


EJABBERD_CTL = "/usr/sbin/ejabberdctl"


class Ejabberd(Peer):
    """An ejabberd 23.01 serving ``ej.federation.test`` as the ``ejabberd``
    user (setpriv, not su: PAM would reset the open-files limit), from a
    private directory, s2s on ``<own address>:5269``.

    With ``pki``: a certificate from the test CA, trusted through
    ``ca_file``, and no mod_s2s_dialback, so both directions must use SASL
    EXTERNAL. Without: a self-signed certificate (ejabberd still offers
    EXTERNAL, refuses it, and falls back to dialback).

    Erlang distribution listens on 127.0.0.1 on a port of its own
    (``ERL_DIST_PORT``: no epmd); ``ejabberdctl`` reaches the node there."""

    name = "ejabberd"
    domain = "ej.federation.test"

    def __init__(self, wx_addr: str, pki: FederationCA | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="wx-ejabberd-"))
        self.s2s_addr = free_loopback_5269(udp53=True, exclude=(wx_addr,))
        # Bound now, so that no other test's peer takes this address meanwhile.
        self.dns = DnsServer(self.s2s_addr, {**{n: wx_addr for n in WX_NAMES},
                                             self.domain: self.s2s_addr})
        self.c2s_port, self.dist_port = free_ports(2)
        self.tls_port = self.c2s_port  # no direct TLS listener; the scenarios use STARTTLS
        self.node = f"wxfed{self.dist_port}@localhost"
        self.proc: subprocess.Popen | None = None
        for sub in ("logs", "spool", "modules.d"):
            (self.dir / sub).mkdir()
        pem = self.dir / "server.pem"
        if pki:
            cert, key = pki.certs[self.domain]
            shutil.copy(pki.ca, self.dir / "ca.pem")
        else:
            cert, key = self_signed(self.dir, self.domain)
            # Trusts nothing Waxwing presents: its own certificate only.
            shutil.copy(cert, self.dir / "ca.pem")
        pem.write_text(Path(key).read_text() + Path(cert).read_text())
        # ejabberdctl points ERL_INETRC at the config directory: an empty one
        # (no error report; resolution stays libc + /etc/resolv.conf).
        (self.dir / "inetrc").write_text("")
        (self.dir / "resolv.conf").write_text(f"nameserver {self.s2s_addr}\noptions attempts:1\n")
        (self.dir / "ejabberdctl.cfg").write_text(
            f"ERLANG_NODE={self.node}\n"
            f"EJABBERD_PID_PATH={self.dir}/ejabberd.pid\n"
            f"CONTRIB_MODULES_CONF_DIR={self.dir}/modules.d\n"
            "INET_DIST_INTERFACE=127.0.0.1\n"
            f"ERL_DIST_PORT={self.dist_port}\n"
        )
        dialback = "" if pki else "  mod_s2s_dialback: {}\n"
        (self.dir / "ejabberd.yml").write_text(f"""\
hosts:
  - "{self.domain}"
loglevel: info
log_rotate_count: 0
certfiles:
  - "{pem}"
ca_file: "{self.dir}/ca.pem"
listen:
  -
    port: {self.c2s_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls: true
    starttls_required: true
  -
    port: 5269
    ip: "{self.s2s_addr}"
    module: ejabberd_s2s_in
s2s_access: all
# TLS on every s2s stream; without the dialback module a peer certificate
# must verify against ca_file.
s2s_use_starttls: required
outgoing_s2s_families: [ipv4]
outgoing_s2s_port: 5269
outgoing_s2s_ipv4_address: "{self.s2s_addr}"
outgoing_s2s_timeout: 15000
s2s_dns_timeout: 3
s2s_dns_retries: 1
s2s_max_retry_delay: 5
auth_method: internal
auth_use_cache: false
acl:
  admin:
    user: "admin@{self.domain}"
access_rules:
  local:
    allow: all
api_permissions:
  "console commands":
    from: ejabberd_ctl
    who: all
    what: "*"
modules:
  mod_admin_extra: {{}}
  mod_caps: {{}}
  mod_disco: {{}}
  mod_last: {{}}
  mod_ping: {{}}
  mod_pubsub:
    plugins: ["flat", "pep"]
  mod_roster: {{}}
  mod_time: {{}}
  mod_vcard: {{}}
  mod_version: {{}}
{dialback}""")
        chown_tree(self.dir, "ejabberd")

    def _ctl(self, *args: str) -> list[str]:
        return ["setpriv", "--reuid=ejabberd", "--regid=ejabberd", "--init-groups",
                "env", f"HOME={self.dir}",
                EJABBERD_CTL, "--config-dir", str(self.dir),
                "--config", str(self.dir / "ejabberd.yml"),
                "--ctl-config", str(self.dir / "ejabberdctl.cfg"),
                "--logs", str(self.dir / "logs"), "--spool", str(self.dir / "spool"), *args]

    def start(self) -> "Ejabberd":
        self.console = open(self.dir / "console.log", "wb")
        # A private mount namespace for its resolv.conf, and a PID namespace
        # so that the node (and anything it starts) dies with `unshare`.
        script = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
             "--kill-child", "sh", "-c", script, "sh", str(self.dir / "resolv.conf"),
             *self._ctl("foreground")],
            stdin=subprocess.DEVNULL, stdout=self.console, stderr=subprocess.STDOUT,
            cwd=self.dir, preexec_fn=subjects._die_with_parent,
        )
        # Started (modules loaded, listeners up) once the node says so; a
        # loaded machine takes a while to boot the VM.
        log = self.dir / "logs" / "ejabberd.log"
        deadline = time.monotonic() + 90
        while not (log.exists() and "is started in the node" in log.read_text(errors="replace")):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ejabberd did not start ({self.proc.poll()}):\n{self.logs()}",
                            pytrace=False)
            time.sleep(0.1)
        wait_listening(self.proc, [("127.0.0.1", self.c2s_port), (self.s2s_addr, 5269)],
                       "ejabberd", self.logs, timeout=30)
        return self

    def add_user(self, local: str, password: str) -> None:
        res = subprocess.run(self._ctl("register", local, self.domain, password),
                             capture_output=True, text=True, timeout=60, cwd=self.dir)
        assert res.returncode == 0, f"ejabberdctl register: {res.stdout}{res.stderr}\n{self.logs()}"

    def logs(self) -> str:
        out = []
        for p in (self.dir / "console.log", self.dir / "logs" / "ejabberd.log",
                  self.dir / "logs" / "error.log"):
            if p.exists():
                out.append(f"--- ejabberd {p.name} ---\n" + subjects.tail(p.read_text(errors="replace"), 300))
        return "\n".join(out)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            subprocess.run(self._ctl("stop"), capture_output=True, timeout=30, cwd=self.dir)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # --kill-child takes the namespace with it
                self.proc.wait(timeout=10)
        if getattr(self, "console", None):
            self.console.close()
        self.dns.close()
        shutil.rmtree(self.dir, ignore_errors=True)
