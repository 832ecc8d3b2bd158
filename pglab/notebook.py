"""What the tutorials import: the course DSN (masked when shown) and the lab under study.

In JupyterLab the lab modules come from your `labs/` (your code); in CI they come
from `solutions/` (`PGLAB_TARGET=solutions`), so every cell runs top to bottom.

With your labs, importing this module also installs an IPython exception handler:
a cell that needs a lab you have not finished says so in one line (and which
`pglab check` to run) instead of a traceback, and is not counted as an error, so
`Run All` goes on. A later cell that fails using a name such a cell should have
set is reported the same way, instead of a cascade of `NameError`s.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from .servers.database import locate
from .targets import TargetError, load_lab_module, target_dir


def course_dsn() -> str:
    """Start or find the server, print where it is (password masked), return the DSN."""
    database = locate()
    print(f"PostgreSQL ({database.kind}): {database.masked_dsn}")
    return database.dsn


def lab(module: str) -> ModuleType:
    """Your implementation of a lab (from `labs/`, or `solutions/` in CI)."""
    return load_lab_module(module)


class UnfinishedLabs:
    """IPython custom exception handler: a failure caused by an unfinished lab is one line, not an error."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self.tainted: dict[str, str] = {}  # a name an interrupted cell assigns -> the lab it needed

    def __call__(self, shell: Any, etype: type[BaseException], value: BaseException, tb: TracebackType | None,
                 tb_offset: int | None = None) -> None:
        result = getattr(shell.displayhook, "exec_result", None)
        source = result.info.raw_cell if result is not None and result.info is not None else ""
        lab_module, where = self._culprit(value, tb)
        used = sorted(_loaded_names(source) & self.tainted.keys())
        if lab_module is None and not used:
            shell.showtraceback((etype, value, tb), tb_offset=tb_offset)  # a real error: shown as usual
            return None
        if lab_module is not None:
            lab_id = _lab_id(lab_module)
            print(f"⏸ lab {lab_id} is not finished yet, and this cell needs it ({where}). "
                  f"Run `pglab check {lab_id}` in a terminal (File > New > Terminal), then run this cell again.")
        else:
            lab_module = self.tainted[used[0]]
            print(f"⏸ skipped: this cell uses `{used[0]}`, which needs lab {_lab_id(lab_module)} "
                  f"(not finished yet: `pglab check {_lab_id(lab_module)}`).")
        self.tainted.update(dict.fromkeys(_stored_names(source), lab_module))
        if result is not None:
            result.error_in_exec = None  # not an error: `Run All` and nbclient carry on
        return None

    def _culprit(self, value: BaseException, tb: TracebackType | None) -> tuple[str | None, str]:
        """The lab module whose code raised (innermost frame in the labs folder) and `file:line: error`."""
        if isinstance(value, TargetError):
            name = re.search(r"(lab\d{2}_\w+)\.py", str(value))
            return (name[1], str(value)) if name else (None, "")
        found = None
        while tb is not None:
            path = Path(tb.tb_frame.f_code.co_filename)
            if path.suffix == ".py" and _is_under(path, self.folder):
                found = (path.stem, f"{path.parent.name}/{path.name}:{tb.tb_lineno} in {tb.tb_frame.f_code.co_name}")
            tb = tb.tb_next
        if found is None:
            return None, ""
        message = str(value) if isinstance(value, NotImplementedError) else f"{type(value).__name__}: {value}"
        return found[0], f"{found[1]}: {message}"


def _lab_id(module: str) -> str:
    return module[3:5] if re.match(r"lab\d{2}", module) else module


def _is_under(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder)
    except OSError:
        return False


def _loaded_names(source: str) -> set[str]:
    return {n.id for n in _walk(source) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _stored_names(source: str) -> set[str]:
    names = {n.id for n in _walk(source) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names | {n.name for n in _walk(source) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                    ast.ClassDef))}


def _walk(source: str) -> list[ast.AST]:
    try:
        return list(ast.walk(ast.parse(source)))
    except SyntaxError:  # magics and top-level await that ast cannot parse alone
        return []


def install_handler() -> bool:
    """Install `UnfinishedLabs` in the running IPython kernel when the labs are the learner's."""
    if "IPython" not in sys.modules or os.environ.get("PGLAB_TARGET", "labs") == "solutions":
        return False
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        return False
    try:
        folder = target_dir()
    except TargetError:
        return False
    shell.set_custom_exc((Exception,), UnfinishedLabs(folder))
    return True


install_handler()
