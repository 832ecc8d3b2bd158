# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 15`. (Generated from solutions/lab15_production_pools.py by `pglab build-labs`.)
"""Lab 15: the pools you will meet in production, configured to one set of requirements.

asyncpg.Pool, psycopg_pool's AsyncConnectionPool, SQLAlchemy's async engine and the
pool you wrote in lab 09 each spell the same needs differently, and each lacks
something the others have. You write one `open_*` function per pool that meets
`Requirements` as closely as that pool allows; the checks and the notebook run the
same drills (pglab.pool_drills) against all four.

Sources: asyncpg https://magicstack.github.io/asyncpg/current/api/index.html#connection-pools,
psycopg_pool https://www.psycopg.org/psycopg3/docs/api/pool.html, SQLAlchemy
https://docs.sqlalchemy.org/en/20/core/pooling.html and its asyncpg dialect notes
https://docs.sqlalchemy.org/en/20/dialects/postgresql.html#module-sqlalchemy.dialects.postgresql.asyncpg
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import asyncpg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool


@dataclass(frozen=True)
class Requirements:
    """What the service needs from its pool, whatever the library (seconds for times)."""

    min_size: int = 2
    max_size: int = 5
    acquire_timeout: float = 2.0  # how long a borrower may wait before it is told "no"
    max_lifetime: float = 1800.0  # replace a connection this old, even a busy one
    max_idle: float = 300.0  # close an idle connection above min_size after this long
    behind_pgbouncer: bool = False  # transaction-mode PgBouncer, prepared statements off


@dataclass(frozen=True)
class Opened:
    """One opened pool behind one small interface, so the drills treat all four alike."""

    name: str
    borrow: Callable[[], contextlib.AbstractAsyncContextManager[Any]]  # yields a connection
    scalar: Callable[[Any, str], Awaitable[Any]]  # run one statement, return the first value
    close: Callable[[], Awaitable[None]]


async def open_asyncpg(dsn: str, req: Requirements) -> Opened:
    """asyncpg.Pool: note what it has no setting for, and make up for it in `borrow`."""
    raise NotImplementedError("TODO: implement open_asyncpg()")


async def _psycopg_scalar(conn: Any, sql: str) -> Any:
    cursor = await conn.execute(sql)
    row = await cursor.fetchone() if cursor.description else None
    return row[0] if row else None


async def open_psycopg(dsn: str, req: Requirements) -> Opened:
    """psycopg_pool.AsyncConnectionPool: every requirement has a setting; validation is opt-in."""
    raise NotImplementedError("TODO: implement open_psycopg()")


async def open_sqlalchemy(dsn: str, req: Requirements) -> Opened:
    """SQLAlchemy's async engine over asyncpg (AsyncAdaptedQueuePool, or NullPool behind PgBouncer)."""
    raise NotImplementedError("TODO: implement open_sqlalchemy()")


async def open_course_pool(dsn: str, req: Requirements, lab09: ModuleType) -> Opened:
    """Lab 09's ConnectionPool (the module is passed in: labs never import each other)."""
    raise NotImplementedError("TODO: implement open_course_pool()")
