"""Shared by the grader's toolkit tests (no checks here): run `pglab grade`, build golden submissions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pglab.course import tomllib
from pglab.labgen import skeletonize, solved, with_header

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ROOT / "tests" / "toolkit" / "submissions"
RECIPES = tomllib.loads((EXPECTED / "goldens.toml").read_text())
NAMES = sorted(RECIPES)


def grade(*args: str, timeout: float = 850, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the real command, as an instructor would."""
    command = [sys.executable, "-m", "pglab", "grade", *args]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          errors="replace", env={**os.environ, **env}) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:  # SIGTERM, unlike a kill, lets the grader drop its databases
            proc.terminate()
            proc.communicate(timeout=60)
            raise
    done = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
    done.pid = proc.pid  # type: ignore[attr-defined]  # the grader's databases are named grade_<pid>_...
    return done


def lab_text(module: str, base: str) -> str:
    """A lab module as the learner may hand it in: solved, or the skeleton made from solutions/."""
    source = (ROOT / "solutions" / f"{module}.py").read_text()
    if base == "solved":
        return solved(source)
    return with_header(skeletonize(source, f"{module}.py"), f"{module}.py")


def build_submission(folder: Path, recipe: dict) -> Path:
    """A learner's repository from a recipe of goldens.toml (never from the course's labs/)."""
    (folder / "labs").mkdir(parents=True)
    for module, spec in recipe.items():
        if module.startswith("_") or spec["base"] == "none":
            continue
        text = lab_text(module, spec["base"])
        for old, new in spec.get("edits", []):
            assert old in text, f"{folder.name}: edit no longer applies to {module}: {old!r}"
            text = text.replace(old, new)
        (folder / "labs" / f"{module}.py").write_text(text + spec.get("append", ""))
    for path, content in recipe.get("_files", {}).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(content)
    for path, target in recipe.get("_links", {}).items():
        os.symlink(target, folder / path)
    return folder
