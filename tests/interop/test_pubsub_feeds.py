"""RSS/Atom into PubSub (issue #9 item 5): feeds served by a local HTTP
server are republished as Atom entries on nodes of pubsub.<host>; each new
entry reaches a slixmpp subscriber exactly once, also across a restart.

Waits are on events: the HTTP handler signals every fetch, and a poller
fetches a feed again only after it finished publishing the previous
fetch, so "fetched twice more" means "the earlier document is fully
processed"; a ping round trip then flushes the notifications to the client.
"""

from __future__ import annotations

import asyncio
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.etree import ElementTree as ET

import pytest

from conftest import PASSWORD
from wxtest import STEP_TIMEOUT

NS_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_ATOM = "http://www.w3.org/2005/Atom"
NS_CMD = "http://jabber.org/protocol/commands"
NS_DATA = "jabber:x:data"

pytestmark = pytest.mark.skipif(
    __import__("wxtest.subjects", fromlist=["x"]).subject_name() != "waxwing",
    reason="feeds are a waxwing feature")


def rss(items: list[tuple[str, str]]) -> str:
    """Newest first, as feeds list them."""
    body = "".join(
        f"<item><title>{title}</title><link>http://feeds.example/{guid}</link>"
        f"<guid isPermaLink='false'>{guid}</guid>"
        f"<pubDate>{formatdate(1_900_000_000 - i * 60, usegmt=True)}</pubDate>"
        f"<description>about {title}</description></item>"
        for i, (guid, title) in enumerate(items))
    return ("<?xml version='1.0'?><rss version='2.0'><channel><title>Test RSS</title>"
            "<link>http://feeds.example/</link><description>d</description>"
            f"{body}</channel></rss>")


def atom(items: list[tuple[str, str]]) -> str:
    """Oldest first (dates decide the order, not the position)."""
    body = "".join(
        f"<entry><title>{title}</title><id>{eid}</id>"
        f"<link href='http://feeds.example/{eid}'/>"
        f"<updated>2030-01-0{i + 1}T00:00:00Z</updated>"
        f"<author><name>Writer</name></author>"
        f"<content type='html'>&lt;p&gt;{title}&lt;/p&gt;</content></entry>"
        for i, (eid, title) in enumerate(items))
    return ("<?xml version='1.0' encoding='utf-8'?>"
            "<feed xmlns='http://www.w3.org/2005/Atom'><title>Test Atom</title>"
            "<id>urn:test:atom</id><updated>2030-01-01T00:00:00Z</updated>"
            f"{body}</feed>")


class FeedServer:
    """A loopback HTTP server with mutable documents, ETags and fetch events."""

    def __init__(self):
        self.docs: dict[str, tuple[str, str]] = {}  # path -> (etag, body)
        self.fetches: dict[str, int] = {}
        self.conditional: dict[str, int] = {}
        self.cond = threading.Condition()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args):
                pass

            def do_GET(self):
                with owner.cond:
                    doc = owner.docs.get(self.path)
                    if self.headers.get("If-None-Match"):
                        owner.conditional[self.path] = owner.conditional.get(self.path, 0) + 1
                if doc is None:
                    status, headers, body = 404, {}, b""
                elif self.headers.get("If-None-Match") == doc[0]:
                    status, headers, body = 304, {"ETag": doc[0]}, b""
                else:
                    status, body = 200, doc[1].encode()
                    headers = {"ETag": doc[0], "Content-Type": "application/xml"}
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                # Counted once the answer is out: the poller has it.
                with owner.cond:
                    owner.fetches[self.path] = owner.fetches.get(self.path, 0) + 1
                    owner.cond.notify_all()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def set(self, path: str, etag: str, body: str) -> None:
        with self.cond:
            self.docs[path] = (f'"{etag}"', body)

    def count(self, path: str) -> int:
        with self.cond:
            return self.fetches.get(path, 0)

    async def fetched_more(self, path: str, n: int = 2) -> None:
        """Returns after ``n`` more fetches of ``path`` than now."""
        target = self.count(path) + n

        def wait():
            deadline = time.monotonic() + STEP_TIMEOUT * 2
            with self.cond:
                while self.fetches.get(path, 0) < target:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise AssertionError(
                            f"{path} fetched {self.fetches.get(path, 0)} times, wanted {target}")
                    self.cond.wait(left)

        await asyncio.get_running_loop().run_in_executor(None, wait)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def feeds():
    fs = FeedServer()
    yield fs
    fs.close()


def entries_received(client, node: str) -> list[ET.Element]:
    """Every Atom entry ever notified to ``client`` for ``node``."""
    out = []
    for m in client.messages.seen:
        items = m.xml.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items")
        if items is None or items.get("node") != node:
            continue
        for item in items.findall(f"{{{NS_EVENT}}}item"):
            entry = item.find(f"{{{NS_ATOM}}}entry")
            assert entry is not None, f"item without an Atom entry: {ET.tostring(item)!r}"
            out.append(entry)
    return out


def titles(client, node: str) -> list[str]:
    return [e.findtext(f"{{{NS_ATOM}}}title") for e in entries_received(client, node)]


async def wait_titles(client, node: str, want: list[str]) -> None:
    def pred(_m):
        return all(t in titles(client, node) for t in want)

    if pred(None):
        return
    await client.messages.expect(pred, f"(entries {want} on {node})", STEP_TIMEOUT * 2)


async def settle(feeds: FeedServer, client, path: str) -> None:
    """Every document fetched so far is published and its notifications arrived."""
    await feeds.fetched_more(path, 2)
    await client.sync()


async def subscriber(xmpp, srv, jid: str):
    c = xmpp.new(srv, jid, PASSWORD)
    c.x.register_plugin("xep_0060")
    await c.login()
    await c.online()
    return c


async def test_rss_and_atom_entries_arrive_once_also_after_restart(server, xmpp, feeds):
    feeds.set("/rss", "r0", rss([]))
    feeds.set("/atom", "a0", atom([]))
    service = "pubsub.localhost"
    srv = server({
        "pubsub": {
            "feed_min_interval_secs": 1,
            "feed_max_backoff_secs": 2,
            "feeds": [
                {"url": feeds.url("/rss"), "node": "rss-news", "interval_secs": 1},
                {"url": feeds.url("/atom"), "node": "atom-news", "interval_secs": 1},
            ],
        },
    }, users={"reader@localhost": PASSWORD})
    # Two fetches each: the first (empty) document created the nodes.
    await asyncio.gather(feeds.fetched_more("/rss"), feeds.fetched_more("/atom"))
    reader = await subscriber(xmpp, srv, "reader@localhost")
    for node in ("rss-news", "atom-news"):
        await reader.x.plugin["xep_0060"].subscribe(service, node)

    # New entries arrive, oldest first, as Atom entries.
    feeds.set("/rss", "r1", rss([("g2", "RSS two"), ("g1", "RSS one")]))
    feeds.set("/atom", "a1", atom([("urn:e:1", "Atom one")]))
    await wait_titles(reader, "rss-news", ["RSS one", "RSS two"])
    await wait_titles(reader, "atom-news", ["Atom one"])
    assert titles(reader, "rss-news") == ["RSS one", "RSS two"]
    first = entries_received(reader, "rss-news")[0]
    assert first.findtext(f"{{{NS_ATOM}}}id") == "g1"
    assert first.find(f"{{{NS_ATOM}}}link").get("href") == "http://feeds.example/g1"
    assert first.findtext(f"{{{NS_ATOM}}}summary") == "about RSS one"
    assert first.findtext(f"{{{NS_ATOM}}}published")
    atom_entry = entries_received(reader, "atom-news")[0]
    assert atom_entry.find(f"{{{NS_ATOM}}}content").get("type") == "html"
    assert atom_entry.findtext(f"{{{NS_ATOM}}}content") == "<p>Atom one</p>"
    assert atom_entry.findtext(f"{{{NS_ATOM}}}author/{{{NS_ATOM}}}name") == "Writer"

    # An update adds one entry: only that one is published.
    feeds.set("/rss", "r2", rss([("g3", "RSS three"), ("g2", "RSS two"), ("g1", "RSS one")]))
    await wait_titles(reader, "rss-news", ["RSS three"])
    await settle(feeds, reader, "/rss")
    await settle(feeds, reader, "/atom")
    assert titles(reader, "rss-news") == ["RSS one", "RSS two", "RSS three"]
    assert titles(reader, "atom-news") == ["Atom one"]
    # Unchanged documents were asked for conditionally.
    assert feeds.conditional.get("/rss", 0) > 0 and feeds.conditional.get("/atom", 0) > 0

    # The items are stored with stable ids: the node holds each entry once.
    items = await reader.x.plugin["xep_0060"].get_items(service, "rss-news")
    ids = [i["id"] for i in items["pubsub"]["items"]]
    assert len(ids) == 3 and len(set(ids)) == 3

    # Restart: the same entries under new ETags (so the server must
    # recognise them itself) are not published again; a new one is.
    await reader.close()
    # The pollers end with the server: a prompt, clean stop.
    assert srv.restart() == 0
    assert "did not end in time" not in srv.log_text()
    feeds.set("/rss", "r3", rss([("g3", "RSS three"), ("g2", "RSS two"), ("g1", "RSS one")]))
    feeds.set("/atom", "a3", atom([("urn:e:1", "Atom one")]))
    reader = await subscriber(xmpp, srv, "reader@localhost")
    await settle(feeds, reader, "/rss")
    await settle(feeds, reader, "/atom")
    feeds.set("/atom", "a4", atom([("urn:e:1", "Atom one"), ("urn:e:2", "Atom two")]))
    await wait_titles(reader, "atom-news", ["Atom two"])
    await settle(feeds, reader, "/atom")
    await settle(feeds, reader, "/rss")
    assert titles(reader, "atom-news") == ["Atom two"]
    assert titles(reader, "rss-news") == []


async def test_admin_adds_lists_and_removes_a_feed(server, xmpp, feeds):
    feeds.set("/blog", "b0", atom([("urn:b:1", "Blog one")]))
    srv = server({
        "admins": ["boss@localhost"],
        "pubsub": {"feed_min_interval_secs": 1, "feed_max_backoff_secs": 2},
    }, users={"boss@localhost": PASSWORD, "reader@localhost": PASSWORD})
    boss = await xmpp.login(srv, "boss@localhost", PASSWORD)
    reader = await subscriber(xmpp, srv, "reader@localhost")

    async def command(node: str, fields: dict[str, str] | None) -> ET.Element:
        x = ""
        if fields is not None:
            x = (f"<x xmlns='{NS_DATA}' type='submit'>" + "".join(
                f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
                + "</x>")
        iq = boss.make_iq("set", "localhost",
                          f"<command xmlns='{NS_CMD}' node='{node}' action='execute'>{x}</command>")
        res = await boss.iq(iq)
        assert res["type"] == "result", str(res)
        return res.xml.find(f"{{{NS_CMD}}}command")

    # A too-short interval is refused.
    iq = boss.make_iq("set", "localhost",
                      f"<command xmlns='{NS_CMD}' node='urn:waxwing:admin#add-feed'>"
                      f"<x xmlns='{NS_DATA}' type='submit'>"
                      f"<field var='url'><value>{feeds.url('/blog')}</value></field>"
                      "<field var='node'><value>blog</value></field>"
                      "<field var='interval'><value>0</value></field></x></command>")
    res = await boss.iq(iq)
    assert res["type"] == "error" and res["error"]["condition"] == "not-acceptable"

    # Nobody else may run it.
    iq = reader.make_iq("set", "localhost",
                        f"<command xmlns='{NS_CMD}' node='urn:waxwing:admin#list-feeds'/>")
    res = await reader.iq(iq)
    assert res["type"] == "error" and res["error"]["condition"] == "forbidden"

    cmd = await command("urn:waxwing:admin#add-feed",
                        {"url": feeds.url("/blog"), "node": "blog", "interval": "1"})
    assert cmd.get("status") == "completed"
    await feeds.fetched_more("/blog", 2)
    await reader.x.plugin["xep_0060"].subscribe("pubsub.localhost", "blog")
    # Subscribing sends the last item already published.
    await wait_titles(reader, "blog", ["Blog one"])

    cmd = await command("urn:waxwing:admin#list-feeds", None)
    rows = cmd.findall(f"{{{NS_DATA}}}x/{{{NS_DATA}}}item")
    urls = [r.findtext(f"{{{NS_DATA}}}field[@var='url']/{{{NS_DATA}}}value") for r in rows]
    assert urls == [feeds.url("/blog")]

    feeds.set("/blog", "b1", atom([("urn:b:1", "Blog one"), ("urn:b:2", "Blog two")]))
    await wait_titles(reader, "blog", ["Blog two"])

    cmd = await command("urn:waxwing:admin#remove-feed", {"url": feeds.url("/blog"), "node": "blog"})
    assert cmd.get("status") == "completed"
    cmd = await command("urn:waxwing:admin#list-feeds", None)
    assert cmd.findall(f"{{{NS_DATA}}}x/{{{NS_DATA}}}item") == []

    # The feed survives a restart only while it is listed: removed, it stays gone.
    srv.restart()
    boss = await xmpp.login(srv, "boss@localhost", PASSWORD)
    cmd = await command("urn:waxwing:admin#list-feeds", None)
    assert cmd.findall(f"{{{NS_DATA}}}x/{{{NS_DATA}}}item") == []
    assert titles(reader, "blog") == ["Blog one", "Blog two"]
