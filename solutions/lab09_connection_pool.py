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
        # BEGIN SOLUTION
        if self._closed:
            raise PoolClosedError("start() after close(): a closed pool stays closed, create a new one")
        await self._fill()
        self._upkeep = self._upkeep or asyncio.create_task(self._maintain())
        # END SOLUTION

    async def acquire(self, timeout: float | None = None) -> C:
        """Borrow a connection within `timeout` s (default `acquire_timeout`), connecting included."""
        # BEGIN SOLUTION
        if self._closed:
            raise PoolClosedError("the pool is closed")
        timeout = self.config.acquire_timeout if timeout is None else timeout
        self._counts["requests_num"] += 1
        try:
            async with asyncio.timeout(timeout) as deadline:  # one deadline for waiting AND connecting
                holder = await self._get()
        except Exception as exc:
            self._counts["requests_errors"] += 1
            if deadline.expired():
                raise PoolTimeoutError(f"no connection within {timeout:g} s ({self._size} of "
                                       f"max_size={self.config.max_size} busy or opening)") from exc
            raise
        self._in_use[id(holder.connection)] = holder
        return holder.connection
        # END SOLUTION

    async def release(self, conn: C) -> None:
        """Give back a borrowed connection (rolled back, or closed if broken); ValueError if not ours."""
        # BEGIN SOLUTION
        holder = self._in_use.pop(id(conn), None)
        if holder is None:
            raise ValueError("connection not acquired from this pool, or already released")
        holder.last_used_at = time.monotonic()
        if await self._vet(holder, returned=True):
            self._give(holder)
        # END SOLUTION

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
        # BEGIN SOLUTION
        return {"pool_min": self.config.min_size, "pool_max": self.config.max_size, "pool_size": self._size,
                "pool_available": len(self._idle), "requests_waiting": len(self._waiters),
                **{name: int(self._counts[name]) for name in COUNTERS}}
        # END SOLUTION

    async def close(self) -> None:
        """Fail waiters and new acquires (PoolClosedError), close idle connections; idempotent."""
        # BEGIN SOLUTION
        self._closed = True
        while self._waiters:
            if not (waiter := self._waiters.popleft()).done():
                waiter.set_exception(PoolClosedError("the pool was closed while waiting"))
        if self._upkeep is not None:
            self._upkeep.cancel()
            await asyncio.wait([self._upkeep])  # unlike suppress(CancelledError), lets ours through
        while self._idle:
            await self._discard(self._idle.pop())
        # END SOLUTION

    async def _get(self) -> PooledConnection[C]:
        # BEGIN SOLUTION: an idle connection that passes _vet, else a new one, else wait in the queue
        # Waiters exist only while nothing is idle and every slot is taken: this never overtakes them.
        while self._idle:
            holder = self._idle.pop()  # the most recently used: the others may idle out
            if await self._vet(holder, returned=False):
                return holder
        if self._size < self.config.max_size:
            self._size += 1  # take the slot BEFORE awaiting, or concurrent callers overshoot
            return await self._connect()
        return await self._wait()
        # END SOLUTION

    async def _vet(self, holder: PooledConnection[C], returned: bool) -> bool:
        # BEGIN SOLUTION: True if it may be lent (again); if not, or if interrupted, close it
        conn: Any = holder.connection
        usable = False
        try:
            if not holder.is_expired() and not (returned and self._closed):
                with contextlib.suppress(Exception):  # a failed rollback or check: it is broken
                    if not conn.is_closed():  # free to ask: closed by its borrower, or its server went away
                        if returned and conn.is_in_transaction():  # read locally, no round trip either
                            await conn.execute("ROLLBACK")  # the next borrower must not inherit it
                        usable = self.check is None or await self.check(conn) is not False
                self._counts["returns_bad" if returned else "connections_lost"] += not usable
            return usable
        finally:  # even when cancelled: a connection in our hands is lent or closed, never lost
            if not usable:
                await self._discard(holder)
        # END SOLUTION

    async def _connect(self) -> PooledConnection[C]:
        # BEGIN SOLUTION: open a connection in a slot already counted; on any exception _give(None)
        self._counts["connections_num"] += 1
        try:
            conn = await self.factory()
        except BaseException as exc:  # failure or cancellation: pass the slot on, never lose it
            self._counts["connections_errors"] += isinstance(exc, Exception)
            self._give(None)
            raise
        holder = PooledConnection(conn, self.config.jittered_lifetime())
        if self._closed:
            await self._discard(holder)
            raise PoolClosedError("the pool was closed while connecting")
        return holder
        # END SOLUTION

    async def _wait(self) -> PooledConnection[C]:
        # BEGIN SOLUTION: queue a future and await it (FIFO); on any exception pass on a late result
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[PooledConnection[C] | None] = loop.create_future()
        self._waiters.append(waiter)
        start = loop.time()
        try:
            holder = await waiter
        except BaseException:  # timed out, pool closed, or the borrower was cancelled
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give(waiter.result())  # handed over as we gave up: pass it on
            else:
                with contextlib.suppress(ValueError):  # close() may have emptied the queue
                    self._waiters.remove(waiter)
            raise
        finally:
            self._counts["requests_wait_ms"] += (loop.time() - start) * 1000
        return holder if holder is not None else await self._connect()
        # END SOLUTION

    def _give(self, holder: PooledConnection[C] | None) -> None:
        # BEGIN SOLUTION: to the oldest live waiter; else idle it (None, a slot: free it, wake refill)
        while self._waiters:
            if not (waiter := self._waiters.popleft()).done():  # skip timed-out or cancelled waiters
                return waiter.set_result(holder)
        if holder is not None:
            self._idle.append(holder)
        else:
            self._size -= 1
            if self._size < self.config.min_size:
                self._wake.set()
        # END SOLUTION

    async def _discard(self, holder: PooledConnection[C]) -> None:
        # Close first and free the slot after, so the server never sees more than max_size.
        try:
            with contextlib.suppress(Exception):  # closing a broken connection may fail: it is gone anyway
                await holder.connection.close()  # type: ignore[attr-defined]
        finally:
            self._give(None)

    async def _fill(self) -> bool:
        # BEGIN SOLUTION: open the connections missing below min_size at once; True if all opened
        missing = max(self.config.min_size - self._size, 0)
        self._size += missing  # taken before the awaits, as in _get()
        results = await asyncio.gather(*(self._open_one() for _ in range(missing)), return_exceptions=True)
        return not any(results)
        # END SOLUTION

    async def _open_one(self) -> None:
        # Each one joins the pool as soon as it opens: a failed (or cancelled) sibling loses nothing.
        self._give(await self._connect())

    async def _maintain(self) -> None:
        # BEGIN SOLUTION: every cleanup_interval, or when woken: close expired/stale ones, refill
        delay = self.config.reconnect_delay
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.cleanup_interval):
                    await self._wake.wait()
            self._wake.clear()
            for holder in list(self._idle):  # the left end has idled longest
                stale = holder.idle_time() > self.config.max_idle_time and self._size > self.config.min_size
                # One at a time, each left idle until its turn: a close() meanwhile finds the rest.
                if (holder.is_expired() or stale) and holder in self._idle:
                    self._idle.remove(holder)
                    await self._discard(holder)
            if await self._fill():
                delay = self.config.reconnect_delay
            else:  # the server may be down: back off, don't hammer it
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RECONNECT_DELAY)
                self._wake.set()
        # END SOLUTION
