"""SASL EXTERNAL for clients (XEP-0178, issue 20): client certificates from
a configured CA, identities from id-on-xmppAddr (or e-mail / CN mapped to a
local account), revocation by CRL; over STARTTLS and direct TLS."""

import socket
import ssl

import pytest

from conftest import PASSWORD
from wxtest.pki import ClientCA
from wxtest.subjects import subject_name

pytestmark = pytest.mark.skipif(subject_name() != "waxwing", reason="waxwing configuration")

ALICE = "alice@localhost"
BOB = "bob@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD}


def pki(tmp_path, identity="xmppaddr"):
    ca = ClientCA(tmp_path / "pki")
    alice = ca.issue("alice", xmpp_addrs=(ALICE,), emails=("alice@corp.test",), cn="alice")
    revoked = ca.issue("revoked", xmpp_addrs=(BOB,))
    crl = ca.crl([revoked[2]])
    config = {"auth": {"client_certificates": {
        "ca_file": str(ca.path), "crl_files": [str(crl)], "identity": identity}}}
    return ca, alice, revoked, config


def with_cert(client, cert):
    client.x.certfile, client.x.keyfile = str(cert[0]), str(cert[1])
    return client


@pytest.mark.parametrize("tls", ["starttls", "direct"])
async def test_external_with_xmppaddr_certificate(server, xmpp, tmp_path, tls):
    _ca, alice_cert, _revoked, config = pki(tmp_path)
    srv = server(config, users=USERS)
    alice = with_cert(xmpp.new(srv, f"{ALICE}/cert", "", mech="EXTERNAL", tls=tls), alice_cert)
    await alice.login()
    assert alice.sasl_mechanism == "EXTERNAL"
    assert alice.jid.bare == ALICE
    assert any(">EXTERNAL<" in f for f in alice.features), alice.features
    # A client without a certificate negotiates as before, and is not
    # offered EXTERNAL.
    bob = await xmpp.login(srv, f"{BOB}/pw", PASSWORD, tls=tls)
    assert bob.sasl_mechanism.startswith("SCRAM")
    assert not any(">EXTERNAL<" in f for f in bob.features), bob.features


async def test_external_identity_mismatch_is_refused(server, xmpp, tmp_path):
    _ca, alice_cert, _revoked, config = pki(tmp_path)
    srv = server(config, users=USERS)
    mallory = with_cert(xmpp.new(srv, BOB, "", mech="EXTERNAL"), alice_cert)
    mallory.x.credentials["authzid"] = BOB
    assert await mallory.connect() in ("failed_auth", "failed_all_auth")
    assert "invalid-authzid" in mallory.wire_text()


async def test_external_needs_an_existing_account(server, xmpp, tmp_path):
    _ca, alice_cert, _revoked, config = pki(tmp_path)
    srv = server(config, users={BOB: PASSWORD})
    alice = with_cert(xmpp.new(srv, ALICE, "", mech="EXTERNAL"), alice_cert)
    assert await alice.connect() in ("failed_auth", "failed_all_auth")
    assert "not-authorized" in alice.wire_text()


@pytest.mark.parametrize("identity", ["email", "cn"])
async def test_external_maps_email_or_cn_to_a_local_account(server, xmpp, tmp_path, identity):
    ca, _alice, _revoked, config = pki(tmp_path, identity)
    # No XmppAddr at all: only the configured mapping can name the account.
    cert = ca.issue("carol", emails=("carol@corp.test",), cn="carol")
    srv = server(config, users={"carol@localhost": PASSWORD})
    carol = with_cert(xmpp.new(srv, "carol@localhost/m", "", mech="EXTERNAL"), cert)
    await carol.login()
    assert carol.jid.bare == "carol@localhost"


def tls_attempt(port: int, cert) -> str:
    """Direct TLS with a client certificate; what the server said, or the TLS error."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
                          b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
                data = b""
                while b"</stream:features>" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                return data.decode("utf-8", "replace")
        except (ssl.SSLError, ConnectionResetError) as e:
            return f"TLS error: {e}"


@pytest.mark.parametrize("which", ["wrong CA", "revoked"])
def test_untrusted_or_revoked_certificates_fail_the_handshake(server, tmp_path, which):
    _ca, alice_cert, revoked, config = pki(tmp_path)
    srv = server(config, users=USERS)
    if which == "wrong CA":
        other = ClientCA(tmp_path / "other", "Some Other CA")
        cert = other.issue("alice-elsewhere", xmpp_addrs=(ALICE,))
    else:
        cert = revoked
    got = tls_attempt(srv.tls_port, cert)
    assert got.startswith("TLS error"), got
    assert "EXTERNAL" not in got
    # The same server accepts the valid certificate.
    assert ">EXTERNAL<" in tls_attempt(srv.tls_port, alice_cert)


def test_config_check_refuses_external_without_ca(server, tmp_path):
    srv = server(overrides={"auth": {"mechanisms": ["EXTERNAL", "SCRAM-SHA-256"]}})
    assert srv.alive()
    bad = tmp_path / "bad.toml"
    bad.write_text(srv.config_path.read_text() + "\n[auth.hosts.\"localhost\"]\n"
                   "mechanisms = [\"EXTERNAL\"]\n", encoding="utf-8")
    res = srv.cli("config", "check", "--config", str(bad), config=False)
    assert res.returncode != 0
    assert "EXTERNAL needs [auth.client_certificates]" in res.stdout + res.stderr


def test_external_over_sasl2(server, tmp_path):
    """XEP-0388: EXTERNAL in <authenticate/>, Bind2 inline, no restart."""
    import base64
    _ca, alice_cert, _revoked, config = pki(tmp_path)
    srv = server(config, users=USERS)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(alice_cert[0]), str(alice_cert[1]))

    def read_until(s, marker: bytes) -> str:
        data = b""
        while marker not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.decode("utf-8", "replace")

    with socket.create_connection(("127.0.0.1", srv.tls_port), timeout=15) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
                      b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
            features = read_until(s, b"</stream:features>")
            assert "urn:xmpp:sasl:2" in features and ">EXTERNAL<" in features, features
            authzid = base64.b64encode(ALICE.encode()).decode()
            s.sendall((f"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='EXTERNAL'>"
                       f"<initial-response>{authzid}</initial-response>"
                       "<bind xmlns='urn:xmpp:bind:0'><tag>certs</tag></bind>"
                       "</authenticate>").encode())
            answer = read_until(s, b"</success>")
    assert "<success xmlns='urn:xmpp:sasl:2'" in answer, answer
    assert f"{ALICE}/certs." in answer, answer
