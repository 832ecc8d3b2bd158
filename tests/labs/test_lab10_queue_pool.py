"""Checks for lab 10: QueuePool (overflow, pre-ping, recycle, hooks, leaks) and ReadWriteRouter."""

from __future__ import annotations

import asyncio
import inspect
import random
from pathlib import Path

import asyncpg
import pytest

from pglab.backends import backend_pids, count_backends, terminate_backends
from pglab.testing import eventually, within

MODULE = "lab10_queue_pool"



class FakeConn:
    """A stand-in connection: numbered, can be killed, knows whether it was closed."""

    def __init__(self, number: int) -> None:
        self.number, self.alive, self.closed = number, True, False

    def is_closed(self) -> bool:
        return self.closed

    def __repr__(self) -> str:
        return f"FakeConn({self.number})"


class FakeServer:
    """The fake connector: counts what was opened and closed; can be told to refuse connections."""

    def __init__(self) -> None:
        self.opened: list[FakeConn] = []
        self.refuse = 0  # refuse this many connection attempts

    async def connect(self) -> FakeConn:
        await asyncio.sleep(0)
        if self.refuse:
            self.refuse -= 1
            raise ConnectionRefusedError("fake server refused the connection")
        self.opened.append(FakeConn(len(self.opened) + 1))
        return self.opened[-1]

    async def ping(self, conn: FakeConn) -> None:
        if not conn.alive:
            raise ConnectionResetError("fake connection is dead")

    async def close(self, conn: FakeConn) -> None:
        conn.closed = True

    @property
    def open_count(self) -> int:
        return sum(not c.closed for c in self.opened)


def waiting(pool, n: int):
    """A condition for eventually(): n borrowers are queued."""

    async def condition() -> bool:
        return pool.stats()["wait_queue"] == n

    return condition


@pytest.fixture
def fake():
    return FakeServer()


@pytest.fixture
async def make_pool(lab, fake):
    """`make_pool(**options)`: a QueuePool over the fake connector, closed afterwards."""
    pools = []

    def make(factory=None, **options):
        pool = lab.QueuePool(factory or fake.connect, ping=fake.ping, close=fake.close, **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await within(pool.close(), 5, "QueuePool.close()")


@pytest.fixture
async def pg_pools(lab, dsn, app_name):
    """`pg_pool(app, **options)`: a QueuePool of real asyncpg connections named `app`."""
    pools, apps = [], []

    def make(app=app_name, **options):
        async def factory():
            return await asyncpg.connect(dsn, server_settings={"application_name": app}, timeout=10)

        pool = lab.QueuePool(factory, **options)
        pools.append(pool)
        apps.append(app)
        return pool

    yield make
    for pool in pools:
        await within(pool.close(), 10, "QueuePool.close()")
    for app in apps:  # connections a failed check left checked out
        await terminate_backends(dsn, app)


async def test_pool_grows_to_size_plus_overflow_then_times_out(lab, pg_pools, dsn, app_name):
    pool = pg_pools(pool_size=2, max_overflow=2, pool_timeout=0.3)
    held = [await within(pool.acquire(), 10, f"acquire() #{i + 1}") for i in range(4)]
    try:
        assert await count_backends(dsn, app_name) == 4, (
            "pool_size=2 + max_overflow=2 should open exactly 4 server connections for 4 borrowers"
        )
        stats = pool.stats()
        expected = {"size": 4, "checked_out": 4, "overflow": 2, "checked_in": 0, "wait_queue": 0}
        assert {k: stats.get(k) for k in expected} == expected, f"stats() with 4 borrowers: {stats}"
        assert "Current Overflow: 2" in pool.status(), f"status() should show the overflow: {pool.status()!r}"
        with pytest.raises(lab.PoolTimeoutError) as caught:
            await within(pool.acquire(), 5, "a 5th acquire() with pool_timeout=0.3")
        assert isinstance(caught.value, TimeoutError), "PoolTimeoutError should be a TimeoutError"
        assert await count_backends(dsn, app_name) == 4, "the 5th borrower must wait, not open a 5th connection"
        stats = pool.stats()
        assert stats["wait_queue"] == 0, f"a timed-out waiter must leave the queue: {stats}"
        assert stats["wait_time_max"] >= 0.25, f"wait_time_max should include the 0.3 s wait: {stats}"
        assert set(stats) >= {"wait_time_avg", "connection_errors"}, f"missing keys in stats(): {stats}"
    finally:
        for conn in held:
            await pool.release(conn)


async def test_overflow_connections_are_closed_on_checkin(pg_pools, dsn, app_name):
    pool = pg_pools(pool_size=2, max_overflow=3, pool_timeout=5)
    held = [await within(pool.acquire(), 10, "acquire()") for _ in range(5)]
    for conn in held:
        await within(pool.release(conn), 5, "release()")
    stats = pool.stats()
    expected = {"size": 2, "checked_in": 2, "checked_out": 0, "overflow": 0}
    assert {k: stats.get(k) for k in expected} == expected, (
        f"after check-in only pool_size connections should stay open: {stats}"
    )
    assert sum(conn.is_closed() for conn in held) == 3, "the 3 overflow connections should be closed on check-in"

    async def two_left() -> bool:
        return await count_backends(dsn, app_name) == 2

    await eventually(two_left, 5, "the server should be left with pool_size=2 backends")
    async with pool.connection() as conn:  # and what stayed is reused
        assert conn in held and not conn.is_closed()
    assert await count_backends(dsn, app_name) == 2


async def test_burst_never_exceeds_the_limit_and_shrinks_back(make_pool, fake):
    pool = make_pool(pool_size=3, max_overflow=5, pool_timeout=10)
    peak = 0

    async def borrower() -> None:
        nonlocal peak
        async with pool.connection():
            peak = max(peak, pool.stats()["checked_out"])
            await asyncio.sleep(random.uniform(0, 0.005))

    await within(asyncio.gather(*(borrower() for _ in range(200))), 20, "200 borrowers")
    assert peak == 8, f"200 concurrent borrowers should use exactly pool_size + max_overflow = 8, peak was {peak}"
    assert fake.open_count == 3, f"after the burst pool_size=3 connections should stay open, not {fake.open_count}"
    stats = pool.stats()
    assert (stats["size"], stats["checked_out"], stats["checked_in"]) == (3, 0, 3), f"after the burst: {stats}"


async def test_waiters_are_served_by_checkins_and_cancelled_waiters_leak_nothing(make_pool, fake):
    pool = make_pool(pool_size=1, max_overflow=0, pool_timeout=10)
    held = await within(pool.acquire(), 5, "acquire()")
    waiters = [asyncio.create_task(pool.acquire()) for _ in range(50)]

    await eventually(waiting(pool, 50), 5, "stats()['wait_queue'] should count 50 waiting borrowers")
    for task in waiters[1:]:
        task.cancel()
    await asyncio.gather(*waiters[1:], return_exceptions=True)
    assert pool.stats()["wait_queue"] == 1, f"cancelled waiters must leave the queue: {pool.stats()}"
    await pool.release(held)
    got = await within(waiters[0], 5, "the waiter after a check-in")
    assert got is held, "the released connection should go to the waiting borrower"
    await pool.release(got)
    # A connection that died while borrowed is closed, and its slot goes to the next waiter.
    held = await within(pool.acquire(), 5, "acquire()")
    waiter = asyncio.create_task(pool.acquire())
    await eventually(waiting(pool, 1), 5, "a second borrower should be waiting")
    held.closed = True
    await pool.release(held)
    fresh = await within(waiter, 5, "a waiter after a dead connection was checked in")
    assert fresh is not held and not fresh.closed, "a dead connection must never be handed out again"
    await pool.release(fresh)
    assert (pool.stats()["size"], len(fake.opened)) == (1, 2), f"nothing should leak: {pool.stats()}"


async def test_failed_connect_keeps_its_slot_and_counts_an_error(make_pool, fake):
    pool = make_pool(pool_size=1, max_overflow=1, pool_timeout=5)
    fake.refuse = 2
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            await within(pool.acquire(), 5, "acquire() while the server refuses")
    stats = pool.stats()
    assert stats["connection_errors"] == 2, f"two refused connections should count 2 errors: {stats}"
    assert stats["size"] == 0, f"a failed connect must give its slot back: {stats}"
    a, b = await within(asyncio.gather(pool.acquire(), pool.acquire()), 5, "two acquires")
    assert pool.stats()["size"] == 2, "both slots should still be usable"
    await pool.release(a)
    await pool.release(b)


async def test_pre_ping_replaces_a_killed_backend_without_an_error(pg_pools, dsn, app_name):
    pool = pg_pools(pool_size=2, max_overflow=0, pool_pre_ping=True, pool_timeout=5)
    first = [await within(pool.acquire(), 10, "acquire()") for _ in range(2)]
    for conn in first:
        await pool.release(conn)
    old = set(await backend_pids(dsn, app_name))
    assert await terminate_backends(dsn, app_name) == 2
    pids = set()
    for _ in range(2):
        async with pool.connection() as conn:  # no error may reach the borrower
            pids.add(await within(conn.fetchval("SELECT pg_backend_pid()"), 5, "a query"))
    assert not pids & old, "pre-ping should have replaced the killed connections with new ones"
    assert pool.stats()["connection_errors"] == 2, f"two failed pings should count 2 errors: {pool.stats()}"
    assert await count_backends(dsn, app_name) == 2


async def test_without_pre_ping_the_borrower_sees_the_dead_connection_once(pg_pools, dsn, app_name):
    pool = pg_pools(pool_size=1, max_overflow=0, pool_timeout=5)
    async with pool.connection() as conn:
        await conn.fetchval("SELECT 1")
    await terminate_backends(dsn, app_name)

    async def gone() -> bool:
        return await count_backends(dsn, app_name) == 0

    await eventually(gone, 5, "the killed backend should disappear")
    # Let the client's event loop read the server's goodbye first: a query racing it can fail
    # with asyncpg's InternalClientError instead of a clean "connection closed" (asyncpg #1069).
    await asyncio.sleep(0.2)
    with pytest.raises((asyncpg.InterfaceError, asyncpg.PostgresConnectionError, ConnectionError)):
        async with pool.connection() as conn:
            await within(conn.fetchval("SELECT 1"), 5, "a query on a killed connection")
    async with pool.connection() as conn:  # the dead one was discarded on check-in
        assert await within(conn.fetchval("SELECT 1"), 5, "a query") == 1


async def test_pool_recycle_replaces_old_connections_at_checkout(make_pool, fake):
    pool = make_pool(pool_size=1, max_overflow=0, pool_recycle=0.1)
    async with pool.connection() as first:
        pass
    async with pool.connection() as again:
        assert again is first, "a young connection should be reused"
    await asyncio.sleep(0.2)
    async with pool.connection() as recycled:
        assert recycled is not first, "a connection older than pool_recycle should be replaced at checkout"
    assert first.closed, "the recycled connection should be closed"
    assert pool.stats()["size"] == 1


async def test_hooks_fire_in_order_with_the_connection(make_pool):
    pool = make_pool(pool_size=1, max_overflow=0)
    events = []

    @pool.on_connect
    def connected(conn):
        events.append(("connect", conn))

    @pool.on_checkout
    async def checked_out(conn):  # async hooks are awaited
        await asyncio.sleep(0)
        events.append(("checkout", conn))

    @pool.on_checkout
    def checked_out_again(conn):
        events.append(("checkout-2", conn))

    @pool.on_checkin
    def checked_in(conn):
        events.append(("checkin", conn))

    assert callable(connected) and connected.__name__ == "connected", "the decorators should return the hook"
    for _ in range(2):
        async with pool.connection() as conn:
            events.append(("use", conn))
    names = [name for name, _ in events]
    assert names == ["connect", "checkout", "checkout-2", "use", "checkin", "checkout", "checkout-2", "use", "checkin"], (
        f"hooks fired as {names}: connect once per new connection, then checkout hooks (in the order "
        "registered) before the borrower gets it and checkin after"
    )
    assert all(c is conn for _, c in events), "every hook should receive the connection"


async def test_leaks_report_age_and_the_acquiring_line(make_pool):
    pool = make_pool(pool_size=2, max_overflow=0, leak_threshold=0.1)
    assert pool.leaks() == []
    # Awaited directly (not through within(), which runs it in another task with its own stack).
    line = inspect.currentframe().f_lineno + 1
    leaked = await pool.acquire()
    await asyncio.sleep(0.2)
    async with pool.connection() as fresh:
        leaks = pool.leaks()
        assert [leak.connection for leak in leaks] == [leaked], (
            f"only the connection held longer than leak_threshold should be reported, got {leaks}"
        )
        assert fresh is not leaked
    assert leaks[0].age >= 0.15, f"age should be how long it has been held, got {leaks[0].age}"
    here = Path(__file__).name
    assert here in leaks[0].stack and f"line {line}" in leaks[0].stack, (
        f"the stack should point at the line that acquired it ({here}, line {line}):\n{leaks[0].stack}"
    )
    await pool.release(leaked)
    assert pool.leaks() == [], "a connection checked back in is no longer a leak"


async def test_release_refuses_foreign_connections_and_context_manager_returns_on_error(make_pool):
    pool = make_pool(pool_size=1, max_overflow=0)
    with pytest.raises(ValueError):
        await pool.release(FakeConn(99))
    with pytest.raises(ZeroDivisionError):
        async with pool.connection() as conn:
            1 / 0
    assert pool.stats()["checked_out"] == 0, "leaving `async with` by an exception should check the connection in"
    with pytest.raises(ValueError):
        await pool.release(conn)  # a second check-in of the same connection


async def test_router_sends_writes_to_the_primary_and_reads_round_robin(lab, pg_pools, app_name):
    primary = pg_pools(f"{app_name}-p", pool_size=1, max_overflow=0, pool_timeout=5)
    replicas = [pg_pools(f"{app_name}-r{i}", pool_size=1, max_overflow=0, pool_timeout=5) for i in range(2)]
    router = lab.ReadWriteRouter(primary, replicas)
    query = "SELECT current_setting('application_name')"
    landed = []
    for readonly in (False, True, True, True, True, False):
        async with router.connection(readonly=readonly) as conn:
            landed.append((await within(conn.fetchval(query), 5, "a query")).removeprefix(app_name))
    assert landed == ["-p", "-r0", "-r1", "-r0", "-r1", "-p"], (
        f"writes should land on the primary (-p) and reads alternate over the replicas; got {landed}"
    )
    assert all(pool.stats()["checked_out"] == 0 for pool in (primary, *replicas)), "every connection goes back"


async def test_router_falls_back_to_the_primary_when_a_replica_fails(lab, pg_pools, make_pool, fake, app_name):
    primary = pg_pools(f"{app_name}-p", pool_size=1, max_overflow=0, pool_timeout=5)
    fake.refuse = 10
    broken = make_pool(pool_size=1, max_overflow=0, pool_timeout=1)
    router = lab.ReadWriteRouter(primary, [broken])
    async with router.connection(readonly=True) as conn:
        where = await within(conn.fetchval("SELECT current_setting('application_name')"), 5, "a query")
    assert where == f"{app_name}-p", f"a read should fall back to the primary when the replica fails, got {where}"
    assert broken.stats()["size"] == 0 and primary.stats()["checked_out"] == 0
