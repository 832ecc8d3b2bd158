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
    # BEGIN SOLUTION
    row = await conn.fetchrow(
        "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int,"
        " coalesce(current_setting('reserved_connections', true), '0')::int,"
        " (SELECT rolconnlimit FROM pg_roles WHERE rolname = $1) AS role_limit", role)
    if row["role_limit"] is None:
        raise ValueError(f"role {role!r} does not exist on this server")
    return ServerBudget(row[0], row[1], row[2], None if row["role_limit"] < 0 else row["role_limit"])
    # END SOLUTION


def usable_connections(budget: ServerBudget) -> int:
    """Connections an ordinary application role can open: reserved slots off, capped by its limit."""
    # BEGIN SOLUTION
    # Both reserved pools are kept back from ordinary roles: an administrator's way in when all else is used.
    server = budget.max_connections - budget.superuser_reserved - budget.reserved
    return server if budget.role_limit is None else min(server, budget.role_limit)
    # END SOLUTION


def pool_size_per_worker(usable: int, workers: int, *, surge: int, headroom: int = 0) -> int:
    """The largest max_size so `workers + surge` (a rolling deploy's extra) pools plus `headroom` fit in `usable`.

    Raises ValueError naming the connections needed when not even one per process fits.
    """
    # BEGIN SOLUTION
    if workers < 1 or surge < 0 or headroom < 0:
        raise ValueError(f"need workers >= 1, surge >= 0, headroom >= 0; got {workers}, {surge}, {headroom}")
    processes = workers + surge
    if (size := (usable - headroom) // processes) < 1:
        raise ValueError(f"{processes} processes (workers + surge) need at least {processes + headroom} connections, "
                         f"the budget is {usable}: run fewer workers, a smaller surge, or PgBouncer in front (lab 12)")
    return size
    # END SOLUTION


@dataclass
class WorkerReport:
    """What one worker process got: its pid, connections opened, and the error that stopped it."""
    pid: int
    opened: int
    error: str | None = None


async def _hold(dsn: str, pool_size: int, reports: Any, release: Any, hold: float) -> None:
    """In the worker: open `pool_size` connections, report, keep them until `release` is set."""
    # BEGIN SOLUTION
    # Created here, in the child, on its own event loop: a pool made before the fork shares the parent's sockets.
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=pool_size)
    held, error = 0, None
    try:
        for _ in range(pool_size):
            await pool.acquire(timeout=10)  # kept until the worker exits
            held += 1
    except (asyncpg.PostgresError, OSError) as exc:  # TooManyConnectionsError: the budget is spent
        error = f"{type(exc).__name__}: {exc}"
    reports.put((os.getpid(), held, error))  # plain values: a lab module's classes do not unpickle
    await asyncio.to_thread(release.wait, hold)  # a blocking wait, off the event loop
    pool.terminate()  # closes the held connections too: the worker is done
    # END SOLUTION


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
        # BEGIN SOLUTION
        # fork, not spawn: a lab module is not importable by name; no loop or pool exists yet to be shared.
        context = multiprocessing.get_context("fork")
        queue, self._release = context.Queue(), context.Event()
        self._processes = [context.Process(target=_worker_main, daemon=True,
                                           args=(self.dsn, self.pool_size, queue, self._release, self.hold))
                           for _ in range(self.workers)]
        for process in self._processes:
            process.start()
        return [WorkerReport(*queue.get(timeout=timeout)) for _ in self._processes]
        # END SOLUTION

    def close(self) -> None:
        """Let the workers close their pools and exit; wait for them."""
        # BEGIN SOLUTION
        self._release.set()
        for process in self._processes:
            process.join(timeout=10)  # daemon processes: they die with us at worst
        # END SOLUTION


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
        # BEGIN SOLUTION
        # Inner layers fire first, so the error names the real cause. A query behind PgBouncer
        # first waits in its queue, then runs: the two add up inside one command_timeout.
        rules = [("connect", self.connect, "acquire", self.acquire),
                 ("lock", self.lock, "statement", self.statement),
                 ("query_wait + statement", self.query_wait + self.statement, "command", self.command),
                 ("statement", self.statement, "transaction", self.transaction),
                 ("acquire + command", self.acquire + self.command, "request", self.request)]
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        for inner, small, outer, large in rules:
            if small >= large:
                raise ValueError(f"{inner} ({small:g} s) must be shorter than {outer} ({large:g} s)")
        # END SOLUTION

    def pool_options(self) -> dict[str, Any]:
        """Keyword arguments for asyncpg.create_pool: client timeouts and the server's, per session."""
        # BEGIN SOLUTION
        self.validate()
        ms = {"lock_timeout": self.lock, "statement_timeout": self.statement, "transaction_timeout": self.transaction,
              "idle_in_transaction_session_timeout": self.idle_in_transaction}  # transaction_timeout: PG 17+
        settings = {name: f"{round(seconds * 1000)}ms" for name, seconds in ms.items()}
        return {"timeout": self.connect, "command_timeout": self.command, "server_settings": settings}
        # END SOLUTION

    def pgbouncer_settings(self) -> dict[str, float]:
        """This budget's PgBouncer settings, for its [pgbouncer] section (`ensure_pgbouncer(settings=...)`)."""
        # BEGIN SOLUTION
        self.validate()
        return {"query_wait_timeout": self.query_wait}  # seconds; PgBouncer takes no "ms" unit
        # END SOLUTION


async def fetch_within(pool: asyncpg.Pool, budget: TimeoutBudget, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run one request's query under the budget: a bounded acquire inside the request deadline."""
    # BEGIN SOLUTION
    async with asyncio.timeout(budget.request), pool.acquire(timeout=budget.acquire) as conn:
        return await conn.fetch(query, *args)
    # END SOLUTION


def timeout_layer(exc: BaseException) -> str:
    """Which timeout produced `exc`: a server's or PgBouncer's setting, "client", "connection lost" or "other"."""
    # BEGIN SOLUTION
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return "lock_timeout"
    if isinstance(exc, asyncpg.QueryCanceledError):
        return "statement_timeout"
    # These two end the session (FATAL); asyncpg names the cause only if a query was in flight.
    if isinstance(exc, asyncpg.TransactionTimeoutError) or "due to transaction timeout" in str(exc):
        return "transaction_timeout"
    if isinstance(exc, asyncpg.IdleInTransactionSessionTimeoutError) or "idle-in-transaction" in str(exc):
        return "idle_in_transaction_session_timeout"
    if "query_wait_timeout" in str(exc):  # PgBouncer hangs up on a client it queued too long
        return "query_wait_timeout"
    if isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc):
        return "connection lost"  # the server hung up while we were idle: its log says why
    return "client" if isinstance(exc, TimeoutError) else "other"  # connect, acquire, command_timeout
    # END SOLUTION
