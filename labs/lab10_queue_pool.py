# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 10`. (Generated from solutions/lab10_queue_pool.py by `pglab build-labs`.)
"""Lab 10: `QueuePool`, SQLAlchemy's pool on asyncio: overflow, check-in rollback, recycle, pre-ping, hooks, leaks."""

import asyncio
import contextlib
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Hook = Callable[[Any], Awaitable[object]]  # `async def hook(conn)`


class PoolTimeoutError(TimeoutError):
    """No connection became available within the timeout."""


@dataclass(frozen=True)
class Leak:
    """A checkout held longer than `leak_threshold`: its age (s) and the stack that acquired it."""

    connection: Any
    age: float
    stack: str


@dataclass(slots=True)
class _Record:
    conn: Any
    created_at: float = field(default_factory=time.monotonic)  # pool_recycle counts from here
    since: float = 0.0  # the current checkout: a leak's age counts from here
    stack: list[traceback.FrameSummary] | None = None  # who checked it out


class QueuePool:
    """`pool_size` kept connections plus up to `max_overflow` temporary ones (-1: no limit), like SQLAlchemy's.

    `factory()` returns a connection with asyncpg's `is_closed()`, `is_in_transaction()`, `execute()`, `close()`.
    """

    def __init__(
        self, factory: Callable[[], Awaitable[Any]], *, pool_size: int = 5, max_overflow: int = 10,
        pool_timeout: float | None = 30.0, pool_recycle: float = -1, pool_pre_ping: bool = False,
        leak_threshold: float | None = None,
        on_connect: Hook | None = None, on_checkout: Hook | None = None, on_checkin: Hook | None = None,
    ) -> None:
        if pool_size < 0 or max_overflow < -1 or pool_size == max_overflow == 0:
            raise ValueError(f"QueuePool(pool_size={pool_size}, max_overflow={max_overflow}): use pool_size >= 0 and"
                             " max_overflow >= 0 (or -1: no limit), not both 0 (a pool that never hands out)")
        self.factory, self.pool_size, self.max_overflow = factory, pool_size, max_overflow
        self.pool_timeout, self.pool_recycle, self.pool_pre_ping = pool_timeout, pool_recycle, pool_pre_ping
        self.leak_threshold, self.on_connect = leak_threshold, on_connect  # hooks: async functions of the connection
        self.on_checkout, self.on_checkin = on_checkout, on_checkin
        self._idle: deque[_Record] = deque()  # FIFO, like SQLAlchemy's default
        self._waiters: deque[asyncio.Future[_Record | None]] = deque()
        self._out: dict[int, _Record] = {}  # id(conn) -> record, for every checked-out connection
        self._size = 0  # open connections, plus slots reserved for ones being opened
        self._closed = False

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """`async with pool.connection() as conn:` checks in even on error or cancellation."""
        conn = await self.acquire(timeout)
        try:
            yield conn
        finally:
            await self.release(conn)

    async def acquire(self, timeout: float | None = None) -> Any:
        """An idle connection, else a new one below the limit, else wait up to `timeout` (default: pool_timeout)."""
        raise NotImplementedError("TODO: closed: RuntimeError; idle, else a slot below the limit, else _wait(); _ready(); record it")

    async def release(self, conn: Any) -> None:
        """Check in: roll back, run on_checkin, then hand over, keep or close it. ValueError if not ours."""
        raise NotImplementedError("TODO: pop from _out (ValueError); if open: ROLLBACK if needed, on_checkin; then keep or close")

    async def _wait(self, timeout: float | None) -> _Record | None:
        """Queue until a check-in hands over a connection (or a free slot: None); PoolTimeoutError after `timeout`."""
        waiter: asyncio.Future[_Record | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it drops a cancel that comes as we are served
                return await waiter
        except BaseException as exc:
            # Served just as we gave up (timeout or cancellation): pass it on, or it is lost.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())
            if isinstance(exc, asyncio.TimeoutError):
                raise PoolTimeoutError(f"QueuePool limit of size {self.pool_size} overflow {self.max_overflow} "
                                       f"reached, connection timed out, timeout {timeout}") from None
            raise
        finally:
            with contextlib.suppress(ValueError):  # a waiter that gave up leaves the queue
                self._waiters.remove(waiter)

    async def _ready(self, record: _Record | None) -> _Record:
        """Replace an old or dead connection, open one for a reserved slot, run the hooks; free the slot on failure."""
        raise NotImplementedError("TODO: in one try: recycle, pre-ping, or open + on_connect; on_checkout; on failure free the slot")

    async def _alive(self, conn: Any) -> bool:
        """The pre-ping: free when the driver already saw the connection close, else one round trip."""
        raise NotImplementedError("TODO: False if is_closed(), else whether `SELECT 1` succeeds (any exception: dead)")

    def _give_back(self, item: _Record | None) -> None:
        """To the first live waiter; else a connection goes idle and a free slot (None) shrinks the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # skip waiters that timed out or were cancelled
                return waiter.set_result(item)
        if item is None:
            self._size -= 1
        else:
            self._idle.append(item)

    async def _discard(self, conn: Any) -> None:
        with contextlib.suppress(Exception):  # it may be dead already, or half-open: don't wait for ever
            await asyncio.wait_for(conn.close(), 10)

    def stats(self) -> dict[str, float]:
        """Counts, like SQLAlchemy's status(): size, checked_out, checked_in, overflow, wait_queue."""
        return {"size": self._size, "checked_out": len(self._out), "checked_in": len(self._idle),
                "overflow": max(0, self._size - self.pool_size), "wait_queue": sum(not w.done() for w in self._waiters)}

    def leaks(self) -> list[Leak]:
        """Checkouts held longer than `leak_threshold`, oldest first, with the acquiring stack."""
        raise NotImplementedError("TODO: records of _out held longer than leak_threshold (since `since`), oldest first, as Leak")

    async def close(self) -> None:
        """Close idle connections now and checked-out ones on check-in; fail the waiters."""
        self._closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(RuntimeError("QueuePool is closed"))
        while self._idle:
            self._size -= 1
            await self._discard(self._idle.popleft().conn)

