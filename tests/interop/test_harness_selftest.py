"""Self-tests of the harness pieces that stand in for a client library:
the SCRAM client (RFC test vectors), the DER reader, the TOML writer.
They need no server, so a harness bug is not mistaken for a server bug."""

import base64
import hashlib
import tomllib

from wxtest import tomlw
from wxtest.scram import ScramClient, signature_algorithm_oid, tls_server_end_point


def test_scram_sha1_rfc5802_vector():
    c = ScramClient("SCRAM-SHA-1", "user", "pencil", nonce="fyko+d2lbbFgONRv9qkxdawL")
    assert c.client_first() == b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    final = c.client_final(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
    assert final == (b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
                     b"p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
    c.verify_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")


def test_scram_sha256_rfc7677_vector():
    c = ScramClient("SCRAM-SHA-256", "user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    final = c.client_final(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                           b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert final == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    c.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


def test_scram_plus_binds_the_gs2_header_and_data():
    c = ScramClient("SCRAM-SHA-256-PLUS", "user", "pencil", nonce="abc",
                    cb_type="tls-exporter", cb_data=b"\x01" * 32)
    assert c.client_first().startswith(b"p=tls-exporter,,n=user,r=abc")
    final = c.client_final(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=4096").decode()
    cbind = base64.b64decode(final.split(",")[0][2:])
    assert cbind == b"p=tls-exporter,," + b"\x01" * 32


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 128 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def test_signature_algorithm_and_end_point_hash():
    ecdsa_sha384 = bytes.fromhex("2a8648ce3d040303")  # 1.2.840.10045.4.3.3
    tbs = _der(0x30, b"\x02\x01\x01" + b"x" * 300)    # long enough for a 2-byte length
    cert = _der(0x30, tbs + _der(0x30, _der(0x06, ecdsa_sha384)) + _der(0x03, b"\x00sig"))
    assert signature_algorithm_oid(cert) == "1.2.840.10045.4.3.3"
    assert tls_server_end_point(cert) == hashlib.sha384(cert).digest()


def test_toml_writer_round_trips():
    data = {"data_dir": "/tmp/x \"q\"", "hosts": ["localhost", "example.org"],
            "listen": {"c2s": ["127.0.0.1:0"]}, "auth": {"allow_plain": False, "n": 5},
            "tls": {"certificates": [{"host": "a", "cert": "b", "key": "c"}]}}
    assert tomllib.loads(tomlw.dumps(data)) == data
    merged = tomlw.merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}, "d": 4})
    assert merged == {"a": {"b": 1, "c": 3}, "d": 4}
