"""strophe.js under Node, driven by JSON lines: the BOSH client library.

``tests/interop/node/strophe_driver.mjs`` wraps strophe.js (installed into
``tests/interop/node/node_modules`` by ``scripts/setup.d/20-node-clients.sh``;
``wxtest.node`` drives ``@xmpp/client`` the same way for WebSocket). A
missing Node or missing packages fail the test: they are part of the suite.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from . import STEP_TIMEOUT

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
DRIVER = NODE_DIR / "strophe_driver.mjs"


def _require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (scripts/packages/node.list)", pytrace=False)
    if not (NODE_DIR / "node_modules" / "strophe.js").is_dir():
        pytest.fail(
            f"strophe.js missing in {NODE_DIR}/node_modules: run "
            "bash scripts/setup.d/20-node-clients.sh",
            pytrace=False,
        )
    return node


class StropheClient:
    """One strophe.js connection in its own Node process."""

    def __init__(self, label: str):
        self.label = label
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []
        self.wire: list[str] = []
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> "StropheClient":
        node = _require_node()
        self.proc = await asyncio.create_subprocess_exec(
            node, str(DRIVER),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=NODE_DIR,
        )
        self._tasks = [asyncio.create_task(self._read_events()),
                       asyncio.create_task(self._read_wire())]
        return self

    async def _read_events(self) -> None:
        assert self.proc and self.proc.stdout
        while line := await self.proc.stdout.readline():
            ev = json.loads(line)
            self.events.append(ev)
            self.pending.append(ev)
            self._changed.set()

    async def _read_wire(self) -> None:
        assert self.proc and self.proc.stderr
        while line := await self.proc.stderr.readline():
            self.wire.append(line.decode("utf-8", "replace").rstrip("\n"))

    def command(self, **cmd: Any) -> None:
        assert self.proc and self.proc.stdin
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())

    async def expect(self, pred: Callable[[dict[str, Any]], bool], desc: str,
                     timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.pending):
                if pred(ev):
                    del self.pending[i]
                    return ev
                if ev.get("event") == "error":
                    raise AssertionError(f"{self.label}: driver error: {ev['message']}")
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.label}: no {desc} within {timeout:.0f}s; events:\n"
                    + "\n".join(f"  {e}" for e in self.events)
                    + "\nwire:\n" + "\n".join(self.wire[-40:]))
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def status(self, *wanted: str, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        """The next status event among ``wanted`` (others are skipped)."""
        return await self.expect(
            lambda e: e.get("event") == "status" and e["status"] in wanted,
            f"status {'/'.join(wanted)}", timeout)

    async def connect(self, url: str, jid: str, password: str) -> None:
        self.command(op="connect", url=url, jid=jid, password=password)
        ev = await self.status("CONNECTED", "CONNFAIL", "AUTHFAIL", "DISCONNECTED", "ERROR")
        assert ev["status"] == "CONNECTED", f"{self.label}: {ev}\n" + "\n".join(self.wire[-40:])

    async def iq(self, xml: str) -> dict[str, Any]:
        import re
        m = re.search(r"id=['\"]([^'\"]+)", xml)
        assert m, "the iq needs an id"
        self.command(op="iq", xml=xml)
        return await self.expect(lambda e: e.get("event") == "iq" and e["id"] == m.group(1),
                                 f"iq answer {m.group(1)}")

    def send(self, xml: str) -> None:
        self.command(op="send", xml=xml)

    async def expect_stanza(self, contains: str, timeout: float = STEP_TIMEOUT) -> str:
        ev = await self.expect(lambda e: e.get("event") == "stanza" and contains in e["xml"],
                               f"stanza containing {contains!r}", timeout)
        return ev["xml"]

    def wire_text(self) -> str:
        return "\n".join(self.wire)

    async def close(self) -> None:
        if self.proc and self.proc.returncode is None:
            if self.proc.stdin:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for t in self._tasks:
            t.cancel()
