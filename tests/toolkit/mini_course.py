"""A course of a few tiny labs in a temporary folder, for the tests of the learner commands."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pglab import labgen
from pglab.course import load_course
from pglab.servers.database import database_url

# course.toml of a one-lab course: lab 00, module lab00_arith, two hints.
ARITH_MANIFEST = '''
[course]
title = "Mini"

[[labs]]
id = "00"
title = "Arithmetic"
tutorial = "tutorials/00-arith.ipynb"
module = "lab00_arith"
points = 5
hints = ["first hint", "second hint"]
'''


def mini_course(root: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]) -> Iterator[Path]:
    """Write `files` (path -> text) under `root`, make it the course, generate its labs/; yields root."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    # The course server of this checkout: `pglab check` probes it (the copy must not start its own).
    monkeypatch.setenv("DATABASE_URL", database_url())
    monkeypatch.setenv("PGLAB_HOME", str(root))
    load_course.cache_clear()
    labgen.write(root)
    yield root
    load_course.cache_clear()
