"""Checks for lab 05: AdvancedPoolManager."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from pglab.backends import terminate_backends
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
async def start(lab, load_solution, dsn, app_name):
    """`await start(min_size=.., max_size=.., **manager_kwargs)`: an initialised manager, shut down afterwards.

    Its health monitor is lab 04's reference ConnectionHealthMonitor (these checks grade lab 05 only).
    """
    monitor_class = load_solution("lab04_health_monitor").ConnectionHealthMonitor
    managers = []
    tasks_before = asyncio.all_tasks()

    async def start_manager(*, min_size: int = 1, max_size: int = 3, target: str = dsn, **kwargs: Any):
        manager = lab.AdvancedPoolManager(monitor_class, application_name=app_name, **kwargs)
        managers.append(manager)
        settings = StandInSettings(target, min_size=min_size, max_size=max_size)
        await within(manager.initialize_pool(settings), 15, "initialize_pool()")
        assert manager.pool is not None, "initialize_pool() should set self.pool"
        return manager

    yield start_manager
    for manager in managers:
        if manager.pool is not None:
            manager.pool.terminate()
    stray = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
    for task in stray:  # e.g. a monitor that was never stopped
        task.cancel()
    if stray:
        await asyncio.wait(stray, timeout=5)
    await terminate_backends(dsn, app_name)


@pytest.fixture
async def admin(dsn):
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


async def live(admin: asyncpg.Connection, pids: list[int]) -> list[int]:
    """Which of these server pids still have a backend."""
    return [row["pid"] for row in await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids)]


async def pool_pids(pool: asyncpg.Pool) -> list[int]:
    """The server pids of every connection of the pool (borrows them all at once, then gives them back)."""
    conns = [await within(pool.acquire(), 5, "acquire()") for _ in range(pool.get_max_size())]
    try:
        return [conn.get_server_pid() for conn in conns]
    finally:
        for conn in conns:
            await pool.release(conn)


@contextlib.asynccontextmanager
async def silent_server():
    """The port of a TCP server that accepts connections and never answers (a hung database)."""
    clients: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clients.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in clients:
            writer.close()
        server.close()


async def attempts_made(admin: asyncpg.Connection, seq: str) -> int:
    """How many times the query calling nextval(seq) ran: a sequence is not rolled back."""
    row = await admin.fetchrow(f"SELECT last_value, is_called FROM {seq}")
    return row["last_value"] if row["is_called"] else 0


def test_only_connection_level_failures_are_retryable(lab):
    retryable = [asyncpg.ConnectionDoesNotExistError("closed"), asyncpg.AdminShutdownError("terminated"),
                 asyncpg.CannotConnectNowError("starting up"), ConnectionRefusedError("refused")]
    final = [asyncpg.UniqueViolationError("duplicate"), asyncpg.PostgresSyntaxError("syntax"),
             TimeoutError("timed out"), ValueError("bad argument")]  # asyncio.TimeoutError is TimeoutError
    for exc in retryable:
        assert lab.is_retryable(exc), f"{type(exc).__name__} is a connection-level failure: retry it"
    for exc in final:
        assert not lab.is_retryable(exc), (
            f"{type(exc).__name__}({exc}) would fail again the same way: never retry it"
            + (" (TimeoutError is an OSError subclass: exclude it explicitly)" if isinstance(exc, OSError) else "")
        )


async def test_session_settings_and_the_jsonb_codec_are_on_every_connection_even_after_reuse(lab, start):
    manager = await start(min_size=3, max_size=3, health_check_interval=60)
    for round_ in ("first borrow", "after release and reuse"):
        conns = [await within(manager.pool.acquire(), 5, "acquire()") for _ in range(3)]
        try:
            for conn in conns:
                work_mem = await conn.fetchval("SELECT current_setting('work_mem')")
                assert work_mem == lab.SESSION_SETTINGS["work_mem"], (
                    f"{round_}: work_mem is {work_mem}, expected {lab.SESSION_SETTINGS['work_mem']}. Pass "
                    "SESSION_SETTINGS in server_settings: they become the session defaults, which the pool's "
                    "RESET ALL on release returns to (a SET in the init hook is undone by it)"
                )
                doc = await conn.fetchval("""SELECT '{"a": [1, 2]}'::jsonb""")
                assert doc == {"a": [1, 2]}, (
                    f"{round_}: a jsonb value came back as {doc!r}, expected the dict {{'a': [1, 2]}}: the init hook "
                    "should set a jsonb type codec (conn.set_type_codec) on every new connection"
                )
                try:
                    echoed = await conn.fetchval("SELECT $1::jsonb", {"b": [3]})
                except (TypeError, asyncpg.DataError) as exc:
                    pytest.fail(f"{round_}: a dict passed as a jsonb parameter failed ({exc!r}): the jsonb codec "
                                "needs an encoder (json.dumps) as well as a decoder (json.loads)")
                assert echoed == {"b": [3]}, f"{round_}: a dict sent as jsonb came back as {echoed!r}"
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
            "the next borrower got a new server connection: a reset hook failed (asyncpg then closes "
            "the connection); the pool's own reset cleans the session and keeps the connection"
        )
        row = await conn.fetchrow(
            "SELECT current_setting('statement_timeout') AS st, current_setting('work_mem') AS wm")
    assert row["st"] != "1234ms", "a SET made by the previous borrower leaked to the next one (reset on release)"
    expected = lab.SESSION_SETTINGS["work_mem"]
    assert row["wm"] == expected, f"after the reset, work_mem should be the session default {expected}, got {row['wm']}"


async def test_server_warnings_are_counted_on_every_borrow(start):
    manager = await start(min_size=1, max_size=1, health_check_interval=60)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two borrows of the same connection: the listener must be there both times
            async with manager.acquire() as conn:
                await conn.execute("DO $$ BEGIN RAISE WARNING 'pglab check warning'; END $$")
                for _ in range(2):  # more NOTICEs than WARNINGs: counting the wrong ones shows
                    await conn.execute("DO $$ BEGIN RAISE NOTICE 'pglab check notice'; END $$")
    leaked = [str(w.message) for w in caught if "listener" in str(w.message)]
    assert not leaked, f"asyncpg warns about a log listener left on a released connection: {leaked[0]}"

    async def two_warnings() -> bool:
        return manager.error_counter == 2

    await eventually(two_warnings, 2, f"error_counter should count 2 WARNING messages and no NOTICE, "
                     f"it is {manager.error_counter} (add the log listener in acquire(), remove it before release)")


async def test_get_pool_metrics_is_awaitable_and_reports_pool_and_health(start):
    manager = await start(min_size=2, max_size=4, health_check_interval=0.1)

    async def healthy() -> bool:
        return (await manager.get_pool_metrics())["health_stats"].get("status") == "healthy"

    await eventually(healthy, 5, "the health monitor never reported status 'healthy' against the live server "
                     "(does initialize_pool() start the monitor, and get_pool_metrics() report its status?)")
    first_check = (await manager.get_pool_metrics())["health_stats"]["last_check"]

    async def checked_again() -> bool:
        return (await manager.get_pool_metrics())["health_stats"]["last_check"] != first_check

    await eventually(checked_again, 5, "with health_check_interval=0.1 the monitor did not check again within 5 s: "
                     "pass check_interval=self.health_check_interval and timeout=self.health_check_timeout "
                     "to the monitor factory")
    async with manager.acquire() as _conn:
        metrics = await within(manager.get_pool_metrics(), 5, "get_pool_metrics()")
    assert set(metrics) >= {"pool_stats", "health_stats", "connection_counter", "error_counter", "error_rate"}, (
        f"missing keys in {sorted(metrics)}"
    )
    stats = metrics["pool_stats"]
    assert (stats["min_size"], stats["max_size"]) == (2, 4), f"pool_stats should show min 2 / max 4: {stats}"
    assert stats["in_use"] == 1 and stats["size"] == stats["idle"] + stats["in_use"], (
        f"with one connection borrowed, in_use should be 1 and size = idle + in_use: {stats}"
    )
    assert metrics["connection_counter"] >= 2 and metrics["error_counter"] == 0, metrics
    assert metrics["health_stats"]["last_check"] is not None, "health_stats should record when it last checked"


async def test_metrics_count_borrows_and_errors_and_read_zero_without_a_pool(lab, load_solution, start):
    monitor_class = load_solution("lab04_health_monitor").ConnectionHealthMonitor
    unstarted = lab.AdvancedPoolManager(monitor_class)
    metrics = await within(unstarted.get_pool_metrics(), 5, "get_pool_metrics() before initialize_pool()")
    zeros = dict.fromkeys(("min_size", "max_size", "size", "idle", "in_use"), 0)
    assert metrics["pool_stats"] == zeros and metrics["error_rate"] == 0.0, (
        f"before initialize_pool() the stats should all be 0 and error_rate 0.0 (lab 07 samples it): {metrics}"
    )
    manager = await start(min_size=3, max_size=4, health_check_interval=60)

    async def first_check_done() -> bool:
        return (await manager.get_pool_metrics())["health_stats"].get("last_check") is not None

    await eventually(first_check_done, 5, "the health monitor's first check never ran")
    borrows, errors = manager.borrow_counter, manager.error_counter
    async with manager.acquire() as conn, manager.acquire() as _other:
        stats = manager.get_pool_stats()
        await conn.execute("DO $$ BEGIN RAISE WARNING 'pglab check warning'; END $$")
    async with manager.acquire() as _conn:
        pass
    assert (stats["size"], stats["idle"], stats["in_use"]) == (3, 1, 2), (
        f"3 connections open, 2 borrowed: expected size 3, idle 1, in_use 2 (size - idle), got {stats}"
    )
    assert manager.borrow_counter - borrows == 3, (
        f"3 borrows through acquire() raised borrow_counter by {manager.borrow_counter - borrows}: count 1 per borrow"
    )

    async def warning_counted() -> bool:
        return manager.error_counter == errors + 1

    await eventually(warning_counted, 2, "the WARNING was not counted in error_counter")
    rate = (await manager.get_pool_metrics())["error_rate"]
    expected = (errors + 1) / (borrows + 3)
    assert rate == pytest.approx(expected), (
        f"error_rate should be error_counter / borrow_counter = {errors + 1}/{borrows + 3} = {expected:.3f}, got {rate}"
    )


async def test_execute_with_retry_backs_off_exponentially_with_jitter(lab, start, monkeypatch):
    manager = await start(health_check_interval=60)
    real_sleep, delays = asyncio.sleep, []

    def recorded_sleep(delay: float, result: Any = None) -> Any:
        """asyncio.sleep that records, and skips, the sleeps the lab module awaits."""
        if sys._getframe(1).f_globals.get("__name__") != lab.__name__:
            return real_sleep(delay, result)

        async def recorded() -> Any:  # runs only when awaited: a sleep never awaited never waits
            delays.append(delay)
            return await real_sleep(0, result)

        return recorded()

    monkeypatch.setattr(asyncio, "sleep", recorded_sleep)
    with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, OSError)):
        await within(manager.execute_with_retry("SELECT pg_terminate_backend(pg_backend_pid())", max_retries=4,
                                                base_delay=0.1),
                     15, "execute_with_retry() of a query that always loses its connection")
    monkeypatch.undo()
    assert len(delays) == 4, (
        f"max_retries=4 should sleep 4 times between 5 attempts, slept {len(delays)}: {delays} (is the sleep awaited?)"
    )
    for attempt, delay in enumerate(delays):
        low = 0.1 * 2**attempt
        assert low <= delay <= 2 * low, (
            f"before retry {attempt + 1} it slept {delay:.3f} s; expected base_delay * 2**{attempt} = {low:g} s "
            f"plus a random jitter of at most as much again (between {low:g} and {2 * low:g} s): {delays}"
        )
    assert any(delay != 0.1 * 2**attempt for attempt, delay in enumerate(delays)), (
        f"the sleeps {delays} carry no jitter: clients that failed together would all retry at the same instant"
    )


async def test_the_health_check_gives_up_on_a_server_that_does_not_answer(start):
    async with silent_server() as port:
        manager = await start(min_size=0, max_size=1, target=f"postgresql://nobody:secret@127.0.0.1:{port}/none",
                              health_check_interval=60, health_check_timeout=0.3)
        result = await within(manager.check_health(), 3, "check_health() (health_check_timeout=0.3) against a "
                              "server that accepts connections and never answers")
        assert result["status"] == "unhealthy" and result["error"], (
            f"a server that never answers should make the check 'unhealthy' with the reason, got {result}"
        )
        await within(manager.graceful_shutdown(timeout=2), 5, "graceful_shutdown() of a manager whose server hangs")


async def test_execute_with_retry_survives_a_backend_killed_mid_query(start, admin, table_name):
    manager = await start(health_check_interval=60)
    seq = f"{table_name}_seq"
    await admin.execute(f"CREATE SEQUENCE {seq}")
    # The first attempt sleeps until it is killed; a second one returns at once.
    query = f"SELECT n AS attempt, pg_sleep(CASE WHEN n = 1 THEN 30 ELSE 0 END) FROM nextval('{seq}') AS n"
    try:
        async def kill_the_running_query() -> bool:  # pg_terminate_backend on the backend inside pg_sleep
            return await admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE wait_event = 'PgSleep' AND query = $1", query) > 0

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


async def test_execute_with_retry_gives_up_after_max_retries(start, admin, table_name):
    manager = await start(health_check_interval=60)
    seq = f"{table_name}_seq"
    await admin.execute(f"CREATE SEQUENCE {seq}")
    try:  # every attempt loses its connection: the backend terminates itself
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, OSError)):
            await within(manager.execute_with_retry(
                f"SELECT nextval('{seq}'), pg_terminate_backend(pg_backend_pid())", max_retries=2, base_delay=0.01),
                15, "execute_with_retry() of a query that always loses its connection")
        attempts = await attempts_made(admin, seq)
        assert attempts == 3, (
            f"max_retries=2 should make 3 attempts (the first + 2 retries), then raise the last error; made {attempts}"
        )
        assert manager.error_counter == 3, f"each failed attempt counts in error_counter: {manager.error_counter}"
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
        metrics = await manager.get_pool_metrics()
        assert metrics["error_counter"] >= 1 and metrics["error_rate"] > 0, (
            f"a failed query should count in error_counter and error_rate: {metrics}"
        )
    finally:
        await admin.execute(f"DROP TABLE IF EXISTS {table_name}; DROP SEQUENCE IF EXISTS {seq}")


async def test_graceful_shutdown_lets_in_flight_work_finish_then_says_shut_down(start, admin):
    manager = await start(min_size=2, max_size=2, health_check_interval=0.1)
    pids = await pool_pids(manager.pool)
    query = asyncio.ensure_future(manager.pool.fetchval("SELECT 7 FROM pg_sleep(1)"))

    async def in_flight() -> bool:  # on the server: on a busy machine 0.1 s may not be enough to get there
        return await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[]) "
                                    "AND wait_event = 'PgSleep'", pids) > 0

    await eventually(in_flight, 5, "the pg_sleep query never started")
    await within(manager.graceful_shutdown(timeout=10), 12, "graceful_shutdown(timeout=10)")
    assert query.done() and not query.cancelled() and query.exception() is None and query.result() == 7, (
        "a query in flight when graceful_shutdown() began should finish normally within the timeout"
    )
    assert manager.pool is None, "graceful_shutdown() should set pool back to None"
    try:
        await within(manager.graceful_shutdown(timeout=1), 5, "a second graceful_shutdown()")
    except Exception as exc:  # noqa: BLE001 - any error here is the learner's
        pytest.fail(f"a second graceful_shutdown() raised {exc!r}: with no pool left there is nothing to close")
    assert await live(admin, pids) == [], "the pool's server connections are still open after shutdown"
    with pytest.raises(RuntimeError) as raised:
        await within(manager.execute_with_retry("SELECT 1", base_delay=0.01), 5, "execute_with_retry() after shutdown")
    message = str(raised.value)
    assert "shut down" in message and "not initialized" not in message, (
        f"after graceful_shutdown() a query should fail saying the manager was shut down, got {message!r}"
    )


async def test_graceful_shutdown_ends_a_stuck_query_and_its_backend(start, admin):
    tasks_before = asyncio.all_tasks()
    manager = await start(health_check_interval=0.1)
    conn = await within(manager.pool.acquire(), 5, "acquire()")
    pid = conn.get_server_pid()
    stuck = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(60)"))
    try:
        async def sleeping() -> bool:
            return await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 "
                                        "AND wait_event = 'PgSleep'", pid) > 0

        await eventually(sleeping, 5, "the pg_sleep query never started")
        # timeout + 1 s is the promise; the extra seconds only absorb a busy machine.
        await within(manager.graceful_shutdown(timeout=1.0), 1.0 + 4, "graceful_shutdown(timeout=1) with a stuck query")
        left = [t for t in asyncio.all_tasks() - tasks_before if not t.done() and t is not stuck
                and t is not asyncio.current_task()]
        assert not left, f"tasks still pending after graceful_shutdown() (the health monitor?): {left}"

        async def no_backend() -> bool:
            return await live(admin, [pid]) == []

        await eventually(no_backend, 3, "the stuck query's backend is still on the server after graceful_shutdown(): "
                         "pool.terminate() only closes the socket; end the backend with pg_terminate_backend")
    finally:
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
