"""Scores the learner's process cannot set: reconcile, call phases, canaries, integrity flags.

The grader knows, before the lab runs, which checks exist (collected from the course's
files in a process with no lab code) and plants canary checks of random names whose
outcomes it knows. It then reads the sandbox's result channel (token-prefixed records
only) and credits a check only when its setup, call and teardown phases all reported
passed. A check without records is an error. A skip counts as not passed unless the
course declares it (the PgBouncer marker). A canary with the wrong outcome, records
for checks that do not exist, lines without the token, pytest's runner replaced, or
lab code that reaches for pytest, the toolkit or the channel make the lab
`integrity: suspect`: its points are withheld and the reason is shown.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .report import test_row

# Lab code has no business with these: the checks' runner, the toolkit, the channel, frames, the GC.
_NAMES = {"pytest", "_pytest", "pluggy", "unittest", "SkipTest", "pglab", "builtins", "__builtins__", "settrace",
          "setprofile", "_getframe", "get_objects", "get_referrers", "get_referents", "dup2", "__import__",
          "import_module"}
_STRINGS = re.compile(r"_?pytest|pluggy|unittest|^pglab\.|PGLAB_GRADE|/proc/self/fd|/dev/fd|/proc/\d+/fd")
_PASS, _FAIL = "assert True", "assert False, 'canary'"


@dataclass
class Canaries:
    """Checks of random names with known outcomes, run before and after the lab's checks."""

    first: Path
    last: Path
    expected: dict[str, str] = field(default_factory=dict)  # node id -> "passed" / "failed"

    @classmethod
    def plant(cls, folder: Path) -> Canaries:
        """Write the two canary files into `folder` (inside the course copy's tests/labs/)."""
        tag = secrets.token_hex(4)
        canaries = cls(folder / f"test_{tag}_a.py", folder / f"test_{tag}_z.py")
        for path, bodies in ((canaries.first, [_PASS]), (canaries.last, [_PASS, _FAIL])):
            text = ""
            for body in bodies:
                name = f"test_{secrets.token_hex(5)}"
                text += f"def {name}():\n    {body}\n\n\n"
                canaries.expected[f"{folder.parent.name}/{folder.name}/{path.name}::{name}"] = (
                    "passed" if body == _PASS else "failed")
            path.write_text(text)
        return canaries


def scan(source: str) -> str:
    """Why this lab module's source is suspect (it reaches for the grader's machinery), or ""."""
    found: set[str] = set()
    try:  # names and strings only: comments may say anything (the skeleton's header names `pglab check`)
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.NAME and token.string in _NAMES:
                found.add(token.string)
            elif token.type == tokenize.STRING and (match := _STRINGS.search(token.string.strip("\"'rbfu"))):
                found.add(repr(match.group(0)))
    except (tokenize.TokenError, SyntaxError):  # not Python: the checks will say so
        pass
    return f"the lab's code uses {', '.join(sorted(found))}, which a lab never needs" if found else ""


def parse_channel(data: bytes, token: str) -> tuple[list[dict[str, Any]], int]:
    """Records carrying the token, and the number of other lines (written by someone else)."""
    records, foreign = [], 0
    prefix = token.encode()
    for line in data.splitlines():
        if line.startswith(prefix):
            try:
                records.append(json.loads(line[len(prefix):]))
                continue
            except ValueError:
                pass
        if line.strip():
            foreign += 1
    return records, foreign


@dataclass
class Verdict:
    """The rows of one lab's checks, and why the run is not to be trusted ("" when it is)."""

    rows: list[dict[str, Any]]
    suspect: str
    finished: bool  # pytest reached the end of its session


def reconcile(collected: list[dict[str, Any]], records: list[dict[str, Any]], foreign: int,
              canaries: Canaries, problem: str) -> Verdict:
    """Rows for every collected check from the phases reported; canaries and flags checked."""
    phases: dict[str, dict[str, dict[str, Any]]] = {}
    tampered: set[str] = set()
    finish = None
    for record in records:
        tampered.update(record.get("tampered") or [])
        if record.get("kind") == "finish":
            finish = record
        elif record.get("kind") == "phase":
            phases.setdefault(str(record.get("nodeid")), {})[str(record.get("when"))] = record
    reasons = []
    if foreign:
        reasons.append(f"{foreign} line(s) on the grader's result channel did not come from the grader's plugin")
    if tampered:
        reasons.append(f"pytest's reporting was replaced while the checks ran ({', '.join(sorted(tampered))})")
    known = {c["nodeid"] for c in collected} | set(canaries.expected)
    if phantom := sorted(set(phases) - known):
        reasons.append(f"results were reported for checks that do not exist ({phantom[0]} ...)")
    for nodeid, outcome in canaries.expected.items():
        seen = phases.get(nodeid, {}).get("call", {}).get("outcome")
        if seen is not None and seen != outcome:
            reasons.append(f"a canary check the grader planted reported {seen} instead of {outcome}")
    if finish is not None and finish.get("exitstatus") == 0:
        reasons.append("pytest reported success although a planted canary must fail")
    rows = [_row(c, phases.get(c["nodeid"], {}), problem) for c in collected]
    return Verdict(rows, "; ".join(reasons), finish is not None)


def _row(check: dict[str, Any], phases: dict[str, dict[str, Any]], problem: str) -> dict[str, Any]:
    name = check["nodeid"].split("::")[-1]
    for when in ("setup", "call", "teardown"):
        phase = phases.get(when)
        if phase is None:
            if when == "teardown" and phases.get("call", {}).get("outcome") == "passed":
                return test_row(name, "error", "the check passed but its teardown never reported "
                                f"(the run was stopped{f': {problem}' if problem else ''})")
            why = problem or "the test run stopped before this check reported (pytest.exit, an interrupt or a crash?)"
            return test_row(name, "error", f"no result for this check: {why}")
        outcome = phase.get("outcome")
        if outcome == "skipped":
            message = str(phase.get("message", ""))
            declared = check.get("declared_skip", False) and "PgBouncer" in message
            return test_row(name, "skip", message if declared else f"skipped, so not passed: {message}",
                            declared=declared)
        if outcome == "failed":
            status = "fail" if when == "call" else "error"
            return test_row(name, status, str(phase.get("message", "")), str(phase.get("output", "")))
        if outcome != "passed":
            return test_row(name, "error", f"unknown outcome {outcome!r}")
    return test_row(name, "pass")
