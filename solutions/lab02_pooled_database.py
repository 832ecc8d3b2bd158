"""Lab 02: `PooledDatabase`, query helpers that always give their connection back.

Every helper borrows through one context manager, `connection()`, so there is
exactly one place where a connection is returned to the pool: on success, on an
exception and on cancellation alike. A pool that leaks one connection per error
is exhausted after `max_size` errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import asyncpg


class Pool(Protocol):
    """What this lab needs from lab 01's `DatabasePool` (duck typing, no import)."""

    def acquire(self, *, timeout: float | None = None) -> Any: ...

    async def release(self, conn: asyncpg.Connection) -> None: ...


class Borrowed:
    """What `connection()` returns: an async context manager around one borrow.

    A small class rather than `@contextlib.asynccontextmanager`: every query passes
    through here, and a generator-based context manager drives a generator per use
    (`pglab bench`'s overhead rows measure what the wrapper costs). `__aexit__` runs
    however the block ends: success, exception or cancellation.
    """

    __slots__ = ("pool", "timeout", "conn")

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self.pool, self.timeout = pool, timeout

    async def __aenter__(self) -> asyncpg.Connection:
        # BEGIN SOLUTION: borrow a connection from self.pool (with self.timeout), keep and return it
        self.conn = await self.pool.acquire(timeout=self.timeout)
        return self.conn
        # END SOLUTION

    async def __aexit__(self, *exc_info: object) -> None:
        # BEGIN SOLUTION: give self.conn back to self.pool
        # Also runs on CancelledError. asyncpg's release() waits until a cancelled
        # query is cancelled server-side and resets the session before lending it again.
        await self.pool.release(self.conn)
        # END SOLUTION


class PooledDatabase:
    """Query helpers over a `DatabasePool`; parameters always travel as `$1, $2, ...`."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def connection(self, *, timeout: float | None = None) -> Borrowed:
        """Borrow a connection for an `async with` block; it comes back however the block ends."""
        return Borrowed(self.pool, timeout)

    async def execute_query(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """All rows of `query`, with `args` bound to its `$n` placeholders."""
        # BEGIN SOLUTION
        async with self.connection() as conn:
            return await conn.fetch(query, *args)
        # END SOLUTION

    async def execute_single(self, query: str, *args: Any) -> Any:
        """One value: the first column of the first row (`SELECT count(*) ...`), None when there is no row."""
        # BEGIN SOLUTION
        async with self.connection() as conn:
            return await conn.fetchval(query, *args)
        # END SOLUTION

    async def execute_transaction(
        self, queries: list[tuple[str, Sequence[Any]]]
    ) -> list[list[asyncpg.Record]]:
        """Run `(query, args)` pairs in one transaction on one connection: all or nothing.

        Returns the rows of each statement, in order. If any statement fails, every
        statement is rolled back and the exception propagates.
        """
        # BEGIN SOLUTION
        async with self.connection() as conn:
            # The transaction block commits on a clean exit and rolls back on any
            # exception (cancellation included) before the connection goes back.
            async with conn.transaction():
                return [await conn.fetch(query, *args) for query, args in queries]
        # END SOLUTION
