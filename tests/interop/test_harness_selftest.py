"""Self-tests of the harness pieces that stand in for a client library:
the SCRAM client (RFC test vectors), the DER reader, the TOML writer; and
conftest.py's skip policy.
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


def test_unexpected_skips_fail_and_allowed_ones_do_not(tmp_path):
    """conftest.py's skip policy, run on a scratch test file in a child
    pytest with this suite's conftest and pytest.ini: on the waxwing subject
    a bare skip and a true skipif fail; an allowed skip and an xfail do not."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    (tmp_path / "test_scratch.py").write_text(
        "import pytest\n"
        "def test_bare():\n    pytest.skip('no frobnicator')\n"
        "@pytest.mark.skipif(True, reason='cond')\n"
        "def test_skipif():\n    pass\n"
        "@pytest.mark.allowed_skip(reason='the scratch file says so')\n"
        "def test_allowed():\n    pytest.skip('allowed')\n"
        "@pytest.mark.xfail(reason='known')\n"
        "def test_xfail():\n    assert False\n")
    env = dict(os.environ, PYTHONPATH=str(here), WAXWING_TEST_SUBJECT="waxwing")
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-c", str(here / "pytest.ini"),
         "--rootdir", str(tmp_path), "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-rA",
         str(tmp_path / "test_scratch.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "FAILED test_scratch.py::test_bare" in out, out
    assert "ERROR test_scratch.py::test_skipif" in out, out
    assert "SKIPPED" in out and "allowed" in out, out
    assert "XFAIL test_scratch.py::test_xfail" in out, out
    assert "unexpected skip on the waxwing subject" in out, out
