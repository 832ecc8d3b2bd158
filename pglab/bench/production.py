"""The pools you meet in production, side by side on one workload, and psycopg's pipeline.

`production_pools`: asyncpg.Pool, psycopg_pool, SQLAlchemy's async engine and lab 09's
pool, each configured by lab 15's reference `open_*` to the same size, run `SELECT 1`
from the same number of tasks in interleaved rounds. Besides throughput and latency
percentiles, each row has the fairness of the tasks' shares (Jain's index, 1.0 = every
task completed as many operations as every other) and the spread of per-task counts.

`pipeline`: ten independent queries on ONE connection, sent one by one, through a pool
concurrently, or in psycopg's pipeline mode (one round trip for all ten:
https://www.psycopg.org/psycopg3/docs/advanced/pipeline.html).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import asyncpg

from .common import QUERY, Context, comparison, create_pool, solution
from .harness import Op, compare

BATCH = 10  # independent queries in one pipeline batch


def fairness(counts: list[int]) -> dict[str, float]:
    """Jain's index (sum x)^2 / (n sum x^2) and the min/max share of the tasks' counts."""
    if not counts or not any(counts):
        return {"jain_fairness": 0.0, "min_over_max_share": 0.0}
    jain = sum(counts) ** 2 / (len(counts) * sum(c * c for c in counts))
    return {"jain_fairness": round(jain, 4), "min_over_max_share": round(min(counts) / max(counts), 3)}


def counted(op: Op, counts: Counter[int]) -> Op:
    """`op`, counting completions per task (each measuring loop is one task)."""

    async def run() -> None:
        await op()
        counts[id(asyncio.current_task())] += 1

    return run


def production_pools(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    lab15, lab09 = solution("lab15_production_pools"), solution("lab09_connection_pool")
    req = lab15.Requirements(min_size=s.pool_size, max_size=s.pool_size, acquire_timeout=30.0)
    openers = {"asyncpg.Pool": lambda: lab15.open_asyncpg(ctx.dsn, req),
               "psycopg_pool": lambda: lab15.open_psycopg(ctx.dsn, req),
               "SQLAlchemy async": lambda: lab15.open_sqlalchemy(ctx.dsn, req),
               "ConnectionPool (lab 09)": lambda: lab15.open_course_pool(ctx.dsn, req, lab09)}
    counts = {name: Counter[int]() for name in openers}

    async def main() -> dict[str, Any]:
        pools = {name: await open_() for name, open_ in openers.items()}
        try:
            ops = {name: counted(_borrow_op(pool), counts[name]) for name, pool in pools.items()}
            return await compare(ops, tasks=s.tasks, settings=s, progress=ctx.progress)
        finally:
            for pool in pools.values():
                await pool.close()

    params = {"tasks": s.tasks, "pool_size": s.pool_size, "query": QUERY}
    rows = {name: {**m.row(**params), **fairness(list(counts[name].values()))}
            for name, m in ctx.run(main()).items()}
    return {"production_pools": comparison(
        rows, ["ConnectionPool (lab 09)", "psycopg_pool", "SQLAlchemy async"], "asyncpg.Pool",
        "four pools configured by lab 15 to one size / asyncpg.Pool; jain_fairness per task")}


def _borrow_op(pool: Any) -> Op:
    async def op() -> None:
        async with pool.borrow() as conn:
            await pool.scalar(conn, QUERY)

    return op


def pipeline(ctx: Context) -> dict[str, Any]:
    import psycopg

    s = ctx.settings

    async def main() -> dict[str, Any]:
        one = await asyncpg.connect(ctx.dsn)
        pool = await create_pool(ctx.dsn, BATCH)
        piped = await psycopg.AsyncConnection.connect(ctx.dsn, autocommit=True)
        try:
            async def sequential() -> None:
                for _ in range(BATCH):
                    await one.fetchval(QUERY)

            async def concurrent() -> None:
                async def borrow() -> None:
                    async with pool.acquire() as conn:
                        await conn.fetchval(QUERY)

                await asyncio.gather(*(borrow() for _ in range(BATCH)))

            async def pipelined() -> None:
                async with piped.pipeline():
                    cursors = [await piped.execute(QUERY) for _ in range(BATCH)]
                for cursor in cursors:
                    await cursor.fetchone()

            ops = {"one connection, one query after another": sequential,
                   f"pool of {BATCH}, all at once": concurrent,
                   "one psycopg connection, pipeline mode": pipelined}
            return await compare(ops, tasks=1, settings=s, progress=ctx.progress)
        finally:
            await one.close()
            await pool.close()
            await piped.close()

    rows = {name: m.row(batch=BATCH, query=QUERY) for name, m in ctx.run(main()).items()}
    return {"pipeline": comparison(
        rows, ["one psycopg connection, pipeline mode", f"pool of {BATCH}, all at once"],
        "one connection, one query after another",
        f"latency of a batch of {BATCH} independent queries (batches/s as ops_per_s) / sequential")}
