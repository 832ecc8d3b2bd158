"""Load a lab module from `labs/`, `solutions/` or a submission directory, by file path.

Both trees use the same module names, so a lab is loaded under a private name
(`pglab_target.<tree>.<module>`) and never through `sys.path`: a learner's
`labs/lab01_database_pool.py` and the reference solution cannot shadow each other.
A lab in two files (lab 09: `lab09_base.py` + `lab09_connection_pool.py`) imports its
sibling by its plain name; while a lab loads, that name is found in the same folder only,
and only for the same lab.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

from .paths import course_root

TREES = ("labs", "solutions")
LAB_MODULE = re.compile(r"lab\d{2}_\w+")


class TargetError(ImportError):
    """The lab module could not be found or imported; the message says why."""


def target_dir(target: str | None = None) -> Path:
    """The folder holding lab modules for `target`: "labs", "solutions", or a path.

    A path may be a submission (a folder with `labs/`) or a folder of modules.
    Defaults to `PGLAB_TARGET`, else "labs".
    """
    target = target or os.environ.get("PGLAB_TARGET") or "labs"
    if target in TREES:
        return course_root() / target
    path = Path(target).expanduser().resolve()
    if (path / "labs").is_dir():
        return path / "labs"
    if path.is_dir():
        return path
    raise TargetError(f"target {target!r} is neither 'labs', 'solutions' nor an existing folder")


def load_lab_module(module: str, target: str | None = None) -> ModuleType:
    """Import `<target>/<module>.py` afresh and return it."""
    folder = target_dir(target)
    path = folder / f"{module}.py"
    if not path.is_file():
        raise TargetError(f"{path} does not exist (run `pglab build-labs` to regenerate the skeletons)")
    name = f"pglab_target.{folder.name}.{module}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses and pickling look modules up by name
    try:
        with _siblings_from(folder, module[:len("labNN_")]):
            spec.loader.exec_module(mod)
    except SyntaxError as exc:
        del sys.modules[name]
        raise TargetError(f"{path.name} line {exc.lineno}: syntax error: {exc.msg}") from exc
    except Exception as exc:
        del sys.modules[name]
        raise TargetError(f"importing {path.name} failed: {type(exc).__name__}: {exc}") from exc
    return mod


class _SiblingFinder(importlib.abc.MetaPathFinder):
    """Finds `import labNN_name` of one lab (`prefix`, "labNN_") in one folder, and nothing else."""

    def __init__(self, folder: Path, prefix: str) -> None:
        self.folder, self.prefix = folder, prefix

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if path is None and name.startswith(self.prefix) and LAB_MODULE.fullmatch(name) \
                and (self.folder / f"{name}.py").is_file():
            return importlib.util.spec_from_file_location(name, self.folder / f"{name}.py")
        return None


@contextlib.contextmanager
def _siblings_from(folder: Path, prefix: str) -> Iterator[None]:
    """While a lab loads, its own plain-named siblings come from its folder, freshly imported; another
    lab's module is not importable (a lab never depends on another lab's code at run time)."""
    for stale in [name for name in sys.modules if LAB_MODULE.fullmatch(name)]:
        del sys.modules[stale]  # another tree's (or an earlier mutant's) copy
    finder = _SiblingFinder(folder, prefix)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
