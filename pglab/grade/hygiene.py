"""What the grader accepts from a submission: names, files, links, sizes."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .limits import SUBMISSION_FILE_LIMIT

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def learner_name(folder: Path) -> str:
    """A printable, file-safe name for a submission folder (whatever bytes its name holds)."""
    raw = os.fsencode(folder.name).decode("utf-8", "replace")
    name = _UNSAFE.sub("_", raw).strip("._") or "learner"
    return name[:100]


def read_lab(submission: Path, module: str) -> tuple[bytes | None, str]:
    """The bytes of `labs/<module>.py`, or None and why it is refused."""
    path = submission / "labs" / f"{module}.py"
    if not os.path.lexists(path):
        return None, f"labs/{module}.py is not in the submission"
    if not path.resolve().is_relative_to(submission.resolve()):  # the file, or labs/ itself, links out
        return None, (f"labs/{module}.py is a symbolic link to a file outside the submission;"
                      " submit the file itself")
    if not path.is_file():
        return None, f"labs/{module}.py is not a regular file"
    if path.stat().st_size > SUBMISSION_FILE_LIMIT:
        return None, f"labs/{module}.py is larger than {SUBMISSION_FILE_LIMIT >> 20} MiB"
    return path.read_bytes(), ""
