"""What every scenario shares: its context, the reference pool, ratios and comparisons."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import asyncpg

from ..targets import TargetError, load_lab_module
from .harness import Op, Progress, Settings, run_on

APP = "pglab-bench"  # application_name of every benchmark connection
QUERY = "SELECT 1"


class Skip(Exception):
    """The scenario (or variant) cannot run here; the message says why."""


@dataclass
class Context:
    """What every scenario gets: the server, the run's settings, the progress display."""

    dsn: str
    settings: Settings
    progress: Progress

    def run(self, coro: Any) -> Any:
        """Run a scenario's coroutine on a fresh loop of the configured kind."""
        return run_on("uvloop" if self.settings.uvloop else "asyncio", coro)


def solution(module: str) -> ModuleType:
    """A lab's reference solution, or Skip saying what is missing."""
    try:
        return load_lab_module(module, "solutions")
    except TargetError as exc:
        raise Skip(f"solutions/{module}.py is not available: {exc}") from None


async def create_pool(dsn: str, size: int, **kwargs: Any) -> asyncpg.Pool:
    """An asyncpg pool of exactly `size` connections, all opened up front."""
    settings = {"application_name": APP, **kwargs.pop("server_settings", {})}
    return await asyncpg.create_pool(dsn, min_size=size, max_size=size, server_settings=settings,
                                     **kwargs)


async def no_reset(conn: asyncpg.Connection) -> None:
    """A reset that sends nothing: safe only when no code leaves session state behind."""


def pool_op(pool: Any) -> Op:
    """`SELECT 1` on a connection borrowed with `async with pool.acquire()`."""

    async def op() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval(QUERY)

    return op


def ratio(ours: dict[str, Any], reference: dict[str, Any]) -> float | None:
    """ours / reference: the median of the per-round ratios when both were measured in the
    same interleaved rounds (a burst of load elsewhere then cancels out within its round),
    else the ratio of the totals; None when the reference completed nothing."""
    pairs = [a / b for a, b in zip(ours.get("rounds_ops_per_s", []),
                                   reference.get("rounds_ops_per_s", []), strict=False) if b]
    if pairs and len(ours["rounds_ops_per_s"]) == len(reference["rounds_ops_per_s"]):
        return round(statistics.median(pairs), 3)
    return round(ours["ops_per_s"] / reference["ops_per_s"], 3) if reference["ops_per_s"] else None


def comparison(rows: dict[str, dict[str, Any]], ours: list[str], reference: str,
               about: str) -> dict[str, Any]:
    """One comparison object: the weakest of `ours` at top level, every variant with its ratio."""
    ref = rows[reference]
    variants = {name: ({**row, "ratio": ratio(row, ref)} if "ops_per_s" in row and name != reference
                       else row) for name, row in rows.items()}
    measured = [name for name in ours if "ops_per_s" in rows[name]]
    if not measured:
        return {"skipped": "; ".join(rows[n]["skipped"] for n in ours), "variants": variants,
                "about": about}
    worst = min(measured, key=lambda n: rows[n]["ops_per_s"])
    return {**variants[worst], "variant": worst, "reference": {**ref, "variant": reference},
            "variants": variants, "about": about}
