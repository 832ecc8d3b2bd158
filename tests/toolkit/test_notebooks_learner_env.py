"""Every notebook runs top to bottom in a learner's environment, with the labs unsolved.

The kernel loads the labs from freshly generated skeletons (never the learner's
labs/), as JupyterLab would load an untouched `labs/`. A cell that needs an
unfinished lab must say so in one line (pglab.notebook's handler) and nothing
after it may cascade: no error output outside cells tagged `raises-exception`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pglab import labgen
from pglab.notebooks import notebooks

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def skeletons(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("skeletons")
    for lab in labgen.plan(ROOT):
        (folder / lab.skeleton.name).write_text(lab.text)
    return folder


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", notebooks(ROOT), ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_runs_with_unsolved_labs(path, skeletons, monkeypatch):
    import nbclient
    import nbformat

    monkeypatch.setenv("PGLAB_TARGET", str(skeletons))  # the kernel inherits it
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, allow_errors=True, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [(number, output["ename"], output["evalue"])
              for number, cell in enumerate(nb.cells)
              if "raises-exception" not in cell.metadata.get("tags", [])
              for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert not errors, "cells failed with the labs unsolved (cell number, error):\n" + "\n".join(
        f"  cell {number}: {name}: {value[:300]}" for number, name, value in errors)
