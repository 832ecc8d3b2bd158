"""Entry point inside the sandbox: bring the database into the sealed network, then run pytest.

The sandbox has its own network namespace (loopback only). The grader binds a Unix
socket to the course server into it; this listens on 127.0.0.1:PORT inside and
forwards each connection to that socket, so DSNs, PgBouncer and drills work as on
the host. One thread, asyncio: the sandbox's process limit counts threads too.
`python -m pglab.grade.inbox SOCKET PORT -- PYTEST_ARGS...`
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def _join(unix_path: str, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    client = client_writer.get_extra_info("socket")
    if client is not None:  # small protocol messages: no Nagle delay on the TCP side
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(unix_path)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(_pump(client_reader, upstream_writer), _pump(upstream_reader, client_writer))


async def forward(listener: socket.socket, unix_path: str) -> None:
    """Serve forever: each TCP client is joined to a new connection on the Unix socket."""
    server = await asyncio.start_server(lambda r, w: _join(unix_path, r, w), sock=listener)
    await server.serve_forever()


def main(argv: list[str]) -> None:
    unix_path, port, separator, *pytest_args = argv
    assert separator == "--", "usage: inbox SOCKET PORT -- PYTEST_ARGS..."
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(port)))
    listener.listen(128)  # listening before the fork: the first connect never races the forwarder
    if os.fork() == 0:
        os.setsid()
        asyncio.run(forward(listener, unix_path))
        os._exit(0)
    listener.close()
    os.execv(sys.executable, [sys.executable, "-m", "pytest", *pytest_args])


if __name__ == "__main__":
    main(sys.argv[1:])
