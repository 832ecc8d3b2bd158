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
