# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 12`. (Generated from solutions/lab12_production.py by `pglab build-labs`.)
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
    raise NotImplementedError("TODO: implement create_pgbouncer_pool()")


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
        raise NotImplementedError("TODO: implement _define_metrics()")

    @contextlib.asynccontextmanager
    async def instrumented_acquire(
        self, timeout: float | None = None
    ) -> AsyncIterator[asyncpg.Connection]:
        """`async with exporter.instrumented_acquire() as conn:` like `pool.acquire()`, measured.

        Counts an acquire timeout, or a connection error while acquiring or using the
        connection (see `count_failure`), and re-raises it.
        """
        raise NotImplementedError("TODO: borrow `conn` from self.pool; feed the waiting gauge, histogram, counters")
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
        raise NotImplementedError("TODO: implement count_failure()")

    def serve(self, port: int = 0) -> int:
        """Serve the scrape page on 127.0.0.1 (port 0: any free one); return the port."""
        raise NotImplementedError("TODO: implement serve()")

    def stop(self) -> None:
        """Stop serving; safe to call twice."""
        raise NotImplementedError("TODO: implement stop()")
