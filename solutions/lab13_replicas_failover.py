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
    # BEGIN SOLUTION
    if target_session_attrs not in SESSION_ATTRS:
        raise ValueError(f"target_session_attrs must be one of {', '.join(SESSION_ATTRS)}; "
                         f"got {target_session_attrs!r}")
    if not dsns:
        raise ValueError("multi_host_dsn() needs at least one DSN, e.g. [primary_dsn, standby_dsn]")
    first = urlsplit(dsns[0])
    # Every host keeps its own port: the servers of a pair often share a host.
    hosts = ",".join(f"{urlsplit(dsn).hostname}:{urlsplit(dsn).port or 5432}" for dsn in dsns)
    credentials = first.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{hosts}" if credentials else hosts
    return urlunsplit((first.scheme, netloc, first.path, f"target_session_attrs={target_session_attrs}", ""))
    # END SOLUTION


async def replay_lag_bytes(primary: asyncpg.Connection, standby: asyncpg.Connection) -> int:
    """WAL bytes written on the primary that the standby has not replayed yet (0 when caught up)."""
    # BEGIN SOLUTION
    # Bytes, not time: now() - pg_last_xact_replay_timestamp() grows on an idle primary
    # although nothing is missing. Replay, not receive: a row is readable once replayed.
    written = await primary.fetchval("SELECT pg_current_wal_lsn()::text")
    missing = await standby.fetchval("SELECT pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn())", written)
    return max(0, int(missing))
    # END SOLUTION


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
        # BEGIN SOLUTION
        self.primary = await asyncpg.create_pool(self.primary_dsn, **self.pool_options)
        self.standby = await asyncpg.create_pool(self.standby_dsn, **self.pool_options)
        # END SOLUTION

    async def close(self) -> None:
        """Close both pools; safe to call twice."""
        # BEGIN SOLUTION
        for pool in (self.primary, self.standby):
            if pool is not None:
                await pool.close()
        self.primary = self.standby = None
        # END SOLUTION

    async def write(self, query: str, *args: Any) -> str:
        """Run a write on the primary; return the LSN a reader must wait for to see it."""
        # BEGIN SOLUTION
        assert self.primary is not None, "call open() first"
        async with self.primary.acquire() as conn:
            await conn.execute(query, *args)
            # Asked after the commit, so the position is at or past the commit record.
            return str(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))
        # END SOLUTION

    async def read(self, query: str, *args: Any, after: str | None = None) -> list[asyncpg.Record]:
        """Rows from the standby; with `after` (a write's LSN), only once the standby has replayed it.

        Past `max_wait` the read goes to the primary instead (counted in `fallbacks`).
        """
        # BEGIN SOLUTION
        assert self.primary is not None and self.standby is not None, "call open() first"
        async with self.standby.acquire() as conn:
            if after is None or await self._replayed(conn, after):
                return await conn.fetch(query, *args)
        # The standby connection is back in its pool before we borrow from the primary.
        self.fallbacks += 1
        async with self.primary.acquire() as conn:
            return await conn.fetch(query, *args)
        # END SOLUTION

    async def _replayed(self, standby: asyncpg.Connection, lsn: str) -> bool:
        """Poll the standby every 10 ms or so until it has replayed `lsn`; False past `max_wait`."""
        # BEGIN SOLUTION
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while True:
            # Compared as pg_lsn on the server: as text, '0/9' > '0/10'.
            if await standby.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        # END SOLUTION


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may succeed: a lost or refused connection, a failover, a recovery conflict."""
    # BEGIN SOLUTION
    return isinstance(exc, (
        OSError,  # connection refused while the old primary is gone (TimeoutError is one too)
        asyncpg.PostgresConnectionError,  # the connection died under the query
        asyncpg.CannotConnectNowError,  # the server is starting up or shutting down
        asyncpg.AdminShutdownError,
        asyncpg.TargetServerAttributeNotMatched,  # no host is writable yet: the standby is not promoted
        asyncpg.ReadOnlySQLTransactionError,  # a connection still on a server that became read-only
        asyncpg.SerializationError,  # includes "canceling statement due to conflict with recovery"
    ))
    # END SOLUTION


async def retry(operation: Callable[[], Awaitable[T]], *, deadline: float, base_delay: float = 0.05) -> T:
    """Await `operation()` until it succeeds, retrying transient errors for `deadline` seconds.

    After the n-th failure it sleeps a random time between d/2 and d, d = min(base_delay * 2**n,
    1 s, time left): lab 11's schedule. Other errors propagate at once; past the deadline the
    last transient error does.
    """
    # BEGIN SOLUTION
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    attempt = 0
    while True:
        try:
            return await operation()
        except Exception as exc:  # CancelledError is not an Exception: cancellation passes through
            if not is_transient(exc) or loop.time() >= give_up:
                raise
        attempt += 1
        # Growing, jittered pauses: many clients retrying in step would hammer the new primary.
        delay = min(base_delay * 2 ** attempt, 1.0) * random.uniform(0.5, 1.0)
        await asyncio.sleep(max(0.0, min(delay, give_up - loop.time())))
    # END SOLUTION
