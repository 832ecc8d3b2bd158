# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 08`. (Generated from solutions/lab08_loop_aware_manager.py by `pglab build-labs`.)
"""Lab 08: `ConnectionPoolManager`, one pool per (configuration, event loop).

An asyncpg pool belongs to the event loop that created it: its connections, futures
and locks are bound to that loop. Code that runs several loops (a thread per loop,
`asyncio.run` called twice, test runners) needs one pool per loop, and must never
hand a dead loop's pool, a closed pool or a half-created one to anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import re
import threading
import weakref
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Generic, TypeVar
from urllib.parse import quote, unquote, urlsplit

P = TypeVar("P")


@dataclass(frozen=True)
class PostgresPoolConfig:
    """Where to connect and how big the pool is; the password never shows in repr()."""

    host: str
    port: int
    database: str
    user: str
    password: str = field(repr=False)
    min_size: int = 2
    max_size: int = 5
    command_timeout: float | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PostgresPoolConfig:
        """Build from `connection_string` (a postgresql:// URL) or from the fields."""
        raise NotImplementedError("TODO: implement from_dict()")

    def to_connection_string(self) -> str:
        """A URL asyncpg can parse, user, password and database percent-encoded."""
        raise NotImplementedError("TODO: implement to_connection_string()")

    def to_hash_key(self) -> str:
        """A stable key of every field; it does not reveal the password."""
        raise NotImplementedError("TODO: implement to_hash_key()")


@dataclass
class _Entry(Generic[P]):
    pool: P
    close: Callable[[P], Any] | None
    target: str  # safe to show: see _describe()


@dataclass
class _LoopPools(Generic[P]):
    """The pools of one event loop, and the locks that serialise their creation."""
    pools: dict[Hashable, _Entry[P]] = field(default_factory=dict)
    locks: dict[Hashable, asyncio.Lock] = field(default_factory=dict)


class ConnectionPoolManager(Generic[P]):
    """One pool per (config, running event loop), for asyncpg or any other client: the course's registry of pools."""

    def __init__(self) -> None:
        # Keyed by the loop object, held weakly: a new loop is never equal to a dead one,
        # even when it reuses the dead loop's id(), and a collected loop leaves the map.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPools[P]] = weakref.WeakKeyDictionary()
        self._registry_lock = threading.Lock()  # loops in other threads share the map

    async def get_pool(
        self,
        config: PostgresPoolConfig | Hashable,
        create_pool_func: Callable[[Any], Awaitable[P]],
        validate_pool_func: Callable[[P], Awaitable[bool]] | None = None,
        close_pool_func: Callable[[P], Any] | None = None,
    ) -> P:
        """The pool for `config` in the running loop, created on first use. A pool that was
        closed, or fails `validate_pool_func`, is replaced; a failed creation registers nothing."""
        raise NotImplementedError("TODO: implement get_pool()")

    async def remove_pool(self, config: PostgresPoolConfig | Hashable) -> bool:
        """Close and forget the running loop's pool for `config`; False if there was none."""
        raise NotImplementedError("TODO: implement remove_pool()")

    async def close_all(self) -> None:
        """Close the running loop's pools and forget those of closed loops, without
        touching them. Pools of other live loops are closed by calling this in their loop."""
        raise NotImplementedError("TODO: implement close_all()")

    def get_pool_count(self) -> int:
        """Pools registered, including those of closed loops not yet forgotten."""
        raise NotImplementedError("TODO: implement get_pool_count()")

    def get_pool_info(self) -> list[dict[str, Any]]:
        """One row per pool: its loop, pool type and target; never a password."""
        raise NotImplementedError("TODO: implement get_pool_info()")

    def _forget_closed_loops(self) -> None:
        # A closed loop cannot run pool.close(): anything scheduled on it raises "Event
        # loop is closed". Drop the references; the sockets close when collected.
        raise NotImplementedError("TODO: implement _forget_closed_loops()")


def _key(config: PostgresPoolConfig | Hashable) -> Hashable:
    return config.to_hash_key() if isinstance(config, PostgresPoolConfig) else config


def _describe(config: Any) -> str:
    """repr() of the config (PostgresPoolConfig hides its password), URL passwords masked."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", repr(config))


def _is_closed(pool: Any) -> bool:
    """asyncpg's `is_closing()`, httpx's `is_closed`, psycopg_pool's `closed`; False for others."""
    if callable(is_closing := getattr(pool, "is_closing", None)):
        return bool(is_closing())
    return bool(getattr(pool, "is_closed", False) or getattr(pool, "closed", False))


async def _is_valid(pool: Any, validate: Callable[[Any], Awaitable[bool]]) -> bool:
    try:
        return bool(await validate(pool))
    except Exception:  # a validator that cannot even run means the pool is broken
        return False


async def _close(entry: _Entry[Any]) -> None:
    """Close with `close_pool_func`, else the pool's own `aclose()` (httpx) or `close()`."""
    if entry.close is not None:
        result = entry.close(entry.pool)
    else:
        result = (getattr(entry.pool, "aclose", None) or entry.pool.close)()
    if inspect.isawaitable(result):
        await result
