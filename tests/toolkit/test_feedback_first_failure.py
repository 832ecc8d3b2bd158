"""The first ✗ of lab 01 points at the real mistake, on learners' versions built in a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from pglab.checks import run_checks
from pglab.course import load_course
from pglab.labgen import solved

ROOT = Path(__file__).resolve().parents[2]
MODULE = "lab01_database_pool"


def learner_lab01(folder: Path, old: str, new: str) -> Path:
    """A finished lab 01 with one learner's mistake, as `folder/lab01_database_pool.py`."""
    text = solved((ROOT / "solutions" / f"{MODULE}.py").read_text())
    assert text.count(old) == 1, f"{old!r} must occur once in the solution"
    path = folder / f"{MODULE}.py"
    path.write_text(text.replace(old, new))
    return path


def first_failure(folder: Path):
    result = run_checks(load_course().lab("01"), str(folder))
    assert result.environment is None, result.environment
    return next(test for test in result.tests if test.status != "pass")


@pytest.mark.slow
def test_async_def_acquire_is_reported_first_and_plainly(tmp_path):
    learner_lab01(tmp_path, "    def acquire(", "    async def acquire(")
    failure = first_failure(tmp_path)
    assert "plain method" in failure.message and "async def" in failure.message, failure
    assert "DID NOT RAISE" not in failure.message and "__aenter__" not in failure.message


@pytest.mark.slow
def test_an_error_in_the_learners_code_names_the_line_and_function(tmp_path):
    path = learner_lab01(tmp_path, "self.pool.get_size()", "self.pool._size()")
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "self.pool._size()" in text)
    failure = first_failure(tmp_path)
    assert f"{MODULE}.py:{line} in get_pool_stats: AttributeError:" in failure.message, failure
    assert "where" not in failure.message
