"""A real ACME CA for the certificate tests: Debian's ``pebble`` (RFC 8555
test server) with ``pebble-challtestsrv`` as its DNS, both on loopback
ports of their own, under the ``wxtest.services`` supervisor (nothing
outlives the pytest worker).

- Pebble's own HTTPS certificate comes from a throwaway CA made here
  (Debian ships none); waxwing trusts it through ``[acme] ca_file``.
- Pebble's validators connect to ``http_port`` (http-01) and ``tls_port``
  (tls-alpn-01) on the address the mock DNS gives: 127.0.0.1 for every
  name by default. ``set_address(name, ip)`` points one name elsewhere
  (an address where nothing listens makes its validation fail).
- ``root_pem()`` is the root that issued certificates chain to (regenerated
  on every pebble start), from the management interface.
- Deterministic: no validation sleeps, no rejected nonces, and
  ``PEBBLE_AUTHZREUSE=0`` (../shared/TEST-SERVICES.md). That last one is
  not "never": pebble still reuses a valid authorization 1 % of the time
  (``rand.Intn(100) > percent``), so a test that needs a validation to
  fail breaks a name the account has never proved.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import ssl
import tempfile
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .services import Supervised, free_port


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write_tls_pair(dir: Path) -> Path:
    """A CA and a ``localhost``/127.0.0.1 certificate for pebble's HTTPS;
    returns the CA file."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wxtest pebble HTTPS CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(hours=1))
        .not_valid_after(_now() + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(hours=1))
        .not_valid_after(_now() + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (dir / "https.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (dir / "https.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ca_path = dir / "https-ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return ca_path


class Pebble:
    """``Pebble(http_port=…, tls_port=…, validity_secs=…)``; ``stop()`` after."""

    def __init__(self, *, http_port: int, tls_port: int = 0, validity_secs: int | None = None):
        for tool in ("pebble", "pebble-challtestsrv"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} is not installed (scripts/packages/acme.list; "
                            "`bash scripts/test.sh` installs it)", pytrace=False)
        self.dir = Path(tempfile.mkdtemp(prefix="wxtest-pebble-"))
        self.ca_file = _write_tls_pair(self.dir)
        self.dns_port, self.dns_mgmt_port = free_port(), free_port()
        self.port, self.mgmt_port = free_port(), free_port()
        self.dns = Supervised(
            ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.dns_port}",
             "-management", f"127.0.0.1:{self.dns_mgmt_port}",
             "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
            user=None, stop_signal="TERM", cleanup=None,
            ready="Starting management server", label="pebble-challtestsrv")
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": str(self.dir / "https.crt"),
            "privateKey": str(self.dir / "https.key"),
            "httpPort": http_port,
            "tlsPort": tls_port or http_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}
        if validity_secs is not None:
            config["pebble"]["certificateValidityPeriod"] = validity_secs
        (self.dir / "pebble.json").write_text(json.dumps(config), encoding="utf-8")
        env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        self.server = Supervised(
            ["env", *(f"{k}={v}" for k, v in env.items()),
             "pebble", "-config", str(self.dir / "pebble.json"),
             "-dnsserver", f"127.0.0.1:{self.dns_port}"],
            user=None, stop_signal="TERM", cleanup=self.dir,
            ready="ACME directory available", label="pebble")
        self.directory = f"https://127.0.0.1:{self.port}/dir"

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        return ctx

    def _get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, context=self._context(), timeout=10) as r:
            return r.read()

    def root_pem(self) -> bytes:
        """The root issued certificates chain to."""
        return self._get(f"https://127.0.0.1:{self.mgmt_port}/roots/0")

    def set_address(self, name: str, ip: str) -> None:
        """Answers A queries for ``name`` with ``ip`` (challtestsrv's mock DNS)."""
        self._dns_post("add-a", {"host": name, "addresses": [ip]})

    def clear_address(self, name: str) -> None:
        self._dns_post("clear-a", {"host": name})

    def _dns_post(self, what: str, body: dict) -> None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.dns_mgmt_port}/{what}", data=json.dumps(body).encode(),
            method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200, f"challtestsrv {what}: HTTP {r.status}"

    def log(self) -> str:
        return self.server.log() + "\n--- challtestsrv ---\n" + self.dns.log()

    def stop(self) -> None:
        self.server.stop()
        self.dns.stop()
