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
    # BEGIN SOLUTION
    pool = await asyncpg.create_pool(
        dsn, min_size=req.min_size, max_size=req.max_size,
        # asyncpg's only lifetime is idle time; max_queries would bound a busy one by use.
        max_inactive_connection_lifetime=req.max_idle,
        # Named prepared statements do not survive a transaction-mode PgBouncer.
        statement_cache_size=0 if req.behind_pgbouncer else 100,
    )
    # asyncpg has no pool-wide acquire timeout: acquire() waits forever unless told.
    return Opened("asyncpg.Pool", lambda: pool.acquire(timeout=req.acquire_timeout),
                  lambda conn, sql: conn.fetchval(sql), pool.close)
    # END SOLUTION


async def _psycopg_scalar(conn: Any, sql: str) -> Any:
    cursor = await conn.execute(sql)
    row = await cursor.fetchone() if cursor.description else None
    return row[0] if row else None


async def open_psycopg(dsn: str, req: Requirements) -> Opened:
    """psycopg_pool.AsyncConnectionPool: every requirement has a setting; validation is opt-in."""
    # BEGIN SOLUTION
    pool = AsyncConnectionPool(
        dsn, min_size=req.min_size, max_size=req.max_size, timeout=req.acquire_timeout,
        max_lifetime=req.max_lifetime, max_idle=req.max_idle,
        # Without `check`, a connection whose server went away is lent and fails the borrower.
        check=AsyncConnectionPool.check_connection,
        # autocommit: no implicit BEGIN/COMMIT around every query; prepare_threshold=None
        # turns psycopg's server-side prepared statements off for PgBouncer.
        kwargs={"autocommit": True, **({"prepare_threshold": None} if req.behind_pgbouncer else {})},
        open=False,
    )
    await pool.open(wait=True)  # the constructor must not open: it cannot await
    return Opened("psycopg_pool", pool.connection, _psycopg_scalar, pool.close)
    # END SOLUTION


async def open_sqlalchemy(dsn: str, req: Requirements) -> Opened:
    """SQLAlchemy's async engine over asyncpg (AsyncAdaptedQueuePool, or NullPool behind PgBouncer)."""
    # BEGIN SOLUTION
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    if req.behind_pgbouncer:
        # SQLAlchemy's advice: let PgBouncer pool, and turn both statement caches off.
        engine = create_async_engine(url, poolclass=NullPool, connect_args={
            "statement_cache_size": 0, "prepared_statement_cache_size": 0})
    else:
        engine = create_async_engine(
            url, pool_size=req.min_size, max_overflow=req.max_size - req.min_size,
            pool_timeout=req.acquire_timeout, pool_recycle=req.max_lifetime,
            pool_pre_ping=True,  # a cheap ping at checkout: never lend a dead connection
            pool_reset_on_return="rollback",  # the default, said out loud
        )

    async def scalar(conn: Any, sql: str) -> Any:
        result = await conn.execute(text(sql))
        return result.scalar() if result.returns_rows else None

    return Opened("SQLAlchemy async", engine.connect, scalar, engine.dispose)
    # END SOLUTION


async def open_course_pool(dsn: str, req: Requirements, lab09: ModuleType) -> Opened:
    """Lab 09's ConnectionPool (the module is passed in: labs never import each other)."""
    # BEGIN SOLUTION
    config = lab09.PoolConfig(min_size=req.min_size, max_size=req.max_size, acquire_timeout=req.acquire_timeout,
                              max_lifetime=req.max_lifetime, max_idle_time=req.max_idle,
                              # idle connections are closed by the clean-up cycle: run it often enough
                              cleanup_interval=min(60.0, req.max_idle))
    cache = 0 if req.behind_pgbouncer else 100

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(dsn, statement_cache_size=cache)

    pool = lab09.ConnectionPool(connect, config)
    await pool.start()
    return Opened("ConnectionPool (lab 09)", pool.connection, lambda conn, sql: conn.fetchval(sql), pool.close)
    # END SOLUTION
