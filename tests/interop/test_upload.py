"""XEP-0363 HTTP File Upload on upload.localhost: discovery with the
max-file-size form, slots over XMPP, PUT/GET on the HTTP listener, and the
refusals (file too large, quota, expired slot, wrong size or type, another
user's slot) — slixmpp's XEP-0363 plugin and aiohttp as the HTTP client."""

import hashlib
import hmac
import struct
import time
import urllib.parse

import aiohttp
import pytest
from slixmpp.exceptions import IqError

from conftest import PASSWORD

ALICE = "alice@localhost"
BOB = "bob@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD}
NS = "urn:xmpp:http:upload:0"
SERVICE = "upload.localhost"

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # 1032 bytes, content irrelevant


def web(limits: dict | None = None) -> dict:
    return {
        "listen": {"http": ["127.0.0.1:0"]},
        "upload": {"max_file_bytes": 4096, "quota_bytes": 6000, **(limits or {})},
    }


async def login_with_upload(xmpp, srv, jid):
    client = xmpp.new(srv, jid, PASSWORD)
    client.x.register_plugin("xep_0363")
    return await client.login()


async def request_slot(client, filename, size, content_type):
    iq = await client.x.plugin["xep_0363"].request_slot(
        SERVICE, filename, size, content_type, timeout=15
    )
    slot = iq["http_upload_slot"]
    headers = {h["name"]: h["value"] for h in slot["put"]["headers"]}
    return slot["put"]["url"], slot["get"]["url"], headers


async def put(url, data, content_type, headers, length=None):
    h = {"Content-Type": content_type, **headers}
    if length is not None:
        h["Content-Length"] = str(length)
    async with aiohttp.ClientSession() as s:
        async with s.put(url, data=data, headers=h) as r:
            return r.status, await r.text()


async def get(url, headers=None):
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers=headers or {}) as r:
            return r.status, dict(r.headers), await r.read()


async def test_service_is_discovered_with_its_size_limit(server, xmpp):
    srv = server(web(), users=USERS)
    alice = await login_with_upload(xmpp, srv, ALICE)
    items = await alice.x.plugin["xep_0030"].get_items(jid=srv.domain, local=False, timeout=15)
    assert SERVICE in {jid for jid, _node, _name in items["disco_items"]["items"]}
    info_iq = await alice.x.plugin["xep_0363"].find_upload_service(timeout=15)
    assert info_iq is not None and str(info_iq["from"]) == SERVICE
    assert NS in info_iq["disco_info"]["features"]
    forms = [f["values"] for f in info_iq["disco_info"].iterables]
    assert {"FORM_TYPE": [NS], "max-file-size": "4096"} in [
        {k: v for k, v in f.items() if k in ("FORM_TYPE", "max-file-size")} for f in forms
    ], forms


async def test_upload_then_another_user_downloads(server, xmpp, tmp_path):
    srv = server(web(), users=USERS)
    alice = await login_with_upload(xmpp, srv, ALICE)
    path = tmp_path / "my cat.png"
    path.write_bytes(PNG)
    url = await alice.x.plugin["xep_0363"].upload_file(path, timeout=15)
    assert url.startswith(f"http://localhost:{srv.listeners['http'][0].rsplit(':', 1)[1]}/upload/")
    assert url.endswith("/my%20cat.png")
    # Bob (or anyone given the URL) downloads it, from a web page of any origin.
    status, headers, body = await get(url, {"Origin": "https://elsewhere.example"})
    assert status == 200
    assert body == PNG
    assert headers["Content-Type"] == "image/png"
    assert headers["Content-Length"] == str(len(PNG))
    assert headers["Content-Disposition"].startswith('inline; filename="my cat.png"')
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "sandbox" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    # HEAD tells the size without the body.
    async with aiohttp.ClientSession() as s:
        async with s.head(url) as r:
            assert r.status == 200 and r.headers["Content-Length"] == str(len(PNG))
    # The file name is part of the URL: another name finds nothing.
    status, _h, _b = await get(url.rsplit("/", 1)[0] + "/other.png")
    assert status == 404
    # A slot is used once.
    put_url, _get, auth = await request_slot(alice, "x.bin", 3, "application/octet-stream")
    assert (await put(put_url, b"abc", "application/octet-stream", auth))[0] == 201
    assert (await put(put_url, b"abc", "application/octet-stream", auth))[0] == 409


async def test_risky_types_are_attachments(server, xmpp):
    srv = server(web(), users=USERS)
    alice = await login_with_upload(xmpp, srv, ALICE)
    page = b"<script>alert(1)</script>"
    put_url, get_url, auth = await request_slot(alice, "x.html", len(page), "text/html")
    assert (await put(put_url, page, "text/html", auth))[0] == 201
    status, headers, body = await get(get_url)
    assert status == 200 and body == page
    assert headers["Content-Disposition"].startswith("attachment;")
    assert "sandbox" in headers["Content-Security-Policy"]


def stanza_error(exc: IqError):
    err = exc.iq["error"]
    return err["type"], err["condition"], err.xml


async def test_file_too_large(server, xmpp):
    srv = server(web(), users=USERS)
    alice = await login_with_upload(xmpp, srv, ALICE)
    with pytest.raises(IqError) as e:
        await request_slot(alice, "big.bin", 4097, "application/octet-stream")
    typ, cond, xml = stanza_error(e.value)
    assert (typ, cond) == ("modify", "not-acceptable")
    too_large = xml.find(f"{{{NS}}}file-too-large")
    assert too_large is not None and too_large.find(f"{{{NS}}}max-file-size").text == "4096"


async def test_quota_exceeded(server, xmpp):
    srv = server(web(), users=USERS)
    alice = await login_with_upload(xmpp, srv, ALICE)
    bob = await login_with_upload(xmpp, srv, BOB)
    put_url, _g, auth = await request_slot(alice, "a.bin", 4000, "application/octet-stream")
    assert (await put(put_url, b"a" * 4000, "application/octet-stream", auth))[0] == 201
    # 4000 + 2001 > 6000: refused at the slot request ...
    with pytest.raises(IqError) as e:
        await request_slot(alice, "b.bin", 2001, "application/octet-stream")
    assert stanza_error(e.value)[:2] == ("wait", "resource-constraint")
    # ... and at the PUT of slots taken before the quota filled up.
    early = [await request_slot(alice, f"c{i}.bin", 1500, "application/octet-stream") for i in range(2)]
    assert (await put(early[0][0], b"c" * 1500, "application/octet-stream", early[0][2]))[0] == 201
    assert (await put(early[1][0], b"c" * 1500, "application/octet-stream", early[1][2]))[0] == 507
    # Bob's quota is his own.
    put_url, _g, auth = await request_slot(bob, "b.bin", 4000, "application/octet-stream")
    assert (await put(put_url, b"b" * 4000, "application/octet-stream", auth))[0] == 201


def signed_put_url(srv, owner_url: str, **changes) -> str:
    """Re-signs a PUT URL with the server's key (as the server would),
    with some fields changed: lets a test make a slot that has expired."""
    key = bytes.fromhex((srv.data_dir / "upload.key").read_text().strip())
    parts = urllib.parse.urlsplit(owner_url)
    _, _, owner, slot_id, name = parts.path.split("/")
    q = dict(urllib.parse.parse_qsl(parts.query))
    q.update({k: str(v) for k, v in changes.items()})
    fields = [b"put", owner.encode(), slot_id.encode(), urllib.parse.unquote(name).encode(),
              struct.pack(">Q", int(q["size"])), q["type"].encode(), struct.pack(">Q", int(q["exp"]))]
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for f in fields:
        mac.update(struct.pack(">Q", len(f)))
        mac.update(f)
    q["sig"] = mac.hexdigest()
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(q)))


async def test_expired_slot_is_refused(server, xmpp):
    srv = server(web(), users=USERS)
    alice = await login_with_upload(xmpp, srv, ALICE)
    put_url, _g, auth = await request_slot(alice, "late.bin", 3, "application/octet-stream")
    # Our re-signing reproduces the server's signature exactly ...
    assert signed_put_url(srv, put_url) == put_url
    # ... so the same slot with an expiry in the past is genuine, and refused.
    expired = signed_put_url(srv, put_url, exp=int(time.time()) - 1)
    status, text = await put(expired, b"abc", "application/octet-stream", auth)
    assert (status, text.strip()) == (403, "this upload slot has expired")
    # A forged expiry in the future is not signed.
    forged = put_url.replace("exp=", "exp=9")
    assert (await put(forged, b"abc", "application/octet-stream", auth))[0] == 403
    assert (await put(put_url, b"abc", "application/octet-stream", auth))[0] == 201


async def test_wrong_size_or_type_is_refused(server, xmpp):
    srv = server(web(), users=USERS)
    alice = await login_with_upload(xmpp, srv, ALICE)
    put_url, get_url, auth = await request_slot(alice, "f.txt", 10, "text/plain")
    assert (await put(put_url, b"x" * 11, "text/plain", auth))[0] == 413
    assert (await put(put_url, b"x" * 9, "text/plain", auth))[0] == 400
    assert (await put(put_url, b"x" * 10, "image/png", auth))[0] == 400
    # Nothing of the refused PUTs was kept.
    assert (await get(get_url))[0] == 404
    assert (await put(put_url, b"x" * 10, "text/plain", auth))[0] == 201
    assert (await get(get_url))[2] == b"x" * 10


async def test_another_users_slot_is_refused(server, xmpp):
    srv = server(web(), users=USERS)
    alice = await login_with_upload(xmpp, srv, ALICE)
    bob = await login_with_upload(xmpp, srv, BOB)
    a_put, a_get, a_auth = await request_slot(alice, "mine.txt", 4, "text/plain")
    b_put, _b_get, b_auth = await request_slot(bob, "mine.txt", 4, "text/plain")
    # Bob's credentials do not open Alice's slot, nor do none.
    assert (await put(a_put, b"evil", "text/plain", b_auth))[0] == 403
    assert (await put(a_put, b"evil", "text/plain", {}))[0] == 403
    # Nor does rewriting Bob's URL to Alice's slot (the signature covers it).
    a_owner, a_id = urllib.parse.urlsplit(a_put).path.split("/")[2:4]
    b_owner, b_id = urllib.parse.urlsplit(b_put).path.split("/")[2:4]
    assert (await put(b_put.replace(b_id, a_id), b"evil", "text/plain", b_auth))[0] == 403
    assert (await put(b_put.replace(b_owner, a_owner), b"evil", "text/plain", b_auth))[0] == 403
    assert (await get(a_get))[0] == 404
    assert (await put(a_put, b"good", "text/plain", a_auth))[0] == 201
    assert (await get(a_get))[2] == b"good"
