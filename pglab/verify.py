"""Prove the graded checks cannot lie: each passes on the solution and fails on the skeleton."""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .checks import pytest_command
from .course import Course, Lab
from .labgen import plan


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
    report = workdir / "report.json"
    files = [lab.tests for lab in labs if (course.root / lab.tests).exists()]
    subprocess.run(pytest_command(files, target, report), cwd=course.root, capture_output=True, text=True)
    return read_statuses(report, labs)


def read_statuses(report: Path, labs: list[Lab]) -> dict[str, str]:
    """node id -> status of the graded checks of `labs` in a `--pglab-report` file."""
    files = {lab.tests for lab in labs}
    return {row["nodeid"]: row["status"] for row in json.loads(report.read_text())
            if row["nodeid"].split("::")[0] in files}


def generated_skeletons(course: Course, folder: Path) -> Path:
    """The skeletons as `pglab build-labs` generates them, never the working labs/ (a learner's)."""
    folder.mkdir(parents=True, exist_ok=True)
    for lab_file in plan(course.root):
        (folder / lab_file.skeleton.name).write_text(lab_file.text)
    return folder


def verify(course: Course, labs: list[Lab], solutions_report: Path | None = None) -> list[Verdict]:
    """Run the graded checks of `labs` against the solutions (or read `solutions_report`, a
    `--pglab-report` of a run on solutions/) and the generated skeletons; one verdict per test."""
    with tempfile.TemporaryDirectory(prefix="pglab-verify-") as tmp:
        if solutions_report is not None:
            solution = read_statuses(solutions_report, labs)
        else:
            solution = _statuses(course, labs, "solutions", Path(tmp) / "solutions")
        skeletons = generated_skeletons(course, Path(tmp) / "labs")
        skeleton = _statuses(course, labs, str(skeletons), Path(tmp))
    return [Verdict(node, solution.get(node, "missing"), skeleton.get(node, "missing"))
            for node in sorted(set(solution) | set(skeleton))]
