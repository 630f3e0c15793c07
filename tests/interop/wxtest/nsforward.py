"""``python nsforward.py NETNS_PATH HOST PORT``: forwards TCP from a port on
127.0.0.1 in the caller's network namespace (printed on stdout) to HOST:PORT
inside the namespace NETNS_PATH. The listening socket is made before the
process enters the namespace, so it stays outside; every connection made
afterwards is inside."""

import asyncio
import ctypes
import os
import socket
import sys

CLONE_NEWNET = 0x40000000


async def pump(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass


async def main(path: str, host: str, port: int) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)
    fd = os.open(path, os.O_RDONLY)
    if ctypes.CDLL("libc.so.6", use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        sys.exit(f"setns: errno {ctypes.get_errno()}")

    async def handle(r, w):
        try:
            tr, tw = await asyncio.open_connection(host, port)
        except OSError:
            w.close()
            return
        await asyncio.gather(pump(r, tw), pump(tr, w))

    server = await asyncio.start_server(handle, sock=listener)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
