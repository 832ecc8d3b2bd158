"""Checks for lab 11: failure drills against the real server.

The restart drill stops a server, so it runs on a private embedded server of its
own (module fixture), never on the shared one.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from pglab import drills
from pglab.backends import terminate_backends
from pglab.servers.embedded import free_port
from pglab.testing import eventually, within

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
def private_server(tmp_path_factory):
    """A server of this module's own, so the restart drill never touches the shared one."""
    if reason := drills.private_server_unavailable():
        print(f"restart drill skipped: {reason}")
        pytest.skip(reason)
    with drills.PrivateServer(tmp_path_factory.mktemp("drill-server")) as server:
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


async def test_map_db_error_gives_the_status_and_never_leaks_details(lab, dsn, table_name):
    errors = await real_errors(dsn, table_name)
    expected = {
        "unique": 409,
        "statement timeout": 504,
        "bad SQL": 500,
        "server down": 503,
    }
    synthetic = {
        "exhausted pool (acquire timed out)": (asyncio.TimeoutError(), 503),
        "too many waiters": (lab.TooManyWaitersError("queue full"), 503),
        "resilient_fetch gave up": (lab.DeadlineExceededError("gave up"), 503),
        "terminated backend": (asyncpg.AdminShutdownError("terminating connection due to administrator command"), 503),
        "server starting up": (asyncpg.CannotConnectNowError("the database system is starting up"), 503),
        "connection lost": (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), 503),
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


async def test_saturated_pool_answers_503_within_the_timeout_not_a_hang(lab, make_pool):
    pool = await make_pool(max_size=2)
    bounded = lab.BoundedPool(pool, max_waiting=3, timeout=0.5)
    held = [await within(bounded.acquire(), 10, "BoundedPool.acquire() on a free pool") for _ in range(2)]
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

    with pytest.raises(asyncpg.DivisionByZeroError):  # retrying a broken query cannot fix it
        await within(lab.resilient_fetch(pool, "SELECT 1/0", deadline=30), 5,
                     "resilient_fetch() on a query error (should raise at once, not retry until the deadline)")


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


async def test_resilient_fetch_gives_up_with_a_clear_error_after_the_deadline(lab, make_pool):
    dead = await make_pool(max_size=1, server_dsn=f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/app")
    loop = asyncio.get_running_loop()
    begin = loop.time()
    with pytest.raises(lab.DeadlineExceededError) as caught:
        await within(lab.resilient_fetch(dead, "SELECT 1", deadline=1.0), 10,
                     "resilient_fetch() against a server that stays down (deadline 1 s)")
    assert loop.time() - begin >= 0.9, "resilient_fetch gave up before its deadline: it should keep retrying"
    assert SECRET not in str(caught.value), "the error should not carry the connection string"
    assert lab.map_db_error(caught.value)[0] == 503


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
