# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 06`. (Generated from solutions/lab06_pool_sizing.py by `pglab build-labs`.)
"""Lab 06: pool sizing from Little's law, and HikariCP's rule of thumb.

A connection is busy for as long as a query runs on it. Little's law says how
many are busy on average: arrival rate x time in the database. A sizing rule
that only looks at requests per second ignores half of that product: 100 req/s
of 2 ms queries keep fewer than one connection busy; of 200 ms queries, twenty.
"""

from __future__ import annotations

import math
import os

# min_size as a fraction of max_size: enough warm connections for the usual load,
# so a burst does not pay for connection set-up, without pinning idle backends.
MIN_SIZE_FRACTION = 0.25


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):  # `not (x > 0)` also rejects NaN
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def busy_connections(requests_per_second: float, avg_query_time_ms: float) -> float:
    """Little's law, L = lambda x W: connections busy on average (time converted to seconds)."""
    raise NotImplementedError("TODO: implement busy_connections()")


def calculate_optimal_pool_size(
    requests_per_second: float, avg_query_time_ms: float, target_utilization: float = 0.8
) -> tuple[int, int]:
    """`(min_size, max_size)` for a load.

    max_size = ceil(busy connections / target_utilization): the pool runs at most
    `target_utilization` busy on average, headroom for bursts. min_size =
    ceil(max_size x MIN_SIZE_FRACTION). Both are at least 1. Raises ValueError for a
    non-positive rate or query time, or a utilization outside (0, 1].
    """
    raise NotImplementedError("TODO: implement calculate_optimal_pool_size()")


def hikari_pool_size(core_count: int | None = None, effective_spindle_count: int = 1) -> int:
    """HikariCP's starting point: core_count x 2 + effective_spindle_count.

    `core_count` defaults to the CPU count of this machine (it should be the
    database server's); spindles are 0 when the data fits in memory. Raises
    ValueError for core_count < 1 or a negative spindle count.
    """
    raise NotImplementedError("TODO: implement hikari_pool_size()")
