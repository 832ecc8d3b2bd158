"""The PNG plots of `pglab bench`, drawn from results.json alone.

Figures are built with `matplotlib.figure.Figure` (no pyplot, no GUI backend), so
writing them works headless; `draw_*` take an Axes and also serve the notebooks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GROUPS = (  # (results key, title) of the bar chart, top to bottom
    ("pooled", "pooled vs unpooled"),
    ("overhead", "course wrappers vs raw pool"),
    ("from_scratch", "from-scratch pools"),
    ("reset_cost", "reset on release"),
    ("production_pools", "production pools (lab 15)"),
    ("pipeline", "a batch of independent queries"),
    ("ceiling", "ceiling"),
)


def bars(results: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(group title, label, row) of every measured contender, in display order."""
    out = []
    for key, title in GROUPS:
        value = results.get(key, {})
        if key == "pooled" and "ops_per_s" in results.get("unpooled", {}):
            out.append((title, "unpooled (connect per query)", results["unpooled"]))
        if "variants" in value:
            out += [(title, name, row) for name, row in value["variants"].items()
                    if "ops_per_s" in row]
        elif "ops_per_s" in value:
            out.append((title, "asyncpg.create_pool", value))
    return out


def draw_comparisons(axes: Any, results: dict[str, Any]) -> None:
    """Throughput (log scale) and p99 latency of every contender, one colour per comparison."""
    rows = bars(results)
    titles = list(dict.fromkeys(title for title, _, _ in rows))
    colours = {t: f"C{i}" for i, t in enumerate(titles)}
    labels = [label for _, label, _ in rows]
    ypos = list(range(len(rows)))[::-1]
    ops_ax, lat_ax = axes
    ops_ax.barh(ypos, [r["ops_per_s"] for *_, r in rows], color=[colours[t] for t, _, _ in rows])
    ops_ax.set_xscale("log")
    values = [r["ops_per_s"] for *_, r in rows]
    ops_ax.set_xlim(left=min(values) / 3, right=max(values) * 4)  # room for the labels
    ops_ax.set_yticks(ypos, labels)
    ops_ax.set_xlabel("operations per second (log scale)")
    for y, (_, _, row) in zip(ypos, rows, strict=True):
        ratio = row.get("ratio")
        text = f" {row['ops_per_s']:,.0f}" + (f"  ×{ratio:.2f}" if ratio is not None else "")
        ops_ax.text(row["ops_per_s"], y, text, va="center", fontsize=8)
    # pgbench reports no percentiles: its bar shows its latency average, labelled so.
    lat_ax.barh(ypos, [r["p99_ms"] or r.get("latency_avg_ms") or 0 for *_, r in rows],
                color=[colours[t] for t, _, _ in rows])
    lat_ax.set_xscale("log")
    lat_ax.set_xlabel("p99 latency, ms (log scale)\npgbench: its average; pipeline: per batch")
    # Decades only: minor tick labels collide on an axis this narrow.
    from matplotlib.ticker import NullFormatter

    lat_ax.xaxis.set_minor_formatter(NullFormatter())
    lat_ax.set_yticks(ypos, [""] * len(ypos))
    handles = [ops_ax.bar(0, 0, color=colours[t], label=t) for t in titles]
    # In the figure's margin, in rows of four: inside an axes it would cover bars.
    ops_ax.figure.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8)


def draw_sweep(ax: Any, sweep: dict[str, Any]) -> None:
    """Throughput and p95 against pool size, with lab 06's recommended sizes marked."""
    rows = sweep["rows"]
    sizes = [r["pool_size"] for r in rows]
    ax.plot(sizes, [r["ops_per_s"] for r in rows], "o-", color="C0", label="throughput")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("pool size (connections)")
    ax.set_ylabel("operations per second", color="C0")
    ax.set_ylim(bottom=0)
    p95 = ax.twinx()
    p95.plot(sizes, [r["p95_ms"] for r in rows], "s--", color="C3", label="p95 latency")
    p95.set_ylabel("p95 latency, ms", color="C3")
    p95.set_ylim(bottom=0)
    marks = sweep.get("formulas", {})
    if "littles_law" in marks:
        ax.axvline(marks["littles_law"]["max_size"], color="C2", linestyle=":",
                   label=f"Little's law (lab 06): max {marks['littles_law']['max_size']}")
    if "hikari" in marks:
        ax.axvline(marks["hikari"]["size"], color="C4", linestyle="-.",
                   label=f"HikariCP cores×2+1 (lab 06): {marks['hikari']['size']}")
    lines = ax.get_legend_handles_labels()
    more = p95.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper center",
              bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=8)  # below: never over the data
    ax.set_title(sweep.get("workload", "pool-size sweep"), fontsize=9)


def draw_batch(ax: Any, batch: dict[str, Any]) -> None:
    """Rows per second of each insertion method (log scale)."""
    rows = batch["rows"]
    ax.bar([r["method"] for r in rows], [r["rows_per_s"] for r in rows], color=["C3", "C1", "C2"])
    ax.set_yscale("log")
    ax.set_ylabel("rows per second (log scale)")
    for i, r in enumerate(rows):
        ax.text(i, r["rows_per_s"], f"{r['rows_per_s']:,.0f}", ha="center", va="bottom", fontsize=9)
    ax.set_title(f"inserting {rows[0]['rows']:,} rows", fontsize=10)


def draw_fairness(axes: Any, result: dict[str, Any]) -> None:
    """Per-pool p50/p99 latency and Jain's fairness of the tasks' shares, side by side."""
    rows = {name: row for name, row in result["variants"].items() if "ops_per_s" in row}
    names = list(rows)
    lat_ax, fair_ax = axes
    x = range(len(names))
    lat_ax.bar([i - 0.2 for i in x], [rows[n]["p50_ms"] for n in names], width=0.4, label="p50")
    lat_ax.bar([i + 0.2 for i in x], [rows[n]["p99_ms"] for n in names], width=0.4, label="p99")
    lat_ax.set_xticks(list(x), names, rotation=15, ha="right", fontsize=8)
    lat_ax.set(ylabel="latency per borrow + SELECT 1 (ms)", yscale="log", title="latency")
    lat_ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fair_ax.bar(list(x), [rows[n]["jain_fairness"] for n in names], color="C2")
    fair_ax.set_xticks(list(x), names, rotation=15, ha="right", fontsize=8)
    fair_ax.set(ylabel="Jain's fairness index (1 = equal shares)", ylim=(0, 1.05),
                title="fairness across tasks")


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """Write results.json and every plot the results allow; return the paths written."""
    from matplotlib.figure import Figure

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json"]
    written[0].write_text(json.dumps(results, indent=2) + "\n")
    if bars(results):
        fig = Figure(figsize=(13, 0.42 * len(bars(results)) + 2.2), layout="constrained")
        draw_comparisons(fig.subplots(1, 2, width_ratios=[2.2, 1]), results)
        written.append(_save(fig, out / "comparisons.png"))
    if "rows" in results.get("pool_size_sweep", {}):
        fig = Figure(figsize=(8, 4.5), layout="constrained")
        draw_sweep(fig.subplots(), results["pool_size_sweep"])
        written.append(_save(fig, out / "pool_size_sweep.png"))
    if "variants" in results.get("production_pools", {}):
        fig = Figure(figsize=(11, 4.5), layout="constrained")
        draw_fairness(fig.subplots(1, 2), results["production_pools"])
        written.append(_save(fig, out / "production_pools.png"))
    if "rows" in results.get("batch", {}):
        fig = Figure(figsize=(7, 4), layout="constrained")
        draw_batch(fig.subplots(), results["batch"])
        written.append(_save(fig, out / "batch.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path
