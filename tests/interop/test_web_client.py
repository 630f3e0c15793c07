"""The bundled web client in a real browser: headless Chromium (Selenium)
loads Converse.js from `waxwing serve`, logs in, sends a message that a
slixmpp client receives, shows the reply, and shares a file that the other
user downloads. A screenshot is kept as a test artifact (path printed)."""

import asyncio
import os
import shutil
import struct
import zlib
from pathlib import Path

import aiohttp
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from conftest import PASSWORD

ALICE = "alice@localhost"
BOB = "bob@localhost"
USERS = {ALICE: PASSWORD, BOB: PASSWORD}
# Fetching Converse.js on first start, then the page's own start-up.
PAGE_TIMEOUT = 120
UI_TIMEOUT = 30

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "test-logs"



def make_png(size: int = 96) -> bytes:
    """A small gradient picture, visible in the screenshot."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(size) for v in (255 - 2 * y, 120 + x, x + y, 255))
        for y in range(size))
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


PNG = make_png()


def browser() -> webdriver.Chrome:
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium and chromedriver are needed (scripts/packages/web.list)",
                    pytrace=False)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--ignore-certificate-errors",
                 "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))


def wait_for(driver, css: str, timeout: float = UI_TIMEOUT, visible: bool = True):
    """The first element matching `css` (displayed, unless `visible` is False)."""
    def find(d):
        for el in d.find_elements(By.CSS_SELECTOR, css):
            if not visible or el.is_displayed():
                return el
        return False
    try:
        return WebDriverWait(driver, timeout).until(find)
    except TimeoutException:
        raise AssertionError(f"no {css!r} in the page within {timeout}s; console:\n"
                             + console(driver)) from None


def wait_text(driver, css: str, text: str, timeout: float = UI_TIMEOUT):
    def find(d):
        return any(text in el.text for el in d.find_elements(By.CSS_SELECTOR, css))
    try:
        WebDriverWait(driver, timeout).until(find)
    except TimeoutException:
        raise AssertionError(f"no {css!r} with {text!r} within {timeout}s; console:\n"
                             + console(driver)) from None


def console(driver) -> str:
    try:
        return "\n".join(f"  {e['level']} {e['message']}" for e in driver.get_log("browser"))
    except Exception as e:  # the log itself is only a diagnostic
        return f"  (no console log: {e})"


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    shutil.copy(path, tmp_path / path.name)
    print(f"screenshot: {path}")
    return path


async def test_browser_chats_and_shares_a_file(server, xmpp, tmp_path):
    srv = server({"listen": {"http": ["127.0.0.1:0"]}}, users=USERS)
    port = int(srv.listeners["http"][0].rsplit(":", 1)[1])
    base = f"http://localhost:{port}"
    bob = await xmpp.login(srv, f"{BOB}/desktop", PASSWORD)
    bob.x.send_presence()

    driver = await asyncio.to_thread(browser)
    try:
        # The page says "not ready" (503, reloading itself) until the
        # pinned Converse.js has been fetched and verified.
        await asyncio.to_thread(driver.get, base + "/")
        jid = await asyncio.to_thread(wait_for, driver, "converse-login-form input[name=jid]",
                                      PAGE_TIMEOUT)
        await asyncio.to_thread(jid.send_keys, ALICE)
        pw = await asyncio.to_thread(wait_for, driver, "converse-login-form input[name=password]")
        await asyncio.to_thread(pw.send_keys, PASSWORD + Keys.ENTER)
        # Logged in: the roster panel replaces the form.
        await asyncio.to_thread(wait_for, driver, "converse-roster", UI_TIMEOUT, False)

        # Open a chat with Bob and say hello; his desktop client gets it.
        await asyncio.to_thread(driver.get, f"{base}/#converse/chat?jid={BOB}")
        box = await asyncio.to_thread(wait_for, driver, "converse-chat textarea.chat-textarea")
        await asyncio.to_thread(box.send_keys, "hello from the browser" + Keys.ENTER)
        msg = await bob.messages.expect(lambda m: m["body"] == "hello from the browser",
                                        "from the browser")
        assert msg["from"].bare == ALICE

        # Bob answers; the browser shows it.
        bob.x.send_message(mto=msg["from"], mbody="hello from slixmpp", mtype="chat")
        await asyncio.to_thread(wait_text, driver, "converse-chat .chat-msg__text",
                                "hello from slixmpp")

        # Alice shares a picture (XEP-0363 via the upload service); Bob
        # receives the link and downloads exactly the file.
        picture = tmp_path / "pixel.png"
        picture.write_bytes(PNG)
        chooser = await asyncio.to_thread(wait_for, driver, "converse-chat input[type=file]",
                                          UI_TIMEOUT, False)
        await asyncio.to_thread(chooser.send_keys, str(picture))
        shared = await bob.messages.expect(
            lambda m: m["body"].startswith(f"{base}/upload/") and m["body"].endswith("/pixel.png"),
            "with the uploaded file's URL")
        async with aiohttp.ClientSession() as s:
            async with s.get(shared["body"]) as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == "image/png"
                assert await r.read() == PNG
        # The browser shows the picture inline.
        await asyncio.to_thread(wait_for, driver, "converse-chat img[src$='/pixel.png']",
                                UI_TIMEOUT, False)
        await asyncio.to_thread(screenshot, driver, tmp_path, "web-client")
    except BaseException:
        try:
            await asyncio.to_thread(screenshot, driver, tmp_path, "web-client-failure")
        finally:
            raise
    finally:
        await asyncio.to_thread(driver.quit)


async def test_page_is_served_with_its_licence_and_configuration(server):
    srv = server({"listen": {"http": ["127.0.0.1:0"]}})
    port = int(srv.listeners["http"][0].rsplit(":", 1)[1])
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/converse-config.js") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/javascript")
            config = await r.text()
        assert "default_domain: 'localhost'" in config
        assert "import converse from '/converse/converse.min.js'" in config
        # The page, its licence and the client load once the fetch is done.
        deadline = asyncio.get_running_loop().time() + PAGE_TIMEOUT
        while True:
            async with s.get(base + "/") as r:
                if r.status == 200:
                    page = await r.text()
                    csp = r.headers["Content-Security-Policy"]
                    break
                assert r.status == 503 and r.headers["Retry-After"] == "3"
            assert asyncio.get_running_loop().time() < deadline, "web client never became ready"
            await asyncio.sleep(0.5)  # polling the server's own readiness page
        assert '<script type="module" src="/converse-config.js">' in page
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("style-src")[0]
        async with s.get(base + "/converse/LICENSE") as r:
            assert r.status == 200
            assert "Mozilla Public License" in await r.text()
        async with s.get(base + "/converse/converse.min.js",
                         headers={"Accept-Encoding": "gzip"}) as r:
            assert r.status == 200
            assert r.headers["Content-Encoding"] == "gzip"
            assert len(await r.read()) > 1_000_000
