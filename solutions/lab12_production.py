"""Lab 12: production. asyncpg through PgBouncer, and pool metrics for Prometheus.

Many application instances each with their own pool multiply server connections;
PgBouncer in transaction mode multiplexes them onto a few. That costs every
session-level feature, which is what `create_pgbouncer_pool` accounts for; since
PgBouncer 1.21 prepared statements need not be one of them (`max_prepared_statements`).
`PoolMetricsExporter` makes a pool's health visible to Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import asyncpg
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

# The startup parameters PgBouncer 1.18 forwards; any other one makes it refuse the
# connection ("unsupported startup parameter"), because it could not be kept per client.
PGBOUNCER_STARTUP_PARAMETERS = frozenset(
    {"application_name", "client_encoding", "datestyle", "timezone", "standard_conforming_strings"}
)
# Failures that mean "no usable connection", as opposed to an error in the SQL.
CONNECTION_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError,
                     asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)


async def _keep_no_session_state(conn: asyncpg.Connection) -> None:
    """Release hook: nothing to reset (asyncpg still rolls back an open transaction)."""


async def create_pgbouncer_pool(dsn: str, *, max_prepared_statements: int = 0,
                                 **kwargs: Any) -> asyncpg.Pool:
    """An asyncpg pool that works through PgBouncer in transaction mode.

    Each transaction may run on a different server connection. `max_prepared_statements`
    is PgBouncer's setting: at 0 (and before 1.21) a prepared statement lives on one server
    connection, so asyncpg's statement cache is off; above 0 PgBouncer re-prepares it where
    needed, and the cache (default 100) may hold at most that many statements, PgBouncer's
    per-server-connection limit. No reset query on release (no session state to reset, and
    a round trip saved); only the startup parameters PgBouncer forwards. Raises ValueError
    for a cache the setting cannot carry or another `server_settings` key. `init` and `setup`
    (which runs on every acquire) must not change session state (SET, LISTEN...): it would
    land on whichever server connection runs that statement.
    """
    # BEGIN SOLUTION
    cache = kwargs.pop("statement_cache_size", min(100, max_prepared_statements))
    if cache and not max_prepared_statements:
        raise ValueError(
            f"statement_cache_size={cache} needs a PgBouncer that tracks prepared statements: pass its "
            "max_prepared_statements (PgBouncer >= 1.21), or statement_cache_size=0"
        )
    if cache > max_prepared_statements:
        # Correct but wasteful: PgBouncer would evict and re-prepare statements asyncpg thinks cached.
        raise ValueError(f"statement_cache_size={cache} exceeds PgBouncer's "
                         f"max_prepared_statements={max_prepared_statements} per server connection")
    settings = {key.lower() for key in kwargs.get("server_settings") or {}}
    unsupported = settings - PGBOUNCER_STARTUP_PARAMETERS
    if unsupported:
        raise ValueError(
            f"PgBouncer refuses the startup parameters {sorted(unsupported)}: set them per role "
            "(ALTER ROLE ... SET) or per transaction (SET LOCAL) instead"
        )
    kwargs.setdefault("reset", _keep_no_session_state)
    return await asyncpg.create_pool(dsn, statement_cache_size=cache, **kwargs)
    # END SOLUTION


class PoolMetricsExporter:
    """Prometheus metrics of one asyncpg pool, served over HTTP on 127.0.0.1.

    Gauges `db_pool_size`, `db_pool_idle`, `db_pool_in_use`, `db_pool_waiting`; histogram
    `db_pool_acquire_seconds`; counters `db_pool_acquires_total`,
    `db_pool_acquire_timeouts_total`, `db_pool_connection_errors_total`. Only
    `instrumented_acquire()` feeds the histogram, the counters and `db_pool_waiting`.
    """

    def __init__(self, pool: asyncpg.Pool, registry: CollectorRegistry | None = None) -> None:
        self.pool = pool
        self.registry = REGISTRY if registry is None else registry
        self.port: int | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._define_metrics()

    def _define_metrics(self) -> None:
        """Create the metrics in `self.registry`; the size gauges read the pool at scrape time."""
        # BEGIN SOLUTION
        reg = self.registry
        pool = self.pool
        # set_function: the value is read when Prometheus scrapes, so it is never stale.
        Gauge("db_pool_size", "Open connections", registry=reg).set_function(pool.get_size)
        Gauge("db_pool_idle", "Idle connections", registry=reg).set_function(pool.get_idle_size)
        Gauge("db_pool_in_use", "Borrowed connections", registry=reg).set_function(
            lambda: pool.get_size() - pool.get_idle_size()
        )
        self.waiting = Gauge("db_pool_waiting", "Tasks waiting in acquire()", registry=reg)
        self.acquire_seconds = Histogram(
            "db_pool_acquire_seconds", "Time to get a connection", registry=reg,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        # Counter("x") is exposed as x_total.
        self.acquires = Counter("db_pool_acquires", "Successful acquires", registry=reg)
        self.timeouts = Counter("db_pool_acquire_timeouts", "Acquires that timed out", registry=reg)
        self.connection_errors = Counter("db_pool_connection_errors", "Connection failures",
                                         registry=reg)
        # END SOLUTION

    @contextlib.asynccontextmanager
    async def instrumented_acquire(
        self, timeout: float | None = None
    ) -> AsyncIterator[asyncpg.Connection]:
        """`async with exporter.instrumented_acquire() as conn:` like `pool.acquire()`, measured.

        Counts an acquire timeout, or a connection error while acquiring or using the
        connection (see `count_failure`), and re-raises it.
        """
        # BEGIN SOLUTION: borrow `conn` from self.pool; feed the waiting gauge, histogram, counters
        self.waiting.inc()
        started = time.perf_counter()
        try:
            conn = await self.pool.acquire(timeout=timeout)
        except BaseException as exc:
            self.count_failure(exc, acquiring=True)
            raise
        finally:
            self.waiting.dec()
        self.acquire_seconds.observe(time.perf_counter() - started)
        self.acquires.inc()
        # END SOLUTION
        try:
            yield conn
        except BaseException as exc:
            self.count_failure(exc, acquiring=False)
            raise
        finally:
            await self.pool.release(conn)

    def count_failure(self, exc: BaseException, *, acquiring: bool) -> None:
        """Count an acquire that timed out (only while `acquiring`) or a connection error.

        A query that timed out is neither, nor is an error in the SQL.
        """
        # BEGIN SOLUTION
        # The timeout first: the built-in TimeoutError is an OSError (since Python 3.3), and
        # asyncio.TimeoutError is that very class since 3.11, so CONNECTION_ERRORS would match it.
        if isinstance(exc, asyncio.TimeoutError):
            if acquiring:
                self.timeouts.inc()
        elif isinstance(exc, CONNECTION_ERRORS):
            self.connection_errors.inc()
        # END SOLUTION

    def serve(self, port: int = 0) -> int:
        """Serve the scrape page on 127.0.0.1 (port 0: any free one); return the port."""
        # BEGIN SOLUTION
        if self._server is None:
            # 127.0.0.1, not start_http_server's default 0.0.0.0: metrics are not for the world.
            self._server, self._thread = start_http_server(
                port, addr="127.0.0.1", registry=self.registry
            )
        self.port = int(self._server.server_address[1])
        return self.port
        # END SOLUTION

    def stop(self) -> None:
        """Stop serving; safe to call twice."""
        # BEGIN SOLUTION
        if self._server is not None:
            server, thread, self._server, self._thread = self._server, self._thread, None, None
            server.shutdown()
            server.server_close()
            if thread is not None:
                thread.join(5)
            self.port = None
        # END SOLUTION
