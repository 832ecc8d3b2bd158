"""The workshop's tables are the committed bench run, rendered: no number drifts from its producer."""

from __future__ import annotations

import json
from pathlib import Path

from pglab.bench.report import markdown, quoted

ROOT = Path(__file__).resolve().parents[2]
WORKSHOP = ROOT / "workshops" / "01-asyncpg-pooling-lab"


def test_workshop_01_quotes_its_committed_results_exactly():
    results = json.loads((WORKSHOP / "results" / "results.json").read_text())
    assert quoted((WORKSHOP / "README.md").read_text()) == markdown(results), (
        "workshops/01-asyncpg-pooling-lab/README.md's tables differ from results/results.json: "
        "run `pglab bench --out workshops/01-asyncpg-pooling-lab/results --quote "
        "workshops/01-asyncpg-pooling-lab/README.md`")


def test_the_rendering_marks_pgbench_rows_as_averages():
    row = {"ops_per_s": 1000.0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "latency_avg_ms": 0.1,
           "ratio": 0.5, "mode": "prepared"}
    results = {"ceiling": {"reference": {"variant": "pgbench -M prepared"},
                           "variants": {"pgbench -M prepared": row}}, "machine": {}}
    table = markdown(results)
    assert "avg 0.100" in table and "0.00 " not in table
