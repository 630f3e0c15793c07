"""Fixtures for the black-box interop suite.

- ``server``: factory ``server(overrides=None, users=None)`` that starts the
  subject (the real ``waxwing`` binary by default) on ephemeral loopback ports
  with its own data directory, and stops it (SIGTERM, then SIGKILL) after the
  test.
- ``xmpp``: a ``wxtest.client.ClientPool``; ``await xmpp.login(srv, jid, pw)``
  gives a logged-in slixmpp client. All clients are closed after the test.

Tests are plain ``async def`` functions: ``pytest_pyfunc_call`` below runs
each in a fresh event loop (no pytest-asyncio needed).

On failure the report gets the server's log and every client's wire
transcript as extra sections.

On the waxwing subject a skipped test is a failure, unless the test (or its
module, via ``pytestmark``) carries ``@pytest.mark.allowed_skip(reason=...)``
naming why it may skip: a scenario that silently stops running (a missing
federation peer, a capability flag gone wrong) must not pass CI. Skips on
the prosody subject (scenario validation) are not policed.
"""

from __future__ import annotations

import asyncio
import inspect

import pytest

from wxtest import subjects
from wxtest.client import ClientPool
from wxtest.node import NodePool

SERVERS = pytest.StashKey[list]()
POOL = pytest.StashKey[ClientPool]()
NODE_POOL = pytest.StashKey[NodePool]()

PASSWORD = "secret123"


def pytest_report_header(config):
    name = subjects.subject_name()
    where = subjects.waxwing_binary() if name == "waxwing" else "prosody (system package)"
    return f"interop subject: {name} ({where})"


@pytest.fixture
def server(request, tmp_path):
    """Factory: ``server(overrides: dict | None = None, users: dict | None = None)``."""
    started: list[subjects.Subject] = []
    request.node.stash[SERVERS] = started
    cls = subjects.subject_class()

    def start(overrides: dict | None = None, users: dict[str, str] | None = None):
        label = f"{request.node.name}#{len(started) + 1}"
        workdir = tmp_path / f"server{len(started) + 1}"
        workdir.mkdir()
        srv = cls(workdir, overrides, label)
        started.append(srv)
        srv.start()
        for jid, password in (users or {}).items():
            srv.add_user(jid, password)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def subject():
    """The subject class (capabilities such as ``scram_sha256``), without starting it."""
    return subjects.subject_class()


@pytest.fixture
def xmpp(request) -> ClientPool:
    pool = ClientPool()
    request.node.stash[POOL] = pool
    return pool


@pytest.fixture
def node(request) -> NodePool:
    """``await node.new(label)``: an ``@xmpp/client`` under Node.js (``wxtest.node``)."""
    pool = NodePool()
    request.node.stash[NODE_POOL] = pool
    return pool


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def run():
        try:
            await pyfuncitem.obj(**kwargs)
        finally:
            pool = pyfuncitem.stash.get(POOL, None)
            if pool is not None:
                await pool.aclose()
            node_pool = pyfuncitem.stash.get(NODE_POOL, None)
            if node_pool is not None:
                await node_pool.aclose()

    asyncio.run(run())
    return True


def pytest_collection_modifyitems(config, items):
    for item in items:
        for mark in item.iter_markers("allowed_skip"):
            if not str(mark.kwargs.get("reason", "")).strip():
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.allowed_skip needs reason=\"why it may skip\"")


def _police_skip(item, report) -> None:
    """Turns a skip on the waxwing subject into a failure, unless allowed."""
    if (not report.skipped or hasattr(report, "wasxfail")
            or subjects.subject_name() != "waxwing"
            or item.get_closest_marker("allowed_skip") is not None):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"unexpected skip on the waxwing subject ({reason}); a test may skip there only "
        f"with @pytest.mark.allowed_skip(reason=...) in its file")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    _police_skip(item, report)
    if not report.failed or call.when == "teardown":
        return
    for srv in item.stash.get(SERVERS, []):
        report.sections.append(
            (f"{srv.name} log [{srv.label}] ({srv.log_path})", subjects.tail(srv.log_text())))
    pool = item.stash.get(POOL, None)
    for client in pool.clients if pool else []:
        report.sections.append((f"wire {client.label}", client.wire_text()))
    node_pool = item.stash.get(NODE_POOL, None)
    for label, text in node_pool.transcripts() if node_pool else []:
        report.sections.append((f"node client {label}", text))
