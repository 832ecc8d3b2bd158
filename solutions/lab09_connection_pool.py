"""Lab 09: `ConnectionPool`, a connection pool written from scratch for any connector.

Modelled on asyncpg's pool.py and psycopg_pool: a count of open slots, a stack of idle
connections and a FIFO queue of waiters. A returned connection is handed straight to
the oldest waiter, so a newcomer can never overtake someone already waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

C = TypeVar("C")
logger = logging.getLogger(__name__)


class PoolTimeoutError(TimeoutError):
    """No connection became available within `acquire_timeout`."""


class PoolClosedError(RuntimeError):
    """The pool is closed: no more connections are handed out."""


@dataclass(frozen=True)
class PoolConfig:
    """Sizes and time limits (seconds) of a pool."""

    max_size: int = 10
    min_size: int = 1
    max_idle_time: float = 300.0
    acquire_timeout: float = 30.0
    max_lifetime: float = 3600.0
    cleanup_interval: float = 60.0


@dataclass(eq=False)  # identity equality and hash: two wrappers are never "the same" connection
class PooledConnection(Generic[C]):
    """A connection plus the bookkeeping the pool needs."""

    connection: C
    created_at: float = field(default_factory=time.monotonic)
    last_used_at: float = field(default_factory=time.monotonic)
    use_count: int = 0

    def is_expired(self, max_lifetime: float) -> bool:
        """True when the connection has lived longer than `max_lifetime` seconds."""
        # BEGIN SOLUTION
        return time.monotonic() - self.created_at > max_lifetime
        # END SOLUTION

    def idle_time(self) -> float:
        """Seconds since the connection was last handed out or given back."""
        # BEGIN SOLUTION
        return time.monotonic() - self.last_used_at
        # END SOLUTION


class ConnectionPool(Generic[C]):
    """A pool over any `factory` coroutine function that opens a connection."""

    def __init__(self, factory: Callable[[], Awaitable[C]], config: PoolConfig | None = None, *,
                 health_check: Callable[[C], Awaitable[bool]] | None = None,
                 close: Callable[[C], Awaitable[Any]] | None = None) -> None:
        self.factory, self.config = factory, config or PoolConfig()
        self.health_check, self.close_connection = health_check, close
        self._size = 0  # slots taken: connections open, being opened, or promised to a waiter
        self._idle: deque[PooledConnection[C]] = deque()  # right end = most recently used
        self._in_use: dict[int, PooledConnection[C]] = {}  # by id(): safe, we hold the object
        # A waiter's future receives a connection, or None: "a slot is yours, connect".
        self._waiters: deque[asyncio.Future[PooledConnection[C] | None]] = deque()
        self._created = self._closed_count = 0
        self._closed = False
        self._cleanup_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open `min_size` connections and start the background clean-up."""
        # BEGIN SOLUTION
        await self._fill()
        if self._cleanup_task is None:
            self._cleanup_task = asyncio.create_task(self._cleanup_loop())
        # END SOLUTION

    async def acquire(self, timeout: float | None = None) -> C:
        """Borrow a connection, waiting first-come first-served up to `timeout` (default
        `acquire_timeout`). Raises PoolTimeoutError (a TimeoutError) or PoolClosedError."""
        # BEGIN SOLUTION
        if self._closed:
            raise PoolClosedError("the pool is closed")
        # There are waiters only while nothing is idle and every slot is taken, so this
        # fast path never overtakes them.
        while self._idle:
            holder = self._idle.pop()  # the most recently used: the others may idle out
            if not holder.is_expired(self.config.max_lifetime):
                return self._checkout(holder)
            await self._discard(holder)
        if self._size < self.config.max_size:
            self._size += 1  # take the slot BEFORE awaiting, or concurrent callers overshoot
            return self._checkout(await self._connect())
        timeout = self.config.acquire_timeout if timeout is None else timeout
        return self._checkout(await self._wait(timeout))
        # END SOLUTION

    async def release(self, conn: C) -> None:
        """Give back a borrowed connection; a broken or expired one is closed, not reused.

        Raises ValueError for a connection this pool did not lend (or got back already)."""
        # BEGIN SOLUTION
        holder = self._in_use.pop(id(conn), None)
        if holder is None:
            raise ValueError("connection not acquired from this pool, or already released")
        holder.last_used_at = time.monotonic()
        expired = holder.is_expired(self.config.max_lifetime)
        if self._closed or expired or not await self._healthy(conn):
            await self._discard(holder)
        else:
            self._give(holder)
        # END SOLUTION

    def connection(self, timeout: float | None = None) -> _Borrow[C]:
        """`async with pool.connection() as conn:` borrows and always gives back."""
        return _Borrow(self, timeout)

    def stats(self) -> dict[str, int]:
        """`total, available, in_use, waiting, created, closed`."""
        # BEGIN SOLUTION
        return {"total": self._size, "available": len(self._idle),
                "in_use": len(self._in_use), "waiting": len(self._waiters),
                "created": self._created, "closed": self._closed_count}
        # END SOLUTION

    async def close(self) -> None:
        """Refuse new acquires, wake waiters with PoolClosedError, close idle connections.
        Borrowed connections are closed when they come back. Safe to call twice."""
        # BEGIN SOLUTION
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolClosedError("the pool was closed while waiting"))
        if self._cleanup_task is not None:
            self._cleanup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleanup_task
            self._cleanup_task = None
        while self._idle:
            await self._discard(self._idle.pop())
        # END SOLUTION

    def _checkout(self, holder: PooledConnection[C]) -> C:
        holder.use_count += 1
        holder.last_used_at = time.monotonic()
        self._in_use[id(holder.connection)] = holder
        return holder.connection

    async def _connect(self) -> PooledConnection[C]:
        """Open a connection in a slot already counted in `_size`."""
        # BEGIN SOLUTION: await the factory; on any exception (even cancelled) _give(None), re-raise
        try:
            holder = PooledConnection(await self.factory())
        except BaseException:  # failure or cancellation: pass the slot on, never lose it
            self._give(None)
            raise
        self._created += 1
        if self._closed:
            await self._discard(holder)
            raise PoolClosedError("the pool was closed while connecting")
        return holder
        # END SOLUTION

    async def _wait(self, timeout: float) -> PooledConnection[C]:
        """Queue up (FIFO) until a connection or a free slot is handed to us."""
        # BEGIN SOLUTION: queue a future, call_later(timeout, _expire, ...), pass on a late result
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[PooledConnection[C] | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(timeout, _expire, waiter, timeout)
        try:
            holder = await waiter
        except BaseException:  # timed out, pool closed, or the borrower was cancelled
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give(waiter.result())  # handed over as we gave up: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        finally:
            timer.cancel()
        return holder if holder is not None else await self._connect()
        # END SOLUTION

    def _give(self, holder: PooledConnection[C] | None) -> None:
        """Hand a free connection (or, with None, a freed slot) to the oldest live waiter;
        with no waiter, the connection goes idle (or the slot is released)."""
        # BEGIN SOLUTION
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # skip waiters that timed out or were cancelled
                waiter.set_result(holder)
                return
        if holder is None:
            self._size -= 1
        else:
            self._idle.append(holder)
        # END SOLUTION

    async def _discard(self, holder: PooledConnection[C]) -> None:
        # Close first and free the slot after, so the server never sees more than max_size.
        self._closed_count += 1
        try:
            conn: Any = holder.connection
            result = self.close_connection(conn) if self.close_connection else conn.close()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # closing a broken connection may fail: it is gone anyway
            logger.debug("closing a pooled connection failed: %r", exc)
        finally:
            self._give(None)

    async def _healthy(self, conn: C) -> bool:
        if self.health_check is None:  # no extra round trip unless asked for
            return True
        try:
            return bool(await self.health_check(conn))
        except Exception:
            return False

    async def _fill(self) -> None:
        """Open connections until `min_size` are open (or opening)."""
        # BEGIN SOLUTION
        missing = self.config.min_size - self._size
        if missing <= 0 or self._closed:
            return
        self._size += missing
        results = await asyncio.gather(*(self._connect() for _ in range(missing)),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, PooledConnection):
                self._give(result)
        if errors := [r for r in results if isinstance(r, BaseException)]:
            raise errors[0]
        # END SOLUTION

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.cleanup_interval)
            try:
                await self._reap()
            except Exception as exc:  # e.g. the server is down: try again next round
                logger.warning("pool clean-up failed: %r", exc)

    async def _reap(self) -> None:
        """Close expired connections and those idle too long above `min_size`; refill."""
        # BEGIN SOLUTION
        expired = [h for h in self._idle if h.is_expired(self.config.max_lifetime)]
        surplus = max(self._size - len(expired) - self.config.min_size, 0)
        stale = [h for h in self._idle  # the left end has idled longest
                 if h not in expired and h.idle_time() > self.config.max_idle_time][:surplus]
        for holder in expired + stale:
            self._idle.remove(holder)
        for holder in expired + stale:
            await self._discard(holder)
        await self._fill()
        # END SOLUTION


def _expire(waiter: asyncio.Future[Any], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(PoolTimeoutError(f"no connection available within {timeout:g} s"))


class _Borrow(Generic[C]):
    """What `connection()` returns: a small class, cheaper than a generator-based manager."""

    __slots__ = ("pool", "timeout", "conn")

    def __init__(self, pool: ConnectionPool[C], timeout: float | None) -> None:
        self.pool, self.timeout = pool, timeout

    async def __aenter__(self) -> C:
        self.conn = await self.pool.acquire(self.timeout)
        return self.conn

    async def __aexit__(self, *exc_info: object) -> None:
        await self.pool.release(self.conn)


class ConnectionPoolManager:
    """One started ConnectionPool per data source id."""

    def __init__(self, config: PoolConfig | None = None) -> None:
        self.config = config
        self.pools: dict[str, ConnectionPool[Any]] = {}

    async def get_pool(self, source_id: str, factory: Callable[[], Awaitable[Any]],
                       config: PoolConfig | None = None, **hooks: Any) -> ConnectionPool[Any]:
        """The pool of `source_id`, created and started on first use.

        `hooks` (health_check, close) go to the ConnectionPool."""
        # BEGIN SOLUTION
        if (pool := self.pools.get(source_id)) is None:
            # Registered before the first await, so concurrent callers share one pool.
            pool = self.pools[source_id] = ConnectionPool(factory, config or self.config, **hooks)
            try:
                await pool.start()
            except BaseException:
                del self.pools[source_id]
                await pool.close()
                raise
        return pool
        # END SOLUTION

    def get_stats(self) -> dict[str, dict[str, int]]:
        """`stats()` of every pool, by source id."""
        # BEGIN SOLUTION
        return {source_id: pool.stats() for source_id, pool in self.pools.items()}
        # END SOLUTION

    async def close_all(self) -> None:
        """Close every pool and forget them."""
        # BEGIN SOLUTION
        pools, self.pools = list(self.pools.values()), {}
        await asyncio.gather(*(pool.close() for pool in pools))
        # END SOLUTION
