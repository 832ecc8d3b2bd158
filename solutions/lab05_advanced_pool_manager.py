"""Lab 05: `AdvancedPoolManager`: session settings, an init hook, retries and a graceful shutdown.

Static session settings go in `server_settings`: they are the session's defaults,
so the reset on release (RESET ALL) returns to them. `init` runs once per new
physical connection, for what is no server setting: a jsonb codec (client-side
state) and counting connections. The health check is lab 04's monitor, passed in
as a factory (labs depend on shapes, not on each other's files). A log listener
belongs to one borrow, so `acquire()` attaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import asyncpg

# Sent in the startup packet: the session defaults, which RESET ALL restores.
SESSION_SETTINGS = {"work_mem": "16MB", "idle_in_transaction_session_timeout": "60s"}

# Failures a fresh connection can fix; a SQL error would fail again identically.
RETRYABLE = (asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError,
             asyncpg.CannotConnectNowError, OSError)


class PoolSettings(Protocol):
    """What the manager needs from lab 03's `DatabaseSettings`."""
    def get_dsn(self) -> str: ...
    def get_pool_kwargs(self) -> dict[str, Any]: ...


class HealthMonitor(Protocol):
    """What the manager needs from lab 04's `ConnectionHealthMonitor`."""
    async def check_health(self) -> dict[str, Any]: ...
    async def start_monitoring(self) -> None: ...
    async def stop_monitoring(self) -> None: ...
    def get_health_status(self) -> dict[str, Any]: ...


MonitorFactory = Callable[..., HealthMonitor]  # factory(manager, check_interval=.., timeout=..): lab 04's class


def is_retryable(exc: BaseException) -> bool:
    """True for connection-level failures (see RETRYABLE); False for SQL errors and timeouts."""
    # BEGIN SOLUTION
    # TimeoutError is an OSError since Python 3.3 (asyncio's is the same class since 3.11),
    # but a slow query is no lost connection.
    return isinstance(exc, RETRYABLE) and not isinstance(exc, (TimeoutError, asyncio.TimeoutError))
    # END SOLUTION


class AdvancedPoolManager:
    """An asyncpg pool with session settings, an init hook, metrics, a health monitor and retries."""

    def __init__(self, monitor_factory: MonitorFactory, *, application_name: str = "pglab-advanced",
                 health_check_interval: float = 30.0, health_check_timeout: float = 5.0) -> None:
        self.pool: asyncpg.Pool | None = None
        self.monitor: HealthMonitor | None = None
        self.monitor_factory = monitor_factory
        self.application_name = application_name
        self.health_check_interval, self.health_check_timeout = health_check_interval, health_check_timeout
        self.connection_counter = 0  # physical connections opened (init hook calls)
        self.error_counter = 0  # server WARNING/ERROR messages plus failed attempts
        self.borrow_counter = 0  # connections handed out by acquire()
        self._dsn = ""
        self._server_pids: set[int] = set()
        self._shut_down = False

    async def initialize_pool(self, settings: PoolSettings) -> None:
        """Create the pool (SESSION_SETTINGS, init hook) and start the monitor; RuntimeError if called twice."""
        # BEGIN SOLUTION
        if self.pool is not None:
            raise RuntimeError("pool already initialized; graceful_shutdown() it first")
        kwargs = {"dsn": settings.get_dsn(), **settings.get_pool_kwargs()}  # the kwargs may carry the dsn too
        server_settings = {**SESSION_SETTINGS, **kwargs.pop("server_settings", {}),
                           "application_name": self.application_name}
        self._dsn = kwargs["dsn"]
        self.pool = await asyncpg.create_pool(**kwargs, server_settings=server_settings, init=self._init_connection)
        self._shut_down = False
        self.monitor = self.monitor_factory(self, check_interval=self.health_check_interval,
                                            timeout=self.health_check_timeout)
        await self.monitor.start_monitoring()
        # END SOLUTION

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        """Once per new physical connection: count it, remember its server pid, decode jsonb to Python."""
        # BEGIN SOLUTION
        self.connection_counter += 1
        pid = conn.get_server_pid()
        self._server_pids.add(pid)
        conn.add_termination_listener(lambda _conn: self._server_pids.discard(pid))
        await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
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

    def _on_server_log(self, conn: asyncpg.Connection, message: asyncpg.PostgresLogMessage) -> None:
        """Log listener: count WARNING and ERROR messages in `error_counter`."""
        # BEGIN SOLUTION
        if message.severity_en in ("WARNING", "ERROR"):
            self.error_counter += 1
        # END SOLUTION

    def get_pool_stats(self) -> dict[str, int]:
        """`min_size, max_size, size, idle, in_use` (all 0 without a pool); the monitor reads it too."""
        # BEGIN SOLUTION
        if self.pool is None:
            return dict.fromkeys(("min_size", "max_size", "size", "idle", "in_use"), 0)
        size, idle = self.pool.get_size(), self.pool.get_idle_size()
        return {"min_size": self.pool.get_min_size(), "max_size": self.pool.get_max_size(),
                "size": size, "idle": idle, "in_use": size - idle}
        # END SOLUTION

    async def check_health(self) -> dict[str, Any]:
        """Run one check of the monitor now and return its status."""
        self._require_pool()
        assert self.monitor is not None  # set together with the pool
        return await self.monitor.check_health()

    def _require_pool(self) -> asyncpg.Pool:
        if self.pool is None:  # say which: "not initialized" after a shutdown sends the reader the wrong way
            raise RuntimeError("the manager has been shut down by graceful_shutdown(); create a new one"
                               if self._shut_down else "pool not initialized: await initialize_pool(settings) first")
        return self.pool

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

    async def get_pool_metrics(self) -> dict[str, Any]:
        """`pool_stats, health_stats, connection_counter, error_counter, error_rate` (errors per borrow)."""
        # BEGIN SOLUTION
        health = self.monitor.get_health_status() if self.monitor is not None else {"status": "unknown"}
        return {"pool_stats": self.get_pool_stats(), "health_stats": health,
                "connection_counter": self.connection_counter, "error_counter": self.error_counter,
                "error_rate": self.error_counter / self.borrow_counter if self.borrow_counter else 0.0}
        # END SOLUTION

    async def graceful_shutdown(self, timeout: float = 10.0) -> None:
        """Stop the monitor, wait up to `timeout` s for borrowed connections, then end
        what is left on both sides (our sockets and the server backends)."""
        # BEGIN SOLUTION
        self._shut_down = True
        if self.monitor is not None:
            await self.monitor.stop_monitoring()  # a check must not run on a closing pool
        if self.pool is None:
            return
        pool, self.pool = self.pool, None
        pids = list(self._server_pids)  # closing the pool empties the set
        try:
            await asyncio.wait_for(pool.close(), timeout)
        except TimeoutError:
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
