"""The Markdown tables that guides quote, rendered from a bench run's results.json.

A guide embeds them between `<!-- bench:begin -->` and `<!-- bench:end -->`;
`pglab bench --quote GUIDE.md` rewrites that block from the run it just made, and a
toolkit test proves the committed guide matches the committed results.json, so no
number in a handout can drift from what the harness measured.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
COMPARISONS = ("from_scratch", "overhead", "reset_cost", "production_pools", "pipeline", "ceiling")


class QuoteError(ValueError):
    """The guide has no bench block to rewrite."""


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if digits == 0 else f"{value:,.{digits}f}"


def _row(scenario: str, name: str, row: dict[str, Any], ratio: str) -> str:
    p50 = _num(row.get("p50_ms")) if row.get("p50_ms") is not None else f"avg {_num(row.get('latency_avg_ms'), 3)}"
    return (f"| {scenario} | {name} | {_num(row['ops_per_s'], 0)} | {p50} | {_num(row.get('p95_ms'))} "
            f"| {_num(row.get('p99_ms'))} | {ratio} |")


def markdown(results: dict[str, Any]) -> str:
    """Every comparison of `results` as one table, then the sweep, the batch and the machine."""
    lines = ["| scenario | contender | ops/s | p50 ms | p95 ms | p99 ms | ratio |",
             "|---|---|---:|---:|---:|---:|---:|"]
    if "ops_per_s" in results.get("unpooled", {}):
        lines.append(_row("pooled", "unpooled: connect + SELECT 1 + close", results["unpooled"], "reference"))
        pooled = results["pooled"]
        lines.append(_row("pooled", "asyncpg.create_pool", pooled, f"**{pooled['ratio']:.2f}×**"))
    for key in COMPARISONS:
        value = results.get(key, {})
        reference = value.get("reference", {}).get("variant")
        for name, row in value.get("variants", {}).items():
            if "ops_per_s" not in row:
                lines.append(f"| {key} | {name} | skipped: {row.get('skipped', row.get('error', ''))} | | | | |")
                continue
            ratio = "reference" if name == reference else (f"**{row['ratio']:.3f}**" if row.get("ratio") else "")
            extra = f" (fairness {row['jain_fairness']:.3f})" if "jain_fairness" in row else ""
            lines.append(_row(key, name + extra, row, ratio))
    if sweep := results.get("pool_size_sweep", {}).get("rows"):
        lines += ["", "| pool size | " + " | ".join(str(r["pool_size"]) for r in sweep) + " |",
                  "|---|" + "---:|" * len(sweep),
                  "| ops/s | " + " | ".join(_num(r["ops_per_s"], 0) for r in sweep) + " |",
                  "| p95 ms | " + " | ".join(_num(r["p95_ms"], 1) for r in sweep) + " |"]
        workload, marks = results["pool_size_sweep"].get("workload", ""), results["pool_size_sweep"].get("formulas")
        if marks and "littles_law" in marks:
            law, hikari = marks["littles_law"], marks["hikari"]
            lines += ["", f"Workload: {workload}. Lab 06 on these measurements: Little's law "
                          f"({_num(law['requests_per_second'], 0)} ops/s × {law['avg_query_time_ms']} ms, utilisation "
                          f"{law['target_utilization']}) → max_size **{law['max_size']}**; HikariCP "
                          f"({hikari['core_count']} cores × 2 + 1) → **{hikari['size']}**; best measured size: "
                          f"**{marks['best_measured_size']}**."]
    if batch := results.get("batch", {}).get("rows"):
        lines += ["", "Batch inserts: " + "; ".join(f"{r['method']} **{_num(r['rows_per_s'], 0)} rows/s**"
                                                     for r in batch) + "."]
    m = results.get("machine", {})
    lines += ["", f"Run of {m.get('date', '?')}: {m.get('cores')} cores, Python {m.get('python')}, "
                  f"asyncpg {m.get('asyncpg')}, PostgreSQL {m.get('server')}, loop {m.get('loop')}, load average "
                  f"at start {m.get('load_average_at_start')}, {m.get('wall_seconds')} s in all."]
    return "\n".join(lines) + "\n"


def quoted(guide: str) -> str:
    """The bench block of a guide's text (between the markers)."""
    match = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), guide, re.S)
    if match is None:
        raise QuoteError(f"no {BEGIN} ... {END} block")
    return match[1]


def quote_into(guide: Path, results: dict[str, Any]) -> None:
    """Rewrite `guide`'s bench block with the tables of `results`."""
    text = guide.read_text()
    old = quoted(text)
    guide.write_text(text.replace(BEGIN + "\n" + old + END, BEGIN + "\n" + markdown(results) + END))
