"""`pglab grade`: score learner submissions against the course's own checks.

A submission is a folder holding `labs/labNN_*.py` (a learner's repository). Each
lab is graded by the course's pristine `tests/labs/test_<module>.py` (never the
submission's tests) in a subprocess of its own: own process group, wall-clock
and memory limits, and a fresh database owned by a throw-away role, dropped
afterwards. A submission that hangs, crashes, leaks connections, drops tables or
terminates backends cannot take the report, the next lab or the next learner down.
A check that hangs fails alone (`--test-timeout`, pytest-timeout); a lab that
escapes it is killed at `--timeout`, keeping the results of the checks it finished.
This isolates buggy code, not hostile code: the lab runs as the grader's OS user
(use a container for that).

Reports, per learner: `results.json` (Exercism test-runner v3, extended with
per-lab points and a total), `junit.xml` (one testsuite per lab) and a console
table; in batch mode also `summary.csv`. Points for a lab are
`points * passed / graded` (skipped checks are not graded), rounded to 2 decimals.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit, urlunsplit

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .course import Course, Lab, UnknownLabError, load_course
from .grade_report import (
    LabResult,
    console,
    hide_secret,
    print_table,
    results_json,
    scrub,
    test_row,
    total,
    write_reports,
)
from .servers.database import DatabaseUnavailableError, locate

MEMORY_LIMIT_MIB = 2048
CHECK_PLUGINS = ("asyncio", "timeout", "hypothesispytest", "anyio")  # pytest11 entry points the checks use
# `pytest -v` prints one line per finished test; a killed run keeps those results.
_VERBOSE_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.MULTILINE)
_VERBOSE_STATUS = {"PASSED": "pass", "XPASS": "pass", "FAILED": "fail", "ERROR": "error",
                   "SKIPPED": "skip", "XFAIL": "skip"}
_PAST = {"fail": "failed", "error": "errored in setup or teardown", "skip": "skipped"}

err = Console(stderr=True, soft_wrap=True)  # progress lines stay whole in logs


class GradeError(RuntimeError):
    """The grader itself cannot go on (bad arguments, no server); not a learner's failure."""


@dataclass
class Options:
    labs: list[Lab]
    timeout: float
    test_timeout: float | None  # pytest-timeout per check; None keeps the course's setting
    memory_mib: int
    extra_tests: Path | None


# -- one lab ------------------------------------------------------------------
def grade_lab(course: Course, submission: Path, lab: Lab, server_dsn: str,
              opts: Options) -> LabResult:
    """Run the course's checks of `lab` against the submission, in a sandboxed subprocess."""
    started = time.monotonic()
    files = [course.root / lab.tests]
    if opts.extra_tests:
        files += sorted(opts.extra_tests.glob(f"test_{lab.module}*.py"))
    result = LabResult(lab, extra=len(files) > 1)
    if not (submission / "labs" / f"{lab.module}.py").is_file():
        message = f"labs/{lab.module}.py is not in the submission"
        result.tests = [test_row(nodeid.split("::")[-1], "fail", message) for nodeid in _collect(course, files)]
        return result
    with tempfile.TemporaryDirectory(prefix="pglab-grade-") as tmp, fresh_database(server_dsn) as dsn:
        report, log = Path(tmp) / "report.json", Path(tmp) / "pytest.log"
        command = [*_pytest(course, files), "--target", str(submission), "--pglab-report", str(report),
                   "-v", "--color=no"]
        if opts.test_timeout:  # a hanging check then fails alone, and the lab goes on
            command += ["-o", f"timeout={opts.test_timeout:g}"]
        env = _pytest_env(course, DATABASE_URL=dsn, PGLAB_TARGET=str(submission), PYTHONUNBUFFERED="1")
        with log.open("wb") as out:
            proc = subprocess.Popen(command, cwd=course.root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=_limit_memory(opts.memory_mib))
            try:
                code: int | None = proc.wait(timeout=opts.timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                _kill_group(proc)  # also what the submission left running in the background
        output = log.read_text(errors="replace")
        rows = {r["nodeid"]: r for r in json.loads(report.read_text())} if report.is_file() else {}
        if code in (0, 1) and rows:
            result.tests = [test_row(r["name"], r["status"], r["message"], r["output"]) for r in rows.values()]
        else:
            result.problem = (f"timed out after {opts.timeout:g} s" if code is None
                              else f"the test run crashed (exit code {code})")
            result.tests = _salvage(course, files, rows, output, result.problem)
    result.duration = time.monotonic() - started
    return result


def _salvage(course: Course, files: list[Path], reported: dict[str, dict[str, Any]], output: str,
             problem: str) -> list[dict[str, Any]]:
    """Rows for a run that was killed or crashed: what it reported or `-v` printed, the rest errors."""
    finished: dict[str, str] = {}
    for nodeid, word in _VERBOSE_LINE.findall(output):
        if finished.get(nodeid, "pass") in ("pass", "skip"):  # a teardown ERROR after PASSED wins
            finished[nodeid] = _VERBOSE_STATUS[word]
    rows = []
    for nodeid in _collect(course, files) or [*reported, *finished]:
        name = nodeid.split("::")[-1]
        if row := reported.get(nodeid):
            rows.append(test_row(name, row["status"], row["message"], row["output"]))
        elif nodeid in finished:
            status = finished[nodeid]
            note = "" if status == "pass" else f"{_PAST[status]}; no details: the run was stopped ({problem})"
            rows.append(test_row(name, status, note))
        else:
            tail = "" if "timed out" in problem else output[-2000:]
            rows.append(test_row(name, "error", f"{problem} (a hang, an endless loop or a crash?)", tail))
    return rows


_collected: dict[tuple[Path, ...], list[str]] = {}


def _collect(course: Course, files: list[Path]) -> list[str]:
    """Node ids of the checks in `files`, without running them (cached: same for every learner)."""
    key = tuple(files)
    if key not in _collected:
        proc = subprocess.run([*_pytest(course, files), "--collect-only", "-q"], cwd=course.root,
                              capture_output=True, text=True, timeout=120, env=_pytest_env(course))
        # -q prints one node id a line, then a count; warnings may repeat ids, indented.
        _collected[key] = list(dict.fromkeys(re.findall(r"^(\S+::\S+)$", proc.stdout, re.MULTILINE)))
    return _collected[key]


def _pytest(course: Course, files: list[Path]) -> list[str]:
    """pytest on the course's own configuration, with only the plugins that checks use."""
    from importlib.metadata import entry_points

    installed = {ep.name for ep in entry_points(group="pytest11")}
    plugins = [arg for name in CHECK_PLUGINS if name in installed for arg in ("-p", name)]
    return [sys.executable, "-m", "pytest", *map(str, files), "-c", str(course.root / "pyproject.toml"),
            "--rootdir", str(course.root), "-p", "no:cacheprovider", *plugins]


def _pytest_env(course: Course, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    # No __pycache__ written into the submission; no plugin autoload (nbmake alone costs seconds).
    env.update(PGLAB_HOME=str(course.root), PYTHONDONTWRITEBYTECODE="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    return {**env, **extra}


def _limit_memory(mib: int):  # noqa: ANN202 - a preexec_fn
    def limit() -> None:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (mib << 20, mib << 20))
        except (ImportError, ValueError, OSError):  # not enforceable here (e.g. macOS): time limit only
            pass

    return limit if os.name == "posix" else None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the lab's whole process group (POSIX), whatever the submission spawned."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# -- a database of its own ------------------------------------------------------
@contextmanager
def fresh_database(server_dsn: str) -> Iterator[str]:
    """A new database owned by a new role (no superuser rights), both dropped afterwards.

    The lab cannot drop or terminate anything beyond its own database and role. When
    the course's role may not create roles, the database belongs to the course's role.
    """
    import asyncio

    import asyncpg

    failures = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
    name = f"grade_{secrets.token_hex(6)}"
    password = secrets.token_urlsafe(18)
    hide_secret(password)
    try:
        try:
            own_role = asyncio.run(_create(server_dsn, name, password))
        except failures as exc:
            raise GradeError(f"could not create a database to grade in: {type(exc).__name__}: {exc}") from None
        parts = urlsplit(server_dsn)
        netloc = parts.netloc
        if own_role:
            host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
            netloc = f"{name}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
        yield urlunsplit((parts.scheme, netloc, f"/{name}", parts.query, parts.fragment))
    finally:
        try:
            asyncio.run(_drop(server_dsn, name))
        except failures as exc:
            raise GradeError(f"could not drop the database {name}: {type(exc).__name__}: {exc}") from None


async def _connect(dsn: str):  # noqa: ANN202 - asyncpg is imported lazily
    import asyncpg

    return await asyncpg.connect(dsn, timeout=15, server_settings={"application_name": "pglab-grade"})


async def _create(dsn: str, name: str, password: str) -> bool:
    """CREATE ROLE and DATABASE; False when only the database could be made (no CREATEROLE)."""
    import asyncpg

    conn = await _connect(dsn)
    try:
        try:
            # CREATEROLE (PostgreSQL 16+) administers only the roles it creates: labs that
            # test logins with a throw-away role of their own can, and nothing beyond.
            await conn.execute(f"CREATE ROLE {name} LOGIN CREATEROLE PASSWORD '{password}'")
            # Drills terminate their own pools' backends; pg_signal_backend can never
            # signal a superuser's backend, so the course's own sessions stay out of reach.
            await conn.execute(f"GRANT pg_signal_backend TO {name}")
            own_role = True
        except asyncpg.InsufficientPrivilegeError:
            own_role = False
        await conn.execute(f"CREATE DATABASE {name}{f' OWNER {name}' if own_role else ''} TEMPLATE template0")
        return own_role
    finally:
        await conn.close()


async def _drop(dsn: str, name: str) -> None:
    """Drop the database, even with the lab's sessions still in it, then the role."""
    conn = await _connect(dsn)  # a fresh connection: the lab may have terminated every backend it could
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        # Roles the lab created and left behind (their creator holds ADMIN on them) go too.
        created = await conn.fetch(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
            " JOIN pg_roles g ON g.oid = m.member WHERE g.rolname = $1 AND m.admin_option", name)
        for row in created:
            await conn.execute(f'DROP ROLE IF EXISTS "{row["rolname"]}"')
        await conn.execute(f"DROP ROLE IF EXISTS {name}")
    finally:
        await conn.close()


# -- a submission -----------------------------------------------------------------
def grade_submission(course: Course, submission: Path, server_dsn: str, opts: Options,
                     learner: str) -> list[LabResult]:
    """Grade every selected lab of one submission, printing a line per lab."""
    if not (submission / "labs").is_dir():
        problem = "the submission has no labs/ folder"
        return [LabResult(lab, [test_row(nodeid.split("::")[-1], "error", problem)
                                for nodeid in _collect(course, [course.root / lab.tests])], problem=problem)
                for lab in opts.labs]
    results = []
    for lab in opts.labs:
        result = grade_lab(course, submission, lab, server_dsn, opts)
        err.print(f"  {escape(learner)} lab {lab.id}: {result.points:g}/{lab.points} points,"
                  f" {escape(scrub(result.message))} [dim]({result.duration:.1f} s)[/]", highlight=False)
        results.append(result)
    return results


# -- the command ------------------------------------------------------------------
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


def run(submission: Path | None, submissions: Path | None, opts: Options, out: Path, course: Course) -> None:
    """Grade one submission or a folder of them; raises GradeError on bad input."""
    if (submission is None) == (submissions is None):
        raise GradeError("give exactly one of --submission DIR or --submissions DIR_OF_REPOS")
    if submission is not None and not (submission / "labs").is_dir():
        raise GradeError(f"{submission} is not a submission: it has no labs/ folder")
    if submission is not None:
        learners = [(submission.resolve().name, submission)]
    else:  # every subfolder is a learner; hidden ones and the report folder are not
        learners = [(p.name, p) for p in sorted(submissions.iterdir())
                    if p.is_dir() and not p.name.startswith(".") and p.resolve() != out.resolve()]
    if not learners:
        raise GradeError(f"{submissions} holds no submission folders")
    try:
        server_dsn = locate().dsn
    except DatabaseUnavailableError as exc:
        raise GradeError(str(exc)) from None
    rows = []
    for learner, path in learners:
        started = time.monotonic()
        results = grade_submission(course, path.resolve(), server_dsn, opts, learner)
        write_reports(out if submission is not None else out / learner, learner, results)
        score, max_score = total(results)
        err.print(f"[bold]{escape(learner)}[/]: {score:g}/{max_score} points"
                  f" in {time.monotonic() - started:.1f} s", highlight=False)
        status = results_json(learner, results)["status"]
        rows.append([learner, *(f"{r.points:g}" for r in results), f"{score:g}", status])
        if submission is not None:
            print_table(learner, results)
    if submissions is not None:
        with (out / "summary.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["learner", *(f"lab{lab.id}" for lab in opts.labs), "total", "status"])
            writer.writerows(rows)
        table = Table(title="summary")
        for column in ("learner", *(f"lab {lab.id}" for lab in opts.labs), "total", "status"):
            table.add_column(column)
        for row in rows:
            table.add_row(*map(escape, row))
        console.print(table)
    console.print(f"reports written to {out}/", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `pglab grade` to the CLI."""

    @app.command("grade")
    def grade(
        submission: Annotated[Path | None, typer.Option(
            help="a learner's repository (a folder with labs/)")] = None,
        submissions: Annotated[Path | None, typer.Option(
            help="a folder of learners' repositories, one per subfolder")] = None,
        lab: Annotated[list[str] | None, typer.Option(
            "--lab", help="lab id to grade (repeatable; default: every lab with checks)")] = None,
        out: Annotated[Path, typer.Option(help="where the reports go")] = Path("grade-results"),
        timeout: Annotated[float, typer.Option(help="time limit per lab, in seconds")] = 300.0,
        test_timeout: Annotated[float | None, typer.Option(
            help="time limit per check, in seconds (default: the course's pytest timeout)")] = None,
        memory: Annotated[int, typer.Option(help="memory limit per lab, in MiB")] = MEMORY_LIMIT_MIB,
        extra_tests: Annotated[Path | None, typer.Option(
            help="a folder of extra checks (test_<module>*.py) that learners never see")] = None,
    ) -> None:
        """Grade submissions with the course's own checks: results.json, junit.xml, summary.csv.

        Exit code 0 when grading completed, whatever the score; 2 when the grader could not run.
        """
        # On SIGTERM, unwind like Ctrl-C: the lab's process group is killed and its database dropped.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            if timeout <= 0 or memory <= 0 or (test_timeout is not None and test_timeout <= 0):
                raise GradeError("--timeout, --test-timeout and --memory must be positive")
            if extra_tests is not None and not extra_tests.is_dir():
                raise GradeError(f"--extra-tests {extra_tests} is not a folder")
            for folder in (submission, submissions):
                if folder is not None and not folder.is_dir():
                    raise GradeError(f"{folder} is not a folder")
            course = load_course()
            opts = Options(select_labs(course, lab or []), timeout, test_timeout, memory,
                           extra_tests.resolve() if extra_tests else None)
            run(submission, submissions, opts, out, course)
        except GradeError as exc:
            err.print(f"[bold red]error:[/] {scrub(str(exc))}")
            raise typer.Exit(2) from None
