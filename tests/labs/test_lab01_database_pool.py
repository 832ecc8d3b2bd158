"""Checks for lab 01: DatabasePool."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from pglab.backends import count_backends
from pglab.testing import eventually, within

MODULE = "lab01_database_pool"



class await_bounded:  # noqa: N801 - reads like the context manager it wraps
    """`async with await_bounded(db.acquire())`: entering fails the check after 5 s instead of hanging."""

    def __init__(self, acquire_context):
        self.context = acquire_context

    async def __aenter__(self):
        return await within(self.context.__aenter__(), 5, "entering `async with db.acquire()`")

    async def __aexit__(self, *exc_info):
        return await within(self.context.__aexit__(*exc_info), 5, "leaving `async with db.acquire()`")


@pytest.fixture
async def db(lab, dsn, app_name):
    """An initialised DatabasePool (min 1, max 3), closed afterwards."""
    pool = lab.DatabasePool()
    await within(pool.initialize(dsn, min_size=1, max_size=3, application_name=app_name), 15, "initialize()")
    yield pool
    if pool.pool is not None:
        pool.pool.terminate()


def test_acquire_before_initialize_raises_a_clear_runtime_error(lab):
    db = lab.DatabasePool()
    assert db.pool is None, "DatabasePool().pool should be None until initialize()"
    with pytest.raises(RuntimeError, match="(?i)not initiali[sz]ed"):
        db.acquire()


async def test_initialize_opens_min_size_connections(lab, dsn, app_name):
    db = lab.DatabasePool()
    await within(db.initialize(dsn, min_size=3, max_size=5, application_name=app_name), 15, "initialize()")
    try:
        assert db.pool is not None, "initialize() should set self.pool"
        assert await count_backends(dsn, app_name) == 3, "min_size=3 should open 3 server connections at start"
    finally:
        await db.pool.close()


async def test_initialize_twice_raises(db, dsn):
    with pytest.raises(RuntimeError):
        await within(db.initialize(dsn), 10, "second initialize()")


async def test_every_connection_gets_the_session_settings(db, app_name):
    conns = [await within(db.acquire(), 5, "acquire()") for _ in range(3)]  # all of max_size
    try:
        for conn in conns:
            row = await conn.fetchrow(
                "SELECT current_setting('TimeZone') AS tz, current_setting('search_path') AS path,"
                " current_setting('application_name') AS app, current_setting('statement_timeout') AS st"
            )
            assert row["tz"] == "UTC", f"time zone should be UTC, got {row['tz']}"
            assert row["path"] == "public", f"search_path should be public, got {row['path']}"
            assert row["app"] == app_name, "application_name should be the one passed to initialize()"
            assert row["st"] == "30s", f"statement_timeout should be 30s, got {row['st']}"
    finally:
        for conn in conns:
            await db.release(conn)


async def test_session_settings_cost_no_extra_round_trip(db):
    async with await_bounded(db.acquire()) as conn:
        rows = await conn.fetch(
            "SELECT name, source FROM pg_settings WHERE name IN ('TimeZone', 'search_path', 'statement_timeout')"
        )
    sources = {row["name"]: row["source"] for row in rows}
    assert all(source == "client" for source in sources.values()), (
        f"settings should come from the connection's startup packet (source 'client'), got {sources}: "
        "pass them as server_settings= to create_pool instead of running SET in init="
    )


async def test_acquire_works_as_async_context_manager(db):
    async with await_bounded(db.acquire()) as conn:
        assert await conn.fetchval("SELECT 1") == 1
        assert db.get_pool_stats()["in_use"] == 1
    assert db.get_pool_stats()["in_use"] == 0, "leaving `async with` should give the connection back"


async def test_acquire_is_awaitable_and_release_returns_it(db):
    assert not inspect.iscoroutinefunction(type(db).acquire), (
        "acquire must be a plain method returning asyncpg's acquire context; an `async def acquire` "
        "returns a coroutine, which cannot be used with `async with`"
    )
    conn = await within(db.acquire(), 5, "await db.acquire()")
    assert await conn.fetchval("SELECT 2") == 2
    await db.release(conn)
    assert db.get_pool_stats()["in_use"] == 0


async def test_acquire_times_out_when_the_pool_stays_exhausted(db):
    held = [await within(db.acquire(), 5, "acquire()") for _ in range(3)]
    try:
        with pytest.raises(asyncio.TimeoutError):
            await within(db.acquire(timeout=0.2), 5, "acquire(timeout=0.2) on an exhausted pool")
    finally:
        for conn in held:
            await db.release(conn)


async def test_get_pool_stats_reports_public_counts(db):
    stats = db.get_pool_stats()
    assert set(stats) >= {"min_size", "max_size", "size", "idle", "in_use"}, f"missing keys in {stats}"
    assert all(type(v) is int for v in stats.values()), f"all stats should be ints: {stats}"
    assert (stats["min_size"], stats["max_size"]) == (1, 3)
    async with await_bounded(db.acquire()) as _a, await_bounded(db.acquire()) as _b:
        stats = db.get_pool_stats()
        assert stats["in_use"] == 2, f"two borrowed connections should show in_use == 2: {stats}"
        assert stats["size"] == stats["idle"] + stats["in_use"]
    source = inspect.getsource(type(db).get_pool_stats)
    assert "._" not in source, "get_pool_stats should use asyncpg's public getters, not private attributes"


async def test_close_is_idempotent_and_frees_server_connections(db, dsn, app_name):
    await within(db.close(), 10, "close()")
    assert db.pool is None, "close() should set pool back to None"
    await within(db.close(), 10, "a second close()")

    async def gone() -> bool:
        return await count_backends(dsn, app_name) == 0

    await eventually(gone, 3, "close() left server connections open")
