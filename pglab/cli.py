"""The `pglab` command: database, checks, progress, hints, watch, grading, benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Annotated

import typer
from rich.console import Console

from . import labgen, notebooks
from .course import ManifestError, UnknownLabError, load_course
from .database import DatabaseUnavailableError, locate
from .dsn import mask_dsn
from .embedded import EmbeddedServer, EmbeddedServerError, binary

console = Console()
err = Console(stderr=True)

app = typer.Typer(help="Toolkit of the PostgreSQL connection pooling course.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
db_app = typer.Typer(help="Find, start and stop the course's PostgreSQL server.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


# -- db ---------------------------------------------------------------------
@db_app.command("up")
def db_up() -> None:
    """Start (or find) the server and print where it is."""
    try:
        database = locate()
    except DatabaseUnavailableError as exc:
        raise fail(str(exc)) from None
    console.print(f"[green]PostgreSQL is up[/] ({database.kind}): {database.masked_dsn}")
    console.print("Full DSN with the password: [bold]pglab db url[/]")


@db_app.command("url")
def db_url() -> None:
    """Print the full DSN (with the password), e.g. `export DATABASE_URL=$(pglab db url)`."""
    try:
        print(locate().dsn)
    except DatabaseUnavailableError as exc:
        raise fail(str(exc)) from None


@db_app.command("status")
def db_status() -> None:
    """Say which server the course uses and whether it answers."""
    if url := os.environ.get("DATABASE_URL"):
        console.print(f"DATABASE_URL is set: {mask_dsn(url)} (the embedded server is not used)")
        return
    status = EmbeddedServer().status()
    if status.running:
        console.print(f"[green]embedded server running[/] on 127.0.0.1:{status.port} (pid {status.pid})")
    else:
        console.print("[yellow]embedded server not running[/]; `pglab db up` starts it")
        raise typer.Exit(1)


@db_app.command("down")
def db_down() -> None:
    """Stop the embedded server (data is kept under .pglab/)."""
    try:
        stopped = EmbeddedServer().down()
    except EmbeddedServerError as exc:
        raise fail(str(exc)) from None
    console.print("embedded server stopped" if stopped else "embedded server was not running")


@db_app.command("restart")
def db_restart() -> None:
    """Restart the embedded server on the same port (a failure drill)."""
    try:
        console.print(f"restarted: {mask_dsn(EmbeddedServer().restart())}")
    except EmbeddedServerError as exc:
        raise fail(str(exc)) from None


@db_app.command("psql", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def db_psql(ctx: typer.Context) -> None:
    """Open psql on the course database (extra arguments go to psql)."""
    try:
        dsn = locate().dsn
    except DatabaseUnavailableError as exc:
        raise fail(str(exc)) from None
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    env = {**os.environ, "PGPASSWORD": parts.password or ""}
    args = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
            "-U", parts.username or "", "-d", parts.path.lstrip("/"), *ctx.args]
    raise typer.Exit(subprocess.call([str(binary("psql")), *args], env=env))


# -- authoring ----------------------------------------------------------------
@app.command("build-labs")
def build_labs(check: Annotated[bool, typer.Option("--check", help="only report; exit 1 if labs/ is out of sync")] = False) -> None:
    """Generate the skeletons in labs/ from solutions/."""
    try:
        stale = labgen.out_of_sync()
    except labgen.LabgenError as exc:
        raise fail(str(exc)) from None
    if check:
        for lab in stale:
            err.print(f"[red]out of sync:[/] {lab.skeleton.name}\n{labgen.diff(lab)}")
        if stale:
            raise fail("labs/ differs from what solutions/ generates; run `pglab build-labs`", 1)
        console.print("[green]labs/ is in sync with solutions/[/]")
        return
    for lab, backup in labgen.write():
        note = f" (previous version saved to {backup})" if backup else ""
        console.print(f"wrote labs/{lab.skeleton.name}{note}")
    console.print("[green]labs/ is up to date[/]")


@app.command("strip-notebooks")
def strip_notebooks(check: Annotated[bool, typer.Option("--check", help="only report; exit 1 if any notebook carries outputs")] = False) -> None:
    """Remove outputs from every notebook in tutorials/ and workshops/."""
    dirty = [p for p in notebooks.notebooks() if notebooks.carries_outputs(p)]
    if check:
        for path in dirty:
            err.print(f"[red]carries outputs:[/] {path}")
        if dirty:
            raise fail("strip them with `pglab strip-notebooks`", 1)
        console.print("[green]no notebook carries outputs[/]")
        return
    for path in dirty:
        notebooks.strip(path)
        console.print(f"stripped {path}")


@app.command("lint")
def lint() -> None:
    """Check course.toml: every lab has its files, points and hints."""
    try:
        problems = load_course().lint()
    except ManifestError as exc:
        raise fail(str(exc), 1) from None
    for problem in problems:
        err.print(f"[red]-[/] {problem}")
    if problems:
        raise fail(f"{len(problems)} problem(s) in course.toml", 1)
    console.print(f"[green]course.toml is valid[/]: {len(load_course().labs)} labs")


def main() -> None:
    try:
        app()
    except (ManifestError, UnknownLabError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
