# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 16`. (Generated from solutions/lab16_capstone.py by `pglab build-labs`.)
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
        raise NotImplementedError("TODO: implement start()")

    async def stop(self) -> None:
        """Stop the monitor, then close the pool, waiting for the borrowers still out."""
        raise NotImplementedError("TODO: implement stop()")

    async def query(self, method: str, sql: str, *args: Any) -> Any:
        """Run one statement on a borrowed connection, through lab 12's instrumented acquire."""
        async with self.metrics.instrumented_acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            return await getattr(conn, method)(sql, *args)


def _error(service: Service, exc: Exception) -> JSONResponse:
    """Lab 11's mapping: a status and a fixed message; the exception text never reaches the client."""
    raise NotImplementedError("TODO: implement _error()")


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
        raise NotImplementedError("TODO: implement healthz()")

    async def readyz(request: Request) -> Response:
        """Readiness: 200 while the monitor finds the database healthy, else 503 (take me out of the load balancer)."""
        raise NotImplementedError("TODO: implement readyz()")

    async def get_item(request: Request) -> Response:
        """200 with the item, 404 when there is none; database failures mapped by lab 11."""
        raise NotImplementedError("TODO: implement get_item()")

    async def create_item(request: Request) -> Response:
        """201 for a new item, 409 for an id taken already, 400 for a malformed body."""
        raise NotImplementedError("TODO: implement create_item()")

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
        raise NotImplementedError("TODO: implement metrics()")

    routes = [
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
        Route("/items/{item_id:int}", get_item), Route("/items", create_item, methods=["POST"]),
        Route("/slow/{ms:int}", slow),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
