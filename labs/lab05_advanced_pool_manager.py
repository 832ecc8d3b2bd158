# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 05`. (Generated from solutions/lab05_advanced_pool_manager.py by `pglab build-labs`.)
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
    raise NotImplementedError("TODO: implement is_retryable()")


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
        raise NotImplementedError("TODO: implement initialize_pool()")

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        """Once per new physical connection: count it, remember its server pid, apply SESSION_SETTINGS."""
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

    async def _reset_connection(self, conn: asyncpg.Connection) -> None:
        """On every release: asyncpg's reset query (RESET ALL, ...) then SESSION_SETTINGS, in one round trip."""
        raise NotImplementedError("TODO: implement _reset_connection()")

    def _on_server_log(self, conn: asyncpg.Connection, message: asyncpg.PostgresLogMessage) -> None:
        """Log listener: count WARNING and ERROR messages in `error_counter`."""
        raise NotImplementedError("TODO: implement _on_server_log()")

    async def check_health(self) -> dict[str, Any]:
        """One `SELECT 1` bounded by `health_check_timeout`; updates and returns `health_stats`."""
        raise NotImplementedError("TODO: implement check_health()")

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
        raise NotImplementedError("TODO: implement execute_with_retry()")

    def get_pool_metrics(self) -> dict[str, Any]:
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
