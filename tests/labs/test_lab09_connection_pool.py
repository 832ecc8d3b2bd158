"""Checks for lab 09: a ConnectionPool written from scratch.

Most checks run twice, named `[fake]` and `[asyncpg]`: over a fake connector (the pool
is generic, and the fake makes failures, delays and counting exact) and over real
asyncpg connections. They follow the notebook's order: bookkeeping, acquire/release,
waiting and timeouts, health/rollback/recovery, then clean-up and close.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
import pytest

from pglab import drills
from pglab.backends import backend_pids, count_backends, terminate_backends
from pglab.testing import eventually, record_sleeps, within

MODULE = "lab09_connection_pool"


class FakeConnection:
    """Models what the pool may rely on in an asyncpg connection, transactions included."""

    def __init__(self, connector: FakeConnector) -> None:
        self.connector, self.closed, self.in_transaction, self.failed = connector, False, False, False
        self.statements: list[str] = []
        self.closed_at: float | None = None

    def is_closed(self) -> bool:
        return self.closed

    def is_in_transaction(self) -> bool:
        return self.in_transaction

    async def execute(self, query: str) -> str:
        if self.closed:
            raise ConnectionResetError("fake: the connection is closed")
        self.statements.append(query)
        await self.connector.stall("execute")
        if query in ("ROLLBACK", "COMMIT"):
            self.in_transaction = self.failed = False
        elif self.failed:
            raise RuntimeError("fake: current transaction is aborted, commands ignored until end of transaction")
        elif query == "BEGIN":
            self.in_transaction = True
        elif query == "SELECT 1/0":
            self.failed = self.in_transaction
            raise ZeroDivisionError("fake: division by zero")
        return "OK"

    async def fetchval(self, query: str) -> int:
        await self.execute(query)
        return 1

    async def close(self) -> None:
        try:
            await asyncio.sleep(self.connector.close_delay)
        finally:  # like asyncpg: a close interrupted by cancellation aborts the connection
            self.terminate()

    def terminate(self) -> None:
        """Closed at once, as asyncpg's terminate() or a server that killed the backend."""
        if not self.closed:
            self.closed, self.closed_at = True, time.monotonic()
            self.connector.open -= 1


class FakeConnector:
    """Opens FakeConnections; counts them (open, peak, attempts); refuses or stalls on demand."""

    kind = "fake"

    def __init__(self) -> None:
        self.open = self.peak = self.made = self.attempts = self.failures = 0
        self.delay = self.close_delay = 0.0
        self.down = False
        self.stalls: set[str] = set()  # steps that hang until cancelled: "connect", "check", "execute"
        self.stalled = asyncio.Event()
        self.connections: list = []

    async def stall(self, step: str) -> None:
        if step in self.stalls:
            self.stalled.set()
            await asyncio.sleep(60)

    async def __call__(self):
        self.attempts += 1
        await asyncio.sleep(self.delay)
        await self.stall("connect")
        if self.down or self.failures:
            self.failures -= not self.down
            raise ConnectionRefusedError("fake connector: connection refused")
        return self.opened(await self.connect())

    async def connect(self) -> FakeConnection:
        self.open += 1
        self.peak = max(self.peak, self.open)
        return FakeConnection(self)

    def opened(self, conn):
        self.made += 1
        self.connections.append(conn)
        return conn

    async def open_count(self) -> int:
        return self.open

    async def kill(self, conn) -> None:
        """Terminate the connection's backend behind the pool's back, as a server restart would."""
        conn.terminate()

    async def restart(self) -> None:
        """The server goes away for a moment: every connection dies, connects are refused meanwhile."""
        self.down = True
        for conn in self.connections:
            await self.kill(conn)
        await asyncio.sleep(0.3)
        self.down = False


class PgConnector(FakeConnector):
    """Opens real asyncpg connections, tagged with the test's application_name."""

    kind = "asyncpg"

    def __init__(self, dsn: str, app_name: str, restart=None) -> None:
        super().__init__()
        self.dsn, self.app_name, self._restart = dsn, app_name, restart

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn, server_settings={"application_name": self.app_name})

    async def open_count(self) -> int:
        return await count_backends(self.dsn, self.app_name)

    async def kill(self, conn) -> None:
        admin = await asyncpg.connect(self.dsn)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        finally:
            await admin.close()

        async def noticed() -> bool:
            return conn.is_closed()

        await eventually(noticed, 10, "asyncpg should notice that its backend was terminated")

    async def restart(self) -> None:
        await self._restart()


@pytest.fixture(params=["fake", "asyncpg"], ids=["fake", "asyncpg"])
async def connector(request, dsn, app_name):
    if request.param == "fake":
        yield FakeConnector()
    else:
        yield PgConnector(dsn, app_name)
        await terminate_backends(dsn, app_name)


@contextlib.asynccontextmanager
async def fake_pool(lab, connector, **config):
    """A started pool over `connector`, for the checks that run on the fake connector only; closed after."""
    pool = lab.ConnectionPool(connector, lab.PoolConfig(**config))
    try:
        await within(pool.start(), 10, "start()")
        yield pool
    finally:
        await within(pool.close(), 10, "close()")


@pytest.fixture
async def make_pool(lab, connector):
    """`make_pool(check=..., **config)`: a started pool over the connector, closed after the test."""
    pools = []

    async def make(*, start: bool = True, check=None, **config):
        pool = lab.ConnectionPool(connector, lab.PoolConfig(**config), check=check)
        pools.append(pool)
        if start:
            await within(pool.start(), 15, "pool.start()")
        return pool

    yield make
    for pool in pools:
        with contextlib.suppress(Exception):
            await within(pool.close(), 10, "pool.close()")


@pytest.fixture(scope="module")
def private_server():
    """A server of this module's own, so the restart check never touches the shared one."""
    if reason := drills.private_server_unavailable():
        pytest.skip(reason)
    with drills.PrivateServer() as server:
        yield server


async def query(conn) -> None:
    await conn.fetchval("SELECT 1")


def borrowed(pool) -> int:
    stats = pool.stats()
    return stats["pool_size"] - stats["pool_available"]


# 1. Bookkeeping


async def test_pooled_connection_knows_its_age_and_idle_time(lab):
    item = lab.PooledConnection(object(), lifetime=10.0)
    assert len({item, lab.PooledConnection(item.connection)}) == 2, "each PooledConnection must be distinct"
    assert not item.is_expired(), "a connection 0 s old with lifetime=10 is not expired"
    item.created_at -= 11
    assert item.is_expired(), "is_expired() should be True once the connection lived longer than its lifetime"
    assert not lab.PooledConnection(object()).is_expired(), "without a lifetime a connection never expires"
    item.last_used_at -= 5
    assert 4.9 < item.idle_time() < 6, f"idle_time() should be seconds since last use, got {item.idle_time()}"


def test_jittered_lifetime_is_within_the_last_10_percent_of_max_lifetime(lab):
    config = lab.PoolConfig(max_lifetime=100.0)
    lifetimes = [config.jittered_lifetime() for _ in range(200)]
    outside = [round(t, 2) for t in lifetimes if not 90.0 <= t <= 100.0]
    assert not outside, (
        f"jittered_lifetime() with max_lifetime=100 gave {outside[:5]}: shorten max_lifetime by a random 0-10 % "
        "(between 90 and 100), never lengthen it: no connection may outlive max_lifetime"
    )
    assert max(lifetimes) - min(lifetimes) > 2.0, (
        f"200 lifetimes all within {max(lifetimes) - min(lifetimes):.2f} s of each other: draw the jitter at random "
        "for each connection"
    )


@pytest.mark.parametrize(("config", "field"), [
    ({"min_size": 3, "max_size": 2}, "min_size"), ({"max_size": 0, "min_size": 0}, "max_size"),
    ({"max_idle_time": -1}, "max_idle_time"), ({"acquire_timeout": -0.5}, "acquire_timeout"),
    ({"max_lifetime": -1}, "max_lifetime"), ({"cleanup_interval": -1}, "cleanup_interval"),
], ids=["min-above-max", "max-zero", "idle-negative", "timeout-negative", "lifetime-negative", "cleanup-negative"])
def test_config_rejects_bad_values_naming_the_field(lab, config, field):
    lab.PoolConfig(min_size=0, max_size=1, max_idle_time=0, acquire_timeout=0)  # limits, but valid
    with pytest.raises(ValueError, match=field):
        lab.PoolConfig(**config)


# 2. Acquire and release


async def test_start_warms_min_size_and_connection_gives_back(make_pool, connector):
    pool = await make_pool(min_size=2, max_size=4)
    assert await connector.open_count() == 2, "start() should open min_size=2 connections"
    stats = pool.stats()
    assert (stats["pool_size"], stats["pool_available"]) == (2, 2), f"after start(): {stats}"
    async with pool.connection() as conn:
        await query(conn)
        assert borrowed(pool) == 1, f"inside `async with pool.connection()`: {pool.stats()}"
    for _ in range(3):
        async with pool.connection() as conn:
            await query(conn)
    assert pool.stats()["pool_available"] == 2 and connector.made == 2, (
        f"leaving `async with` should give the connection back for reuse: {pool.stats()}, {connector.made} made"
    )
    with pytest.raises(RuntimeError):
        async with pool.connection():
            raise RuntimeError("boom")
    assert borrowed(pool) == 0, "an exception inside `async with` must still give the connection back"


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
    assert pool.stats()["pool_available"] == 1, f"a double release must not add the connection twice: {pool.stats()}"


@pytest.mark.deadline(60)
async def test_max_size_is_never_exceeded_under_500_borrowers(make_pool, connector):
    pool = await make_pool(min_size=0, max_size=5, acquire_timeout=60)
    lent = peak = 0

    async def borrower() -> None:
        nonlocal lent, peak
        async with pool.connection() as conn:
            lent += 1
            peak = max(peak, lent)
            await query(conn)
            lent -= 1

    await within(asyncio.gather(*(borrower() for _ in range(500))), 60, "500 borrowers")
    assert peak <= 5, f"{peak} connections were lent at once with max_size=5"
    assert connector.peak <= 5 and await connector.open_count() <= 5, (
        f"{connector.peak} connections were open at once with max_size=5 (count the slot before awaiting)")
    assert connector.made == 5, f"the pool should have opened 5 connections and reused them, made {connector.made}"


# 3. Waiting and timeouts


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


async def test_acquire_timeout_raises_pool_timeout_error_and_per_call_timeout_wins(lab, make_pool):
    pool = await make_pool(min_size=1, max_size=1, acquire_timeout=0.2)
    assert issubclass(lab.PoolTimeoutError, TimeoutError), "PoolTimeoutError should subclass TimeoutError"
    held = await within(pool.acquire(), 10, "acquire()")
    start = time.monotonic()
    with pytest.raises(lab.PoolTimeoutError):
        await within(pool.acquire(), 10, "acquire() on an exhausted pool (acquire_timeout=0.2)")
    assert time.monotonic() - start >= 0.15, "acquire() gave up before acquire_timeout"
    assert pool.stats()["requests_waiting"] == 0, f"a timed-out waiter must leave the queue: {pool.stats()}"
    later = asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(pool.release(held)))
    try:
        conn = await within(pool.acquire(timeout=10), 15,
                            "acquire(timeout=10) while the connection comes back after 0.3 s")
    except TimeoutError:
        pytest.fail("acquire(timeout=10) timed out: the per-call timeout should override acquire_timeout=0.2")
    finally:
        later.cancel()
    await pool.release(conn)
    long = await make_pool(min_size=1, max_size=1, acquire_timeout=60)
    held = await within(long.acquire(), 10, "acquire()")
    with pytest.raises(TimeoutError):
        await within(long.acquire(timeout=0.05), 5, "acquire(timeout=0.05) with acquire_timeout=60 (ignored?)")
    await long.release(held)


async def test_acquire_timeout_covers_opening_a_connection(lab, make_pool, connector):
    pool = await make_pool(min_size=0, max_size=2, acquire_timeout=0.2)
    connector.delay = 30  # a server that does not answer
    with pytest.raises(lab.PoolTimeoutError):
        await within(pool.acquire(), 5, "acquire() with acquire_timeout=0.2 while connecting takes 30 s "
                     "(the timeout must cover opening a connection too)")
    with pytest.raises(lab.PoolTimeoutError):
        await within(pool.acquire(timeout=0.1), 5, "acquire(timeout=0.1) while connecting takes 30 s")
    assert pool.stats()["pool_size"] == 0, f"a connect cut short by the timeout must free its slot: {pool.stats()}"
    connector.delay = 0
    await pool.release(await within(pool.acquire(), 10, "acquire() once connecting is fast again"))


@pytest.mark.deadline(30)
async def test_1000_cancelled_waiters_leak_nothing(make_pool, connector):
    pool = await make_pool(min_size=0, max_size=3, acquire_timeout=60)
    held = [await within(pool.acquire(), 10, "acquire()") for _ in range(3)]
    tasks = [asyncio.create_task(pool.acquire()) for _ in range(1000)]

    async def all_waiting() -> bool:
        return pool.stats()["requests_waiting"] == 1000

    await eventually(all_waiting, 10, f"stats()['requests_waiting'] should reach 1000 ({pool.stats()})")
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
    assert stats["requests_waiting"] == 0 and borrowed(pool) == 0, (
        f"connections lost: a waiter cancelled just as it was handed a connection must pass it on ({stats})")
    again = [await within(pool.acquire(timeout=5), 10, "acquire() after the cancellations") for _ in range(3)]
    for conn in again:
        await pool.release(conn)


async def test_a_failing_factory_does_not_lose_a_slot(make_pool, connector):
    pool = await make_pool(min_size=0, max_size=2, acquire_timeout=5)
    connector.failures = 5
    for _ in range(5):
        with pytest.raises(ConnectionRefusedError):
            await within(pool.acquire(), 10, "acquire() with a failing factory")
    assert pool.stats()["pool_size"] == 0, f"failed connects must give their slot back: {pool.stats()}"
    conns = [await within(pool.acquire(), 10, "acquire() once the factory works") for _ in range(2)]
    for conn in conns:
        await pool.release(conn)
    assert pool.stats()["pool_size"] == 2, f"both slots should be usable after the failures: {pool.stats()}"


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
    assert pool.stats()["pool_size"] == 2 and borrowed(pool) == 0, f"{pool.stats()}"


@pytest.mark.parametrize("step", ["connect", "checkout-check", "release-check"])
async def test_cancelling_at_any_await_loses_no_slot(make_pool, connector, step):
    async def check(conn) -> bool:
        await connector.stall("check")
        return True

    pool = await make_pool(min_size=2 if step == "checkout-check" else 0, max_size=2, check=check)
    for _ in range(2):  # max_size cancellations: a lost slot each time leaves none
        if step == "release-check":
            conn = await within(pool.acquire(), 10, "acquire()")
        connector.stalls, connector.stalled = {step.split("-")[-1]}, asyncio.Event()
        task = asyncio.create_task(pool.release(conn) if step == "release-check" else pool.acquire())
        await within(connector.stalled.wait(), 10, f"the pool to reach the {step} step")
        task.cancel()
        await within(asyncio.wait([task]), 10, f"a task cancelled during {step}")
        connector.stalls = set()
    try:
        conns = [await within(pool.acquire(timeout=5), 10, "acquire()") for _ in range(2)]
    except TimeoutError:
        pytest.fail(f"after 2 tasks were cancelled during {step}, no slot was left with max_size=2 ({pool.stats()}):"
                    " an await interrupted by cancellation must give its slot (or connection) back", pytrace=False)
    for conn in conns:
        await pool.release(conn)
    assert pool.stats()["pool_size"] <= 2, f"{pool.stats()}"


@pytest.mark.deadline(30)
async def test_stats_use_psycopg_pool_names(make_pool, connector):
    pool = await make_pool(min_size=0, max_size=1, acquire_timeout=10)
    held = await within(pool.acquire(), 10, "acquire()")
    began = time.monotonic()
    waiting = asyncio.create_task(pool.acquire(timeout=0.1))

    async def queued() -> bool:
        return pool.stats()["requests_waiting"] == 1

    await eventually(queued, 5, f"requests_waiting should be 1 while an acquire waits ({pool.stats()})")
    with pytest.raises(TimeoutError):
        await within(waiting, 5, "a waiting acquire(timeout=0.1)")
    waited_ms = (time.monotonic() - began) * 1000  # the only wait of this history
    await pool.release(held)
    for _ in range(2):  # two bad returns, one lost connection below: the two counters cannot be swapped
        conn = await within(pool.acquire(), 10, "acquire()")
        await conn.close()  # the borrower closed it: a bad return
        await pool.release(conn)
    connector.failures = 1
    with pytest.raises(ConnectionRefusedError):
        await within(pool.acquire(), 10, "acquire() with a failing connect")
    conn = await within(pool.acquire(), 10, "acquire()")
    await pool.release(conn)
    await connector.kill(conn)  # dies while idle: found at the next checkout
    await pool.release(await within(pool.acquire(), 10, "acquire()"))
    stats = pool.stats()
    assert 50 <= stats["requests_wait_ms"] <= waited_ms + 1, (
        f"requests_wait_ms should add up the time spent waiting, here one wait of at most {waited_ms:.0f} ms "
        f"(the time from the start of the wait to its end, in ms): {stats}")
    expected = {"pool_min": 0, "pool_max": 1, "pool_size": 1, "pool_available": 1, "requests_waiting": 0,
                "requests_num": 7, "requests_errors": 2, "connections_num": 5, "connections_errors": 1,
                "connections_lost": 1, "returns_bad": 2}
    got = {name: stats.get(name) for name in expected}
    assert got == expected, f"stats() after a known history, expected {expected}\n got {got}"


# 4. Health, rollback and recovery


async def test_release_rolls_back_an_open_or_failed_transaction(make_pool, connector):
    pool = await make_pool(min_size=1, max_size=1)
    for failed in (False, True):
        async with pool.connection() as conn:
            await conn.execute("BEGIN")
            if failed:
                with contextlib.suppress(Exception):
                    await conn.execute("SELECT 1/0")
        async with pool.connection() as again:
            assert not again.is_in_transaction(), (
                f"the next borrower got a connection still inside the previous borrower's "
                f"{'failed' if failed else 'open'} transaction: roll it back on release")
            await query(again)
    if connector.kind == "fake":
        async with pool.connection() as conn:
            pass
        assert conn.statements[-1:] == ["SELECT 1"], (
            f"releasing a connection outside a transaction ran {conn.statements[-1]!r}: read "
            "is_in_transaction() locally instead of a round trip on every release")
        conn = await within(pool.acquire(), 10, "acquire()")  # cancelled during the rollback: the slot survives
        await conn.execute("BEGIN")
        connector.stalls, connector.stalled = {"execute"}, asyncio.Event()
        task = asyncio.create_task(pool.release(conn))
        await within(connector.stalled.wait(), 10, "release() to reach the rollback")
        task.cancel()
        await within(asyncio.wait([task]), 10, "a release() cancelled during its rollback")
        connector.stalls = set()
        await pool.release(await within(pool.acquire(timeout=5), 10, "acquire() after a cancelled rollback"))


async def test_a_closed_or_killed_connection_is_never_lent(make_pool, connector):
    pool = await make_pool(min_size=1, max_size=1)
    async with pool.connection() as conn:
        await conn.close()  # its borrower closed it
    async with pool.connection() as fresh:
        assert fresh is not conn and not fresh.is_closed(), "a connection its borrower closed was lent again"
        await query(fresh)
    await connector.kill(fresh)  # its backend is terminated while it idles
    async with pool.connection() as third:
        assert third is not fresh, "a connection whose backend was terminated while idle was lent again"
        await query(third)


async def test_check_runs_at_checkout_and_on_release(make_pool, connector):
    bad: set[int] = set()  # these raise
    refused: set[int] = set()  # these return False
    calls = 0

    async def check(conn) -> bool | None:  # as psycopg_pool's check, it returns nothing when all is well
        nonlocal calls
        calls += 1
        if id(conn) in bad:
            raise ConnectionResetError("check: broken")
        return False if id(conn) in refused else None

    pool = await make_pool(min_size=1, max_size=2, check=check)
    conn = await within(pool.acquire(), 10, "acquire()")
    assert calls == 1, f"check should run before an idle connection is lent ({calls} calls)"
    bad.add(id(conn))
    await pool.release(conn)
    assert pool.stats()["pool_available"] == 0, (
        f"a connection failing the check on release must be closed: {pool.stats()}")
    conn = await within(pool.acquire(), 10, "acquire()")
    await pool.release(conn)
    assert not conn.is_closed(), (
        "a connection whose check returned None was closed on release: only False or an exception means "
        "broken, keep it for reuse")
    refused.add(id(conn))  # it breaks while idle
    other = await within(pool.acquire(), 10, "acquire()")
    assert other is not conn, "an idle connection whose check returned False at checkout was lent"
    await pool.release(other)


@pytest.mark.deadline(30)
async def test_min_size_is_restored_in_the_background_with_backoff(lab, monkeypatch):
    sleeps = record_sleeps(lab.__name__, monkeypatch)  # the pauses between failed refills, if made with asyncio.sleep

    def pauses() -> list[float]:
        return [delay for _, delay in sleeps]

    connector = FakeConnector()
    pool = lab.ConnectionPool(connector, lab.PoolConfig(min_size=2, max_size=3, reconnect_delay=0.05))
    try:
        await within(pool.start(), 10, "start()")
        connector.down = True
        for conn in list(connector.connections):
            await connector.kill(conn)
        with pytest.raises(ConnectionRefusedError):
            await within(pool.acquire(), 5, "acquire() while the server is down")
        attempts = connector.attempts
        await asyncio.sleep(1.0)
        retries = connector.attempts - attempts
        assert 1 <= retries <= 16, (
            f"{retries} connects in 1 s while the server was down (reconnect_delay=0.05): retry in the "
            "background, doubling the pause after each failed round")
        doubling = [0.05 * 2**n for n in range(len(pauses()[:4]))]
        assert pauses()[:4] == pytest.approx(doubling, rel=0.25), (
            f"the pauses between failed refills were {[round(d, 3) for d in pauses()[:4]]} s: start at "
            f"reconnect_delay=0.05 and double after each failed round ({doubling})")
        connector.down = False

        async def restored() -> bool:
            return pool.stats()["pool_available"] == 2

        await eventually(restored, 5, f"min_size=2 should be restored in the background ({pool.stats()})")
        # A second outage, after the pause grew during the first: a refill that worked starts the pauses over.
        connector.down = True
        for conn in list(connector.connections):
            await connector.kill(conn)
        with pytest.raises(ConnectionRefusedError):
            await within(pool.acquire(), 5, "acquire() while the server is down again")
        attempts, before = connector.attempts, len(sleeps)
        await asyncio.sleep(1.0)
        retries = connector.attempts - attempts
        assert pauses()[before:before + 1] in ([], pytest.approx([0.05], rel=0.25)) and retries >= 3, (
            f"{retries} connects in 1 s of a second outage (reconnect_delay=0.05), the first pause "
            f"{pauses()[before:before + 1]} s: after a refill that worked, "
            "reset the pause to reconnect_delay, or the next outage waits out the long pause of the last one"
        )
        connector.down = False
        await eventually(restored, 5, f"min_size=2 should be restored after the second outage ({pool.stats()})")
    finally:
        await within(pool.close(), 10, "close()")


async def test_initial_fill_keeps_the_connections_that_opened(make_pool, connector):
    connector.failures = 1
    pool = await make_pool(min_size=3, max_size=3, reconnect_delay=0.05)
    assert pool.stats()["pool_available"] >= 2, (
        f"2 of 3 connects at start() succeeded: they should be in the pool ({pool.stats()})")

    async def filled() -> bool:
        return pool.stats()["pool_available"] == 3

    await eventually(filled, 5, f"the failed connect of start() should be retried in the background ({pool.stats()})")


@pytest.mark.deadline(90)  # starts a private server, then restarts it
async def test_pool_recovers_after_a_server_restart(lab, request, connector, app_name):
    config = lab.PoolConfig(min_size=2, max_size=2)  # the defaults otherwise
    if connector.kind == "asyncpg":
        server = request.getfixturevalue("private_server")
        connector = PgConnector(server.dsn, app_name, server.restart)
    pool = lab.ConnectionPool(connector, config)
    failures: list[BaseException] = []

    async def request_once() -> bool:
        try:
            async with pool.connection(timeout=2) as conn:
                await query(conn)
            return True
        except Exception as exc:
            failures.append(exc)
            return False

    try:
        await within(pool.start(), 15, "start()")
        assert await request_once(), f"a request before the restart failed: {failures}"
        await within(connector.restart(), 60, "the server restart")
        await eventually(request_once, 20, "requests should succeed again after the server is back")
        failures.clear()
        results = [await request_once() for _ in range(10)]
        assert all(results), (f"after recovering, {results.count(False)} of 10 requests failed "
                              f"(a dead connection lent again?): {failures[:2]}")
    finally:
        await within(pool.close(), 10, "close()")


# 5. Clean-up and close


@pytest.mark.deadline(30)
async def test_idle_trimming_closes_only_the_surplus_idle_too_long(make_pool, connector):
    pool = await make_pool(min_size=2, max_size=4, max_idle_time=0.3, cleanup_interval=0.02)
    conns = [await within(pool.acquire(), 10, "acquire()") for _ in range(4)]
    released_at = time.monotonic()
    for conn in conns[:2]:
        await pool.release(conn)
    await asyncio.sleep(0.1)
    await pool.release(conns[2])  # conns[3] stays borrowed

    async def trimmed() -> bool:
        return pool.stats()["pool_size"] == 2 and await connector.open_count() == 2

    await eventually(trimmed, 10, f"idle connections above min_size=2 should be closed ({pool.stats()})")
    await asyncio.sleep(0.3)
    assert pool.stats()["pool_size"] == 2 and not conns[2].is_closed(), (
        f"with one connection borrowed and one idle the pool is at min_size=2: nothing more to close ({pool.stats()})")
    assert conns[0].is_closed() and conns[1].is_closed(), "the connections idle longest should go first"
    if connector.kind == "fake":
        early = [c.closed_at - released_at for c in conns[:2] if c.closed_at - released_at < 0.3]
        assert not early, f"connections were closed after {early} s idle, before max_idle_time=0.3"
    await pool.release(conns[3])


async def test_idle_time_counts_from_the_release_not_from_the_connect(lab):
    async with fake_pool(lab, FakeConnector(), min_size=0, max_size=1, max_idle_time=1.0,
                         cleanup_interval=0.02) as pool:
        conn = await within(pool.acquire(), 10, "acquire()")
        await asyncio.sleep(1.2)  # borrowed longer than max_idle_time: it was busy, not idle
        await pool.release(conn)
        await asyncio.sleep(0.1)  # several clean-up cycles, well within max_idle_time of the release
        assert not conn.is_closed(), (
            "a connection idle for 0.1 s was closed with max_idle_time=1: it had been borrowed for 1.2 s. "
            "Stamp last_used_at when it comes back (release), so idle time counts from then")


async def test_idle_trimming_keeps_what_is_left_below_min_size(lab):
    connector = FakeConnector()
    pool = lab.ConnectionPool(connector, lab.PoolConfig(min_size=2, max_size=2, max_idle_time=0.1,
                                                        cleanup_interval=0.02, reconnect_delay=0.05))
    try:
        await within(pool.start(), 10, "start()")
        conns = [await within(pool.acquire(), 10, "acquire()") for _ in range(2)]
        connector.down = True  # the refill fails: the pool stays below min_size=2
        await connector.kill(conns[0])
        for conn in conns:
            await pool.release(conn)  # the dead one is closed, the other one idles
        await asyncio.sleep(0.6)  # several clean-up cycles while it idles longer than max_idle_time=0.1
        assert pool.stats()["pool_size"] == 1 and not conns[1].is_closed(), (
            f"below min_size=2, the clean-up closed the last connection for idling too long ({pool.stats()}): "
            "trim only while _size > min_size"
        )
        connector.down = False

        async def restored() -> bool:
            return pool.stats()["pool_available"] == 2

        await eventually(restored, 5, f"min_size=2 should be restored once the server is back ({pool.stats()})")
    finally:
        await within(pool.close(), 10, "close()")


@pytest.mark.deadline(30)
async def test_expired_connections_are_replaced_and_min_size_holds(make_pool, connector, dsn):
    pool = await make_pool(min_size=2, max_size=4, max_lifetime=0.3, cleanup_interval=0.05)
    first = await backend_pids(dsn, connector.app_name) if connector.kind == "asyncpg" else []

    async def replaced() -> bool:
        return connector.made >= 4

    await eventually(replaced, 10, f"connections older than max_lifetime should be replaced ({pool.stats()})")
    assert pool.stats()["pool_size"] >= 2, f"min_size=2 must hold while replacing: {pool.stats()}"
    conn = await within(pool.acquire(), 10, "acquire()")
    await query(conn)
    await pool.release(conn)
    if first:
        async def originals_gone() -> bool:
            return not set(first) & set(await backend_pids(dsn, connector.app_name))

        await eventually(originals_gone, 5, "the original backends should be closed after max_lifetime")


async def test_an_expired_idle_connection_is_not_lent(make_pool, connector):
    pool = await make_pool(min_size=0, max_size=2, max_lifetime=0.2, cleanup_interval=60)
    conn = await within(pool.acquire(), 10, "acquire()")
    await pool.release(conn)
    await asyncio.sleep(0.3)  # older than max_lifetime, the clean-up has not run
    fresh = await within(pool.acquire(), 10, "acquire() of an expired idle connection")
    assert fresh is not conn and conn.is_closed(), "an expired idle connection must be closed and replaced"
    await pool.release(fresh)


@pytest.mark.deadline(30)
async def test_max_lifetime_is_jittered(lab):
    connector = FakeConnector()
    async with fake_pool(lab, connector, min_size=8, max_size=8, max_lifetime=1.0, cleanup_interval=0.01):
        originals = list(connector.connections)

        async def retired() -> bool:
            return all(c.is_closed() for c in originals)

        await eventually(retired, 10, "connections older than max_lifetime should be retired")
        spread = max(c.closed_at for c in originals) - min(c.closed_at for c in originals)
        assert spread > 0.01, (
            f"8 connections opened together all retired within {spread * 1000:.1f} ms: give each a "
            "slightly shorter lifetime (jitter), or they all reconnect in the same instant")


async def test_close_wakes_waiters_and_refuses_new_acquires(lab, make_pool, connector):
    pool = await make_pool(min_size=2, max_size=2, acquire_timeout=30)
    held = [await within(pool.acquire(), 10, "acquire()") for _ in range(2)]
    waiters = [asyncio.create_task(pool.acquire()) for _ in range(3)]
    await asyncio.sleep(0.01)
    await within(pool.close(), 10, "close()")
    for task in waiters:
        with pytest.raises(lab.PoolClosedError):
            await within(task, 5, "a waiter when the pool closes")
    with pytest.raises(lab.PoolClosedError):
        await pool.acquire()
    with pytest.raises(lab.PoolClosedError):
        await pool.start()
    for conn in held:
        await pool.release(conn)

    async def all_closed() -> bool:
        return await connector.open_count() == 0

    await eventually(all_closed, 5, "connections given back after close() should be closed")
    assert pool.stats()["pool_size"] == 0, f"after close() and release: {pool.stats()}"
    await within(pool.close(), 10, "a second close()")


async def test_a_connection_that_opens_after_close_is_closed(lab, make_pool, connector):
    pool = await make_pool(min_size=0, max_size=1)
    connector.delay = 0.3  # close() comes while this acquire is still connecting
    connecting = asyncio.create_task(pool.acquire())

    async def started() -> bool:
        return connector.attempts == 1

    await eventually(started, 5, "acquire() should start opening a connection")
    await within(pool.close(), 10, "close() while an acquire is connecting")
    with pytest.raises(lab.PoolClosedError):
        await within(connecting, 10, "an acquire() whose connect finishes after close()")

    async def none_open() -> bool:
        return await connector.open_count() == 0

    await eventually(none_open, 5, "a connection that finished opening after close() was left open: "
                     "close it before raising PoolClosedError")
    assert pool.stats()["pool_size"] == 0, f"its slot should be freed too: {pool.stats()}"


async def test_close_during_a_clean_up_cycle_closes_every_connection(lab):
    connector = FakeConnector()
    pool = lab.ConnectionPool(connector, lab.PoolConfig(min_size=0, max_size=4, max_idle_time=0,
                                                        cleanup_interval=0.01))
    await within(pool.start(), 10, "start()")
    conns = [await within(pool.acquire(), 10, "acquire()") for _ in range(4)]
    connector.close_delay = 0.2  # the clean-up is busy closing the first one when close() comes
    for conn in conns:
        await pool.release(conn)

    async def closing() -> bool:
        return pool.stats()["pool_available"] < 4

    await eventually(closing, 5, "the clean-up should start closing idle connections (max_idle_time=0)")
    await within(pool.close(), 10, "close() during a clean-up cycle")
    assert connector.open == 0, (
        f"{connector.open} connections left open by close() during a clean-up: connections the clean-up "
        "had taken out of the idle stack were neither closed nor put back")


async def test_close_lets_the_callers_cancellation_through(lab):
    connector = FakeConnector()
    pool = lab.ConnectionPool(connector, lab.PoolConfig(min_size=1, max_size=1))
    await within(pool.start(), 10, "start()")
    closing = asyncio.create_task(pool.close())
    await asyncio.sleep(0)  # close() is now waiting for its background task to stop
    closing.cancel()
    await within(asyncio.wait([closing]), 10, "a cancelled close()")
    assert closing.cancelled(), (
        "close() swallowed its caller's cancellation: `suppress(CancelledError)` around awaiting a task you "
        "cancelled also hides your own; wait with `asyncio.wait([task])` instead")
    await within(pool.close(), 10, "a second close()")
    assert connector.open == 0, "close() after a cancelled close() should still close every connection"


async def test_close_waits_for_its_background_task_to_stop(lab):
    before = asyncio.all_tasks()
    pool = lab.ConnectionPool(FakeConnector(), lab.PoolConfig(min_size=0, max_size=1))
    await within(pool.start(), 10, "start()")
    started = asyncio.all_tasks() - before  # the pool's upkeep task (and any other it keeps)

    async def close_then_look() -> list[asyncio.Task]:  # looks the moment close() returns, before any other step
        await pool.close()
        return [task for task in started if not task.done()]

    running = await within(close_then_look(), 10, "close()")
    assert not running, (
        f"close() returned while {len(running)} task(s) the pool started were still running: after cancelling "
        "its background task, close() must wait for it to finish (`await asyncio.wait([task])`)"
    )
