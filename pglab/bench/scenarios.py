"""The scenarios of `pglab bench`, each a function of one run's context returning its results.

Every scenario that compares things measures them side by side (interleaved rounds,
same query, same concurrency, same number of server connections) and reports
`ratio` = ours / reference, so the ratio holds even when absolute numbers drift.
A lab solution that is missing or broken turns its scenario (or its variant) into
`{"skipped": reason}`; any other failure becomes `{"error": reason}`.
"""

from __future__ import annotations

import itertools
import os
import platform
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psutil

from .common import APP, QUERY, Context, Skip, comparison, create_pool, no_reset, pool_op, ratio, solution
from .harness import Measurement, Op, Progress, Settings, compare, measure, run_on, uvloop_available
from .production import pipeline, production_pools


# -- scenarios ---------------------------------------------------------------
def pooled_vs_unpooled(ctx: Context) -> dict[str, Any]:
    s = ctx.settings

    async def connect_per_op() -> None:
        conn = await asyncpg.connect(ctx.dsn, server_settings={"application_name": APP})
        try:
            await conn.fetchval(QUERY)
        finally:
            await conn.close()

    async def main() -> dict[str, Measurement]:
        pool = await create_pool(ctx.dsn, s.pool_size)
        try:
            # Same concurrency and the same number of server connections on both sides (the
            # pool's size): the only difference is reusing the connections.
            return await compare({"unpooled": connect_per_op, "pooled": pool_op(pool)},
                                 tasks=s.pool_size, settings=s, progress=ctx.progress)
        finally:
            await pool.close()

    m = ctx.run(main())
    unpooled = m["unpooled"].row(tasks=s.pool_size, query=QUERY,
                                 about="asyncpg.connect + SELECT 1 + close per operation")
    pooled = m["pooled"].row(tasks=s.pool_size, pool_size=s.pool_size, query=QUERY,
                             about="SELECT 1 through asyncpg.create_pool")
    return {"unpooled": unpooled, "pooled": {**pooled, "ratio": ratio(pooled, unpooled)}}


def overhead(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    lab01 = solution("lab01_database_pool")
    try:
        lab02: ModuleType | None = solution("lab02_pooled_database")
    except Skip as exc:
        lab02, lab02_skip = None, str(exc)

    async def main() -> dict[str, Any]:
        # The raw pool gets the very parameters DatabasePool passes, so the ratio is
        # the cost of the wrapper and nothing else.
        raw = await create_pool(ctx.dsn, s.pool_size, command_timeout=60.0,
                                server_settings=dict(lab01.SESSION_SETTINGS))
        course = lab01.DatabasePool()
        await course.initialize(ctx.dsn, min_size=s.pool_size, max_size=s.pool_size,
                                application_name=APP)
        ops: dict[str, Op] = {"asyncpg.Pool": pool_op(raw), "DatabasePool": pool_op(course)}
        if lab02 is not None:
            wrapped = lab02.PooledDatabase(course)

            async def via_pooled_database() -> None:
                async with wrapped.connection() as conn:
                    await conn.fetchval(QUERY)

            ops["PooledDatabase"] = via_pooled_database
        try:
            return await compare(ops, tasks=s.tasks, settings=s, progress=ctx.progress)
        finally:
            await raw.close()
            await course.close()

    params = {"tasks": s.tasks, "pool_size": s.pool_size, "query": QUERY}
    rows = {name: m.row(**params) for name, m in ctx.run(main()).items()}
    if lab02 is None:
        rows["PooledDatabase"] = {"skipped": lab02_skip}
    return {"overhead": comparison(
        rows, ["DatabasePool", "PooledDatabase"], "asyncpg.Pool",
        "course wrappers (labs 01, 02) / raw asyncpg.Pool, same settings")}


SAME_SEMANTICS = "asyncpg.Pool, no-op reset (lab 09's semantics)"


def from_scratch(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    pools: dict[str, Callable[[], Any]] = {}
    rows: dict[str, dict[str, Any]] = {}

    def factory() -> Any:
        return asyncpg.connect(ctx.dsn, server_settings={"application_name": APP})

    try:
        lab09 = solution("lab09_connection_pool")
        config = lab09.PoolConfig(min_size=s.pool_size, max_size=s.pool_size)
        pools["ConnectionPool (lab 09)"] = lambda: lab09.ConnectionPool(factory, config)
    except Skip as exc:
        rows["ConnectionPool (lab 09)"] = {"skipped": str(exc)}
    try:
        lab10 = solution("lab10_queue_pool")
        pools["QueuePool (lab 10)"] = lambda: lab10.QueuePool(factory, pool_size=s.pool_size,
                                                              max_overflow=0)
    except Skip as exc:
        rows["QueuePool (lab 10)"] = {"skipped": str(exc)}
    if not pools:
        return {"from_scratch": {"skipped": "; ".join(r["skipped"] for r in rows.values())}}

    async def main() -> dict[str, Measurement]:
        reference = await create_pool(ctx.dsn, s.pool_size)
        # asyncpg rolls an open transaction back before any reset runs: with a no-op reset
        # it does what lab 09 does on release, and nothing more.
        same_semantics = await create_pool(ctx.dsn, s.pool_size, reset=no_reset)
        ours = {name: make() for name, make in pools.items()}
        ops = {"asyncpg.Pool": pool_op(reference), SAME_SEMANTICS: pool_op(same_semantics)}
        ops.update({name: connection_op(pool) for name, pool in ours.items()})
        try:
            for pool in ours.values():
                if hasattr(pool, "start"):  # lab 09 opens min_size up front; lab 10 on demand
                    await pool.start()
            return await compare(ops, tasks=s.tasks, settings=s, progress=ctx.progress)
        finally:
            await reference.close()
            await same_semantics.close()
            for pool in ours.values():
                await pool.close()

    params = {"tasks": s.tasks, "pool_size": s.pool_size, "query": QUERY}
    rows.update({name: m.row(**params) for name, m in ctx.run(main()).items()})
    return {"from_scratch": comparison(
        rows, ["ConnectionPool (lab 09)"], "asyncpg.Pool",
        "pools written from scratch over asyncpg connections / asyncpg.Pool with its default "
        "reset")}


def connection_op(pool: Any) -> Op:
    """`SELECT 1` through a from-scratch pool's `async with pool.connection()`."""

    async def op() -> None:
        async with pool.connection() as conn:
            await conn.fetchval(QUERY)

    return op


def reset_cost(ctx: Context) -> dict[str, Any]:
    s = ctx.settings

    async def main() -> dict[str, Measurement]:
        default = await create_pool(ctx.dsn, s.pool_size)
        lean = await create_pool(ctx.dsn, s.pool_size, reset=no_reset)
        try:
            return await compare({"default reset": pool_op(default), "no-op reset": pool_op(lean)},
                                 tasks=s.tasks, settings=s, progress=ctx.progress)
        finally:
            await default.close()
            await lean.close()

    params = {"tasks": s.tasks, "pool_size": s.pool_size, "query": QUERY}
    rows = {name: m.row(**params) for name, m in ctx.run(main()).items()}
    return {"reset_cost": comparison(
        rows, ["no-op reset"], "default reset",
        "asyncpg.Pool(reset=no-op) / default reset (pg_advisory_unlock_all, CLOSE ALL, "
        "UNLISTEN *, RESET ALL: one extra round trip per release)")}


def pool_size_sweep(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    slow = f"SELECT pg_sleep({s.sweep_sleep_ms / 1000})"

    async def one_size(pool: asyncpg.Pool) -> tuple[Measurement, float]:
        counter = itertools.count()
        held = [0.0, 0]  # seconds a connection was borrowed (reset included), operations

        async def op() -> None:
            query = slow if next(counter) % s.sweep_sleep_every == 0 else QUERY
            conn = await pool.acquire()
            t0 = time.perf_counter()
            try:
                await conn.execute(query)
            finally:
                await pool.release(conn)
                held[0] += time.perf_counter() - t0
                held[1] += 1

        m = await measure(op, tasks=s.sweep_tasks, seconds=s.sweep_seconds, warmup=s.warmup)
        return m, held[0] / max(held[1], 1)

    async def main() -> list[dict[str, Any]]:
        rows = []
        for size in s.sweep_sizes:
            ctx.progress.step(f"pool size {size}")
            pool = await create_pool(ctx.dsn, size)
            try:
                m, hold = await one_size(pool)
            finally:
                await pool.close()
            rows.append(m.row(pool_size=size, tasks=s.sweep_tasks,
                              mean_hold_ms=round(hold * 1000, 3)))
        return rows

    rows = ctx.run(main())
    return {"pool_size_sweep": {"rows": rows, "formulas": lab06_marks(rows),
                                "workload": f"1 in {s.sweep_sleep_every} operations runs {slow}, "
                                            f"the others {QUERY}"}}


def lab06_marks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where lab 06's formulas put the pool size, from this sweep's own measurements.

    Little's law takes the best throughput measured and the time a connection is
    held with no queueing (pool size 1, where nothing competes for the event loop).
    """
    try:
        lab06 = solution("lab06_pool_sizing")
    except Skip as exc:
        return {"skipped": str(exc)}
    best = max(rows, key=lambda r: r["ops_per_s"])
    service_ms = rows[0]["mean_hold_ms"]
    low, high = lab06.calculate_optimal_pool_size(best["ops_per_s"], service_ms)
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return {"littles_law": {"min_size": low, "max_size": high,
                            "requests_per_second": best["ops_per_s"],
                            "avg_query_time_ms": service_ms, "target_utilization": 0.8},
            "hikari": {"size": lab06.hikari_pool_size(cores), "core_count": cores},
            "best_measured_size": best["pool_size"]}


def batch(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    table = f"pglab_bench_{uuid.uuid4().hex[:8]}"
    records = [(i, f"name {i}", i * 0.5) for i in range(s.batch_rows)]
    insert = f"INSERT INTO {table} (id, name, value) VALUES ($1, $2, $3)"
    repeats = 3  # the bulk methods take milliseconds: repeat them for a steadier number

    async def one_by_one(pool: asyncpg.Pool) -> Measurement:
        m = Measurement()
        t_start = time.perf_counter()
        for record in records:
            t0 = time.perf_counter()
            await pool.execute(insert, *record)
            m.latencies.append(time.perf_counter() - t0)
        m.seconds = time.perf_counter() - t_start
        return m

    async def bulk(pool: asyncpg.Pool, method: str) -> Measurement:
        m = Measurement()
        for _ in range(repeats):
            await pool.execute(f"TRUNCATE {table}")
            async with pool.acquire() as conn:
                t0 = time.perf_counter()
                if method == "executemany":
                    await conn.executemany(insert, records)
                else:
                    await conn.copy_records_to_table(table, records=records,
                                                     columns=["id", "name", "value"])
                m.latencies.append(time.perf_counter() - t0)
        m.seconds = sum(m.latencies)
        return m

    async def main() -> list[dict[str, Any]]:
        # Without this, each autocommitted INSERT waits for its own WAL flush to disk and
        # the row-at-a-time number measures the disk; here it measures round trips.
        pool = await create_pool(ctx.dsn, s.pool_size,
                                 server_settings={"synchronous_commit": "off"})
        try:
            await pool.execute(f"CREATE TABLE {table} (id int, name text, value float8)")
            ctx.progress.step(f"batch: {s.batch_rows:,} single INSERTs")
            out = [row_for_batch(await one_by_one(pool), "one INSERT per row", s.batch_rows,
                                 s.batch_rows)]
            for method in ("executemany", "copy_records_to_table"):
                ctx.progress.step(f"batch: {method}")
                m = await bulk(pool, method)
                out.append(row_for_batch(m, method, s.batch_rows * repeats, repeats))
            return out
        finally:
            await pool.execute(f"DROP TABLE IF EXISTS {table}")
            await pool.close()

    return {"batch": {"rows": ctx.run(main()), "synchronous_commit": "off",
                      "about": "rows per second; latency is per call"}}


def row_for_batch(m: Measurement, method: str, rows: int, calls: int) -> dict[str, Any]:
    row = m.row(method=method, rows=rows, calls=calls)
    row["ops_per_s"] = row["rows_per_s"] = round(rows / m.seconds, 1) if m.seconds else 0.0
    return row


def ceiling(ctx: Context) -> dict[str, Any]:
    from ..servers.embedded import EmbeddedServerError, binary

    s = ctx.settings
    try:
        binary("pgbench")
    except EmbeddedServerError as exc:
        raise Skip(f"no pgbench to measure the ceiling with: {exc}") from None
    rounds = ceiling_rounds(s)
    candidates = python_candidates(ctx)
    python = {name: Measurement() for name in candidates}
    pgbench: dict[str, list[dict[str, Any]]] = {"prepared": [], "simple": []}
    with tempfile.TemporaryDirectory(prefix="pglab-bench-") as tmp:
        for round_no in range(rounds):
            for name, (kind, make_op) in candidates.items():
                ctx.progress.step(f"ceiling: {name} (round {round_no + 1}/{rounds})")
                python[name].merge(run_on(kind, make_op(s.seconds / rounds)))
            for mode, runs in pgbench.items():
                ctx.progress.step(f"ceiling: pgbench -M {mode} (round {round_no + 1}/{rounds})")
                runs.append(run_pgbench(ctx.dsn, Path(tmp), mode, s.pool_size, s.seconds / rounds))
    params = {"tasks": s.tasks, "pool_size": s.pool_size, "query": QUERY}
    rows = {name: m.row(loop=candidates[name][0], **params) for name, m in python.items()}
    for mode, runs in pgbench.items():
        rows[f"pgbench -M {mode}"] = merge_pgbench(runs, mode, s.pool_size)
    best = max(python, key=lambda n: rows[n]["ops_per_s"])
    result = comparison(rows, [best], "pgbench -M prepared",
                        "best Python configuration / pgbench (C client, prepared statements like "
                        "asyncpg's statement cache, same number of connections)")
    return {"ceiling": result}


def python_candidates(ctx: Context) -> dict[str, tuple[str, Callable[[float], Any]]]:
    """The lean configurations that compete for "best Python": name -> (loop, measurement)."""
    s = ctx.settings
    loops = ["asyncio", "uvloop"] if uvloop_available() else ["asyncio"]

    async def asyncpg_pool(seconds: float) -> Measurement:
        pool = await create_pool(ctx.dsn, s.pool_size, reset=no_reset)
        try:
            return await measure(pool_op(pool), tasks=s.tasks, seconds=seconds, warmup=s.warmup)
        finally:
            await pool.close()

    out: dict[str, tuple[str, Callable[[float], Any]]] = {
        f"asyncpg.Pool on {kind}, no-op reset": (kind, asyncpg_pool) for kind in loops}
    try:
        lab09 = solution("lab09_connection_pool")
    except Skip:
        return out

    async def lab09_pool(seconds: float) -> Measurement:
        pool = lab09.ConnectionPool(
            lambda: asyncpg.connect(ctx.dsn, server_settings={"application_name": APP}),
            lab09.PoolConfig(min_size=s.pool_size, max_size=s.pool_size))
        try:
            await pool.start()
            return await measure(connection_op(pool), tasks=s.tasks, seconds=seconds,
                                 warmup=s.warmup)
        finally:
            await pool.close()

    out[f"ConnectionPool (lab 09) on {loops[-1]}, no reset"] = (loops[-1], lab09_pool)
    return out


def ceiling_rounds(s: Settings) -> int:
    """pgbench runs whole seconds: rounds of about one second each."""
    return max(1, min(s.rounds, int(s.seconds)))


def run_pgbench(dsn: str, tmp: Path, mode: str, clients: int, seconds: float) -> dict[str, Any]:
    """One pgbench run of `SELECT 1`: its tps and its own "latency average"."""
    from ..servers.embedded import binary

    parts = urlsplit(dsn)
    script = tmp / "select1.sql"
    script.write_text(QUERY + ";\n")
    args = [str(binary("pgbench")), "-n", "-f", str(script), "-c", str(clients),
            "-j", str(min(2, clients)), "-T", str(max(1, round(seconds))), "-M", mode,
            "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
            "-U", parts.username or "", parts.path.lstrip("/") or "postgres"]
    env = {**os.environ, "PGPASSWORD": parts.password or "", "PGAPPNAME": APP}
    cpu = children_cpu()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=seconds + 60)
    cpu = children_cpu() - cpu
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed: {proc.stderr.strip()[-500:]}")
    tps = float(_grab(r"tps = ([\d.]+)", proc.stdout))
    done = int(_grab(r"actually processed: (\d+)", proc.stdout))
    latency = float(_grab(r"latency average = ([\d.]+) ms", proc.stdout))
    return {"tps": tps, "ops": done, "seconds": max(1, round(seconds)), "latency_avg_ms": latency,
            "cpu": cpu}


def _grab(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"unexpected pgbench output (no {pattern!r}): {text[-300:]}")
    return match.group(1)


def children_cpu() -> float:
    """CPU seconds used so far by finished child processes (0.0 where unknown: Windows)."""
    try:
        import resource
    except ImportError:
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def merge_pgbench(runs: list[dict[str, Any]], mode: str, clients: int) -> dict[str, Any]:
    """pgbench's rounds as one row. Its percentiles are not measured: pgbench reports a latency
    average, and per-transaction logs at this rate cost the client more than the query."""
    seconds = sum(r["seconds"] for r in runs)
    ops = sum(r["ops"] for r in runs)
    cpu = sum(r["cpu"] for r in runs)
    return {"ops_per_s": round(sum(r["tps"] * r["seconds"] for r in runs) / seconds, 1),
            "latency_avg_ms": round(sum(r["latency_avg_ms"] * r["ops"] for r in runs) / ops, 3) if ops else None,
            "p50_ms": None, "p95_ms": None, "p99_ms": None, "ops": ops, "seconds": seconds,
            "client_cpu_us_per_op": round(cpu / ops * 1e6, 1) if cpu and ops else None,
            "rounds_ops_per_s": [r["tps"] for r in runs], "mode": mode, "clients": clients, "query": QUERY}


# -- the run -----------------------------------------------------------------
SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "pooled": pooled_vs_unpooled,  # writes both "unpooled" and "pooled"
    "overhead": overhead,
    "from_scratch": from_scratch,
    "reset_cost": reset_cost,
    "pool_size_sweep": pool_size_sweep,
    "batch": batch,
    "ceiling": ceiling,
    "production_pools": production_pools,
    "pipeline": pipeline,
}
KEYS = {"pooled": ("unpooled", "pooled")}


def count_steps(names: list[str], s: Settings) -> int:
    """Progress steps: one per measurement."""
    per = {"pooled": 2 * s.rounds, "overhead": 3 * s.rounds, "from_scratch": 4 * s.rounds,
           "reset_cost": 2 * s.rounds, "pool_size_sweep": len(s.sweep_sizes), "batch": 3,
           "ceiling": (2 + (2 if uvloop_available() else 1) + 1) * ceiling_rounds(s),
           "production_pools": 4 * s.rounds, "pipeline": 3 * s.rounds}
    return sum(per[n] for n in names)


def run_all(dsn: str, settings: Settings, names: list[str], progress: Progress) -> dict[str, Any]:
    """Run the named scenarios in order; one that fails does not stop the others."""
    ctx = Context(dsn, settings, progress)
    results: dict[str, Any] = {"machine": machine(dsn, settings), "settings": asdict(settings)}
    for name in names:
        try:
            results.update(SCENARIOS[name](ctx))
        except Skip as exc:
            results.update({key: {"skipped": str(exc)} for key in KEYS.get(name, (name,))})
        except Exception as exc:  # reported in results.json; the exit code says it failed
            from ..servers.database import scrub_secrets

            message = scrub_secrets(f"{type(exc).__name__}: {exc}")
            results.update({key: {"error": message} for key in KEYS.get(name, (name,))})
    return results


def machine(dsn: str, settings: Settings) -> dict[str, Any]:
    """What the numbers were measured on."""

    async def server_version() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    info: dict[str, Any] = {
        "cores": os.cpu_count(), "python": platform.python_version(),
        "implementation": platform.python_implementation(), "platform": platform.platform(),
        "asyncpg": asyncpg.__version__, "server": run_on("asyncio", server_version()),
        "loop": "uvloop" if settings.uvloop else "asyncio",
        "load_average_at_start": ([round(x, 2) for x in os.getloadavg()]
                                  if hasattr(os, "getloadavg") else None),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if uvloop_available():
        import uvloop

        info["uvloop"] = uvloop.__version__
    return info


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def print_summary(results: dict[str, Any], console: Any) -> None:
    """A table of every scenario's headline numbers."""
    from rich.table import Table

    table = Table(title="pglab bench")
    for col in ("scenario", "ops/s", "p50 ms", "p95 ms", "p99 ms", "ratio"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for key, value in results.items():
        if key in ("machine", "settings") or not isinstance(value, dict):
            continue
        if "skipped" in value or "error" in value:
            reason = value.get("skipped") or value.get("error")
            table.add_row(key, f"[yellow]{reason}", "", "", "", "")
            continue
        rows = value.get("rows") or [value]
        for row in rows:
            label = key + (f" {row.get('pool_size') or row.get('method')}"
                           if "rows" in value else "")
            label += f" ({value['variant']})" if "variant" in value else ""
            table.add_row(label, f"{row['ops_per_s']:,.0f}", *(_ms(row.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms")),
                          f"{value['ratio']:.2f}" if value.get("ratio") is not None else "")
    console.print(table)
