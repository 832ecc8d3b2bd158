"""Loading labs by file path: a two-file lab imports its sibling from its own tree only."""

from __future__ import annotations

import sys

import pytest

from pglab import labgen
from pglab.targets import TargetError, load_lab_module


def _tree(folder, value: str) -> None:
    folder.mkdir()
    (folder / "lab42_base.py").write_text(f"VALUE = {value!r}\n")
    (folder / "lab42_main.py").write_text("from lab42_base import VALUE\n")


def test_a_lab_imports_its_sibling_from_its_own_folder(tmp_path):
    _tree(tmp_path / "a", "from a")
    _tree(tmp_path / "b", "from b")
    assert load_lab_module("lab42_main", str(tmp_path / "a")).VALUE == "from a"
    assert load_lab_module("lab42_main", str(tmp_path / "b")).VALUE == "from b"  # not a's cached copy
    assert load_lab_module("lab42_main", str(tmp_path / "a")).VALUE == "from a"


def test_only_lab_names_are_looked_up_in_the_lab_folder(tmp_path):
    (tmp_path / "colorsys.py").write_text("raise RuntimeError('a lab folder shadowed the standard library')\n")
    (tmp_path / "lab42_main.py").write_text("import colorsys\nVALUE = colorsys.rgb_to_hsv(0, 0, 0)\n")
    sys.modules.pop("colorsys", None)
    assert load_lab_module("lab42_main", str(tmp_path)).VALUE == (0, 0, 0)


def test_the_two_files_of_lab_09_load_from_each_tree(tmp_path):
    solved = load_lab_module("lab09_connection_pool", "solutions")
    assert solved.PoolConfig(min_size=2).min_size == 2
    for generated in labgen.plan():  # the skeletons as generated, never the learner's labs/
        (tmp_path / generated.skeleton.name).write_text(generated.text)
    skeleton = load_lab_module("lab09_connection_pool", str(tmp_path))
    with pytest.raises(NotImplementedError):
        skeleton.PoolConfig()  # part 1's TODO, reached through part 2


def test_a_lab_cannot_import_another_labs_module(tmp_path):
    (tmp_path / "lab41_other.py").write_text("VALUE = 1\n")
    (tmp_path / "lab42_main.py").write_text("import lab41_other\n")
    with pytest.raises(TargetError, match="No module named 'lab41_other'"):
        load_lab_module("lab42_main", str(tmp_path))
