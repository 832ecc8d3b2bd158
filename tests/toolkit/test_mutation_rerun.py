"""`pglab mutation --survivors` re-applies a run's surviving diffs to today's solution and
re-runs the checks on each; it needs no cosmic-ray, only the run's `labNN.json`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mini_course import ARITH_MANIFEST, mini_course
from typer.testing import CliRunner

from pglab.cli import app
from pglab.course import load_course
from pglab.mutants import solved
from pglab.mutation import check_command
from pglab.mutation_rerun import apply_diff, mutated_file, rerun_survivors

SOLUTION = '''"""Lab 00: arithmetic."""


def identity(x: int) -> int:
    """x itself."""
    # BEGIN SOLUTION
    y = x
    return y
    # END SOLUTION
'''
TESTS = '''
MODULE = "lab00_arith"


def test_identity(lab):
    assert lab.identity(3) == 3
'''


def diff_of(old: str, new: str, context: str = '    """x itself."""\n') -> str:
    """A survivor as cosmic-ray records it: one hunk with a line of context before it."""
    return (f"--- mutation diff ---\n--- a//run/00/labs/lab00_arith.py\n+++ b//run/00/labs/lab00_arith.py\n"
            f"@@ -5,3 +5,3 @@\n {context.rstrip()}\n-{old}\n+{new}\n")


KILLED = diff_of("    y = x", "    y = x + 1")
EQUIVALENT = diff_of("    y = x", "    y = x * 1")
STALE = diff_of("    y = 2 * x", "    y = 3 * x")


def test_a_diff_applies_by_its_text_wherever_its_lines_moved():
    today = solved(SOLUTION)  # the text a run mutates: the markers removed
    moved = today.replace('"""Lab 00: arithmetic."""', '"""Lab 00: arithmetic,\n\nnow with a longer docstring."""')
    assert mutated_file(KILLED) == "lab00_arith.py"
    assert "    y = x + 1\n" in (apply_diff(moved, KILLED) or "")
    assert apply_diff(today, STALE) is None  # the mutated line is gone
    # A changed context line is dropped before the hunk is declared stale; a changed line never is.
    edited = apply_diff(today, diff_of("    y = x", "    y = x + 1", "    # edited")) or ""
    assert "    y = x + 1\n" in edited and "x itself." in edited


@pytest.fixture
def course(tmp_path, monkeypatch) -> Iterator[Path]:
    yield from mini_course(tmp_path / "course", monkeypatch, {
        "solutions/lab00_arith.py": SOLUTION, "tests/labs/test_lab00_arith.py": TESTS,
        "tutorials/00-arith.ipynb": "{}", "course.toml": ARITH_MANIFEST,
        "pyproject.toml": '[tool.pytest.ini_options]\naddopts = "-p pglab.pytest_plugin"\n'})


def test_survivors_are_re_run_and_sorted_into_killed_surviving_and_stale(course, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "lab00.json").write_text(json.dumps({"lab": "00", "run": 10, "killed": 7,
                                                "survivors": [KILLED, EQUIVALENT, STALE]}))
    mini = load_course(course)
    rerun = rerun_survivors(mini, mini.labs[0], out, check_command, timeout=60)
    assert (rerun.killed, rerun.survivors, rerun.stale) == ([KILLED], [EQUIVALENT], [STALE]), rerun
    assert rerun.score == pytest.approx(0.8)  # 7 killed by the run, 1 since, of 10
    written = json.loads((out / "lab00-survivors.json").read_text())
    assert written["killed"] == 8 and written["survivors"] == [EQUIVALENT] and written["stale"] == [STALE]


def test_without_an_earlier_run_it_says_which_command_to_run_first(course, tmp_path):
    result = CliRunner().invoke(app, ["mutation", "--lab", "00", "--survivors", "--out", str(tmp_path / "none")])
    assert result.exit_code == 1 and "run `pglab mutation --lab 00` first" in result.output, result.output


def test_checks_that_fail_on_the_solution_itself_give_no_verdict(course, tmp_path):
    (course / "tests/labs/test_lab00_arith.py").write_text(TESTS.replace("== 3", "== 4"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "lab00.json").write_text(json.dumps({"lab": "00", "run": 10, "killed": 9, "survivors": [EQUIVALENT]}))
    mini = load_course(course)
    rerun = rerun_survivors(mini, mini.labs[0], out, check_command, timeout=60)
    assert "fail on the solution itself" in rerun.error and not rerun.killed, rerun
