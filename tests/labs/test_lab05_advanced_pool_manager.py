"""Checks for lab 05: AdvancedPoolManager."""

from __future__ import annotations

import asyncio
import warnings
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from pglab.backends import count_backends, terminate_backends
from pglab.testing import eventually, within

MODULE = "lab05_advanced_pool_manager"


@dataclass
class StandInSettings:
    """The two methods of lab 03's DatabaseSettings the manager uses (keeps these checks independent of lab 03)."""

    dsn: str
    min_size: int = 1
    max_size: int = 3

    def get_dsn(self) -> str:
        return self.dsn

    def get_pool_kwargs(self) -> dict[str, Any]:
        return {"min_size": self.min_size, "max_size": self.max_size, "command_timeout": 30.0}



@pytest.fixture
async def start(lab, dsn, app_name):
    """`await start(min_size=.., max_size=.., **manager_kwargs)`: an initialised manager, shut down afterwards."""
    managers = []

    async def start_manager(*, min_size: int = 1, max_size: int = 3, **kwargs: Any):
        manager = lab.AdvancedPoolManager(application_name=app_name, **kwargs)
        managers.append(manager)
        settings = StandInSettings(dsn, min_size=min_size, max_size=max_size)
        await within(manager.initialize_pool(settings), 15, "initialize_pool()")
        assert manager.pool is not None, "initialize_pool() should set self.pool"
        return manager

    yield start_manager
    for manager in managers:
        if manager.pool is not None:
            manager.pool.terminate()
        if (monitor := getattr(manager, "_monitor", None)) is not None:  # the check's own cleanup
            monitor.cancel()
    await terminate_backends(dsn, app_name)


@pytest.fixture
async def admin(dsn):
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


async def attempts_made(admin: asyncpg.Connection, seq: str) -> int:
    """How many times the query calling nextval(seq) ran: a sequence is not rolled back."""
    row = await admin.fetchrow(f"SELECT last_value, is_called FROM {seq}")
    return row["last_value"] if row["is_called"] else 0


async def test_init_hook_settings_are_on_every_connection_even_after_reuse(lab, start):
    manager = await start(min_size=3, max_size=3, health_check_interval=60)
    for round_ in ("first borrow", "after release and reuse"):
        conns = [await within(manager.pool.acquire(), 5, "acquire()") for _ in range(3)]
        try:
            for conn in conns:
                work_mem = await conn.fetchval("SELECT current_setting('work_mem')")
                assert work_mem == lab.SESSION_SETTINGS["work_mem"], (
                    f"{round_}: work_mem is {work_mem}, expected {lab.SESSION_SETTINGS['work_mem']} from the init "
                    "hook. After a release, the pool's RESET ALL undoes a SET made in init: re-apply it in reset"
                )
        finally:
            for conn in conns:
                await manager.pool.release(conn)
    assert manager.connection_counter == 3, (
        f"connection_counter is {manager.connection_counter}; 3 physical connections were opened "
        "(count them in the init hook, which runs once per new connection, not per acquire)"
    )
    with pytest.raises(RuntimeError):
        await within(manager.initialize_pool(StandInSettings("unused")), 5, "a second initialize_pool()")


async def test_a_set_by_one_borrower_is_gone_for_the_next(lab, start):
    manager = await start(min_size=1, max_size=1, health_check_interval=60)
    async with manager.pool.acquire() as conn:
        first_pid = conn.get_server_pid()
        await conn.execute("SET statement_timeout = '1234ms'; SET work_mem = '1MB'")
    async with manager.pool.acquire() as conn:
        assert conn.get_server_pid() == first_pid, (
            "the next borrower got a new server connection: the reset hook failed (asyncpg then closes "
            "the connection); it should clean the session and keep the connection"
        )
        row = await conn.fetchrow("SELECT current_setting('statement_timeout') AS st, current_setting('work_mem') AS wm")
    assert row["st"] != "1234ms", "a SET made by the previous borrower leaked to the next one (reset on release)"
    expected = lab.SESSION_SETTINGS["work_mem"]
    assert row["wm"] == expected, f"after the reset, work_mem should be the init hook's {expected} again, got {row['wm']}"


async def test_server_warnings_are_counted_on_every_borrow(start):
    manager = await start(min_size=1, max_size=1, health_check_interval=60)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two borrows of the same connection: the listener must be there both times
            async with manager.acquire() as conn:
                await conn.execute("DO $$ BEGIN RAISE WARNING 'pglab check warning'; END $$")
                await conn.execute("DO $$ BEGIN RAISE NOTICE 'pglab check notice'; END $$")
    leaked = [str(w.message) for w in caught if "listener" in str(w.message)]
    assert not leaked, f"asyncpg warns about a log listener left on a released connection: {leaked[0]}"

    async def two_warnings() -> bool:
        return manager.error_counter == 2

    await eventually(two_warnings, 2, f"error_counter should count 2 WARNING messages and no NOTICE, "
                     f"it is {manager.error_counter} (add the log listener in acquire(), remove it before release)")


def test_only_connection_level_failures_are_retryable(lab):
    retryable = [asyncpg.ConnectionDoesNotExistError("closed"), asyncpg.AdminShutdownError("terminated"),
                 asyncpg.CannotConnectNowError("starting up"), ConnectionRefusedError("refused")]
    final = [asyncpg.UniqueViolationError("duplicate"), asyncpg.PostgresSyntaxError("syntax"),
             asyncio.TimeoutError(), ValueError("bad argument")]
    for exc in retryable:
        assert lab.is_retryable(exc), f"{type(exc).__name__} is a connection-level failure: retry it"
    for exc in final:
        assert not lab.is_retryable(exc), f"{type(exc).__name__} would fail again the same way: never retry it"


async def test_execute_with_retry_survives_a_backend_killed_mid_query(start, admin, app_name, table_name):
    manager = await start(health_check_interval=60)
    seq = f"{table_name}_seq"
    await admin.execute(f"CREATE SEQUENCE {seq}")
    # The first attempt sleeps until it is killed; a second one returns at once.
    query = f"SELECT n AS attempt, pg_sleep(CASE WHEN n = 1 THEN 30 ELSE 0 END) FROM nextval('{seq}') AS n"
    try:
        async def kill_the_running_query() -> bool:  # pg_terminate_backend on the backend inside pg_sleep
            return await admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1 AND wait_event = 'PgSleep' AND query = $2", app_name, query) > 0

        killer = asyncio.ensure_future(eventually(kill_the_running_query, 5, "the query never started"))
        rows = await within(manager.execute_with_retry(query, base_delay=0.02), 15,
                            "execute_with_retry() with its backend terminated mid-query")
        await within(killer, 5, "the killer task")
        assert rows[0]["attempt"] == 2, (
            f"the successful attempt was #{rows[0]['attempt']}; expected the first to be killed and a second "
            "one to succeed on a fresh connection"
        )
    finally:
        await admin.execute(f"DROP SEQUENCE IF EXISTS {seq}")


async def test_a_unique_violation_is_raised_at_once_without_retry(start, admin, table_name):
    manager = await start(health_check_interval=60)
    seq = f"{table_name}_seq"
    await admin.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY); INSERT INTO {table_name} VALUES (1);"
                        f" CREATE SEQUENCE {seq}")
    try:
        with pytest.raises(asyncpg.UniqueViolationError):
            await within(
                manager.execute_with_retry(f"INSERT INTO {table_name} SELECT $1 WHERE nextval('{seq}') > 0", 1,
                                           base_delay=0.5),
                15, "execute_with_retry() of a duplicate key",
            )
        attempts = await attempts_made(admin, seq)
        assert attempts == 1, f"a unique violation was tried {attempts} times; a SQL error must not be retried"
        metrics = manager.get_pool_metrics()
        assert metrics["error_counter"] >= 1 and metrics["error_rate"] > 0, (
            f"a failed query should count in error_counter and error_rate: {metrics}"
        )
    finally:
        await admin.execute(f"DROP TABLE IF EXISTS {table_name}; DROP SEQUENCE IF EXISTS {seq}")


async def test_get_pool_metrics_reports_pool_and_health(start):
    manager = await start(min_size=2, max_size=4, health_check_interval=0.1)

    async def healthy() -> bool:
        return manager.get_pool_metrics()["health_stats"].get("status") == "healthy"

    await eventually(healthy, 5, "the health monitor never reported status 'healthy' against the live server")
    metrics = manager.get_pool_metrics()
    assert set(metrics) >= {"pool_stats", "health_stats", "connection_counter", "error_counter", "error_rate"}, (
        f"missing keys in {sorted(metrics)}"
    )
    stats = metrics["pool_stats"]
    assert (stats["min_size"], stats["max_size"]) == (2, 4), f"pool_stats should show min 2 / max 4: {stats}"
    assert stats["size"] == stats["idle"] + stats["in_use"], f"size should be idle + in_use: {stats}"
    assert metrics["connection_counter"] >= 2 and metrics["error_counter"] == 0, metrics
    assert metrics["health_stats"]["last_check"] is not None, "health_stats should record when it last checked"


async def test_graceful_shutdown_lets_in_flight_work_finish(start, dsn, app_name):
    manager = await start(health_check_interval=0.1)
    query = asyncio.ensure_future(manager.pool.fetchval("SELECT 7 FROM pg_sleep(0.5)"))
    await asyncio.sleep(0.1)
    await within(manager.graceful_shutdown(timeout=10), 12, "graceful_shutdown(timeout=10)")
    assert query.done() and not query.cancelled() and query.exception() is None and query.result() == 7, (
        "a query in flight when graceful_shutdown() began should finish normally within the timeout"
    )
    assert manager.pool is None, "graceful_shutdown() should set pool back to None"
    assert await count_backends(dsn, app_name) == 0, "the pool's server connections are still open after shutdown"


async def test_graceful_shutdown_ends_a_stuck_query_and_its_backend(start, dsn, app_name):
    tasks_before = asyncio.all_tasks()
    manager = await start(health_check_interval=0.1)
    stuck = asyncio.ensure_future(manager.pool.fetchval("SELECT pg_sleep(60)"))
    try:
        async def sleeping() -> bool:
            return await count_backends(dsn, app_name, state="active") > 0

        await eventually(sleeping, 5, "the pg_sleep query never started")
        # timeout + 1 s is the promise; the extra seconds only absorb a busy machine.
        await within(manager.graceful_shutdown(timeout=1.0), 1.0 + 4, "graceful_shutdown(timeout=1) with a stuck query")
        left = [t for t in asyncio.all_tasks() - tasks_before if not t.done() and t is not stuck
                and t is not asyncio.current_task()]
        assert not left, f"tasks still pending after graceful_shutdown() (the health monitor?): {left}"

        async def no_backends() -> bool:
            return await count_backends(dsn, app_name) == 0

        await eventually(no_backends, 3, "a backend of the pool is still on the server after graceful_shutdown(): "
                         "pool.terminate() only closes the socket; end the stuck backend with pg_terminate_backend")
    finally:
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
