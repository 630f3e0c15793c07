"""The `waxwing` command line: user management against a running server,
`config check`, and process behaviour (DESIGN.md "Product shape")."""

import re
import subprocess

import pytest

from conftest import PASSWORD
from wxtest.subjects import REPO_ROOT, WaxwingServer, subject_class, tail

pytestmark = pytest.mark.skipif(not subject_class().has_cli,
                                reason=f"{subject_class().name}: no waxwing CLI")

ALICE = "alice@localhost"
BOB = "bob@localhost"


def output(res: subprocess.CompletedProcess) -> str:
    return f"{res.stdout}\n{res.stderr}"


def explain(res: subprocess.CompletedProcess) -> str:
    return f"exit {res.returncode}\n--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}"


async def test_user_add_then_login(server, xmpp):
    srv = server()
    res = srv.cli("user", "add", "dave@localhost", "--password", "dave-pass-1")
    assert res.returncode == 0, explain(res)
    dave = await xmpp.login(srv, "dave@localhost", "dave-pass-1", mech="SCRAM-SHA-256")
    assert dave.jid.bare == "dave@localhost"


def test_user_add_existing_fails(server):
    srv = server(users={ALICE: PASSWORD})
    res = srv.cli("user", "add", ALICE, "--password", "another-pass-1")
    assert res.returncode != 0, explain(res)
    assert "exist" in output(res).lower() or ALICE in output(res), explain(res)


@pytest.mark.parametrize("jid", ["eve@example.org", "no-at-sign-or-domain@", "a b@localhost"],
                         ids=["foreign-domain", "no-domain", "space-in-localpart"])
def test_user_add_refuses_jids_we_do_not_serve(server, jid):
    srv = server()
    res = srv.cli("user", "add", jid, "--password", "some-pass-1")
    assert res.returncode != 0, explain(res)
    listed = srv.cli("user", "list")
    assert jid not in listed.stdout, explain(listed)


def test_user_list_shows_accounts(server):
    srv = server(users={ALICE: PASSWORD, BOB: PASSWORD})
    res = srv.cli("user", "list")
    assert res.returncode == 0, explain(res)
    assert ALICE in res.stdout and BOB in res.stdout, explain(res)


async def test_user_passwd_changes_the_password(server, xmpp):
    srv = server(users={ALICE: PASSWORD})
    # Logged in first, so the server holds the old secrets in memory
    # (store_cache): the CLI's change must still reach the next login.
    first = await xmpp.login(srv, ALICE, PASSWORD, mech="SCRAM-SHA-256")
    await first.close()
    res = srv.cli("user", "passwd", ALICE, "--password", "changed-pass-1")
    assert res.returncode == 0, explain(res)
    old = xmpp.new(srv, ALICE, PASSWORD, mech="SCRAM-SHA-256")
    assert await old.connect() == "failed_auth"
    for mech in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
        await xmpp.login(srv, ALICE, "changed-pass-1", mech=mech)


async def test_user_remove_then_login_fails(server, xmpp):
    srv = server(users={ALICE: PASSWORD, BOB: PASSWORD})
    first = await xmpp.login(srv, ALICE, PASSWORD, mech="SCRAM-SHA-256")
    await first.close()
    res = srv.cli("user", "remove", ALICE)
    assert res.returncode == 0, explain(res)
    gone = xmpp.new(srv, ALICE, PASSWORD, mech="SCRAM-SHA-256")
    assert await gone.connect() == "failed_auth"
    listed = srv.cli("user", "list")
    assert ALICE not in listed.stdout and BOB in listed.stdout, explain(listed)
    again = srv.cli("user", "remove", ALICE)
    assert again.returncode != 0, f"removing a missing user succeeded:\n{explain(again)}"


# -- config check ---------------------------------------------------------------

def unstarted(tmp_path) -> WaxwingServer:
    srv = WaxwingServer(tmp_path, None, "config-check")
    srv.write_config()
    return srv


def mentions_line(text: str, line: int) -> bool:
    return re.search(rf"(line\s*{line}\b|:{line}(:|\b))", text, re.IGNORECASE) is not None


def test_config_check_accepts_the_harness_config(tmp_path):
    srv = unstarted(tmp_path)
    res = srv.cli("config", "check")
    assert res.returncode == 0, explain(res)


def test_config_check_accepts_the_example_config(tmp_path):
    srv = unstarted(tmp_path)
    example = REPO_ROOT / "waxwing.example.toml"
    res = srv.cli("config", "check", "--config", str(example), config=False)
    assert res.returncode == 0, explain(res)


def test_config_check_reports_syntax_error_line(tmp_path):
    srv = unstarted(tmp_path)
    lines = srv.config_path.read_text().splitlines()
    lines += ["# padding"] * (16 - len(lines)) + ["this line = = is broken"]
    srv.config_path.write_text("\n".join(lines) + "\n")
    res = srv.cli("config", "check")
    assert res.returncode != 0, explain(res)
    assert mentions_line(output(res), 17), f"line 17 not named:\n{explain(res)}"


def test_config_check_reports_type_error_line(tmp_path):
    srv = unstarted(tmp_path)
    lines = srv.config_path.read_text().splitlines()
    lines += ["# padding"] * (20 - len(lines)) + ["[auth]", 'scram_iterations = "lots"']
    srv.config_path.write_text("\n".join(lines) + "\n")
    res = srv.cli("config", "check")
    assert res.returncode != 0, explain(res)
    assert mentions_line(output(res), 22), f"line 22 not named:\n{explain(res)}"


def test_serve_refuses_a_broken_config(tmp_path):
    srv = unstarted(tmp_path)
    srv.config_path.write_text(srv.config_path.read_text() + "\n[limits]\nmax_depth = \"deep\"\n")
    res = subprocess.run([str(srv.binary), "serve", "--config", str(srv.config_path)],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode != 0, explain(res)
    assert "waxwing: ready" not in res.stdout, explain(res)


def test_sigterm_stops_the_server_cleanly(server):
    srv = server()
    code = srv.stop()
    assert code == 0, f"exit code {code} after SIGTERM\n{tail(srv.log_text(), 60)}"
