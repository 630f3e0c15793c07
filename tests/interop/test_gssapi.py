"""SASL GSSAPI (RFC 4752, issue 20) against a real MIT KDC.

Each test starts its own realm (wxtest.kerberos: krb5kdc on a free loopback
port, principals and keytabs from kadmin.local, tickets from kinit into a
private credential cache) and drives the exchange with python-gssapi, the
client side of the same MIT library, on a raw stream: slixmpp has no
GSSAPI. The server gets the keytab through `[auth.gssapi] keytab` and maps
`user@REALM` to `user@localhost`.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import pytest

from conftest import PASSWORD
from wxtest.kerberos import REALM, GssapiClient, Realm
from wxtest.raw import NS_CLIENT, NS_SASL, RawStream, mechanisms, q
from wxtest.subjects import subject_name

pytestmark = pytest.mark.skipif(subject_name() != "waxwing", reason="waxwing configuration")

SERVICE = f"xmpp/localhost@{REALM}"
NS_SASL2 = "urn:xmpp:sasl:2"
NS_BIND2 = "urn:xmpp:bind:0"


@pytest.fixture
def realm(tmp_path, monkeypatch):
    with Realm(tmp_path / "krb") as r:
        # The client library (in this process) and the server read it.
        monkeypatch.setenv("KRB5_CONFIG", str(r.krb5_conf))
        r.add_service(SERVICE)
        r.add_user("alice", "alice-krb-pw")
        yield r


def config(keytab, realm: str = REALM, **host) -> dict:
    return {"auth": {"gssapi": {"keytab": str(keytab)},
                     "hosts": {"localhost": {"gssapi": {"realm": realm, **host}}}}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode() if data else "="


def gssapi_exchange(raw: RawStream, client: GssapiClient, authzid: str = "",
                    sasl2: bool = False) -> ET.Element:
    """Runs the exchange; returns the final <success/> or <failure/>."""
    ns = NS_SASL2 if sasl2 else NS_SASL
    first = b64(client.first())
    if sasl2:
        raw.send(f"<authenticate xmlns='{NS_SASL2}' mechanism='GSSAPI'>"
                 f"<initial-response>{first}</initial-response>"
                 f"<bind xmlns='{NS_BIND2}'><tag>krb</tag></bind></authenticate>")
    else:
        raw.send(f"<auth xmlns='{NS_SASL}' mechanism='GSSAPI'>{first}</auth>")
    for _ in range(6):
        el = raw.next()
        assert el is not None, raw.text()
        if el.tag != q(ns, "challenge"):
            return el
        text = (el.text or "").strip()
        challenge = base64.b64decode(text) if text not in ("", "=") else b""
        raw.send(f"<response xmlns='{ns}'>{b64(client.answer(challenge, authzid))}</response>")
    raise AssertionError(f"the exchange does not end:\n{raw.text()}")


def failure_condition(el: ET.Element) -> str:
    return [c.tag.split("}")[1] for c in el if c.tag.startswith(f"{{{NS_SASL}}}")][0]


def stream(srv) -> RawStream:
    raw = RawStream(srv.c2s_port)
    raw.open()
    features = raw.starttls()
    assert "GSSAPI" in mechanisms(features), raw.text()
    return raw


def login(srv, ccache, authzid: str = "") -> tuple[RawStream, ET.Element]:
    raw = stream(srv)
    return raw, gssapi_exchange(raw, GssapiClient(ccache), authzid)


def test_ticket_logs_in_as_the_mapped_jid(server, realm, tmp_path):
    keytab = realm.keytab(SERVICE, tmp_path / "xmpp.keytab")
    realm.add_user("jdoe", "jdoe-krb-pw")
    srv = server(config(keytab, principals={f"jdoe@{REALM}": "john"}),
                 users={"alice@localhost": PASSWORD, "john@localhost": PASSWORD})
    ccache = realm.kinit("alice", "alice-krb-pw", tmp_path / "alice.cc")
    raw, result = login(srv, ccache)
    assert result.tag == q(NS_SASL, "success"), raw.text()
    raw.restart()
    bound = raw.bind("desk")
    jid = bound.findtext(f".//{{urn:ietf:params:xml:ns:xmpp-bind}}jid")
    assert jid == "alice@localhost/desk", raw.text()
    raw.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert raw.expect(q(NS_CLIENT, "iq")).get("type") == "result", raw.text()
    raw.close()

    # The authorization identity: the mapped JID itself is fine, another is not.
    raw, result = login(srv, ccache, authzid="alice@localhost")
    assert result.tag == q(NS_SASL, "success"), raw.text()
    raw.close()
    raw, result = login(srv, ccache, authzid="john@localhost")
    assert result.tag == q(NS_SASL, "failure"), raw.text()
    assert failure_condition(result) == "invalid-authzid", raw.text()
    raw.close()

    # An explicit mapping: jdoe@REALM is john.
    jdoe = realm.kinit("jdoe", "jdoe-krb-pw", tmp_path / "jdoe.cc")
    raw, result = login(srv, jdoe)
    assert result.tag == q(NS_SASL, "success"), raw.text()
    raw.restart()
    assert raw.bind("x").findtext(".//{urn:ietf:params:xml:ns:xmpp-bind}jid") == "john@localhost/x"
    raw.close()


def test_other_realm_unmapped_principal_or_missing_account_is_refused(server, realm, tmp_path):
    keytab = realm.keytab(SERVICE, tmp_path / "xmpp.keytab")
    realm.add_user("alice/admin", "admin-krb-pw")
    realm.add_user("carol", "carol-krb-pw")
    users = {"alice@localhost": PASSWORD}
    # This host's users are in another realm: alice@WAXWING.TEST is a stranger.
    foreign = server(config(keytab, realm="CORP.EXAMPLE", service_principal=SERVICE), users=users)
    ccache = realm.kinit("alice", "alice-krb-pw", tmp_path / "alice.cc")
    raw, result = login(foreign, ccache)
    assert result.tag == q(NS_SASL, "failure") and failure_condition(result) == "not-authorized", \
        raw.text()
    raw.close()
    assert "the principal is no account of this host" in foreign.log_text()

    srv = server(config(keytab), users=users)
    # An instance is another identity; carol has a principal but no account.
    for principal, password in (("alice/admin", "admin-krb-pw"), ("carol", "carol-krb-pw")):
        cc = realm.kinit(principal, password, tmp_path / f"{principal.replace('/', '_')}.cc")
        raw, result = login(srv, cc)
        assert result.tag == q(NS_SASL, "failure"), raw.text()
        assert failure_condition(result) == "not-authorized", raw.text()
        raw.close()


def test_no_ticket_fails_cleanly(server, realm, tmp_path):
    import gssapi
    keytab = realm.keytab(SERVICE, tmp_path / "xmpp.keytab")
    srv = server(config(keytab), users={"alice@localhost": PASSWORD})
    # Without a ticket the client library cannot even start ...
    empty = tmp_path / "empty.cc"
    with pytest.raises(gssapi.exceptions.GSSError):
        GssapiClient(empty).first()
    # ... and whatever a client sends instead is refused, the stream lives on.
    raw = stream(srv)
    raw.send(f"<auth xmlns='{NS_SASL}' mechanism='GSSAPI'>{b64(b'not a kerberos token')}</auth>")
    result = raw.next()
    assert result is not None and result.tag == q(NS_SASL, "failure"), raw.text()
    assert failure_condition(result) in ("malformed-request", "not-authorized"), raw.text()
    assert raw.sasl_plain("alice", PASSWORD).tag == q(NS_SASL, "success"), raw.text()
    raw.close()


def test_wrong_keytab_is_a_temporary_failure_and_says_why(server, realm, tmp_path):
    ccache = realm.kinit("alice", "alice-krb-pw", tmp_path / "alice.cc")
    users = {"alice@localhost": PASSWORD}
    # A keytab without this host's principal at all.
    realm.add_service(f"xmpp/elsewhere@{REALM}")
    other = realm.keytab(f"xmpp/elsewhere@{REALM}", tmp_path / "other.keytab")
    srv = server(config(other), users=users)
    raw, result = login(srv, ccache)
    assert result.tag == q(NS_SASL, "failure"), raw.text()
    assert failure_condition(result) == "temporary-auth-failure", raw.text()
    raw.close()
    assert f"no key for {SERVICE} in the keytab" in srv.log_text(), srv.log_text()

    # A stale keytab: the service was re-keyed after it was exported.
    stale = realm.keytab(SERVICE, tmp_path / "stale.keytab")
    realm.keytab(SERVICE, tmp_path / "current.keytab")
    srv2 = server(config(stale), users=users)
    fresh = realm.kinit("alice", "alice-krb-pw", tmp_path / "alice2.cc")
    raw, result = login(srv2, fresh)
    assert result.tag == q(NS_SASL, "failure"), raw.text()
    assert failure_condition(result) == "temporary-auth-failure", raw.text()
    raw.close()
    assert "GSSAPI context not established" in srv2.log_text()
    assert "is the keytab current?" in srv2.log_text()


def test_gssapi_over_sasl2_with_bind2(server, realm, tmp_path):
    keytab = realm.keytab(SERVICE, tmp_path / "xmpp.keytab")
    srv = server(config(keytab), users={"alice@localhost": PASSWORD})
    ccache = realm.kinit("alice", "alice-krb-pw", tmp_path / "alice.cc")
    raw = stream(srv)
    result = gssapi_exchange(raw, GssapiClient(ccache), sasl2=True)
    assert result.tag == q(NS_SASL2, "success"), raw.text()
    authzid = result.findtext(q(NS_SASL2, "authorization-identifier"))
    assert authzid and authzid.startswith("alice@localhost/krb"), raw.text()
    raw.close()


def test_config_check_refuses_gssapi_without_keytab_or_realm(server, tmp_path):
    srv = server()
    srv.stop()
    base = srv.config_path.read_text()
    for extra, needle in (
        ('[auth.hosts."localhost".gssapi]\nrealm = "WAXWING.TEST"\n', "needs [auth.gssapi] keytab"),
        ('[auth.hosts."localhost"]\nmechanisms = ["GSSAPI", "PLAIN"]\n', "GSSAPI needs"),
        ('[auth.gssapi]\nkeytab = "/k"\n[auth.hosts."localhost".gssapi]\nrealm = ""\n',
         "expected a Kerberos realm"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(base + "\n" + extra, encoding="utf-8")
        res = srv.cli("config", "check", "--config", str(bad), config=False)
        assert res.returncode != 0, extra
        assert needle in res.stdout + res.stderr, (extra, res.stdout + res.stderr)
