"""`pglab bench`: the load generator behind every performance number of the course.

N asyncio tasks run one operation in a loop for a fixed time; only operations that
complete inside the measurement window (after the warm-up) count. Contenders of a
comparison are measured side by side in the same run, in interleaved rounds (A B C,
C B A, ...), so a burst of load from another process hits all of them alike and the
ratios stay meaningful on a busy laptop. Heavy imports (asyncpg, matplotlib, uvloop)
happen inside functions so `pglab --help` stays fast.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import typer

T = TypeVar("T")
Op = Callable[[], Awaitable[object]]


@dataclass
class Measurement:
    """Latencies (seconds) of the operations that completed inside `seconds` of measurement."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time, warm-up included...
    all_ops: int = 0  # ...and the operations it paid for
    round_rates: list[float] = field(default_factory=list)  # ops/s of each round, in order

    def merge(self, other: Measurement) -> None:
        self.latencies.extend(other.latencies)
        self.seconds += other.seconds
        self.cpu_seconds += other.cpu_seconds
        self.all_ops += other.all_ops
        self.round_rates.extend(other.round_rates)

    def row(self, **params: object) -> dict[str, Any]:
        """The results.json row: ops/s, latency percentiles in ms, then the parameters."""
        lat = sorted(self.latencies)
        return {
            "ops_per_s": round(len(lat) / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": _ms(percentile(lat, 50)),
            "p95_ms": _ms(percentile(lat, 95)),
            "p99_ms": _ms(percentile(lat, 99)),
            "max_ms": _ms(lat[-1] if lat else 0.0),
            "ops": len(lat),
            "seconds": round(self.seconds, 2),
            # Client CPU per operation: what a wrapper costs, barely moved by other processes.
            "client_cpu_us_per_op": (round(self.cpu_seconds / self.all_ops * 1e6, 1)
                                     if self.all_ops else None),
            "rounds_ops_per_s": [round(rate, 1) for rate in self.round_rates],
            **params,
        }


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil without floats drifting
    return sorted_values[int(rank) - 1]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def measure(op: Op, *, tasks: int, seconds: float, warmup: float = 0.0) -> Measurement:
    """Run `op` in `tasks` concurrent loops for `warmup + seconds`; count what completes in the
    last `seconds` (operations still running at the end are not waited for by the count)."""
    clock = time.perf_counter
    start = clock() + warmup
    end = start + seconds
    latencies: list[float] = []
    all_ops = 0
    cpu = time.process_time()

    async def worker() -> None:
        nonlocal all_ops
        while (t0 := clock()) < end:
            await op()
            t1 = clock()
            all_ops += 1
            if start <= t1 <= end:  # completions inside the window: no bias from long operations
                latencies.append(t1 - t0)

    workers = [asyncio.ensure_future(worker()) for _ in range(tasks)]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:  # a failing op must not leave the other loops running
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return Measurement(latencies, seconds, time.process_time() - cpu, all_ops,
                       [len(latencies) / seconds])


class Progress(Protocol):
    """Told once per measurement what is being measured."""

    def step(self, description: str) -> None: ...


class Silent:
    """Progress that shows nothing (tests, notebooks)."""

    def step(self, description: str) -> None:
        pass


async def compare(ops: dict[str, Op], *, tasks: int | dict[str, int], settings: Settings,
                  progress: Progress | None = None) -> dict[str, Measurement]:
    """Measure every op for `settings.seconds` in total, in interleaved rounds
    (`tasks`: concurrent loops, the same for all or by name)."""
    results = {name: Measurement() for name in ops}
    for round_no in range(settings.rounds):
        order = list(ops) if round_no % 2 == 0 else list(reversed(ops))
        for name in order:
            (progress or Silent()).step(f"{name} (round {round_no + 1}/{settings.rounds})")
            # After the first round the pools are warm: a short ramp-up is enough.
            warmup = settings.warmup if round_no == 0 else min(settings.warmup, 0.1)
            n = tasks if isinstance(tasks, int) else tasks[name]
            results[name].merge(await measure(ops[name], tasks=n, seconds=settings.round_seconds,
                                              warmup=warmup))
    return results


@dataclass(frozen=True)
class Settings:
    """Parameters of one run: `full()` by default, `quick_run()` for --quick."""

    seconds: float = 6.0  # measured time per contender, split over `rounds`
    rounds: int = 8  # many short rounds: a burst of load elsewhere hits every contender
    warmup: float = 0.5  # before the first round (0.1 s before later ones), not counted
    tasks: int = 50  # concurrent asyncio tasks
    pool_size: int = 10  # connections of every pool, and pgbench clients
    sweep_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    sweep_tasks: int = 64
    sweep_seconds: float = 2.0  # per pool size
    sweep_sleep_ms: float = 5.0  # the slow query of the mixed workload...
    sweep_sleep_every: int = 5  # ...is one operation in this many
    batch_rows: int = 10_000
    uvloop: bool = False
    quick: bool = False

    @property
    def round_seconds(self) -> float:
        return self.seconds / self.rounds

    @classmethod
    def full(cls, **overrides: Any) -> Settings:
        return replace(cls(), **overrides)

    @classmethod
    def quick_run(cls, **overrides: Any) -> Settings:
        """About a minute on two cores, for workshops and CI."""
        return replace(cls(seconds=2.0, rounds=4, warmup=0.25, sweep_seconds=0.6,
                           batch_rows=2_000, quick=True), **overrides)


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A fresh event loop: "asyncio" (the default selector loop) or "uvloop"."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_on(kind: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on a new loop of `kind`, then close the loop."""
    loop = new_loop(kind)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()


def uvloop_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None


# -- the command ---------------------------------------------------------------
@contextmanager
def rich_progress(total: int) -> Iterator[Progress]:
    """A rich progress bar advanced once per measurement."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    columns = (TextColumn("[bold]{task.description:<48}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with RichProgress(*columns, transient=False) as bar:
        task = bar.add_task("starting", total=total)
        started = False

        class Bar:
            def step(self, description: str) -> None:
                nonlocal started
                if started:
                    bar.advance(task)
                started = True
                bar.update(task, description=description)

        yield Bar()
        bar.update(task, completed=total, description="done")


def register(app: typer.Typer) -> None:
    """Add `pglab bench` to the CLI."""

    @app.command("bench")
    def bench(
        out: Annotated[Path, typer.Option(
            "--out", help="folder for results.json and the PNG plots")] = Path("bench-results"),
        quick: Annotated[bool, typer.Option(
            "--quick", help="short run (about a minute on 2 cores)")] = False,
        use_uvloop: Annotated[bool, typer.Option("--uvloop", help="run every scenario on uvloop")]
        = False,
        only: Annotated[str, typer.Option(
            "--only", help="comma-separated scenarios (default: all)")] = "",
        seconds: Annotated[float | None, typer.Option(
            "--seconds", help="measured seconds per contender (overrides the preset)")] = None,
        quote: Annotated[list[Path] | None, typer.Option(
            "--quote", help="rewrite the <!-- bench:begin --> block of this guide with the run's tables")] = None,
    ) -> None:
        """Measure pooling against the live server and write results.json plus plots.

        Scenarios: pooled vs unpooled, the course's wrappers vs raw asyncpg.Pool,
        pools written from scratch (labs 09, 10), the cost of the reset on release,
        a pool-size sweep, batch inserts, and pgbench as the machine's ceiling.
        """
        from rich.console import Console

        from ..servers.database import DatabaseUnavailableError, locate
        from . import plots, report, scenarios

        console = Console()
        if use_uvloop and not uvloop_available():
            console.print("[red]uvloop is not installed[/] (it does not exist on Windows)")
            raise typer.Exit(2)
        overrides: dict[str, Any] = {"uvloop": use_uvloop}
        if seconds is not None:
            overrides.update(seconds=seconds, sweep_seconds=seconds / 3)
        settings = Settings.quick_run(**overrides) if quick else Settings.full(**overrides)
        names = [n.strip() for n in only.split(",") if n.strip()] or list(scenarios.SCENARIOS)
        unknown = sorted(set(names) - set(scenarios.SCENARIOS))
        if unknown:
            console.print(f"[red]unknown scenario(s):[/] {', '.join(unknown)}; "
                          f"choose from {', '.join(scenarios.SCENARIOS)}")
            raise typer.Exit(2)
        try:
            dsn = locate().dsn
        except DatabaseUnavailableError as exc:
            console.print(f"[red]no database:[/] {exc}")
            raise typer.Exit(2) from None
        started = time.perf_counter()
        with rich_progress(scenarios.count_steps(names, settings)) as progress:
            results = scenarios.run_all(dsn, settings, names, progress)
        results["machine"]["wall_seconds"] = round(time.perf_counter() - started, 1)
        written = plots.write(results, out)
        (out / "results.md").write_text(report.markdown(results))
        for guide in quote or []:
            report.quote_into(guide, results)
            written.append(guide)
        scenarios.print_summary(results, console)
        console.print(f"wrote {', '.join(str(p) for p in written)}")
        if any(isinstance(v, dict) and "error" in v for v in results.values()):
            raise typer.Exit(1)
