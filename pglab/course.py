"""The course manifest, `course.toml`: every lab in order, validated."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from .labgen import solved
from .paths import course_root

SOLUTION_LINES = 200  # a solution, read top to bottom as library code, stays under this


class ManifestError(ValueError):
    """`course.toml` is missing or malformed."""


class UnknownLabError(LookupError):
    """A lab id that the manifest does not list."""


class Lab(BaseModel):
    """One lab: its id, files, points and progressive hints."""

    id: str = Field(pattern=r"^\d{2}$")
    title: str
    tutorial: str
    module: str = Field(pattern=r"^lab\d{2}_[a-z0-9_]+$")
    points: int = Field(gt=0)
    hints: list[str] = Field(min_length=2)

    @property
    def skeleton(self) -> str:
        return f"labs/{self.module}.py"

    @property
    def solution(self) -> str:
        return f"solutions/{self.module}.py"

    @property
    def tests(self) -> str:
        return f"tests/labs/test_{self.module}.py"

    def learner_files(self, root: Path) -> str:
        """Where the learner works: `labs/<module>.py`, or both files of a lab split in two (lab 09)."""
        names = sorted(path.name for path in (root / "solutions").glob(f"lab{self.id}_*.py"))
        return " or ".join(f"labs/{name}" for name in names) or self.skeleton


class Course(BaseModel):
    title: str
    labs: list[Lab]
    root: Path

    def lab(self, lab_id: str) -> Lab:
        """The lab with this id ("1", "01" and "lab01" all name lab 01)."""
        wanted = lab_id.lower().removeprefix("lab").zfill(2)
        for lab in self.labs:
            if lab.id == wanted:
                return lab
        known = ", ".join(lab.id for lab in self.labs)
        raise UnknownLabError(f"there is no lab {lab_id!r}; the labs are {known} (see `pglab progress`)")

    def lint(self) -> list[str]:
        """Problems a course author must fix: missing files, duplicate ids or modules."""
        problems: list[str] = []
        ids = [lab.id for lab in self.labs]
        if ids != sorted(ids) or len(set(ids)) != len(ids):
            problems.append(f"lab ids must be unique and in order: {ids}")
        for lab in self.labs:
            if not lab.module.startswith(f"lab{lab.id}_"):
                problems.append(f"lab {lab.id}: module {lab.module!r} should start with 'lab{lab.id}_'")
            for path in (lab.tutorial, lab.skeleton, lab.solution, lab.tests):
                if not (self.root / path).is_file():
                    problems.append(f"lab {lab.id}: {path} does not exist")
        for path in sorted((self.root / "solutions").glob("lab*.py")):
            if not any(path.name.startswith(f"lab{lab.id}_") for lab in self.labs):
                problems.append(f"solutions/{path.name} belongs to no lab: name it lab<id>_... after its lab")
            if (lines := len(solved(path.read_text()).splitlines())) >= SOLUTION_LINES:
                problems.append(f"solutions/{path.name} is {lines} lines (markers left out): a solution must read in "
                                f"under {SOLUTION_LINES}; split it in two files as lab 09 does, or trim it")
        return problems


@cache
def load_course(root: Path | None = None) -> Course:
    """Read and validate `course.toml` under `root` (default: the course root)."""
    root = root or course_root()
    path = root / "course.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path} not found: run pglab from inside the course repository") from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"course.toml is not valid TOML: {exc}") from None
    try:
        return Course(title=data.get("course", {}).get("title", ""), labs=data.get("labs", []), root=root)
    except ValidationError as exc:
        raise ManifestError(f"course.toml is invalid:\n{exc}") from None
