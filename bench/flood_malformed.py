#!/usr/bin/env python3
"""Hostile-connection flood for issue #4: N connections, each sending one
malformed payload, against a running server; reports the server's RSS before
and after, and checks that a fresh login still works.

    python3 bench/flood_malformed.py --port 5222 --pid $(pidof waxwing) \
        [--count 10000] [--concurrency 400] [--user alice --password secret]

Loopback only. Each connection waits for the server to close it (the server
must answer every payload with a stream error and hang up).
"""
import argparse
import asyncio
import base64
import ssl
import time

def header(domain):
    return ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            f"xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>")



def payloads(domain):
    HEADER = header(domain)
    return [
        b"hello world",
        b"\x16\x03\x01\x02\x00garbage",
        HEADER.encode() + b"<message>&foo;</message>",
        HEADER.encode() + b"<!-- comment -->",
        HEADER.encode() + b"<?pi x?>",
        b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>]><lolz>&lol;</lolz>",
        HEADER.encode() + b"<message><body>\xc3\x28</body></message>",
        HEADER.encode() + b"<message></presence>",
        HEADER.encode() + b"<a>" * 5000,
        HEADER.encode() + b"<message " + b" ".join(b"a%d='x'" % i for i in range(2000)) + b"/>",
        HEADER.encode() + b"<message to='x'><body>" + b"x" * 300_000,
        HEADER.encode() + b"<message to='bob@localhost'/>",
    ]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def one(port, payload, stats):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    except Exception:
        stats["connect_failed"] += 1
        return
    try:
        writer.write(payload)
        await writer.drain()
        data = b""
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 30)
            if not chunk:
                break
            data += chunk
        stats["stream_error" if b"error" in data else "closed_without_error"] += 1
    except (ConnectionResetError, BrokenPipeError):
        stats["reset"] += 1
    except asyncio.TimeoutError:
        stats["timeout"] += 1
    finally:
        writer.close()


async def login_works(port, user, password, domain):
    HEADER = header(domain)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    async def until(marker):
        data = b""
        while marker not in data:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                raise RuntimeError(f"closed waiting for {marker!r}: {data[-300:]!r}")
            data += chunk
        return data
    writer.write(HEADER.encode())
    await until(b"</stream:features>")
    writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    await until(b"<proceed")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    await writer.start_tls(ctx, server_hostname="localhost")
    writer.write(HEADER.encode())
    await until(b"</stream:features>")
    auth = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{auth}</auth>".encode())
    data = await until(b">")
    writer.close()
    return b"<success" in data


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=400)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--domain", default="localhost")
    a = ap.parse_args()
    stats = {k: 0 for k in ("stream_error", "closed_without_error", "reset", "timeout", "connect_failed")}
    before = rss_kb(a.pid)
    sem = asyncio.Semaphore(a.concurrency)
    kinds = payloads(a.domain)
    peak = before

    async def guarded(i):
        nonlocal peak
        async with sem:
            await one(a.port, kinds[i % len(kinds)], stats)
            if i % 500 == 0:
                peak = max(peak, rss_kb(a.pid))

    t0 = time.monotonic()
    await asyncio.gather(*(guarded(i) for i in range(a.count)))
    elapsed = time.monotonic() - t0
    after = rss_kb(a.pid)
    print(f"connections: {a.count} in {elapsed:.1f}s (concurrency {a.concurrency})")
    print(f"outcomes: {stats}")
    print(f"server RSS: before {before} KiB, peak {peak} KiB, after {after} KiB")
    if a.user:
        ok = await login_works(a.port, a.user, a.password, a.domain)
        print(f"fresh login after the flood: {'ok' if ok else 'FAILED'}")


if __name__ == "__main__":
    asyncio.run(main())
