"""Checks for lab 02: PooledDatabase."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from pglab.testing import eventually, within

MODULE = "lab02_pooled_database"
HOSTILE = "'); DROP TABLE users; --"



@pytest.fixture
async def pool(load_solution, dsn, app_name):
    """Lab 01's reference DatabasePool (min 1, max 2), terminated afterwards."""
    pool = load_solution("lab01_database_pool").DatabasePool()
    await within(pool.initialize(dsn, min_size=1, max_size=2, application_name=app_name), 15, "initialize()")
    yield pool
    if pool.pool is not None:
        pool.pool.terminate()


@pytest.fixture
def db(lab, pool):
    return lab.PooledDatabase(pool)


@pytest.fixture
async def table(dsn, table_name):
    """A fresh `(id int primary key, name text)` table, dropped afterwards."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, name text NOT NULL)")
        yield table_name
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table_name}")
        await conn.close()


def in_use(pool) -> int:
    return pool.get_pool_stats()["in_use"]


async def test_connection_lends_a_connection_and_gives_it_back(db, pool):
    idle_before = pool.get_pool_stats()["idle"]
    async with db.connection() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        assert in_use(pool) == 1, "inside `async with db.connection()` one connection should be borrowed"
    stats = pool.get_pool_stats()
    assert stats["in_use"] == 0 and stats["idle"] == idle_before, (
        f"after the block the connection should be back in the pool (idle {idle_before}), got {stats}"
    )
    async with db.connection() as again:
        reused = await again.fetchval("SELECT pg_backend_pid()")
    assert reused == pid, (
        f"the next borrower got backend {reused}, not {pid}: give the connection back with "
        "pool.release(conn), do not close it"
    )


async def test_connection_honours_its_timeout(db, pool):
    held = [await within(pool.acquire(), 5, "acquire()") for _ in range(2)]  # all of max_size=2
    try:
        borrow = db.connection(timeout=0.2)
        try:
            await within(borrow.__aenter__(), 5, "entering `db.connection(timeout=0.2)` on an exhausted pool "
                                                 "(is the timeout passed on to pool.acquire?)")
        except asyncio.TimeoutError:
            pass
        else:
            await borrow.__aexit__(None, None, None)
            pytest.fail("db.connection(timeout=0.2) lent a connection although the pool was exhausted",
                        pytrace=False)
    finally:
        for conn in held:
            await pool.release(conn)


async def test_connection_is_given_back_after_an_exception(db, pool):
    idle_before = pool.get_pool_stats()["idle"]
    with pytest.raises(ZeroDivisionError):
        async with db.connection():
            1 / 0  # noqa: B018 - an error in the caller's code
    with pytest.raises(asyncpg.UndefinedTableError):
        await within(db.execute_query("SELECT * FROM no_such_table_pglab"), 5, "execute_query()")
    stats = pool.get_pool_stats()
    assert stats["in_use"] == 0 and stats["idle"] == idle_before, (
        f"after an exception the connection must go back to the pool (idle {idle_before}), got {stats}: "
        "release it in a `finally:` block (or use `async with pool.acquire()`), never only on success"
    )


async def test_connection_is_given_back_when_the_task_is_cancelled(db, pool):
    idle_before = pool.get_pool_stats()["idle"]
    borrowed = asyncio.Event()

    async def slow_request() -> None:
        async with db.connection() as conn:
            borrowed.set()
            await conn.execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(slow_request())
    waiter = asyncio.create_task(borrowed.wait())
    await asyncio.wait({task, waiter}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # raises what connection() raised
    assert borrowed.is_set(), "the task never got a connection from db.connection() within 5 s"
    await asyncio.sleep(0.1)  # let pg_sleep start on the server
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(task, 10, "the cancelled task")

    async def back() -> bool:
        return pool.get_pool_stats()["idle"] == idle_before

    await eventually(back, 5, f"after cancelling the task the pool's idle count should be back to {idle_before}"
                     f" ({pool.get_pool_stats()}): cancellation is an exception too, release in `finally:`")
    assert await within(db.execute_single("SELECT 1"), 5, "a query after the cancellation") == 1


async def test_execute_query_and_execute_single_bind_parameters(db, pool):
    rows = await within(db.execute_query("SELECT g AS n FROM generate_series(1, $1) AS g", 3), 5, "execute_query()")
    assert isinstance(rows, list), f"execute_query() should return a list of records, got {type(rows).__name__}"
    assert [row["n"] for row in rows] == [1, 2, 3], f"execute_query() should return every row, got {rows!r}"
    total = await within(db.execute_single("SELECT $1::int + $2::int AS total", 2, 3), 5, "execute_single()")
    assert type(total) is int and total == 5, (
        f"execute_single() should return the single value (5), got {total!r}: use fetchval, not fetchrow"
    )
    none = await within(db.execute_single("SELECT 1 WHERE false"), 5, "execute_single() with no rows")
    assert none is None, f"execute_single() should return None when there is no row, got {none!r}"
    assert in_use(pool) == 0, "every helper must give its connection back"


async def test_execute_transaction_runs_all_statements_in_one_transaction(db, pool, table):
    results = await within(db.execute_transaction([
        (f"INSERT INTO {table} VALUES ($1, $2) RETURNING id", (1, "a")),
        (f"INSERT INTO {table} VALUES ($1, $2) RETURNING id", [2, "b"]),
        ("SELECT pg_current_xact_id()::text AS xid", ()),
        ("SELECT pg_current_xact_id()::text AS xid", ()),
    ]), 10, "execute_transaction()")
    assert isinstance(results, list) and len(results) == 4, (
        f"execute_transaction() should return one list of rows per statement, got {results!r}"
    )
    assert [r[0]["id"] for r in results[:2]] == [1, 2], f"RETURNING rows are missing: {results[:2]!r}"
    assert results[2][0]["xid"] == results[3][0]["xid"], (
        "the statements ran in different transactions: run them all on one connection "
        "inside one `async with conn.transaction():`"
    )
    count = await within(db.execute_single(f"SELECT count(*) FROM {table}"), 5, "execute_single()")
    assert count == 2, f"the transaction's 2 rows should be committed, the table has {count}"
    assert in_use(pool) == 0, "execute_transaction() must give its connection back"


async def test_a_failing_statement_leaves_no_partial_rows(db, pool, table):
    idle_before = pool.get_pool_stats()["idle"]
    with pytest.raises(asyncpg.UniqueViolationError):
        await within(db.execute_transaction([
            (f"INSERT INTO {table} VALUES ($1, $2)", (1, "first")),
            (f"INSERT INTO {table} VALUES ($1, $2)", (2, "second")),
            (f"INSERT INTO {table} VALUES ($1, $2)", (1, "duplicate key")),
        ]), 10, "execute_transaction() with a failing statement")
    rows = await within(db.execute_query(f"SELECT id FROM {table}"), 5, "execute_query()")
    assert rows == [], (
        f"a failed transaction left {len(rows)} partial row(s): all statements must be rolled back together"
    )
    assert pool.get_pool_stats()["idle"] == idle_before, "the failed transaction did not give its connection back"


async def test_a_hostile_string_is_stored_literally(db, table):
    await within(db.execute_query(f"INSERT INTO {table} VALUES ($1, $2)", 1, HOSTILE), 5, "execute_query()")
    name = await within(db.execute_single(f"SELECT name FROM {table} WHERE name = $1", HOSTILE), 5,
                        "execute_single()")
    assert name == HOSTILE, f"the value should be stored exactly as given, got {name!r}: pass it as a $n parameter"
