"""Checks for lab 15: four production pools configured to one set of requirements.

Each check runs one drill of `pglab.pool_drills` against the learner's configuration
of each pool, on the real server, and asserts what the requirements demand. The
behaviours follow the peers' own tests: asyncpg tests/test_pool.py (timeouts,
release in a transaction), psycopg tests/pool/test_pool_async.py (check, max_lifetime,
reconnect), SQLAlchemy test/engine/test_pool.py (pool_timeout, pre-ping, recycle).
"""

from __future__ import annotations

import asyncio

import pytest

from pglab import pool_drills
from pglab.drills import PrivateServer, private_server_unavailable
from pglab.servers import pgbouncer
from pglab.testing import within

MODULE = "lab15_production_pools"
KINDS = ["asyncpg", "psycopg", "sqlalchemy", "lab09"]


async def open_pool(lab, load_solution, kind: str, dsn: str, **requirements):
    req = lab.Requirements(**{"min_size": 1, "max_size": 3, "acquire_timeout": 0.5, **requirements})
    opener = {"asyncpg": lab.open_asyncpg, "psycopg": lab.open_psycopg, "sqlalchemy": lab.open_sqlalchemy}
    if kind == "lab09":
        opened = lab.open_course_pool(dsn, req, load_solution("lab09_connection_pool"))
    else:
        opened = opener[kind](dsn, req)
    pool = await within(opened, 20, f"open_{kind}()")
    assert isinstance(pool, lab.Opened), f"open_{kind}() should return an Opened, got {type(pool).__name__}"
    return pool, req


@pytest.fixture
async def opened(request, lab, load_solution, dsn):
    pools = []

    async def make(kind: str, server_dsn: str = dsn, **requirements):
        pool, req = await open_pool(lab, load_solution, kind, server_dsn, **requirements)
        pools.append(pool)
        return pool, req

    yield make
    for pool in pools:
        await asyncio.wait_for(pool.close(), 10)


@pytest.mark.parametrize("kind", KINDS)
async def test_each_pool_serves_a_query(opened, kind):
    pool, _ = await opened(kind)
    async with pool.borrow() as conn:
        assert await within(pool.scalar(conn, "SELECT 41 + 1"), 5, "a query") == 42, \
            f"{pool.name}: `scalar(conn, 'SELECT 41 + 1')` should return 42"


@pytest.mark.deadline(40)
@pytest.mark.parametrize("kind", KINDS)
async def test_an_exhausted_pool_says_no_within_the_acquire_timeout(opened, kind):
    pool, req = await opened(kind)
    outcome = await within(pool_drills.exhausted(pool, req.max_size, req.acquire_timeout), 30, "the drill")
    assert outcome.ok, (f"{pool.name}, max_size={req.max_size}, acquire_timeout={req.acquire_timeout}: "
                        f"{outcome.detail}. Set the size limit and the acquire timeout (for asyncpg: "
                        "pass it to every acquire)")


@pytest.mark.deadline(40)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_backend_killed_while_idle_is_never_lent(opened, kind, dsn):
    pool, _ = await opened(kind)
    outcome = await within(pool_drills.killed_while_idle(pool, dsn), 30, "the drill")
    assert outcome.ok, f"{pool.name}: {outcome.detail}: validate connections at checkout (check / pre-ping)"


@pytest.mark.deadline(40)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_connection_returned_in_a_transaction_is_cleaned(opened, kind, dsn):
    pool, _ = await opened(kind)
    outcome = await within(pool_drills.returned_in_transaction(pool, dsn), 30, "the drill")
    assert outcome.ok, f"{pool.name}: {outcome.detail}"


@pytest.mark.deadline(60)
@pytest.mark.parametrize("kind", KINDS)
async def test_1000_cancellations_leak_no_connection(opened, kind):
    pool, req = await opened(kind)
    outcome = await within(pool_drills.cancellations(pool, req.max_size), 60, "the drill")
    assert outcome.ok, f"{pool.name}: {outcome.detail}"


@pytest.mark.deadline(40)
@pytest.mark.parametrize("kind", ["psycopg", "sqlalchemy", "lab09"])  # asyncpg has no lifetime setting
async def test_connections_are_recycled_after_max_lifetime(opened, kind):
    pool, req = await opened(kind, max_lifetime=1.0)
    outcome = await within(pool_drills.recycled(pool, req.max_lifetime), 30, "the drill")
    assert outcome.ok, f"{pool.name}, max_lifetime={req.max_lifetime}: {outcome.detail}"


@pytest.fixture(scope="module")
def private_server():
    if reason := private_server_unavailable():
        pytest.skip(reason)
    with PrivateServer() as server:
        yield server


@pytest.mark.deadline(90)
@pytest.mark.parametrize("kind", KINDS)
async def test_each_pool_recovers_from_a_server_restart(opened, kind, private_server):
    pool, _ = await opened(kind, private_server.dsn)
    outcome = await within(pool_drills.server_restart(pool, private_server.restart), 60, "the drill")
    assert outcome.ok, f"{pool.name}: {outcome.detail}"


@pytest.fixture(scope="module")
def bouncer_dsn(dsn):
    if reason := pgbouncer.unavailable_reason():
        pytest.skip(reason)
    try:
        return pgbouncer.ensure_pgbouncer(dsn)
    except pgbouncer.PgBouncerUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.mark.pgbouncer
@pytest.mark.deadline(90)
@pytest.mark.parametrize("kind", KINDS)
async def test_each_pool_works_through_transaction_mode_pgbouncer(opened, kind, bouncer_dsn):
    # A generous acquire timeout: 200 queries queue for 3 connections, and this check is about
    # prepared statements, not speed.
    pool, _ = await opened(kind, bouncer_dsn, behind_pgbouncer=True, acquire_timeout=30.0)
    failures: list[BaseException] = []

    async def query(i: int) -> None:
        try:  # one statement, again and again: what a driver prepares and caches
            async with pool.borrow() as conn:
                assert await pool.scalar(conn, "SELECT 42") == 42
        except Exception as exc:  # noqa: BLE001 - counted below
            failures.append(exc)

    await within(asyncio.gather(*(query(i) for i in range(200))), 60, "200 queries through PgBouncer")
    assert not failures, (f"{pool.name} behind PgBouncer (transaction mode, no prepared statements): "
                          f"{len(failures)} of 200 queries failed, first: {failures[0]!r}. "
                          "Turn the statement caches off when behind_pgbouncer")
