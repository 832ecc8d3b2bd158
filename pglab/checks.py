"""Run a lab's graded checks in a subprocess and read the per-test results.

One mechanism serves `pglab check`, `pglab watch`, `pglab verify-checks` and the
mutants: pytest with the course plugin's `--pglab-report` JSON (`pglab grade` has a
collector of its own that lab code cannot write to). The
database is probed first: a broken environment is reported as such (exit code
`ENVIRONMENT_BROKEN`, nothing recorded), never as a pass or as the learner's fault.
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

# Exit code of `pglab check`/`watch` and of the checks' pytest session when the
# environment (not the learner's code) is broken: sysexits' EX_UNAVAILABLE.
ENVIRONMENT_BROKEN = 69
ENVIRONMENT_FILE = "environment.txt"  # beside the JSON report: why the session stopped


@dataclass(frozen=True)
class TestResult:
    name: str
    status: str  # pass | fail | error | skip
    message: str = ""
    output: str = ""
    kind: str = ""  # "import" when the lab module itself could not be imported

    @property
    def title(self) -> str:
        """`test_acquire_times_out[fake]` -> "acquire times out [fake]"."""
        name, _, params = self.name.partition("[")
        title = name.removeprefix("test_").replace("_", " ")
        return f"{title} [{params}" if params else title


@dataclass
class LabResult:
    lab: Lab
    tests: list[TestResult] = field(default_factory=list)
    error: str | None = None  # the run itself failed (import error, crash, timeout)
    environment: str | None = None  # the environment is broken: nothing about the learner's code is known

    @property
    def passed(self) -> int:
        return sum(t.status == "pass" for t in self.tests)

    @property
    def total(self) -> int:
        return sum(t.status != "skip" for t in self.tests)

    @property
    def all_passed(self) -> bool:
        return self.error is None and self.environment is None and self.total > 0 and self.passed == self.total


def probe_database(timeout: float = 10.0) -> tuple[str | None, str | None]:
    """(dsn, None) when the course's server answers `SELECT 1`, else (None, what is wrong and how to fix it)."""
    from .servers.database import DatabaseUnavailableError, locate

    try:
        database = locate()
    except DatabaseUnavailableError as exc:
        problem = str(exc)
        if "Fix" not in problem:
            problem += "\nFix: correct DATABASE_URL, or `unset DATABASE_URL` to let the course start its own server."
        return None, problem
    problem = ping_problem(database.dsn, database.kind, timeout)
    return (None, problem) if problem else (database.dsn, None)


def ping_problem(dsn: str, kind: str, timeout: float = 10.0) -> str | None:
    """Connect and run `SELECT 1`; on failure say what went wrong and how to fix it."""
    import asyncio
    import concurrent.futures

    import asyncpg

    from .servers.dsn import mask_dsn

    async def ping() -> None:
        conn = await asyncpg.connect(dsn, timeout=timeout)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    # A thread of its own: the caller may already run an event loop (a fixture, a notebook).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(asyncio.run, ping()).result(timeout + 5)
            return None
        except Exception as exc:  # any failure to reach the server is an environment problem
            reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    where = mask_dsn(dsn)
    if kind == "env":
        fix = ("DATABASE_URL is set: correct it (`pglab db status` tests it), "
               "or `unset DATABASE_URL` to let the course start its own server.")
    else:
        fix = "Run `pglab db up` (it starts or finds the server), then try again."
    return f"the course's PostgreSQL server does not answer at {where}\n  ({reason})\nFix: {fix}"


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
        # pytest-timeout is only the backstop: each check has its own deadline (see pglab.pytest_plugin).
        command = pytest_command([lab.tests], target, report, "--timeout", "90", *extra)
        env = {**os.environ, "PGLAB_HOME": str(root)}
        try:
            proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return LabResult(lab, error=f"the checks did not finish within {timeout:g} s")
        if proc.returncode == ENVIRONMENT_BROKEN:
            why = report.parent / ENVIRONMENT_FILE
            message = why.read_text() if why.is_file() else (proc.stdout + proc.stderr).strip()[-2000:]
            return LabResult(lab, environment=message.strip())
        return read_report(lab, report, proc.stdout + proc.stderr)


def read_report(lab: Lab, report: Path, console_output: str) -> LabResult:
    """Turn a `--pglab-report` file into a LabResult; explain a run that wrote none."""
    try:
        rows = json.loads(report.read_text())
    except (OSError, ValueError):
        tail = "\n".join(console_output.strip().splitlines()[-15:])
        return LabResult(lab, error=f"pytest did not report any result:\n{tail}")
    tests = [TestResult(r["name"], r["status"], r["message"], r["output"], r.get("kind", "")) for r in rows]
    result = LabResult(lab, tests)
    if not rows:
        result.error = "no checks were collected:\n" + "\n".join(console_output.strip().splitlines()[-15:])
    elif broken := next((t for t in tests if t.kind == "import"), None):
        result.error = broken.message  # one report for a syntax error, not one per check
    return result
