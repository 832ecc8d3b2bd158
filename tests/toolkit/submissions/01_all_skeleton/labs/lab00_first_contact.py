# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 00`. (Generated from solutions/lab00_first_contact.py by `pglab build-labs`.)
"""Lab 00: first contact with the server, and what one connection costs.

You write three small coroutines. The notebook uses them to measure, on your own
machine, why every later lab keeps connections open instead of opening one per query.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import asyncpg


async def server_info(dsn: str) -> dict[str, object]:
    """Facts about the server over ONE connection, closed before returning.

    Keys: "version" (e.g. "18.6"), "user", "database" and "pid" (the server
    process that served this connection, from `pg_backend_pid()`).
    """
    raise NotImplementedError("TODO: implement server_info()")


async def connect_query_close(dsn: str) -> int:
    """The unpooled way: connect, run `SELECT 1`, close. Returns the 1."""
    raise NotImplementedError("TODO: implement connect_query_close()")


async def pooled_query(pool: asyncpg.Pool) -> int:
    """The pooled way: borrow a connection from `pool`, run `SELECT 1`, give it back."""
    raise NotImplementedError("TODO: implement pooled_query()")


async def time_operation(operation: Callable[[], Awaitable[object]], n: int) -> list[float]:
    """Await `operation()` n times, one after another; return each duration in seconds.

    Use `time.perf_counter()`: it is monotonic and has the best resolution.
    """
    raise NotImplementedError("TODO: implement time_operation()")
