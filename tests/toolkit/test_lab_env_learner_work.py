"""`make test` stays green while the learner works: the toolkit tests never read labs/.

A copy of the course gets a solved lab 01 in its labs/ (as a learner's would be);
the toolkit tests that once compared labs/ with the solutions, and lab 01's checks
against that labs/, must pass there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pglab.labgen import solved
from pglab.servers.database import database_url

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(".git", ".venv", ".pglab", "__pycache__", ".ipynb_checkpoints", "*-results", "*.egg-info")


@pytest.mark.slow
def test_toolkit_tests_and_checks_pass_with_a_solved_lab_in_labs(tmp_path):
    copy = tmp_path / "course"
    for name in ("pglab", "solutions", "labs", "tests", "tutorials"):
        shutil.copytree(ROOT / name, copy / name, ignore=SKIP)
    for name in ("course.toml", "pyproject.toml"):
        shutil.copy(ROOT / name, copy / name)
    module = "lab01_database_pool"
    (copy / "labs" / f"{module}.py").write_text(solved((copy / "solutions" / f"{module}.py").read_text()))

    # The course server of this checkout (the copy would otherwise start its own in its .pglab/).
    env = {**os.environ, "PGLAB_HOME": str(copy), "PYTHONDONTWRITEBYTECODE": "1", "DATABASE_URL": database_url()}
    env.pop("PGLAB_TARGET", None)
    files = ["tests/toolkit/test_labgen.py", "tests/toolkit/test_cli.py", f"tests/labs/test_{module}.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider", "--target", "labs"],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"a test read the learner's labs/:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
