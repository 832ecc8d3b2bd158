"""Load a lab module from `labs/`, `solutions/` or a submission directory, by file path.

Both trees use the same module names, so a lab is loaded under a private name
(`pglab_target.<tree>.<module>`) and never through `sys.path`: a learner's
`labs/lab01_database_pool.py` and the reference solution cannot shadow each other.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from .paths import course_root

TREES = ("labs", "solutions")


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
        spec.loader.exec_module(mod)
    except SyntaxError as exc:
        del sys.modules[name]
        raise TargetError(f"{path.name} line {exc.lineno}: syntax error: {exc.msg}") from exc
    except Exception as exc:
        del sys.modules[name]
        raise TargetError(f"importing {path.name} failed: {type(exc).__name__}: {exc}") from exc
    return mod
