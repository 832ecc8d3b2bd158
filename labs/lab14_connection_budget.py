# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 14`. (Generated from solutions/lab14_connection_budget.py by `pglab build-labs`.)
"""Lab 14: the connection budget and timeouts as a system.

Worker processes (`Fleet`) share one server's `max_connections` (`read_budget`, `pool_size_per_worker`);
one request gets one consistent set of timeouts, PgBouncer's queue included (`TimeoutBudget`, `timeout_layer`).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True)
class ServerBudget:
    """The server's connection slots as the server reports them."""
    max_connections: int
    superuser_reserved: int  # superuser_reserved_connections
    reserved: int  # reserved_connections (PostgreSQL 16+; for roles with pg_use_reserved_connections)
    role_limit: int | None  # the role's CONNECTION LIMIT; None when unlimited (-1)


async def read_budget(conn: asyncpg.Connection, role: str) -> ServerBudget:
    """Read the slot settings and `role`'s CONNECTION LIMIT (`pg_roles.rolconnlimit`)."""
    raise NotImplementedError("TODO: implement read_budget()")


def usable_connections(budget: ServerBudget) -> int:
    """Connections an ordinary application role can open: reserved slots off, capped by its limit."""
    raise NotImplementedError("TODO: implement usable_connections()")


def pool_size_per_worker(usable: int, workers: int, *, surge: int, headroom: int = 0) -> int:
    """The largest max_size so `workers + surge` (a rolling deploy's extra) pools plus `headroom` fit in `usable`.

    Raises ValueError naming the connections needed when not even one per process fits.
    """
    raise NotImplementedError("TODO: implement pool_size_per_worker()")


@dataclass
class WorkerReport:
    """What one worker process got: its pid, connections opened, and the error that stopped it."""
    pid: int
    opened: int
    error: str | None = None


async def _hold(dsn: str, pool_size: int, reports: Any, release: Any, hold: float) -> None:
    """In the worker: open `pool_size` connections, report, keep them until `release` is set."""
    raise NotImplementedError("TODO: implement _hold()")


def _worker_main(*args: Any) -> None:
    asyncio.run(_hold(*args))


@dataclass
class Fleet:
    """`workers` processes, each holding a pool of `pool_size` connections until `close()`."""

    dsn: str
    workers: int
    pool_size: int
    hold: float = 60.0  # seconds a worker holds its connections at most, if close() never comes

    def start(self, timeout: float = 60.0) -> list[WorkerReport]:
        """Start the workers; return once every one has reported (all connections held)."""
        raise NotImplementedError("TODO: implement start()")

    def close(self) -> None:
        """Let the workers close their pools and exit; wait for them."""
        raise NotImplementedError("TODO: implement close()")


@dataclass(frozen=True)
class TimeoutBudget:
    """One request's timeouts, in seconds; `validate()` checks they fit together."""

    request: float = 5.0  # the caller's whole deadline
    connect: float = 0.5  # opening one connection (asyncpg `timeout`)
    acquire: float = 1.0  # waiting for a pooled connection (includes a connect)
    lock: float = 0.5  # lock_timeout: waiting for one lock
    statement: float = 2.0  # statement_timeout: one statement on the server
    query_wait: float = 0.5  # PgBouncer's query_wait_timeout: queued there for a server connection
    command: float = 3.0  # command_timeout: the client's backstop when the server never answers
    transaction: float = 4.0  # transaction_timeout (PostgreSQL 17+)
    idle_in_transaction: float = 4.0  # idle_in_transaction_session_timeout

    def validate(self) -> None:
        """Raise ValueError naming the first pair of timeouts in the wrong order."""
        raise NotImplementedError("TODO: implement validate()")

    def pool_options(self) -> dict[str, Any]:
        """Keyword arguments for asyncpg.create_pool: client timeouts and the server's, per session."""
        raise NotImplementedError("TODO: implement pool_options()")

    def pgbouncer_settings(self) -> dict[str, float]:
        """This budget's PgBouncer settings, for its [pgbouncer] section (`ensure_pgbouncer(settings=...)`)."""
        raise NotImplementedError("TODO: implement pgbouncer_settings()")


async def fetch_within(pool: asyncpg.Pool, budget: TimeoutBudget, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run one request's query under the budget: a bounded acquire inside the request deadline."""
    raise NotImplementedError("TODO: implement fetch_within()")


def timeout_layer(exc: BaseException) -> str:
    """Which timeout produced `exc`: a server's or PgBouncer's setting, "client", "connection lost" or "other"."""
    raise NotImplementedError("TODO: implement timeout_layer()")
