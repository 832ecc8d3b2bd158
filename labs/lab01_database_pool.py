# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 01`. (Generated from solutions/lab01_database_pool.py by `pglab build-labs`.)
"""Lab 01: `DatabasePool`, a thin and safe wrapper around `asyncpg.Pool`.

The wrapper owns one pool for the life of the application: created once,
borrowed from by every request, closed once at shutdown.
"""

from __future__ import annotations

import asyncpg
from asyncpg.pool import PoolAcquireContext

# Sent in the startup packet of every new connection: no extra round trip.
SESSION_SETTINGS = {"timezone": "UTC", "search_path": "public", "statement_timeout": "30s"}


class DatabasePool:
    """One asyncpg pool per application, with course defaults."""

    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None

    async def initialize(
        self,
        dsn: str,
        *,
        min_size: int = 10,
        max_size: int = 50,
        max_queries: int = 50_000,
        max_inactive_connection_lifetime: float = 300.0,
        command_timeout: float | None = 60.0,
        application_name: str = "pglab",
    ) -> None:
        """Create the pool. Every connection gets time zone UTC, `search_path`
        public, `application_name` and a 30 s `statement_timeout`.

        Raises RuntimeError when called a second time, even concurrently.
        """
        raise NotImplementedError("TODO: implement initialize()")

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        """Borrow a connection: `async with db.acquire() as conn:` or `conn = await db.acquire()`.

        A plain method (not `async def`): it returns asyncpg's acquire context, which is
        both awaitable and an async context manager. Raises RuntimeError before
        `initialize`, and `asyncio.TimeoutError` when no connection frees up in `timeout`.
        """
        raise NotImplementedError("TODO: implement acquire()")

    async def release(self, conn: asyncpg.Connection) -> None:
        """Give back a connection obtained with `await db.acquire()`."""
        raise NotImplementedError("TODO: implement release()")

    async def close(self) -> None:
        """Close the pool, waiting for borrowed connections; safe to call twice."""
        raise NotImplementedError("TODO: implement close()")

    def get_pool_stats(self) -> dict[str, int]:
        """`min_size, max_size, size, idle, in_use` from asyncpg's public API (all 0 before `initialize`)."""
        raise NotImplementedError("TODO: implement get_pool_stats()")
