"""labgen: skeletons generated from solutions, and nothing of the learner's lost."""

from __future__ import annotations

import ast

import pytest

from pglab import labgen

SOLUTION = '''"""A lab."""


def double(x: int) -> int:
    """Twice x."""
    # BEGIN SOLUTION
    return 2 * x
    # END SOLUTION


class Box:
    def put(self, item: object) -> None:
        # BEGIN SOLUTION: store the item in self.items
        self.items = [item]
        # END SOLUTION
'''


def test_regions_become_todos_and_everything_else_stays():
    skeleton = labgen.skeletonize(SOLUTION)
    assert 'raise NotImplementedError("TODO: implement double()")' in skeleton
    assert '        raise NotImplementedError("TODO: store the item in self.items")' in skeleton
    assert "2 * x" not in skeleton and "self.items" not in skeleton.split("TODO")[0]
    assert '"""Twice x."""' in skeleton and "def put(self, item: object) -> None:" in skeleton
    compile(skeleton, "skeleton", "exec")


@pytest.mark.parametrize("source, problem", [
    ("def f():\n    # BEGIN SOLUTION\n    pass\n", "never closed"),
    ("def f():\n    # END SOLUTION\n", "without BEGIN"),
    ("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n    # END SOLUTION\n", "nested"),
    ("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n", "inside a function"),
])
def test_malformed_markers_are_reported_with_the_line(source, problem):
    with pytest.raises(labgen.LabgenError, match=problem):
        labgen.skeletonize(source, "lab99_x.py")


def test_write_backs_up_a_changed_lab_before_regenerating(tmp_path, monkeypatch):
    monkeypatch.setenv("PGLAB_HOME", str(tmp_path))
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "lab99_demo.py").write_text(SOLUTION)
    assert [f.skeleton.name for f in labgen.out_of_sync(tmp_path)] == ["lab99_demo.py"]
    labgen.write(tmp_path)
    assert labgen.out_of_sync(tmp_path) == []
    assert (tmp_path / "labs" / "lab99_demo.py").read_text().startswith("# Your lab file")

    (tmp_path / "labs" / "lab99_demo.py").write_text("my work in progress\n")
    [(_, backup)] = labgen.write(tmp_path)
    assert backup is not None and backup.read_text() == "my work in progress\n"
    assert labgen.out_of_sync(tmp_path) == []


def _public_names(source: str) -> set[str]:
    """Module-level functions and classes, and the methods of those classes."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{item.name}" for item in node.body
                      if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return names


def test_every_solution_generates_a_skeleton_that_keeps_its_public_names():
    """From the generated text, never from labs/ (that is the learner's work; CI's
    `pglab build-labs --check` proves the committed copy is in sync)."""
    for lab in labgen.plan():
        skeleton = lab.text
        assert "NotImplementedError" in skeleton and "BEGIN SOLUTION" not in skeleton, lab.solution.name
        lost = _public_names(lab.solution.read_text()) - _public_names(skeleton)
        assert not lost, f"{lab.skeleton.name} lost {sorted(lost)}"
