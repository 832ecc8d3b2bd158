"""`pglab mutation` mutates the solution regions of every file of a lab, and only those.

cosmic-ray is installed by `make mutation` (requirements-mutation.txt), not by `make test`:
without it these tests skip, saying so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mini_course import ARITH_MANIFEST, mini_course

pytest.importorskip("cosmic_ray", reason="cosmic-ray is installed by `make mutation` only")

from cosmic_ray.work_db import WorkDB, use_db  # noqa: E402
from cosmic_ray.work_item import WorkerOutcome  # noqa: E402

from pglab.course import load_course  # noqa: E402
from pglab.mutation import lab_modules, run_lab  # noqa: E402

# A lab in two files, as lab 09 is: each has one solution region and code outside it.
BASE = '''"""Lab 00, part 1."""

LIMIT = 2 + 3


def offset() -> int:
    """The offset."""
    # BEGIN SOLUTION
    return 0
    # END SOLUTION
'''
SOLUTION = '''"""Lab 00: arithmetic."""

from lab00_base import LIMIT, offset

SCALE = LIMIT * 7


def identity(x: int) -> int:
    """x itself."""
    # BEGIN SOLUTION
    return x
    # END SOLUTION
'''
TESTS = '''
def test_offset_is_zero(load_lab):
    assert load_lab("lab00_base").offset() == 0


def test_identity(load_lab):
    assert load_lab("lab00_arith").identity(3) == 3
'''


@pytest.fixture
def course(tmp_path, monkeypatch) -> Iterator[Path]:
    yield from mini_course(tmp_path, monkeypatch, {
        "solutions/lab00_arith.py": SOLUTION, "solutions/lab00_base.py": BASE,
        "tests/labs/test_lab00_arith.py": TESTS, "tutorials/00-arith.ipynb": "{}", "course.toml": ARITH_MANIFEST,
        "pyproject.toml": '[tool.pytest.ini_options]\naddopts = "-p pglab.pytest_plugin"\n'})


def test_a_lab_in_two_files_has_both_mutated_inside_its_regions_only(course, tmp_path):
    mini = load_course(course)
    lab = mini.labs[0]
    assert lab_modules(mini, lab) == ["lab00_arith.py", "lab00_base.py"]

    score = run_lab(mini, lab, tmp_path / "out", timeout=60)
    assert not score.error, score.error
    assert score.run > 0 and score.killed == score.run, score.survivors  # both checks catch every mutant

    ran: dict[str, set[int]] = {}
    with use_db(str(tmp_path / "out" / lab.id / "session.sqlite"), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome != WorkerOutcome.SKIPPED:
                for mutation in item.mutations:
                    ran.setdefault(mutation.module_path.name, set()).add(mutation.start_pos[0])
    # `return 0` is line 8 of the solved part 1, `return x` line 10 of the solved main module
    # (marker lines removed); `LIMIT = 2 + 3` and `SCALE = LIMIT * 7` lie outside the regions.
    assert ran == {"lab00_base.py": {8}, "lab00_arith.py": {10}}
