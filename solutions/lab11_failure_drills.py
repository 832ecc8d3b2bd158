"""Lab 11: failure drills — safe errors, back-pressure, retries and cancellation.

`map_db_error` turns a database failure into an HTTP-style status and a message safe
to show a client; `BoundedPool` refuses to queue borrowers without limit;
`resilient_fetch` rides out terminated backends and server restarts until a deadline;
all three stay correct when the task using them is cancelled.

One timeout policy. An acquire that timed out (asyncio.TimeoutError: the pool is busy now,
maybe not a moment later) is retried, and maps to 503 like DeadlineExceededError. A query
still running at the deadline (QueryTimeoutError) or stopped by the server's statement_timeout
(QueryCanceledError) is not retried and maps to 504: a slow query is slow again, and retrying
it only adds load to a database that is already struggling.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

# Fixed texts: a client learns what kind of failure happened, never the SQL,
# the parameters, a constraint's key values or a connection string.
MESSAGES = {
    409: "This record already exists.",
    500: "Internal server error.",
    503: "The database is unavailable or busy. Please retry shortly.",
    504: "The database took too long to answer.",
}


class TooManyWaitersError(RuntimeError):
    """Raised at once when `max_waiting` borrowers already wait (psycopg_pool's TooManyRequests)."""


class DeadlineExceededError(RuntimeError):
    """`resilient_fetch` gave up: the database stayed unreachable or busy until the deadline."""


class QueryTimeoutError(RuntimeError):
    """`resilient_fetch`'s query was still running at the deadline; it was cancelled, not retried."""


def is_transient(exc: BaseException) -> bool:
    """True for failures a later attempt can fix: the connection, the backend or the whole
    server went away, the server is (re)starting, or no connection freed up in time."""
    # BEGIN SOLUTION
    return isinstance(exc, (
        asyncpg.PostgresConnectionError,  # SQLSTATE class 08, incl. "connection was closed"
        asyncpg.AdminShutdownError,  # pg_terminate_backend, or a fast shutdown
        asyncpg.CrashShutdownError,
        asyncpg.CannotConnectNowError,  # "the database system is starting up / shutting down"
        asyncpg.InternalClientError,  # a session killed mid-protocol (MagicStack/asyncpg#1069)
        asyncpg.TooManyConnectionsError,
        OSError,  # refused or reset while the server is down (asyncio.TimeoutError is one too)
    ))
    # END SOLUTION


def map_db_error(exc: BaseException) -> tuple[int, str]:
    """HTTP-style status and a safe message, per the module's timeout policy: unique
    violation -> 409, a query too slow -> 504, unavailable database or busy pool -> 503,
    anything else -> 500. The message is one of MESSAGES, never `str(exc)`."""
    # BEGIN SOLUTION
    if isinstance(exc, asyncpg.UniqueViolationError):
        status = 409
    elif isinstance(exc, (asyncpg.QueryCanceledError, QueryTimeoutError)):
        status = 504
    elif isinstance(exc, (TooManyWaitersError, DeadlineExceededError)) or is_transient(exc):
        status = 503
    else:
        status = 500
    return status, MESSAGES[status]
    # END SOLUTION


class BoundedPool:
    """A pool wrapper that queues at most `max_waiting` borrowers (0: no limit), like
    psycopg_pool's `max_waiting`: the next one gets TooManyWaitersError at once.

    Wraps an asyncpg.Pool or a lab 01 DatabasePool (anything with `await acquire(timeout=)`
    and `await release(conn)`; pass `max_size` unless it has `get_max_size()`). Every
    borrower must go through it: it counts them itself.
    """

    def __init__(self, pool: Any, *, max_waiting: int = 0, timeout: float | None = None,
                 max_size: int | None = None) -> None:
        self.pool = pool
        self.max_waiting = max_waiting
        self.timeout = timeout
        self.max_size: int = max_size if max_size is not None else pool.get_max_size()
        self.borrowers = 0  # inside acquire() or holding a connection
        self._lent: set[asyncpg.Connection] = set()  # what release() may count back

    @property
    def waiting(self) -> int:
        """Borrowers queued for a connection: those beyond the pool's capacity."""
        return max(0, self.borrowers - self.max_size)

    async def acquire(self, *, timeout: float | None = None) -> asyncpg.Connection:
        """Borrow a connection, waiting at most `timeout` (default: the pool's `timeout`).

        Raises TooManyWaitersError at once when `max_waiting` borrowers already wait,
        and asyncio.TimeoutError when no connection frees up in time.
        """
        # BEGIN SOLUTION
        # Check and count with no await in between: no other task can slip in.
        if self.max_waiting and self.waiting >= self.max_waiting:
            raise TooManyWaitersError(
                f"{self.waiting} borrowers already wait (max_waiting={self.max_waiting})"
            )
        self.borrowers += 1
        try:
            conn = await self.pool.acquire(timeout=self.timeout if timeout is None else timeout)
        except BaseException:  # timed out or cancelled while waiting: this borrower leaves
            self.borrowers -= 1
            raise
        self._lent.add(conn)
        return conn
        # END SOLUTION

    async def release(self, conn: asyncpg.Connection) -> None:
        """Give back a connection from `acquire()`, even when the caller is being cancelled.

        A connection it did not lend, or already took back, goes to the pool uncounted:
        asyncpg ignores a second release and refuses another pool's connection.
        """
        # BEGIN SOLUTION
        if conn not in self._lent:
            await self.pool.release(conn)
            return
        self._lent.discard(conn)  # before the await: a concurrent second release is not counted
        try:
            # asyncpg shields the release itself: a query cancelled mid-flight is
            # finished (or the connection closed) before anyone else can borrow it.
            await self.pool.release(conn)
        finally:
            self.borrowers -= 1
        # END SOLUTION

    @contextlib.asynccontextmanager
    async def connection(
        self, *, timeout: float | None = None
    ) -> AsyncIterator[asyncpg.Connection]:
        """`async with bounded.connection() as conn:` borrows and always gives back."""
        conn = await self.acquire(timeout=timeout)
        try:
            yield conn
        finally:
            await self.release(conn)


async def resilient_fetch(pool: Any, query: str, *args: Any, deadline: float = 10.0,
                          base_delay: float = 0.05) -> list[asyncpg.Record]:
    """`fetch` that retries transient failures (see `is_transient`) for up to `deadline`
    seconds in all, acquire and query included: each `timeout=` is the time left. After the
    n-th failure it sleeps a random time between d/2 and d, d = min(base_delay * 2**n, 1 s,
    time left) (doubling, capped, jittered); any other error propagates at once.

    Raises DeadlineExceededError (chained to the last failure) when the retries use up the
    deadline, QueryTimeoutError when the query itself is still running at the deadline.
    A failure while giving the connection back, after the query succeeded, is not a failure
    of the call. Retry only reads or idempotent writes: a failed attempt may have committed.
    """
    # BEGIN SOLUTION
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    attempt = 0
    while True:
        attempt += 1
        try:
            conn = await pool.acquire(timeout=max(give_up - loop.time(), 0.001))
            try:
                return await conn.fetch(query, *args, timeout=max(give_up - loop.time(), 0.001))
            except TimeoutError as exc:  # asyncpg has cancelled the query on the server
                raise QueryTimeoutError(f"the query ran past the {deadline:g} s deadline") from exc
            finally:
                # If giving it back fails (the server vanished just after our query), asyncpg
                # has already closed that connection: the rows are good, and a retry could
                # run a write twice. A failed query's own error still propagates.
                with contextlib.suppress(Exception):
                    await pool.release(conn)
        except Exception as exc:
            if not is_transient(exc):
                raise
            last = exc
        remaining = give_up - loop.time()
        if remaining <= 0:
            raise DeadlineExceededError(
                f"gave up after {attempt} attempts in {deadline:g} s ({type(last).__name__})"
            ) from last
        # Doubling delay, capped at 1 s and at what is left; jitter so clients do not retry in lockstep.
        delay = min(base_delay * 2 ** attempt, 1.0, remaining)
        await asyncio.sleep(random.uniform(delay / 2, delay))
    # END SOLUTION
