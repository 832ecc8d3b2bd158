"""Lab 10: `QueuePool` (SQLAlchemy's pool semantics on asyncio) and `ReadWriteRouter`.

`pool_size` connections are kept; up to `max_overflow` more are opened for a burst
and closed when they come back. Checkout may recycle old connections, pre-ping
idle ones, fire hooks, and remember who borrowed what, so leaks can be found.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Hook = Callable[[Any], Any]  # hook(conn), a plain or an async function
ConnOp = Callable[[Any], Awaitable[Any]]


class PoolTimeoutError(TimeoutError):
    """No connection became available within `pool_timeout`."""


@dataclass(frozen=True)
class Leak:
    """A checkout held longer than `leak_threshold`: its age (s) and the stack that acquired it."""

    connection: Any
    age: float
    stack: str


@dataclass(slots=True)
class _Record:
    conn: Any
    created_at: float = field(default_factory=time.monotonic)  # for pool_recycle
    since: float = 0.0  # when it was last checked out
    stack: list[traceback.FrameSummary] | None = None  # who checked it out


class QueuePool:
    """`pool_size` kept connections plus up to `max_overflow` temporary ones (SQLAlchemy's QueuePool)."""

    def __init__(
        self, factory: Callable[[], Awaitable[Any]], *, pool_size: int = 5, max_overflow: int = 10,
        pool_timeout: float | None = 30.0, pool_recycle: float = -1, pool_pre_ping: bool = False,
        leak_threshold: float | None = None,
        ping: ConnOp = lambda conn: conn.fetchval("SELECT 1"),  # defaults for asyncpg; pass your
        close: ConnOp = lambda conn: conn.close(),  # own to pool any other kind of connection
    ) -> None:
        self.factory, self.ping, self.close_connection = factory, ping, close
        self.pool_size, self.max_overflow, self.pool_timeout = pool_size, max_overflow, pool_timeout
        self.pool_recycle, self.pool_pre_ping, self.leak_threshold = pool_recycle, pool_pre_ping, leak_threshold
        self._idle: deque[_Record] = deque()  # FIFO, like SQLAlchemy's default
        self._waiters: deque[asyncio.Future[_Record | None]] = deque()
        self._out: dict[int, _Record] = {}  # id(conn) -> record, for every checked-out connection
        self._size = 0  # open connections, plus slots reserved for ones being opened
        self._hooks: dict[str, list[Hook]] = {"connect": [], "checkout": [], "checkin": []}
        self._checkouts = self._errors = 0
        self._wait_total = self._wait_max = 0.0
        self._closed = False

    def on_connect(self, hook: Hook) -> Hook:
        """Decorator: `hook(conn)` runs once per new physical connection."""
        self._hooks["connect"].append(hook)
        return hook

    def on_checkout(self, hook: Hook) -> Hook:
        """Decorator: `hook(conn)` runs every time a connection is handed out."""
        self._hooks["checkout"].append(hook)
        return hook

    def on_checkin(self, hook: Hook) -> Hook:
        """Decorator: `hook(conn)` runs every time a connection comes back."""
        self._hooks["checkin"].append(hook)
        return hook

    async def acquire(self) -> Any:
        """An idle connection, else a new one while below the limit, else wait (PoolTimeoutError)."""
        # BEGIN SOLUTION
        if self._closed:
            raise RuntimeError("QueuePool is closed")
        self._checkouts += 1
        if self._idle:  # the fast path: nothing to await before the connection is ours
            record: _Record | None = self._idle.popleft()
        elif self._size < self.pool_size + self.max_overflow:
            self._size += 1  # reserve the slot before awaiting, or a burst overshoots the limit
            record = None
        else:
            record = await self._wait()
        record = await self._ready(record)
        try:
            for hook in self._hooks["checkout"]:
                await _call(hook, record.conn)
        except BaseException:
            self._give_back(record)
            raise
        record.since = time.monotonic()
        # A stack costs microseconds: capture it only when leak detection is on.
        record.stack = traceback.extract_stack(limit=16)[:-1] if self.leak_threshold is not None else None
        self._out[id(record.conn)] = record
        return record.conn
        # END SOLUTION

    async def release(self, conn: Any) -> None:
        """Check a connection in; overflow and dead connections are closed. ValueError if not ours."""
        # BEGIN SOLUTION
        record = self._out.pop(id(conn), None)
        if record is None:
            raise ValueError("this connection is not checked out from this pool")
        try:
            for hook in self._hooks["checkin"]:
                await _call(hook, conn)
        finally:
            # A connection the borrower saw die (asyncpg's is_closed()) must not be queued again.
            dead = getattr(conn, "is_closed", lambda: False)()
            if dead or self._closed or not self._check_in(record):
                self._free_slot()
                await self._discard(conn)
        # END SOLUTION

    def connection(self) -> _Borrow:
        """`async with pool.connection() as conn:` checks in even on error or cancellation."""
        return _Borrow(self)

    async def _wait(self) -> _Record | None:
        """Queue until a check-in hands over a connection (or a free slot: None)."""
        # BEGIN SOLUTION
        waiter: asyncio.Future[_Record | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        start = time.monotonic()
        try:
            return await asyncio.wait_for(waiter, self.pool_timeout)
        except BaseException as exc:
            # Served just as we gave up (timeout or cancellation): pass it on, or it is lost.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())
            if isinstance(exc, asyncio.TimeoutError):
                raise PoolTimeoutError(
                    f"QueuePool limit of size {self.pool_size} overflow {self.max_overflow} reached,"
                    f" connection timed out, timeout {self.pool_timeout}"
                ) from None
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            waited = time.monotonic() - start
            self._wait_total += waited
            self._wait_max = max(self._wait_max, waited)
        # END SOLUTION

    async def _ready(self, record: _Record | None) -> _Record:
        """Recycle an old connection, pre-ping an idle one, or open one for a reserved slot."""
        # BEGIN SOLUTION
        try:
            if record is not None and 0 <= self.pool_recycle < time.monotonic() - record.created_at:
                old, record = record.conn, None
                await self._discard(old)
            elif record is not None and self.pool_pre_ping:
                try:
                    await self.ping(record.conn)
                except Exception:  # dead: replace it so the borrower never sees the error
                    self._errors += 1
                    old, record = record.conn, None
                    await self._discard(old)
            return record if record is not None else await self._open()
        except BaseException:
            self._give_back(record)  # the idle connection, or the slot, goes back: nothing leaks
            raise
        # END SOLUTION

    async def _open(self) -> _Record:
        """Open a physical connection and run the connect hooks on it."""
        # BEGIN SOLUTION
        try:
            conn = await self.factory()
        except Exception:
            self._errors += 1
            raise
        try:
            for hook in self._hooks["connect"]:
                await _call(hook, conn)
        except BaseException:
            await self._discard(conn)
            raise
        return _Record(conn)
        # END SOLUTION

    def _hand_off(self, item: _Record | None) -> bool:
        """Give a connection (or a free slot: None) to the first live waiter, if any."""
        # BEGIN SOLUTION
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # skip waiters that timed out or were cancelled
                waiter.set_result(item)
                return True
        return False
        # END SOLUTION

    def _check_in(self, record: _Record) -> bool:
        """Serve a waiter or queue the connection; False means an overflow connection to close."""
        # BEGIN SOLUTION
        if self._hand_off(record):
            return True
        if len(self._idle) < self.pool_size:
            self._idle.append(record)
            return True
        return False
        # END SOLUTION

    def _free_slot(self) -> None:
        """A connection is gone: a waiter may open a new one in its place, else the pool shrinks."""
        if not self._hand_off(None):
            self._size -= 1

    def _give_back(self, record: _Record | None) -> None:
        """Undo a checkout that failed half-way (may leave one idle connection too many)."""
        if record is None:
            self._free_slot()
        elif not self._check_in(record):
            self._idle.append(record)

    async def _discard(self, conn: Any) -> None:
        with contextlib.suppress(Exception):  # it may be dead already
            await self.close_connection(conn)

    def stats(self) -> dict[str, float]:
        """size, checked_out, overflow, checked_in, wait_queue, wait_time_avg/_max (s), connection_errors."""
        # BEGIN SOLUTION
        return {
            "size": self._size, "checked_out": len(self._out), "checked_in": len(self._idle),
            "overflow": max(0, self._size - self.pool_size),
            "wait_queue": sum(not w.done() for w in self._waiters),
            "wait_time_avg": self._wait_total / self._checkouts if self._checkouts else 0.0,
            "wait_time_max": self._wait_max, "connection_errors": self._errors,
        }
        # END SOLUTION

    def status(self) -> str:
        """One line, like SQLAlchemy's `pool.status()`."""
        s = self.stats()
        return (
            f"Pool size: {self.pool_size}  Connections in pool: {s['checked_in']}"
            f"  Current Overflow: {s['overflow']}  Current Checked out connections: {s['checked_out']}"
        )

    def leaks(self) -> list[Leak]:
        """Checkouts held longer than `leak_threshold`, oldest first, with the acquiring stack."""
        # BEGIN SOLUTION
        if self.leak_threshold is None:
            return []
        now = time.monotonic()
        held = sorted(self._out.values(), key=lambda r: r.since)
        return [
            Leak(r.conn, now - r.since, "".join(traceback.format_list(r.stack or [])))
            for r in held
            if now - r.since > self.leak_threshold
        ]
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


async def _call(hook: Hook, conn: Any) -> None:
    if inspect.isawaitable(result := hook(conn)):  # hooks may be plain or async functions
        await result


class _Borrow:
    """What `QueuePool.connection()` returns; a plain class costs less per checkout than @asynccontextmanager."""

    __slots__ = ("pool", "conn")

    def __init__(self, pool: QueuePool) -> None:
        self.pool = pool

    async def __aenter__(self) -> Any:
        self.conn = await self.pool.acquire()
        return self.conn

    async def __aexit__(self, *exc_info: object) -> None:
        await self.pool.release(self.conn)


class ReadWriteRouter:
    """Writes go to the primary; reads round-robin over replicas, falling back to the primary."""

    def __init__(self, primary: QueuePool, replicas: Sequence[QueuePool]) -> None:
        self.primary, self.replicas = primary, list(replicas)
        self.fallbacks = 0  # reads the primary served because a replica failed
        self._next = 0

    @contextlib.asynccontextmanager
    async def connection(self, readonly: bool = False) -> AsyncIterator[Any]:
        """A connection from the right pool, checked in afterwards."""
        pool, conn = await self._checkout(readonly)
        try:
            yield conn
        finally:
            await pool.release(conn)

    async def _checkout(self, readonly: bool) -> tuple[QueuePool, Any]:
        """The pool to use and a connection from it: a replica in turn for reads, else the primary."""
        # BEGIN SOLUTION
        if readonly and self.replicas:
            replica = self.replicas[self._next % len(self.replicas)]
            self._next += 1
            try:
                return replica, await replica.acquire()
            except Exception:  # a replica that is down or saturated must not fail the read
                self.fallbacks += 1
        return self.primary, await self.primary.acquire()
        # END SOLUTION
