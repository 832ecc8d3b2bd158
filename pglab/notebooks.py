"""Keep notebooks in git free of outputs (outputs would leak numbers and DSNs)."""

from __future__ import annotations

from pathlib import Path

from .paths import course_root

NOTEBOOK_FOLDERS = ("tutorials", "workshops")


def notebooks(root: Path | None = None) -> list[Path]:
    root = root or course_root()
    return sorted(p for folder in NOTEBOOK_FOLDERS for p in (root / folder).rglob("*.ipynb")
                  if ".ipynb_checkpoints" not in p.parts)


def carries_outputs(path: Path) -> bool:
    import nbformat  # slow to import: only when needed

    nb = nbformat.read(path, as_version=4)
    return any(cell.get("outputs") or cell.get("execution_count")
               for cell in nb.cells if cell.cell_type == "code")


def strip(path: Path) -> bool:
    """Remove outputs and execution counts in place; True when the file changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    if not carries_outputs(path):
        return False
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.write(nb, path)
    return True
