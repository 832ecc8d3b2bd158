"""`pglab mutation` (`make mutation`): an automatic mutation run over the solution regions.

The kept mutants in `tests/mutants/` are bugs a person chose; this is the machine's
complement. cosmic-ray (https://cosmic-ray.readthedocs.io) mutates every operator,
constant and statement it can in a lab's solved module; only mutations inside the
`# BEGIN SOLUTION` regions, the code a learner writes, are run. Each mutant runs the
lab's checks (`-x`, first failure wins). The score is killed / run; the survivors are
listed with their diff, for an author to judge: an equivalent mutant (one that changes
nothing a learner could observe) is noted in `tests/mutants/EQUIVALENT.md`, any other
survivor asks for a check. Long (minutes to an hour per lab): not part of CI.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from .checks import UNUSED_PLUGINS
from .course import Course, Lab
from .labgen import BEGIN, END
from .mutants import write_solved

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


def _config(module: Path, command: str, timeout: float) -> str:
    return "\n".join([
        "[cosmic-ray]",
        f"module-path = {json.dumps(str(module))}",
        f"timeout = {timeout}",
        "excluded-modules = []",
        f"test-command = {json.dumps(command)}",
        "[cosmic-ray.distributor]",
        'name = "local"',
        "",
    ])


def _skip_outside(session: Path, wanted: set[int]) -> None:
    """Mark every work item that mutates no line of a solution region as skipped."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            if not any(m.start_pos[0] in wanted for m in item.mutations):
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
    module = folder / f"{lab.module}.py"
    disabled = " ".join(f"-p no:{name}" for name in UNUSED_PLUGINS)
    command = (f"{shlex.quote(sys.executable)} -m pytest {lab.tests} --target {shlex.quote(str(folder))} "
               f"-x -q --no-header {disabled}")
    config, session = workdir / lab.id / "cosmic-ray.toml", workdir / lab.id / "session.sqlite"
    config.write_text(_config(module, command, timeout))
    tool = [sys.executable, "-m", "cosmic_ray.cli"]
    steps = (["init", str(config), str(session)], ["exec", str(config), str(session)])
    for step in steps:
        proc = subprocess.run([*tool, *step], cwd=course.root, capture_output=True, text=True)
        if proc.returncode != 0:
            return LabScore(lab.id, error=f"cosmic-ray {step[0]} failed: {proc.stderr.strip()[-500:]}")
        if step[0] == "init":  # before exec: run only what a learner writes
            _skip_outside(session, solution_lines((course.root / lab.solution).read_text()))
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
    ) -> None:
        """Author command: automatic mutation run (cosmic-ray) over the solution regions; a score per lab."""
        from rich.console import Console
        from rich.table import Table

        from .course import load_course

        course = load_course()
        chosen = [course.lab(lab_id) for lab_id in labs] if labs else course.labs
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
