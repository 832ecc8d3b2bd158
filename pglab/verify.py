"""Prove the graded checks cannot lie: each passes on solutions/ and fails on labs/."""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .checks import pytest_command
from .course import Course, Lab


@dataclass(frozen=True)
class Verdict:
    nodeid: str
    on_solution: str
    on_skeleton: str

    @property
    def honest(self) -> bool:
        if self.on_solution == "skip" and self.on_skeleton == "skip":
            return True  # e.g. no PgBouncer here: reported, not counted
        return self.on_solution == "pass" and self.on_skeleton in ("fail", "error")


def _statuses(course: Course, labs: list[Lab], target: str, workdir: Path) -> dict[str, str]:
    report = workdir / f"{target}.json"
    files = [lab.tests for lab in labs if (course.root / lab.tests).exists()]
    subprocess.run(pytest_command(files, target, report), cwd=course.root, capture_output=True, text=True)
    return {row["nodeid"]: row["status"] for row in json.loads(report.read_text())}


def verify(course: Course, labs: list[Lab]) -> list[Verdict]:
    """Run the graded checks of `labs` against both trees; one verdict per test."""
    with tempfile.TemporaryDirectory(prefix="pglab-verify-") as tmp:
        solution = _statuses(course, labs, "solutions", Path(tmp))
        skeleton = _statuses(course, labs, "labs", Path(tmp))
    return [Verdict(node, solution.get(node, "missing"), skeleton.get(node, "missing"))
            for node in sorted(set(solution) | set(skeleton))]
