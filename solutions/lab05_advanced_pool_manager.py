"""Lab 05: `AdvancedPoolManager`: pool hooks, retries and a graceful shutdown.

asyncpg calls two hooks: `init` once per new physical connection (count it,
apply the session settings) and `reset` on every release (wipe what the borrower
changed, re-apply our settings). A log listener belongs to one borrow (asyncpg
warns about one left on a released connection), so `acquire()` attaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import asyncpg

# Applied by the init hook, and again after every reset (RESET ALL would undo them).
SESSION_SETTINGS = {"work_mem": "16MB", "idle_in_transaction_session_timeout": "60s"}
_SET_SESSION = "\n".join(f"SET {name} = '{value}';" for name, value in SESSION_SETTINGS.items())

# Failures a fresh connection can fix. A SQL error (unique violation, syntax
# error) would fail again identically, so it is never retried.
RETRYABLE = (asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError,
             asyncpg.CannotConnectNowError, OSError)


class PoolSettings(Protocol):
    """What the manager needs from lab 03's `DatabaseSettings`."""
    def get_dsn(self) -> str: ...
    def get_pool_kwargs(self) -> dict[str, Any]: ...


def is_retryable(exc: BaseException) -> bool:
    """True for connection-level failures (see RETRYABLE); False for SQL errors and timeouts."""
    # BEGIN SOLUTION
    # TimeoutError is an OSError since 3.11, but a slow query is no lost connection.
    return isinstance(exc, RETRYABLE) and not isinstance(exc, asyncio.TimeoutError)
    # END SOLUTION


class AdvancedPoolManager:
    """An asyncpg pool with session hooks, metrics, a health monitor and retries."""

    def __init__(self, *, application_name: str = "pglab-advanced",
                 health_check_interval: float = 30.0, health_check_timeout: float = 5.0) -> None:
        self.pool: asyncpg.Pool | None = None
        self.application_name = application_name
        self.health_check_interval, self.health_check_timeout = health_check_interval, health_check_timeout
        self.connection_counter = 0  # physical connections opened (init hook calls)
        self.error_counter = 0  # server WARNING/ERROR messages plus failed attempts
        self.borrow_counter = 0  # connections handed out by acquire()
        self.health_stats: dict[str, Any] = {"status": "unknown", "last_check": None, "response_time": None,
                                             "consecutive_failures": 0, "error": None}
        self._dsn = ""
        self._server_pids: set[int] = set()
        self._monitor: asyncio.Task[None] | None = None

    async def initialize_pool(self, settings: PoolSettings) -> None:
        """Create the pool with both hooks and start the health monitor; RuntimeError if called twice."""
        # BEGIN SOLUTION
        if self.pool is not None:
            raise RuntimeError("pool already initialized; graceful_shutdown() it first")
        kwargs = {"dsn": settings.get_dsn(), **settings.get_pool_kwargs()}  # the kwargs may carry the dsn too
        server_settings = {**kwargs.pop("server_settings", {}), "application_name": self.application_name}
        self._dsn = kwargs["dsn"]
        self.pool = await asyncpg.create_pool(**kwargs, server_settings=server_settings,
                                              init=self._init_connection, reset=self._reset_connection)
        self._monitor = asyncio.create_task(self._monitor_health())  # keep it: the loop holds tasks weakly
        # END SOLUTION

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        """Once per new physical connection: count it, remember its server pid, apply SESSION_SETTINGS."""
        # BEGIN SOLUTION
        self.connection_counter += 1
        pid = conn.get_server_pid()
        self._server_pids.add(pid)
        conn.add_termination_listener(lambda _conn: self._server_pids.discard(pid))
        await conn.execute(_SET_SESSION)
        # END SOLUTION

    @contextlib.asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        """`async with manager.acquire() as conn:` a connection whose server WARNINGs are counted."""
        async with self._require_pool().acquire(timeout=timeout) as conn:
            # BEGIN SOLUTION: count the borrow in borrow_counter and attach the log listener
            self.borrow_counter += 1
            conn.add_log_listener(self._on_server_log)
            # END SOLUTION
            try:
                yield conn
            finally:  # a connection that died mid-query is already back in the pool: nothing to remove
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.remove_log_listener(self._on_server_log)

    async def _reset_connection(self, conn: asyncpg.Connection) -> None:
        """On every release: asyncpg's reset query (RESET ALL, ...) then SESSION_SETTINGS, in one round trip."""
        # BEGIN SOLUTION
        # Ours replaces asyncpg's reset: run its query too. Not DISCARD ALL: it drops asyncpg's cached statements.
        await conn.execute(f"{conn.get_reset_query()}\n{_SET_SESSION}")
        # END SOLUTION

    def _on_server_log(self, conn: asyncpg.Connection, message: asyncpg.PostgresLogMessage) -> None:
        """Log listener: count WARNING and ERROR messages in `error_counter`."""
        # BEGIN SOLUTION
        if message.severity_en in ("WARNING", "ERROR"):
            self.error_counter += 1
        # END SOLUTION

    async def check_health(self) -> dict[str, Any]:
        """One `SELECT 1` bounded by `health_check_timeout`; updates and returns `health_stats`."""
        # BEGIN SOLUTION
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self._require_pool().fetchval("SELECT 1"), self.health_check_timeout)
        except Exception as exc:  # a failure is a health fact, not a crash of the monitor
            self.health_stats.update(status="unhealthy", error=f"{type(exc).__name__}: {exc}", response_time=None,
                                     consecutive_failures=self.health_stats["consecutive_failures"] + 1)
        else:
            self.health_stats.update(status="healthy", error=None, consecutive_failures=0,
                                     response_time=time.perf_counter() - started)
        self.health_stats["last_check"] = time.time()
        return dict(self.health_stats)
        # END SOLUTION

    def _require_pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError("pool not initialized (or already shut down): await initialize_pool(settings)")
        return self.pool

    async def _monitor_health(self) -> None:
        while True:
            await self.check_health()
            await asyncio.sleep(self.health_check_interval)

    async def execute_with_retry(self, query: str, *args: Any, max_retries: int = 3,
                                 base_delay: float = 0.1) -> list[asyncpg.Record]:
        """`fetch` the query on `acquire()`; retry connection-level failures up to `max_retries`
        times, sleeping `base_delay * 2**attempt` plus random jitter between attempts. Every
        failed attempt counts in `error_counter`."""
        # BEGIN SOLUTION
        attempt = 0
        while True:
            try:
                async with self.acquire() as conn:
                    return await conn.fetch(query, *args)
            except Exception as exc:
                self.error_counter += 1  # an ERROR reaches us as an exception, not as a log message
                if attempt >= max_retries or not is_retryable(exc):
                    raise
            delay = base_delay * 2**attempt  # + jitter, so clients that failed together do not return together
            await asyncio.sleep(delay + random.uniform(0, delay))
            attempt += 1
        # END SOLUTION

    def get_pool_metrics(self) -> dict[str, Any]:
        """`pool_stats, health_stats, connection_counter, error_counter, error_rate` (errors per borrow)."""
        # BEGIN SOLUTION
        pool_stats = dict.fromkeys(("min_size", "max_size", "size", "idle", "in_use"), 0)
        if self.pool is not None:
            size, idle = self.pool.get_size(), self.pool.get_idle_size()
            pool_stats.update(min_size=self.pool.get_min_size(), max_size=self.pool.get_max_size(),
                              size=size, idle=idle, in_use=size - idle)
        return {"pool_stats": pool_stats, "health_stats": dict(self.health_stats),
                "connection_counter": self.connection_counter, "error_counter": self.error_counter,
                "error_rate": self.error_counter / self.borrow_counter if self.borrow_counter else 0.0}
        # END SOLUTION

    async def graceful_shutdown(self, timeout: float = 10.0) -> None:
        """Stop the monitor, wait up to `timeout` s for borrowed connections, then end
        what is left on both sides (our sockets and the server backends)."""
        # BEGIN SOLUTION
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)  # wait until it has really stopped
        if self.pool is None:
            return
        pool, self.pool = self.pool, None
        pids = list(self._server_pids)  # closing the pool empties the set
        try:
            await asyncio.wait_for(pool.close(), timeout)
        except asyncio.TimeoutError:
            pool.terminate()
            # terminate() only closes our sockets: a backend busy in a query outlives it. End it too.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._terminate_server_backends(pids), 1.0)
        # END SOLUTION

    async def _terminate_server_backends(self, pids: list[int]) -> None:
        """`pg_terminate_backend` these pids over a short admin connection."""
        conn = await asyncpg.connect(self._dsn)
        try:  # match pid AND application_name: a pid may since belong to someone else
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                               " WHERE pid = ANY($1::int[]) AND application_name = $2", pids, self.application_name)
        finally:
            await conn.close()
