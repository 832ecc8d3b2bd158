"""Where the course lives on disk: the repository root and the `.pglab/` state folder."""

from __future__ import annotations

import os
from pathlib import Path


def course_root() -> Path:
    """The course repository: `PGLAB_HOME`, else the folder holding `course.toml` above
    the current directory, else the checkout this package was installed from."""
    if home := os.environ.get("PGLAB_HOME"):
        return Path(home).resolve()
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "course.toml").is_file() and (folder / "pglab").is_dir():
            return folder
    return Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    """`.pglab/` under the course root (git-ignored): server data, progress, hints."""
    folder = course_root() / ".pglab"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
