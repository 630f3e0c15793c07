"""A minimal SCRAM client (RFC 5802 / RFC 7677) and TLS channel bindings.

Written from the RFCs with hashlib/hmac so the raw-socket negotiation tests
depend on no XMPP library. Only ASCII usernames and passwords are supported
(SASLprep is the identity on them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _parse(msg: str) -> dict[str, str]:
    out = {}
    for part in msg.split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            out[key] = value
    return out


def _saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


class ScramError(Exception):
    pass


class ScramClient:
    """One SCRAM exchange. ``mech`` is e.g. ``SCRAM-SHA-256`` or ``SCRAM-SHA-1-PLUS``."""

    def __init__(self, mech: str, username: str, password: str, *,
                 cb_type: str | None = None, cb_data: bytes = b"", nonce: str | None = None):
        if not mech.startswith("SCRAM-"):
            raise ValueError(mech)
        self.mech = mech
        self.plus = mech.endswith("-PLUS")
        algo = mech[len("SCRAM-"):].removesuffix("-PLUS")
        self.hash_name = {"SHA-1": "sha1", "SHA-256": "sha256", "SHA-512": "sha512"}[algo]
        if self.plus and not cb_type:
            raise ValueError("a -PLUS mechanism needs a channel-binding type")
        self.gs2_header = f"p={cb_type},," if self.plus else "n,,"
        self.cb_data = cb_data if self.plus else b""
        self.username = username
        self.password = password
        self.nonce = nonce or b64(secrets.token_bytes(18))
        self.client_first_bare = f"n={_saslname(username)},r={self.nonce}"
        self.server_signature: bytes | None = None

    def _hmac(self, key: bytes, msg: bytes) -> bytes:
        return hmac.new(key, msg, self.hash_name).digest()

    def client_first(self) -> bytes:
        return (self.gs2_header + self.client_first_bare).encode()

    def client_final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attrs = _parse(text)
        if "m" in attrs:
            raise ScramError("server used a reserved 'm' attribute")
        nonce, salt, iters = attrs.get("r", ""), attrs.get("s"), attrs.get("i")
        if not nonce.startswith(self.nonce) or len(nonce) <= len(self.nonce):
            raise ScramError(f"server nonce {nonce!r} does not extend ours {self.nonce!r}")
        if salt is None or iters is None:
            raise ScramError(f"server-first-message lacks s= or i=: {text!r}")
        salted = hashlib.pbkdf2_hmac(self.hash_name, self.password.encode(),
                                     base64.b64decode(salt), int(iters))
        client_key = self._hmac(salted, b"Client Key")
        stored_key = hashlib.new(self.hash_name, client_key).digest()
        cbind = b64(self.gs2_header.encode() + self.cb_data)
        without_proof = f"c={cbind},r={nonce}"
        auth_message = f"{self.client_first_bare},{text},{without_proof}".encode()
        signature = self._hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={b64(proof)}".encode()

    def verify_server_final(self, server_final: bytes) -> None:
        attrs = _parse(server_final.decode())
        if "e" in attrs:
            raise ScramError(f"server-final-message carries an error: {attrs['e']}")
        got = base64.b64decode(attrs.get("v", ""))
        if self.server_signature is None or not hmac.compare_digest(got, self.server_signature):
            raise ScramError("server signature does not verify (server does not know the password?)")


# -- channel bindings ----------------------------------------------------------

def _der_tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """Returns (tag, content_start, content_length) of the TLV at ``pos``."""
    tag = buf[pos]
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(buf[pos:pos + n], "big")
        pos += n
    return tag, pos, length


def _oid(content: bytes) -> str:
    first = content[0]
    parts = [first // 40, first % 40]
    value = 0
    for byte in content[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def signature_algorithm_oid(der_cert: bytes) -> str:
    """The ``signatureAlgorithm`` OID of an X.509 certificate (RFC 5280 §4.1.1.2)."""
    tag, start, _ = _der_tlv(der_cert, 0)          # Certificate SEQUENCE
    tag, tbs_start, tbs_len = _der_tlv(der_cert, start)  # tbsCertificate
    tag, alg_start, _ = _der_tlv(der_cert, tbs_start + tbs_len)  # AlgorithmIdentifier
    tag, oid_start, oid_len = _der_tlv(der_cert, alg_start)
    if tag != 0x06:
        raise ValueError("malformed certificate: no OID in signatureAlgorithm")
    return _oid(der_cert[oid_start:oid_start + oid_len])


_SHA384 = {"1.2.840.113549.1.1.12", "1.2.840.10045.4.3.3"}
_SHA512 = {"1.2.840.113549.1.1.13", "1.2.840.10045.4.3.4"}


def tls_server_end_point(der_cert: bytes) -> bytes:
    """RFC 5929 §4.1: hash of the server certificate, with the certificate's
    signature hash, MD5 and SHA-1 upgraded to SHA-256."""
    oid = signature_algorithm_oid(der_cert)
    name = "sha384" if oid in _SHA384 else "sha512" if oid in _SHA512 else "sha256"
    return hashlib.new(name, der_cert).digest()
