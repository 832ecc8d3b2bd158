# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 09`. (Generated from solutions/lab09_connection_pool.py by `pglab build-labs`.)
"""Lab 09, part 2: `ConnectionPool` from scratch, after asyncpg's pool.py and psycopg_pool: a count
of slots, a stack of idle connections and a FIFO queue of waiters served by direct hand-off."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic

from lab09_base import COUNTERS, MAX_RECONNECT_DELAY, C, PoolClosedError, PoolConfig, PooledConnection, PoolTimeoutError


class ConnectionPool(Generic[C]):
    """A pool over any `factory` coroutine function that opens a connection. `check(conn)`, if
    given, runs before an idle connection is lent and on release; False or raising: broken."""

    def __init__(self, factory: Callable[[], Awaitable[C]], config: PoolConfig | None = None, *,
                 check: Callable[[C], Awaitable[bool | None]] | None = None) -> None:
        self.factory, self.config, self.check = factory, config or PoolConfig(), check
        self._size = 0  # slots taken: connections open, being opened, or promised to a waiter
        self._idle: deque[PooledConnection[C]] = deque()  # right end = most recently used
        self._in_use: dict[int, PooledConnection[C]] = {}  # by id(): safe, we hold the object
        # A waiter's future receives a connection, or None: "a slot is yours, connect".
        self._waiters: deque[asyncio.Future[PooledConnection[C] | None]] = deque()
        self._counts: Counter[str] = Counter()
        self._closed, self._wake = False, asyncio.Event()  # _wake: below min_size, refill now
        self._upkeep: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open `min_size` connections (failures are retried in the background) and start the upkeep."""
        raise NotImplementedError("TODO: implement start()")

    async def acquire(self, timeout: float | None = None) -> C:
        """Borrow a connection within `timeout` s (default `acquire_timeout`), connecting included."""
        raise NotImplementedError("TODO: implement acquire()")

    async def release(self, conn: C) -> None:
        """Give back a borrowed connection (rolled back, or closed if broken); ValueError if not ours."""
        raise NotImplementedError("TODO: implement release()")

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[C]:
        """`async with pool.connection() as conn:` borrows and always gives back."""
        conn = await self.acquire(timeout)
        try:
            yield conn
        finally:
            await self.release(conn)

    def stats(self) -> dict[str, int]:
        """psycopg_pool's names: sizes, `requests_waiting`, then the COUNTERS since the pool was made."""
        raise NotImplementedError("TODO: implement stats()")

    async def close(self) -> None:
        """Fail waiters and new acquires (PoolClosedError), close idle connections; idempotent."""
        raise NotImplementedError("TODO: implement close()")

    async def _get(self) -> PooledConnection[C]:
        raise NotImplementedError("TODO: an idle connection that passes _vet, else a new one, else wait in the queue")

    async def _vet(self, holder: PooledConnection[C], returned: bool) -> bool:
        raise NotImplementedError("TODO: True if it may be lent (again); if not, or if interrupted, close it")

    async def _connect(self) -> PooledConnection[C]:
        raise NotImplementedError("TODO: open a connection in a slot already counted; on any exception _give(None)")

    async def _wait(self) -> PooledConnection[C]:
        raise NotImplementedError("TODO: queue a future and await it (FIFO); on any exception pass on a late result")

    def _give(self, holder: PooledConnection[C] | None) -> None:
        raise NotImplementedError("TODO: to the oldest live waiter; else idle it (None, a slot: free it, wake refill)")

    async def _discard(self, holder: PooledConnection[C]) -> None:
        # Close first and free the slot after, so the server never sees more than max_size.
        try:
            with contextlib.suppress(Exception):  # closing a broken connection may fail: it is gone anyway
                await holder.connection.close()  # type: ignore[attr-defined]
        finally:
            self._give(None)

    async def _fill(self) -> bool:
        raise NotImplementedError("TODO: open the connections missing below min_size at once; True if all opened")

    async def _open_one(self) -> None:
        # Each one joins the pool as soon as it opens: a failed (or cancelled) sibling loses nothing.
        self._give(await self._connect())

    async def _maintain(self) -> None:
        raise NotImplementedError("TODO: every cleanup_interval, or when woken: close expired/stale ones, refill")
