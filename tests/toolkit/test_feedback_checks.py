"""What `pglab check` tells the learner, on a miniature course of one lab.

A broken environment is one message, exit code 69 and nothing recorded; an error
in the learner's code names their file, line and function without pytest's
internals; a hang is reported within seconds naming the pending await; a syntax
error is reported once; progress keeps the best result.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mini_course import mini_course
from typer.testing import CliRunner

from pglab import labgen, progress
from pglab.checks import ENVIRONMENT_BROKEN, LabResult, run_checks
from pglab.checks import TestResult as Row
from pglab.cli import app
from pglab.course import load_course

SOLUTION = '''"""Lab 00: a box."""

import asyncio


class Box:
    """A box that opens."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.items = [1, 2]

    async def wait_open(self) -> str:
        """Wait until the box is open; it is open at once."""
        # BEGIN SOLUTION
        await asyncio.sleep(0)
        return "open"
        # END SOLUTION

    def count(self) -> int:
        """How many items the box holds."""
        # BEGIN SOLUTION
        return len(self.items)
        # END SOLUTION
'''

TESTS = '''
import inspect

MODULE = "lab00_box"


def test_count_is_a_plain_method(lab):
    assert not inspect.iscoroutinefunction(lab.Box.count), "count must be a plain method, not `async def`"


def test_count_counts(lab):
    assert lab.Box().count() == 2, "count() should be 2 for a box of two items"


async def test_wait_open_returns(lab):
    assert await lab.Box().wait_open() == "open"


def test_the_database_answers(dsn):
    assert dsn
'''

MANIFEST = '''
[course]
title = "Mini"

[[labs]]
id = "00"
title = "Box"
tutorial = "tutorials/00-box.ipynb"
module = "lab00_box"
points = 5
hints = ["first hint", "second hint"]

[[labs]]
id = "01"
title = "Second box"
tutorial = "tutorials/01-box.ipynb"
module = "lab01_box"
points = 5
hints = ["first hint", "second hint"]
'''

PYPROJECT = '''[tool.pytest.ini_options]
addopts = "-p pglab.pytest_plugin"
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
'''


@pytest.fixture
def course(tmp_path, monkeypatch) -> Iterator[Path]:
    files = {"course.toml": MANIFEST, "pyproject.toml": PYPROJECT}
    for n, module in enumerate(("lab00_box", "lab01_box")):
        files[f"solutions/{module}.py"] = SOLUTION
        files[f"tests/labs/test_{module}.py"] = TESTS.replace("lab00_box", module)
        files[f"tutorials/0{n}-box.ipynb"] = "{}"
    yield from mini_course(tmp_path, monkeypatch, files)


def run(*args: str, input: str | None = None):
    result = CliRunner().invoke(app, list(args), input=input)
    result.flat = " ".join(result.output.split())
    return result


def learner(course: Path, old: str, new: str) -> Path:
    """Write a learner's lab 00: the solution with one edit."""
    assert old in SOLUTION
    path = course / "labs" / "lab00_box.py"
    path.write_text(labgen.solved(SOLUTION).replace(old, new))
    return path


def recorded(course: Path) -> dict:
    path = course / ".pglab" / "progress.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize("url, says", [
    ("host=x port=5", "libpq keyword string"),
    ("postgresql://pglab:secret-pw@127.0.0.1:9/pglab", "does not answer"),
])
def test_a_broken_environment_is_one_message_a_distinct_code_and_nothing_recorded(course, monkeypatch, url, says):
    learner(course, "x", "x")  # a finished lab: only the environment can fail it
    monkeypatch.setenv("DATABASE_URL", url)
    result = run("check", "00")
    assert result.exit_code == ENVIRONMENT_BROKEN, result.flat
    assert says in result.flat and "your code was not checked" in result.flat
    assert "checks pass" not in result.flat and "fix the first" not in result.flat
    assert "secret-pw" not in result.flat
    assert recorded(course) == {}


def test_the_plugin_stops_the_session_as_broken_environment_when_the_server_is_unreachable(course, monkeypatch):
    learner(course, "x", "x")
    monkeypatch.setenv("DATABASE_URL", "postgresql://pglab:pw@127.0.0.1:9/pglab")
    result = run_checks(load_course().lab("00"))  # no probe in front: the plugin itself must refuse
    assert result.environment is not None and "does not answer" in result.environment
    assert not result.all_passed


def test_db_status_says_whether_database_url_answers(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://pglab:pw@127.0.0.1:9/pglab")
    result = run("db", "status")
    assert result.exit_code == 1 and "not usable" in result.flat


def test_an_error_in_the_learners_code_names_file_line_and_function(course):
    path = learner(course, "return len(self.items)", "return self._size")
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "self._size" in text)
    output = run("check", "00").flat
    assert f"labs/lab00_box.py:{line} in count: AttributeError: 'Box' object has no attribute '_size'" in output


def test_an_assertion_message_comes_without_pytests_rewrite_noise(course):
    learner(course, "def count", "async def count")
    output = run("check", "00").flat
    assert "count must be a plain method, not `async def`" in output
    assert "where" not in output and " at 0x" not in output and "iscoroutinefunction" not in output


def test_the_untouched_skeleton_says_not_implemented_with_the_place(course):
    output = run("check", "00").flat
    assert "not implemented yet: TODO: implement count() (labs/lab00_box.py:" in output


def test_a_hang_is_reported_within_seconds_naming_the_pending_await(course):
    path = learner(course, "await asyncio.sleep(0)", "await self.opened.wait()")
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "self.opened.wait()" in text)
    started = time.monotonic()
    result = run("check", "00")
    elapsed = time.monotonic() - started
    assert elapsed < 30, f"the hang took {elapsed:.0f} s to report"
    assert "did not finish within" in result.flat, result.flat
    assert f"labs/lab00_box.py:{line} in wait_open: await self.opened.wait()" in result.flat


def test_a_syntax_error_is_reported_once_with_its_line(course):
    path = learner(course, "return len(self.items)", "return len(self.items")
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "len(self.items" in text)
    output = run("check", "00").flat
    assert len(re.findall("syntax error", output)) == 1, output
    assert f"line {line}" in output and "Fix the error above in labs/lab00_box.py" in output


def test_progress_keeps_the_best_result(course):
    lab = load_course().lab("00")
    learner(course, "x", "x")
    progress.record(LabResult(lab, [Row("test_a", "pass"), Row("test_b", "pass")]), course)
    learner(course, "return len(self.items)", "return 0")
    progress.record(LabResult(lab, [Row("test_a", "pass"), Row("test_b", "fail")]), course)
    progress.record(LabResult(lab, environment="no server"), course)
    status = progress.status_of(lab, course)
    assert (status.status, status.passed, status.total) == (progress.DONE, 2, 2)


def test_hint_without_an_id_means_the_current_lab(course):
    output = run("hint").flat
    assert "Hint 1/2" in output and "first hint" in output


def test_watch_stays_on_its_lab_and_moves_on_when_it_passes(course):
    result = run("watch", "01", "--manual", input="\nq\n")
    assert result.flat.count("Lab 01 · Second box") == 2 and "Lab 00" not in result.flat
    assert "on every save" in result.flat and "pglab check 01` again" not in result.flat

    learner(course, "x", "x")  # lab 00 solved: watch moves on to lab 01 and shows its checks
    result = run("watch", "00", "--manual", input="q\n")
    assert "Lab 00 done!" in result.flat and "Lab 01 · Second box" in result.flat, result.flat


def test_a_parametrised_check_names_its_parameters():
    assert Row("test_acquire_times_out[fake]", "fail").title == "acquire times out [fake]"
    assert Row("test_acquire_times_out", "fail").title == "acquire times out"


def test_help_separates_learner_commands_from_author_and_grader_commands():
    output = run("--help").output
    learner_part, _, rest = output.partition("Authoring and grading")
    assert "Learner commands" in learner_part and "check" in learner_part and "watch" in learner_part
    assert "build-labs" in rest and "grade" in rest and "verify-checks" in rest
