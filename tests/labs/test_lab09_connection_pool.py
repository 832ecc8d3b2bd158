"""Checks for lab 09: a ConnectionPool written from scratch.

Most checks run twice: over real asyncpg connections and over a fake connector (the
pool is generic, and the fake makes failures and counting exact).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
import pytest

from pglab.backends import backend_pids, count_backends, terminate_backends
from pglab.testing import eventually, within

MODULE = "lab09_connection_pool"



class FakeConnection:
    def __init__(self, connector: FakeConnector) -> None:
        self.connector, self.closed = connector, False

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.connector.open -= 1


class FakeConnector:
    """Opens FakeConnections; counts the open ones and their peak; refuses on demand."""

    kind = "fake"

    def __init__(self) -> None:
        self.open = self.peak = self.made = self.failures = 0
        self.delay = 0.0

    async def __call__(self) -> FakeConnection:
        await asyncio.sleep(self.delay)
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError("fake connector: connection refused")
        self.made += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        return FakeConnection(self)

    async def open_count(self) -> int:
        return self.open


class PgConnector(FakeConnector):
    """Opens real asyncpg connections, found on the server by application_name."""

    kind = "asyncpg"

    def __init__(self, dsn: str, app_name: str) -> None:
        super().__init__()
        self.dsn, self.app_name = dsn, app_name

    async def __call__(self) -> asyncpg.Connection:
        await asyncio.sleep(self.delay)
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError("flaky connector: connection refused")
        self.made += 1
        return await asyncpg.connect(self.dsn, server_settings={"application_name": self.app_name})

    async def open_count(self) -> int:
        return await count_backends(self.dsn, self.app_name)


@pytest.fixture(params=["fake", "asyncpg"])
async def connector(request, dsn, app_name):
    if request.param == "fake":
        yield FakeConnector()
    else:
        yield PgConnector(dsn, app_name)
        await terminate_backends(dsn, app_name)


@pytest.fixture
async def make_pool(lab, connector):
    """`make_pool(**config)`: a started pool over the connector, closed after the test."""
    pools = []

    async def make(*, start: bool = True, **config):
        pool = lab.ConnectionPool(connector, lab.PoolConfig(**config))
        pools.append(pool)
        if start:
            await within(pool.start(), 15, "pool.start()")
        return pool

    yield make
    for pool in pools:
        with contextlib.suppress(Exception):
            await within(pool.close(), 10, "pool.close()")


async def query(conn) -> None:
    """One round trip on a real connection; a scheduling point on a fake one."""
    if isinstance(conn, FakeConnection):
        await asyncio.sleep(0)
    else:
        await conn.fetchval("SELECT 1")


async def test_start_warms_min_size_and_connection_gives_back(make_pool, connector):
    pool = await make_pool(min_size=2, max_size=4)
    assert await connector.open_count() == 2, "start() should open min_size=2 connections"
    assert pool.stats()["total"] == 2 and pool.stats()["available"] == 2, f"after start(): {pool.stats()}"
    async with pool.connection() as conn:
        await query(conn)
        assert pool.stats()["in_use"] == 1, f"inside `async with pool.connection()`: {pool.stats()}"
    stats = pool.stats()
    assert (stats["in_use"], stats["available"], stats["created"]) == (0, 2, 2), (
        f"leaving `async with` should give the connection back for reuse: {stats}"
    )
    with pytest.raises(RuntimeError):
        async with pool.connection():
            raise RuntimeError("boom")
    assert pool.stats()["in_use"] == 0, "an exception inside `async with` must still give the connection back"


async def test_pooled_connection_bookkeeping(lab, make_pool):
    item = lab.PooledConnection(object())
    other = lab.PooledConnection(item.connection)
    assert len({item, other}) == 2, "PooledConnection must be hashable, each wrapper distinct"
    assert not item.is_expired(10.0) and item.is_expired(-1.0), "is_expired(max_lifetime) compares age with it"
    item.last_used_at -= 5
    assert 4.9 < item.idle_time() < 6, f"idle_time() should be seconds since last use, got {item.idle_time()}"

    pool = await make_pool(min_size=1, max_size=1)
    for _ in range(3):
        async with pool.connection() as conn:
            pass
    assert pool.stats()["created"] == 1, "three borrowings in a row should reuse one connection"
    with pytest.raises(ValueError):
        await pool.release(conn)


async def test_max_size_is_never_exceeded_under_500_borrowers(make_pool, connector):
    pool = await make_pool(min_size=0, max_size=5, acquire_timeout=60)
    borrowed = peak = 0

    async def borrower() -> None:
        nonlocal borrowed, peak
        async with pool.connection() as conn:
            borrowed += 1
            peak = max(peak, borrowed)
            await query(conn)
            borrowed -= 1

    await within(asyncio.gather(*(borrower() for _ in range(500))), 60, "500 borrowers")
    assert peak <= 5, f"{peak} connections were lent at once with max_size=5"
    assert connector.peak <= 5, f"{connector.peak} connections were open at once with max_size=5"
    assert pool.stats()["total"] <= 5 and await connector.open_count() <= 5, f"after the run: {pool.stats()}"
    assert pool.stats()["created"] == 5, (
        f"the pool should have opened exactly 5 connections and reused them, created {pool.stats()['created']}"
    )


async def test_1000_cancelled_waiters_leak_nothing(make_pool, connector):
    pool = await make_pool(min_size=0, max_size=3, acquire_timeout=60)
    held = [await within(pool.acquire(), 10, "acquire()") for _ in range(3)]
    tasks = [asyncio.create_task(pool.acquire()) for _ in range(1000)]

    async def all_waiting() -> bool:
        return pool.stats()["waiting"] == 1000

    await eventually(all_waiting, 10, f"stats()['waiting'] should reach 1000 ({pool.stats()})")
    # Handed to the first three waiters, which are cancelled before they run. (No
    # `within()` here: it would yield to the loop and let those waiters finish first.)
    for conn in held:
        await pool.release(conn)
    for task in tasks:
        task.cancel()
    results = await within(asyncio.gather(*tasks, return_exceptions=True), 10, "cancelled acquires")
    for result in results:  # a task that won the race got a connection: give it back
        if not isinstance(result, BaseException):
            await pool.release(result)
    stats = pool.stats()
    assert stats["in_use"] == 0 and stats["waiting"] == 0, f"cancelled waiters leaked: {stats}"
    assert stats["total"] <= 3 and stats["available"] == stats["total"], (
        f"connections lost: a waiter cancelled just as it was handed a connection must pass it on ({stats})"
    )
    again = [await within(pool.acquire(timeout=5), 10, "acquire() after the cancellations") for _ in range(3)]
    for conn in again:
        await pool.release(conn)


async def test_a_failing_factory_does_not_lose_a_slot(make_pool, connector):
    pool = await make_pool(min_size=0, max_size=2, acquire_timeout=5)
    connector.failures = 5
    for _ in range(5):
        with pytest.raises(ConnectionRefusedError):
            await within(pool.acquire(), 10, "acquire() with a failing factory")
    assert pool.stats()["total"] == 0, f"failed connects must give their slot back: {pool.stats()}"
    conns = [await within(pool.acquire(), 10, "acquire() once the factory works") for _ in range(2)]
    await pool.release(conns.pop())
    await pool.release(conns.pop())
    assert pool.stats()["total"] == 2, f"both slots should be usable after the failures: {pool.stats()}"


async def test_a_failed_connect_hands_its_slot_to_a_waiter(make_pool, connector):
    pool = await make_pool(min_size=0, max_size=2, acquire_timeout=5)
    held = await within(pool.acquire(), 10, "acquire()")
    connector.failures, connector.delay = 1, 0.1
    failing = asyncio.create_task(pool.acquire())  # takes the last slot, then fails
    await asyncio.sleep(0.02)
    waiter = asyncio.create_task(pool.acquire())  # queues: every slot is taken
    with pytest.raises(ConnectionRefusedError):
        await within(failing, 10, "the acquire() whose connect fails")
    conn = await within(waiter, 10, "a waiter when another acquire's connect fails (was the slot passed on?)")
    await pool.release(conn)
    await pool.release(held)
    assert pool.stats()["total"] == 2 and pool.stats()["in_use"] == 0, f"{pool.stats()}"


async def test_release_of_a_foreign_or_returned_connection_raises_value_error(make_pool, connector):
    pool = await make_pool(min_size=1, max_size=2)
    foreign = await connector()
    try:
        with pytest.raises(ValueError):
            await pool.release(foreign)
    finally:
        await foreign.close()
    conn = await within(pool.acquire(), 10, "acquire()")
    await pool.release(conn)
    with pytest.raises(ValueError):
        await pool.release(conn)
    assert pool.stats()["available"] == 1, f"a double release must not add the connection twice: {pool.stats()}"


async def test_waiters_are_served_first_come_first_served(make_pool):
    pool = await make_pool(min_size=1, max_size=1, acquire_timeout=30)
    held = await within(pool.acquire(), 10, "acquire()")
    order: list[int] = []

    async def borrower(i: int) -> None:
        conn = await pool.acquire()
        order.append(i)
        await asyncio.sleep(0)
        await pool.release(conn)

    tasks = []
    for i in range(20):
        tasks.append(asyncio.create_task(borrower(i)))
        await asyncio.sleep(0)  # borrower i queues before borrower i + 1
    await pool.release(held)
    await within(asyncio.gather(*tasks), 15, "20 queued borrowers")
    assert order == list(range(20)), f"waiters should be served in arrival order, got {order}"


async def test_acquire_timeout_raises_pool_timeout_error(lab, make_pool):
    pool = await make_pool(min_size=1, max_size=1, acquire_timeout=0.2)
    assert issubclass(lab.PoolTimeoutError, TimeoutError), "PoolTimeoutError should subclass TimeoutError"
    held = await within(pool.acquire(), 10, "acquire()")
    start = time.monotonic()
    with pytest.raises(lab.PoolTimeoutError):
        await within(pool.acquire(), 10, "acquire() on an exhausted pool (acquire_timeout=0.2)")
    assert time.monotonic() - start >= 0.15, "acquire() gave up before acquire_timeout"
    with pytest.raises(TimeoutError):
        await within(pool.acquire(timeout=0.05), 10, "acquire(timeout=0.05)")
    assert pool.stats()["waiting"] == 0, f"a timed-out waiter must leave the queue: {pool.stats()}"
    await pool.release(held)
    await pool.release(await within(pool.acquire(), 10, "acquire() after the timeouts"))


async def test_idle_connections_above_min_size_are_closed(make_pool, connector):
    pool = await make_pool(min_size=2, max_size=5, max_idle_time=0.2, cleanup_interval=0.05)
    conns = [await within(pool.acquire(), 10, "acquire()") for _ in range(5)]
    for conn in conns:
        await pool.release(conn)

    async def trimmed() -> bool:
        return pool.stats()["total"] == 2 and await connector.open_count() == 2

    await eventually(trimmed, 10, f"idle connections above min_size=2 should be closed ({pool.stats()})")
    await asyncio.sleep(0.3)
    assert pool.stats()["total"] == 2, f"the clean-up must keep min_size=2 connections: {pool.stats()}"


async def test_expired_connections_are_replaced_and_min_size_holds(make_pool, connector, dsn):
    pool = await make_pool(min_size=2, max_size=4, max_lifetime=0.3, cleanup_interval=0.05)
    first = await backend_pids(dsn, connector.app_name) if connector.kind == "asyncpg" else []

    async def replaced() -> bool:
        return pool.stats()["created"] >= 4 and pool.stats()["closed"] >= 2

    await eventually(replaced, 10, f"connections older than max_lifetime should be replaced ({pool.stats()})")
    assert pool.stats()["total"] >= 2, f"min_size=2 must hold while replacing: {pool.stats()}"
    conn = await within(pool.acquire(), 10, "acquire()")
    await query(conn)
    await pool.release(conn)
    if first:
        async def originals_gone() -> bool:
            return not set(first) & set(await backend_pids(dsn, connector.app_name))

        await eventually(originals_gone, 5, "the original backends should be closed after max_lifetime")


async def test_expired_or_unhealthy_connections_are_not_reused(lab, connector):
    bad: set[int] = set()

    async def health_check(conn) -> bool:
        if id(conn) in bad:
            raise ConnectionResetError("fake: broken")
        return True

    pool = lab.ConnectionPool(connector, lab.PoolConfig(min_size=0, max_size=2, max_lifetime=0.2,
                                                        cleanup_interval=60), health_check=health_check)
    try:
        conn = await within(pool.acquire(), 10, "acquire()")
        bad.add(id(conn))
        await pool.release(conn)
        assert pool.stats()["closed"] == 1 and pool.stats()["total"] == 0, (
            f"a connection failing the health check must be closed on release: {pool.stats()}"
        )
        conn = await within(pool.acquire(), 10, "acquire()")
        await pool.release(conn)
        await asyncio.sleep(0.3)  # older than max_lifetime, the clean-up has not run
        fresh = await within(pool.acquire(), 10, "acquire() of an expired idle connection")
        assert fresh is not conn and pool.stats()["created"] == 3, "an expired idle connection must be replaced"
        await pool.release(fresh)
    finally:
        await within(pool.close(), 10, "close()")


async def test_close_wakes_waiters_and_refuses_new_acquires(lab, make_pool, connector):
    pool = await make_pool(min_size=2, max_size=2, acquire_timeout=30)
    held = await within(pool.acquire(), 10, "acquire()")
    other = await within(pool.acquire(), 10, "acquire()")
    waiters = [asyncio.create_task(pool.acquire()) for _ in range(3)]
    await asyncio.sleep(0.01)
    await within(pool.close(), 10, "close()")
    for task in waiters:
        with pytest.raises(lab.PoolClosedError):
            await within(task, 5, "a waiter when the pool closes")
    with pytest.raises(lab.PoolClosedError):
        await pool.acquire()
    await pool.release(held)
    await pool.release(other)

    async def all_closed() -> bool:
        return await connector.open_count() == 0

    await eventually(all_closed, 5, "connections given back after close() should be closed")
    assert pool.stats()["total"] == 0, f"after close() and release: {pool.stats()}"
    await within(pool.close(), 10, "a second close()")


async def test_manager_keeps_one_pool_per_source(lab):
    connectors = {"orders": FakeConnector(), "users": FakeConnector()}
    manager = lab.ConnectionPoolManager(lab.PoolConfig(min_size=1, max_size=3))
    try:
        pools = await within(asyncio.gather(*(manager.get_pool(source, connectors[source])
                                               for source in ["orders", "users", "orders", "orders"])),
                             10, "get_pool()")
        assert pools[0] is pools[2] is pools[3], "the same source id should give the same pool"
        assert pools[0] is not pools[1], "different sources need different pools"
        assert connectors["orders"].made == 1, "concurrent get_pool() calls for one source must start one pool"
        stats = manager.get_stats()
        assert set(stats) == {"orders", "users"} and stats["users"]["total"] == 1, f"get_stats(): {stats}"
    finally:
        await within(manager.close_all(), 10, "close_all()")
    assert all(c.open == 0 for c in connectors.values()), "close_all() should close every pool's connections"
    assert manager.get_stats() == {}, "close_all() should forget the pools"
