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
        # BEGIN SOLUTION
        if self.pool is not None:
            raise RuntimeError("DatabasePool is already initialized; close() it before initializing again")
        # server_settings travel in the connection's startup packet, so they cost
        # nothing extra; an `init=` callback running SET would add a round trip.
        pool = asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            max_queries=max_queries,
            max_inactive_connection_lifetime=max_inactive_connection_lifetime,
            command_timeout=command_timeout,
            server_settings={**SESSION_SETTINGS, "application_name": application_name},
        )
        # Claim the slot before the first await: a concurrent initialize() now sees
        # a pool and raises, instead of creating a second one that nobody closes.
        self.pool = pool
        try:
            await pool  # opens init_size connections (asyncpg 0.32: min_size unless given)
        except BaseException:
            self.pool = None  # a failed start (bad password, cancellation) leaves nothing behind
            raise
        # END SOLUTION

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        """Borrow a connection: `async with db.acquire() as conn:` or `conn = await db.acquire()`.

        A plain method (not `async def`): it returns asyncpg's acquire context, which is
        both awaitable and an async context manager. Raises RuntimeError before
        `initialize`, and `asyncio.TimeoutError` when no connection frees up in `timeout`.
        """
        # BEGIN SOLUTION
        if self.pool is None:
            raise RuntimeError("Pool not initialized: await initialize(dsn) first")
        return self.pool.acquire(timeout=timeout)
        # END SOLUTION

    async def release(self, conn: asyncpg.Connection) -> None:
        """Give back a connection obtained with `await db.acquire()`."""
        # BEGIN SOLUTION
        if self.pool is None:
            raise RuntimeError("Pool not initialized: await initialize(dsn) first")
        await self.pool.release(conn)
        # END SOLUTION

    async def close(self) -> None:
        """Close the pool, waiting for borrowed connections; safe to call twice."""
        # BEGIN SOLUTION
        if self.pool is None:
            return
        try:
            # pool.close() waits until every borrowed connection is released, so
            # self.pool stays set meanwhile: a borrower must still reach release().
            await self.pool.close()
        finally:
            self.pool = None
        # END SOLUTION

    def get_pool_stats(self) -> dict[str, int]:
        """`min_size, max_size, size, idle, in_use` from asyncpg's public API (all 0 before `initialize`)."""
        # BEGIN SOLUTION
        if self.pool is None:
            return {"min_size": 0, "max_size": 0, "size": 0, "idle": 0, "in_use": 0}
        size, idle = self.pool.get_size(), self.pool.get_idle_size()
        return {
            "min_size": self.pool.get_min_size(),
            "max_size": self.pool.get_max_size(),
            "size": size,
            "idle": idle,
            "in_use": size - idle,
        }
        # END SOLUTION
