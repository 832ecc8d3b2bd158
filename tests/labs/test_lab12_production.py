"""Checks for lab 12: asyncpg through PgBouncer, and PoolMetricsExporter.

The PgBouncer checks need a `pgbouncer` binary (or PGLAB_PGBOUNCER_URL); without
one they are skipped with the reason, never silently. The check with PgBouncer's
prepared statements on needs PgBouncer >= 1.21 (or PGLAB_PGBOUNCER_PREPARED_URL);
Debian 12 ships 1.18, so there it is skipped, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
import warnings
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pglab.backends import terminate_backends
from pglab.servers import pgbouncer
from pglab.servers.embedded import free_port, port_is_free
from pglab.testing import eventually, within

MODULE = "lab12_production"


@pytest.fixture(scope="session")
def bouncer_dsn(dsn) -> str:
    """DSN of the course database through PgBouncer; skips (with the reason) without it."""
    if reason := pgbouncer.unavailable_reason():
        pytest.skip(f"PgBouncer checks skipped: {reason}")
    try:
        return pgbouncer.ensure_pgbouncer(dsn)
    except pgbouncer.PgBouncerUnavailableError as exc:
        pytest.skip(f"PgBouncer checks skipped: {exc}")


@pytest.fixture
async def pools():
    """Pools created by a test, terminated afterwards whatever happened."""
    created: list[asyncpg.Pool] = []
    yield created
    for pool in created:
        pool.terminate()


async def prepared_statements(pool: asyncpg.Pool) -> list[str]:
    """Names of the statements prepared on one of the pool's connections, after two queries."""
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT $1::int + 1", 1)
        return [row["name"] for row in await conn.fetch("SELECT name FROM pg_prepared_statements")]


# -- create_pgbouncer_pool: its arguments, then PgBouncer itself -----------------
async def test_create_pgbouncer_pool_refuses_what_pgbouncer_cannot_carry_before_connecting(lab, pools):
    nowhere = f"postgresql://pglab:x@127.0.0.1:{free_port()}/pglab"  # a ValueError must come before any connect
    refused = {
        "a statement cache without PgBouncer's prepared statements": (
            {"statement_cache_size": 100}, "statement_cache_size"),
        "a statement cache larger than PgBouncer's max_prepared_statements": (
            {"statement_cache_size": 100, "max_prepared_statements": 50}, "max_prepared_statements"),
        "a startup parameter PgBouncer does not forward": (
            {"server_settings": {"search_path": "public"}}, "search_path"),
    }
    for name, (kwargs, named) in refused.items():
        try:
            pools.append(await within(lab.create_pgbouncer_pool(nowhere, min_size=0, **kwargs), 10,
                                      "create_pgbouncer_pool()"))
        except ValueError as exc:
            assert named in str(exc), f"{name}: the ValueError should name {named!r}, it says {exc}"
        except OSError as exc:
            pytest.fail(f"{name} ({kwargs}) should raise ValueError before connecting, it tried to connect: {exc!r}",
                        pytrace=False)
        else:
            pytest.fail(f"{name} ({kwargs}) should raise ValueError", pytrace=False)


async def test_create_pgbouncer_pool_keeps_the_cache_only_where_pgbouncer_tracks_statements(lab, dsn, pools):
    # Straight to PostgreSQL, so the pool's own settings show on the server, whatever PgBouncer is installed.
    off = await within(lab.create_pgbouncer_pool(dsn, min_size=1, max_size=1, server_settings={"TimeZone": "UTC"}),
                       15, "create_pgbouncer_pool(server_settings={'TimeZone': 'UTC'})")
    pools.append(off)
    assert await prepared_statements(off) == [], (
        "with max_prepared_statements=0 (the default) asyncpg's statement cache must be off "
        "(statement_cache_size=0): a statement prepared on one server connection is missing on the next"
    )
    async with off.acquire() as conn:
        await conn.execute("SET work_mem = '7MB'")
    async with off.acquire() as conn:
        kept = await conn.fetchval("SELECT current_setting('work_mem')")
    assert kept == "7MB", (
        "the release ran asyncpg's reset query (RESET ALL...): through PgBouncer there is no session to "
        "reset, so pass a no-op `reset=` callback and save the round trip"
    )
    on = await within(lab.create_pgbouncer_pool(dsn, min_size=1, max_size=1, max_prepared_statements=50),
                      15, "create_pgbouncer_pool(max_prepared_statements=50)")
    pools.append(on)
    names = await prepared_statements(on)
    assert any(name.startswith("__asyncpg_stmt_") for name in names), (
        f"with max_prepared_statements=50 PgBouncer (>= 1.21) carries prepared statements, so keep asyncpg's "
        f"statement cache (at most 50 statements); none was prepared: {names}"
    )


async def test_the_statement_cache_holds_at_most_max_prepared_statements(lab, dsn, pools):
    # (create_pgbouncer_pool arguments, statements the cache should keep): asyncpg's default 100, capped by
    # PgBouncer's max_prepared_statements; an explicit smaller cache is PgBouncer-safe too.
    cases = (({"max_prepared_statements": 200}, 100), ({"max_prepared_statements": 30}, 30),
             ({"max_prepared_statements": 50, "statement_cache_size": 10}, 10))
    for kwargs, kept in cases:  # straight to PostgreSQL, which shows the statements a connection keeps
        try:
            pool = await within(lab.create_pgbouncer_pool(dsn, min_size=1, max_size=1, **kwargs), 15,
                                f"create_pgbouncer_pool({kwargs})")
        except ValueError as exc:
            pytest.fail(f"create_pgbouncer_pool({kwargs}) raised ValueError ({exc}): a cache of {kept} statements "
                        "fits PgBouncer's limit; refuse only a cache larger than max_prepared_statements",
                        pytrace=False)
        pools.append(pool)
        async with pool.acquire() as conn:
            for k in range(kept + 20):  # more distinct statements than the cache holds: it evicts the oldest
                await conn.fetchval(f"SELECT $1::int + {k}", 1)
            # A statement from prepare() stays outside the cache; asyncpg has closed those it evicted.
            listing = await conn.prepare("SELECT coalesce(array_agg(name), '{}') FROM pg_prepared_statements")
            cached = [name for name in await listing.fetchval() if name != listing.get_name()]
        assert len(cached) == kept, (
            f"create_pgbouncer_pool({kwargs}): after {kept + 20} different queries on one connection, "
            f"{len(cached)} statements stay prepared, expected {kept}: the statement cache should be "
            "statement_cache_size if given, else min(100, max_prepared_statements) (asyncpg's default is 100)"
        )


# -- PgBouncer ------------------------------------------------------------------
@pytest.mark.pgbouncer
@pytest.mark.deadline(120)  # the shared PgBouncer has 10 server connections for every test run at once
async def test_1000_queries_from_20_tasks_over_a_pool_of_20_through_pgbouncer(lab, bouncer_dsn, pools, app_name):
    pool = await within(lab.create_pgbouncer_pool(bouncer_dsn, min_size=20, max_size=20,
                                                  server_settings={"application_name": app_name}),
                        20, "create_pgbouncer_pool()")
    pools.append(pool)
    failures: list[BaseException] = []

    async def worker(task: int) -> None:
        for i in range(25):
            try:
                async with pool.acquire() as conn:
                    # Different parameter types: asyncpg would prepare (and cache) each shape.
                    value = await conn.fetchval("SELECT $1::int * 2 + $2::int", task, i % 2)
                    assert value == task * 2 + i % 2
                    await conn.fetchval("SELECT $1::text || 'x'", str(i))
            except Exception as exc:  # collect them: the message shows the first one
                failures.append(exc)

    await within(asyncio.gather(*(worker(t) for t in range(20))), 90, "1,000 queries through PgBouncer")
    assert not failures, (
        f"{len(failures)} of 500 operations failed through PgBouncer; first: "
        f"{type(failures[0]).__name__}: {str(failures[0]).splitlines()[0]}. "
        "In transaction mode a prepared statement lives on one server connection: "
        "pass statement_cache_size=0 to create_pool"
    )
    async with pool.acquire() as conn:
        seen = await conn.fetchval("SELECT current_setting('application_name')")
    assert seen == app_name, "application_name from server_settings should reach the server through PgBouncer"


@pytest.mark.pgbouncer
@pytest.mark.deadline(120)
async def test_the_statement_cache_works_through_pgbouncer_with_prepared_statements(lab, dsn, pools):
    if reason := pgbouncer.unavailable_reason(max_prepared_statements=100):
        pytest.skip(f"prepared statements through PgBouncer not checked: {reason}")
    bouncer = pgbouncer.ensure_pgbouncer(dsn, max_prepared_statements=100)
    pool = await within(lab.create_pgbouncer_pool(bouncer, min_size=10, max_size=10, max_prepared_statements=100),
                        20, "create_pgbouncer_pool(max_prepared_statements=100)")
    pools.append(pool)

    async def worker(task: int) -> None:
        for i in range(20):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT $1::int * 2 + $2::int", task, i % 2) == task * 2 + i % 2

    await within(asyncio.gather(*(worker(t) for t in range(30))), 60, "600 queries with the statement cache on")


@pytest.mark.pgbouncer
@pytest.mark.deadline(60)
async def test_show_pools_bounds_server_connections_while_client_pools_are_larger(lab, bouncer_dsn, pools):
    database = urlsplit(bouncer_dsn).path.lstrip("/")  # "pglab", or the grader's own database
    config = {row["key"]: row["value"] for row in pgbouncer.show("CONFIG", bouncer_dsn)}
    pool_size = int(config["default_pool_size"])
    clients_per_pool, n_pools = pool_size, 3  # 3x more clients than PgBouncer's server pool
    for _ in range(n_pools):
        pools.append(await within(lab.create_pgbouncer_pool(
            bouncer_dsn, min_size=clients_per_pool, max_size=clients_per_pool), 20, "create_pgbouncer_pool()"))

    async def busy(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_sleep(0.6)")

    load = asyncio.gather(*(busy(p) for p in pools for _ in range(clients_per_pool)))
    try:
        async def queued() -> bool:
            rows = await asyncio.to_thread(pgbouncer.show, "POOLS", bouncer_dsn)
            row = next(r for r in rows if r["database"] == database)
            servers = sum(int(row[k]) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))
            assert servers <= pool_size, (
                f"PgBouncer holds {servers} server connections, more than its pool_size {pool_size}: {row}"
            )
            return int(row["cl_waiting"]) > 0

        await eventually(queued, 5, f"with {n_pools * clients_per_pool} busy client connections and "
                                    f"{pool_size} server connections, clients should wait in PgBouncer")
        rows = await asyncio.to_thread(pgbouncer.show, "POOLS", bouncer_dsn)
        row = next(r for r in rows if r["database"] == database)
        clients = int(row["cl_active"]) + int(row["cl_waiting"])
        assert clients >= n_pools * clients_per_pool, f"expected all {n_pools * clients_per_pool} clients: {row}"
    finally:
        await within(load, 30, "the busy queries")


# -- PoolMetricsExporter --------------------------------------------------------
@pytest.fixture
async def make_exporter(lab, pools):
    """`make_exporter(pool)`: a PoolMetricsExporter with its own registry, stopped afterwards."""
    created = []

    def make(pool: asyncpg.Pool):
        exp = lab.PoolMetricsExporter(pool, registry=CollectorRegistry())
        created.append(exp)
        return exp

    yield make
    for exp in created:
        exp.stop()


@pytest.fixture
async def pool2(dsn, app_name, pools):
    """A direct pool of exactly 2 connections."""
    pool = await within(asyncpg.create_pool(dsn, min_size=2, max_size=2,
                                            server_settings={"application_name": app_name}),
                        15, "create_pool()")
    pools.append(pool)
    return pool


async def scrape(exp) -> dict[str, float]:
    """Fetch the scrape page over HTTP: {sample name: value} (histogram samples too)."""
    assert exp.port, "serve() should return the port and set exporter.port"
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{exp.port}/metrics")
    assert response.status_code == 200, f"GET /metrics answered {response.status_code}"
    return {s.name: s.value for family in text_string_to_metric_families(response.text)
            for s in family.samples if not s.labels or s.labels.get("le") in (None, "+Inf")}


async def test_scrape_over_http_reports_the_pool_and_a_known_workload(make_exporter, pool2):
    exporter = make_exporter(pool2)
    port = exporter.serve(0)
    assert isinstance(port, int) and port > 0, f"serve(0) should return the chosen port, got {port!r}"
    started = time.perf_counter()
    for _ in range(7):
        async with exporter.instrumented_acquire(timeout=5) as conn:
            assert await conn.fetchval("SELECT 1") == 1
    took = time.perf_counter() - started
    timed = (await within(scrape(exporter), 10, "GET /metrics"))["db_pool_acquire_seconds_sum"]
    assert 0 < timed <= took, (
        f"7 acquires one after the other took {took:.3f} s in all, yet the histogram's sum says {timed!r} s: "
        "observe each acquire's duration, time.perf_counter() after it minus before it"
    )
    async with exporter.instrumented_acquire(timeout=5), exporter.instrumented_acquire(timeout=5):
        waiters = [asyncio.ensure_future(_hold(exporter)) for _ in range(3)]
        await asyncio.sleep(0.2)
        metrics = await within(scrape(exporter), 10, "GET /metrics")
        expected = {"db_pool_size": 2, "db_pool_idle": 0, "db_pool_in_use": 2, "db_pool_waiting": 3,
                    "db_pool_acquires_total": 9, "db_pool_acquire_seconds_count": 9,
                    "db_pool_acquire_timeouts_total": 0, "db_pool_connection_errors_total": 0}
        got = {name: metrics.get(name) for name in expected}
        assert got == expected, (
            f"while holding both connections of a 2-connection pool with 3 tasks waiting, after 9 "
            f"acquires, the scrape page should say {expected}, it says {got}"
        )
    await within(asyncio.gather(*waiters), 10, "the waiting acquires")
    metrics = await within(scrape(exporter), 10, "GET /metrics")
    assert (metrics.get("db_pool_waiting"), metrics.get("db_pool_in_use"), metrics.get("db_pool_acquires_total")) \
        == (0, 0, 12), "after the waiters got their connections: waiting 0, in_use 0, 12 acquires"
    assert metrics["db_pool_acquire_seconds_sum"] > 0, "the histogram should time each acquire"


async def test_in_use_counts_the_borrowed_connections_beside_idle_ones(make_exporter, dsn, app_name, pools):
    # max_size above min_size: the open connections are get_size(), not get_max_size().
    pool = await within(asyncpg.create_pool(dsn, min_size=4, max_size=6,
                                            server_settings={"application_name": app_name}),
                        15, "create_pool()")
    pools.append(pool)
    exporter = make_exporter(pool)
    for borrowed in (1, 3):
        async with contextlib.AsyncExitStack() as held:
            for _ in range(borrowed):
                await held.enter_async_context(exporter.instrumented_acquire(timeout=5))
            got = {name: exporter.registry.get_sample_value(name)
                   for name in ("db_pool_size", "db_pool_idle", "db_pool_in_use")}
        expected = {"db_pool_size": 4, "db_pool_idle": 4 - borrowed, "db_pool_in_use": borrowed}
        assert got == expected, (
            f"with 4 connections open (max_size 6) and {borrowed} borrowed, expected {expected}, got {got}: "
            "the connections in use are the open ones minus the idle ones, get_size() - get_idle_size()"
        )


async def _hold(exp) -> None:
    async with exp.instrumented_acquire(timeout=10):
        pass


async def test_timeouts_and_connection_errors_are_counted_and_re_raised(make_exporter, pool2, dsn, app_name, pools):
    exporter = make_exporter(pool2)
    exporter.serve(0)
    async with exporter.instrumented_acquire(timeout=5), exporter.instrumented_acquire(timeout=5):
        with pytest.raises(asyncio.TimeoutError):
            async with exporter.instrumented_acquire(timeout=0.1):
                pass
    # A connection killed while in use is a connection error.
    with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, OSError)):
        async with exporter.instrumented_acquire(timeout=5) as conn:
            killer = asyncio.ensure_future(_terminate_soon(dsn, app_name))
            await within(conn.fetchval("SELECT pg_sleep(5)"), 10, "a query whose backend gets terminated")
    await killer
    # A server that does not answer at all: the acquire itself fails.
    dead = await asyncpg.create_pool(f"postgresql://pglab:x@127.0.0.1:{free_port()}/pglab", min_size=0, max_size=1)
    pools.append(dead)
    dead_exporter = make_exporter(dead)
    with pytest.raises(OSError):
        async with dead_exporter.instrumented_acquire(timeout=5):
            pass
    metrics = await within(scrape(exporter), 10, "GET /metrics")
    got = (metrics.get("db_pool_acquire_timeouts_total"), metrics.get("db_pool_connection_errors_total"),
           metrics.get("db_pool_acquires_total"), metrics.get("db_pool_waiting"))
    assert got == (1, 1, 3, 0), (
        "after 1 timed-out acquire, 1 connection killed in use and 3 successful acquires, expected "
        f"(timeouts, connection errors, acquires, waiting) == (1, 1, 3, 0), got {got}: count timeouts "
        "apart from connection errors (asyncio.TimeoutError is an OSError since Python 3.11) and "
        "decrement the waiting gauge whatever happens"
    )
    dead_errors = dead_exporter.registry.get_sample_value("db_pool_connection_errors_total")
    assert dead_errors == 1, f"a refused connection during acquire is a connection error, counted {dead_errors}"


async def test_a_query_timeout_is_neither_an_acquire_timeout_nor_a_connection_error(make_exporter, pool2):
    exporter = make_exporter(pool2)
    exporter.serve(0)
    with pytest.raises(asyncio.TimeoutError):
        async with exporter.instrumented_acquire(timeout=5) as conn:
            await conn.fetchval("SELECT pg_sleep(5)", timeout=0.1)
    metrics = await within(scrape(exporter), 10, "GET /metrics")
    got = (metrics.get("db_pool_acquire_timeouts_total"), metrics.get("db_pool_connection_errors_total"),
           metrics.get("db_pool_acquires_total"))
    assert got == (0, 0, 1), (
        "a query that timed out inside `instrumented_acquire()` got its connection fine: expected "
        f"(acquire timeouts, connection errors, acquires) == (0, 0, 1), got {got}. TimeoutError is an OSError "
        "(asyncio.TimeoutError is the built-in one since Python 3.11): test for it before the connection "
        "errors, and count a timeout as an acquire timeout only while acquiring"
    )


async def _terminate_soon(dsn: str, app_name: str) -> None:
    await asyncio.sleep(0.3)  # let the query start
    await terminate_backends(dsn, app_name)


async def test_the_scrape_page_listens_on_loopback_only(make_exporter, pool2):
    exporter = make_exporter(pool2)
    port = exporter.serve(0)
    await within(scrape(exporter), 10, "GET /metrics on 127.0.0.1")
    # On Linux all of 127.0.0.0/8 reaches this machine: a server bound to 0.0.0.0 answers on
    # 127.0.0.2 too, one bound to 127.0.0.1 does not (elsewhere the connection fails either way).
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            response = await client.get(f"http://127.0.0.2:{port}/metrics")
    except httpx.HTTPError:
        return
    pytest.fail(f"the scrape page answered on 127.0.0.2 ({response.status_code}): it listens on every address; "
                "pass addr='127.0.0.1' to start_http_server (its default is 0.0.0.0)", pytrace=False)


def serving_threads() -> set[threading.Thread]:
    """The live threads running an HTTP server's serve_forever (start_http_server starts one per server)."""
    # Since Python 3.10 a thread's default name ends with its target's name: "Thread-3 (serve_forever)".
    return {t for t in threading.enumerate() if t.is_alive() and t.name.endswith("(serve_forever)")}


async def test_stop_closes_the_scrape_page_and_is_idempotent(make_exporter, pool2):
    exporter = make_exporter(pool2)
    await within(asyncio.to_thread(exporter.stop), 10, "stop() before serve()")  # nothing to stop: no error
    before = serving_threads()
    port = exporter.serve(0)
    assert exporter.serve(0) == port, "a second serve() should keep the running server"
    await within(scrape(exporter), 10, "GET /metrics")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        await within(asyncio.to_thread(exporter.stop), 10, "stop()")
        gc.collect()  # a socket only dropped, not closed, warns when it is collected
    await within(asyncio.to_thread(exporter.stop), 10, "a second stop()")

    async def loop_ended() -> bool:
        return not serving_threads() - before

    await eventually(loop_ended, 3, "after stop() the thread serving the scrape page should end: call "
                                    "server.shutdown() (it ends serve_forever()), then server.server_close()")
    unclosed = [str(w.message) for w in caught
                if issubclass(w.category, ResourceWarning) and f"'127.0.0.1', {port})" in str(w.message)]
    assert port_is_free(port) and not unclosed, (
        f"after stop() the listening socket of port {port} should be closed, "
        f"{'the garbage collector closed it: ' + unclosed[0] if unclosed else 'it is still bound'}: "
        "server.shutdown() only ends the serving loop, server.server_close() closes the socket"
    )
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=2) as client:
            await client.get(f"http://127.0.0.1:{port}/metrics")
    assert exporter.port is None, f"after stop() exporter.port should be None, as before serve(): {exporter.port!r}"
    new_port = exporter.serve(0)
    assert exporter.port == new_port, "serve() after stop() should start a new server and set exporter.port"
    await within(scrape(exporter), 10, "GET /metrics after stop() and serve() again")
