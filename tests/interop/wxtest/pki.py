"""A throwaway client-certificate PKI for the SASL EXTERNAL tests
(XEP-0178): a CA, client certificates carrying id-on-xmppAddr, e-mail or
CN identities, and CRLs, made with ``cryptography`` in a temp directory."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

XMPP_ADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")


def _utf8string(s: str) -> bytes:
    data = s.encode("utf-8")
    assert len(data) < 128
    return b"\x0c" + bytes([len(data)]) + data


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class ClientCA:
    def __init__(self, dir: Path, name: str = "Waxwing Test Client CA"):
        dir.mkdir(parents=True, exist_ok=True)
        self.dir = dir
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.name = subject
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                           critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = dir / f"{name.replace(' ', '_')}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, label: str, xmpp_addrs: tuple[str, ...] = (), emails: tuple[str, ...] = (),
              cn: str | None = None) -> tuple[Path, Path, int]:
        """A client certificate and key (PEM files) and its serial."""
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        names = [x509.OtherName(XMPP_ADDR, _utf8string(a)) for a in xmpp_addrs]
        names += [x509.RFC822Name(e) for e in emails]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or label)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{label}.crt", self.dir / f"{label}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path, serial

    def crl(self, revoked: list[int]) -> Path:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.name)
            .last_update(_now() - datetime.timedelta(minutes=5))
            .next_update(_now() + datetime.timedelta(days=1))
            # RFC 5280 §5.2.3 makes the CRL number mandatory (webpki checks).
            .add_extension(x509.CRLNumber(1), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(_now() - datetime.timedelta(minutes=5)).build())
        crl = builder.sign(self.key, hashes.SHA256())
        path = self.dir / "ca.crl"
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return path
