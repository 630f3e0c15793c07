"""JavaScript XMPP client libraries, driven from the scenarios.

``NodeClient`` runs ``tests/interop/node/xmpp_driver.mjs`` (``@xmpp/client``
under Node.js, installed by ``scripts/setup.d/20-node-clients.sh``) as a
child process and talks to it in JSON lines: commands on its stdin, events
from its stdout. Every wait is bounded by ``STEP_TIMEOUT``; the transcript
of events is kept for failure reports.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import pytest

from . import DOMAIN, STEP_TIMEOUT

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
DRIVER = NODE_DIR / "xmpp_driver.mjs"


def websocket_url(server, path: str = "/xmpp-websocket") -> str:
    """The ws:// URL of the server's first plain HTTP listener."""
    try:
        addr = server.listeners["http"][0]
    except (KeyError, IndexError):
        pytest.fail(f"the server has no http listener; saw {server.listeners}", pytrace=False)
    port = int(addr.rsplit(":", 1)[1])
    return f"ws://127.0.0.1:{port}{path}"


class NodeClient:
    """One ``@xmpp/client`` entity in its own Node.js process."""

    def __init__(self, label: str):
        self.label = label
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict] = []
        self._taken: set[int] = set()
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task | None = None
        self._next_id = 0
        self.t0 = time.monotonic()
        self.transcript: list[str] = []

    async def spawn(self) -> "NodeClient":
        node = shutil.which("node")
        if node is None or not (NODE_DIR / "node_modules" / "@xmpp" / "client").exists():
            pytest.fail("node or @xmpp/client missing: run scripts/setup.d/20-node-clients.sh",
                        pytrace=False)
        self.proc = await asyncio.create_subprocess_exec(
            node, str(DRIVER), cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())
        self._stderr = asyncio.create_task(self._read_stderr())
        return self

    async def _read(self) -> None:
        assert self.proc and self.proc.stdout
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            self.transcript.append(f"{time.monotonic() - self.t0:7.3f} < {line.decode().rstrip()}")
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            async with self._changed:
                self.events.append(ev)
                self._changed.notify_all()
        async with self._changed:
            self.events.append({"event": "exit"})
            self._changed.notify_all()

    async def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                break
            self.transcript.append(f"{time.monotonic() - self.t0:7.3f} ! {line.decode().rstrip()}")

    def text(self) -> str:
        return "\n".join(self.transcript)

    async def command(self, cmd: str, **kw) -> str:
        assert self.proc and self.proc.stdin
        self._next_id += 1
        cid = f"c{self._next_id}"
        line = json.dumps({"cmd": cmd, "id": cid, **kw})
        self.transcript.append(f"{time.monotonic() - self.t0:7.3f} > {line}")
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        return cid

    async def expect(self, pred: Callable[[dict], bool], desc: str,
                     timeout: float = STEP_TIMEOUT, fail_on_error: bool = True) -> dict:
        """The first event not yet taken by an earlier expect that matches ``pred``
        (events may arrive in any order relative to each other)."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                for i, ev in enumerate(self.events):
                    if i in self._taken:
                        continue
                    if pred(ev):
                        self._taken.add(i)
                        return ev
                    if fail_on_error and ev.get("event") in ("error", "exit"):
                        raise AssertionError(f"{self.label}: {ev} while waiting for {desc}\n"
                                             f"transcript:\n{self.text()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self.label}: no {desc} within {timeout:.0f}s\n"
                                         f"transcript:\n{self.text()}")
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    async def answer(self, cid: str, event: str) -> dict:
        return await self.expect(lambda e: e.get("id") == cid and e.get("event") == event,
                                 f"{event} for {cid}")

    # -- scenario steps

    async def login(self, url: str, user: str, password: str, resource: str = "ws",
                    resume: dict | None = None, domain: str = DOMAIN) -> str:
        """Starts the session; returns the bound JID."""
        cid = await self.command("start", service=url, domain=domain, username=user,
                                 password=password, resource=resource, resume=resume)
        ev = await self.answer(cid, "online")
        return ev["jid"]

    async def send(self, xml: str) -> None:
        await self.answer(await self.command("send", xml=xml), "sent")

    async def iq(self, payload: str, type: str = "get", to: str | None = None) -> str:
        ev = await self.answer(await self.command("iq", xml=payload, type=type, to=to),
                               "iq-result")
        return ev["xml"]

    async def sm(self) -> dict:
        return await self.answer(await self.command("sm"), "sm")

    async def expect_stanza(self, contains: str, desc: str | None = None) -> str:
        ev = await self.expect(lambda e: e.get("event") == "stanza" and contains in e["xml"],
                               desc or f"a stanza with {contains!r}")
        return ev["xml"]

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                self.proc.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for t in (self._reader, self._stderr):
            if t is not None:
                t.cancel()


class NodePool:
    """All Node.js clients of one test; closed after the test body."""

    def __init__(self):
        self.clients: list[NodeClient] = []

    async def new(self, label: str) -> NodeClient:
        client = NodeClient(label)
        self.clients.append(client)
        return await client.spawn()

    async def aclose(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)

    def transcripts(self) -> list[tuple[str, str]]:
        return [(c.label, c.text()) for c in self.clients]

