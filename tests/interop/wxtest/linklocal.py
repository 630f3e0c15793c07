"""Link-local (XEP-0174) test rig: a private network namespace whose
loopback carries multicast, the processes that live in it, and a TCP
forwarder so that slixmpp clients (in the test process, outside the
namespace) reach a server inside it.

- :class:`NetNs` is held by an ``unshare --net`` process; others join it with
  ``nsenter --net=/proc/PID/ns/net``. Loopback gets 127.0.0.2 … as extra
  addresses, one per peer, and the route for 224.0.0.0/4: mDNS stays inside.
- :meth:`NetNs.forward` starts ``nsforward.py``: it binds a port here, then
  enters the namespace, so every connection it makes goes to the server there.
- :class:`LinePeer` runs a child that speaks in lines on stdout (the scripted
  zeroconf peer's JSON, or ``waxwing link-local``'s text) and waits for
  lines without blocking the asyncio loop of the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from . import STEP_TIMEOUT
from .subjects import _die_with_parent, tail, waxwing_binary

HERE = Path(__file__).resolve().parent


def _need(cmd: str) -> None:
    if shutil.which(cmd) is None:
        pytest.fail(f"`{cmd}` is needed for the link-local tests", pytrace=False)


class NetNs:
    """A network namespace with ``lo`` up, multicast on it, and 127.0.0.2..N."""

    def __init__(self, extra_addrs: int = 6):
        _need("unshare")
        _need("nsenter")
        _need("ip")
        script = ("set -e; ip link set lo up; ip link set lo multicast on;"
                  " ip route add 224.0.0.0/4 dev lo;"
                  + "".join(f" ip addr add 127.0.0.{i}/8 dev lo;" for i in range(2, 2 + extra_addrs))
                  + " echo ready; exec sleep 86400")
        self.holder = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", script],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        line = self.holder.stdout.readline().decode().strip()
        if line != "ready":
            err = self.holder.stderr.read().decode() if self.holder.poll() is not None else ""
            self.holder.kill()
            pytest.fail(f"cannot create a network namespace (root or unshare needed): {line} {err}",
                        pytrace=False)
        self.path = f"/proc/{self.holder.pid}/ns/net"
        self.procs: list[subprocess.Popen] = []

    def argv(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(self.argv(argv), preexec_fn=_die_with_parent, **kw)
        self.procs.append(p)
        return p

    def forward(self, host: str, port: int) -> int:
        """A port on 127.0.0.1 here that reaches host:port in the namespace."""
        p = subprocess.Popen([sys.executable, str(HERE / "nsforward.py"), self.path, host, str(port)],
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             preexec_fn=_die_with_parent)
        self.procs.append(p)
        line = p.stdout.readline().decode().strip()
        if not line.isdigit():
            pytest.fail(f"nsforward did not start: {line!r}", pytrace=False)
        return int(line)

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        self.holder.kill()
        self.holder.wait(10)


class LinePeer:
    """A child process in the namespace whose stdout is read line by line."""

    def __init__(self, ns: NetNs, argv: list[str], label: str, log_dir: Path, env=None):
        self.label = label
        self.log_path = log_dir / f"{label}.log"
        self.log = open(self.log_path, "ab")
        self.proc = ns.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                             env=env)
        self.lines: list[str] = []
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen = 0  # lines already matched by `expect`, for ordered waits
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            self.queue.put(line)
        self.queue.put(None)

    def write(self, line: str) -> None:
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def _wait(self, pred, timeout: float, after: int):
        deadline = time.monotonic() + timeout
        i = after
        while True:
            while i < len(self.lines):
                if pred(self.lines[i]):
                    return i
                i += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None and self.queue.empty():
                return None
            try:
                self.queue.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                pass

    async def expect(self, pred, desc: str, timeout: float = STEP_TIMEOUT, since: int | None = None):
        """The first line from ``since`` (default: after the last match) that matches."""
        after = self.seen if since is None else since
        i = await asyncio.get_running_loop().run_in_executor(None, self._wait, pred, timeout, after)
        if i is None:
            pytest.fail(f"{self.label}: no line {desc} within {timeout}s; saw:\n"
                        + "\n".join(self.lines[-60:]) + f"\n--- stderr ---\n{tail(self.stderr(), 80)}",
                        pytrace=False)
        self.seen = i + 1
        return self.lines[i]

    def stderr(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class ScriptedPeer(LinePeer):
    """``llpeer.py``: a zeroconf-based XEP-0174 peer driven with JSON commands."""

    def __init__(self, ns: NetNs, user: str, machine: str, addr: str, log_dir: Path):
        super().__init__(ns, [sys.executable, str(HERE / "llpeer.py"), "--user", user,
                              "--machine", machine, "--addr", addr, "--nick", user.capitalize()],
                         f"llpeer-{user}@{machine}", log_dir)
        self.name = f"{user}@{machine}"

    async def event(self, kind: str, timeout: float = STEP_TIMEOUT, since: int | None = None,
                    **fields) -> dict:
        def pred(line: str) -> bool:
            try:
                ev = json.loads(line)
            except ValueError:
                return False
            if ev.get("event") == "command_failed":
                return True
            return ev.get("event") == kind and all(ev.get(k) == v for k, v in fields.items())
        ev = json.loads(await self.expect(pred, f"{kind} {fields}", timeout, since))
        if ev.get("event") == "command_failed":
            pytest.fail(f"{self.label}: a command failed: {ev['error']}", pytrace=False)
        return ev

    def command(self, **cmd) -> None:
        self.write(json.dumps(cmd))


class StandalonePeer(LinePeer):
    """``waxwing link-local``."""

    def __init__(self, ns: NetNs, user: str, machine: str, addr: str, log_dir: Path,
                 extra: list[str] | None = None):
        argv = [str(waxwing_binary()), "link-local", "--user", user, "--machine", machine,
                "--interface", addr, "--port", "0", *(extra or [])]
        env = dict(os.environ, NO_COLOR="1", RUST_LOG="info,waxwing_core::link_local=debug")
        super().__init__(ns, argv, f"standalone-{user}@{machine}", log_dir, env=env)
        self.name = f"{user}@{machine}"
