"""Realistic learner bugs, planted in a solution, that the graded checks must catch.

Each lab keeps `tests/mutants/<module>.toml`: a list of mutants, each a small set of
exact text edits `[old, new]` applied to the solved solution (markers removed). A
mutant is *killed* when at least one of the lab's checks fails on it; a mutant that
survives is a mistake a learner could make and still be told "all checks pass".

```toml
[[mutant]]
name = "release-outside-finally"
bug = "the connection is given back only when the body succeeds"
edits = [["old text", "new text"]]
module = "lab09_base"  # optional: a lab in two files plants the bug in its other module
caught_by = "test_x"   # optional, written by `verify-checks --update-hints`: run first, alone
```

`caught_by` only saves time: that check runs alone first, and when it no longer fails,
every check of the lab runs as without it.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from .checks import pytest_command
from .course import Course, Lab
from .labgen import solved

MUTANTS_DIR = Path("tests") / "mutants"
MUTANT_TIMEOUT = 240.0  # seconds for one mutant's run; the checks' own deadlines come first


class MutantError(ValueError):
    """A mutant file is malformed, or an edit no longer applies to its solution."""


class Mutant(BaseModel):
    """One planted bug: what a learner would write, as exact edits of the solution."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    bug: str = Field(min_length=10)
    edits: list[tuple[str, str]] = Field(min_length=1)
    module: str | None = Field(default=None, pattern=r"^lab\d{2}_[a-z0-9_]+$")  # default: the lab's module
    caught_by: str | None = Field(default=None, pattern=r"^test_\w+(\[[^\]\n]*\])?$")  # a hint: tried first

    def apply(self, source: str, where: str) -> str:
        """`source` with every edit applied; each `old` must occur exactly once."""
        for old, new in self.edits:
            found = source.count(old)
            if found != 1:
                raise MutantError(f"{where}: mutant {self.name!r}: {old[:60]!r} occurs {found} times, "
                                  "not once (did the solution change? update the mutant)")
            source = source.replace(old, new)
        return source


def minimum(lab: Lab) -> int:
    """How many mutants a lab must keep: 20 for the big labs (20 points), else 10."""
    return 20 if lab.points >= 20 else 10


def mutants_file(course: Course, lab: Lab) -> Path:
    return course.root / MUTANTS_DIR / f"{lab.module}.toml"


def load_mutants(course: Course, lab: Lab) -> list[Mutant]:
    """The lab's mutants, validated (unique names, edits that apply and change something)."""
    path = mutants_file(course, lab)
    if not path.is_file():
        return []
    try:
        mutants = [Mutant(**entry) for entry in tomllib.loads(path.read_text()).get("mutant", [])]
    except (tomllib.TOMLDecodeError, ValidationError, TypeError) as exc:
        raise MutantError(f"{path.relative_to(course.root)} is invalid: {exc}") from None
    names = [m.name for m in mutants]
    if len(set(names)) != len(names):
        raise MutantError(f"{path.relative_to(course.root)}: mutant names must be unique")
    return mutants


@dataclass
class MutantVerdict:
    lab: Lab
    mutant: Mutant
    killed_by: list[str] = field(default_factory=list)  # the checks that failed on it
    error: str = ""  # the run itself went wrong: counted as not killed, and shown
    hint_stale: bool = False  # `caught_by` no longer caught it alone: the whole lab ran

    @property
    def hint_outdated(self) -> bool:
        """A killed mutant whose `caught_by` is missing or is not the check that caught it first."""
        return self.killed and self.killed_by[0].startswith("test_") and self.mutant.caught_by != self.killed_by[0]

    @property
    def killed(self) -> bool:
        return bool(self.killed_by) and not self.error


def write_solved(course: Course, folder: Path) -> Path:
    """Write every lab's solution, markers removed, into `folder` (a target for `--target`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for solution in sorted((course.root / "solutions").glob("lab*.py")):
        (folder / solution.name).write_text(solved(solution.read_text()))
    return folder


def build_target(course: Course, lab: Lab, mutant: Mutant, folder: Path) -> Path:
    """Write every solved lab into `folder`, with `mutant` planted in `lab`'s module (or the one it names)."""
    if mutant.module and not mutant.module.startswith(f"lab{lab.id}_"):
        raise MutantError(f"mutant {mutant.name!r}: module {mutant.module!r} is not one of lab {lab.id}'s files")
    module = write_solved(course, folder) / f"{mutant.module or lab.module}.py"
    if not module.is_file():
        raise MutantError(f"mutant {mutant.name!r}: solutions/{module.name} does not exist")
    text = module.read_text()
    planted = mutant.apply(text, str(mutants_file(course, lab).relative_to(course.root)))
    if planted == text:
        raise MutantError(f"mutant {mutant.name!r} changes nothing")
    module.write_text(planted)
    return folder


def run_mutant(course: Course, lab: Lab, mutant: Mutant) -> MutantVerdict:
    """Run `lab`'s checks against the solution with `mutant` planted; stop at the first failure.
    The `caught_by` check, if any, runs alone first: when it fails, that is proof enough."""
    with tempfile.TemporaryDirectory(prefix=f"pglab-mutant-{lab.id}-") as tmp:
        target = build_target(course, lab, mutant, Path(tmp) / "labs")
        if mutant.caught_by:
            verdict = _run_checks(course, lab, mutant, target, [f"{lab.tests}::{mutant.caught_by}"])
            if verdict.killed:
                return verdict
        verdict = _run_checks(course, lab, mutant, target, [lab.tests])
        verdict.hint_stale = bool(mutant.caught_by)
    return verdict


def _run_checks(course: Course, lab: Lab, mutant: Mutant, target: Path, tests: list[str]) -> MutantVerdict:
    verdict = MutantVerdict(lab, mutant)
    with tempfile.TemporaryDirectory(prefix=f"pglab-mutant-{lab.id}-report-") as tmp:
        report = Path(tmp) / "report.json"
        command = pytest_command(tests, str(target), report, "-x")
        try:
            proc = subprocess.run(command, cwd=course.root, capture_output=True, text=True,
                                  timeout=MUTANT_TIMEOUT)
        except subprocess.TimeoutExpired:
            verdict.killed_by = ["(the whole run hung: a check lacks a deadline)"]
            return verdict
        try:
            rows = json.loads(report.read_text())
        except (OSError, ValueError):
            verdict.error = "pytest wrote no report:\n" + "\n".join((proc.stdout + proc.stderr).splitlines()[-8:])
            return verdict
        if not rows:
            verdict.error = "no checks were collected"
        verdict.killed_by = [row["name"] for row in rows if row["status"] in ("fail", "error")]
    return verdict


def verify_mutants(course: Course, labs: list[Lab], jobs: int = 2) -> tuple[list[MutantVerdict], list[str]]:
    """Run every mutant of `labs`; return the verdicts and the problems of the mutant files."""
    problems: list[str] = []
    work: list[tuple[Lab, Mutant]] = []
    for lab in labs:
        try:
            mutants = load_mutants(course, lab)
        except MutantError as exc:
            problems.append(str(exc))
            continue
        if len(mutants) < minimum(lab):
            problems.append(f"lab {lab.id}: {len(mutants)} mutants in {MUTANTS_DIR / (lab.module + '.toml')}, "
                            f"at least {minimum(lab)} wanted")
        work += [(lab, m) for m in mutants]

    def one(item: tuple[Lab, Mutant]) -> MutantVerdict:
        try:
            return run_mutant(course, *item)
        except MutantError as exc:
            return MutantVerdict(*item, error=str(exc))

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, work)), problems


def update_hints(course: Course, verdicts: list[MutantVerdict]) -> list[Path]:
    """Write each killed mutant's first catching check as its `caught_by`; the files changed."""
    changed: dict[Path, str] = {}
    for v in (v for v in verdicts if v.hint_outdated):
        path = mutants_file(course, v.lab)
        text = changed.get(path) or path.read_text()
        changed[path] = _with_caught_by(text, v.mutant.name, v.killed_by[0])
    for path, text in changed.items():
        path.write_text(text)
    return sorted(changed)


def _with_caught_by(text: str, name: str, check: str) -> str:
    """`text` with `caught_by = "<check>"` right after the mutant's `name = ` line (replacing an old one)."""
    lines = text.splitlines(keepends=True)
    at = lines.index(f'name = "{name}"\n')
    end = next((i for i in range(at + 1, len(lines)) if lines[i].startswith("[[mutant]]")), len(lines))
    lines = [line for i, line in enumerate(lines) if not (at < i < end and line.startswith("caught_by = "))]
    lines.insert(at + 1, f"caught_by = {json.dumps(check)}\n")
    return "".join(lines)
