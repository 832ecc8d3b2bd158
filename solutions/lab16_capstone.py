"""Lab 16, the capstone: a small web service built on your own labs.

One Starlette app, served by several uvicorn worker processes. Each worker opens its
own pool in the lifespan (after the fork: a pool never crosses a fork, lab 14), with
settings from lab 03, the pool of lab 01, the health monitor of lab 04 behind
`/readyz`, the error mapping of lab 11, and lab 12's metrics at `/metrics`.

Behind PgBouncer in transaction mode (`behind_pgbouncer=True`) the pool is lab 12's
`create_pgbouncer_pool` instead: no statement cache, and of lab 01's startup parameters
only `application_name` (PgBouncer refuses `search_path` and `statement_timeout`).

The toolkit loads your earlier labs from the same tree and hands them over as `Parts`
(labs never import each other); `pglab capstone run [--pgbouncer]` serves the app, loads
it with wrk, drills a fault in the middle and writes an SLO report.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import asyncpg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TABLE = "capstone_items"
ACQUIRE_TIMEOUT = 2.0  # seconds a request may wait for a connection before it gets a 503
APPLICATION_NAME = "pglab-capstone"


@dataclass(frozen=True)
class Parts:
    """Your earlier labs, as loaded by the toolkit from the tree under test."""

    database_pool: ModuleType  # lab 01: DatabasePool
    settings: ModuleType  # lab 03: DatabaseSettings
    health: ModuleType  # lab 04: ConnectionHealthMonitor
    failures: ModuleType  # lab 11: map_db_error
    production: ModuleType  # lab 12: PoolMetricsExporter


class Service:
    """What one worker process holds: its pool, monitor and metrics."""

    def __init__(self, parts: Parts, settings: Any, behind_pgbouncer: bool = False) -> None:
        self.parts, self.settings, self.behind_pgbouncer = parts, settings, behind_pgbouncer
        self.db = parts.database_pool.DatabasePool()
        self.registry = CollectorRegistry()  # one per worker: never the process-global one
        self.monitor: Any = None
        self.metrics: Any = None

    async def start(self) -> None:
        """Open the pool, create the table (other workers may be creating it at the same moment),
        start the monitor and the metrics."""
        # BEGIN SOLUTION
        kwargs = self.settings.get_pool_kwargs()
        dsn = kwargs.pop("dsn")
        kwargs.pop("timeout", None)  # lab 01's initialize() has no connect timeout parameter
        if self.behind_pgbouncer:
            # Lab 12's pool, held by lab 01's wrapper: each transaction may run on another server
            # connection, so no statement cache, and startup parameters PgBouncer forwards only.
            self.db.pool = await self.parts.production.create_pgbouncer_pool(
                dsn, **kwargs, server_settings={"application_name": APPLICATION_NAME})
        else:
            await self.db.initialize(dsn, **kwargs, application_name=APPLICATION_NAME)
        async with self.db.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            # Every worker gets here at once on a new database. IF NOT EXISTS is a check, not a lock:
            # the loser of the race fails on the catalog's unique index once the winner commits, and
            # then the table is there, so that error is success (tutorial 16, section 1).
            with contextlib.suppress(asyncpg.UniqueViolationError, asyncpg.DuplicateTableError):
                await conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id int PRIMARY KEY, value text NOT NULL)")
        self.metrics = self.parts.production.PoolMetricsExporter(self.db.pool, registry=self.registry)
        self.monitor = self.parts.health.ConnectionHealthMonitor(self.db, check_interval=1.0, timeout=1.0)
        await self.monitor.check_health()  # ready from the first request, not one interval later
        await self.monitor.start_monitoring()
        # END SOLUTION

    async def stop(self) -> None:
        """Stop the monitor, then close the pool, waiting for the borrowers still out."""
        # BEGIN SOLUTION
        if self.monitor is not None:
            await self.monitor.stop_monitoring()
        await self.db.close()
        # END SOLUTION

    async def query(self, method: str, sql: str, *args: Any) -> Any:
        """Run one statement on a borrowed connection, through lab 12's instrumented acquire."""
        async with self.metrics.instrumented_acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            return await getattr(conn, method)(sql, *args)


def _error(service: Service, exc: Exception) -> JSONResponse:
    """Lab 11's mapping: a status and a fixed message; the exception text never reaches the client."""
    # BEGIN SOLUTION
    status, message = service.parts.failures.map_db_error(exc)
    return JSONResponse({"error": message}, status_code=status)
    # END SOLUTION


def create_app(parts: Parts, settings: Any, *, behind_pgbouncer: bool = False) -> Starlette:
    """The service: /healthz, /readyz, /items/{id} (GET), /items (POST), /slow/{ms}, /metrics.

    `behind_pgbouncer`: `settings` point at PgBouncer in transaction mode, not at PostgreSQL."""
    service = Service(parts, settings, behind_pgbouncer)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    async def healthz(request: Request) -> Response:
        """Liveness: the process answers. Never the database, or a database outage restarts every worker."""
        # BEGIN SOLUTION
        return JSONResponse({"status": "alive"})
        # END SOLUTION

    async def readyz(request: Request) -> Response:
        """Readiness: 200 while the monitor finds the database healthy, else 503 (take me out of the load balancer)."""
        # BEGIN SOLUTION
        healthy = service.monitor.is_healthy()
        return JSONResponse({"status": "ready" if healthy else "not ready"}, status_code=200 if healthy else 503)
        # END SOLUTION

    async def get_item(request: Request) -> Response:
        """200 with the item, 404 when there is none; database failures mapped by lab 11."""
        # BEGIN SOLUTION
        item_id = request.path_params["item_id"]
        try:
            value = await service.query("fetchval", f"SELECT value FROM {TABLE} WHERE id = $1", item_id)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a mapped status
            return _error(service, exc)
        if value is None:
            return JSONResponse({"error": "no such item"}, status_code=404)
        return JSONResponse({"id": item_id, "value": value})
        # END SOLUTION

    async def create_item(request: Request) -> Response:
        """201 for a new item, 409 for an id taken already, 400 for a malformed body."""
        # BEGIN SOLUTION
        try:
            body = json.loads(await request.body())
            item_id, value = int(body["id"]), str(body["value"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected JSON {"id": int, "value": str}'}, status_code=400)
        try:
            await service.query("execute", f"INSERT INTO {TABLE} (id, value) VALUES ($1, $2)", item_id, value)
        except Exception as exc:  # noqa: BLE001 - a duplicate id becomes 409 through the mapping
            return _error(service, exc)
        return JSONResponse({"id": item_id, "value": value}, status_code=201)
        # END SOLUTION

    async def slow(request: Request) -> Response:
        """A stand-in for a slow report: holds a connection for `ms` milliseconds (at most 5 s)."""
        seconds = min(int(request.path_params["ms"]), 5000) / 1000
        try:
            await service.query("execute", "SELECT pg_sleep($1)", seconds)
        except Exception as exc:  # noqa: BLE001 - mapped like every other failure
            return _error(service, exc)
        return JSONResponse({"slept_ms": int(seconds * 1000)})

    async def metrics(request: Request) -> Response:
        """Prometheus exposition of this worker's pool metrics (lab 12)."""
        # BEGIN SOLUTION
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)
        # END SOLUTION

    routes = [
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
        Route("/items/{item_id:int}", get_item), Route("/items", create_item, methods=["POST"]),
        Route("/slow/{ms:int}", slow),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
