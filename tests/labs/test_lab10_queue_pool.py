"""Checks for lab 10: `QueuePool`, in the order of the tutorial's checkpoints.

1. checkout and check-in; 2. overflow, timeouts, waiters; 3. a failed or cancelled
connect; 4. the rollback at check-in; 5. hooks; 6. dead connections, pre-ping and
recycle; 7. leaks; 8. close. They follow SQLAlchemy's QueuePoolTest, PoolEventsTest,
ResetOnReturnTest and PrePingMockTest, asyncpg's test_pool.py and psycopg_pool's
tests (docs/BEHAVIOURS.md), in our own words: pooling behaviour against the real
server, and the rest against a fake connector with asyncpg's shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import time
from pathlib import Path

import asyncpg
import pytest

from pglab.backends import backend_pids, count_backends, terminate_backends
from pglab.testing import eventually, within

MODULE = "lab10_queue_pool"
DEAD = (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, asyncpg.InternalClientError, OSError)


class FakeConn:
    """A connection with asyncpg's shape: `closed` is what the driver knows, `alive` what the server knows."""

    def __init__(self, number: int) -> None:
        self.number, self.alive, self.closed, self.in_transaction = number, True, False, False
        self.executed: list[str] = []  # every statement sent, even to a closed connection
        self.stall: asyncio.Event | None = None  # set by a check: execute() waits for it
        self.error: Exception | None = None  # set by a check: execute() raises it

    def is_closed(self) -> bool:
        return self.closed

    def is_in_transaction(self) -> bool:
        return self.in_transaction

    async def execute(self, query: str) -> str:
        self.executed.append(query)
        await asyncio.sleep(0)
        if self.stall is not None:
            await self.stall.wait()
        if self.closed:
            raise ConnectionError("fake connection is closed")
        if not self.alive:  # half-open: only a round trip finds out
            raise ConnectionResetError("fake server: connection reset by peer")
        if self.error is not None:
            raise self.error
        if query.strip().upper() == "ROLLBACK":
            self.in_transaction = False
        return query

    async def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"FakeConn({self.number})"


class FakeServer:
    """The fake connector: counts what was opened; can refuse or hold up connection attempts."""

    def __init__(self) -> None:
        self.opened: list[FakeConn] = []
        self.refuse = 0  # refuse this many connection attempts
        self.gate: asyncio.Event | None = None  # while set to an unset Event, connects wait for it
        self.connecting = 0  # attempts in progress

    async def connect(self) -> FakeConn:
        self.connecting += 1
        try:
            await asyncio.sleep(0)
            if self.gate is not None:
                await self.gate.wait()
            if self.refuse:
                self.refuse -= 1
                raise ConnectionRefusedError("fake server refused the connection")
            self.opened.append(FakeConn(len(self.opened) + 1))
            return self.opened[-1]
        finally:
            self.connecting -= 1

    @property
    def open_count(self) -> int:
        return sum(not c.closed for c in self.opened)


def until(predicate):
    """A condition for eventually() from a plain predicate."""

    async def condition() -> bool:
        return predicate()

    return condition


def waiting(pool, n: int):
    """A condition for eventually(): n borrowers are queued."""
    return until(lambda: pool.stats()["wait_queue"] == n)


def summary(leaks) -> list:
    """Leaks as (connection, age) pairs: a message without the stacks."""
    return [(leak.connection, round(leak.age, 2)) for leak in leaks]


def counts(pool) -> dict:
    stats = pool.stats()
    return {k: stats.get(k) for k in ("size", "checked_out", "checked_in", "overflow", "wait_queue")}


@pytest.fixture
def fake():
    return FakeServer()


@pytest.fixture
async def make_pool(lab, fake):
    """`make_pool(**options)`: a QueuePool over the fake connector, closed afterwards."""
    pools = []

    def make(**options):
        pool = lab.QueuePool(options.pop("factory", fake.connect), **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await within(pool.close(), 5, "QueuePool.close()")


@pytest.fixture
async def pg_pools(lab, dsn, app_name):
    """`pg_pool(**options)`: a QueuePool of real asyncpg connections; this factory tags them with `app_name`."""
    pools = []

    async def factory():
        return await asyncpg.connect(dsn, server_settings={"application_name": app_name}, timeout=10)

    def make(**options):
        pool = lab.QueuePool(factory, **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await within(pool.close(), 10, "QueuePool.close()")
    await terminate_backends(dsn, app_name)  # connections a failed check left checked out


# Checkpoint 1: acquire() and release()


async def test_a_released_connection_is_reused_and_strangers_are_refused(make_pool, fake):
    pool = make_pool(pool_size=2, max_overflow=0, pool_timeout=1)
    conn = await within(pool.acquire(), 5, "acquire() on an empty pool")
    assert isinstance(conn, FakeConn), f"acquire() should return what the factory made, got {conn!r}"
    assert counts(pool) == {"size": 1, "checked_out": 1, "checked_in": 0, "overflow": 0, "wait_queue": 0}, (
        f"stats() with one connection checked out: {pool.stats()}"
    )
    await within(pool.release(conn), 5, "release()")
    assert counts(pool)["checked_in"] == 1, f"a released connection should wait idle in the pool: {pool.stats()}"
    again = await within(pool.acquire(), 5, "acquire() with an idle connection")
    assert again is conn and len(fake.opened) == 1, (
        "the second acquire() should reuse the idle connection, not open a new one "
        f"(opened {len(fake.opened)}; is pool_recycle=-1 read as 'recycle always'?)"
    )
    await pool.release(again)
    for conn, what in ((again, "a connection released twice"), (FakeConn(99), "a connection it never handed out")):
        try:
            await within(pool.release(conn), 5, f"release() of {what}")
            pytest.fail(f"release() of {what} should raise ValueError (look the connection up in _out, and "
                        "pop it, so that a second release is refused)", pytrace=False)
        except ValueError:
            pass
    with pytest.raises(KeyError):
        async with pool.connection() as conn:
            raise KeyError("the borrower's error")
    assert counts(pool)["checked_out"] == 0, "leaving `async with` by an exception should check the connection in"
    assert not conn.closed, "a healthy connection should not be closed at check-in"


# Checkpoint 2: the limit (pool_size + max_overflow), timeouts and waiters


async def test_pool_grows_to_size_plus_overflow_then_times_out(lab, pg_pools, dsn, app_name):
    pool = pg_pools(pool_size=2, max_overflow=2, pool_timeout=0.3)
    held = []
    try:
        for i in range(4):
            held.append(await within(pool.acquire(), 10, f"acquire() #{i + 1}"))
    except lab.PoolTimeoutError:
        pytest.fail(f"borrower #{len(held) + 1} timed out, but pool_size=2 + max_overflow=2 allows 4 at once: "
                    "a borrower may open a connection while size < pool_size + max_overflow", pytrace=False)
    try:
        assert await count_backends(dsn, app_name) == 4, (
            "pool_size=2 + max_overflow=2 should open exactly 4 server connections for 4 borrowers"
        )
        assert counts(pool) == {"size": 4, "checked_out": 4, "checked_in": 0, "overflow": 2, "wait_queue": 0}, (
            f"stats() with 4 borrowers: {pool.stats()}"
        )
        try:
            held.append(await within(pool.acquire(), 5, "a 5th acquire() with pool_timeout=0.3"))
            backends = await count_backends(dsn, app_name)
            pytest.fail(f"a 5th borrower got a connection, but pool_size=2 + max_overflow=2 allows 4 (server "
                        f"backends: {backends}): it should wait, then time out", pytrace=False)
        except lab.PoolTimeoutError as exc:
            assert isinstance(exc, TimeoutError), "PoolTimeoutError should be a TimeoutError"
        assert await count_backends(dsn, app_name) == 4, "the 5th borrower must wait, not open a 5th connection"
        assert pool.stats()["wait_queue"] == 0, f"a timed-out waiter must leave the queue: {pool.stats()}"
    finally:
        for conn in held:
            await pool.release(conn)


async def test_overflow_connections_are_closed_on_checkin(pg_pools, dsn, app_name):
    pool = pg_pools(pool_size=2, max_overflow=3, pool_timeout=5)
    held = [await within(pool.acquire(), 10, "acquire()") for _ in range(5)]
    for conn in held:
        await within(pool.release(conn), 5, "release()")
    assert counts(pool) == {"size": 2, "checked_out": 0, "checked_in": 2, "overflow": 0, "wait_queue": 0}, (
        f"after check-in only pool_size=2 connections should stay open: {pool.stats()}"
    )
    assert sum(conn.is_closed() for conn in held) == 3, "the 3 overflow connections should be closed on check-in"

    async def two_left() -> bool:
        return await count_backends(dsn, app_name) == 2

    await eventually(two_left, 5, "the server should be left with pool_size=2 backends")
    async with pool.connection() as conn:  # and what stayed is reused
        assert conn in held and not conn.is_closed()
    assert await count_backends(dsn, app_name) == 2


async def test_max_overflow_minus_one_means_no_limit_and_acquire_takes_a_timeout(lab, make_pool, fake):
    with pytest.raises(ValueError, match="-1"):
        lab.QueuePool(fake.connect, pool_size=1, max_overflow=-2)
    unlimited = make_pool(pool_size=1, max_overflow=-1, pool_timeout=0.2)
    try:
        held = [await within(unlimited.acquire(), 5, "acquire() with max_overflow=-1") for _ in range(30)]
    except lab.PoolTimeoutError:
        pytest.fail("max_overflow=-1 means no limit (as in SQLAlchemy): 30 borrowers should never wait",
                    pytrace=False)
    assert counts(unlimited)["overflow"] == 29, f"30 borrowers over pool_size=1: {unlimited.stats()}"
    for conn in held:
        await unlimited.release(conn)
    assert fake.open_count == 1, f"after check-in only pool_size=1 should stay open, not {fake.open_count}"

    pool = make_pool(pool_size=1, max_overflow=0, pool_timeout=60)
    async with pool.connection():
        with pytest.raises(lab.PoolTimeoutError):
            await within(pool.acquire(timeout=0.2), 5, "acquire(timeout=0.2) on a full pool (pool_timeout=60)")
    async with pool.connection(timeout=0.2) as conn:  # a free connection is handed out at once
        assert conn is fake.opened[-1]


async def test_burst_never_exceeds_the_limit_and_shrinks_back(make_pool, fake):
    pool = make_pool(pool_size=3, max_overflow=5, pool_timeout=10)
    peak = 0

    async def borrower() -> None:
        nonlocal peak
        async with pool.connection():
            peak = max(peak, pool.stats()["checked_out"], fake.open_count)
            await asyncio.sleep(random.uniform(0, 0.005))

    await within(asyncio.gather(*(borrower() for _ in range(200))), 20, "200 borrowers")
    assert peak == 8, (
        f"200 concurrent borrowers should use exactly pool_size + max_overflow = 8 connections, peak was {peak} "
        "(reserve the slot, `_size += 1`, before awaiting the factory)"
    )
    assert fake.open_count == 3, f"after the burst pool_size=3 connections should stay open, not {fake.open_count}"
    assert counts(pool) == {"size": 3, "checked_out": 0, "checked_in": 3, "overflow": 0, "wait_queue": 0}, (
        f"after the burst: {pool.stats()}"
    )


async def test_waiters_are_served_by_checkins_and_cancelled_waiters_leak_nothing(make_pool, fake):
    pool = make_pool(pool_size=1, max_overflow=0, pool_timeout=10)
    held = await within(pool.acquire(), 5, "acquire()")
    waiters = [asyncio.create_task(pool.acquire()) for _ in range(50)]
    await eventually(waiting(pool, 50), 5, "stats()['wait_queue'] should count 50 waiting borrowers")
    for task in waiters[1:]:
        task.cancel()
    await asyncio.wait(waiters[1:])
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
    await within(pool.release(held), 5, "release() of a connection that died while borrowed")
    fresh = await within(waiter, 5, "a waiter after a dead connection was checked in")
    assert fresh is not held and not fresh.closed, "a dead connection must never be handed out again"
    await pool.release(fresh)
    assert (pool.stats()["size"], len(fake.opened)) == (1, 2), f"nothing should leak: {pool.stats()}"


async def test_a_waiter_cancelled_as_it_is_served_is_cancelled_and_passes_the_connection_on(make_pool):
    # The check-in hands the connection over, and the waiter is cancelled before it has run: it must
    # raise CancelledError (its caller asked to stop) and pass the connection on. On Python 3.11
    # asyncio.wait_for returns the connection instead and drops the cancellation
    # (https://github.com/python/cpython/issues/86296).
    pool = make_pool(pool_size=1, max_overflow=0, pool_timeout=10)
    held = await within(pool.acquire(), 5, "acquire()")
    waiter = asyncio.create_task(pool.acquire())
    await eventually(waiting(pool, 1), 5, "a second borrower should be waiting")
    await pool.release(held)  # awaited directly (within() would let the waiter run first)
    if not waiter.done():  # served, and not yet run: cancel it in that same step
        waiter.cancel()
        await asyncio.wait([waiter], timeout=5)
        if not waiter.cancelled():
            if waiter.done() and waiter.exception() is None:
                await pool.release(waiter.result())
            pytest.fail("a waiter cancelled in the step a check-in served it returned the connection: its "
                        "cancellation was lost (asyncio.wait_for on Python 3.11 does that; _wait uses asyncio.timeout)",
                        pytrace=False)
        again = await within(pool.acquire(timeout=1), 5, "acquire() after the cancelled waiter")
        assert again is held, f"the cancelled waiter's connection should go back to the pool: {counts(pool)}"
        await pool.release(again)


# Checkpoint 3: a connect that fails or is cancelled gives its slot back


async def test_failed_or_cancelled_connects_give_their_slot_back(lab, make_pool, fake):
    pool = make_pool(pool_size=1, max_overflow=1, pool_timeout=0.5)
    fake.refuse = 2
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            await within(pool.acquire(), 5, "acquire() while the server refuses")
    assert pool.stats()["size"] == 0, f"a failed connect must give its slot back: {pool.stats()}"
    fake.gate = asyncio.Event()  # connects now hang until the gate opens
    stuck = asyncio.create_task(pool.acquire())
    await eventually(until(lambda: fake.connecting == 1), 5, "a connect should be in progress")
    stuck.cancel()
    await asyncio.wait([stuck])
    assert pool.stats()["size"] == 0, (
        "a cancelled connect must give its slot back (asyncio.CancelledError is a BaseException, "
        f"not an Exception): {pool.stats()}"
    )
    slow = asyncio.create_task(pool.acquire())  # SQLAlchemy's test_hanging_connect_within_overflow
    await eventually(until(lambda: fake.connecting == 1), 5, "a slow connect should be in progress")
    fake.gate = None  # new connects go through; the slow one still hangs
    try:
        conn = await within(pool.acquire(), 5, "acquire() while another borrower's connect hangs")
    except lab.PoolTimeoutError:
        pytest.fail("a free slot was not used: has a failed or cancelled connect kept its slot?", pytrace=False)
    assert pool.stats()["size"] == 2, f"two slots: one connected, one still connecting: {pool.stats()}"
    slow.cancel()
    await asyncio.wait([slow])
    await pool.release(conn)
    assert pool.stats()["size"] == 1, f"the cancelled slow connect must give its slot back: {pool.stats()}"


# Checkpoint 4: check-in rolls back what the borrower left open


async def test_checkin_rolls_back_open_and_failed_transactions(pg_pools, table_name):
    checked_in = []

    async def query_at_checkin(conn) -> None:  # runs after the rollback, so a query works
        checked_in.append(await conn.fetchval("SELECT 1"))

    pool = pg_pools(pool_size=1, max_overflow=0, pool_timeout=5, on_checkin=query_at_checkin)
    async with pool.connection() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.execute(f"BEGIN; CREATE TABLE {table_name} (id int)")  # and the borrower forgets to commit
    async with pool.connection() as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") == pid, "the same connection should be reused"
        assert not conn.is_in_transaction(), "check-in should roll back a transaction the borrower left open"
        rolled_back = await conn.fetchval("SELECT to_regclass($1) IS NULL", table_name)
        await conn.execute(f"DROP TABLE IF EXISTS {table_name}")
    assert rolled_back, "the open transaction should have been rolled back at check-in, not committed"
    conn = await within(pool.acquire(), 5, "acquire()")
    await conn.execute("BEGIN")
    with pytest.raises(asyncpg.DivisionByZeroError):
        await conn.execute("SELECT 1/0")  # the transaction is now failed
    try:
        await within(pool.release(conn), 5, "release() of a connection in a failed transaction")
    except asyncpg.InFailedSQLTransactionError:
        pytest.fail("on_checkin ran before the rollback, inside the failed transaction: roll back first",
                    pytrace=False)
    assert checked_in == [1, 1, 1], f"on_checkin should have run after each of the 3 check-ins: {checked_in}"
    async with pool.connection() as conn:
        assert await within(conn.fetchval("SELECT 2"), 5, "a query after a failed transaction") == 2
    assert pool.stats()["size"] == 1, "the rolled-back connection should have been kept"


async def test_checkin_of_a_clean_connection_costs_no_round_trip(make_pool, fake):
    pool = make_pool(pool_size=1, max_overflow=0)
    for in_transaction in (False, True):
        async with pool.connection() as conn:
            conn.in_transaction, before = in_transaction, len(conn.executed)
        sent = [query.strip().upper() for query in conn.executed[before:]]
        if in_transaction:
            assert sent == ["ROLLBACK"], f"a connection inside a transaction needs one ROLLBACK at check-in, got {sent}"
        else:
            assert sent == [], (
                f"a connection outside a transaction needs no ROLLBACK (is_in_transaction() is known locally, "
                f"without a round trip), but check-in sent {sent}"
            )


async def test_a_backend_killed_mid_transaction_is_dropped_quietly(pg_pools, dsn, app_name):
    pool = pg_pools(pool_size=1, max_overflow=0, pool_timeout=5)
    try:
        async with pool.connection() as conn:
            await conn.execute("BEGIN")
            await terminate_backends(dsn, app_name)
            await eventually(until(conn.is_closed), 5, "asyncpg should see the killed backend")
            with pytest.raises(DEAD):
                await conn.execute("SELECT 1")  # the borrower sees the error and handles it
    except DEAD as exc:
        pytest.fail(f"release() of a connection that died while borrowed raised {exc!r}: a connection whose "
                    "is_closed() is True has nothing to roll back, just close it", pytrace=False)
    async with pool.connection() as conn:
        assert await within(conn.fetchval("SELECT 1"), 5, "a query on the next connection") == 1
    assert pool.stats()["size"] == 1


# Checkpoint 5: hooks


async def test_hooks_run_once_per_connection_and_per_checkout_in_order(make_pool):
    events = []

    async def connected(conn):
        events.append(("connect", conn))

    async def checked_out(conn):
        await asyncio.sleep(0)
        events.append(("checkout", conn))

    async def checked_in(conn):
        events.append(("checkin", conn))

    pool = make_pool(pool_size=1, max_overflow=0, on_connect=connected, on_checkout=checked_out,
                     on_checkin=checked_in)
    for _ in range(2):
        async with pool.connection() as conn:
            events.append(("use", conn))
    names = [name for name, _ in events]
    assert names == ["connect", "checkout", "use", "checkin", "checkout", "use", "checkin"], (
        f"hooks fired as {names}: on_connect once per new connection, on_checkout before the borrower "
        "gets it, on_checkin after it comes back"
    )
    assert all(c is conn for _, c in events), "every hook should receive the connection"


async def test_failing_hooks_close_the_connection_and_free_the_slot(lab, make_pool, fake):
    fail = set()

    def hook(name: str):
        async def run(conn):
            if name in fail:
                fail.discard(name)
                raise RuntimeError(f"{name} hook failed")

        return run

    pool = make_pool(pool_size=1, max_overflow=0, pool_timeout=0.5,
                     on_connect=hook("connect"), on_checkout=hook("checkout"), on_checkin=hook("checkin"))
    for name in ("connect", "checkout"):
        fail.add(name)
        with pytest.raises(RuntimeError, match=name):
            await within(pool.acquire(), 5, f"acquire() with a failing on_{name}")
        failed = fake.opened[-1]
        assert failed.closed, f"a connection whose on_{name} hook failed should be closed, not kept or left open"
        assert pool.stats()["size"] == 0, f"a failed on_{name} must give its slot back: {pool.stats()}"
    conn = await within(pool.acquire(), 5, "acquire() after failed hooks")
    assert not conn.closed and conn is not failed, "after a failed hook the next checkout gets a new connection"
    fail.add("checkin")
    with pytest.raises(RuntimeError, match="checkin"):
        await within(pool.release(conn), 5, "release() with a failing on_checkin")
    assert conn.closed, "a connection whose on_checkin failed is in an unknown state: close it, don't queue it"
    try:
        async with pool.connection() as fresh:
            assert fresh is not conn
    except lab.PoolTimeoutError:
        pytest.fail("after a failed on_checkin its slot was never given back: the pool is exhausted", pytrace=False)


# Checkpoint 6: dead connections, pre-ping and recycle


async def test_without_pre_ping_a_dead_connection_costs_one_borrower_at_most(pg_pools, dsn, app_name):
    async def query_at_checkout(conn) -> None:  # e.g. a SET, or a check of the server's role
        await conn.execute("SELECT 1")

    for hook in (None, query_at_checkout):
        pool = pg_pools(pool_size=1, max_overflow=0, pool_timeout=5, on_checkout=hook)
        async with pool.connection() as conn:
            await conn.fetchval("SELECT 1")
        await terminate_backends(dsn, app_name)
        await eventually(until(conn.is_closed), 5, "asyncpg should see the killed backend")
        with contextlib.suppress(*DEAD):  # no pre-ping: this borrower (or its checkout hook) may meet the dead one
            async with pool.connection() as conn:
                await within(conn.fetchval("SELECT 1"), 5, "a query on a killed connection")
        where = "its on_checkout hook" if hook else "its query"
        try:
            async with pool.connection() as conn:
                assert await within(conn.fetchval("SELECT 1"), 5, "a query") == 1
        except DEAD:
            pytest.fail(f"a dead connection was handed out twice (after {where} failed on it): close a connection "
                        "that died (is_closed()) or whose hook failed, never queue it again", pytrace=False)
        await pool.close()


async def test_pre_ping_replaces_a_killed_backend_without_an_error(pg_pools, dsn, app_name):
    pool = pg_pools(pool_size=2, max_overflow=0, pool_pre_ping=True, pool_timeout=5)
    first = [await within(pool.acquire(), 10, "acquire()") for _ in range(2)]
    for conn in first:
        await pool.release(conn)
    old = set(await backend_pids(dsn, app_name))
    assert await terminate_backends(dsn, app_name) == 2

    async def gone() -> bool:
        return await count_backends(dsn, app_name) == 0

    await eventually(gone, 5, "the killed backends should disappear")
    pids = set()
    for _ in range(2):
        async with pool.connection() as conn:  # no error may reach the borrower
            pids.add(await within(conn.fetchval("SELECT pg_backend_pid()"), 5, "a query"))
    assert not pids & old, "pre-ping should have replaced the killed connections with new ones"
    assert await count_backends(dsn, app_name) == 2 and pool.stats()["size"] == 2


async def test_pre_ping_pings_idle_connections_once_and_skips_known_dead_ones(make_pool, fake):
    plain = make_pool(pool_size=1, max_overflow=0)
    for _ in range(2):
        async with plain.connection() as conn:
            pass
    assert conn.executed == [], f"without pool_pre_ping, checkout should send nothing, got {conn.executed}"

    pool = make_pool(pool_size=1, max_overflow=0, pool_pre_ping=True)
    async with pool.connection() as conn:
        assert conn.executed == [], (
            f"a connection just opened needs no pre-ping (SQLAlchemy's test_ping_not_on_first_connect): {conn.executed}"
        )
    async with pool.connection() as again:
        assert again is conn and len(conn.executed) == 1, (
            f"an idle connection should be pinged once at checkout, then reused: sent {conn.executed}"
        )
    conn.alive = False  # half-open: the driver does not know, only a round trip can tell
    async with pool.connection() as fresh:
        assert fresh is not conn and not fresh.closed, "a connection whose ping failed should be replaced"
    assert conn.closed, "the connection whose ping failed should be closed"
    fresh.closed = True  # the driver already saw the server go away (asyncpg's is_closed())
    async with pool.connection() as newer:
        assert newer is not fresh, "a connection whose is_closed() is True should be replaced"
    assert fresh.executed == [], (
        f"a connection the driver already knows is closed needs no ping (is_closed() is free): sent {fresh.executed}"
    )
    # What asyncpg raises when a ping races the server hanging up (asyncpg issue #1069): not a connection error.
    newer.error = asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress")
    try:
        async with pool.connection() as newest:
            assert newest is not newer
    except asyncpg.InternalClientError:
        pytest.fail("a ping that fails with any error (here asyncpg's InternalClientError) means a dead connection: "
                    "replace it instead of passing the error to the borrower", pytrace=False)


async def test_a_cancelled_pre_ping_closes_that_connection_and_frees_its_slot(lab, make_pool, fake):
    pool = make_pool(pool_size=1, max_overflow=0, pool_pre_ping=True, pool_timeout=0.5)
    async with pool.connection() as conn:
        pass
    conn.stall = asyncio.Event()  # the ping hangs, as on a half-open connection
    pinging = asyncio.create_task(pool.acquire())
    await eventually(until(lambda: len(conn.executed) == 1), 5, "the pre-ping should be in progress")
    pinging.cancel()
    await asyncio.wait([pinging])
    assert conn.closed, "a connection whose ping was interrupted is in an unknown state: close it"
    try:
        async with pool.connection() as fresh:
            assert fresh is not conn
    except lab.PoolTimeoutError:
        pytest.fail("a cancelled pre-ping lost the slot: the pool is exhausted", pytrace=False)


async def test_pool_recycle_counts_from_creation_even_for_a_busy_connection(make_pool, fake):
    pool = make_pool(pool_size=1, max_overflow=0, pool_recycle=0.5)
    async with pool.connection() as first:
        pass
    async with pool.connection() as again:
        assert again is first, "a connection younger than pool_recycle should be reused"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while loop.time() < deadline:  # busy: checked out again at once each time it comes back
        async with pool.connection() as conn:
            await asyncio.sleep(0.05)
        if conn is not first:
            break
    assert conn is not first, (
        "a connection older than pool_recycle=0.5 s should be replaced at checkout, even one that is never idle: "
        "count its age from when it was opened, not from its last checkout"
    )
    assert first.closed, "the recycled connection should be closed"
    assert pool.stats()["size"] == 1 and fake.open_count == 1


async def test_pool_recycle_zero_replaces_the_connection_at_every_checkout(make_pool, fake):
    pool = make_pool(pool_size=1, max_overflow=0, pool_recycle=0)
    async with pool.connection() as first:
        pass
    await asyncio.sleep(0.01)  # any age is above 0
    async with pool.connection() as second:
        pass
    assert second is not first and first.closed, (
        "pool_recycle=0 should replace the connection at every checkout, as in SQLAlchemy "
        "(only -1 turns recycling off): recycle when 0 <= pool_recycle < age"
    )


# Checkpoint 7: leaks


async def test_leaks_count_from_checkout_and_point_at_the_acquiring_line(make_pool):
    quiet = make_pool(pool_size=1, max_overflow=0)
    held = await within(quiet.acquire(), 5, "acquire()")
    await asyncio.sleep(0.05)
    assert quiet.leaks() == [], "without leak_threshold, leaks() reports nothing"
    await quiet.release(held)

    pool = make_pool(pool_size=3, max_overflow=0, leak_threshold=0.3)
    async with pool.connection() as old:  # opened now, checked out again below after 0.4 s
        pass
    await asyncio.sleep(0.4)
    # Awaited directly (not through within(), which runs it in another task with its own stack).
    before_first = time.monotonic()
    line = inspect.currentframe().f_lineno + 1
    first = await pool.acquire()
    assert pool.leaks() == [], (
        "leaks() lists only checkouts held longer than leak_threshold=0.3 s; a connection checked out just now "
        f"is none, however old the connection (count from the checkout): got {summary(pool.leaks())}"
    )
    second = await pool.acquire()
    await asyncio.sleep(0.4)
    async with pool.connection() as fresh:
        leaks = pool.leaks()
        held_at_most = time.monotonic() - before_first
        assert [leak.connection for leak in leaks] == [first, second], (
            f"the two connections held longer than leak_threshold should be reported, oldest first: {summary(leaks)} "
            f"(expected {first!r} then {second!r})"
        )
        assert fresh is not first and first is old
    assert 0.35 <= leaks[0].age <= held_at_most, (
        f"age should be how long it has been held, between 0.35 and {held_at_most:.2f} s here, got {leaks[0].age}: "
        "time.monotonic() now minus the checkout's"
    )
    here = Path(__file__).name
    assert here in leaks[0].stack and f"line {line}" in leaks[0].stack, (
        f"the stack should point at the line that acquired it ({here}, line {line}):\n{leaks[0].stack}"
    )
    await pool.release(first)
    await pool.release(second)
    assert pool.leaks() == [], "a connection checked back in is no longer a leak"


# Checkpoint 8: close


async def test_a_closed_pool_refuses_checkouts_and_closes_what_comes_back(make_pool, fake):
    pool = make_pool(pool_size=2, max_overflow=0)
    idle = await within(pool.acquire(), 5, "acquire()")
    borrowed = await within(pool.acquire(), 5, "acquire()")
    await pool.release(idle)
    await within(pool.close(), 5, "close()")
    assert idle.closed, "close() should close the idle connections"
    try:
        late = await within(pool.acquire(), 5, "acquire() on a closed pool")
        await late.close()
        pytest.fail("acquire() on a closed pool should raise RuntimeError, not hand out a connection", pytrace=False)
    except RuntimeError:
        pass
    await within(pool.release(borrowed), 5, "release() after close()")
    assert borrowed.closed, "a connection checked in after close() should be closed, not kept"
    assert fake.open_count == 0 and pool.stats()["size"] == 0, f"nothing should stay open: {pool.stats()}"
