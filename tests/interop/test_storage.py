"""Moving an installation from SQLite to PostgreSQL: a server used by real
clients on SQLite, `waxwing storage migrate` to a real PostgreSQL, and the
same users on a server that now runs on PostgreSQL — old passwords, roster,
offline messages, archive, private XML all there."""

import pytest

from conftest import PASSWORD
from test_modern_im import mam_page, online
from wxtest.steps import make_friends
from wxtest.subjects import subject_class

pytestmark = pytest.mark.skipif(not subject_class().has_cli,
                                reason=f"{subject_class().name}: no waxwing CLI")

ALICE = "alice@localhost"
BOB = "bob@localhost"
CAROL = "carol@localhost"
# Carol's own password: the migrated SCRAM secrets must be hers, not a copy.
CAROL_PASSWORD = "carol-has-her-own-1"


def explain(res) -> str:
    return f"exit {res.returncode}\n--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}"


async def test_sqlite_installation_moves_to_postgres(server, xmpp, postgres):
    old = server(users={ALICE: PASSWORD, BOB: PASSWORD, CAROL: CAROL_PASSWORD})
    alice = await online(xmpp, old, f"{ALICE}/a", plugins=["xep_0059", "xep_0313"])
    await alice.roster_get()
    bob = await online(xmpp, old, f"{BOB}/b")
    await bob.roster_get()
    await make_friends(alice, bob)
    for i in range(3):
        alice.send_message(BOB, f"archived {i}")
        await bob.expect_message(body=f"archived {i}")
    res = await alice.iq(alice.make_iq(
        "set", None, "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'>"
                     "<colour>teal</colour></prefs></query>"))
    assert res["type"] == "result", res
    await bob.close()
    await alice.expect_presence(sender=f"{BOB}/b", ptype="unavailable")
    alice.send_message(BOB, "while you were migrating")
    await alice.sync()  # in-order processing: stored once this returns
    await alice.close()
    assert old.stop() == 0

    pg = postgres.database()
    sqlite = f"sqlite://{old.data_dir / 'waxwing.db'}"
    res = old.cli("storage", "migrate", "--from", sqlite, "--to", pg, config=False)
    assert res.returncode == 0, explain(res)
    assert "counts match" in res.stdout, explain(res)
    assert "offline_messages" in res.stdout and "account_secrets" in res.stdout, explain(res)
    # Straight from the database: three accounts with both SCRAM hashes.
    assert postgres.psql(pg.rsplit("/", 1)[1], "SELECT COUNT(*) FROM account_secrets") == "6"

    # Running it again would duplicate nothing: the non-empty target is refused.
    again = old.cli("storage", "migrate", "--from", sqlite, "--to", pg, config=False)
    assert again.returncode != 0, explain(again)
    assert "not empty" in again.stderr, explain(again)

    new = server({"storage": {"database": pg}})
    carol = await xmpp.login(new, f"{CAROL}/c", CAROL_PASSWORD, mech="SCRAM-SHA-256")
    assert carol.jid.bare == CAROL
    bob = await xmpp.login(new, f"{BOB}/b2", PASSWORD, mech="SCRAM-SHA-1")
    roster = await bob.roster_get()
    items = {str(j): dict(i) for j, i in roster["roster"]["items"].items()}
    assert items.get(ALICE, {}).get("subscription") == "both", items
    await bob.online()
    await bob.expect_message(body="while you were migrating", sender=f"{ALICE}/a")

    alice = await online(xmpp, new, f"{ALICE}/a2", plugins=["xep_0059", "xep_0313"])
    _, bodies, complete = await mam_page(alice, max=10)
    assert [b for b in bodies if b.startswith("archived")] == [
        "archived 0", "archived 1", "archived 2"], bodies
    got = await alice.iq(alice.make_iq(
        "get", None, "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query>"))
    colour = got.xml.find(".//{urn:example:prefs}colour")
    assert colour is not None and colour.text == "teal", got
    # New rows after the copy: ids continue (no collision with copied ones).
    alice.send_message(BOB, "after the move")
    await bob.expect_message(body="after the move")
