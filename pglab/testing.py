"""Helpers for the graded checks: bounded awaits with messages a learner can act on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    """Await with a deadline; on expiry fail the check saying what hung.

    A hang is a reported failure, never a stuck run.
    """
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:  # the awaitable's own TimeoutError, if any, passes through below
        task.cancel()
        pytest.fail(f"{what} did not finish within {seconds:g} s (does something wait forever?)", pytrace=False)
    return task.result()


async def eventually(condition: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Poll `condition` until it holds or `seconds` pass; fail with `what` otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await condition():
        if loop.time() > deadline:
            pytest.fail(f"{what} (still not true after {seconds:g} s)", pytrace=False)
        await asyncio.sleep(0.05)
