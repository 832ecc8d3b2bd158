"""The learner's commands, on a miniature course of one lab that needs no database."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from mini_course import ARITH_MANIFEST, mini_course
from typer.testing import CliRunner

from pglab.cli import app

SOLUTION = '''"""Lab 00: arithmetic."""


def double(x: int) -> int:
    """Twice x."""
    # BEGIN SOLUTION
    return 2 * x
    # END SOLUTION
'''

TESTS = '''
import pytest


@pytest.fixture
def lab(load_lab):
    return load_lab("lab00_arith")


def test_double_doubles(lab):
    assert lab.double(21) == 42, "double(21) should be 42"


def test_double_of_zero(lab):
    assert lab.double(0) == 0
'''



@pytest.fixture
def course(tmp_path, monkeypatch) -> Iterator[Path]:
    yield from mini_course(tmp_path, monkeypatch, {
        "solutions/lab00_arith.py": SOLUTION, "tests/labs/test_lab00_arith.py": TESTS,
        "tutorials/00-arith.ipynb": "{}", "course.toml": ARITH_MANIFEST,
        "pyproject.toml": '[tool.pytest.ini_options]\naddopts = "-p pglab.pytest_plugin"\n'})


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def test_check_fails_on_the_skeleton_then_passes_on_the_solution(course):
    result = run("check", "00")
    assert result.exit_code == 1, result.output
    assert "not implemented yet: TODO: implement double()" in result.output
    assert "0/2 checks pass" in result.output and "pglab hint 00" in result.output

    shutil.copy(course / "solutions" / "lab00_arith.py", course / "labs" / "lab00_arith.py")
    result = run("check")  # default: the first lab not done
    assert result.exit_code == 0, result.output
    assert "2/2 checks pass" in result.output and "last lab" in result.output


def test_progress_follows_the_learner(course):
    assert "not started" in run("progress").output
    (course / "labs" / "lab00_arith.py").write_text(SOLUTION.replace("2 * x", "x + x + 1"))
    run("check", "00")
    output = run("progress").output
    assert "in progress" in output and "0/2" in output and "0/5 points" in output
    shutil.copy(course / "solutions" / "lab00_arith.py", course / "labs" / "lab00_arith.py")
    run("check", "00")
    output = run("progress").output
    assert "done" in output and "5/5 points" in output


def test_hints_come_one_at_a_time_and_stop_at_the_last(course):
    first = run("hint", "00").output
    assert "Hint 1/2" in first and "first hint" in first and "second hint" not in first
    second = run("hint", "0").output
    assert "Hint 2/2" in second and "last hint" in second
    assert "Hint 2/2" in run("hint", "00").output
    run("hint", "00", "--reset")
    assert "second hint" not in run("hint", "00").output


@pytest.mark.parametrize("command", [["check", "7"], ["hint", "lab99"], ["watch", "3", "--manual"]])
def test_a_lab_that_does_not_exist_is_a_one_line_error(course, command):
    result = run(*command)
    assert result.exit_code == 2
    assert "there is no lab" in result.output and "Traceback" not in result.output


def test_watch_manual_mode_reruns_on_enter(course):
    result = run("watch", "00", "--manual", input="\nq\n")
    assert result.output.count("0/2 checks pass") == 2, result.output


def test_build_labs_check_detects_drift(course):
    assert run("build-labs", "--check").exit_code == 0
    (course / "solutions" / "lab00_arith.py").write_text(SOLUTION.replace("Twice x", "Double x"))
    result = run("build-labs", "--check")
    assert result.exit_code == 1 and "out of sync" in result.output
    assert run("build-labs").exit_code == 0
    assert run("build-labs", "--check").exit_code == 0
