"""Grade one lab, one submission, a batch: sandboxed runs, isolated databases, trusted scores.

Per lab: a private copy of the course (toolkit, this lab's checks, canaries, the
reference labs its checks build on), the learner's one file, a fresh role and
database, a proxy socket to the server, then pytest in the sandbox with the grader's
collector plugin. Every failure of a learner's run, or of its clean-up, ends up in
that learner's report; only the grader's own setup can stop a batch (GradeError).
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..course import Course, Lab, UnknownLabError
from . import isolation, sandbox
from .execute import run_lab
from .hygiene import learner_name, read_lab
from .limits import Limits
from .report import LabResult, clean, console, hide_secret, print_table, test_row, total, write_reports
from .scoring import Canaries, reconcile, scan
from .workspace import EXTRA, GradeError, collect, course_copy, snapshot

err = Console(stderr=True, soft_wrap=True)


@dataclass
class Options:
    labs: list[Lab]
    limits: Limits
    extra_tests: Path | None
    jobs: int = 1


# -- one lab ------------------------------------------------------------------
def grade_lab(course: Course, submission: Path, lab: Lab, admin: str, opts: Options) -> LabResult:
    """Run the course's checks of `lab` against the submission, in a sandbox of its own."""
    started = time.monotonic()
    collected = collect(course, lab, opts.extra_tests)
    result = LabResult(lab, extra=any(c["nodeid"].startswith(f"tests/{EXTRA}/") for c in collected))
    source, refused = read_lab(submission, lab.module)
    if source is None:
        result.tests = [test_row(c["nodeid"].split("::")[-1], "fail", refused) for c in collected]
        return result
    with tempfile.TemporaryDirectory(prefix="pglab-grade-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # the sandbox's uid reads the course copy and its file in here
        for name in ("course", "submission", "sock"):
            (work / name).mkdir(mode=0o755)
        files = course_copy(course, lab, work / "course", opts.extra_tests)
        canaries = Canaries.plant(work / "course" / "tests" / "labs")
        for path in (canaries.first, canaries.last):
            path.chmod(0o644)
        submitted = {**_other_labs(submission), lab.module: source}
        for module, text in submitted.items():
            (work / "submission" / f"{module}.py").write_bytes(text)  # a capstone loads the learner's other labs
            (work / "submission" / f"{module}.py").chmod(0o644)
        files = [f"tests/labs/{canaries.first.name}", *files, f"tests/labs/{canaries.last.name}"]
        try:
            database = isolation.create(admin)
        except isolation.FAILURES as exc:
            result.problem = f"the grader could not create a database for this lab ({type(exc).__name__})"
            result.tests = [test_row(c["nodeid"].split("::")[-1], "error", result.problem) for c in collected]
            return result
        hide_secret(database.password)
        try:
            records, foreign, problem, overflow = run_lab(work, files, database.dsn, opts.limits, opts.jobs,
                                                          database.others)
        finally:
            cleanup = isolation.drop(admin, database.name)
    verdict = reconcile(collected, records, foreign, canaries, problem)
    if not verdict.finished and not problem:
        problem = "the test run ended before pytest finished its session (os._exit or a crash in the lab's code?)"
    own = [text for module, text in sorted(submitted.items()) if module.startswith(f"lab{lab.id}_")]  # lab 09: 2
    suspect = [reason for reason in (*(scan(text.decode("utf-8", "replace")) for text in own), verdict.suspect)
               if reason]
    if overflow:
        suspect.append("the lab flooded the grader's result channel")
    result.tests = [_hide_extra(row, c) for row, c in zip(verdict.rows, collected, strict=True)]
    result.problem = "; ".join(p for p in (problem, cleanup) if p)
    result.suspect = "; ".join(suspect)
    result.duration = time.monotonic() - started
    return result


def _other_labs(submission: Path) -> dict[str, bytes]:
    """The submission's other lab modules that the grader accepts (links out, oversized files are left out)."""
    found = {}
    for path in sorted((submission / "labs").glob("lab[0-9][0-9]_*.py")):
        text, _ = read_lab(submission, path.stem)
        if text is not None:
            found[path.stem] = text
    return found


def _hide_extra(row: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
    """An instructor's hidden check is reported by name and status only."""
    if check["nodeid"].startswith(f"tests/{EXTRA}/"):
        return {**row, "message": "", "output": ""}
    return row


# -- a submission and a batch -----------------------------------------------------
def select_labs(course: Course, ids: list[str]) -> list[Lab]:
    """The labs to grade: those named, else every lab whose checks exist."""
    if not ids:
        return [lab for lab in course.labs if (course.root / lab.tests).is_file()]
    labs = []
    for lab_id in ids:
        try:
            lab = course.lab(lab_id)
        except UnknownLabError as exc:
            raise GradeError(str(exc)) from None
        if not (course.root / lab.tests).is_file():
            raise GradeError(f"lab {lab.id} has no checks yet ({lab.tests} is missing)")
        if lab not in labs:
            labs.append(lab)
    return labs


def _grade_one(course: Course, learner: str, path: Path, lab: Lab, admin: str, opts: Options) -> LabResult:
    """One lab of one learner; any failure of the grader on it becomes that learner's error."""
    try:
        if not (path / "labs").is_dir():
            problem = "the submission has no labs/ folder"
            return LabResult(lab, [test_row(c["nodeid"].split("::")[-1], "error", problem)
                                   for c in collect(course, lab, opts.extra_tests)], problem=problem)
        result = grade_lab(course, path, lab, admin, opts)
    except GradeError:
        raise
    except Exception as exc:  # the grader's own bug on odd input: this learner's error, not the batch's
        problem = f"the grader failed on this lab: {type(exc).__name__}: {exc}"
        result = LabResult(lab, [test_row(c["nodeid"].split("::")[-1], "error", problem)
                                 for c in collect(course, lab, opts.extra_tests)], problem=problem)
    err.print(f"  {escape(learner)} lab {lab.id}: {result.points:g}/{lab.points} points,"
              f" {escape(clean(result.message, 200))} [dim]({result.duration:.1f} s)[/]", highlight=False)
    return result


def learners_of(submission: Path | None, submissions: Path | None, out: Path) -> list[tuple[str, Path]]:
    """(name, folder) per learner, names made safe and unique."""
    if submission is not None:
        folders = [submission]
    else:  # every subfolder is a learner; hidden ones, links and the report folder are not
        folders = [p for p in sorted(submissions.iterdir(), key=lambda p: os.fsencode(p.name))
                   if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                   and p.resolve() != out.resolve()]
    named: list[tuple[str, Path]] = []
    for folder in folders:
        name = learner_name(folder.resolve() if submission is not None else folder)
        while name in {n for n, _ in named}:
            name += "_"
        named.append((name, folder.resolve()))
    return named


def run(submission: Path | None, submissions: Path | None, opts: Options, out: Path, course: Course,
        superuser_dsn: str) -> None:
    """Grade one submission or a folder of them; raises GradeError on bad input."""
    if (submission is None) == (submissions is None):
        raise GradeError("give exactly one of --submission DIR or --submissions DIR_OF_REPOS")
    if submission is not None and not (submission / "labs").is_dir():
        raise GradeError(f"{clean(str(submission), 300)} is not a submission: it has no labs/ folder")
    learners = learners_of(submission, submissions, out)
    if not learners:
        raise GradeError(f"{submissions} holds no submission folders")
    if course.root.resolve().is_relative_to((submission or submissions).resolve()):
        raise GradeError("the course must not lie inside the submissions: install it apart")
    try:
        admin = isolation.admin_dsn(superuser_dsn)
    except isolation.IsolationError as exc:
        raise GradeError(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="pglab-course-") as pinned:
        _batch(submission, submissions, learners, opts, out, snapshot(course, Path(pinned)), admin)


def _batch(submission: Path | None, submissions: Path | None, learners: list[tuple[str, Path]], opts: Options,
           out: Path, course: Course, admin: str) -> None:
    opts.labs = [course.lab(lab.id) for lab in opts.labs]
    isolated = sandbox.kind()
    if isolated == "none":
        err.print("[bold red]NOT ISOLATED:[/] bubblewrap is not available here; submissions run with the"
                  " grader's rights and every report says so.")
    for lab in opts.labs:
        collect(course, lab, opts.extra_tests)
    units = [(name, path, lab) for name, path in learners for lab in opts.labs]
    results: dict[str, list[LabResult]] = {name: [] for name, _ in learners}
    pool = ThreadPoolExecutor(max_workers=opts.jobs)
    try:
        futures = [pool.submit(_grade_one, course, name, path, lab, admin, opts) for name, path, lab in units]
        for (name, _, _), future in zip(units, futures, strict=True):
            results[name].append(future.result())
    finally:  # on SIGTERM or Ctrl-C: no new lab starts; those running finish and drop their databases
        pool.shutdown(wait=True, cancel_futures=True)
    rows = []
    for name, _ in learners:
        report = write_reports(out if submission is not None else out / name, name, results[name], isolated)
        score, max_score = total(results[name])
        seconds = sum(r.duration for r in results[name])
        err.print(f"[bold]{escape(name)}[/]: {score:g}/{max_score} points in {seconds:.1f} s", highlight=False)
        rows.append([name, *(f"{r.points:g}" for r in results[name]), f"{score:g}", report["status"]])
        if submission is not None:
            print_table(name, results[name], isolated)
    if submissions is not None:
        _summary(out, opts.labs, rows)
    if isolated == "none":
        console.print("[bold red]NOT ISOLATED[/]: graded without a sandbox (see docs/GRADING.md)")
    console.print(f"reports written to {escape(str(out))}/", highlight=False)


def _summary(out: Path, labs: list[Lab], rows: list[list[str]]) -> None:
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["learner", *(f"lab{lab.id}" for lab in labs), "total", "status"])
        writer.writerows(rows)
    table = Table(title="summary")
    for column in ("learner", *(f"lab {lab.id}" for lab in labs), "total", "status"):
        table.add_column(column)
    for row in rows:
        table.add_row(*map(escape, row))
    console.print(table)


__all__ = ["GradeError", "Options", "run", "select_labs"]
