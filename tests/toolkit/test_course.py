"""The manifest: course.toml is complete and lab ids resolve."""

from __future__ import annotations

import pytest

from pglab.course import ManifestError, UnknownLabError, load_course


def test_every_lab_has_its_files_points_and_hints():
    course = load_course()
    assert [lab.id for lab in course.labs] == [f"{n:02d}" for n in range(len(course.labs))]
    assert course.lint() == []


@pytest.mark.parametrize("spelling", ["1", "01", "lab01", "LAB1"])
def test_lab_ids_resolve_in_any_usual_spelling(spelling):
    assert load_course().lab(spelling).module == "lab01_database_pool"


def test_an_unknown_lab_names_the_known_ones():
    with pytest.raises(UnknownLabError, match="there is no lab '42'.*00, 01"):
        load_course().lab("42")


def test_a_malformed_manifest_is_rejected_with_the_reason(tmp_path):
    (tmp_path / "course.toml").write_text('[[labs]]\nid = "1"\ntitle = "x"\n')
    with pytest.raises(ManifestError, match="invalid"):
        load_course(tmp_path)
    (tmp_path / "course.toml").write_text("[[labs]\n")
    with pytest.raises(ManifestError, match="not valid TOML"):
        load_course(tmp_path)


def _one_lab_course(root, solution_text: str, extra: dict[str, str] | None = None):
    (root / "course.toml").write_text('[[labs]]\nid = "00"\ntitle = "t"\ntutorial = "t.ipynb"\n'
                                      'module = "lab00_x"\npoints = 5\nhints = ["a", "b"]\n')
    (root / "solutions").mkdir()
    for name, text in {"lab00_x.py": solution_text, **(extra or {})}.items():
        (root / "solutions" / name).write_text(text)
    return load_course(root)


def test_lint_refuses_a_solution_of_200_lines_and_a_file_of_no_lab(tmp_path):
    body = "".join(f"x{n} = {n}\n" for n in range(200))
    problems = _one_lab_course(tmp_path, body, {"lab07_orphan.py": "y = 1\n"}).lint()
    assert any("lab00_x.py is 200 lines" in p and "under 200" in p for p in problems), problems
    assert any("lab07_orphan.py belongs to no lab" in p for p in problems), problems


def test_lint_counts_a_solution_without_its_markers(tmp_path):
    body = "def f():\n" + "    # BEGIN SOLUTION\n    pass\n    # END SOLUTION\n" * 60  # 241 lines, 121 solved
    assert not [p for p in _one_lab_course(tmp_path, body).lint() if "lines" in p]
