"""The same drills against any pool, for lab 15's side-by-side table and its checks.

A pool under test is anything shaped like lab 15's `Opened`: a `name`, a `borrow()`
that returns an async context manager yielding a connection, `scalar(conn, sql)`
that runs one query on it, and `close()`. Each drill measures what the pool does
(recovers, raises, hangs, leaks) on the real server and returns an `Outcome`; the
notebook tabulates them and the checks assert the ones the requirements demand.
Server-side facts come from `pg_stat_activity`, by backend pid, so nothing depends
on the pool setting an `application_name`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg

from .drills import cancel_storm

IDLE_AFTER_KILL = 0.5  # seconds between the kill and the next borrower, see killed_while_idle


class PoolUnderTest(Protocol):
    name: str

    def borrow(self) -> contextlib.AbstractAsyncContextManager[Any]: ...
    async def scalar(self, conn: Any, sql: str) -> Any: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """What one pool did in one drill: `ok` is whether it met the requirement."""

    drill: str
    ok: bool
    detail: str


async def _pid(pool: PoolUnderTest) -> int:
    async with pool.borrow() as conn:
        return int(await pool.scalar(conn, "SELECT pg_backend_pid()"))


async def _state(dsn: str, pid: int) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
    finally:
        await conn.close()


async def _attempts(pool: PoolUnderTest, n: int) -> list[BaseException]:
    """Borrow and query `n` times in a row; every error a borrower would have seen."""
    errors: list[BaseException] = []
    for _ in range(n):
        try:
            async with pool.borrow() as conn:
                await pool.scalar(conn, "SELECT 1")
        except Exception as exc:  # noqa: BLE001 - the drill records what a borrower sees
            errors.append(exc)
    return errors


def _names(errors: list[BaseException]) -> str:
    return ", ".join(sorted({type(e).__name__ for e in errors}))


async def exhausted(pool: PoolUnderTest, max_size: int, acquire_timeout: float) -> Outcome:
    """Hold `max_size` connections; one more borrower must get the pool's timeout error in time."""

    async def one_more() -> None:
        async with pool.borrow():
            pass

    async with contextlib.AsyncExitStack() as held:
        pids = {int(await pool.scalar(await held.enter_async_context(pool.borrow()), "SELECT pg_backend_pid()"))
                for _ in range(max_size)}
        started, bound = time.perf_counter(), acquire_timeout * 3 + 2
        try:
            await asyncio.wait_for(one_more(), bound)
        except Exception as exc:  # noqa: BLE001 - each pool has its own timeout error
            waited = time.perf_counter() - started
            if waited >= bound - 0.05:
                return Outcome("exhausted", False, f"hangs: still waiting after {bound:g} s (no acquire timeout?)")
            return Outcome("exhausted", len(pids) == max_size,
                           f"raises {type(exc).__name__} after {waited:.1f} s; {len(pids)} server connections")
        return Outcome("exhausted", False, f"lent connection {max_size + 1} of a pool of {max_size}")


async def killed_while_idle(pool: PoolUnderTest, dsn: str) -> Outcome:
    """Terminate an idle pooled backend; the next borrowers must never see the dead connection."""
    pid = await _pid(pool)
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        for _ in range(100):  # wait until the server has really ended it
            if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                break
            await asyncio.sleep(0.02)
    finally:
        await admin.close()
    # A dying backend leaves pg_stat_activity (a shared-memory exit hook) before it closes its
    # socket (an on_proc_exit hook, src/backend/libpq/pqcomm.c and src/backend/storage/ipc/ipc.c),
    # and on a busy machine that gap lasts long enough to lend the connection before the client
    # has seen the close. The drill is "killed while idle": the next borrower comes a moment later.
    await asyncio.sleep(IDLE_AFTER_KILL)
    errors = await _attempts(pool, 5)
    if errors:
        return Outcome("killed while idle", False, f"{len(errors)} of 5 borrowers failed ({_names(errors)})")
    return Outcome("killed while idle", True, "recovers: no borrower saw the dead connection")


async def returned_in_transaction(pool: PoolUnderTest, dsn: str) -> Outcome:
    """Give a connection back inside an open transaction; it must not stay `idle in transaction`."""
    async with pool.borrow() as conn:
        pid = int(await pool.scalar(conn, "SELECT pg_backend_pid()"))
        await pool.scalar(conn, "BEGIN")
        await pool.scalar(conn, "SELECT 1")
    await asyncio.sleep(0.2)  # a pool may reset in the background
    state = await _state(dsn, pid)
    if state == "idle in transaction":
        return Outcome("returned in transaction", False, "leaks: the backend stays idle in transaction")
    return Outcome("returned in transaction", True,
                   "cleaned: " + ("the connection was closed" if state is None else f"backend is {state}"))


async def cancellations(pool: PoolUnderTest, max_size: int, n: int = 1000) -> Outcome:
    """Cancel `n` borrowers at random moments; all `max_size` connections must be lendable after."""
    async def borrower() -> None:
        async with pool.borrow() as conn:
            await pool.scalar(conn, "SELECT pg_sleep(0.001)")

    storm = await cancel_storm(borrower, n=n, within=0.5, seed=15)

    async def all_at_once() -> None:
        async with contextlib.AsyncExitStack() as held:
            for _ in range(max_size):
                await held.enter_async_context(pool.borrow())

    # Some pools give connections back in the background (psycopg_pool's reset workers, and its
    # reconnects, with backoff, for connections discarded mid-query): a leak is a slot that never
    # comes back, so retry for a while before calling it one (10 s were too few on a busy machine).
    loop = asyncio.get_running_loop()
    deadline, last = loop.time() + 30, None
    while loop.time() < deadline:
        try:
            await asyncio.wait_for(all_at_once(), 10)
        except Exception as exc:  # noqa: BLE001 - the drill records what a borrower sees
            last = exc
            await asyncio.sleep(0.2)
            continue
        timed_out = f": {_names(storm.errors)}" if storm.errors else ""
        return Outcome("1,000 cancellations", True, f"no leak ({storm}{timed_out})")
    return Outcome("1,000 cancellations", False, f"leaks: after the storm ({storm}) {type(last).__name__}")


async def recycled(pool: PoolUnderTest, max_lifetime: float) -> Outcome:
    """A connection older than `max_lifetime` must be replaced, even one that is in constant use."""
    first = await _pid(pool)
    deadline = time.perf_counter() + max_lifetime * 3 + 2
    while time.perf_counter() < deadline:
        if await _pid(pool) != first:
            return Outcome("recycled", True, "replaced after its lifetime")
        await asyncio.sleep(0.05)
    return Outcome("recycled", False, f"still the same backend after {max_lifetime * 3 + 2:g} s of use")


async def server_restart(pool: PoolUnderTest, restart: Callable[[], Awaitable[Any]]) -> Outcome:
    """Restart the server under the pool; borrowers must succeed again within seconds."""
    await _attempts(pool, 1)
    await restart()
    failed: list[BaseException] = []
    started = time.perf_counter()
    while time.perf_counter() - started < 10:
        errors = await _attempts(pool, 1)
        if not errors:
            return Outcome("server restart", True,
                           f"recovers after {len(failed)} failed borrower(s) ({_names(failed) or 'none'})")
        failed += errors
        await asyncio.sleep(0.1)
    return Outcome("server restart", False, f"still failing after 10 s ({_names(failed)})")
