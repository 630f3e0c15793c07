#!/usr/bin/env python3
"""Server memory per idle session over BOSH and over direct-TLS TCP, by the
same method: N sessions of one account (N resources) log in with SASL PLAIN
and bind, then stay idle (a BOSH session keeps its one poll held, as an idle
BOSH client does); the server's VmRSS before and after, divided by N.

    bench/idle_sessions.py bosh HTTP_PORT N SERVER_PID
    bench/idle_sessions.py tls C2S_DIRECT_TLS_PORT N SERVER_PID

The account is u@localhost with the password password1; the server needs
[limits] max_resources and max_connections_per_ip above N (and, for BOSH,
[bosh] max_wait_secs/inactivity_secs longer than the run). Raise the open
file limit (ulimit -n) above N. Not part of bench/run.sh.
"""
import asyncio, base64, re, ssl, sys, time

MODE, PORT, N, PID = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
NS = "http://jabber.org/protocol/httpbind"
CRED = base64.b64encode(b"\0u\0password1").decode()


def rss_kib():
    for line in open(f"/proc/{PID}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def post(w, body):
    data = body.encode()
    w.write(b"POST /http-bind HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\n"
            b"Content-Length: %d\r\n\r\n" % len(data) + data)


async def request(r, w, body):
    post(w, body)
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    n = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
    return (await r.readexactly(n)).decode()


async def bosh_session(i, held):
    r, w = await asyncio.open_connection("127.0.0.1", PORT)
    rid = 1000
    t = await request(r, w, f"<body xmlns='{NS}' xmlns:xmpp='urn:xmpp:xbosh' rid='{rid}' "
                            "to='localhost' ver='1.6' wait='600' hold='1' xmpp:version='1.0'/>")
    sid = re.search(r"sid='([^']+)'", t).group(1)

    def b(payload="", extra=""):
        nonlocal rid
        rid += 1
        return (f"<body xmlns='{NS}' xmlns:xmpp='urn:xmpp:xbosh' rid='{rid}' sid='{sid}'{extra}>"
                f"{payload}</body>")
    t = await request(r, w, b(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' "
                              f"mechanism='PLAIN'>{CRED}</auth>"))
    assert "success" in t, t
    await request(r, w, b(extra=" to='localhost' xmpp:restart='true'"))
    t = await request(r, w, b("<iq xmlns='jabber:client' type='set' id='b'><bind xmlns="
                              f"'urn:ietf:params:xml:ns:xmpp-bind'><resource>r{i}</resource>"
                              "</bind></iq>"))
    assert "<jid>" in t, t
    post(w, b())  # the idle poll, held by the server
    await w.drain()
    held.append((r, w))


HDR = (b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
       b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")


async def until(r, token):
    buf = b""
    while token not in buf:
        chunk = await r.read(4096)
        assert chunk, buf
        buf += chunk


async def tls_session(i, held):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    r, w = await asyncio.open_connection("127.0.0.1", PORT, ssl=ctx, server_hostname="localhost")
    w.write(HDR)
    await until(r, b"</stream:features>")
    w.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{CRED}</auth>"
            .encode())
    await until(r, b"success")
    w.write(HDR)
    await until(r, b"</stream:features>")
    w.write(f"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            f"<resource>t{i}</resource></bind></iq>".encode())
    await until(r, b"</iq>")
    held.append((r, w))


async def main():
    session = {"bosh": bosh_session, "tls": tls_session}[MODE]
    held = []
    await session(0, held)  # warm-up
    await asyncio.sleep(1)
    before = rss_kib()
    t0 = time.time()
    sem = asyncio.Semaphore(50)

    async def one(i):
        async with sem:
            await session(i, held)
    await asyncio.gather(*(one(i) for i in range(1, N + 1)))
    await asyncio.sleep(3)
    after = rss_kib()
    print(f"{MODE}: sessions={N} rss_before={before}KiB rss_after={after}KiB "
          f"per_session={(after - before) / N:.1f}KiB login_secs={time.time() - t0:.0f}")


asyncio.run(main())
