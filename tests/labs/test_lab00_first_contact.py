"""Checks for lab 00: first contact with the server.

Every answer must come from the server itself: the checks connect as a role made for
the test (so a hard-coded user name cannot pass), point the code at a database that
does not exist (so a function that never connects cannot pass), and compare types
exactly (so an object that claims to equal anything cannot pass).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from contextlib import contextmanager, suppress
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg
import pytest

from pglab.backends import count_backends, terminate_backends
from pglab.testing import eventually, within

MODULE = "lab00_first_contact"
QUERY_METHODS = ("fetch", "fetchrow", "fetchval", "execute")


def tagged(dsn: str, app_name: str) -> str:
    """The DSN with `application_name` in its query: asyncpg sends unknown URI parameters as settings."""
    return f"{dsn}{'&' if '?' in dsn else '?'}application_name={app_name}"


def with_path(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


@pytest.fixture
async def role_dsn(dsn):
    """A DSN that logs in as a fresh role made for this test, dropped afterwards.

    The role shares the course DSN's password, so every scrubber that hides that one
    also hides it wherever a learner's message might echo the DSN.
    """
    name = f"lab00_{secrets.token_hex(4)}"
    parts = urlsplit(dsn)
    password = unquote(parts.password or "")
    login = f" PASSWORD '{password.replace(chr(39), chr(39) * 2)}'" if password else ""
    credentials = f"{name}:{quote(password, safe='')}" if password else name
    admin = await asyncpg.connect(dsn, timeout=10)
    try:
        await admin.execute(f"CREATE ROLE {name} LOGIN{login}")
        yield urlunsplit(parts._replace(netloc=f"{credentials}@{parts.netloc.rpartition('@')[2]}"))
    finally:
        with suppress(asyncpg.InsufficientPrivilegeError):  # a grading role may not signal it: DROP still works
            await admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")
        await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()


@contextmanager
def failing_queries():
    """Inside this block every query of a real connection runs `SELECT 1/0` on the server instead."""
    with pytest.MonkeyPatch.context() as patch:
        for name in QUERY_METHODS:
            original = getattr(asyncpg.Connection, name)

            async def failing(self, query, *args, _original=original, **kwargs):
                return await _original(self, "SELECT 1/0")

            patch.setattr(asyncpg.Connection, name, failing)
        yield


async def no_backends_left(dsn: str, app_name: str, what: str) -> None:
    async def gone() -> bool:
        return await count_backends(dsn, app_name) == 0

    await eventually(gone, 3, what)


async def test_server_info_reports_the_live_server(lab, role_dsn):
    info = await within(lab.server_info(role_dsn), 10, "server_info()")
    assert isinstance(info, dict), f"server_info() should return a dict, got {type(info).__name__}"
    missing = {"version", "user", "database", "pid"} - set(info)
    assert not missing, f"server_info() is missing the keys {sorted(missing)}"
    wrong_types = {key: type(info[key]).__name__ for key, kind in
                   {"version": str, "user": str, "database": str, "pid": int}.items() if type(info[key]) is not kind}
    assert not wrong_types, f"version, user and database should be str and pid an int, got types {wrong_types}"
    conn = await asyncpg.connect(role_dsn, timeout=10)
    try:
        expected = dict(await conn.fetchrow(
            "SELECT current_setting('server_version') AS version, current_user AS user,"
            " current_database() AS database"))
    finally:
        await conn.close()
    got = {key: info[key] for key in expected}
    assert got == expected, (
        f"server_info() should report what the server says, {expected}, got {got}: ask the server "
        "(current_setting('server_version'), current_user, current_database()), do not hard-code"
    )
    again = await within(lab.server_info(role_dsn), 10, "a second server_info()")
    assert info["pid"] > 0 and info["pid"] != os.getpid() and again["pid"] != info["pid"], (
        f"pid should be the server process of each new connection, from pg_backend_pid(), got {info['pid']} "
        f"then {again['pid']} (this Python process is {os.getpid()})"
    )


async def test_server_info_closes_its_connection_even_when_the_query_fails(lab, dsn, app_name):
    await within(lab.server_info(tagged(dsn, app_name)), 10, "server_info()")
    await no_backends_left(dsn, app_name, "server_info() left its connection open: `await conn.close()`")
    # `failure` keeps the traceback, and with it the function's frame, alive, as a logger
    # would: a connection left open is then not closed behind the learner's back by
    # asyncpg's garbage-collection safety net.
    with failing_queries(), pytest.raises(asyncpg.DivisionByZeroError) as failure:
        await within(lab.server_info(tagged(dsn, app_name)), 10, "server_info() with a failing query")
    try:
        await no_backends_left(dsn, app_name, "when the query fails server_info() leaves its connection open: "
                                              "close it in a `finally:` block")
    finally:
        del failure
        await terminate_backends(dsn, app_name)


async def test_connect_query_close_returns_one_from_the_server(lab, dsn, app_name):
    one = await within(lab.connect_query_close(tagged(dsn, app_name)), 10, "connect_query_close()")
    assert type(one) is int and one == 1, f"connect_query_close() should return the int 1 from SELECT 1, got {one!r}"
    await no_backends_left(dsn, app_name, "connect_query_close() left its connection open: `await conn.close()`")
    try:
        result = await within(lab.connect_query_close(with_path(dsn, "pglab_no_such_database")), 10,
                              "connect_query_close() on a database that does not exist")
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        pytest.fail(f"connect_query_close() returned {result!r} for a database that does not exist: "
                    "it should connect with asyncpg.connect(dsn) and let the error through", pytrace=False)


async def test_connect_query_close_closes_its_connection_when_the_query_fails(lab, dsn, app_name):
    with failing_queries(), pytest.raises(asyncpg.DivisionByZeroError) as failure:  # kept alive: see above
        await within(lab.connect_query_close(tagged(dsn, app_name)), 10, "connect_query_close(), failing")
    try:
        await no_backends_left(dsn, app_name, "when the query fails connect_query_close() leaves its connection "
                                              "open: close it in a `finally:` block")
    finally:
        del failure
        await terminate_backends(dsn, app_name)


async def test_pooled_query_runs_on_a_connection_of_the_pool(lab, dsn):
    pool = await within(asyncpg.create_pool(dsn, min_size=1, max_size=1), 15, "create_pool()")
    try:
        held = await within(pool.acquire(), 5, "pool.acquire()")  # the pool's only connection
        waiting = asyncio.ensure_future(lab.pooled_query(pool))
        await asyncio.sleep(0.2)
        if waiting.done():
            result = waiting.result()  # an exception of pooled_query() is raised here, as it is
            pytest.fail(f"pooled_query() returned {result!r} while the pool's only connection was taken: "
                        "it should borrow from the pool (`async with pool.acquire()`) and ask the server",
                        pytrace=False)
        await pool.release(held)
        one = await within(waiting, 5, "pooled_query() once the connection is free")
        assert type(one) is int and one == 1, f"pooled_query() should return the int 1 from SELECT 1, got {one!r}"
    finally:
        pool.terminate()  # close() would wait forever for a connection never given back


async def test_pooled_query_gives_the_connection_back(lab, dsn):
    pool = await within(asyncpg.create_pool(dsn, min_size=1, max_size=1), 15, "create_pool()")
    try:
        for _ in range(3):  # with max_size=1, a connection not given back would hang the 2nd call
            await within(lab.pooled_query(pool), 5, "pooled_query() (was the previous connection given back?)")
        assert pool.get_idle_size() == 1, "pooled_query() must give the connection back to the pool"
    finally:
        pool.terminate()


async def test_time_operation_measures_each_call_in_sequence(lab):
    sleeps = [0.01, 0.1, 0.01, 0.1, 0.01]
    running = peak = calls = 0

    async def operation() -> None:
        nonlocal running, peak, calls
        running += 1
        peak = max(peak, running)
        seconds = sleeps[calls % len(sleeps)]
        calls += 1
        await asyncio.sleep(seconds)
        running -= 1

    started = time.perf_counter()
    durations = await within(lab.time_operation(operation, 5), 10, "time_operation()")
    elapsed = time.perf_counter() - started
    assert calls == 5, f"operation() should be awaited 5 times, was {calls}"
    assert peak == 1, "time_operation() should await the calls one after another, not concurrently"
    assert isinstance(durations, list) and len(durations) == 5, f"expected a list of 5 durations, got {durations!r}"
    assert all(type(d) is float for d in durations), f"durations should be floats (seconds), got {durations!r}"
    short = [d for d, s in zip(durations, sleeps, strict=True) if d < s * 0.9]
    assert not short, (
        f"calls that sleep {sleeps} s took {durations}: some are shorter than the call itself, "
        "start the clock before `await operation()` and stop it after"
    )
    assert sum(durations) <= elapsed * 1.05, (
        f"the durations add up to {sum(durations):.3f} s, more than the {elapsed:.3f} s the whole run took: "
        "measure each call on its own, in seconds (restart the clock for every call)"
    )
