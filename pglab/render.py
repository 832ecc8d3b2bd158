"""Rich renderings of check results and progress for the terminal."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .checks import LabResult
from .course import Course
from .progress import DONE, IN_PROGRESS, NOT_STARTED, LabStatus

MARKS = {"pass": "[green]✓[/]", "fail": "[red]✗[/]", "error": "[red]✗[/]", "skip": "[yellow]–[/]"}
STATUS_STYLE = {DONE: "green", IN_PROGRESS: "yellow", NOT_STARTED: "dim"}


def check_report(console: Console, result: LabResult, course: Course, *, verbose: bool = False) -> None:
    lab = result.lab
    console.print(f"[bold]Lab {lab.id}[/] · {lab.title}")
    if result.error:
        console.print(Panel(Text(result.error), title="the checks could not run", border_style="red"))
    for test in result.tests:
        line = f" {MARKS.get(test.status, '?')} {test.title}"
        if test.status in ("fail", "error") and test.message:
            line += f"\n     [red]{_escape(test.message)}[/]"
        elif test.status == "skip":
            line += f" [yellow](skipped: {_escape(test.message)})[/]"
        console.print(line)
        if verbose and test.output and test.status in ("fail", "error"):
            console.print(Panel(Text(test.output[-2000:]), border_style="dim"))
    console.print(f"\n{result.passed}/{result.total} checks pass.")
    console.print(next_step(result, course))


def next_step(result: LabResult, course: Course) -> str:
    lab = result.lab
    if result.all_passed:
        later = [other for other in course.labs if other.id > lab.id]
        if not later:
            return "[green bold]Lab done: that was the last lab. Congratulations![/] See `pglab progress`."
        following = later[0]
        return (f"[green bold]Lab {lab.id} done![/] Next: lab {following.id} · {following.title}\n"
                f"  open {following.tutorial}, then run `pglab check {following.id}`")
    if result.error:
        return f"Fix the error above in {lab.skeleton}, then run `pglab check {lab.id}` again."
    return (f"Next step: fix the first ✗ in {lab.skeleton}, then run `pglab check {lab.id}` again "
            f"(or `pglab watch` to re-run on every save). Stuck? `pglab hint {lab.id}`.")


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
