# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 07`. (Generated from solutions/lab07_performance_monitor.py by `pglab build-labs`.)
"""Lab 07: `PoolPerformanceMonitor`: pool and system metrics without stalling the event loop.

Everything here runs on the event loop that also serves the application, so no
call may block it: `psutil.cpu_percent(interval=1)` sleeps a whole second inside
the coroutine and freezes every request for that second. `interval=None` returns
at once the system CPU use since the previous `cpu_percent()` call *in the same
thread*, by whoever made it: psutil keeps one last sample per thread, so another
caller on the loop's thread shortens our window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from statistics import fmean
from typing import Any, Protocol

import psutil

log = logging.getLogger(__name__)

# Rules of the report: each threshold applies to an average over the recent window.
# The values are the course's choice of warning levels, not a standard.
NEAR_MAX_UTILIZATION = 0.8  # average in_use / max_size at or above this: the pool is near its max
UNDER_USED_UTILIZATION = 0.2  # below this: the pool holds connections nobody uses
HIGH_CPU_PERCENT = 80.0
HIGH_MEMORY_PERCENT = 85.0
RECOMMENDATIONS = {
    "near_max": "Pool is near max_size: raise max_size, or shorten the queries that hold connections.",
    "high_cpu": "High CPU use: profile the hot path or scale out before adding connections.",
    "high_memory": "High memory use: look for leaks, e.g. large result sets kept in memory.",
    "under_used": "Pool is mostly idle: lower min_size to give server backends back.",
}


class PoolMetricsSource(Protocol):
    """What the monitor needs from lab 05's `AdvancedPoolManager`."""

    async def get_pool_metrics(self) -> dict[str, Any]: ...


class PoolPerformanceMonitor:
    """Samples pool and system metrics every `collection_interval` s into a bounded history.

    A sample is `{"timestamp": float, "pool": pool_manager.get_pool_metrics(),
    "system": {"cpu_percent", "memory_percent", "process_rss_bytes",
    "disk_read_bytes", "disk_write_bytes"}}`.
    """

    def __init__(self, pool_manager: PoolMetricsSource, collection_interval: float = 60.0,
                 history_size: int = 100, report_window: int = 10) -> None:
        self.pool_manager = pool_manager
        self.collection_interval = collection_interval
        self.report_window = report_window
        self._process = psutil.Process()
        self._task: asyncio.Task[None] | None = None
        raise NotImplementedError("TODO: create the bounded `metrics_history` and prime the CPU counter")

    async def collect_metrics(self) -> dict[str, Any]:
        """Take one sample, append it to `metrics_history` and return it. Never blocks the loop."""
        raise NotImplementedError("TODO: implement collect_metrics()")

    async def start_monitoring(self) -> None:
        """Start the background collection task; does nothing if it is already running."""
        raise NotImplementedError("TODO: implement start_monitoring()")

    async def stop_monitoring(self) -> None:
        """Cancel the collection task and wait until it has stopped."""
        raise NotImplementedError("TODO: implement stop_monitoring()")

    async def _run(self) -> None:
        while True:
            try:
                await self.collect_metrics()
            except Exception:  # one failed sample must not end the monitoring
                log.exception("collecting pool metrics failed")
            await asyncio.sleep(self.collection_interval)

    def get_performance_report(self) -> dict[str, Any]:
        """Averages over the last `report_window` samples, pool utilisation (average
        in_use / max_size) and the list of recommendations (texts from RECOMMENDATIONS)."""
        raise NotImplementedError("TODO: implement get_performance_report()")
