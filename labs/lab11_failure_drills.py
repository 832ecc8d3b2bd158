# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 11`. (Generated from solutions/lab11_failure_drills.py by `pglab build-labs`.)
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
    raise NotImplementedError("TODO: implement is_transient()")


def map_db_error(exc: BaseException) -> tuple[int, str]:
    """HTTP-style status and a safe message, per the module's timeout policy: unique
    violation -> 409, a query too slow -> 504, unavailable database or busy pool -> 503,
    anything else -> 500. The message is one of MESSAGES, never `str(exc)`."""
    raise NotImplementedError("TODO: implement map_db_error()")


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
        raise NotImplementedError("TODO: implement acquire()")

    async def release(self, conn: asyncpg.Connection) -> None:
        """Give back a connection from `acquire()`, even when the caller is being cancelled.

        A connection it did not lend, or already took back, goes to the pool uncounted:
        asyncpg ignores a second release and refuses another pool's connection.
        """
        raise NotImplementedError("TODO: implement release()")

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
    raise NotImplementedError("TODO: implement resilient_fetch()")
