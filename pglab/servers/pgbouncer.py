"""PgBouncer in front of the course server: `pglab db pgbouncer up|down|url|status`.

Uses the system's `pgbouncer` binary (Debian/Ubuntu package `pgbouncer`, Homebrew
`pgbouncer`), listening on 127.0.0.1 in transaction mode with a small server pool,
SCRAM authentication for the course role and an admin console (`SHOW POOLS`).
Its config, log and pid file live under `.pglab/pgbouncer/`. PgBouncer refuses to
run as root, so as root it runs as the server's system user, as PostgreSQL does.

Prepared statements: PgBouncer 1.21 added protocol-level prepared statements in
transaction mode (`max_prepared_statements`), 1.24 turned them on by default (200).
Every config written here pins the setting: 0 for the default instance, so asyncpg's
statement cache fails the way lab 12 teaches whatever the version, and N for a second
instance (`ensure_pgbouncer(max_prepared_statements=N)`, PgBouncer >= 1.21 only).
PgBouncer 1.18 (Debian 12) refuses any setting it does not know, so the key is written
only where the installed version has it.

Other [pgbouncer] settings (`ensure_pgbouncer(settings={"query_wait_timeout": 2})`), from
the short list in `SETTINGS`, start an instance of their own (its folder is named by a
digest of them), so a lab's short timeouts never reach the instance the other labs share.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .dsn import build_dsn, with_database
from .embedded import (
    allow_traversal,
    binary,
    ensure_system_user,
    free_port,
    pid_alive,
    port_is_free,
    run_as_server_user,
)

if TYPE_CHECKING:
    import typer

HOST = "127.0.0.1"
POOL_SIZE = 10  # server connections per (database, user): small, so the bound shows
PREPARED_STATEMENTS_SINCE = (1, 21)  # the first release with max_prepared_statements
MAX_CLIENTS = 1000
INSTALL_HINT = (
    "PgBouncer is not installed: `sudo apt-get install pgbouncer` (Debian/Ubuntu), "
    "`brew install pgbouncer` (macOS), or run `docker compose up -d pgbouncer` and "
    "point PGLAB_PGBOUNCER_URL at it"
)
# The [pgbouncer] settings a caller may add or override: those the course teaches.
SETTINGS = frozenset({
    "pool_mode", "default_pool_size", "min_pool_size", "reserve_pool_size", "reserve_pool_timeout",
    "max_client_conn", "max_db_connections", "query_timeout", "query_wait_timeout", "client_idle_timeout",
    "idle_transaction_timeout", "server_idle_timeout", "server_lifetime", "server_connect_timeout",
    "server_login_retry",
})
CUSTOM_HINT = (
    "PgBouncer with custom settings needs a local `pgbouncer` (a PgBouncer at PGLAB_PGBOUNCER_URL "
    "cannot be reconfigured): `sudo apt-get install pgbouncer` (Debian/Ubuntu) or `brew install pgbouncer`"
)
# Where packages put it; /usr/sbin is not on a normal user's PATH on Debian.
_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer",
               "/opt/homebrew/bin/pgbouncer")


class PgBouncerUnavailableError(RuntimeError):
    """PgBouncer cannot be used here; the message says why and how to get it."""


@dataclass(frozen=True)
class BouncerStatus:
    running: bool
    port: int | None
    pid: int | None


def pgbouncer_binary() -> str | None:
    """Path of the `pgbouncer` program (`PGLAB_PGBOUNCER_BIN` wins), or None."""
    if explicit := os.environ.get("PGLAB_PGBOUNCER_BIN"):
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("pgbouncer")
    return found or next((c for c in _CANDIDATES if os.access(c, os.X_OK)), None)


def unavailable_reason(max_prepared_statements: int = 0,
                       settings: Mapping[str, str | int | float] | None = None) -> str | None:
    """Why this PgBouncer cannot be had here (None when it can): no binary, or, for
    `max_prepared_statements` > 0, a version without protocol-level prepared statements.
    Custom `settings` need a local binary: a PgBouncer given by URL cannot take them."""
    if settings:
        if not pgbouncer_binary():
            return CUSTOM_HINT
        return _no_prepared_statements() if max_prepared_statements else None
    if max_prepared_statements:
        if os.environ.get("PGLAB_PGBOUNCER_PREPARED_URL"):
            return None
        if os.environ.get("PGLAB_PGBOUNCER_URL") or not pgbouncer_binary():
            return ("no PgBouncer with prepared statements: set PGLAB_PGBOUNCER_PREPARED_URL to one "
                    "with max_prepared_statements > 0, or install PgBouncer >= 1.21")
        return _no_prepared_statements()
    if os.environ.get("PGLAB_PGBOUNCER_URL") or pgbouncer_binary():
        return None
    return INSTALL_HINT


@functools.lru_cache(maxsize=4)
def _version_of(binary: str) -> tuple[int, ...] | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        if found := re.search(r"PgBouncer (\d+)\.(\d+)(?:\.(\d+))?", out, re.IGNORECASE):
            return tuple(int(part or 0) for part in found.groups())
    return None


def pgbouncer_version() -> tuple[int, ...] | None:
    """The installed PgBouncer's version from `pgbouncer --version`, e.g. (1, 18, 0); None without one."""
    binary = pgbouncer_binary()
    return _version_of(binary) if binary else None


def supports_prepared_statements() -> bool:
    """Whether the installed PgBouncer has `max_prepared_statements` (>= 1.21)."""
    version = pgbouncer_version()
    return version is not None and version[:2] >= PREPARED_STATEMENTS_SINCE


def _no_prepared_statements() -> str | None:
    if supports_prepared_statements():
        return None
    found = ".".join(map(str, pgbouncer_version() or ())) or "of unknown version"
    return (f"the installed PgBouncer {found} has no protocol-level prepared statements: they came "
            "in 1.21 (Debian 12 ships 1.18); use `docker compose` (1.24) or a newer package")


def checked_settings(settings: Mapping[str, str | int | float] | None) -> dict[str, str]:
    """`settings` as ini values, in a stable order; ValueError naming a key or value PgBouncer must not get."""
    checked = {}
    for key, value in sorted((settings or {}).items()):
        if key not in SETTINGS:
            raise ValueError(f"PgBouncer setting {key!r} is not one the course sets; use one of: "
                             f"{', '.join(sorted(SETTINGS))}")
        text = str(value)
        # One word or number: a newline or `;` would smuggle other lines into the ini.
        if isinstance(value, bool) or not re.fullmatch(r"-?[A-Za-z0-9._]+", text):
            raise ValueError(f"PgBouncer setting {key} = {value!r}: give a number (seconds, a count) "
                             "or one word (pool_mode = transaction)")
        checked[key] = text
    return checked


def home(max_prepared_statements: int = 0, settings: Mapping[str, str | int | float] | None = None) -> Path:
    """The folder of one instance: `.pglab/pgbouncer/`, `.pglab/pgbouncer-prepared/`, and for custom
    `settings` the same name with a digest of them (`.pglab/pgbouncer-1f0c2a9b3e/`)."""
    from ..paths import state_dir

    name = "pgbouncer-prepared" if max_prepared_statements else "pgbouncer"
    if extra := checked_settings(settings):
        name += "-" + hashlib.sha256(json.dumps(extra).encode()).hexdigest()[:10]
    return state_dir() / name


def ensure_pgbouncer(upstream: str | None = None, *, max_prepared_statements: int = 0,
                     settings: Mapping[str, str | int | float] | None = None) -> str:
    """Start PgBouncer unless it runs already; return the course DSN through it.

    `max_prepared_statements` > 0 starts a second instance that tracks prepared
    statements (PgBouncer >= 1.21), so asyncpg's statement cache works through it.
    `settings` adds or overrides [pgbouncer] settings (names from `SETTINGS`, else
    ValueError), in an instance of their own. Without `settings`, `PGLAB_PGBOUNCER_URL`
    (`PGLAB_PGBOUNCER_PREPARED_URL` for the second) is returned as is. Raises
    PgBouncerUnavailableError, saying why, when it cannot be had.
    """
    if max_prepared_statements < 0:
        raise ValueError(f"max_prepared_statements must be >= 0, got {max_prepared_statements}")
    extra = checked_settings(settings)
    variable = "PGLAB_PGBOUNCER_PREPARED_URL" if max_prepared_statements else "PGLAB_PGBOUNCER_URL"
    if not extra and (url := os.environ.get(variable)):
        return url
    if reason := unavailable_reason(max_prepared_statements, extra):
        raise PgBouncerUnavailableError(reason)
    binary = pgbouncer_binary()
    assert binary is not None  # unavailable_reason() said there is one
    if upstream is None:
        from .database import database_url

        upstream = database_url()
    folder = home(max_prepared_statements, extra)
    with _lock(folder):
        status = _status(folder)
        config = _config(folder, upstream, status.port or 0, max_prepared_statements, extra)
        if status.running and status.port:
            if _running_config(folder) == config:
                return _client_dsn(upstream, status.port)
            _stop(folder)  # the course server moved (new port) or the settings changed: follow
        port = _start(folder, binary, upstream, max_prepared_statements, extra)
        _state_file(folder).write_text(json.dumps({"port": port}))
        return _client_dsn(upstream, port)


@contextlib.contextmanager
def private_pgbouncer(upstream: str, settings: Mapping[str, str | int | float] | None = None) -> Iterator[str]:
    """A PgBouncer of its own in front of `upstream` (a private server a drill restarts), on a free port,
    stopped and removed on exit: `with private_pgbouncer(server.dsn) as dsn:`. Raises
    PgBouncerUnavailableError where there is no local binary."""
    import shutil
    import tempfile

    extra = checked_settings(settings)
    binary = pgbouncer_binary()
    if binary is None:
        raise PgBouncerUnavailableError(CUSTOM_HINT)
    folder = Path(tempfile.mkdtemp(prefix="pglab-pgbouncer-"))  # not under pytest's tmp_path (mode 0700)
    try:
        port = _start(folder, binary, upstream, 0, extra)
        _state_file(folder).write_text(json.dumps({"port": port}))  # _stop() finds it by its pid file and port
        yield _client_dsn(upstream, port)
    finally:
        _stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def admin_dsn(dsn: str | None = None) -> str:
    """The admin console (`SHOW POOLS`, `SHOW SERVERS`...): database `pgbouncer`."""
    return with_database(dsn or ensure_pgbouncer(), "pgbouncer")


def show(what: str, dsn: str | None = None) -> list[dict[str, str]]:
    """`SHOW <what>` on the admin console (POOLS, SERVERS, CLIENTS, DATABASES...), as rows."""
    return admin(f"SHOW {what}", dsn)


def admin(command: str, dsn: str | None = None) -> list[dict[str, str]]:
    """Run one admin console command (`SHOW POOLS`, `RECONNECT pglab`...); its rows, if any.

    The console speaks only the simple query protocol; asyncpg's `fetch` uses the
    extended one ("extended query protocol not supported by admin console"), so
    this goes through `psql`.
    """
    import csv


    parts = urlsplit(admin_dsn(dsn))
    result = subprocess.run(
        [str(binary("psql")), "-h", parts.hostname or HOST, "-p", str(parts.port or 6432),
         "-U", unquote(parts.username or ""), "-d", "pgbouncer", "-q", "--csv", "-c", command],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "PGPASSWORD": unquote(parts.password or "")},
    )
    if result.returncode != 0:
        raise PgBouncerUnavailableError(f"{command} failed: {result.stderr.strip()}")
    return list(csv.DictReader(result.stdout.splitlines()))


def stop_pgbouncer() -> bool:
    """Stop our PgBouncer instances, those with custom settings too; False when none was running."""
    stopped = False
    folders = {home(), home(max_prepared_statements=1)} | {p for p in home().parent.glob("pgbouncer-*") if p.is_dir()}
    for folder in sorted(folders):
        with _lock(folder):
            if _status(folder).running:
                _stop(folder)
                stopped = True
    return stopped


def bouncer_status(max_prepared_statements: int = 0,
                   settings: Mapping[str, str | int | float] | None = None) -> BouncerStatus:
    """Whether the PgBouncer of this checkout runs, from its pid file and its port."""
    return _status(home(max_prepared_statements, settings))


def _status(folder: Path) -> BouncerStatus:
    port = _state(folder).get("port")
    try:
        pid: int | None = int((folder / "pgbouncer.pid").read_text().strip())
    except (OSError, ValueError):
        pid = None
    running = pid is not None and pid_alive(pid) and port is not None and _accepting(port)
    return BouncerStatus(running, port, pid if running else None)


# -- internals ------------------------------------------------------------------
def _client_dsn(upstream: str, port: int) -> str:
    parts = urlsplit(upstream)
    return build_dsn(HOST, port, unquote(parts.password or ""), user=unquote(parts.username or ""),
                     database=parts.path.lstrip("/") or "postgres")


def _running_config(folder: Path) -> str:
    try:
        return (folder / "pgbouncer.ini").read_text()
    except OSError:
        return ""


def _state_file(folder: Path) -> Path:
    return folder / "state.json"


def _state(folder: Path) -> dict:
    try:
        return json.loads(_state_file(folder).read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _auth_secret(upstream: str) -> str:
    """The role's SCRAM verifier from pg_authid (needs a superuser), else its password.

    With the verifier PgBouncer never stores the password, and it can still log in to
    the server for the client: SCRAM pass-through (PgBouncer >= 1.14). `psql`, not
    asyncpg: this may run inside a notebook's event loop.
    """

    parts = urlsplit(upstream)
    password = unquote(parts.password or "")
    result = subprocess.run(
        [str(binary("psql")), "-h", parts.hostname or HOST, "-p", str(parts.port or 5432),
         "-U", unquote(parts.username or ""), "-d", parts.path.lstrip("/") or "postgres", "-tAc",
         "SELECT rolpassword FROM pg_authid WHERE rolname = current_user"],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PGPASSWORD": password},
    )
    secret = result.stdout.strip()
    return secret if result.returncode == 0 and secret.startswith("SCRAM-SHA-256$") else password


def _config(folder: Path, upstream: str, port: int, max_prepared_statements: int,
            settings: Mapping[str, str] | None = None) -> str:
    """pgbouncer.ini for this upstream server and listening port; `settings` (checked) win."""
    parts = urlsplit(upstream)
    database = parts.path.lstrip("/") or "postgres"
    server = f"host={parts.hostname} port={parts.port or 5432}"
    # Pinned, never left to the version's default (0 before 1.24, 200 since); 1.18 would
    # refuse to start on the unknown key, and has no prepared statements to turn off.
    prepared = (f"max_prepared_statements = {max_prepared_statements}\n"
                if supports_prepared_statements() else "")
    pool = {"pool_mode": "transaction", "default_pool_size": str(POOL_SIZE), "max_client_conn": str(MAX_CLIENTS),
            **(settings or {})}
    tuned = "".join(f"{key} = {value}\n" for key, value in pool.items())
    return f"""\
;; Written by `pglab db pgbouncer up`; regenerated on every start.
[databases]
{database} = {server} dbname={database}
* = {server}

[pgbouncer]
listen_addr = {HOST}
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {folder / "userlist.txt"}
admin_users = {unquote(parts.username or "")}
{tuned}logfile = {folder / "pgbouncer.log"}
pidfile = {folder / "pgbouncer.pid"}
{prepared}"""


def _write_config(folder: Path, upstream: str, port: int, max_prepared_statements: int,
                  settings: Mapping[str, str]) -> Path:
    secret = _auth_secret(upstream).replace('"', '""')
    userlist = folder / "userlist.txt"
    userlist.write_text(f'"{unquote(urlsplit(upstream).username or "")}" "{secret}"\n')
    userlist.chmod(0o600)
    ini = folder / "pgbouncer.ini"
    ini.write_text(_config(folder, upstream, port, max_prepared_statements, settings))
    if os.geteuid() == 0:
        _give_to_server_user(folder, [ini, userlist])
    return ini


def _give_to_server_user(folder: Path, files: list[Path]) -> None:

    user = ensure_system_user()
    allow_traversal(folder)
    for path in (folder, *files):
        os.chown(path, user.pw_uid, user.pw_gid)


def _start(folder: Path, binary: str, upstream: str, max_prepared_statements: int,
           settings: Mapping[str, str]) -> int:
    saved = _state(folder).get("port")
    port = saved if saved and port_is_free(saved) else free_port()
    (folder / "pgbouncer.pid").unlink(missing_ok=True)  # stale after a crash or reboot
    ini = _write_config(folder, upstream, port, max_prepared_statements, settings)
    result = run_as_server_user([binary, "-d", str(ini)], timeout=30)
    deadline = time.monotonic() + 10
    while not _accepting(port):
        if result.returncode != 0 or time.monotonic() > deadline:
            raise PgBouncerUnavailableError(
                f"pgbouncer did not start on {HOST}:{port}:\n{result.stderr.strip()}\n{_log_tail(folder)}"
            )
        time.sleep(0.05)
    return port


def _stop(folder: Path) -> None:
    pid = _status(folder).pid
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)  # immediate shutdown; SIGINT would wait for clients
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _accepting(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
        return True
    return False


def _log_tail(folder: Path, lines: int = 10) -> str:
    try:
        text = (folder / "pgbouncer.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# -- CLI ------------------------------------------------------------------------
def register(db_app: typer.Typer) -> None:
    """Add `pglab db pgbouncer up|down|url|status`."""
    import typer
    from rich.console import Console

    from .dsn import mask_dsn

    console, err = Console(), Console(stderr=True)
    group = typer.Typer(help="PgBouncer (transaction mode) in front of the course server.",
                        no_args_is_help=True)
    db_app.add_typer(group, name="pgbouncer")

    def dsn_or_exit() -> str:
        try:
            return ensure_pgbouncer()
        except PgBouncerUnavailableError as exc:
            err.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None

    @group.command("up")
    def up() -> None:
        """Start PgBouncer (or find it running) and print its DSN, password masked."""
        dsn = dsn_or_exit()
        console.print(f"[green]PgBouncer is up[/] (transaction mode, {POOL_SIZE} server "
                      f"connections per database/user): {mask_dsn(dsn)}")
        console.print("Full DSN: [bold]pglab db pgbouncer url[/]; "
                      "admin console: database 'pgbouncer'")

    @group.command("url")
    def url() -> None:
        """Print the DSN through PgBouncer (with the password)."""
        print(dsn_or_exit())

    @group.command("status")
    def status() -> None:
        """Say whether PgBouncer runs."""
        if url := os.environ.get("PGLAB_PGBOUNCER_URL"):
            console.print(f"PGLAB_PGBOUNCER_URL is set: {mask_dsn(url)} (no local PgBouncer)")
            return
        if reason := unavailable_reason():
            console.print(f"[yellow]{reason}[/]")
            raise typer.Exit(1)
        state = bouncer_status()
        if not state.running:
            console.print("[yellow]PgBouncer not running[/]; `pglab db pgbouncer up` starts it")
            raise typer.Exit(1)
        console.print(f"[green]PgBouncer running[/] on {HOST}:{state.port} (pid {state.pid})")

    @group.command("down")
    def down() -> None:
        """Stop PgBouncer."""
        console.print("PgBouncer stopped" if stop_pgbouncer() else "PgBouncer was not running")
