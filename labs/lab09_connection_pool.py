# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 09`. (Generated from solutions/lab09_connection_pool.py by `pglab build-labs`.)
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
        raise NotImplementedError("TODO: implement is_expired()")

    def idle_time(self) -> float:
        """Seconds since the connection was last handed out or given back."""
        raise NotImplementedError("TODO: implement idle_time()")


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
        raise NotImplementedError("TODO: implement start()")

    async def acquire(self, timeout: float | None = None) -> C:
        """Borrow a connection, waiting first-come first-served up to `timeout` (default
        `acquire_timeout`). Raises PoolTimeoutError (a TimeoutError) or PoolClosedError."""
        raise NotImplementedError("TODO: implement acquire()")

    async def release(self, conn: C) -> None:
        """Give back a borrowed connection; a broken or expired one is closed, not reused.

        Raises ValueError for a connection this pool did not lend (or got back already)."""
        raise NotImplementedError("TODO: implement release()")

    def connection(self, timeout: float | None = None) -> _Borrow[C]:
        """`async with pool.connection() as conn:` borrows and always gives back."""
        return _Borrow(self, timeout)

    def stats(self) -> dict[str, int]:
        """`total, available, in_use, waiting, created, closed`."""
        raise NotImplementedError("TODO: implement stats()")

    async def close(self) -> None:
        """Refuse new acquires, wake waiters with PoolClosedError, close idle connections.
        Borrowed connections are closed when they come back. Safe to call twice."""
        raise NotImplementedError("TODO: implement close()")

    def _checkout(self, holder: PooledConnection[C]) -> C:
        holder.use_count += 1
        holder.last_used_at = time.monotonic()
        self._in_use[id(holder.connection)] = holder
        return holder.connection

    async def _connect(self) -> PooledConnection[C]:
        """Open a connection in a slot already counted in `_size`."""
        raise NotImplementedError("TODO: await the factory; on any exception (even cancelled) _give(None), re-raise")

    async def _wait(self, timeout: float) -> PooledConnection[C]:
        """Queue up (FIFO) until a connection or a free slot is handed to us."""
        raise NotImplementedError("TODO: queue a future, call_later(timeout, _expire, ...), pass on a late result")

    def _give(self, holder: PooledConnection[C] | None) -> None:
        """Hand a free connection (or, with None, a freed slot) to the oldest live waiter;
        with no waiter, the connection goes idle (or the slot is released)."""
        raise NotImplementedError("TODO: implement _give()")

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
        raise NotImplementedError("TODO: implement _fill()")

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.cleanup_interval)
            try:
                await self._reap()
            except Exception as exc:  # e.g. the server is down: try again next round
                logger.warning("pool clean-up failed: %r", exc)

    async def _reap(self) -> None:
        """Close expired connections and those idle too long above `min_size`; refill."""
        raise NotImplementedError("TODO: implement _reap()")


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
        raise NotImplementedError("TODO: implement get_pool()")

    def get_stats(self) -> dict[str, dict[str, int]]:
        """`stats()` of every pool, by source id."""
        raise NotImplementedError("TODO: implement get_stats()")

    async def close_all(self) -> None:
        """Close every pool and forget them."""
        raise NotImplementedError("TODO: implement close_all()")
