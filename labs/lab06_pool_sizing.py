# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 06`. (Generated from solutions/lab06_pool_sizing.py by `pglab build-labs`.)
"""Lab 06: pool sizing from Little's law, and HikariCP's rule of thumb.

A connection is busy for as long as a query runs on it. Little's law says how
many are busy on average: arrival rate x time in the database. A sizing rule
that only looks at requests per second ignores half of that product: 100 req/s
of 2 ms queries keep fewer than one connection busy; of 200 ms queries, twenty.

HikariCP's formula (https://github.com/brettwooldridge/HikariCP/wiki/About-Pool-Sizing)
answers another question: how many connections the *database server* can keep
busy at once, from its physical cores (not hyper-threads) and disks. That number
is a total for the database, shared by every pool: divide it across application
instances x worker processes.
"""

from __future__ import annotations

import math
import os

import psutil

# The course's choices, not standards: keep average use at 80 % of max_size (room
# for bursts before requests queue), and warm min_size at a quarter of max_size
# (the usual load finds a connection ready, without pinning idle backends).
TARGET_UTILIZATION = 0.8
MIN_SIZE_FRACTION = 0.25


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):  # `not (x > 0)` also rejects NaN
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def busy_connections(requests_per_second: float, avg_query_time_ms: float) -> float:
    """Little's law, L = lambda x W: connections busy on average (time converted to seconds)."""
    raise NotImplementedError("TODO: implement busy_connections()")


def calculate_optimal_pool_size(
    requests_per_second: float, avg_query_time_ms: float, target_utilization: float = TARGET_UTILIZATION
) -> tuple[int, int]:
    """`(min_size, max_size)` for a load.

    max_size = ceil(busy connections / target_utilization): the pool runs at most
    `target_utilization` busy on average, headroom for bursts. min_size =
    ceil(max_size x MIN_SIZE_FRACTION). Both are at least 1. Raises ValueError for a
    non-positive rate or query time, or a utilization outside (0, 1].
    `avg_query_time_ms` is the time a connection is held, waits inside the database
    (locks, I/O) included: a lock wait holds the connection just as long.
    """
    raise NotImplementedError("TODO: implement calculate_optimal_pool_size()")


def hikari_pool_size(core_count: int | None = None, effective_spindle_count: int = 1) -> int:
    """HikariCP's starting point for the whole database: core_count x 2 + effective_spindle_count.

    `core_count` is the database server's physical cores (hyper-threads do not
    count); it defaults to this machine's, right when the database runs here (where
    psutil cannot tell the physical cores, `os.cpu_count()`, else 1).
    Spindles are 0 when the data fits in memory. Raises ValueError for
    core_count < 1 or a negative spindle count.
    """
    raise NotImplementedError("TODO: implement hikari_pool_size()")


def per_process_pool_size(total_connections: int, instances: int, workers_per_instance: int = 1) -> int:
    """max_size of each process's pool when `total_connections` (e.g. hikari_pool_size())
    is shared by `instances` x `workers_per_instance` processes, each with its own pool.

    Rounds down, so the processes together stay within the total; at least 1.
    Raises ValueError for a count below 1.
    """
    raise NotImplementedError("TODO: implement per_process_pool_size()")
