"""What the tutorials import: the course DSN (masked when shown) and the lab under study.

In JupyterLab the lab modules come from your `labs/` (your code); in CI they come
from `solutions/` (`PGLAB_TARGET=solutions`), so every cell runs top to bottom.
"""

from __future__ import annotations

from types import ModuleType

from .servers.database import locate
from .targets import load_lab_module


def course_dsn() -> str:
    """Start or find the server, print where it is (password masked), return the DSN."""
    database = locate()
    print(f"PostgreSQL ({database.kind}): {database.masked_dsn}")
    return database.dsn


def lab(module: str) -> ModuleType:
    """Your implementation of a lab (from `labs/`, or `solutions/` in CI)."""
    return load_lab_module(module)
