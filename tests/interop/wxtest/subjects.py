"""The server under test: the real ``waxwing`` binary, or Prosody.

``WAXWING_TEST_SUBJECT=prosody`` runs the same scenarios against Prosody to
check the scenarios themselves (STYLE.md §8). Both subjects expose the same
interface: ``c2s_port``, ``tls_port``, ``data_dir``, ``config_path``,
``add_user(jid, password)``, ``stop()``, ``log_text()``.
"""

from __future__ import annotations

import ctypes
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from . import DOMAIN, STARTUP_TIMEOUT, STEP_TIMEOUT, tomlw

REPO_ROOT = Path(__file__).resolve().parents[3]

LISTENING_RE = re.compile(r"^waxwing: listening (\S+) (\S+)\s*$")
READY_LINE = "waxwing: ready"


def subject_name() -> str:
    return os.environ.get("WAXWING_TEST_SUBJECT", "waxwing").strip().lower() or "waxwing"


def waxwing_binary() -> Path:
    env = os.environ.get("WAXWING_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    return target / "debug" / "waxwing"


try:
    # Resolved in the parent: between fork and exec the child must not dlopen.
    _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Child-side: get SIGTERM if the pytest worker dies, so no server leaks."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _port_of(addr: str) -> int:
    # "127.0.0.1:5222" or "[::1]:5222"
    return int(addr.rsplit(":", 1)[1])


def tail(text: str, lines: int = 400) -> str:
    all_lines = text.splitlines()
    if len(all_lines) <= lines:
        return text
    return f"[... {len(all_lines) - lines} earlier lines cut ...]\n" + "\n".join(all_lines[-lines:])


class _LineReader(threading.Thread):
    """Reads a child's stdout line by line into a queue (None at EOF)."""

    def __init__(self, stream, copy_to: Path | None = None):
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[str] = []
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.copy_to = copy_to

    def run(self) -> None:
        sink = open(self.copy_to, "a", encoding="utf-8") if self.copy_to else None
        try:
            for raw in self.stream:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.lines.append(line)
                if sink:
                    sink.write(line + "\n")
                    sink.flush()
                self.queue.put(line)
        finally:
            if sink:
                sink.close()
            self.queue.put(None)


class Subject:
    """Common parts of a server under test."""

    name = "?"
    product_name = "?"
    #: SASL mechanisms the subject is expected to offer after STARTTLS.
    scram_sha256 = True
    #: Channel-binding types the subject accepts for SCRAM-*-PLUS.
    channel_bindings: tuple[str, ...] = ()
    has_cli = False
    unavailable_after_unsubscribe = True
    #: Stream error for DTDs, comments, PIs (RFC 6120 §11.1).
    restricted_xml_error = "restricted-xml"
    #: RFC 6120 §4.9.3.12: a stanza before authentication -> <not-authorized/>.
    not_authorized_before_auth = True

    def __init__(self, workdir: Path, overrides: dict | None, label: str):
        self.workdir = workdir
        self.overrides = overrides or {}
        self.label = label
        self.data_dir = workdir / "data"
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.c2s_port = 0
        self.tls_port = 0
        self.http_port = 0
        self.hosts: list[str] = list(self.overrides.get("hosts", [DOMAIN]))
        self.domain = self.hosts[0]
        self.exit_code: int | None = None

    # -- process ----------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log file)"

    def _fail_start(self, why: str) -> None:
        self.stop()
        pytest.fail(
            f"{self.name} [{self.label}] did not become ready: {why}\n"
            f"command: {' '.join(map(str, self.proc.args)) if self.proc else '?'}\n"
            f"--- stdout ---\n{tail(chr(10).join(self._reader.lines), 100)}\n"
            f"--- log ({self.log_path}) ---\n{tail(self.log_text())}",
            pytrace=False,
        )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait; SIGKILL after ``timeout``. Returns the exit code."""
        proc = self.proc
        if proc is None or self.exit_code is not None:
            return self.exit_code
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self.exit_code = proc.returncode
        if proc.stdout:
            proc.stdout.close()
        return self.exit_code

    def restart(self) -> int | None:
        """Stop (SIGTERM) and start again on the same data; returns the exit code.
        Ports change: clients made afterwards pick up the new ones."""
        code = self.stop()
        self.exit_code = None
        self.proc = None
        self.start()
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- accounts ---------------------------------------------------------

    def add_user(self, jid: str, password: str) -> None:
        raise NotImplementedError

    def cli(self, *args: str, config: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        raise NotImplementedError


class WaxwingServer(Subject):
    name = "waxwing"
    product_name = "Waxwing"
    scram_sha256 = True
    channel_bindings = ("tls-server-end-point", "tls-exporter")
    has_cli = True

    def __init__(self, workdir: Path, overrides: dict | None, label: str):
        super().__init__(workdir, overrides, label)
        self.binary = waxwing_binary()
        self.config_path = workdir / "waxwing.toml"
        base = {
            "data_dir": str(self.data_dir),
            "hosts": [DOMAIN],
            "listen": {"c2s": ["127.0.0.1:0"], "c2s_direct_tls": ["127.0.0.1:0"],
                       "http": ["127.0.0.1:0"], "https": ["127.0.0.1:0"]},
            "log": {"level": "debug"},
        }
        self.config = tomlw.merge(base, self.overrides)
        self.listeners: dict[str, list[str]] = {}
        #: Put before the command line, e.g. ``nsenter --net=… --`` to run in
        #: a network namespace (wxtest.linklocal).
        self.prefix: list[str] = []

    def write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(tomlw.dumps(self.config) + "\n", encoding="utf-8")

    def start(self) -> "WaxwingServer":
        if not self.binary.exists():
            pytest.fail(
                f"waxwing binary not found at {self.binary}; build it with "
                f"`cargo build -p waxwing` (or run `bash scripts/test.sh`), "
                f"or point WAXWING_BIN at it",
                pytrace=False,
            )
        self.write_config()
        self.listeners = {}
        env = dict(os.environ, RUST_BACKTRACE="1", NO_COLOR="1")
        log = open(self.log_path, "ab")  # append: a restart keeps the earlier run's log
        try:
            self.proc = subprocess.Popen(
                [*self.prefix, str(self.binary), "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=self.workdir,
                env=env,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        self._reader = _LineReader(self.proc.stdout)
        self._reader.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail_start(f"no `{READY_LINE}` on stdout within {STARTUP_TIMEOUT:.0f}s")
            try:
                line = self._reader.queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait(timeout=10)
                self._fail_start(f"stdout closed before `{READY_LINE}` (exit code {code})")
            m = LISTENING_RE.match(line)
            if m:
                self.listeners.setdefault(m.group(1), []).append(m.group(2))
            elif line.strip() == READY_LINE:
                break
        try:
            self.c2s_port = _port_of(self.listeners["c2s"][0])
            self.tls_port = _port_of(self.listeners["c2s_direct_tls"][0])
            # The HTTP listeners (BOSH, WebSocket …), when configured.
            self.http_port = _port_of(self.listeners.get("http", ["0:0"])[0])
        except (KeyError, IndexError, ValueError):
            self._fail_start(f"`{READY_LINE}` without both listener lines; saw {self.listeners}")
        return self

    def cli(self, *args: str, config: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = [str(self.binary), *args]
        if config:
            argv += ["--config", str(self.config_path)]
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
            env=dict(os.environ, NO_COLOR="1"),
        )

    def next_stdout_line(self, prefix: str, timeout: float = STEP_TIMEOUT) -> str:
        """The next line on the server's stdout that starts with ``prefix``
        (lines before it are passed over); fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no `{prefix}…` line on stdout within {timeout:.0f}s\n"
                            f"--- log ---\n{tail(self.log_text(), 60)}", pytrace=False)
            try:
                line = self._reader.queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"stdout closed while waiting for `{prefix}…`", pytrace=False)
            if line.startswith(prefix):
                return line

    def sighup(self) -> str:
        """Sends SIGHUP (reload) and returns the server's `waxwing: reload…` line."""
        self.proc.send_signal(signal.SIGHUP)
        return self.next_stdout_line("waxwing: reload")

    def wait_log(self, text: str, after: int = 0, timeout: float = STEP_TIMEOUT) -> int:
        """Waits until ``text`` appears in the log after byte offset ``after``
        (an event the server reports only in its log, such as a file it
        noticed by itself); returns the offset just past it."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.log_path.read_bytes()
            at = data.find(text.encode(), after)
            if at >= 0:
                return at + len(text)
            if time.monotonic() > deadline:
                pytest.fail(f"`{text}` not in the log within {timeout:.0f}s\n"
                            f"--- log ---\n{tail(self.log_text(), 60)}", pytrace=False)
            time.sleep(0.05)  # polling a file: there is nothing to block on

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def add_user(self, jid: str, password: str) -> None:
        res = self.cli("user", "add", jid, "--password", password)
        if res.returncode != 0:
            pytest.fail(
                f"`waxwing user add {jid}` failed with exit code {res.returncode}\n"
                f"stdout: {res.stdout}\nstderr: {res.stderr}",
                pytrace=False,
            )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProsodyServer(Subject):
    """Prosody 0.12 (Debian's package), to validate the scenarios."""

    name = "prosody"
    product_name = "Prosody"
    scram_sha256 = False  # internal_hashed in 0.12 stores SCRAM-SHA-1 only
    channel_bindings = ()  # 0.12 only knows tls-unique, undefined on TLS 1.3
    has_cli = False
    # mod_presence does not do RFC 6121 §3.3.3 step 3 (unavailable from the
    # contact's resources after an inbound unsubscribe).
    unavailable_after_unsubscribe = False
    # util.xmppstream reports restricted XML as a parse error -> not-well-formed.
    restricted_xml_error = "not-well-formed"
    # Answers unauthenticated stanzas with stanza errors and keeps the stream.
    not_authorized_before_auth = False

    def __init__(self, workdir: Path, overrides: dict | None, label: str):
        super().__init__(workdir, overrides, label)
        self.config_path = workdir / "prosody.cfg.lua"

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "certs").mkdir(exist_ok=True)
        cert, key = self.workdir / "cert.pem", self.workdir / "key.pem"
        san = ",".join(f"DNS:{h}" for h in self.hosts)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
             "-out", str(cert), "-subj", f"/CN={self.hosts[0]}", "-days", "2",
             "-addext", f"subjectAltName={san}"],
            check=True, capture_output=True,
        )
        self.c2s_port, self.tls_port = _free_port(), _free_port()
        reg = self.overrides.get("registration", {})
        lines = [
            "run_as_root = true",
            f'pidfile = "{self.workdir}/prosody.pid"',
            f'data_path = "{self.data_dir}"',
            f'certificates = "{self.workdir}/certs"',
            'interfaces = { "127.0.0.1" }',
            f"c2s_ports = {{ {self.c2s_port} }}",
            f"c2s_direct_tls_ports = {{ {self.tls_port} }}",
            'modules_enabled = { "roster", "saslauth", "tls", "disco", "ping", "version",'
            ' "time", "register", "offline", "posix" }',
            'modules_disabled = { "s2s" }',
            'authentication = "internal_hashed"',
            'storage = "internal"',
            f"allow_registration = {'true' if reg.get('open') else 'false'}",
            "min_seconds_between_registrations = 0",
            "c2s_require_encryption = true",
            f'ssl = {{ certificate = "{cert}", key = "{key}" }}',
            f'log = {{ {{ levels = {{ min = "info" }}, to = "console" }},'
            f' {{ levels = {{ min = "debug" }}, to = "file", filename = "{self.log_path}" }} }}',
        ]
        for host in self.hosts:
            lines.append(f'VirtualHost "{host}"')
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self) -> "ProsodyServer":
        if not shutil.which("prosody"):
            pytest.fail("WAXWING_TEST_SUBJECT=prosody but `prosody` is not installed "
                        "(apt-get install prosody)", pytrace=False)
        self._write_config()
        self.proc = subprocess.Popen(
            ["prosody", "--config", str(self.config_path), "-F"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            preexec_fn=_die_with_parent,
        )
        self._reader = _LineReader(self.proc.stdout)
        self._reader.start()
        want = {"'c2s'", "'c2s_direct_tls'"}
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while want:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail_start("listeners not activated in time")
            try:
                line = self._reader.queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._fail_start(f"exited early ({self.proc.wait(timeout=10)})")
            if "Activated service" in line:
                want = {w for w in want if f"service {w} " not in line}
        return self

    def log_text(self) -> str:
        console = "\n".join(getattr(self, "_reader", None).lines) if getattr(self, "_reader", None) else ""
        return console + "\n--- debug log ---\n" + super().log_text()

    def add_user(self, jid: str, password: str) -> None:
        user, host = jid.split("@", 1)
        res = subprocess.run(
            ["prosodyctl", "--config", str(self.config_path), "register", user, host, password],
            capture_output=True, text=True, timeout=60,
        )
        if res.returncode != 0:
            pytest.fail(f"prosodyctl register {jid} failed: {res.stdout}{res.stderr}", pytrace=False)


SUBJECTS = {"waxwing": WaxwingServer, "prosody": ProsodyServer}


def subject_class() -> type[Subject]:
    name = subject_name()
    try:
        return SUBJECTS[name]
    except KeyError:
        raise pytest.UsageError(f"WAXWING_TEST_SUBJECT={name!r}; expected one of {sorted(SUBJECTS)}")
