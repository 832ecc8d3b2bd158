"""The capstone's harness: serve lab 16 with uvicorn workers, load it with wrk, drill a fault.

- `app()`: the ASGI factory uvicorn imports in every worker (`--factory`); it loads
  labs 01, 03, 04, 11, 12 and 16 from `PGLAB_TARGET` and the DSN from `PGLAB_CAPSTONE_DSN`.
- `served()`: the service as a real uvicorn process with N workers, on a free port.
- `load_run()`: wrk (https://github.com/wg/wrk) in one-second slices, with a fault in
  the middle, and an SLO verdict (p99 latency, error rate, recovery time).
- `pglab capstone run`: all of it, with `report.json` and a plot.
- `--pgbouncer`: the workers connect through PgBouncer (`pglab.servers.pgbouncer`) in
  transaction mode, and lab 16 builds its pool the lab 12 way; the drill still terminates
  the real backends, which are then PgBouncer's server connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import typer

from .targets import load_lab_module

PARTS = {"database_pool": "lab01_database_pool", "settings": "lab03_database_settings",
         "health": "lab04_health_monitor", "failures": "lab11_failure_drills", "production": "lab12_production"}
# What uvicorn logs when the app factory or the lifespan fails (its supervisor would retry forever).
STARTUP_FAILED = ("Traceback (most recent call last)", "Application startup failed")
WRK_HINT = "wrk is not installed: `apt-get install wrk` (Debian/Ubuntu) or `brew install wrk` (macOS)"
DIRECT = "direct"
# The course's PgBouncer fronts the shared server, which no drill may restart: the restart drill
# puts a PgBouncer of its own in front of its private server. After a failed login PgBouncer
# waits server_login_retry (15 s by default) before it tries the server again, which a restart
# without PAUSE runs into: https://www.pgbouncer.org/config.html#server_login_retry
RESTART_BOUNCER = {"server_login_retry": 1}


@dataclass(frozen=True)
class Slo:
    """The service level the capstone must meet under the drill (the course's choice)."""

    p99_ms: float = 1000.0  # worst one-second slice
    error_rate: float = 0.02  # failed / all requests over the run
    recovery_s: float = 5.0  # from the fault to the first slice without errors


def app() -> Any:
    """Build lab 16's app from the target tree; uvicorn calls this in each worker."""
    target = os.environ.get("PGLAB_TARGET", "labs")
    capstone = load_lab_module("lab16_capstone", target)
    parts = capstone.Parts(**{name: load_lab_module(module, target) for name, module in PARTS.items()})
    settings = settings_for(os.environ["PGLAB_CAPSTONE_DSN"], parts.settings)
    if os.environ.get("PGLAB_CAPSTONE_PGBOUNCER") == "1":
        return capstone.create_app(parts, settings, behind_pgbouncer=True)
    return capstone.create_app(parts, settings)  # a lab 16 older than behind_pgbouncer still serves direct


def settings_for(dsn: str, lab03: Any) -> Any:
    """Lab 03's DatabaseSettings for `dsn`, with a small pool per worker."""
    url = urlsplit(dsn)
    return lab03.DatabaseSettings(
        host=url.hostname, port=url.port or 5432, database=url.path.lstrip("/"), user=url.username,
        password=url.password or "", pool_min_size=2, pool_max_size=5, command_timeout=10.0, ssl_mode="disable",
        _env_file=None)


@dataclass
class Running:
    """A started service: its uvicorn process, base URL and log file."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start(dsn: str, target: str, workers: int = 2, *, behind_pgbouncer: bool = False) -> Running:
    """Start the service in uvicorn with `workers` processes; returns once /healthz answers.

    `behind_pgbouncer`: `dsn` leads to PgBouncer in transaction mode (see `through_pgbouncer`).
    Raises RuntimeError, with the service's last log lines, when it cannot start (an
    unfinished lab fails in the app factory or the lifespan)."""
    env = {**os.environ, "PGLAB_TARGET": target, "PGLAB_CAPSTONE_DSN": dsn,
           "PGLAB_CAPSTONE_PGBOUNCER": "1" if behind_pgbouncer else "0"}
    log = Path(tempfile.mkstemp(prefix="pglab-capstone-", suffix=".log")[1])
    # The listening socket is bound here and handed over (`--fd`): a port number picked free and
    # bound later by uvicorn could meanwhile be taken by another run, whose /healthz would answer.
    with socket.create_server(("127.0.0.1", 0)) as listener, log.open("wb") as sink:
        # uvicorn takes an `--fd` socket for a Unix one and so never sets TCP_NODELAY on what it
        # accepts (asyncio does that for TCP sockets only); on Linux they inherit it from here.
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        command = [sys.executable, "-m", "uvicorn", "pglab.capstone:app", "--factory", "--fd", str(listener.fileno()),
                   "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
        running = Running(subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                           pass_fds=(listener.fileno(),)),
                          f"http://127.0.0.1:{listener.getsockname()[1]}", log)
    try:
        wait_until_ready(running)
    except BaseException:
        stop(running)
        raise
    return running


@contextlib.contextmanager
def served(dsn: str, target: str, workers: int = 2, *, behind_pgbouncer: bool = False) -> Iterator[str]:
    """The service for the duration of a `with` block; yields its base URL; SIGTERM on exit."""
    running = start(dsn, target, workers, behind_pgbouncer=behind_pgbouncer)
    try:
        yield running.url
    finally:
        stop(running)


def wait_until_ready(running: Running, seconds: float = 30.0) -> None:
    """Poll /healthz until it answers; fail fast when the service exits or its startup fails."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        log = running.log.read_text(errors="replace")
        if running.proc.poll() is not None or any(sign in log for sign in STARTUP_FAILED):
            raise RuntimeError(f"the service could not start:\n{running.output()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{running.url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the service did not answer /healthz within {seconds:g} s:\n{running.output()}")


def stop(running: Running, seconds: float = 20.0) -> int:
    """SIGTERM (uvicorn's graceful shutdown), then SIGKILL after `seconds`; the exit code."""
    proc = running.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    running.log.unlink(missing_ok=True)
    return proc.returncode


@dataclass
class Slice:
    """One second of load, as wrk reports it."""

    start: float  # seconds since the run began
    requests: int
    errors: int  # non-2xx/3xx responses and socket errors
    p50_ms: float
    p99_ms: float


@dataclass
class LoadReport:
    slices: list[Slice] = field(default_factory=list)
    fault_at: float | None = None
    fault: str = ""
    path: str = DIRECT  # how the workers reach PostgreSQL: "direct", or through PgBouncer and its pool_mode
    load: str = ""  # the offered load, as `Load.describe()` says it

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.slices)

    @property
    def error_rate(self) -> float:
        errors = sum(s.errors for s in self.slices)
        return errors / max(1, self.requests + errors)

    @property
    def worst_p99_ms(self) -> float:
        return max((s.p99_ms for s in self.slices), default=0.0)

    @property
    def recovery_s(self) -> float | None:
        """From the fault to the start of the first slice after it without errors."""
        if self.fault_at is None:
            return None
        clean = [s.start for s in self.slices if s.start >= self.fault_at and s.errors == 0]
        return round(clean[0] - self.fault_at, 2) if clean else None

    def verdict(self, slo: Slo) -> list[str]:
        """The SLO's clauses this run broke (empty: the SLO is met)."""
        broken = []
        if self.worst_p99_ms > slo.p99_ms:
            broken.append(f"p99 {self.worst_p99_ms:.0f} ms > {slo.p99_ms:.0f} ms")
        if self.error_rate > slo.error_rate:
            broken.append(f"error rate {self.error_rate:.2%} > {slo.error_rate:.0%}")
        if self.fault_at is not None and (self.recovery_s is None or self.recovery_s > slo.recovery_s):
            broken.append(f"recovery {self.recovery_s} s > {slo.recovery_s:g} s")
        return broken

    def as_dict(self, slo: Slo) -> dict[str, Any]:
        return {"slo": asdict(slo), "path": self.path, "load": self.load, "requests": self.requests,
                "error_rate": self.error_rate, "worst_p99_ms": self.worst_p99_ms, "recovery_s": self.recovery_s,
                "fault": self.fault, "fault_at": self.fault_at, "broken": self.verdict(slo),
                "slices": [asdict(s) for s in self.slices]}


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(output: str, start: float) -> Slice:
    """One Slice from `wrk --latency` output; a slice wrk could not even start counts as one error."""
    if (total := re.search(r"(\d+) requests in", output)) is None:
        return Slice(round(start, 2), 0, 1, 0.0, 0.0)
    answered = int(total[1])
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+(?:us|ms|s))", output, re.M))
    failed = int(match[1]) if (match := re.search(r"Non-2xx or 3xx responses: (\d+)", output)) else 0
    socket_errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    return Slice(round(start, 2), answered - failed, failed + socket_errors,
                 _ms(latency.get("50", "0ms")), _ms(latency.get("99", "0ms")))


@dataclass(frozen=True)
class Load:
    """What wrk offers: `connections` open at once, each waiting `pace_ms` between requests.

    `pace_ms=0` is a stress test: every connection sends its next request as soon as the
    answer is in, so the machine is saturated and p99 is mostly queueing. A paced load
    (wrk's Lua `delay()`, https://github.com/wg/wrk/blob/master/SCRIPTING) is steady traffic
    below capacity, which is what an SLO is stated for, and leaves CPU to the rest."""

    connections: int = 16
    pace_ms: int = 0

    def describe(self) -> str:
        each = f"each waiting {self.pace_ms} ms between requests" if self.pace_ms else "unpaced (saturating)"
        return f"{self.connections} connections, {each}"


STRESS, STEADY = Load(), Load(connections=8, pace_ms=20)


async def load_run(url: str, seconds: int = 12, *, load: Load = STRESS,
                   fault: Callable[[], Awaitable[Any]] | None = None, fault_after: float = 4.0,
                   fault_name: str = "", path: str = DIRECT) -> LoadReport:
    """wrk against `url` in one-second slices; `fault` runs once, `fault_after` seconds in."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError(WRK_HINT)
    report, begin = LoadReport(fault=fault_name, path=path, load=load.describe()), time.monotonic()
    fault_task: asyncio.Task[Any] | None = None
    with tempfile.TemporaryDirectory(prefix="pglab-wrk-") as folder:
        pacing: list[str] = []
        if load.pace_ms:  # without a script wrk sends at once (a delay() of 0 still goes through a timer)
            (script := Path(folder) / "pace.lua").write_text(f"function delay()\n  return {load.pace_ms}\nend\n")
            pacing = ["-s", str(script)]
        while (now := time.monotonic() - begin) < seconds:
            if fault is not None and fault_task is None and now >= fault_after:
                report.fault_at = round(now, 2)
                fault_task = asyncio.ensure_future(fault())
            proc = await asyncio.create_subprocess_exec(
                wrk, "--latency", "-t2", f"-c{load.connections}", "-d1s", "--timeout", "5s", *pacing, url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            output, _ = await proc.communicate()
            report.slices.append(parse_wrk(output.decode(), now))
    if fault_task is not None:
        await fault_task
    return report


async def terminate_service_backends(admin_dsn: str, database: str) -> int:
    """The drill: terminate every client backend of `database` but our own.

    `admin_dsn` leads to PostgreSQL itself, never to PgBouncer: behind PgBouncer the backends
    are its server connections, and terminating them is the fault PgBouncer has to absorb."""
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        return len(await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'", database))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def private_database(dsn: str) -> Any:
    """A fresh database for one run (dropped after); the given one if we may not create any."""
    import asyncpg

    name = f"pglab_capstone_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.InsufficientPrivilegeError:
        await admin.close()
        yield dsn, urlsplit(dsn).path.lstrip("/")
        return
    try:
        yield urlunsplit(urlsplit(dsn)._replace(path=f"/{name}")), name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def through_pgbouncer(dsn: str, database: str) -> tuple[str, str]:
    """The DSN of `database` through the course's PgBouncer, and how the report names that path.

    `dsn` is the course server's own DSN, the one every check passes to `ensure_pgbouncer` (a
    different one would restart the PgBouncer others use); PgBouncer's `* =` entry routes any
    database name to that server. Raises PgBouncerUnavailableError, saying how to install it."""
    from .servers import pgbouncer
    from .servers.dsn import with_database

    front = pgbouncer.ensure_pgbouncer(dsn)
    mode = next((row["value"] for row in pgbouncer.show("CONFIG", front) if row["key"] == "pool_mode"), "unknown")
    return with_database(front, database), f"through PgBouncer, pool_mode={mode}"


def plot(report: LoadReport, slo: Slo) -> Any:
    """A matplotlib Figure: latency, answered and failed requests per second, the fault marked."""
    import matplotlib.pyplot as plt

    t = [s.start for s in report.slices]
    fig, (latency, answered, failed) = plt.subplots(3, 1, sharex=True, figsize=(9, 6.5))
    latency.plot(t, [s.p99_ms for s in report.slices], "o-", label="p99")
    latency.plot(t, [s.p50_ms for s in report.slices], "s-", label="p50")
    latency.axhline(slo.p99_ms, color="red", linestyle=":", label=f"SLO: p99 ≤ {slo.p99_ms:g} ms")
    latency.set(ylabel="latency (ms)", yscale="log",
                title=f"Capstone under load ({report.path}), drill: {report.fault or 'none'}\n{report.load}")
    answered.bar(t, [s.requests for s in report.slices], width=0.8, label="answered 2xx")
    answered.set(ylabel="requests / s")
    failed.bar(t, [s.errors for s in report.slices], width=0.8, color="red", label="failed")
    failed.set(xlabel="time since the load started (s)", ylabel="failed / s")
    for axis in (latency, answered, failed):
        if report.fault_at is not None:
            axis.axvline(report.fault_at, color="black", linestyle="--", label="fault")
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")  # outside: hides no data
    fig.tight_layout()
    return fig


async def drill_run(dsn: str, target: str, *, drill: str = "terminate", workers: int = 2,
                    seconds: int = 12, pgbouncer: bool = False, load: Load = STRESS) -> LoadReport:
    """Serve the capstone on its own database, load it, and drill `drill` (terminate | restart | none).

    `pgbouncer`: the workers connect through PgBouncer (the course's, or for the restart drill one in
    front of the private server, see RESTART_BOUNCER); raises PgBouncerUnavailableError where it cannot be had."""
    import httpx

    from .drills import PrivateServer
    from .servers.pgbouncer import private_pgbouncer

    async with contextlib.AsyncExitStack() as stack:
        path = DIRECT
        if drill == "restart":  # never the shared server: a private one of our own
            server = await stack.enter_async_context(PrivateServer())
            service_dsn, fault = server.dsn, server.restart
            if pgbouncer:
                service_dsn = stack.enter_context(private_pgbouncer(server.dsn, RESTART_BOUNCER))
                path = "through PgBouncer, pool_mode=transaction, server_login_retry=1"
        else:
            service_dsn, database = await stack.enter_async_context(private_database(dsn))
            # Always straight to PostgreSQL: the backends to kill are PgBouncer's, if it is there.
            fault = (lambda: terminate_service_backends(dsn, database)) if drill == "terminate" else None
        if pgbouncer and drill != "restart":  # psql and sleeps inside: off the event loop
            service_dsn, path = await asyncio.to_thread(through_pgbouncer, dsn, database)
        url = stack.enter_context(served(service_dsn, target, workers, behind_pgbouncer=pgbouncer))
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            await client.post("/items", json={"id": 1, "value": "capstone"})
        return await load_run(f"{url}/items/1", seconds, load=load, fault=fault, fault_name=drill if fault else "",
                              path=path)


PGBOUNCER_OPTION = typer.Option("--pgbouncer", help="connect the workers through PgBouncer (transaction mode)")


def pgbouncer_or_exit(dsn: str, echo: Callable[[str], Any]) -> tuple[str, str]:
    """`through_pgbouncer` for the CLI: without PgBouncer, say how to install it and exit 3."""
    from .servers.pgbouncer import PgBouncerUnavailableError

    try:
        return through_pgbouncer(dsn, urlsplit(dsn).path.lstrip("/"))
    except PgBouncerUnavailableError as exc:
        echo(f"--pgbouncer needs PgBouncer: {exc}")
        raise typer.Exit(3) from None


def register(app: typer.Typer) -> None:
    capstone = typer.Typer(help="The capstone service (lab 16): serve it, or load it with a fault drill.",
                           no_args_is_help=True)
    app.add_typer(capstone, name="capstone")

    @capstone.command("serve")
    def serve(
        target: Annotated[str, typer.Option(help="labs, solutions or a folder")] = "labs",
        workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 2,
        pgbouncer: Annotated[bool, PGBOUNCER_OPTION] = False,
    ) -> None:
        """Serve lab 16 on the course database until Ctrl-C (try: curl URL/readyz)."""
        from .servers.database import database_url

        dsn, path = database_url(), DIRECT
        if pgbouncer:
            dsn, path = pgbouncer_or_exit(dsn, lambda line: typer.echo(f"error: {line}", err=True))
        try:
            running = start(dsn, target, workers, behind_pgbouncer=pgbouncer)
        except RuntimeError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"serving lab 16 at {running.url} ({workers} workers, {path}); Ctrl-C stops it")
        try:
            running.proc.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop(running)

    @capstone.command("run")
    def run(
        target: Annotated[str, typer.Option(help="labs, solutions or a folder")] = "labs",
        drill: Annotated[str, typer.Option(help="terminate | restart | none")] = "terminate",
        workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 2,
        seconds: Annotated[int, typer.Option(help="length of the load run")] = 12,
        out: Annotated[Path, typer.Option(help="folder for report.json and slo.png")] = Path("capstone-results"),
        pgbouncer: Annotated[bool, PGBOUNCER_OPTION] = False,
        connections: Annotated[int, typer.Option(help="wrk connections open at once")] = STRESS.connections,
        pace: Annotated[int, typer.Option(help="ms each connection waits between requests (0: saturate)")] = 0,
    ) -> None:
        """Serve lab 16, load it with wrk, drill a fault in the middle, and judge the SLO."""
        from rich.console import Console

        from .servers.database import database_url
        from .servers.pgbouncer import PgBouncerUnavailableError

        console = Console()
        if drill not in ("terminate", "restart", "none"):
            console.print(f"[red]error:[/] --drill must be terminate, restart or none, not {drill!r}")
            raise typer.Exit(2)
        if connections < 1 or pace < 0:
            console.print("[red]error:[/] --connections must be at least 1 and --pace at least 0")
            raise typer.Exit(2)
        if shutil.which("wrk") is None:
            console.print(f"[red]error:[/] {WRK_HINT}")
            raise typer.Exit(3)
        slo = Slo()
        path = "through PgBouncer" if pgbouncer else DIRECT
        with console.status(f"serving lab 16 ({workers} workers, {path}), {seconds} s of load, drill: {drill} ..."):
            try:
                report = asyncio.run(drill_run(database_url(), target, drill=drill, workers=workers,
                                               seconds=seconds, pgbouncer=pgbouncer,
                                               load=Load(connections, pace)))
            except PgBouncerUnavailableError as exc:
                console.print(f"[red]error:[/] --pgbouncer needs PgBouncer: {exc}")
                raise typer.Exit(3) from None
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report.as_dict(slo), indent=1))
        import matplotlib

        matplotlib.use("Agg")
        plot(report, slo).savefig(out / "slo.png", dpi=110)
        broken = report.verdict(slo)
        console.print(f"{report.path}, {report.load}: {report.requests} requests, error rate {report.error_rate:.2%}, "
                      f"worst p99 {report.worst_p99_ms:.0f} ms, recovery {report.recovery_s} s; "
                      f"{out}/report.json, slo.png")
        if broken:
            console.print("[red]SLO missed:[/] " + "; ".join(broken))
            raise typer.Exit(1)
        console.print("[green]SLO met[/]")
