"""Lab 00: first contact with the server, and what one connection costs.

You write three small coroutines. The notebook uses them to measure, on your own
machine, why every later lab keeps connections open instead of opening one per query.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import asyncpg


async def server_info(dsn: str) -> dict[str, object]
    """Facts about the server over ONE connection, closed before returning.

    Keys: "version" (e.g. "18.6"), "user", "database" and "pid" (the server
    process that served this connection, from `pg_backend_pid()`).
    """
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT current_setting('server_version') AS version, current_user AS user,"
            " current_database() AS database, pg_backend_pid() AS pid"
        )
        return dict(row)
    finally:
        # Closing in `finally` matters: a failed query must not leak a server process.
        await conn.close()


async def connect_query_close(dsn: str) -> int:
    """The unpooled way: connect, run `SELECT 1`, close. Returns the 1."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


async def pooled_query(pool: asyncpg.Pool) -> int:
    """The pooled way: borrow a connection from `pool`, run `SELECT 1`, give it back."""
    async with pool.acquire() as conn:
        return await conn.fetchval("SELECT 1")


async def time_operation(operation: Callable[[], Awaitable[object]], n: int) -> list[float]:
    """Await `operation()` n times, one after another; return each duration in seconds.

    Use `time.perf_counter()`: it is monotonic and has the best resolution.
    """
    durations = []
    for _ in range(n):
        started = time.perf_counter()
        await operation()
        durations.append(time.perf_counter() - started)
    return durations
