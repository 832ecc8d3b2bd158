"""Checks for lab 11: failure drills against the real server.

The restart drill stops a server, so it runs on a private embedded server of its
own (module fixture), never on the shared one. Ordered from the most basic piece
(mapping an error) to the hardest (a storm of cancellations).
"""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from pglab import drills
from pglab.backends import terminate_backends
from pglab.servers.embedded import free_port
from pglab.testing import check_backoff, check_jittered, eventually, record_sleeps, within

MODULE = "lab11_failure_drills"
SECRET = "s3cr3t-Passw0rd"


@pytest.fixture
async def make_pool(dsn, app_name):
    """`await make_pool(max_size=4)`: an asyncpg pool tagged with this test's app_name, terminated afterwards."""
    pools: list[asyncpg.Pool] = []

    async def make(*, max_size: int = 4, min_size: int = 0, server_dsn: str | None = None, **kwargs):
        pool = await within(asyncpg.create_pool(
            server_dsn or dsn, min_size=min_size, max_size=max_size,
            server_settings={"application_name": app_name}, **kwargs,
        ), 15, "create_pool()")
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.terminate()


@pytest.fixture(scope="module")
def private_server():
    """A server of this module's own, so the restart drill never touches the shared one.

    In a temporary folder of its own, not pytest's tmp_path: every pytest session resets
    its base folder to mode 0700, which would lock the server's user out mid-drill.
    """
    if reason := drills.private_server_unavailable():
        print(f"restart drill skipped: {reason}")
        pytest.skip(reason)
    with drills.PrivateServer() as server:
        yield server


def expect_no_errors(errors: list[BaseException], what: str) -> None:
    """Fail saying `what` and the first error; a skeleton's TODO shows as "not implemented yet"."""
    if not errors:
        return
    first = errors[0]
    if isinstance(first, NotImplementedError):
        raise first
    pytest.fail(f"{what}: {len(errors)} failed, the first with {type(first).__name__}: {first}", pytrace=False)


async def real_errors(dsn: str, table: str) -> dict[str, BaseException]:
    """Errors raised by the live server, each carrying SQL values or secrets in its text."""
    found: dict[str, BaseException] = {}
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE TABLE {table} (email text PRIMARY KEY)")
        await conn.execute(f"INSERT INTO {table} VALUES ($1)", f"alice-{SECRET}@example.com")
        try:
            await conn.execute(f"INSERT INTO {table} VALUES ($1)", f"alice-{SECRET}@example.com")
        except asyncpg.UniqueViolationError as exc:
            found["unique"] = exc
        try:
            await conn.execute("SET statement_timeout = '50ms'")
            await conn.execute("SELECT pg_sleep(2)")
        except asyncpg.QueryCanceledError as exc:
            found["statement timeout"] = exc
        await conn.execute("RESET statement_timeout")
        try:
            await conn.execute(f"SELECT * FROM missing_{table} WHERE password = '{SECRET}'")
        except asyncpg.PostgresError as exc:
            found["bad SQL"] = exc
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
    try:
        await asyncpg.connect(f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/app", timeout=5)
    except OSError as exc:
        found["server down"] = exc
    return found


async def hold_all(bounded, n: int) -> list[asyncpg.Connection]:
    return [await within(bounded.acquire(), 10, "BoundedPool.acquire() on a free pool") for _ in range(n)]


# -- map_db_error and the timeout policy ----------------------------------------
async def test_map_db_error_gives_the_status_and_never_leaks_details(lab, dsn, table_name):
    errors = await real_errors(dsn, table_name)
    expected = {
        "unique": 409,
        "statement timeout": 504,
        "bad SQL": 500,
        "server down": 503,
    }
    synthetic = {
        "exhausted pool (acquire timed out)": (TimeoutError(), 503),
        "too many waiters": (lab.TooManyWaitersError("queue full"), 503),
        "resilient_fetch gave up": (lab.DeadlineExceededError("gave up"), 503),
        "query past the deadline": (lab.QueryTimeoutError("too slow"), 504),
        "terminated backend": (asyncpg.AdminShutdownError("terminating connection due to administrator command"), 503),
        "server starting up": (asyncpg.CannotConnectNowError("the database system is starting up"), 503),
        "connection lost": (
            asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), 503),
        "session killed mid-protocol": (
            asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"), 503),
        "a bug in the service": (RuntimeError(f"failed: postgresql://app:{SECRET}@db/app SELECT secret"), 500),
    }
    cases = {name: (errors[name], status) for name, status in expected.items()}
    cases.update(synthetic)
    for name, (exc, status) in cases.items():
        got = lab.map_db_error(exc)
        assert isinstance(got, tuple) and len(got) == 2, f"map_db_error should return (status, message), got {got!r}"
        got_status, message = got
        assert got_status == status, f"{name} ({type(exc).__name__}) should map to {status}, got {got_status}"
        assert isinstance(message, str) and message.strip(), f"{name}: the message should be a non-empty string"
        for leak in (SECRET, "SELECT", "INSERT", "example.com", "postgresql://", "127.0.0.1"):
            assert leak.lower() not in message.lower(), (
                f"{name}: the message {message!r} leaks {leak!r}; return a fixed text per status, never str(exc)"
            )


async def test_one_timeout_policy_retries_a_busy_pool_but_never_a_slow_query(lab):
    policy = {  # failure: (retried by resilient_fetch, status)
        "acquire timed out (asyncio.TimeoutError)": (TimeoutError(), True, 503),
        "query past the deadline (QueryTimeoutError)": (lab.QueryTimeoutError("slow"), False, 504),
        "statement_timeout (QueryCanceledError)": (
            asyncpg.QueryCanceledError("canceling statement due to statement timeout"), False, 504),
        "a unique violation": (asyncpg.UniqueViolationError("duplicate key"), False, 409),
        "a syntax error": (asyncpg.PostgresSyntaxError("syntax error"), False, 500),
    }
    for name, (exc, retried, status) in policy.items():
        assert lab.is_transient(exc) is retried, (
            f"is_transient({name}) should be {retried}: a busy pool may free up a moment later, "
            "but a slow query is slow again and a broken one fails the same way every time"
        )
        assert lab.map_db_error(exc)[0] == status, f"{name} should map to {status}, got {lab.map_db_error(exc)[0]}"


# -- BoundedPool ----------------------------------------------------------------
async def test_saturated_pool_answers_503_within_the_timeout_not_a_hang(lab, make_pool):
    pool = await make_pool(max_size=2)
    bounded = lab.BoundedPool(pool, max_waiting=3, timeout=0.5)
    held = await hold_all(bounded, 2)
    try:
        waiters = [asyncio.ensure_future(bounded.acquire()) for _ in range(3)]

        async def three_waiting() -> bool:
            return bounded.waiting == 3

        await eventually(three_waiting, 5, "with the pool exhausted, 3 borrowers should show as `waiting`")
        with pytest.raises(lab.TooManyWaitersError):
            await within(bounded.acquire(), 0.5, "the borrower beyond max_waiting (should fail at once)")
        outcomes = await within(asyncio.gather(*waiters, return_exceptions=True), 10,
                                "the waiters (should time out after 0.5 s)")
        assert all(isinstance(o, asyncio.TimeoutError) for o in outcomes), (
            f"waiters on an exhausted pool should time out after `timeout`; got {outcomes!r}"
        )
        statuses = {lab.map_db_error(o)[0] for o in outcomes}
        assert statuses == {503}, f"an exhausted pool is a 503 (busy), got {statuses}"
        assert bounded.borrowers == 2, (
            f"after the waiters timed out only the 2 holders should count as borrowers, got {bounded.borrowers}"
        )
    finally:
        for conn in held:
            await bounded.release(conn)
    assert bounded.borrowers == 0 and drills.in_use(pool) == 0, "release() should give every connection back"
    async with bounded.connection() as conn:
        assert await conn.fetchval("SELECT 1") == 1, "the pool should serve again once the holders are done"


async def test_max_waiting_holds_when_borrowers_arrive_together_and_zero_means_no_limit(lab, make_pool):
    pool = await make_pool(max_size=1)
    bounded = lab.BoundedPool(pool, max_waiting=2, timeout=10)
    held = await hold_all(bounded, 1)
    arrivals = [asyncio.ensure_future(bounded.acquire()) for _ in range(10)]  # all in the same loop turn
    await asyncio.sleep(0.2)
    refused = [t for t in arrivals if t.done() and isinstance(t.exception(), lab.TooManyWaitersError)]
    assert len(refused) == 8 and bounded.waiting == 2, (
        f"10 borrowers arriving together at an exhausted pool with max_waiting=2: expected 2 waiting and 8 "
        f"refused at once, got {bounded.waiting} waiting and {len(refused)} refused. Check and count with no "
        "await in between, and refuse when `waiting >= max_waiting` (not `>`)"
    )
    assert "2" in str(refused[0].exception()), "TooManyWaitersError should name the max_waiting limit"
    await bounded.release(held[0])
    for task in arrivals:
        if task not in refused:
            await bounded.release(await within(task, 10, "a waiter, once the connection is free"))
    assert bounded.borrowers == 0

    unlimited = lab.BoundedPool(pool, max_waiting=0, timeout=10)
    held = await hold_all(unlimited, 1)
    waiters = [asyncio.ensure_future(unlimited.acquire()) for _ in range(5)]
    await asyncio.sleep(0.2)
    early = [t.exception() for t in waiters if t.done()]
    assert not early and unlimited.waiting == 5, (
        f"max_waiting=0 means no limit (psycopg_pool's meaning): 5 borrowers should wait, got "
        f"{unlimited.waiting} waiting and {early!r}"
    )
    await unlimited.release(held[0])
    for task in waiters:
        await unlimited.release(await within(task, 10, "a waiter of the unlimited queue"))
    assert unlimited.borrowers == 0 and drills.in_use(pool) == 0


async def test_a_double_or_foreign_release_does_not_widen_the_limit(lab, make_pool):
    pool = await make_pool(max_size=1)
    other = await make_pool(max_size=1)
    bounded = lab.BoundedPool(pool, max_waiting=1, timeout=10)
    conn = await within(bounded.acquire(), 10, "BoundedPool.acquire()")
    await within(bounded.release(conn), 10, "release()")
    await within(bounded.release(conn), 10, "a second release() of the same connection")
    assert bounded.borrowers == 0, (
        f"a second release() of the same connection moved borrowers to {bounded.borrowers}: count a "
        "connection back only once, and only one this BoundedPool lent"
    )
    direct = await within(pool.acquire(), 10, "pool.acquire()")  # borrowed around the BoundedPool
    await within(bounded.release(direct), 10, "release() of a connection borrowed from the pool itself")
    foreign = await within(other.acquire(), 10, "another pool's acquire()")
    with pytest.raises(asyncpg.InterfaceError):  # asyncpg refuses another pool's connection
        await within(bounded.release(foreign), 10, "release() of another pool's connection")
    await other.release(foreign)
    assert bounded.borrowers == 0, f"releasing connections it never lent moved borrowers to {bounded.borrowers}"

    held = await hold_all(bounded, 1)
    waiter = asyncio.ensure_future(bounded.acquire())
    await asyncio.sleep(0.05)
    with pytest.raises(lab.TooManyWaitersError):
        await within(bounded.acquire(), 1, "the borrower beyond max_waiting=1")
    await bounded.release(held[0])
    await bounded.release(await within(waiter, 10, "the waiter"))


async def test_a_release_cancelled_midway_still_counts_the_borrower_out(lab, make_pool):
    resetting = asyncio.Event()

    async def slow_reset(conn) -> None:  # the release takes a while: room to cancel it
        resetting.set()
        await asyncio.sleep(0.3)

    pool = await make_pool(max_size=1, reset=slow_reset)
    bounded = lab.BoundedPool(pool, max_waiting=1, timeout=10)

    async def borrower() -> None:
        async with bounded.connection() as conn:
            await conn.fetchval("SELECT 1")

    task = asyncio.ensure_future(borrower())
    await within(resetting.wait(), 10, "the borrower's release() (the pool's reset hook never ran)")
    task.cancel()
    await within(asyncio.wait([task]), 10, "the cancelled borrower")

    async def back() -> bool:
        return drills.in_use(pool) == 0

    await eventually(back, 10, "a release cancelled midway should still give the connection back")
    assert bounded.borrowers == 0, (
        f"a release cancelled midway left borrowers at {bounded.borrowers}: count the borrower out in "
        "`finally:`, whatever happens to the await"
    )


async def test_bounded_pool_also_wraps_the_lab01_database_pool(lab, load_solution, dsn, app_name):
    db = load_solution("lab01_database_pool").DatabasePool()
    await within(db.initialize(dsn, min_size=1, max_size=2, application_name=app_name), 15, "initialize()")
    try:
        bounded = lab.BoundedPool(db, max_waiting=1, timeout=2, max_size=2)
        async with bounded.connection() as first, bounded.connection() as second:
            assert drills.in_use(db) == 2 and first is not second
            waiter = asyncio.ensure_future(bounded.acquire())
            await asyncio.sleep(0.05)
            with pytest.raises(lab.TooManyWaitersError):
                await within(bounded.acquire(), 0.5, "the borrower beyond max_waiting")
        conn = await within(waiter, 5, "the waiter, once a connection is free")
        await bounded.release(conn)
        assert drills.in_use(db) == 0 and bounded.borrowers == 0, "every connection should be back"
    finally:
        db.pool.terminate()


# -- resilient_fetch ------------------------------------------------------------
async def test_resilient_fetch_waits_out_an_outage_and_fails_fast_on_real_errors(lab, dsn, make_pool):
    refusals = 0

    async def flaky_connect(*args, **kwargs):
        nonlocal refusals
        if refusals < 3:  # the server is "down" for the first three attempts
            refusals += 1
            raise ConnectionRefusedError("connection refused")
        return await asyncpg.connect(*args, **kwargs)

    pool = await make_pool(max_size=2, connect=flaky_connect)
    rows = await within(lab.resilient_fetch(pool, "SELECT 42 AS answer", deadline=15), 20, "resilient_fetch()")
    assert rows[0]["answer"] == 42 and refusals == 3, "resilient_fetch should retry refused connections"

    for _ in range(3):
        with pytest.raises(asyncpg.DivisionByZeroError):  # retrying a broken query cannot fix it
            await within(lab.resilient_fetch(pool, "SELECT 1/0", deadline=30), 5,
                         "resilient_fetch() on a query error (should raise at once, not retry until the deadline)")
    assert drills.in_use(pool) == 0, (
        f"after 3 failed queries {drills.in_use(pool)} connections are still borrowed: give the connection "
        "back in `finally:`, also when the query fails"
    )


async def test_resilient_fetch_gives_up_with_a_clear_error_after_the_deadline(lab, make_pool):
    dead = await make_pool(max_size=1, server_dsn=f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/app")
    loop = asyncio.get_running_loop()
    begin = loop.time()
    with pytest.raises(lab.DeadlineExceededError) as caught:
        await within(lab.resilient_fetch(dead, "SELECT 1", deadline=1.0), 10,
                     "resilient_fetch() against a server that stays down (deadline 1 s)")
    assert loop.time() - begin >= 0.9, "resilient_fetch gave up before its deadline: it should keep retrying"
    assert SECRET not in str(caught.value), "the error should not carry the connection string"
    assert isinstance(caught.value.__cause__, OSError), (
        f"DeadlineExceededError should be chained to the last failure (`raise ... from last`), "
        f"its __cause__ is {caught.value.__cause__!r}"
    )
    assert lab.map_db_error(caught.value)[0] == 503


async def test_the_deadline_bounds_the_acquire_and_the_query_too(lab, make_pool):
    pool = await make_pool(max_size=1)
    held = await within(pool.acquire(), 10, "pool.acquire()")
    try:
        with pytest.raises(lab.DeadlineExceededError) as caught:
            await within(lab.resilient_fetch(pool, "SELECT 1", deadline=0.5), 5,
                         "resilient_fetch(deadline=0.5) while the only connection is held (bound the acquire)")
        assert isinstance(caught.value.__cause__, asyncio.TimeoutError), (
            f"the last failure should be the acquire's timeout, got {caught.value.__cause__!r}"
        )
    finally:
        await pool.release(held)

    with pytest.raises(lab.QueryTimeoutError) as slow:
        await within(lab.resilient_fetch(pool, "SELECT pg_sleep(10)", deadline=0.5), 5,
                     "resilient_fetch('SELECT pg_sleep(10)', deadline=0.5) (pass the time left to fetch's timeout)")
    assert lab.map_db_error(slow.value)[0] == 504, "a query still running at the deadline is a 504"

    async def back() -> bool:
        return drills.in_use(pool) == 0

    await eventually(back, 10, "the connection of the timed-out query should go back to the pool")
    assert await within(pool.fetchval("SELECT 1"), 10, "a query after the timeout") == 1


async def test_backoff_neither_hammers_a_down_server_nor_sleeps_the_whole_deadline(lab, make_pool):
    attempts = 0

    async def refused(*args, **kwargs):
        nonlocal attempts
        attempts += 1
        raise ConnectionRefusedError("connection refused")

    pool = await make_pool(max_size=1, connect=refused)
    with pytest.raises(lab.DeadlineExceededError):
        await within(lab.resilient_fetch(pool, "SELECT 1", deadline=1.0, base_delay=0.05), 10,
                     "resilient_fetch() against a server that refuses every connection")
    assert attempts >= 3, (
        f"only {attempts} connection attempts in a 1 s deadline: start with a short delay (base_delay) "
        "and let it grow, rather than sleeping most of the deadline at once"
    )
    assert attempts <= 12, (
        f"{attempts} connection attempts in a 1 s deadline: sleep a growing (doubling), jittered delay "
        "between attempts; a tight or constant loop hammers a server that is starting up"
    )


class FlakyPool:
    """Any pool, for resilient_fetch's schedule: refuses `refusals` connects and resets `resets`
    queries (both OSErrors, transient), then answers; records the time and `timeout=` of each call."""

    def __init__(self, refusals: int = 10**6, resets: int = 0, late: bool = False) -> None:
        self.refusals, self.resets, self.late = refusals, resets, late  # late: lends just after its timeout
        self.calls: list[tuple[str, float, float | None]] = []  # ("acquire" or "fetch", loop time, timeout)

    async def acquire(self, timeout: float | None = None) -> FlakyPool:
        self.calls.append(("acquire", asyncio.get_running_loop().time(), timeout))
        if self.refusals:
            self.refusals -= 1
            raise ConnectionRefusedError("connection refused")
        if self.late and timeout is not None:
            await asyncio.sleep(timeout + 0.02)
        return self  # the connection too: it only needs fetch()

    async def fetch(self, query: str, *args, timeout: float | None = None) -> list[dict]:
        self.calls.append(("fetch", asyncio.get_running_loop().time(), timeout))
        if self.resets:
            self.resets -= 1
            raise ConnectionResetError("connection reset by peer")
        return [{"answer": 42}]

    async def release(self, conn) -> None:
        pass


def check_schedule(pool: FlakyPool, sleeps, start: float, deadline: float, base_delay: float) -> None:
    """Every timeout= is the time left, every sleep between half and all of min(base_delay * 2**n, 1 s, time left)."""
    first = pool.calls[0][1]

    def time_left(at: float) -> tuple[float, float]:  # the deadline starts between `start` and the first call
        return deadline - (at - start), deadline - (at - first)

    for what, at, timeout in pool.calls:
        least, most = time_left(at)
        assert timeout is not None and least - 1e-3 <= timeout <= max(most, 0.001) + 1e-3, (
            f"{what}(timeout={timeout}) was called with {most:.3f} s left of deadline={deadline:g}: pass the "
            "time left as each timeout= (`give_up - loop.time()`), for the acquire and the fetch alike"
        )
    check_backoff(sleeps, start, first, deadline, base_delay)


async def test_retries_pass_the_time_left_as_timeout_and_sleep_a_doubling_jittered_delay(lab, monkeypatch):
    loop = asyncio.get_running_loop()
    sleeps = record_sleeps(lab.__name__, monkeypatch)
    # The jitter at its two ends (a lab drawing it another way keeps its own randomness): the
    # lowest draw shows a delay halved too far, the highest one a cap or a doubling too large.
    for end, deadline, base_delay in ((min, 1.5, 0.1), (max, 3.0, 0.2)):
        monkeypatch.setattr(random, "uniform", lambda a, b, end=end: end(a, b))
        sleeps.clear()
        pool, start = FlakyPool(), loop.time()
        with pytest.raises(lab.DeadlineExceededError):
            await within(lab.resilient_fetch(pool, "SELECT 1", deadline=deadline, base_delay=base_delay),
                         deadline + 10, f"resilient_fetch(deadline={deadline:g}) against a pool that always refuses")
        assert len(sleeps) == len(pool.calls) - 1, (
            f"{len(pool.calls)} attempts and {len(sleeps)} awaited asyncio.sleep() calls: sleep once between "
            "two attempts (and await the sleep)"
        )
        check_schedule(pool, sleeps, start, deadline, base_delay)
        if end is min:
            check_jittered(sleeps, start, deadline, base_delay, "clients that failed together")
    monkeypatch.undo()
    sleeps = record_sleeps(lab.__name__, monkeypatch)
    pool, start = FlakyPool(refusals=1, resets=2), loop.time()  # at most 0.7 s of sleeps: the last query has < 1 s
    rows = await within(lab.resilient_fetch(pool, "SELECT 42 AS answer", deadline=1.2, base_delay=0.05), 10,
                        "resilient_fetch(deadline=1.2) over 1 refused connect and 2 reset queries")
    assert rows == [{"answer": 42}], f"resilient_fetch should return the rows of the attempt that worked, got {rows!r}"
    check_schedule(pool, sleeps, start, 1.2, 0.05)
    pool, start = FlakyPool(refusals=0, late=True), loop.time()  # the query starts after the deadline
    await within(lab.resilient_fetch(pool, "SELECT 42 AS answer", deadline=0.1), 10,
                 "resilient_fetch(deadline=0.1) whose acquire lends a connection just after its timeout")
    check_schedule(pool, sleeps, start, 0.1, 0.05)


async def test_a_failure_after_the_query_succeeded_is_not_retried(lab, dsn, make_pool, table_name):
    armed, resets = False, 0

    async def reset_that_fails_once(conn) -> None:  # the server vanishes just after the query
        nonlocal armed, resets
        if armed:
            armed, resets = False, resets + 1
            raise ConnectionResetError("connection reset by peer")

    pool = await make_pool(max_size=1, reset=reset_that_fails_once)
    await within(pool.execute(f"CREATE TABLE {table_name} (id serial PRIMARY KEY, note text)"), 10, "CREATE TABLE")
    armed = True
    try:
        rows = await within(lab.resilient_fetch(
            pool, f"INSERT INTO {table_name} (note) VALUES ($1) RETURNING id", "once", deadline=10,
        ), 15, "resilient_fetch() whose release fails")
        stored = await pool.fetchval(f"SELECT count(*) FROM {table_name}")
    finally:
        armed = False
        await pool.execute(f"DROP TABLE {table_name}")
    assert resets == 1, "the drill's reset hook never ran: did resilient_fetch give the connection back?"
    assert stored == 1, (
        f"the INSERT ran {stored} times: the query succeeded and only giving the connection back failed; "
        "return the rows instead of retrying (the pool has already closed that connection)"
    )
    assert len(rows) == 1, f"resilient_fetch should return the INSERT's rows, got {rows!r}"


@pytest.mark.deadline(60)
async def test_terminating_every_backend_during_load_fails_no_request(lab, make_pool, dsn, app_name):
    pool = await make_pool(max_size=4, min_size=4)

    async def request(i: int) -> None:
        rows = await lab.resilient_fetch(pool, "SELECT $1::int AS i, pg_sleep(0.002)", i, deadline=15)
        assert rows[0]["i"] == i, "resilient_fetch returned the wrong rows"

    result = await within(drills.load(request, requests=300, concurrency=12,
                                      fault=lambda: terminate_backends(dsn, app_name)), 60, "the load")
    expect_no_errors(result.errors, "no request should fail when backends are terminated "
                     "(resilient_fetch should retry connection errors)")
    assert result.fault_result >= 1, "the drill should have terminated the pool's backends"
    assert result.ok_after_fault > 0, "requests after the terminations should succeed"


@pytest.mark.deadline(120)
async def test_server_restart_pool_recovers_and_no_committed_row_is_lost(lab, request, make_pool, app_name):
    lab.is_transient(ConnectionRefusedError())  # a skeleton fails here, before a server is started for nothing
    private_server = request.getfixturevalue("private_server")
    pool = await make_pool(max_size=4, min_size=4, server_dsn=private_server.dsn)
    table = f"drill_{app_name.replace('-', '_')[-6:]}"
    await within(pool.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)"), 10, "CREATE TABLE")
    committed: set[int] = set()

    async def write(i: int) -> None:
        # Idempotent: a retry after a lost reply finds the row already there.
        await lab.resilient_fetch(pool, f"INSERT INTO {table} VALUES ($1) ON CONFLICT DO NOTHING", i, deadline=20)
        committed.add(i)

    result = await within(drills.load(write, requests=200, concurrency=8, fault=private_server.restart),
                          90, "the load during a server restart")
    print(f"restart drill: {result}; server restart took {result.fault_result:.2f} s")
    expect_no_errors(result.errors, "no request should fail across a restart "
                     "(resilient_fetch should retry until the server is back)")
    assert result.ok_after_fault > 0, "the pool should serve requests after the restart"
    stored = {row["id"] for row in await lab.resilient_fetch(pool, f"SELECT id FROM {table}", deadline=20)}
    assert committed <= stored, f"{len(committed - stored)} acknowledged rows are missing after the restart"
    await pool.execute(f"DROP TABLE {table}")


# -- cancellation ---------------------------------------------------------------
@pytest.mark.deadline(90)
async def test_cancelled_borrowers_never_leak_or_share_a_connection(lab, make_pool):
    pool = await make_pool(max_size=5, min_size=5)  # warm: cancellations land mid-query too, not only while connecting
    bounded = lab.BoundedPool(pool, max_waiting=2000, timeout=30)

    async def borrower() -> None:
        async with bounded.connection() as conn:
            await conn.fetchval("SELECT pg_sleep(0.003)")

    storm = await within(drills.cancel_storm(borrower, n=1000, within=0.5, seed=11), 60,
                         "1,000 borrowers cancelled at random moments")
    print(f"cancellation storm: {storm}")
    expect_no_errors(storm.errors, f"cancelled borrowers should only raise CancelledError ({storm})")

    async def all_returned() -> bool:
        return drills.in_use(pool) == 0

    await eventually(all_returned, 10, f"after the storm ({storm}) every connection should be back (in_use 0)")
    assert bounded.borrowers == 0 and bounded.waiting == 0, (
        f"after the storm BoundedPool still counts {bounded.borrowers} borrowers: decrement the count when a "
        "waiter is cancelled or times out, and in release()"
    )

    async def request(i: int) -> None:
        async with bounded.connection(timeout=10) as conn:
            assert await conn.fetchval("SELECT $1::int", i) == i

    after = await within(drills.load(request, requests=200, concurrency=20), 30, "borrowers after the storm")
    expect_no_errors(after.errors, "borrowers after the storm got broken connections (a connection "
                     "cancelled mid-query must not be handed to the next borrower)")
