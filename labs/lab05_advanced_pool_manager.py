# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 05`. (Generated from solutions/lab05_advanced_pool_manager.py by `pglab build-labs`.)
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
    raise NotImplementedError("TODO: implement is_retryable()")


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
        raise NotImplementedError("TODO: implement initialize_pool()")

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        """Once per new physical connection: count it, remember its server pid, decode jsonb to Python."""
        raise NotImplementedError("TODO: implement _init_connection()")

    @contextlib.asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        """`async with manager.acquire() as conn:` a connection whose server WARNINGs are counted."""
        async with self._require_pool().acquire(timeout=timeout) as conn:
            raise NotImplementedError("TODO: count the borrow in borrow_counter and attach the log listener")
            try:
                yield conn
            finally:  # a connection that died mid-query is already back in the pool: nothing to remove
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.remove_log_listener(self._on_server_log)

    def _on_server_log(self, conn: asyncpg.Connection, message: asyncpg.PostgresLogMessage) -> None:
        """Log listener: count WARNING and ERROR messages in `error_counter`."""
        raise NotImplementedError("TODO: implement _on_server_log()")

    def get_pool_stats(self) -> dict[str, int]:
        """`min_size, max_size, size, idle, in_use` (all 0 without a pool); the monitor reads it too."""
        raise NotImplementedError("TODO: implement get_pool_stats()")

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
        raise NotImplementedError("TODO: implement execute_with_retry()")

    async def get_pool_metrics(self) -> dict[str, Any]:
        """`pool_stats, health_stats, connection_counter, error_counter, error_rate` (errors per borrow)."""
        raise NotImplementedError("TODO: implement get_pool_metrics()")

    async def graceful_shutdown(self, timeout: float = 10.0) -> None:
        """Stop the monitor, wait up to `timeout` s for borrowed connections, then end
        what is left on both sides (our sockets and the server backends)."""
        raise NotImplementedError("TODO: implement graceful_shutdown()")

    async def _terminate_server_backends(self, pids: list[int]) -> None:
        """`pg_terminate_backend` these pids over a short admin connection."""
        conn = await asyncpg.connect(self._dsn)
        try:  # match pid AND application_name: a pid may since belong to someone else
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                               " WHERE pid = ANY($1::int[]) AND application_name = $2", pids, self.application_name)
        finally:
            await conn.close()
