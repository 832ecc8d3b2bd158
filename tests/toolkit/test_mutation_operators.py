"""The course's own cosmic-ray operators (`make mutation`) do what their examples say.

cosmic-ray is installed by `make mutation` (requirements-mutation.txt), not by `make test`:
without it these tests skip, saying so."""

from __future__ import annotations

import pytest

cosmic_ray = pytest.importorskip("cosmic_ray", reason="cosmic-ray is installed by `make mutation` only")

from cosmic_ray.mutating import mutate_code  # noqa: E402

from pglab.mutation import course_operators  # noqa: E402


@pytest.mark.parametrize("name", sorted(course_operators()))
def test_each_course_operator_turns_its_example_into_the_mutant(name):
    operator = course_operators()[name]
    for example in operator.examples():
        assert mutate_code(example.pre_mutation_code, operator(), example.occurrence or 0) \
            == example.post_mutation_code


def test_the_operators_leave_code_they_do_not_apply_to_alone():
    operators = course_operators()
    assert mutate_code("pass\n", operators["StatementToPass"](), 0) is None
    assert mutate_code("f()\n", operators["RemoveAwait"](), 0) is None
    assert mutate_code("f(timeout=None)\n", operators["KeywordArgumentToNone"](), 0) is None
