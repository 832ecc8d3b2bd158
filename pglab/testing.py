"""Helpers for the graded checks: bounded awaits with messages a learner can act on.

A hang is a reported failure, never a stuck run, and the report names the await
in the learner's code that was still pending (file, line and source line).
"""

from __future__ import annotations

import asyncio
import linecache
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import pytest

from .paths import course_root

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    """Await with a deadline; on expiry fail the check saying what hung and where."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except BaseException:  # the caller was cancelled: so is what it awaited
        task.cancel()
        raise
    if not done:  # the awaitable's own TimeoutError, if any, passes through below
        where = pending_awaits(task)
        task.cancel()
        pytest.fail(f"{what} did not finish within {seconds:g} s (does something wait forever?)"
                    + describe_pending(where), pytrace=False)
    return task.result()


async def eventually(condition: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Poll `condition` until it holds or `seconds` pass; fail with `what` otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await condition():
        if loop.time() > deadline:
            pytest.fail(f"{what} (still not true after {seconds:g} s)", pytrace=False)
        await asyncio.sleep(0.05)


def record_sleeps(module_name: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    """(loop time, delay) of each `asyncio.sleep` that code of `module_name` awaits; the sleeps
    still happen. A sleep never awaited is not recorded, nor is `sleep(0)`, which only yields."""
    real_sleep, sleeps = asyncio.sleep, []

    def recorded_sleep(delay: float, result: Any = None) -> Awaitable[Any]:
        if delay <= 0 or sys._getframe(1).f_globals.get("__name__") != module_name:
            return real_sleep(delay, result)

        async def recorded() -> Any:
            sleeps.append((asyncio.get_running_loop().time(), delay))
            return await real_sleep(delay, result)

        return recorded()

    monkeypatch.setattr(asyncio, "sleep", recorded_sleep)
    return sleeps


def full_delay(base_delay: float, n: int, time_left: float) -> float:
    """The n-th pause of a doubling backoff before its jitter: min(base_delay * 2**n, 1 s, time left)."""
    return min(base_delay * 2**n, 1.0, time_left)


def check_backoff(sleeps: list[tuple[float, float]], start: float, first: float, deadline: float,
                  base_delay: float) -> None:
    """Fail unless the n-th sleep lies between d/2 and d, d = `full_delay(base_delay, n, time left)`.

    The deadline began between `start` (before the call) and `first` (its first attempt).
    """
    for n, (at, delay) in enumerate(sleeps, 1):
        low = full_delay(base_delay, n, start + deadline - at) / 2
        high = full_delay(base_delay, n, first + deadline - at)
        assert low - 1e-3 <= delay <= high + 1e-3, (
            f"after failed attempt {n} it slept {delay:.3f} s; expected between d/2 and d with "
            f"d = min(base_delay * 2**{n}, 1 s, time left) = {high:.3f} s (base_delay={base_delay:g}). "
            f"All sleeps: {[round(d, 3) for _, d in sleeps]}"
        )


def check_jittered(sleeps: list[tuple[float, float]], start: float, deadline: float, base_delay: float,
                   lockstep: str) -> None:
    """Fail when every sleep is its full delay d of `check_backoff`, with `random.uniform` drawing
    its lowest value: the jitter was left out. `lockstep` says who would then retry together."""
    full = [full_delay(base_delay, n, start + deadline - at) for n, (at, _) in enumerate(sleeps, 1)]
    assert any(delay < 0.9 * d for d, (_, delay) in zip(full, sleeps, strict=True)), (
        f"the sleeps {[round(d, 3) for _, d in sleeps]} are each the full delay: jitter them "
        f"(between d/2 and d), or {lockstep} retry in lockstep")


async def hold_pgbouncer_server_connection(bouncer: str) -> Any:
    """A client keeping a one-server-connection PgBouncer's connection in an open transaction.

    Another run may hold it for a moment: PgBouncer then bounces our BEGIN at
    query_wait_timeout, and we try again, for up to 30 s."""
    import asyncpg

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        conn = await within(asyncpg.connect(bouncer, statement_cache_size=0), 10, "connect through PgBouncer")
        try:
            await within(conn.execute("BEGIN; SELECT 1"), 10, "BEGIN through PgBouncer")
            return conn
        except asyncpg.ConnectionDoesNotExistError:
            conn.terminate()
            if loop.time() > deadline:
                raise


def learner_folder() -> Path:
    """The folder of the lab modules under test (`labs/`, `solutions/` or a submission's)."""
    from .targets import TargetError, target_dir

    try:
        return target_dir(os.environ.get("PGLAB_TARGET"))
    except TargetError:
        return course_root() / "labs"


def pending_awaits(first: asyncio.Task[Any] | None = None) -> list[str]:
    """Where coroutines of the learner's files are suspended now, deepest first per task.

    Follows each task's chain of awaits (`cr_await`) down to the innermost frame in
    the learner's folder; `first`'s chain is looked at before the other tasks'.
    """
    folder = learner_folder()
    tasks = [first] if first is not None else []
    tasks += [t for t in asyncio.all_tasks() if t is not first and not t.done()]
    found: list[str] = []
    for task in tasks:
        mine = [f for f in _suspended_frames(task.get_coro()) if is_under(f.f_code.co_filename, folder)]
        if mine and (line := _describe(mine[-1])) not in found:
            found.append(line)
    return found


def describe_pending(where: list[str]) -> str:
    """The lines `pending_awaits` found, as a message tail (empty when there are none)."""
    if not where:
        return ""
    return "\n  still waiting in your code at:\n" + "\n".join(f"    {line}" for line in where[:3])


def _suspended_frames(awaitable: object) -> list[FrameType]:
    """Frames of a suspended coroutine and of everything it awaits, outermost first."""
    frames = []
    while awaitable is not None:
        frame = next((getattr(awaitable, a) for a in ("cr_frame", "gi_frame", "ag_frame")
                      if getattr(awaitable, a, None) is not None), None)
        if frame is None:
            break  # a Future or a C-level awaitable: nothing further to follow
        frames.append(frame)
        awaitable = next((getattr(awaitable, a) for a in ("cr_await", "gi_yieldfrom", "ag_await")
                          if getattr(awaitable, a, None) is not None), None)
    return frames


def is_under(filename: str, folder: Path) -> bool:
    """True when `filename` is inside `folder` (both resolved)."""
    try:
        return Path(filename).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def _describe(frame: FrameType) -> str:
    filename, line = frame.f_code.co_filename, frame.f_lineno
    return f"{display_path(filename)}:{line} in {frame.f_code.co_name}: {linecache.getline(filename, line).strip()}"


def display_path(filename: str) -> str:
    """`filename` relative to the course root (e.g. labs/lab01_database_pool.py) when it is inside."""
    path = Path(filename).resolve()
    for base in (course_root(), learner_folder().parent):
        if path.is_relative_to(base.resolve()):
            return str(path.relative_to(base.resolve()))
    return str(path)
