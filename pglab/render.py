"""Rich renderings of check results and progress for the terminal."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .checks import ENVIRONMENT_BROKEN, LabResult
from .course import Course
from .progress import DONE, IN_PROGRESS, NOT_STARTED, LabStatus

MARKS = {"pass": "[green]✓[/]", "fail": "[red]✗[/]", "error": "[red]✗[/]", "skip": "[yellow]–[/]"}
STATUS_STYLE = {DONE: "green", IN_PROGRESS: "yellow", NOT_STARTED: "dim"}


def check_report(console: Console, result: LabResult, course: Course, *, verbose: bool = False,
                 watching: bool = False) -> None:
    lab = result.lab
    console.print(f"[bold]Lab {lab.id}[/] · {lab.title}")
    if result.environment is not None:
        environment_report(console, result.environment)
        return
    if result.error:
        console.print(Panel(Text(result.error), title="the checks could not run", border_style="red"))
    import_failed = any(test.kind == "import" for test in result.tests)
    for test in [] if import_failed else result.tests:
        line = f" {MARKS.get(test.status, '?')} {_escape(test.title)}"
        if test.status in ("fail", "error") and test.message:
            line += f"\n     [red]{_escape(test.message)}[/]"
        elif test.status == "skip":
            line += f" [yellow](skipped: {_escape(test.message)})[/]"
        console.print(line)
        if verbose and test.output and test.status in ("fail", "error"):
            console.print(Panel(Text(test.output[-2000:]), border_style="dim"))
    console.print(f"\n{result.passed}/{result.total} checks pass.")
    console.print(next_step(result, course, watching=watching))


def environment_report(console: Console, problem: str) -> None:
    """One message for a broken environment: what is wrong and how to fix it; never "fix your code"."""
    console.print(Panel(Text(problem), title="the database is not usable: your code was not checked",
                        border_style="yellow"))
    console.print(f"Nothing was recorded. Fix the environment, then run the checks again (exit code "
                  f"{ENVIRONMENT_BROKEN}: environment broken). `pglab db status` tells what the course sees.")


def next_step(result: LabResult, course: Course, *, watching: bool = False) -> str:
    lab = result.lab
    if result.all_passed:
        later = [other for other in course.labs if other.id > lab.id]
        if not later:
            return "[green bold]Lab done: that was the last lab. Congratulations![/] See `pglab progress`."
        following = later[0]
        run = "the checks below are its own" if watching else f"then run `pglab check {following.id}`"
        return (f"[green bold]Lab {lab.id} done![/] Next: lab {following.id} · {following.title}\n"
                f"  open {following.tutorial}, {run}")
    again = "and save: the checks run again on every save" if watching else f"then run `pglab check {lab.id}` again"
    if result.error:
        return f"Fix the error above in {lab.learner_files(course.root)}, {again}."
    watch = "" if watching else " (or `pglab watch` to re-run on every save)"
    return (f"Next step: fix the first ✗ in {lab.learner_files(course.root)}, {again}{watch}. "
            f"Stuck? `pglab hint {lab.id}`.")


def progress_table(statuses: list[LabStatus]) -> Group:
    table = Table(title="Course progress", title_justify="left")
    table.add_column("lab", justify="right")
    table.add_column("title")
    table.add_column("status")
    table.add_column("checks", justify="right")
    table.add_column("points", justify="right")
    for item in statuses:
        style = STATUS_STYLE.get(item.status, "red")
        checks = f"{item.passed}/{item.total}" if item.total else ""
        table.add_row(item.lab.id, item.lab.title, f"[{style}]{item.status}[/]", checks,
                      f"{item.earned}/{item.lab.points}")
    earned = sum(item.earned for item in statuses)
    total = sum(item.lab.points for item in statuses)
    done = sum(item.status == DONE for item in statuses)
    filled = round(40 * earned / total) if total else 0
    bar = Text("█" * filled, style="green") + Text("░" * (40 - filled), style="dim")
    return Group(table, bar + Text(f"  {earned}/{total} points · {done}/{len(statuses)} labs done"))


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
