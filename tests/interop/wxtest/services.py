"""Real PostgreSQL and Redis servers for the scale-out scenarios.

The same approach as the Rust fixtures (``crates/waxwing-testsvc``): each
server is started on a loopback port from a temporary directory, never the
system's services, by a small ``sh`` supervisor that holds a pipe from this
process and stops the server and deletes its directory when the pipe closes,
so nothing outlives the pytest worker however it ends. PostgreSQL refuses to
run as root: as root it runs as the ``postgres`` user (setpriv). A server
that cannot start fails the test with its log (no skips).
"""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from . import STARTUP_TIMEOUT

PG_BIN_DIRS = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15)]
PG_USER = "postgres"

# $1: stop signal, $2: directory to delete afterwards, the rest: the command.
# The watcher reads fd 3 (stdin; an asynchronous list's own stdin is /dev/null).
SUPERVISOR = r'''
sig=$1; dir=$2; shift 2
exec 3<&0 </dev/null
"$@" 3<&- &
server=$!
( read -r _ <&3; kill -s "$sig" "$server" 2>/dev/null ) &
watcher=$!
wait "$server"
status=$?
kill "$watcher" 2>/dev/null
[ -n "$dir" ] && rm -rf "$dir"
echo "wxtest-services: server exited with status $status"
'''



def free_port() -> int:
    """A random free loopback port below the ephemeral range (see the Rust
    ``free_port``: ephemeral ports can be taken as source ports meanwhile)."""
    import random
    import socket
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(10_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port between 10000 and 32000")


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces: the fields resume after its ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _as_user(user: str | None) -> list[str]:
    if user and os.geteuid() == 0:
        return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
    return []


class Supervised:
    """A server process under the shell supervisor."""

    def __init__(self, command: list[str], *, user: str | None, stop_signal: str,
                 cleanup: Path | None, ready: str, label: str):
        self.label = label
        self.lines: list[str] = []
        self._events: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(
            ["sh", "-c", SUPERVISOR, "wxtest-services", stop_signal, str(cleanup or ""),
             *_as_user(user), *command],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        try:
            event = self._events.get(timeout=STARTUP_TIMEOUT)
        except queue.Empty:
            event = "timeout"
        if event != "ready":
            self.stop()
            raise RuntimeError(f"{label} did not start ({event}):\n" + self.log())

    def _read(self, ready: str) -> None:
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            if ready in line:
                self._events.put("ready")
            if line.startswith("wxtest-services: server exited"):
                self._events.put("exited")
        self._events.put("exited")

    def log(self) -> str:
        return "\n".join(self.lines[-200:])

    def stop(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _start_with_retries(start, label: str):
    last = ""
    for _ in range(5):
        try:
            return start(free_port())
        except RuntimeError as e:
            last = str(e)
            if "in use" not in last:
                break
    pytest.fail(f"{label} could not be started:\n{last}", pytrace=False)


class Freezable:
    """``pause`` freezes a service (SIGSTOP to the processes its
    ``_frozen_processes`` names): connections stay open, nothing answers.
    ``resume`` thaws it."""

    _paused: list[int] = []

    def _frozen_processes(self) -> list[int]:
        raise NotImplementedError

    def pause(self) -> None:
        self._paused = self._frozen_processes()
        for pid in self._paused:
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._paused:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self._paused = []


class Postgres(Freezable):
    """A PostgreSQL cluster of our own (trust authentication on loopback)."""

    def __init__(self):
        bin_dir = next((d for d in PG_BIN_DIRS if (d / "postgres").exists()), None)
        if bin_dir is None:
            pytest.fail("PostgreSQL is not installed (scripts/packages/storage.list; "
                        "`bash scripts/test.sh` installs it)", pytrace=False)
        self.base = Path(tempfile.mkdtemp(prefix="wxtest-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.base, PG_USER, PG_USER)
        data = self.base / "data"
        res = subprocess.run(
            [*_as_user(PG_USER), str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
             "-U", PG_USER, "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions"],
            capture_output=True, text=True)
        if res.returncode != 0:
            shutil.rmtree(self.base, ignore_errors=True)
            pytest.fail(f"initdb failed:\n{res.stdout}\n{res.stderr}", pytrace=False)
        self._databases = itertools.count()

        def start(port):
            server = Supervised(
                [str(bin_dir / "postgres"), "-D", str(data),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
                 "-c", f"unix_socket_directories={self.base}",
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=300"],
                user=PG_USER, stop_signal="INT", cleanup=self.base,
                ready="database system is ready to accept connections", label="PostgreSQL")
            self.port = port
            return server

        self.server = _start_with_retries(start, "PostgreSQL")

    def url(self, name: str) -> str:
        return f"postgres://{PG_USER}@127.0.0.1:{self.port}/{name}"

    def psql(self, database: str, sql: str) -> str:
        res = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", PG_USER, "-d", database, "-c", sql],
            capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise AssertionError(f"psql {sql!r}: {res.stderr}")
        return res.stdout.strip()

    def database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = f"test_{os.getpid()}_{next(self._databases)}"
        self.psql("postgres", f"CREATE DATABASE {name}")
        return self.url(name)

    def _processes(self) -> list[int]:
        """The postmaster (from its pid file) and every process below it."""
        pid_file = self.base / "data" / "postmaster.pid"
        return descendants(int(pid_file.read_text().split("\n", 1)[0]))

    def _frozen_processes(self) -> list[int]:
        # The postmaster and its backends: connections stay open but nothing
        # answers, like a network partition or a server stalled on I/O.
        return self._processes()

    def stop(self) -> None:
        self.resume()
        self.server.stop()


class Redis(Freezable):
    """A Redis server of our own, without persistence; can be restarted on
    the same port."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="wxtest-redis-"))
        self.server = _start_with_retries(self._start, "redis-server")

    def _start(self, port):
        server = Supervised(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            user=None, stop_signal="TERM", cleanup=None,
            ready="Ready to accept connections", label="redis-server")
        self.port = port
        return server

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/"

    def _frozen_processes(self) -> list[int]:
        # The supervisor's children: the server and the pipe watcher (a sh).
        # Thawed, it has its data intact.
        pids = [p for p in descendants(self.server.proc.pid)[1:]
                if Path(f"/proc/{p}/comm").read_text().strip() == "redis-server"]
        assert pids, "redis-server process not found"
        return pids

    def restart(self) -> None:
        self.resume()
        self.server.stop()
        try:
            self.server = self._start(self.port)
        except RuntimeError as e:
            pytest.fail(str(e), pytrace=False)

    def stop(self) -> None:
        self.resume()
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
