"""Checks for lab 00: first contact with the server."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from pglab.backends import count_backends
from pglab.testing import eventually, within

MODULE = "lab00_first_contact"



def with_app_name(dsn: str, app_name: str) -> str:
    # asyncpg passes unknown URI parameters to the server as settings.
    return f"{dsn}?application_name={app_name}"


async def test_server_info_reports_the_live_server(lab, dsn):
    info = await within(lab.server_info(dsn), 10, "server_info()")
    assert isinstance(info, dict), f"server_info() should return a dict, got {type(info).__name__}"
    missing = {"version", "user", "database", "pid"} - set(info)
    assert not missing, f"server_info() is missing the keys {sorted(missing)}"
    conn = await asyncpg.connect(dsn)
    try:
        assert info["version"] == await conn.fetchval("SHOW server_version"), "version should be the server_version setting"
        assert info["user"] == await conn.fetchval("SELECT current_user")
        assert info["database"] == await conn.fetchval("SELECT current_database()")
    finally:
        await conn.close()


async def test_server_info_closes_its_connection(lab, dsn, app_name):
    await within(lab.server_info(with_app_name(dsn, app_name)), 10, "server_info()")

    async def gone() -> bool:
        return await count_backends(dsn, app_name) == 0

    await eventually(gone, 3, "server_info() left its connection open: close it in a `finally:` block")


async def test_connect_query_close_returns_one_and_leaves_nothing_open(lab, dsn, app_name):
    assert await within(lab.connect_query_close(with_app_name(dsn, app_name)), 10, "connect_query_close()") == 1

    async def gone() -> bool:
        return await count_backends(dsn, app_name) == 0

    await eventually(gone, 3, "connect_query_close() left its connection open")


async def test_pooled_query_borrows_and_returns(lab, dsn):
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        for _ in range(3):  # with max_size=1, a connection not given back would hang the 2nd call
            assert await within(lab.pooled_query(pool), 5, "pooled_query()") == 1
        assert pool.get_idle_size() == 1, "pooled_query() must give the connection back to the pool"
    finally:
        pool.terminate()  # close() would wait forever for a connection never given back


async def test_time_operation_measures_each_call_in_sequence(lab):
    running = 0
    peak = 0
    calls = 0

    async def operation() -> None:
        nonlocal running, peak, calls
        running += 1
        calls += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    durations = await within(lab.time_operation(operation, 5), 10, "time_operation()")
    assert calls == 5, f"operation() should be awaited 5 times, was {calls}"
    assert peak == 1, "time_operation() should await the calls one after another, not concurrently"
    assert len(durations) == 5, f"expected 5 durations, got {len(durations)}"
    assert all(isinstance(d, float) for d in durations), "durations should be floats (seconds)"
    assert all(0.005 <= d < 5 for d in durations), f"each duration should be the call's time in seconds: {durations}"
