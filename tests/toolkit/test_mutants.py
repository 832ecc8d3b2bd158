"""Kept mutants: planted in a copy of the solved course, caught (or not) by the lab's checks,
and the `caught_by` hint that lets a run try the catching check first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mini_course import ARITH_MANIFEST, mini_course

from pglab.course import load_course
from pglab.mutants import Mutant, MutantError, build_target, load_mutants, update_hints, verify_mutants

BASE = '''"""Lab 00, part 1."""

OFFSET = 0
'''
SOLUTION = '''"""Lab 00: arithmetic."""

from lab00_base import OFFSET


def double(x: int) -> int:
    """Twice x."""
    # BEGIN SOLUTION
    return 2 * x + OFFSET
    # END SOLUTION
'''
TESTS = '''
def test_double_of_zero(load_lab):
    assert load_lab("lab00_arith").double(0) == 0


def test_double_doubles(load_lab):
    assert load_lab("lab00_arith").double(21) == 42
'''
MUTANTS = '''[[mutant]]
name = "adds-instead"
caught_by = "test_double_of_zero"
bug = "adds two instead of multiplying by two"
edits = [["2 * x", "2 + x"]]

[[mutant]]
name = "offset-in-base"
bug = "the offset of part 1 is off by one"
edits = [["OFFSET = 0", "OFFSET = 1"]]
module = "lab00_base"

[[mutant]]
name = "equivalent"
bug = "an equivalent rewrite that no check can tell apart"
edits = [["2 * x", "x * 2"]]
'''


@pytest.fixture
def course(tmp_path, monkeypatch) -> Iterator[Path]:
    yield from mini_course(tmp_path, monkeypatch, {
        "solutions/lab00_arith.py": SOLUTION, "solutions/lab00_base.py": BASE,
        "tests/labs/test_lab00_arith.py": TESTS, "tests/mutants/lab00_arith.toml": MUTANTS,
        "tutorials/00-arith.ipynb": "{}", "course.toml": ARITH_MANIFEST,
        "pyproject.toml": '[tool.pytest.ini_options]\naddopts = "-p pglab.pytest_plugin"\n'})


def test_mutants_are_caught_or_named_as_survivors_and_hints_are_kept_up_to_date(course):
    mini = load_course(course)
    verdicts = {v.mutant.name: v for v in verify_mutants(mini, mini.labs, jobs=2)[0]}
    adds, base, equivalent = verdicts["adds-instead"], verdicts["offset-in-base"], verdicts["equivalent"]
    # 2 + 0 == 2: the hinted check catches it alone, and nothing else runs.
    assert adds.killed_by == ["test_double_of_zero"] and not adds.hint_stale and not adds.hint_outdated
    assert base.killed_by == ["test_double_of_zero"] and base.hint_outdated  # planted in part 1, no hint yet
    assert not equivalent.killed and not equivalent.error

    assert update_hints(mini, list(verdicts.values())) == [course / "tests/mutants/lab00_arith.toml"]
    hinted = {m.name: m.caught_by for m in load_mutants(mini, mini.labs[0])}
    assert hinted == {"adds-instead": "test_double_of_zero", "offset-in-base": "test_double_of_zero",
                      "equivalent": None}


def test_a_stale_hint_falls_back_to_every_check(course):
    path = course / "tests/mutants/lab00_arith.toml"
    path.write_text(MUTANTS.replace('edits = [["2 * x", "2 + x"]]', 'edits = [["2 * x", "3 * x"]]'))  # 0 == 0
    mini = load_course(course)
    adds = next(v for v in verify_mutants(mini, mini.labs)[0] if v.mutant.name == "adds-instead")
    assert adds.killed_by == ["test_double_doubles"] and adds.hint_stale and adds.hint_outdated
    update_hints(mini, [adds])
    assert 'name = "adds-instead"\ncaught_by = "test_double_doubles"\nbug' in path.read_text()


def test_an_edit_that_no_longer_applies_is_named(course):
    (course / "tests/mutants/lab00_arith.toml").write_text(MUTANTS.replace('"OFFSET = 0"', '"OFFSET = 9"'))
    mini = load_course(course)
    base = next(v for v in verify_mutants(mini, mini.labs)[0] if v.mutant.name == "offset-in-base")
    assert not base.killed and "offset-in-base" in base.error and "occurs 0 times" in base.error
    with pytest.raises(MutantError, match="not one of lab 00's files"):
        build_target(mini, mini.labs[0], Mutant(name="x", bug="a bug of ten", edits=[("a", "b")],
                                                module="lab01_other"), course / "out")
