"""A learner's notebook outputs never enter git (the filter `make setup` installs in a clone).

Runs in a fresh clone of this repository's last commit, with the working Makefile's
`git-filter` recipe pointed at this venv's python.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def git(clone: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=clone, check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None, reason="needs a git checkout")
def test_outputs_of_a_run_notebook_stay_out_of_git(tmp_path):
    import nbformat

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    time.sleep(1.1)  # as a learner's `make setup` comes after the clone: no notebook is racily clean
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")  # the working recipe, outside the clone's tree
    subprocess.run(["make", "-s", "-f", str(tmp_path / "Makefile"), "git-filter", f"BIN={Path(sys.executable).parent}"],
                   cwd=clone, check=True, capture_output=True)
    assert "nbstripout" in git(clone, "config", "--get", "filter.nbstripout.clean")

    path = sorted((clone / "tutorials").glob("*.ipynb"))[0]
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="PostgreSQL (embedded): 42 ms\n")]
    cell.execution_count = 7
    nbformat.write(nb, path)

    name = str(path.relative_to(clone))  # one path: git filters each notebook it looks at (seconds each)
    assert git(clone, "diff", "--", name) == "", "git diff shows a notebook's outputs"
    git(clone, "add", name)
    assert git(clone, "status", "--porcelain", "--", name) == "", "the outputs were staged"
    assert path.read_text().count("42 ms") == 1, "the learner's working copy must keep its outputs"
