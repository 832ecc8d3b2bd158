"""Server-side view of a pool: count and terminate backends by `application_name`, or by database.

Used by the checks and the failure drills. Each call opens one short-lived admin
connection, so it works whatever state the pool under test is in.
"""

from __future__ import annotations

import asyncpg


async def _admin(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings={"application_name": "pglab-admin"}, timeout=10)


async def count_backends(dsn: str, application_name: str, *, state: str | None = None) -> int:
    """Server backends of this application (optionally only those in `state`, e.g. 'idle')."""
    conn = await _admin(dsn)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = $1 AND ($2::text IS NULL OR state = $2)",
            application_name, state,
        )
    finally:
        await conn.close()


async def database_backends(dsn: str, database: str) -> int:
    """Client backends connected to `database`, but this one: a pool's, on a database of its own."""
    conn = await _admin(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                                   "AND pid <> pg_backend_pid() AND backend_type = 'client backend'", database)
    finally:
        await conn.close()


async def backend_pids(dsn: str, application_name: str) -> list[int]:
    """PIDs of this application's backends."""
    conn = await _admin(dsn)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", application_name)
        return [row["pid"] for row in rows]
    finally:
        await conn.close()


async def terminate_backends(dsn: str, application_name: str) -> int:
    """`pg_terminate_backend` every backend of this application; how many were killed."""
    conn = await _admin(dsn)
    try:
        return await conn.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1 AND pid <> pg_backend_pid()",
            application_name,
        )
    finally:
        await conn.close()
