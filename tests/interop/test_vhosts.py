"""Virtual hosts: several domains in one server (DESIGN.md "Product shape")."""

from conftest import PASSWORD
from wxtest.raw import NS_STREAM, RawStream, q

HOSTS = {"hosts": ["localhost", "example.test"]}
OTHER = "example.test"


async def test_accounts_are_per_host(server, xmpp):
    srv = server(HOSTS, users={"alice@localhost": PASSWORD, f"alice@{OTHER}": "other-secret-1"})
    here = await xmpp.login(srv, "alice@localhost", PASSWORD)
    there = await xmpp.login(srv, f"alice@{OTHER}", "other-secret-1")
    assert here.jid.bare == "alice@localhost"
    assert there.jid.bare == f"alice@{OTHER}"
    wrong = xmpp.new(srv, f"alice@{OTHER}", PASSWORD, mech="SCRAM-SHA-1")
    assert await wrong.connect() == "failed_auth", "localhost's password opened example.test's account"


async def test_messages_cross_virtual_hosts(server, xmpp):
    srv = server(HOSTS, users={"alice@localhost": PASSWORD, f"bob@{OTHER}": PASSWORD})
    alice = await xmpp.login(srv, "alice@localhost/a", PASSWORD)
    bob = await xmpp.login(srv, f"bob@{OTHER}/b", PASSWORD)
    await bob.online()
    alice.send_message(f"bob@{OTHER}", "hello other host")
    got = await bob.expect_message(body="hello other host")
    assert str(got["from"]) == "alice@localhost/a"


async def test_disco_on_second_host(server, xmpp):
    srv = server(HOSTS, users={f"bob@{OTHER}": PASSWORD})
    bob = await xmpp.login(srv, f"bob@{OTHER}", PASSWORD)
    res = await bob.x.plugin["xep_0030"].get_info(jid=OTHER, local=False, timeout=15)
    assert res["type"] == "result", str(res)
    assert str(res["from"]) == OTHER
    identities = {(c, t) for c, t, _l, _n in res["disco_info"]["identities"]}
    assert ("server", "im") in identities, identities


def test_stream_header_names_the_requested_host(server):
    srv = server(HOSTS)
    raw = RawStream(srv.c2s_port, domain=OTHER)
    try:
        raw.open(to=OTHER)
        assert raw.header.tag == q(NS_STREAM, "stream")
        assert raw.header.get("from") == OTHER, raw.text()
    finally:
        raw.close()
