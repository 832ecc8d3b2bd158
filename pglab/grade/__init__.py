"""`pglab grade`: score learner submissions with the course's own checks, hostile ones included.

What is guaranteed, with bubblewrap (Linux): each lab runs as an unprivileged uid in
its own PID and network namespaces (killed as a whole), sees no `solutions/` (but the
reference labs its checks build on), no `.pglab/`, no secret, and reaches only its own
database, as its own role, through a socket the grader closes (any other database is
refused: "permission denied for database"); the score comes only from records
the grader can verify (collected checks reconciled, call phases, canaries), and a lab
that tampers visibly is `integrity: suspect` with its points withheld. One learner
cannot stop the batch nor change another's grade. Not guaranteed: that in-process
tampering clever enough to fool the canaries and the source scan is caught; that the
lab cannot see other databases' and roles' names. Without bubblewrap nothing is
isolated and every report says so. Details: docs/GRADING.md.

Modules: runner (one lab, a submission, a batch), sandbox (bubblewrap), inbox (its
entry point inside), proxy (the database socket), gate (its own database only), isolation (roles and databases),
collector (the in-sandbox pytest plugin), scoring, report, hygiene, limits.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

HELP = "\n\n".join([
    "Grade submissions with the course's own checks: results.json, junit.xml, summary.csv.",
    "Each lab runs sandboxed (bubblewrap: unprivileged uid, own PID and network namespaces, a read-only course"
    " copy without solutions/ or secrets) in a database of its own, through a non-superuser role; its"
    " connections are refused any other database of the server.",
    "Guaranteed: a check passes only when its call phase reported passed to the grader's own plugin; skips count"
    " as not passed unless the course declares them (PgBouncer); planted canaries and a source scan mark"
    " tampering as 'integrity: suspect' (points withheld); one learner cannot stop the batch or change another's"
    " grade; no password reaches a report.",
    "Not guaranteed: catching in-process tampering that fools both canaries and scan; hiding other databases'"
    " names. Without bubblewrap, every report says NOT ISOLATED. See docs/GRADING.md.",
    "Exit code 0 when grading completed, whatever the score; 2 when the grader could not run.",
])


def register(app: typer.Typer) -> None:
    """Add `pglab grade` to the CLI."""

    @app.command("grade", help=HELP)
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
        memory: Annotated[int, typer.Option(help="memory limit per lab, in MiB")] = 2048,
        jobs: Annotated[int, typer.Option(help="labs graded at once, each in its own sandbox and database")] = 1,
        extra_tests: Annotated[Path | None, typer.Option(
            help="a folder of extra checks (test_<module>*.py), reported by name and status only")] = None,
    ) -> None:
        from ..course import load_course
        from ..servers.database import DatabaseUnavailableError, locate
        from .limits import Limits
        from .report import clean
        from .runner import GradeError, Options, err, run, select_labs

        # On SIGTERM, unwind like Ctrl-C: the labs' sandboxes are killed and their databases dropped.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            limits = Limits(timeout=timeout, test_timeout=test_timeout, memory_mib=memory)
            try:
                limits.validate()
            except ValueError as exc:
                raise GradeError(f"{exc} (--timeout, --test-timeout and --memory must be positive)") from None
            if jobs < 1:
                raise GradeError("--jobs must be at least 1")
            if extra_tests is not None and not extra_tests.is_dir():
                raise GradeError(f"--extra-tests {extra_tests} is not a folder")
            for folder in (submission, submissions):
                if folder is not None and not folder.is_dir():
                    raise GradeError(f"{folder} is not a folder")
            course = load_course(Path(__file__).resolve().parents[2])  # the installed course, never a submission's
            opts = Options(select_labs(course, lab or []), limits, extra_tests.resolve() if extra_tests else None,
                           jobs)
            try:
                superuser = locate().dsn
            except DatabaseUnavailableError as exc:
                raise GradeError(str(exc)) from None
            run(submission, submissions, opts, out, course, superuser)
        except GradeError as exc:
            err.print(f"[bold red]error:[/] {clean(str(exc), 2000)}")
            raise typer.Exit(2) from None
