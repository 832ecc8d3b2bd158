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
        # BEGIN SOLUTION: closed: RuntimeError; idle, else a slot below the limit, else _wait(); _ready(); record it
        if self._closed:
            raise RuntimeError("QueuePool is closed: create a new one")
        if self._idle:  # the fast path: nothing to await before the connection is ours
            record: _Record | None = self._idle.popleft()
        elif self.max_overflow == -1 or self._size < self.pool_size + self.max_overflow:
            self._size += 1  # reserve the slot before awaiting, or a burst overshoots the limit
            record = None
        else:
            record = await self._wait(self.pool_timeout if timeout is None else timeout)
        record = await self._ready(record)
        record.since = time.monotonic()
        # A stack costs microseconds: capture it only when leak detection is on.
        record.stack = traceback.extract_stack(limit=16)[:-1] if self.leak_threshold is not None else None
        self._out[id(record.conn)] = record
        return record.conn
        # END SOLUTION

    async def release(self, conn: Any) -> None:
        """Check in: roll back, run on_checkin, then hand over, keep or close it. ValueError if not ours."""
        # BEGIN SOLUTION: pop from _out (ValueError); if open: ROLLBACK if needed, on_checkin; then keep or close
        record = self._out.pop(id(conn), None)
        if record is None:
            raise ValueError("release(): this connection is not checked out from this pool (released twice?)")
        keep = False  # until the clean-up has succeeded, its state is unknown
        try:
            if not conn.is_closed():  # a connection the borrower saw die has nothing to clean up
                if conn.is_in_transaction():  # known locally: a clean connection costs no round trip
                    await conn.execute("ROLLBACK")
                if self.on_checkin is not None:
                    await self.on_checkin(conn)
            keep = not conn.is_closed() and not self._closed and len(self._idle) < self.pool_size
        finally:
            self._give_back(record if keep else None)  # the connection, or its slot, to the first waiter
            if not keep:  # dead, a failed clean-up, an overflow connection, or the pool is closed
                await self._discard(conn)
        # END SOLUTION

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
        # BEGIN SOLUTION: in one try: recycle, pre-ping, or open + on_connect; on_checkout; on failure free the slot
        try:
            if record is not None and (0 <= self.pool_recycle < time.monotonic() - record.created_at
                                       or self.pool_pre_ping and not await self._alive(record.conn)):
                old, record = record.conn, None  # too old, or pre-ping found it dead: a new one takes its slot
                await self._discard(old)
            if record is None:
                record = _Record(await self.factory())
                if self.on_connect is not None:
                    await self.on_connect(record.conn)
            if self.on_checkout is not None:
                await self.on_checkout(record.conn)
            return record
        except BaseException:  # cancellation too: a slot not given back here is lost for good
            self._give_back(None)
            if record is not None:  # a failed hook or an interrupted ping: its state is unknown, close it
                await self._discard(record.conn)
            raise
        # END SOLUTION

    async def _alive(self, conn: Any) -> bool:
        """The pre-ping: free when the driver already saw the connection close, else one round trip."""
        # BEGIN SOLUTION: False if is_closed(), else whether `SELECT 1` succeeds (any exception: dead)
        if not conn.is_closed():  # closed: the driver already saw the server go, no round trip needed
            with contextlib.suppress(Exception):  # any error means dead
                await conn.execute("SELECT 1")  # simple query protocol: one message, no prepared statement
                return True
        return False
        # END SOLUTION

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
        # BEGIN SOLUTION: records of _out held longer than leak_threshold (since `since`), oldest first, as Leak
        now, limit = time.monotonic(), self.leak_threshold
        held = sorted(self._out.values(), key=lambda r: r.since)  # oldest checkout first
        return [Leak(r.conn, now - r.since, "".join(traceback.format_list(r.stack or [])))
                for r in held if limit is not None and now - r.since > limit]
        # END SOLUTION

    async def close(self) -> None:
        """Close idle connections now and checked-out ones on check-in; fail the waiters."""
        self._closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(RuntimeError("QueuePool is closed"))
        while self._idle:
            self._size -= 1
            await self._discard(self._idle.popleft().conn)

