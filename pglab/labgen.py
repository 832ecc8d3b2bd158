"""Generate the learner skeletons in `labs/` from the reference solutions in `solutions/`.

A solution marks what the learner writes::

    # BEGIN SOLUTION
    ...reference code...
    # END SOLUTION

`# BEGIN SOLUTION: text` sets the TODO text; without it the TODO names the enclosing
function. Each region becomes `raise NotImplementedError("TODO: ...")` at the same
indentation; signatures, docstrings and imports stay.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .paths import course_root, state_dir

BEGIN = re.compile(r"^(?P<indent>\s*)# BEGIN SOLUTION(?::\s*(?P<todo>.*\S))?\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
DEF = re.compile(r"^(?P<indent>\s*)(?:async\s+)?def\s+(?P<name>\w+)")
HEADER = (
    '# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,\n'
    "# then run `pglab check {lab_id}`. (Generated from solutions/{name} by `pglab build-labs`.)\n"
)


class LabgenError(ValueError):
    """A solution file whose markers are malformed."""


@dataclass(frozen=True)
class LabFile:
    solution: Path
    skeleton: Path
    text: str

    @property
    def in_sync(self) -> bool:
        return self.skeleton.is_file() and self.skeleton.read_text() == self.text


def skeletonize(source: str, filename: str = "<solution>") -> str:
    """The learner's version of a solution: marked regions replaced by TODOs."""
    lines = source.splitlines(keepends=True)
    out: list[str] = []
    region: tuple[int, str, str] | None = None  # (start line, indent, todo)
    for number, line in enumerate(lines, 1):
        if region is None:
            if match := BEGIN.match(line):
                indent = match["indent"]
                if not indent:
                    raise LabgenError(f"{filename}:{number}: a solution region must be inside a function")
                region = (number, indent, match["todo"] or _default_todo(out))
            elif END.match(line):
                raise LabgenError(f"{filename}:{number}: END SOLUTION without BEGIN SOLUTION")
            else:
                out.append(line)
        elif END.match(line):
            _, indent, todo = region
            out.append(f"{indent}raise NotImplementedError({json.dumps('TODO: ' + todo)})\n")
            region = None
        elif BEGIN.match(line):
            raise LabgenError(f"{filename}:{number}: nested BEGIN SOLUTION (region opened at line {region[0]})")
    if region is not None:
        raise LabgenError(f"{filename}:{region[0]}: BEGIN SOLUTION is never closed")
    return "".join(out)


def solved(source: str) -> str:
    """The solution as a learner who finished the lab would have it: markers removed."""
    return "".join(line for line in source.splitlines(keepends=True)
                   if not (BEGIN.match(line) or END.match(line)))


def _default_todo(previous: list[str]) -> str:
    for line in reversed(previous):
        if match := DEF.match(line):
            return f"implement {match['name']}()"
    return "implement this part"


def with_header(module_text: str, name: str) -> str:
    lab_id = re.match(r"lab(\d{2})_", name)
    header = HEADER.format(lab_id=lab_id[1] if lab_id else "", name=name)
    return header + module_text


def plan(root: Path | None = None) -> list[LabFile]:
    """Every solution and the skeleton text it generates."""
    root = root or course_root()
    files = []
    for solution in sorted((root / "solutions").glob("lab*.py")):
        text = with_header(skeletonize(solution.read_text(), str(solution.relative_to(root))), solution.name)
        files.append(LabFile(solution, root / "labs" / solution.name, text))
    return files


def out_of_sync(root: Path | None = None) -> list[LabFile]:
    return [lab for lab in plan(root) if not lab.in_sync]


def diff(lab: LabFile) -> str:
    current = lab.skeleton.read_text().splitlines(keepends=True) if lab.skeleton.exists() else []
    return "".join(difflib.unified_diff(current, lab.text.splitlines(keepends=True),
                                        str(lab.skeleton), "generated"))


def write(root: Path | None = None) -> list[tuple[LabFile, Path | None]]:
    """Regenerate `labs/`. A changed file is backed up under `.pglab/backup/` first,
    so a learner's work is never lost. Returns (file, backup path or None)."""
    written = []
    for lab in out_of_sync(root):
        backup = None
        if lab.skeleton.exists():
            backup = state_dir() / "backup" / f"{lab.skeleton.name}.{time.strftime('%Y%m%d-%H%M%S')}"
            backup.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lab.skeleton, backup)
        lab.skeleton.parent.mkdir(parents=True, exist_ok=True)
        lab.skeleton.write_text(lab.text)
        written.append((lab, backup))
    return written
