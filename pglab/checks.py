"""Run a lab's graded checks in a subprocess and read the per-test results.

One mechanism serves `pglab check`, `pglab watch`, `pglab verify-checks` and
`pglab grade`: pytest with the course plugin's `--pglab-report` JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .course import Lab
from .paths import course_root


@dataclass(frozen=True)
class TestResult:
    name: str
    status: str  # pass | fail | error | skip
    message: str = ""
    output: str = ""

    @property
    def title(self) -> str:
        """`test_acquire_times_out` -> "acquire times out"."""
        return self.name.split("[")[0].removeprefix("test_").replace("_", " ")


@dataclass
class LabResult:
    lab: Lab
    tests: list[TestResult] = field(default_factory=list)
    error: str | None = None  # the run itself failed (collection error, crash, timeout)

    @property
    def passed(self) -> int:
        return sum(t.status == "pass" for t in self.tests)

    @property
    def total(self) -> int:
        return sum(t.status != "skip" for t in self.tests)

    @property
    def all_passed(self) -> bool:
        return self.error is None and self.total > 0 and self.passed == self.total


# Plugins the graded checks never need; nbmake alone costs seconds of imports.
UNUSED_PLUGINS = ("cacheprovider", "nbmake", "hypothesispytest")


def pytest_command(test_files: list[str], target: str, report: Path, *extra: str) -> list[str]:
    disabled = [arg for name in UNUSED_PLUGINS for arg in ("-p", f"no:{name}")]
    return [sys.executable, "-m", "pytest", *test_files, "--target", target, "--pglab-report", str(report),
            "-q", "--no-header", *disabled, *extra]


def run_checks(lab: Lab, target: str = "labs", *, timeout: float = 600, extra: tuple[str, ...] = ()) -> LabResult:
    """Run `lab`'s checks against `target` (labs, solutions or a folder)."""
    root = course_root()
    with tempfile.TemporaryDirectory(prefix="pglab-check-") as tmp:
        report = Path(tmp) / "report.json"
        command = pytest_command([lab.tests], target, report, "--timeout", "90", *extra)
        env = {**os.environ, "PGLAB_HOME": str(root)}
        try:
            proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return LabResult(lab, error=f"the checks did not finish within {timeout:g} s")
        return read_report(lab, report, proc.stdout + proc.stderr)


def read_report(lab: Lab, report: Path, console_output: str) -> LabResult:
    """Turn a `--pglab-report` file into a LabResult; explain a run that wrote none."""
    try:
        rows = json.loads(report.read_text())
    except (OSError, ValueError):
        tail = "\n".join(console_output.strip().splitlines()[-15:])
        return LabResult(lab, error=f"pytest did not report any result:\n{tail}")
    result = LabResult(lab, [TestResult(r["name"], r["status"], r["message"], r["output"]) for r in rows])
    if not rows:
        result.error = "no checks were collected:\n" + "\n".join(console_output.strip().splitlines()[-15:])
    return result
