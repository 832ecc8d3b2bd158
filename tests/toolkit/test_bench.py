"""Tests of the benchmark harness itself (`pglab bench`): shapes and files, never speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pglab.bench import Measurement, Settings, Silent, percentile
from pglab.bench import common as bench_common
from pglab.bench import plots as bench_plots
from pglab.bench import scenarios as bench_scenarios
from pglab.cli import app
from pglab.targets import TargetError

ROW_FIELDS = {"ops_per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms"}
TINY = Settings(seconds=0.3, rounds=1, warmup=0.05, tasks=4, pool_size=2, sweep_sizes=(1, 2),
                sweep_tasks=4, sweep_seconds=0.2, batch_rows=100)


def assert_row(row: dict, where: str) -> None:
    assert row["ops_per_s"] > 0, f"{where}: no operation completed: {row}"
    if "mode" in row:  # pgbench reports its latency average, no percentiles
        assert row["latency_avg_ms"] > 0 and row["p99_ms"] is None, f"{where}: {row}"
        return
    assert ROW_FIELDS <= row.keys(), f"{where}: missing {ROW_FIELDS - row.keys()} in {row}"
    assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"], f"{where}: {row}"


def test_percentiles_and_rows_from_known_latencies():
    values = sorted(i / 1000 for i in range(1, 101))  # 1..100 ms
    assert percentile(values, 50) == 0.05 and percentile(values, 99) == 0.099
    assert percentile([], 95) == 0.0
    row = Measurement(values, seconds=2.0, cpu_seconds=0.01, all_ops=100).row(tasks=3)
    assert row["ops_per_s"] == 50.0 and row["p95_ms"] == 95.0 and row["max_ms"] == 100.0
    assert row["tasks"] == 3 and row["client_cpu_us_per_op"] == 100.0


@pytest.mark.slow
def test_a_tiny_run_produces_every_scenario_and_the_plots(dsn, tmp_path):
    results = bench_scenarios.run_all(dsn, TINY, list(bench_scenarios.SCENARIOS), Silent())
    errors = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    assert not errors, f"scenarios failed: {errors}"
    assert {"cores", "python", "asyncpg", "server"} <= results["machine"].keys()
    expected = {"unpooled", "pooled", "overhead", "from_scratch", "reset_cost", "pool_size_sweep",
                "batch", "ceiling", "production_pools", "pipeline"}
    assert expected <= results.keys(), f"missing scenarios: {expected - results.keys()}"

    assert_row(results["unpooled"], "unpooled")
    for key in ("pooled", "overhead", "from_scratch", "reset_cost", "ceiling", "production_pools", "pipeline"):
        value = results[key]
        if "skipped" in value:  # a lab solution that is not there yet
            continue
        assert_row(value, key)
        assert value["ratio"] > 0, f"{key}: ratio missing or zero: {value}"
        for name, variant in value.get("variants", {}).items():
            if "skipped" not in variant:
                assert_row(variant, f"{key}/{name}")
    assert results["ceiling"]["reference"]["variant"] == "pgbench -M prepared"
    for name, variant in results["production_pools"]["variants"].items():
        assert 0 < variant["jain_fairness"] <= 1, f"production_pools/{name}: fairness index out of range"

    sweep = results["pool_size_sweep"]["rows"]
    assert [r["pool_size"] for r in sweep] == [1, 2]
    for row in sweep:
        assert_row(row, f"sweep {row['pool_size']}")
    methods = [r["method"] for r in results["batch"]["rows"]]
    assert methods == ["one INSERT per row", "executemany", "copy_records_to_table"]
    assert all(r["rows_per_s"] > 0 for r in results["batch"]["rows"])

    written = bench_plots.write(results, tmp_path)
    names = {p.name for p in written}
    assert names == {"results.json", "comparisons.png", "pool_size_sweep.png", "batch.png", "production_pools.png"}
    for path in written:
        assert path.stat().st_size > 0, f"{path.name} is empty"
    assert json.loads((tmp_path / "results.json").read_text())["pooled"] == results["pooled"]


def test_a_missing_lab_solution_makes_its_scenario_skipped(dsn, monkeypatch):
    def missing(module: str, target: str | None = None):
        raise TargetError(f"{module}.py does not exist")

    monkeypatch.setattr(bench_common, "load_lab_module", missing)
    results = bench_scenarios.run_all(dsn, TINY, ["overhead", "from_scratch"], Silent())
    for key in ("overhead", "from_scratch"):
        assert "skipped" in results[key], f"{key} should be skipped, got {results[key]}"
        assert "does not exist" in results[key]["skipped"]


def test_the_command_writes_results_for_the_chosen_scenarios(tmp_path: Path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["bench", "--quick", "--only", "pooled", "--seconds", "2",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert {"unpooled", "pooled", "machine", "settings"} <= results.keys()
    assert "overhead" not in results, "--only pooled should run nothing else"
    assert results["pooled"]["ratio"] > 0
    assert (out / "comparisons.png").is_file()


def test_an_unknown_scenario_is_refused():
    result = CliRunner().invoke(app, ["bench", "--only", "nope"])
    assert result.exit_code == 2
    assert "unknown scenario" in result.output
