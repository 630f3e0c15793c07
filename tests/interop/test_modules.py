"""The module list is configuration: `modules_disabled`, and the example
module of docs/modules.md loaded from its `[modules.motd]` table."""

import pytest

from conftest import PASSWORD
from wxtest.subjects import WaxwingServer

pytestmark = pytest.mark.allowed_skip(reason="module configuration is waxwing's")

ALICE = "alice@localhost"
USERS = {ALICE: PASSWORD}
NS = "urn:xmpp:extdisco:2"


async def test_disabled_module_is_not_loaded(server, xmpp):
    srv = server({"modules_disabled": ["extdisco"]}, users=USERS)
    alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
    info = await alice.x.plugin["xep_0030"].get_info(jid="localhost", local=False, timeout=15)
    assert NS not in info["disco_info"]["features"]
    res = await alice.iq(alice.make_iq("get", "localhost", f"<services xmlns='{NS}'/>"))
    assert res["type"] == "error" and res["error"]["condition"] == "service-unavailable", str(res)


def test_unknown_module_name_is_refused_by_config_check(tmp_path):
    srv = WaxwingServer(tmp_path, {"modules_disabled": ["extdsico"]}, "unstarted")
    srv.write_config()
    res = srv.cli("config", "check")
    assert res.returncode != 0, res.stdout
    assert "extdsico" in res.stderr and "extdisco" in res.stderr, res.stderr


# -- the example module (docs/modules.md) ------------------------------------------

MOTD = "Maintenance on Sunday 02:00 UTC."


async def test_example_module_loaded_from_configuration_answers(server, xmpp):
    srv = server({"modules": {"motd": {"text": MOTD}}}, users=USERS)
    alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
    await alice.online()
    msg = await alice.messages.expect(lambda m: m["body"] == MOTD, "message of the day")
    assert str(msg["from"]) == "localhost" and msg["type"] == "headline", str(msg)
    res = await alice.iq(alice.make_iq("get", "localhost", "<motd xmlns='urn:waxwing:motd'/>"))
    assert res["type"] == "result", str(res)
    assert res.xml.find("{urn:waxwing:motd}motd").text == MOTD, str(res)


async def test_example_module_is_absent_without_its_table(server, xmpp):
    srv = server(users=USERS)
    alice = await xmpp.login(srv, f"{ALICE}/a", PASSWORD)
    res = await alice.iq(alice.make_iq("get", "localhost", "<motd xmlns='urn:waxwing:motd'/>"))
    assert res["type"] == "error" and res["error"]["condition"] == "service-unavailable", str(res)


@pytest.mark.parametrize("overrides,named", [
    ({"modules": {"motd": {"txt": "typo"}}}, "txt"),
    ({"modules": {"motdd": {"text": "x"}}}, "motdd"),
])
def test_bad_module_options_are_refused_by_config_check(tmp_path, overrides, named):
    srv = WaxwingServer(tmp_path, overrides, "unstarted")
    srv.write_config()
    res = srv.cli("config", "check")
    assert res.returncode != 0, res.stdout
    assert named in res.stderr, res.stderr
