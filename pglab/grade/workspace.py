"""The course as a graded lab sees it: pinned for the batch, copied per lab, its checks collected.

A batch grades against a snapshot of the course taken when it starts. Each lab gets
its own copy of that snapshot: the toolkit, this lab's checks, the instructor's
hidden checks for it, and from `solutions/` only the reference labs those checks
build on (never the lab's own). The checks are collected in a process that runs no
lab code; the grader reconciles every run against that list.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ..course import Course, Lab, load_course
from .collector import COLLECT_ENV

CHECK_PLUGINS = ("asyncio", "timeout", "hypothesispytest", "anyio")  # pytest11 entry points the checks use
EXTRA = "extra"  # the instructor's hidden checks go to tests/extra/ in the course copy


class GradeError(RuntimeError):
    """The grader itself cannot go on (bad arguments, no server); not a learner's failure."""


def course_copy(course: Course, lab: Lab, folder: Path, extra_tests: Path | None) -> list[str]:
    """Copy what the lab's checks need into `folder`; returns the check files, relative."""
    root = course.root
    shutil.copytree(root / "pglab", folder / "pglab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("course.toml", "pyproject.toml"):
        shutil.copy2(root / name, folder / name)
    (folder / "tests" / "labs").mkdir(parents=True)
    (folder / ".pglab").mkdir()  # empty: the sandbox mounts a private tmpfs here
    checks = root / lab.tests
    shutil.copy2(checks, folder / lab.tests)
    files = [lab.tests]
    # Only the reference labs these checks build on (never the lab's own solution).
    needed = set(re.findall(r"load_solution\(\s*[\"'](\w+)[\"']", checks.read_text())) - {lab.module}
    if needed:
        (folder / "solutions").mkdir()
        for module in sorted(needed):  # with its sibling file, where that lab is in two (lab 09)
            for path in sorted((root / "solutions").glob(f"{module[:len('labNN_')]}*.py")):
                shutil.copy2(path, folder / "solutions" / path.name)
    if extra_tests:
        for path in sorted(extra_tests.glob(f"test_{lab.module}*.py")):
            (folder / "tests" / EXTRA).mkdir(exist_ok=True)
            shutil.copy2(path, folder / "tests" / EXTRA / path.name)
            files.append(f"tests/{EXTRA}/{path.name}")
    for path in [folder, *folder.rglob("*")]:  # readable by the sandbox's unprivileged uid
        path.chmod(0o755 if path.is_dir() else 0o644)
    return files


def snapshot(course: Course, folder: Path) -> Course:
    """The course pinned for a whole batch: later edits of the tree change no grade in it."""
    root = course.root
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pglab", "tests/labs", "solutions"):
        shutil.copytree(root / name, folder / name, ignore=ignore)
    for name in ("course.toml", "pyproject.toml"):
        shutil.copy2(root / name, folder / name)
    return load_course(folder)


def pytest_args(course_dir: str, files: list[str]) -> list[str]:
    installed = {ep.name for ep in entry_points(group="pytest11")}
    plugins = [arg for name in CHECK_PLUGINS if name in installed for arg in ("-p", name)]
    return [*files, "-c", f"{course_dir}/pyproject.toml", "--rootdir", course_dir, "-p", "no:cacheprovider",
            *plugins, "-p", "pglab.grade.collector", "-q", "--color=no"]


def base_env(course_dir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": course_dir,
            "PGLAB_HOME": course_dir, "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            "PGLAB_NO_DOCKER": "1", "PYTHONUNBUFFERED": "1"}


_collected: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
_collect_lock = threading.Lock()


def collect(course: Course, lab: Lab, extra_tests: Path | None) -> list[dict[str, Any]]:
    """The lab's checks (node ids, declared skips), collected with no lab code (cached)."""
    key = (lab.module, str(extra_tests))
    with _collect_lock:
        if key not in _collected:
            with tempfile.TemporaryDirectory(prefix="pglab-collect-") as tmp:
                files = course_copy(course, lab, Path(tmp), extra_tests)
                listing = Path(tmp) / "collected.json"
                env = {**base_env(tmp), "HOME": tmp, COLLECT_ENV: str(listing)}
                proc = subprocess.run([sys.executable, "-m", "pytest", *pytest_args(tmp, files), "--collect-only"],
                                      cwd=tmp, env=env, capture_output=True, text=True, timeout=120)
                if not listing.is_file():
                    raise GradeError(f"the checks of lab {lab.id} cannot be collected:\n{proc.stdout[-2000:]}")
                _collected[key] = json.loads(listing.read_text())
        return _collected[key]


