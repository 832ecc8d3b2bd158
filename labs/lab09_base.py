# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 09`. (Generated from solutions/lab09_base.py by `pglab build-labs`.)
"""Lab 09, part 1: what a pool is made of, as psycopg_pool keeps it in base.py: its errors, its
validated configuration and the record it keeps per connection. The pool itself is part 2,
lab09_connection_pool.py, which imports these."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, fields
from typing import Generic, TypeVar

C = TypeVar("C")  # any connection with is_closed(), is_in_transaction(), execute() and close()
MAX_RECONNECT_DELAY = 10.0  # seconds: the longest pause between refills while the server is down
COUNTERS = ("requests_num", "requests_wait_ms", "requests_errors", "connections_num",
            "connections_errors", "connections_lost", "returns_bad")


class PoolTimeoutError(TimeoutError):
    """No connection could be lent within the acquire timeout."""


class PoolClosedError(RuntimeError):
    """The pool is closed: no more connections are handed out."""


@dataclass(frozen=True)
class PoolConfig:
    """Sizes and times (seconds) of a pool; a bad value raises ValueError naming the field."""

    max_size: int = 10
    min_size: int = 1
    max_idle_time: float = 300.0
    acquire_timeout: float = 30.0
    max_lifetime: float = 3600.0  # each connection retires up to 10 % earlier (jitter)
    cleanup_interval: float = 60.0
    reconnect_delay: float = 0.5  # first pause after a failed refill; doubles up to MAX_RECONNECT_DELAY

    def __post_init__(self) -> None:
        raise NotImplementedError("TODO: implement __post_init__()")

    def jittered_lifetime(self) -> float:
        """A new connection's lifetime: max_lifetime shortened by up to 10 % at random."""
        raise NotImplementedError("TODO: implement jittered_lifetime()")


@dataclass(eq=False)  # identity equality and hash: two wrappers are never "the same" connection
class PooledConnection(Generic[C]):
    """A connection plus the bookkeeping the pool needs."""

    connection: C
    lifetime: float = float("inf")  # seconds this connection may live
    created_at: float = field(default_factory=time.monotonic)
    last_used_at: float = field(default_factory=time.monotonic)

    def is_expired(self) -> bool:
        """True once the connection has lived `lifetime` seconds."""
        raise NotImplementedError("TODO: implement is_expired()")

    def idle_time(self) -> float:
        """Seconds since the connection was opened or last given back."""
        raise NotImplementedError("TODO: implement idle_time()")
