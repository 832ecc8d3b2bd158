"""A loopback TCP proxy that can freeze: the half-open connection of a broken network path.

It forwards bytes both ways until `freeze()`; then it stops forwarding without
closing anything: no FIN, no RST, the sockets stay open. The client's kernel still
gets TCP acknowledgements from the proxy's kernel, so to the application the server
just never answers, which is what a stateful firewall or load balancer that forgot a
flow looks like. Only timeouts above TCP (a client deadline, `command_timeout`)
bound such a wait here; keepalives and `tcp_user_timeout` need the packets really
dropped (see tutorial 14). `thaw()` resumes forwarding, `close()` cuts everything.

The proxy runs its own event loop in a daemon thread, so it works the same under a
test's event loop, a notebook's or none at all.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

LOOPBACK = "127.0.0.1"


class FreezableProxy:
    """`with FreezableProxy(host, port) as proxy:` forwards `proxy.port` to host:port until frozen."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0  # accepted so far, for the record
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pglab-proxy", daemon=True)
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    def for_dsn(cls, dsn: str) -> FreezableProxy:
        """A proxy in front of the server of `dsn` (not started)."""
        parts = urlsplit(dsn)
        return cls(parts.hostname or LOOPBACK, parts.port or 5432)

    def dsn(self, dsn: str) -> str:
        """`dsn` with its host and port replaced by the proxy's."""
        parts = urlsplit(dsn)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@{LOOPBACK}:{self.port}" if credentials else f"{LOOPBACK}:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def start(self) -> int:
        """Listen on a free loopback port and forward; the port."""
        self._thread.start()
        self._call(self._flowing.set)
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, LOOPBACK, 0), self._loop).result(timeout=10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    @property
    def frozen(self) -> bool:
        """Whether forwarding is stopped."""
        return not self._flowing.is_set()

    def freeze(self) -> None:
        """Stop forwarding in both directions; every socket stays open (no FIN, no RST)."""
        self._call(self._flowing.clear)

    def thaw(self) -> None:
        """Forward again, including the bytes that waited meanwhile."""
        self._call(self._flowing.set)

    def close(self) -> None:
        """Stop listening and close every forwarded connection; stop the proxy's thread."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FreezableProxy:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals ------------------------------------------------------------
    def _call(self, function: object) -> None:
        """Run a callable in the proxy's loop and wait for it (events are not thread-safe)."""
        async def run() -> None:
            function()  # type: ignore[operator]

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, server_writer}
        await asyncio.gather(self._pump(client_reader, server_writer), self._pump(server_reader, client_writer),
                             return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._flowing.wait()  # frozen: stop reading, so nothing moves and nothing closes
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()  # frozen while reading: hold the bytes until thawed
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
            self._writers.discard(writer)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        self._flowing.set()  # let frozen pumps run into the closed sockets and end
        # Every task of this loop is the proxy's: end them before the loop closes, or their
        # coroutines are finalised later against a closed loop ("Event loop is closed").
        if pending := asyncio.all_tasks() - {asyncio.current_task()}:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=2)
