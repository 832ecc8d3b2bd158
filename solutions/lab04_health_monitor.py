"""Lab 04: `ConnectionHealthMonitor`, a background health check that survives failures.

One check borrows a connection and runs `SELECT 1`, the whole of it bounded by
`timeout`: an exhausted pool or a server that stopped answering must turn into
"unhealthy" within seconds, never into a check that hangs. The background loop
turns every failure into a status and keeps going; only `stop_monitoring()`
ends it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, Protocol


class Pool(Protocol):
    """What this lab needs from lab 01's `DatabasePool` (duck typing, no import)."""

    def acquire(self, *, timeout: float | None = None) -> Any: ...

    def get_pool_stats(self) -> dict[str, int]: ...


class ConnectionHealthMonitor:
    """Checks the pool every `check_interval` seconds; each check gives up after `timeout`."""

    def __init__(self, pool: Pool, check_interval: float = 30.0, timeout: float = 5.0) -> None:
        self.pool = pool
        self.check_interval = check_interval
        self.timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._status: dict[str, Any] = {
            "status": "unknown", "last_check": None, "response_time": None,
            "error": None, "consecutive_failures": 0,
        }

    async def _ping(self) -> None:
        async with self.pool.acquire() as conn:
            try:
                await conn.fetchval("SELECT 1")
            except asyncio.CancelledError:
                # Cut short (the check's timeout, or a stop): asyncpg would clean up by asking the
                # server to cancel the query, which over a silent network path waits as long as
                # command_timeout, and the timeout would not hold. A connection that did not
                # answer in time is not worth that: close it, the pool opens a fresh one.
                conn.terminate()
                raise

    async def check_health(self) -> dict[str, Any]:
        """Run one check now, record it, and return `get_health_status()`.

        Never raises (except CancelledError): a failure becomes status "unhealthy"
        with the reason in `error`.
        """
        # BEGIN SOLUTION
        started = time.perf_counter()
        error: str | None = None
        try:
            # One deadline for acquire + query: waiting for a free connection
            # counts too, since that is what a request would wait for. Not wait_for:
            # on Python 3.11 it drops a stop that arrives as the ping ends (tutorial 04).
            async with asyncio.timeout(self.timeout):
                await self._ping()
        except TimeoutError:
            error = f"timed out after {self.timeout:g} s: pool exhausted or server not responding"
        except Exception as exc:  # noqa: BLE001 - any failure is a health result, not a crash
            error = f"{type(exc).__name__}: {exc}"
        failures = 0 if error is None else self._status["consecutive_failures"] + 1
        self._status = {
            "status": "healthy" if error is None else "unhealthy",
            "last_check": datetime.now(UTC),
            "response_time": time.perf_counter() - started,
            "error": error,
            "consecutive_failures": failures,
        }
        return self.get_health_status()
        # END SOLUTION

    async def _monitor_loop(self) -> None:
        # check_health() never raises, so one failed check cannot end the loop;
        # CancelledError (a BaseException) from stop_monitoring() does.
        while True:
            await self.check_health()
            await asyncio.sleep(self.check_interval)

    async def start_monitoring(self) -> None:
        """Start the background loop; does nothing if it is already running."""
        # BEGIN SOLUTION
        if self._task is not None and not self._task.done():
            return
        # Keep the reference: the event loop holds tasks only weakly, so an
        # unreferenced task can be garbage-collected in the middle of its work.
        self._task = asyncio.create_task(self._monitor_loop(), name="pglab-health-monitor")
        # END SOLUTION

    async def stop_monitoring(self) -> None:
        """Cancel the loop and wait until it has really finished."""
        # BEGIN SOLUTION
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # Wait until it has finished its cleanup (else it is still pending when the
        # caller goes on and closes the pool). asyncio.wait() returns without raising
        # the task's CancelledError, yet a cancel of *our caller* still reaches us;
        # `with suppress(CancelledError): await task` would swallow both.
        await asyncio.wait([task])
        # END SOLUTION

    def get_health_status(self) -> dict[str, Any]:
        """The last check plus the pool's current `pool_stats` (status "unknown" before any)."""
        # BEGIN SOLUTION
        return {**self._status, "pool_stats": self.pool.get_pool_stats()}
        # END SOLUTION

    def is_healthy(self) -> bool:
        """True when the last check succeeded."""
        # BEGIN SOLUTION
        return self._status["status"] == "healthy"
        # END SOLUTION
