"""`pglab mutation` (`make mutation`): an automatic mutation run over the solution regions.

The kept mutants in `tests/mutants/` are bugs a person chose; this is the machine's
complement. cosmic-ray (https://cosmic-ray.readthedocs.io) mutates every operator,
constant and statement it can in a lab's solved modules (every file of the lab: both
halves of lab 09); only mutations inside the `# BEGIN SOLUTION` regions, the code a
learner writes, are run. cosmic-ray's core
operators only touch operators and constants, and much of what a learner writes in an
asyncio lab has neither (`return await conn.fetch(query, *args)`): three course
operators add the slips of async code, a deleted statement, a forgotten `await` and a
keyword argument dropped to `None` (a lost `timeout=`). Each mutant runs the lab's checks
(`-x`, first failure wins). The score is killed / run; the survivors are listed with their
diff, for an author to judge: an equivalent mutant (one that changes nothing a learner
could observe) is noted under "Mutation survivors" in `docs/BEHAVIOURS.md`, any other
survivor asks for a check. Long (minutes to an hour per lab): not part of CI.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from .checks import UNUSED_PLUGINS
from .course import Course, Lab
from .labgen import BEGIN, END
from .mutants import write_solved

Position = tuple[int, int]  # (line, column) in parso's terms
INSTALL_HINT = "cosmic-ray is not installed: `make mutation` installs it (requirements-mutation.txt)"


@dataclass
class LabScore:
    lab: str
    run: int = 0
    killed: int = 0
    survivors: list[str] = field(default_factory=list)  # the diffs of surviving mutants
    error: str = ""

    @property
    def score(self) -> float:
        return self.killed / self.run if self.run else 0.0


def solution_lines(source: str) -> set[int]:
    """Line numbers, in the solved text (marker lines removed), of the code inside the regions."""
    lines: set[int] = set()
    inside, number = False, 0
    for line in source.splitlines():
        if BEGIN.match(line):
            inside = True
        elif END.match(line):
            inside = False
        else:
            number += 1
            if inside:
                lines.add(number)
    return lines


def course_operators() -> dict[str, type]:
    """The course's own cosmic-ray operators, by name (cosmic-ray must be importable)."""
    from cosmic_ray.operators.operator import Example, Operator
    from parso.python.tree import Keyword

    class StatementToPass(Operator):
        """A simple statement replaced by `pass`: the forgotten line (a release, a rollback, a reset)."""

        def mutation_positions(self, node: Any) -> Iterator[tuple[Position, Position]]:
            if node.type == "simple_stmt" and node.children[0].type != "string" \
                    and node.children[0].get_code().strip() not in ("pass", "..."):
                yield node.start_pos, node.end_pos

        def mutate(self, node: Any, index: int) -> Any:
            first, last = node.children[0], node.children[-1]
            node.children = [Keyword("pass", first.start_pos, first.get_first_leaf().prefix)]
            node.children += [last] if last.type == "newline" else []
            return node

        @classmethod
        def examples(cls) -> tuple[Example, ...]:
            return (Example("x = f()\n", "pass\n"),)

    class RemoveAwait(Operator):
        """`await f()` becomes `f()`: the coroutine is created and never run."""

        def mutation_positions(self, node: Any) -> Iterator[tuple[Position, Position]]:
            if isinstance(node, Keyword) and node.value == "await":
                yield node.start_pos, node.end_pos

        def mutate(self, node: Any, index: int) -> Any:
            # The indentation (or space) in front of `await` moves to what followed it.
            node.get_next_leaf().prefix, node.prefix, node.value = node.prefix, "", ""
            return node

        @classmethod
        def examples(cls) -> tuple[Example, ...]:
            return (Example("await f()\n", "f()\n"),)

    class KeywordArgumentToNone(Operator):
        """`f(timeout=t)` becomes `f(timeout=None)`: a setting that never reaches the call."""

        def mutation_positions(self, node: Any) -> Iterator[tuple[Position, Position]]:
            if node.type == "argument" and len(node.children) == 3 and node.children[1].type == "operator" \
                    and node.children[1].value == "=" and node.children[2].get_code().strip() != "None":
                yield node.start_pos, node.end_pos

        def mutate(self, node: Any, index: int) -> Any:
            value = node.children[2]
            node.children[2] = Keyword("None", value.start_pos, value.get_first_leaf().prefix)
            return node

        @classmethod
        def examples(cls) -> tuple[Example, ...]:
            return (Example("f(timeout=t)\n", "f(timeout=None)\n"),)

    return {op.__name__: op for op in (StatementToPass, RemoveAwait, KeywordArgumentToNone)}


def lab_modules(course: Course, lab: Lab) -> list[str]:
    """The file names of every module of `lab`'s solution: one, or both halves of a lab split in two (lab 09)."""
    return sorted(path.name for path in (course.root / "solutions").glob(f"lab{lab.id}_*.py")) or [f"{lab.module}.py"]


def check_command(lab: Lab, target: Path) -> list[str]:
    """The lab's checks against `target`, stopping at the first failure: one mutant's verdict."""
    disabled = [arg for name in UNUSED_PLUGINS for arg in ("-p", f"no:{name}")]
    return [sys.executable, "-m", "pytest", lab.tests, "--target", str(target), "-x", "-q", "--no-header", *disabled]


def _config(modules: list[Path], command: str, timeout: float) -> str:
    return "\n".join([
        "[cosmic-ray]",
        f"module-path = {json.dumps([str(module) for module in modules])}",
        f"timeout = {timeout}",
        "excluded-modules = []",
        f"test-command = {json.dumps(command)}",
        "[cosmic-ray.distributor]",
        'name = "local"',
        "",
    ])


def _skip_outside(session: Path, wanted: dict[str, set[int]]) -> None:
    """Mark every work item that mutates no line of a solution region as skipped (`wanted`: lines by file name)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            if not any(m.start_pos[0] in wanted.get(m.module_path.name, set()) for m in item.mutations):
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))


def _score(session: Path, lab: Lab) -> LabScore:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    score = LabScore(lab.id)
    with use_db(str(session), WorkDB.Mode.open) as db:
        for _item, result in db.completed_work_items:
            if result.worker_outcome != WorkerOutcome.NORMAL:
                continue
            score.run += 1
            if result.test_outcome == TestOutcome.SURVIVED:
                score.survivors.append(result.diff or "")
            else:
                score.killed += 1
    return score


def run_lab(course: Course, lab: Lab, workdir: Path, timeout: float = 120.0) -> LabScore:
    """Mutate `lab`'s solution regions, run its checks on each mutant, and score the run."""
    try:
        import cosmic_ray  # noqa: F401
    except ImportError:
        return LabScore(lab.id, error=INSTALL_HINT)
    folder = write_solved(course, workdir / lab.id / "labs")
    names = lab_modules(course, lab)
    command = shlex.join(check_command(lab, folder))
    config, session = workdir / lab.id / "cosmic-ray.toml", workdir / lab.id / "session.sqlite"
    config.write_text(_config([folder / name for name in names], command, timeout))
    session.unlink(missing_ok=True)  # a fresh run: cosmic-ray refuses to init over an old session's results
    tool = [sys.executable, "-m", "pglab.mutation"]  # cosmic-ray's command line, with the course operators
    steps = (["init", str(config), str(session)], ["exec", str(config), str(session)])
    for step in steps:
        proc = subprocess.run([*tool, *step], cwd=course.root, capture_output=True, text=True)
        if proc.returncode != 0:
            output = (proc.stderr.strip() or proc.stdout.strip())[-500:]  # cosmic-ray logs to stdout
            return LabScore(lab.id, error=f"cosmic-ray {step[0]} failed: {output}")
        if step[0] == "init":  # before exec: run only what a learner writes
            _skip_outside(session, {name: solution_lines((course.root / "solutions" / name).read_text())
                                    for name in names})
    score = _score(session, lab)
    (workdir / f"lab{lab.id}.json").write_text(json.dumps({**asdict(score), "score": score.score}, indent=1))
    return score


def register(app: typer.Typer) -> None:
    @app.command("mutation")
    def mutation(
        labs: Annotated[list[str] | None, typer.Option("--lab", help="only this lab (repeatable)")] = None,
        out: Annotated[Path, typer.Option(help="folder for the sessions and the scores")] = Path("mutation-results"),
        jobs: Annotated[int, typer.Option(help="labs mutated in parallel")] = 2,
        timeout: Annotated[float, typer.Option(help="seconds for one mutant's checks")] = 120.0,
        survivors: Annotated[bool, typer.Option(
            "--survivors", help="re-run only the survivors of the last run in --out, against today's checks")] = False,
    ) -> None:
        """Author command: automatic mutation run (cosmic-ray) over the solution regions; a score per lab."""
        from rich.console import Console
        from rich.table import Table

        from .course import load_course

        course = load_course()
        chosen = [course.lab(lab_id) for lab_id in labs] if labs else course.labs
        if survivors:
            _rerun(course, chosen, out.resolve(), jobs, timeout)
            return
        out.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            scores = list(pool.map(lambda lab: run_lab(course, lab, out.resolve(), timeout), chosen))
        table = Table("lab", "mutants run", "killed", "score", "note", title="automatic mutation run")
        for s in scores:
            table.add_row(s.lab, str(s.run), str(s.killed), f"{s.score:.0%}", s.error or
                          (f"{len(s.survivors)} survivors in {out}/lab{s.lab}.json" if s.survivors else ""))
        Console().print(table)
        (out / "summary.json").write_text(json.dumps(
            [{"lab": s.lab, "run": s.run, "killed": s.killed, "score": round(s.score, 3), "error": s.error}
             for s in scores], indent=1))
        if any(s.error for s in scores):
            raise typer.Exit(1)


def _rerun(course: Course, labs: list[Lab], out: Path, jobs: int, timeout: float) -> None:
    from rich.console import Console
    from rich.table import Table

    from .mutation_rerun import rerun_survivors

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        reruns = list(pool.map(lambda lab: rerun_survivors(course, lab, out, check_command, timeout), labs))
    table = Table("lab", "survivors", "killed now", "still surviving", "stale", "score now",
                  title="survivors of the last run, against today's checks")
    for r in reruns:
        if not r.error:
            table.add_row(r.lab, str(len(r.killed) + len(r.survivors) + len(r.stale)), str(len(r.killed)),
                          str(len(r.survivors)), str(len(r.stale)), f"{r.score:.0%} of {r.run}")
    console = Console()
    if table.rows:
        console.print(table)
    if any(r.stale for r in reruns):
        console.print("stale: the solution's lines changed since that run; run those labs in full again")
    for r in reruns:
        if r.error:
            console.print(f"lab {r.lab}: {r.error}", soft_wrap=True)
    if any(r.error for r in reruns):
        raise typer.Exit(1)


if __name__ == "__main__":  # `python -m pglab.mutation init|exec ...`: cosmic-ray plus the course operators
    import cosmic_ray.cli
    import cosmic_ray.plugins

    cosmic_ray.plugins.OPERATOR_PROVIDERS["pglab"] = course_operators()
    sys.exit(cosmic_ray.cli.main())
