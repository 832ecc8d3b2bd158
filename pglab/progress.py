"""A learner's progress and hints, kept under `.pglab/` (never in git)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from .checks import LabResult
from .course import Course, Lab
from .labgen import skeletonize, with_header
from .paths import state_dir

NOT_STARTED, IN_PROGRESS, DONE, MISSING = "not started", "in progress", "done", "missing"


def _load(name: str) -> dict:
    try:
        return json.loads((state_dir() / name).read_text())
    except (OSError, ValueError):
        return {}


def _save(name: str, data: dict) -> None:
    path = state_dir() / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)  # atomic: a crash never leaves half a file


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class LabStatus:
    lab: Lab
    status: str
    passed: int | None = None
    total: int | None = None

    @property
    def earned(self) -> int:
        return self.lab.points if self.status == DONE else 0


def record(result: LabResult, root: Path) -> None:
    """Remember the outcome of `pglab check`; the best result of a lab is kept, not the last.

    A run that says nothing about the learner's code (a broken environment) is never recorded.
    """
    skeleton = root / result.lab.skeleton
    if result.environment is not None or not skeleton.exists():
        return
    data = _load("progress.json")
    now = {"passed": result.passed, "total": result.total, "sha256": _digest(skeleton),
           "checked_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    best = _best(data.get(result.lab.id))
    if best is None or _rank(now) >= _rank(best):
        best = now
    data[result.lab.id] = {"best": best, "last": now}
    _save("progress.json", data)


def _best(row: dict | None) -> dict | None:
    """The best run of a record (records written before "best" existed are one run)."""
    return None if row is None else row.get("best", row)


def _rank(run: dict) -> tuple[bool, int]:
    return run["total"] > 0 and run["passed"] == run["total"], run["passed"]


def status_of(lab: Lab, root: Path, records: dict | None = None) -> LabStatus:
    """done (all checks passed once), in progress (with the best result so far), or not started."""
    records = _load("progress.json") if records is None else records
    skeleton, solution = root / lab.skeleton, root / lab.solution
    if not skeleton.exists():
        return LabStatus(lab, MISSING)
    best = _best(records.get(lab.id))
    if best is not None and _rank(best)[0]:
        return LabStatus(lab, DONE, best["passed"], best["total"])
    text = skeleton.read_text()
    if solution.exists() and text == with_header(skeletonize(solution.read_text()), solution.name):
        return LabStatus(lab, NOT_STARTED)
    if best is not None:
        return LabStatus(lab, IN_PROGRESS, best["passed"], best["total"])
    return LabStatus(lab, IN_PROGRESS)


def course_status(course: Course) -> list[LabStatus]:
    records = _load("progress.json")
    return [status_of(lab, course.root, records) for lab in course.labs]


def next_hint(lab: Lab) -> tuple[int, list[str]]:
    """Reveal one more hint: (number of hints now shown, the hints shown so far)."""
    data = _load("hints.json")
    shown = min(data.get(lab.id, 0) + 1, len(lab.hints))
    data[lab.id] = shown
    _save("hints.json", data)
    return shown, lab.hints[:shown]


def reset_hints(lab: Lab) -> None:
    data = _load("hints.json")
    data.pop(lab.id, None)
    _save("hints.json", data)
