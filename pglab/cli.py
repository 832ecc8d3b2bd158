"""The `pglab` command: database, checks, progress, hints, watch, grading, benchmarks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from . import bench, capstone, grade, labgen, mutation, notebooks, progress, render
from .checks import ENVIRONMENT_BROKEN, LabResult, ping_problem, probe_database, run_checks
from .course import Course, Lab, ManifestError, UnknownLabError, load_course
from .servers import pgbouncer, replica
from .servers.database import DatabaseUnavailableError, locate
from .servers.dsn import BadDsnError, mask_dsn, validate_dsn
from .servers.embedded import EmbeddedServer, EmbeddedServerError, binary

console = Console()
err = Console(stderr=True)

LEARNER, AUTHOR, DATABASE = "Learner commands", "Authoring and grading", "Database"  # sections of --help
app = typer.Typer(help="Toolkit of the PostgreSQL connection pooling course.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
db_app = typer.Typer(help="Find, start and stop the course's PostgreSQL server.", no_args_is_help=True)
app.add_typer(db_app, name="db", rich_help_panel=DATABASE)


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


# -- db ---------------------------------------------------------------------
@db_app.command("up")
def db_up() -> None:
    """Start (or find) the server and print where it is."""
    try:
        database = locate()
    except DatabaseUnavailableError as exc:
        raise fail(str(exc)) from None
    console.print(f"[green]PostgreSQL is up[/] ({database.kind}): {database.masked_dsn}")
    console.print("Full DSN with the password: [bold]pglab db url[/]")


@db_app.command("url")
def db_url() -> None:
    """Print the full DSN (with the password), e.g. `export DATABASE_URL=$(pglab db url)`."""
    try:
        print(locate().dsn)
    except DatabaseUnavailableError as exc:
        raise fail(str(exc)) from None


@db_app.command("status")
def db_status() -> None:
    """Say which server the course uses and whether it answers (exit 1 when it does not)."""
    if url := os.environ.get("DATABASE_URL"):
        try:
            problem = ping_problem(validate_dsn(url), "env", timeout=5)
        except BadDsnError as exc:
            problem = f"DATABASE_URL is not usable: {exc}"
        if problem:
            err.print(f"[red]DATABASE_URL is set but not usable[/] ({mask_dsn(url)}):\n{problem}")
            raise typer.Exit(1)
        console.print(f"[green]DATABASE_URL answers[/]: {mask_dsn(url)} (the embedded server is not used)")
        return
    status = EmbeddedServer().status()
    if status.running:
        console.print(f"[green]embedded server running[/] on 127.0.0.1:{status.port} (pid {status.pid})")
    else:
        console.print("[yellow]embedded server not running[/]; `pglab db up` starts it")
        raise typer.Exit(1)


@db_app.command("down")
def db_down() -> None:
    """Stop the embedded server (data is kept under .pglab/)."""
    try:
        stopped = EmbeddedServer().down()
    except EmbeddedServerError as exc:
        raise fail(str(exc)) from None
    console.print("embedded server stopped" if stopped else "embedded server was not running")


@db_app.command("restart")
def db_restart() -> None:
    """Restart the embedded server on the same port (a failure drill)."""
    try:
        console.print(f"restarted: {mask_dsn(EmbeddedServer().restart())}")
    except EmbeddedServerError as exc:
        raise fail(str(exc)) from None


@db_app.command("psql", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def db_psql(ctx: typer.Context) -> None:
    """Open psql on the course database (extra arguments go to psql)."""
    try:
        dsn = locate().dsn
    except DatabaseUnavailableError as exc:
        raise fail(str(exc)) from None
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    env = {**os.environ, "PGPASSWORD": parts.password or ""}
    args = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
            "-U", parts.username or "", "-d", parts.path.lstrip("/"), *ctx.args]
    raise typer.Exit(subprocess.call([str(binary("psql")), *args], env=env))


# -- learner commands -----------------------------------------------------------
LabId = Annotated[str | None, typer.Argument(help="lab id, e.g. 01 (default: the first lab not done)")]


def _course() -> Course:
    try:
        return load_course()
    except ManifestError as exc:
        raise fail(str(exc)) from None


def _pick_lab(course: Course, lab_id: str | None) -> Lab:
    if lab_id is not None:
        try:
            return course.lab(lab_id)
        except UnknownLabError as exc:
            raise fail(str(exc)) from None
    for item in progress.course_status(course):
        if item.status != progress.DONE:
            return item.lab
    return course.labs[-1]


def _check(course: Course, lab: Lab, target: str, verbose: bool, *, watching: bool = False) -> LabResult:
    """Probe the database, run the checks, show them; record the result of a run on labs/."""
    with console.status(f"running the checks of lab {lab.id} against {target}/ ..."):
        _, problem = probe_database()
        result = LabResult(lab, environment=problem) if problem else run_checks(lab, target)
    render.check_report(console, result, course, verbose=verbose, watching=watching)
    if target == "labs":
        progress.record(result, course.root)  # a broken environment is never recorded
    return result


@app.command("check", rich_help_panel=LEARNER)
def check(
    lab_id: LabId = None,
    target: Annotated[str, typer.Option(help="labs (your code), solutions, or a folder")] = "labs",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show the full output of failing checks")] = False,
) -> None:
    """Run a lab's checks against your code in labs/.

    Exit code: 0 all pass, 1 a check fails, 2 usage error,
    69 the environment is broken (no usable database; nothing is recorded).
    """
    course = _course()
    result = _check(course, _pick_lab(course, lab_id), target, verbose)
    raise typer.Exit(_exit_code(result))


def _exit_code(result: LabResult) -> int:
    return ENVIRONMENT_BROKEN if result.environment is not None else 0 if result.all_passed else 1


@app.command("progress", rich_help_panel=LEARNER)
def show_progress() -> None:
    """Every lab, its status and points, and an overall progress bar."""
    console.print(render.progress_table(progress.course_status(_course())))


@app.command("hint", rich_help_panel=LEARNER)
def hint(
    lab_id: LabId = None,
    reset: Annotated[bool, typer.Option("--reset", help="start this lab's hints from the first again")] = False,
) -> None:
    """Show the next hint for a lab (each call reveals one more; never the solution)."""
    course = _course()
    lab = _pick_lab(course, lab_id)
    if reset:
        progress.reset_hints(lab)
        console.print(f"hints of lab {lab.id} reset")
        return
    shown, hints = progress.next_hint(lab)
    for number, text in enumerate(hints, 1):
        style = "bold" if number == shown else "dim"
        console.print(f"[{style}]Hint {number}/{len(lab.hints)}:[/] " + text.replace("[", r"\["), style=style)
    if shown == len(lab.hints):
        console.print(f"[dim]That was the last hint. Reread {lab.tutorial}, and read the failing "
                      f"check's message with `pglab check {lab.id} -v`.[/]")


@app.command("watch", rich_help_panel=LEARNER)
def watch(
    lab_id: LabId = None,
    poll: Annotated[bool, typer.Option("--poll", help="poll for changes (network drives, containers)")] = False,
    manual: Annotated[bool, typer.Option(
        "--manual", help="re-run when you press Enter instead of watching files")] = False,
) -> None:
    """Re-run a lab's checks each time you save its file in labs/; move on when it passes (Ctrl-C to stop).

    Exit code 69 when the environment is broken at the start (no usable database).
    """
    course = _course()
    lab = _pick_lab(course, lab_id)
    lab, result = _watch_round(course, lab)
    if result.environment is not None:
        raise typer.Exit(ENVIRONMENT_BROKEN)
    if not manual:
        try:
            import watchfiles

            for changes in watchfiles.watch(course.root / "labs", force_polling=poll or None,
                                            watch_filter=watchfiles.PythonFilter()):
                if _saved(lab, changes):
                    lab, _ = _watch_round(course, lab)
            return
        except KeyboardInterrupt:
            return
        except OSError as exc:  # e.g. inotify watch limit reached
            err.print(f"[yellow]file watching is unavailable ({exc}); falling back to manual mode[/]")
    _manual_loop(course, lab)


def _watch_round(course: Course, lab: Lab) -> tuple[Lab, LabResult]:
    """Clear the screen, check `lab`; when it passes, move on to the next lab and show its checks."""
    console.clear()
    result = _check(course, lab, "labs", False, watching=True)
    later = [other for other in course.labs if other.id > lab.id]
    if result.all_passed and later:
        lab = later[0]
        console.rule(f"lab {lab.id}")
        _check(course, lab, "labs", False, watching=True)
    console.print(f"[dim]watching {lab.learner_files(course.root)} ... save to re-run the checks (Ctrl-C to stop)[/]")
    return lab, result


def _saved(lab: Lab, changes: set[tuple[object, str]]) -> bool:
    """True when `changes` include one of the lab's own files (lab 09 has two): saving another lab never
    switches labs."""
    return any(re.fullmatch(rf"lab{lab.id}_\w+\.py", os.path.basename(path)) for _, path in changes)


def _manual_loop(course: Course, lab: Lab) -> None:
    while True:
        try:
            answer = input("Press Enter to re-run the checks, or type q and Enter to stop: ")
        except (EOFError, KeyboardInterrupt):
            return
        if answer.strip().lower() == "q":
            return
        lab, _ = _watch_round(course, lab)


# -- authoring ----------------------------------------------------------------
@app.command("build-labs", rich_help_panel=AUTHOR)
def build_labs(
    check: Annotated[bool, typer.Option("--check", help="only report; exit 1 if labs/ is out of sync")] = False,
) -> None:
    """Generate the skeletons in labs/ from solutions/."""
    try:
        stale = labgen.out_of_sync()
    except labgen.LabgenError as exc:
        raise fail(str(exc)) from None
    if check:
        for lab in stale:
            err.print(f"[red]out of sync:[/] {lab.skeleton.name}\n{labgen.diff(lab)}")
        if stale:
            raise fail("labs/ differs from what solutions/ generates; run `pglab build-labs`", 1)
        console.print("[green]labs/ is in sync with solutions/[/]")
        return
    for lab, backup in labgen.write():
        note = f" (previous version saved to {backup})" if backup else ""
        console.print(f"wrote labs/{lab.skeleton.name}{note}")
    console.print("[green]labs/ is up to date[/]")


@app.command("strip-notebooks", rich_help_panel=AUTHOR)
def strip_notebooks(
    check: Annotated[bool, typer.Option("--check", help="only report; exit 1 if a notebook carries outputs")] = False,
) -> None:
    """Remove outputs from every notebook in tutorials/ and workshops/."""
    dirty = [p for p in notebooks.notebooks() if notebooks.carries_outputs(p)]
    if check:
        for path in dirty:
            err.print(f"[red]carries outputs:[/] {path}")
        if dirty:
            raise fail("strip them with `pglab strip-notebooks`", 1)
        console.print("[green]no notebook carries outputs[/]")
        return
    for path in dirty:
        notebooks.strip(path)
        console.print(f"stripped {path}")


@app.command("lint", rich_help_panel=AUTHOR)
def lint() -> None:
    """Check course.toml: every lab has its files, points and hints."""
    try:
        problems = load_course().lint()
    except ManifestError as exc:
        raise fail(str(exc), 1) from None
    for problem in problems:
        err.print(f"[red]-[/] {problem}")
    if problems:
        raise fail(f"{len(problems)} problem(s) in course.toml", 1)
    console.print(f"[green]course.toml is valid[/]: {len(load_course().labs)} labs")


@app.command("verify-checks", rich_help_panel=AUTHOR)
def verify_checks(
    labs: Annotated[list[str] | None, typer.Option("--lab", help="only this lab (repeatable)")] = None,
    flips: Annotated[bool, typer.Option(help="prove each check passes on solutions/ and fails on labs/")] = True,
    mutants: Annotated[bool, typer.Option(help="prove each kept mutant fails at least one check")] = True,
    jobs: Annotated[int, typer.Option(help="mutants run in parallel")] = 2,
    solutions_report: Annotated[Path | None, typer.Option(
        help="a --pglab-report of a run on solutions/ to reuse (e.g. make test's) instead of running again")] = None,
    update_hints: Annotated[bool, typer.Option(
        help="write each mutant's first catching check into its file (caught_by), so the next run tries it first")
    ] = False,
) -> None:
    """Course self-check: the checks flip (solution passes, skeleton fails) and catch every mutant."""
    course = _course()
    chosen = [course.lab(lab_id) for lab_id in labs] if labs else course.labs
    failures = _verify_flips(course, chosen, solutions_report) if flips else 0
    failures += _verify_mutants(course, chosen, jobs, update_hints) if mutants else 0
    if failures:
        raise fail(f"verify-checks: {failures} problem(s), listed above", 1)


def _verify_flips(course: Course, labs: list[Lab], solutions_report: Path | None) -> int:
    from .verify import verify

    with console.status("running the graded checks against the solutions and the generated skeletons ..."):
        verdicts = verify(course, labs, solutions_report)
    bad = [v for v in verdicts if not v.honest]
    skipped = [v for v in verdicts if v.on_solution == "skip"]
    for verdict in skipped:
        console.print(f"[yellow]skipped in both trees[/] {verdict.nodeid}")
    for verdict in bad:
        err.print(f"[red]dishonest check[/] {verdict.nodeid}: solution {verdict.on_solution}, "
                  f"skeleton {verdict.on_skeleton}")
    if not bad:
        console.print(f"[green]all {len(verdicts) - len(skipped)} graded checks pass on solutions/ "
                      f"and fail on labs/[/]" + (f" ({len(skipped)} skipped in both)" if skipped else ""))
    return len(bad)


def _verify_mutants(course: Course, labs: list[Lab], jobs: int, update: bool) -> int:
    from .mutants import update_hints, verify_mutants

    with console.status(f"planting the mutants of {len(labs)} lab(s) in the solutions ..."):
        verdicts, problems = verify_mutants(course, labs, jobs)
    for problem in problems:
        err.print(f"[red]mutants[/] {problem}")
    for v in verdicts:  # the record of which check catches which mistake
        if v.killed:
            console.print(f"lab {v.lab.id} mutant {v.mutant.name}: caught by {v.killed_by[0]}", highlight=False)
    survivors = [v for v in verdicts if not v.killed]
    for v in survivors:
        why = v.error or "no check failed"
        err.print(f"[red]mutant survives[/] lab {v.lab.id} {v.mutant.name} ({v.mutant.bug}): {why}")
    by_lab: dict[str, list[int]] = {}
    for v in verdicts:
        by_lab.setdefault(v.lab.id, [0, 0])[v.killed] += 1
    for lab_id, (alive, killed) in sorted(by_lab.items()):
        console.print(f"lab {lab_id}: {killed}/{alive + killed} mutants killed")
    if not survivors and not problems:
        console.print(f"[green]all {len(verdicts)} mutants are caught by at least one check[/]")
    if outdated := [v for v in verdicts if v.hint_outdated]:
        if update:
            for path in update_hints(course, verdicts):
                console.print(f"updated the caught_by hints in {path.relative_to(course.root)}")
        else:
            console.print(f"[dim]{len(outdated)} mutant(s) without an up-to-date caught_by hint: "
                          "`pglab verify-checks --update-hints` makes the next run faster[/]")
    return len(survivors) + len(problems)


# Commands that live in their own modules (each keeps its heavy imports inside functions).
for _module, _parent in ((grade, app), (bench, app), (capstone, app), (mutation, app), (pgbouncer, db_app),
                         (replica, db_app)):
    _module.register(_parent)
for _command in app.registered_commands:  # commands registered by other modules are author or grader tools
    _command.rich_help_panel = _command.rich_help_panel or AUTHOR


def main() -> None:
    try:
        app()
    except (ManifestError, UnknownLabError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
