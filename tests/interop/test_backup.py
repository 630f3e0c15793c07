"""`waxwing backup` while the server writes, `waxwing restore` into another
server, and the restored data served to a client (issue 19, "Backups")."""

import asyncio
import re
import sqlite3
from pathlib import Path

import pytest

from conftest import PASSWORD
from wxtest.subjects import subject_class

pytestmark = pytest.mark.skipif(not subject_class().has_cli,
                                reason=f"{subject_class().name}: no waxwing CLI")

ALICE = "alice@localhost"
BOB = "bob@localhost"


def explain(res) -> str:
    return f"exit {res.returncode}\n--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}"


def dump(path: Path) -> list[str]:
    """Every table's rows, as SQL text, for comparing two database files."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def offline_bodies(path: Path, owner: str) -> list[str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = con.execute(
            "SELECT stanza FROM offline_messages WHERE owner = ? ORDER BY id", (owner,)
        ).fetchall()
    finally:
        con.close()
    return [re.search(r"<body>([^<]*)</body>", r[0]).group(1) for r in rows]


async def test_backup_while_writing_then_restore_into_a_fresh_server(server, xmpp, tmp_path):
    srv = server(users={ALICE: PASSWORD, BOB: PASSWORD})
    alice = await xmpp.login(srv, ALICE, PASSWORD)
    await alice.online()

    # Alice writes continuously: each message to offline Bob is one insert.
    # `stored` counts messages the server has certainly processed (a ping
    # answered after them, RFC 6120 §10.1); `sent` every one sent.
    counts = {"sent": 0, "stored": 0}
    stop = asyncio.Event()

    async def writer():
        while not stop.is_set():
            for _ in range(10):
                alice.send_message(BOB, f"m{counts['sent']}")
                counts["sent"] += 1
            await alice.sync()
            counts["stored"] = counts["sent"]

    task = asyncio.create_task(writer())
    while counts["stored"] < 50:
        await asyncio.sleep(0)  # yield to the writer; progress is awaited by sync()
        await alice.sync()
    backup = tmp_path / "nightly.db"
    lower = counts["stored"]
    res = await asyncio.to_thread(srv.cli, "backup", str(backup))
    upper = counts["sent"]
    # The writer must still be writing after the backup: the copy was taken
    # under load, not after it.
    while counts["stored"] < upper + 20:
        await alice.sync()
    stop.set()
    await task
    assert res.returncode == 0, explain(res)
    assert "backup written" in res.stdout, explain(res)
    assert backup.stat().st_mode & 0o777 == 0o600

    # Consistent: exactly the first k messages, k between what was stored
    # before the backup began and what had been sent when it ended.
    bodies = offline_bodies(backup, BOB)
    k = len(bodies)
    assert lower <= k <= upper, (lower, k, upper)
    assert bodies == [f"m{i}" for i in range(k)]

    # A running server refuses a restore on its data.
    target = server()
    refused = target.cli("restore", str(backup))
    assert refused.returncode != 0, explain(refused)
    assert "stop" in refused.stderr.lower(), explain(refused)

    target.stop()
    restored = target.cli("restore", str(backup))
    assert restored.returncode == 0, explain(restored)
    db = target.data_dir / "waxwing.db"
    assert dump(db) == dump(backup)
    assert (target.data_dir / "waxwing.db.before-restore").exists()

    target.exit_code = None
    target.proc = None
    target.start()
    bob = xmpp.new(target, BOB, PASSWORD)
    await bob.login()
    await bob.online()
    for i in range(k):
        await bob.expect_message(body=f"m{i}", sender=ALICE)
    await bob.sync()
    extra = bob.messages.matching(lambda m: m["body"] == f"m{k}")
    assert not extra, "a message stored after the backup reappeared"


def test_backup_of_an_in_memory_database_is_refused(server, tmp_path):
    srv = server({"storage": {"database": "sqlite::memory:"}})
    res = srv.cli("backup", str(tmp_path / "b.db"))
    assert res.returncode != 0, explain(res)
    assert "memory" in res.stderr, explain(res)
