"""`pglab mutation --survivors`: re-run a mutation run's survivors against today's checks.

Once an author has written the checks a run's survivors asked for, the whole run need not
be repeated (labs 09, 13 and 14 take 20 to 80 minutes). Each survivor's diff is applied
again to the current solution by its text, not by its position, so an edit elsewhere in
the file (a docstring) does not matter, and the lab's checks run on the result. A survivor
whose lines have changed since is reported stale: that lab wants a full run again.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .course import Course, Lab
from .mutants import write_solved

CommandFor = Callable[[Lab, Path], list[str]]  # the lab's check command against a target folder
CONTEXT_TRIMS = 4  # context lines dropped at each end, at most, before a hunk counts as stale


@dataclass
class Rerun:
    """One lab's survivors re-run: the first run's totals and what became of each survivor."""

    lab: str
    run: int
    killed_before: int
    killed: list[str] = field(default_factory=list)
    survivors: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def score(self) -> float:
        return (self.killed_before + len(self.killed)) / self.run if self.run else 0.0


def mutated_file(diff: str) -> str:
    """The name of the file a cosmic-ray diff mutates (its `+++` line)."""
    header = next((line for line in diff.splitlines() if line.startswith("+++ ")), "")
    return Path(header[4:].strip()).name


def apply_diff(source: str, diff: str) -> str | None:
    """`source` with every hunk of `diff` applied by its text, or None if one no longer matches exactly once."""
    for hunk in diff.split("\n@@")[1:]:
        lines = hunk.splitlines()[1:]  # after the "@@ -a,b +c,d @@" line
        changed = [i for i, line in enumerate(lines) if line[:1] in ("-", "+")]
        if not changed:
            continue
        first, last = changed[0], changed[-1] + 1
        for trim in range(CONTEXT_TRIMS):  # only context lines are dropped, never a changed one
            kept = lines[min(trim, first):last] + lines[last:max(last, len(lines) - trim)]
            old = "\n".join(line[1:] for line in kept if line[:1] in (" ", "-"))
            new = "\n".join(line[1:] for line in kept if line[:1] in (" ", "+"))
            if old and source.count(old) == 1:
                source = source.replace(old, new)
                break
        else:
            return None
    return source


class ChecksBroken(Exception):
    """pytest could not run the checks (collection error, bad option): no verdict on a mutant."""


def _fails(command: list[str], root: Path, timeout: float) -> bool:
    """Whether the checks fail (or hang past `timeout`, which cosmic-ray counts as killed too)."""
    try:
        proc = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return True
    if proc.returncode not in (0, 1):  # 1: a check failed; 2 to 5: pytest itself could not run them
        raise ChecksBroken(f"pytest exited {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-300:]}")
    return proc.returncode == 1


def rerun_survivors(course: Course, lab: Lab, out: Path, command_for: CommandFor, timeout: float) -> Rerun:
    """Re-run the survivors recorded in `out/lab{id}.json`; write `out/lab{id}-survivors.json`."""
    recorded = out / f"lab{lab.id}.json"
    if not recorded.is_file():
        return Rerun(lab.id, 0, 0, error=f"no earlier run of lab {lab.id} in {out}: "
                                         f"run `pglab mutation --lab {lab.id}` first")
    first = json.loads(recorded.read_text())
    result = Rerun(lab.id, first["run"], first["killed"])
    try:
        with tempfile.TemporaryDirectory(prefix=f"pglab-rerun-{lab.id}-") as tmp:
            if _fails(command_for(lab, write_solved(course, Path(tmp))), course.root, timeout):
                result.error = "the checks fail on the solution itself: fix that first (`pglab check`)"
                return result
        for diff in first["survivors"]:
            with tempfile.TemporaryDirectory(prefix=f"pglab-rerun-{lab.id}-") as tmp:
                module = write_solved(course, Path(tmp)) / mutated_file(diff)
                text = apply_diff(module.read_text(), diff) if module.is_file() else None
                if text is None:
                    result.stale.append(diff)
                    continue
                module.write_text(text)
                killed = _fails(command_for(lab, Path(tmp)), course.root, timeout)
                (result.killed if killed else result.survivors).append(diff)
    except ChecksBroken as exc:
        result.error = str(exc)
        return result
    (out / f"lab{lab.id}-survivors.json").write_text(json.dumps(
        {"lab": lab.id, "run": result.run, "killed": result.killed_before + len(result.killed),
         "score": result.score, "survivors": result.survivors, "stale": result.stale}, indent=1))
    return result
