# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 13`. (Generated from solutions/lab13_replicas_failover.py by `pglab build-labs`.)
"""Lab 13: read replicas and failover with asyncpg.

A primary takes the writes, a streaming standby serves the reads. You write:

- `multi_host_dsn()`: one DSN naming every server, so a pool finds the primary itself
  (`target_session_attrs`), before and after a failover;
- `replay_lag_bytes()`: how far the standby is behind, measured in WAL bytes;
- `ReplicaRouter`: writes to the primary, reads to the standby, and read-your-writes:
  a read after a write waits until the standby has replayed that write, or goes to the
  primary past a bound;
- `is_transient()` and `retry()`: what to retry during a failover or a recovery
  conflict, and for how long.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

T = TypeVar("T")
# What asyncpg accepts for target_session_attrs (libpq's names).
SESSION_ATTRS = ("any", "primary", "standby", "read-write", "read-only", "prefer-standby")


def multi_host_dsn(dsns: Sequence[str], target_session_attrs: str = "read-write") -> str:
    """One URI with the hosts of all `dsns`, in order, and `target_session_attrs`.

    User, password and database come from the first DSN (a standby has the primary's roles).
    """
    raise NotImplementedError("TODO: implement multi_host_dsn()")


async def replay_lag_bytes(primary: asyncpg.Connection, standby: asyncpg.Connection) -> int:
    """WAL bytes written on the primary that the standby has not replayed yet (0 when caught up)."""
    raise NotImplementedError("TODO: implement replay_lag_bytes()")


class ReplicaRouter:
    """Writes on the primary, reads on the standby, and reads that see your own writes."""

    def __init__(self, primary_dsn: str, standby_dsn: str, *, max_wait: float = 1.0, **pool_options: Any) -> None:
        self.primary_dsn = primary_dsn
        self.standby_dsn = standby_dsn
        self.max_wait = max_wait  # seconds a read waits for the standby before asking the primary
        self.pool_options = pool_options
        self.primary: asyncpg.Pool | None = None
        self.standby: asyncpg.Pool | None = None
        self.fallbacks = 0  # reads the primary served because the standby lagged

    async def open(self) -> None:
        """Create one pool per server."""
        raise NotImplementedError("TODO: implement open()")

    async def close(self) -> None:
        """Close both pools; safe to call twice."""
        raise NotImplementedError("TODO: implement close()")

    async def write(self, query: str, *args: Any) -> str:
        """Run a write on the primary; return the LSN a reader must wait for to see it."""
        raise NotImplementedError("TODO: implement write()")

    async def read(self, query: str, *args: Any, after: str | None = None) -> list[asyncpg.Record]:
        """Rows from the standby; with `after` (a write's LSN), only once the standby has replayed it.

        Past `max_wait` the read goes to the primary instead (counted in `fallbacks`).
        """
        raise NotImplementedError("TODO: implement read()")

    async def _replayed(self, standby: asyncpg.Connection, lsn: str) -> bool:
        """Poll the standby every 10 ms or so until it has replayed `lsn`; False past `max_wait`."""
        raise NotImplementedError("TODO: implement _replayed()")


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may succeed: a lost or refused connection, a failover, a recovery conflict."""
    raise NotImplementedError("TODO: implement is_transient()")


async def retry(operation: Callable[[], Awaitable[T]], *, deadline: float, base_delay: float = 0.05) -> T:
    """Await `operation()` until it succeeds, retrying transient errors for `deadline` seconds.

    After the n-th failure it sleeps a random time between d/2 and d, d = min(base_delay * 2**n,
    1 s, time left): lab 11's schedule. Other errors propagate at once; past the deadline the
    last transient error does.
    """
    raise NotImplementedError("TODO: implement retry()")
