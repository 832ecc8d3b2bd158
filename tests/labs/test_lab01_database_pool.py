"""Checks for lab 01: DatabasePool.

In file order, from the most basic piece to the finest point: a pool opens, `acquire`
lends and takes back, the settings reach every connection, then `close()` and
concurrent start-up. Server connections are found by their backend pids (asked
through the pool's own connections) or by an `application_name` the check puts in
the DSN itself, never by trusting the learner to pass `application_name` on.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from pglab.backends import count_backends, terminate_backends
from pglab.testing import eventually, within

MODULE = "lab01_database_pool"
ASYNC_ACQUIRE = (
    "`acquire` must be a plain method returning asyncpg's acquire context, not `async def`: "
    "an `async def acquire` returns a coroutine, which `async with db.acquire()` cannot enter"
)
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}  # public despite the underscore


def tagged(dsn: str, app_name: str) -> str:
    """The DSN with `application_name` in its query: asyncpg sends unknown URI parameters as settings."""
    return f"{dsn}{'&' if '?' in dsn else '?'}application_name={app_name}"


def no_such_database(dsn: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/pglab_no_such_database"))


def require_plain_acquire(lab) -> None:
    if inspect.iscoroutinefunction(lab.DatabasePool.acquire):
        pytest.fail(ASYNC_ACQUIRE, pytrace=False)


async def start(lab, dsn: str, **options):
    """A DatabasePool initialised with `options`, or the check fails saying initialize() hung."""
    db = lab.DatabasePool()
    await within(db.initialize(dsn, **options), 15, "initialize()")
    return db


def terminate(db) -> None:
    if isinstance(getattr(db, "pool", None), asyncpg.Pool):
        db.pool.terminate()


@asynccontextmanager
async def borrowed(db):
    """`async with db.acquire()`, each step bounded so a hang is a message, not a stuck run."""
    context = db.acquire()
    conn = await within(context.__aenter__(), 5, "entering `async with db.acquire()`")
    try:
        yield conn
    finally:
        await within(context.__aexit__(None, None, None), 5, "leaving `async with db.acquire()`")


async def alive(dsn: str, pids: list[int]) -> list[int]:
    """Which of these backend pids the server still runs."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return [row["pid"] for row in await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids)]
    finally:
        await conn.close()


async def pool_pids(db, n: int) -> list[int]:
    """Backend pids of n connections borrowed at once through `db`, then given back."""
    conns = [await within(db.acquire(), 5, "await db.acquire()") for _ in range(n)]
    try:
        return [await conn.fetchval("SELECT pg_backend_pid()") for conn in conns]
    finally:
        for conn in conns:
            await within(db.release(conn), 5, "db.release(conn)")


def private_pool_attributes(module) -> list[str]:
    """`self.pool._queue`, `pool._holders`, ...: private attributes of anything but the learner's own `self`."""
    found = []
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and node.attr not in NAMEDTUPLE_API
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


@pytest.fixture
async def db(lab, dsn, app_name):
    """An initialised DatabasePool (min 1, max 3), terminated afterwards."""
    require_plain_acquire(lab)
    pool = await start(lab, dsn, min_size=1, max_size=3, application_name=app_name)
    yield pool
    terminate(pool)


async def test_initialize_opens_min_size_connections(lab, dsn, app_name):
    db = await start(lab, tagged(dsn, app_name), min_size=3, max_size=5, application_name=app_name)
    try:
        assert isinstance(db.pool, asyncpg.Pool), (
            f"initialize() should store the asyncpg pool in self.pool, found {db.pool!r}"
        )
        opened = await count_backends(dsn, app_name)
        assert opened == 3, (
            f"min_size=3 should open 3 server connections when initialize() returns, the server shows {opened}: "
            "pass min_size on to asyncpg.create_pool"
        )
    finally:
        terminate(db)


async def refuses_before_initialize(name: str, call: Callable[[], Awaitable[Any]], hint: str = "") -> None:
    """`call()` must raise RuntimeError saying the pool is not initialized."""
    try:
        await call()
    except NotImplementedError:
        raise
    except RuntimeError as exc:
        assert "initiali" in str(exc).lower(), f"the RuntimeError should say to call initialize() first: {exc}"
    except Exception as exc:  # noqa: BLE001 - the learner reads what was raised instead
        pytest.fail(f"{name} before initialize() raised {type(exc).__name__}: {exc}; raise a RuntimeError "
                    f"saying the pool is not initialized{hint}", pytrace=False)
    else:
        pytest.fail(f"{name} before initialize() should raise RuntimeError('... not initialized ...')",
                    pytrace=False)


async def test_acquire_is_a_plain_method_that_refuses_before_initialize(lab):
    require_plain_acquire(lab)
    db = lab.DatabasePool()
    assert db.pool is None, "DatabasePool().pool should be None until initialize()"

    async def acquire() -> None:
        db.acquire()

    await refuses_before_initialize("acquire()", acquire)
    await refuses_before_initialize("release()", lambda: within(db.release(None), 5, "release() before initialize()"),
                                    ", as acquire() does")


async def test_acquire_works_as_async_context_manager(db):
    async with borrowed(db) as conn:
        assert await conn.fetchval("SELECT 1") == 1
        stats = db.get_pool_stats()
        assert stats["in_use"] == 1, f"inside `async with db.acquire()` one connection is in use, stats say {stats}"
    stats = db.get_pool_stats()
    assert stats["in_use"] == 0, f"leaving `async with` gives the connection back (in_use 0), stats say {stats}"


async def test_acquire_is_awaitable_and_release_gives_the_same_connection_back(db):
    conn = await within(db.acquire(), 5, "await db.acquire()")
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    await within(db.release(conn), 5, "db.release(conn)")
    assert db.get_pool_stats()["in_use"] == 0, "after db.release(conn) no connection should be in use"
    async with borrowed(db) as again:
        reused = await again.fetchval("SELECT pg_backend_pid()")
    assert reused == pid, (
        f"the next borrower got backend {reused}, not the released {pid}: release() should give the "
        "connection back to the pool (pool.release), not close it"
    )


async def test_acquire_times_out_when_the_pool_stays_exhausted(db):
    held = [await within(db.acquire(), 5, "await db.acquire()") for _ in range(3)]  # all of max_size=3
    try:
        try:
            extra = await within(db.acquire(timeout=0.2), 5,
                                 "acquire(timeout=0.2) on an exhausted pool (is timeout passed to pool.acquire?)")
        except TimeoutError:
            pass
        else:
            held.append(extra)
            pytest.fail("a 4th acquire() succeeded although max_size=3: pass max_size on to create_pool",
                        pytrace=False)
    finally:
        for conn in held:
            await db.release(conn)


async def test_initialize_twice_raises(db, dsn):
    first = db.pool
    try:
        await within(db.initialize(dsn, min_size=1, max_size=1), 10, "a second initialize()")
    except RuntimeError:
        pass
    else:
        pytest.fail("a second initialize() should raise RuntimeError; it replaced the first pool, "
                    "whose connections nobody closes", pytrace=False)
    assert db.pool is first, "a refused second initialize() must keep the first pool"


async def test_every_connection_gets_the_session_settings(db, app_name):
    conns = [await within(db.acquire(), 5, "await db.acquire()") for _ in range(3)]  # all of max_size
    try:
        for conn in conns:
            row = await conn.fetchrow(
                "SELECT current_setting('TimeZone') AS tz, current_setting('search_path') AS path,"
                " current_setting('application_name') AS app, current_setting('statement_timeout') AS st"
            )
            assert row["tz"] == "UTC", f"time zone should be UTC, got {row['tz']}"
            assert row["path"] == "public", f"search_path should be public, got {row['path']}"
            assert row["app"] == app_name, (
                f"application_name should be the one passed to initialize() ({app_name!r}), got {row['app']!r}"
            )
            assert row["st"] == "30s", f"statement_timeout should be 30s, got {row['st']}"
    finally:
        for conn in conns:
            await db.release(conn)


async def test_session_settings_cost_no_extra_round_trip(db):
    async with borrowed(db) as conn:
        rows = await conn.fetch(
            "SELECT name, source FROM pg_settings WHERE name IN ('TimeZone', 'search_path', 'statement_timeout')"
        )
    sources = {row["name"]: row["source"] for row in rows}
    assert all(source == "client" for source in sources.values()), (
        f"settings should come from the connection's startup packet (source 'client'), got {sources}: "
        "pass them as server_settings= to create_pool instead of running SET in init="
    )


async def test_command_timeout_reaches_the_pool(lab, dsn):
    require_plain_acquire(lab)
    db = await start(lab, dsn, min_size=1, max_size=1, command_timeout=0.2)
    try:
        async with borrowed(db) as conn:
            try:
                await within(conn.execute("SELECT pg_sleep(3)"), 10, "a 3 s query")
            except TimeoutError:
                pass
            else:
                pytest.fail("with command_timeout=0.2 a 3 s query should raise TimeoutError, it ran to the end: "
                            "pass command_timeout on to create_pool", pytrace=False)
    finally:
        terminate(db)


async def test_max_queries_and_idle_lifetime_reach_the_pool(lab, dsn):
    require_plain_acquire(lab)
    db = await start(lab, dsn, min_size=0, max_size=1, max_queries=1)
    try:
        first, second = [(await pool_pids(db, 1))[0] for _ in range(2)]
        assert first != second, (
            "with max_queries=1 each connection is replaced after one query, yet backend "
            f"{first} served twice: pass max_queries on to create_pool"
        )
    finally:
        terminate(db)
    db = await start(lab, dsn, min_size=0, max_size=1, max_inactive_connection_lifetime=0.2)
    try:
        pids = await pool_pids(db, 1)

        async def closed() -> bool:
            return not await alive(dsn, pids)

        await eventually(closed, 5, "with max_inactive_connection_lifetime=0.2 an idle connection should be "
                                    "closed after 0.2 s, it stays open: pass it on to create_pool")
    finally:
        terminate(db)


async def test_get_pool_stats_reports_public_counts(lab, db, dsn):
    zeros = lab.DatabasePool().get_pool_stats()
    assert zeros == {"min_size": 0, "max_size": 0, "size": 0, "idle": 0, "in_use": 0}, (
        f"before initialize() every count should be 0, got {zeros}"
    )
    stats = db.get_pool_stats()
    assert set(stats) >= {"min_size", "max_size", "size", "idle", "in_use"}, f"missing keys in {stats}"
    assert all(type(v) is int for v in stats.values()), f"all stats should be ints: {stats}"
    assert (stats["min_size"], stats["max_size"]) == (1, 3), f"min/max should be 1 and 3, got {stats}"
    async with borrowed(db), borrowed(db):
        stats = db.get_pool_stats()
        assert stats["in_use"] == 2, f"two borrowed connections should show in_use == 2: {stats}"
        assert stats["size"] == stats["idle"] + stats["in_use"], f"size should be idle + in_use: {stats}"
    # Idle connections beside borrowed ones, and max_size above size: in_use is size - idle.
    wide = await start(lab, dsn, min_size=4, max_size=6)
    try:
        async with borrowed(wide), borrowed(wide), borrowed(wide):
            stats = {key: wide.get_pool_stats()[key] for key in ("size", "idle", "in_use")}
        assert stats == {"size": 4, "idle": 1, "in_use": 3}, (
            f"with 4 connections open (max_size 6) and 3 borrowed, expected size 4, idle 1, in_use 3, got {stats}: "
            "in_use is the open connections minus the idle ones, get_size() - get_idle_size()"
        )
    finally:
        terminate(wide)
    private = private_pool_attributes(lab)
    assert not private, (
        f"use asyncpg's public API (get_size(), get_idle_size(), ...), not private attributes: {private}"
    )


async def test_close_frees_server_connections_and_is_idempotent(db, dsn):
    pids = await pool_pids(db, 3)
    await within(db.close(), 10, "close()")
    assert db.pool is None, "close() should set self.pool back to None"
    await within(db.close(), 10, "a second close()")

    async def gone() -> bool:
        return not await alive(dsn, pids)

    await eventually(gone, 5, "close() left the pool's server connections open: await self.pool.close()")


async def test_close_waits_for_a_borrower_and_lets_it_release(db, dsn):
    conn = await within(db.acquire(), 5, "await db.acquire()")
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    closing = asyncio.create_task(db.close())
    try:
        await asyncio.sleep(0.2)
        if closing.done():
            pytest.fail(f"close() returned ({closing.exception()!r}) while a connection was still borrowed: "
                        "await pool.close(), which waits for borrowers; terminate() cuts them off", pytrace=False)
        assert await within(conn.fetchval("SELECT 1"), 5, "a query while close() waits") == 1
        try:
            await within(db.release(conn), 5, "db.release(conn) while close() waits")
        except RuntimeError as exc:
            pytest.fail(f"release() failed while close() was waiting for it ({exc}): keep self.pool set until "
                        "pool.close() returns, then set it to None", pytrace=False)
        await within(asyncio.shield(closing), 5, "close() after the last borrower released")

        async def gone() -> bool:
            return not await alive(dsn, [pid])

        await eventually(gone, 5, "close() returned but the pool's connection is still open on the server")
    finally:
        if not closing.done():
            closing.cancel()  # asyncpg's close() terminates the pool when cancelled
            await asyncio.wait([closing])


async def test_concurrent_initialize_calls_leave_one_pool(lab, dsn, app_name):
    require_plain_acquire(lab)
    db = lab.DatabasePool()
    url = tagged(dsn, app_name)
    try:
        results = await within(asyncio.gather(
            *(db.initialize(url, min_size=2, max_size=2, application_name=app_name) for _ in range(2)),
            return_exceptions=True), 15, "two concurrent initialize() calls")
        for result in results:
            if isinstance(result, NotImplementedError):
                raise result
        refused = [r for r in results if isinstance(r, RuntimeError)]
        assert len(refused) == 1 and results.count(None) == 1, (
            f"of two concurrent initialize() calls one should succeed and one raise RuntimeError, got {results}: "
            "set self.pool before the first await (create_pool(...) without await, then `await pool`), "
            "or the second call creates a second pool"
        )
        await within(db.close(), 10, "close()")
        left = await count_backends(dsn, app_name)
        assert left == 0, f"after close() {left} server connection(s) of a second, forgotten pool stay open"
    finally:
        terminate(db)
        await terminate_backends(dsn, app_name)


async def test_a_failed_initialize_can_be_retried(lab, dsn):
    require_plain_acquire(lab)
    db = lab.DatabasePool()
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await within(db.initialize(no_such_database(dsn), min_size=1, max_size=1), 15,
                     "initialize() with a database that does not exist")
    assert db.pool is None, (
        f"a failed initialize() left self.pool = {db.pool!r}: reset it to None so the application can retry"
    )
    await within(db.initialize(dsn, min_size=1, max_size=1), 15, "initialize() after a failed one")
    try:
        async with borrowed(db) as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        terminate(db)
