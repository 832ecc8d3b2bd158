"""Checks for lab 13: read replicas, read-your-writes, recovery conflicts and failover.

Everything runs on a private primary + synchronous standby of this module's own
(`pglab.servers.replica.ReplicaPair`): the failover drill stops the primary and
promotes the standby, so it comes last, and the shared course server is never touched.
"""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import asyncpg
import pytest

from pglab import drills
from pglab.servers.replica import ReplicaPair
from pglab.testing import check_backoff, check_jittered, eventually, record_sleeps, within

MODULE = "lab13_replicas_failover"
POOL = {"min_size": 0, "max_size": 4}


@pytest.fixture(scope="module")
def pair():
    """A private primary with a synchronous standby, removed after the module."""
    if reason := drills.private_server_unavailable():
        pytest.skip(reason)
    with ReplicaPair(synchronous=True) as pair:  # own temporary folder: pytest may prune its tmp dirs
        yield pair


@asynccontextmanager
async def connect(dsn: str):
    conn = await within(asyncpg.connect(dsn), 15, "connect")
    try:
        yield conn
    finally:
        conn.terminate()


@asynccontextmanager
async def replay_paused(pair):
    """Stop the standby replaying WAL (it still receives it), so it lags on purpose."""
    async with connect(pair.standby_dsn) as standby:
        await standby.execute("SELECT pg_wal_replay_pause()")
        try:
            yield
        finally:
            await standby.execute("SELECT pg_wal_replay_resume()")


@asynccontextmanager
async def router(lab, pair, **options):
    r = lab.ReplicaRouter(pair.primary_dsn, pair.standby_dsn, **options, **POOL)
    await within(r.open(), 20, "ReplicaRouter.open()")
    try:
        yield r
    finally:
        await within(r.close(), 20, "ReplicaRouter.close()")


async def make_table(pair, name: str) -> None:
    async with connect(pair.primary_dsn) as conn:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {name} (id int PRIMARY KEY, note text)")
    async with connect(pair.standby_dsn) as standby:
        async def visible() -> bool:
            return bool(await standby.fetchval("SELECT to_regclass($1) IS NOT NULL", name))

        await eventually(visible, 20, f"table {name} never reached the standby (is replication running?)")


# -- multi-host DSNs and target_session_attrs -------------------------------------
def test_multi_host_dsn_names_every_host_in_order(lab):
    # A standby's DSN may name only its host: user, password and database come from the first.
    dsn = lab.multi_host_dsn(["postgresql://app:p%40ss@10.0.0.1:5433/shop", "postgresql://10.0.0.2:5434",
                              "postgresql://10.0.0.3"], "read-write")
    parts = urlsplit(dsn)
    assert parts.netloc == "app:p%40ss@10.0.0.1:5433,10.0.0.2:5434,10.0.0.3:5432", (
        f"expected every host with its port (5432 where none is given), in order, after the credentials; "
        f"got {parts.netloc!r}")
    assert parts.path == "/shop" and parts.query == "target_session_attrs=read-write", (
        f"expected the database and ?target_session_attrs=read-write; got path {parts.path!r}, query {parts.query!r}")


def test_multi_host_dsn_rejects_what_asyncpg_cannot_use(lab):
    for bad in ("master", "read_write", ""):
        with pytest.raises(ValueError, match="target_session_attrs"):
            lab.multi_host_dsn(["postgresql://a:b@h:1/d"], bad)
    with pytest.raises(ValueError):
        lab.multi_host_dsn([], "read-write")


async def test_a_pool_on_the_multi_host_dsn_finds_the_primary_among_hosts(lab, pair):
    # The standby comes first: only target_session_attrs makes the pool skip it.
    for attrs, in_recovery in (("read-write", False), ("primary", False), ("prefer-standby", True)):
        dsn = lab.multi_host_dsn([pair.standby_dsn, pair.primary_dsn], attrs)
        async with connect(dsn) as conn:
            got = await conn.fetchval("SELECT pg_is_in_recovery()")
        server = "the standby" if got else "the primary"
        assert got is in_recovery, (f"with target_session_attrs={attrs} and hosts [standby, primary] asyncpg "
                                    f"reached {server}; does the DSN carry the attribute and every host:port?")


# -- routing and lag ----------------------------------------------------------------
async def test_router_writes_on_the_primary_and_reads_on_the_standby(lab, pair, table_name, app_name):
    await make_table(pair, table_name)
    async with router(lab, pair, server_settings={"application_name": app_name}) as r:
        lsn = await within(r.write(f"INSERT INTO {table_name} VALUES (1, 'routed')"), 10, "ReplicaRouter.write()")
        assert isinstance(lsn, str) and "/" in lsn, f"write() should return the LSN as text like '0/3000148': {lsn!r}"
        rows = await within(r.read("SELECT pg_is_in_recovery() AS standby"), 10, "ReplicaRouter.read()")
        assert rows[0]["standby"] is True, "read() without `after` should run on the standby, it ran on the primary"
        async with connect(pair.primary_dsn) as primary:
            assert await primary.fetchval(f"SELECT note FROM {table_name} WHERE id = 1") == "routed", (
                "write() did not write the row on the primary")
    for server, dsn in (("primary", pair.primary_dsn), ("standby", pair.standby_dsn)):
        async with connect(dsn) as conn:
            async def closed() -> bool:
                return not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                                               app_name)

            await eventually(closed, 10, f"after ReplicaRouter.close() the router's connections to the {server} "
                                         "should be gone: close (await) both pools")


async def test_replay_lag_counts_the_wal_bytes_the_standby_has_not_replayed(lab, pair, table_name):
    await make_table(pair, table_name)
    async with connect(pair.primary_dsn) as primary, connect(pair.standby_dsn) as standby:
        async def caught_up() -> bool:
            return await within(lab.replay_lag_bytes(primary, standby), 10, "replay_lag_bytes()") == 0

        await eventually(caught_up, 20, "replay_lag_bytes() should reach 0 on a quiet, caught-up pair")
        async with replay_paused(pair):
            await primary.execute(f"INSERT INTO {table_name} SELECT g, repeat('x', 100) FROM generate_series(1, 500) g")
            lag = await within(lab.replay_lag_bytes(primary, standby), 10, "replay_lag_bytes()")
            assert isinstance(lag, int), f"replay_lag_bytes() should return an int (bytes), got {type(lag).__name__}"
            assert lag > 10_000, (
                f"the standby received ~60 kB of WAL but has not replayed it (replay paused), yet the lag is {lag} "
                "bytes; measure pg_current_wal_lsn() on the primary minus pg_last_wal_replay_lsn() on the standby "
                "(the receive LSN does not say what a reader can see)")
        await eventually(caught_up, 20, "after replay resumes, replay_lag_bytes() should fall back to 0")


class WritesInBetween:
    """The primary's connection, except that after each query of replay_lag_bytes() more WAL is
    written and replayed: as on a busy primary, the standby is then past the position it was given."""

    def __init__(self, conn: asyncpg.Connection, standby: asyncpg.Connection, table: str) -> None:
        self._conn, self._standby, self._table = conn, standby, table

    def __getattr__(self, name: str):
        method = getattr(self._conn, name)

        async def then_write(*args, **kwargs):
            result = await method(*args, **kwargs)
            await self._conn.execute(f"INSERT INTO {self._table} SELECT coalesce(max(id), 0) + 1 FROM {self._table}")
            written = await self._conn.fetchval("SELECT pg_current_wal_lsn()::text")

            async def replayed() -> bool:
                return bool(await self._standby.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                                                         written))

            await eventually(replayed, 20, "the standby never replayed the primary's last write")
            return result

        return then_write


async def test_replay_lag_is_zero_not_negative_when_the_standby_is_past_the_primary_position(lab, pair, table_name):
    await make_table(pair, table_name)
    async with connect(pair.primary_dsn) as primary, connect(pair.standby_dsn) as standby:
        lag = await within(lab.replay_lag_bytes(WritesInBetween(primary, standby, table_name), standby), 30,
                           "replay_lag_bytes() while the primary keeps writing")
    assert lag == 0, (
        f"the standby had replayed past the primary's position by the time it was asked, and the lag came out "
        f"{lag}: writes land between your two queries on a busy primary. Nothing is missing then: report 0, "
        "never a negative lag")


async def test_a_read_after_a_write_waits_for_the_standby_to_replay_it(lab, pair, table_name):
    await make_table(pair, table_name)
    async with router(lab, pair, max_wait=10.0) as r:
        async with replay_paused(pair):
            lsn = await within(r.write(f"INSERT INTO {table_name} VALUES (2, 'mine')"), 10, "write()")
            read = asyncio.ensure_future(r.read(f"SELECT note FROM {table_name} WHERE id = 2", after=lsn))
            await asyncio.sleep(0.3)  # the read must be waiting now: its row is not replayed yet
            if read.done() and read.exception() is not None:
                raise read.exception()
            assert not read.done(), (
                f"read(after=lsn) returned {read.result()} while the standby had not replayed the write yet: "
                "it must wait until pg_last_wal_replay_lsn() >= lsn (or max_wait passes)")
        rows = await within(read, 15, "read(after=lsn) once replay resumed")
        assert [row["note"] for row in rows] == ["mine"], f"read(after=lsn) should see its own write, got {rows}"
        assert r.fallbacks == 0, ("the standby caught up within max_wait, so the read should have been served there, "
                                  f"not by the primary (fallbacks={r.fallbacks})")
        lsn = await within(r.write(f"UPDATE {table_name} SET note = 'again' WHERE id = 2"), 10, "write()")
        rows = await within(r.read("SELECT pg_is_in_recovery() AS standby", after=lsn), 15, "read(after=lsn)")
        assert rows[0]["standby"] is True and r.fallbacks == 0, (
            "a read after a write the standby replays at once should run on the standby; is `>=` a `>`?")


async def test_a_read_falls_back_to_the_primary_past_max_wait(lab, pair, table_name):
    await make_table(pair, table_name)
    standby_port, on_standby = urlsplit(pair.standby_dsn).port, []

    async def log_standby_queries(conn: asyncpg.Connection) -> None:  # the pools' init: sees every query
        conn.add_query_logger(lambda q: on_standby.append(q.query) if q.conn_addr[1] == standby_port else None)

    async with router(lab, pair, max_wait=0.5, init=log_standby_queries) as r, replay_paused(pair):
        lsn = await within(r.write(f"INSERT INTO {table_name} VALUES (3, 'urgent')"), 10, "write()")
        on_standby.clear()
        rows = await within(r.read(f"SELECT note, pg_is_in_recovery() AS standby FROM {table_name} WHERE id = 3",
                                   after=lsn), 8, "read(after=lsn) with a stuck standby (should give up at max_wait)")
        assert [(row["note"], row["standby"]) for row in rows] == [("urgent", False)], (
            f"with the standby stuck, read(after=lsn) should fall back to the primary after max_wait; got {rows}")
        assert r.fallbacks == 1, f"one read fell back to the primary, fallbacks says {r.fallbacks}"
        assert 5 <= len(on_standby) <= 250, (
            f"the read asked the standby {len(on_standby)} times in its max_wait of 0.5 s: poll every 10 ms or so "
            "(await asyncio.sleep(0.01) between polls). Without the pause every waiting reader keeps a standby "
            "backend busy; one long sleep answers late once the standby catches up. "
            "(The pools get their options, init= included, from ReplicaRouter's **pool_options.)")


# -- what to retry ------------------------------------------------------------------
def test_is_transient_knows_failover_and_conflict_errors_from_bugs(lab):
    transient = [ConnectionRefusedError(111, "Connect call failed"),
                 asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
                 asyncpg.CannotConnectNowError("the database system is not yet accepting connections"),
                 asyncpg.TargetServerAttributeNotMatched("none of the hosts match the target attribute"),
                 asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
                 asyncpg.SerializationError("canceling statement due to conflict with recovery")]
    for exc in transient:
        assert lab.is_transient(exc) is True, f"{type(exc).__name__} ({exc}) is transient during a failover"
    for exc in (asyncpg.UniqueViolationError("duplicate key"), asyncpg.UndefinedTableError("no such table"),
                ValueError("bug"), asyncpg.InterfaceError("another operation is in progress")):
        assert lab.is_transient(exc) is False, f"{type(exc).__name__} is a bug or a conflict, retrying cannot fix it"


async def test_retry_retries_transient_errors_only_and_gives_up_at_the_deadline(lab):
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise asyncpg.ConnectionDoesNotExistError("connection was closed")
        return "ok"

    assert await within(lab.retry(flaky, deadline=10), 15, "retry(flaky)") == "ok" and len(calls) == 3

    async def broken() -> None:
        calls.append(1)
        raise asyncpg.UniqueViolationError("duplicate key")

    calls.clear()
    with pytest.raises(asyncpg.UniqueViolationError):
        await within(lab.retry(broken, deadline=10), 15, "retry(broken)")
    assert len(calls) == 1, f"a non-transient error must not be retried; it ran {len(calls)} times"

    async def down() -> None:
        calls.append(1)
        raise ConnectionRefusedError(111, "Connect call failed")

    calls.clear()
    with pytest.raises(ConnectionRefusedError):
        await within(lab.retry(down, deadline=0.5), 10, "retry() of a server that stays down (deadline 0.5 s)")
    assert len(calls) >= 2, "a transient error should be retried until the deadline"
    assert len(calls) <= 50, (f"retry() tried {len(calls)} times in 0.5 s: pause between attempts (a growing, "
                              "jittered delay), or every client hammers the server that is coming back")


async def test_retry_sleeps_a_doubling_jittered_delay_and_never_past_the_deadline(lab, monkeypatch):
    loop = asyncio.get_running_loop()
    sleeps, attempts = record_sleeps(lab.__name__, monkeypatch), []

    async def down() -> None:
        attempts.append(loop.time())
        raise ConnectionRefusedError(111, "Connect call failed")

    # The jitter at its two ends: the lowest draw shows a delay halved too far, the highest a cap
    # or a doubling too large. A lab drawing its jitter another way keeps its own randomness.
    for end, deadline, base_delay in ((min, 1.5, 0.1), (max, 3.0, 0.2)):
        monkeypatch.setattr(random, "uniform", lambda a, b, end=end: end(a, b))
        sleeps.clear(), attempts.clear()
        start = loop.time()
        with pytest.raises(ConnectionRefusedError):
            await within(lab.retry(down, deadline=deadline, base_delay=base_delay), deadline + 10,
                         f"retry(deadline={deadline:g}) of a server that stays down")
        assert len(sleeps) == len(attempts) - 1, (
            f"{len(attempts)} attempts and {len(sleeps)} awaited asyncio.sleep() calls: sleep once between "
            "two attempts (and await the sleep)")
        check_backoff(sleeps, start, attempts[0], deadline, base_delay)
        assert loop.time() - start <= deadline + 0.1, (
            f"retry(deadline={deadline:g}) gave up after {loop.time() - start:.2f} s: never sleep past the deadline")
        if end is min:
            check_jittered(sleeps, start, deadline, base_delay, "the clients a failover broke together")


async def test_retry_lets_cancellation_through(lab):
    async def slow() -> None:
        await asyncio.sleep(30)

    task = asyncio.ensure_future(lab.retry(slow, deadline=60))
    await asyncio.sleep(0.1)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    if done and not task.cancelled():
        task.result()  # an error of retry() itself, e.g. not implemented yet
    assert done and task.cancelled(), "cancelling a task in retry() must cancel it, not retry or swallow it"


# -- recovery conflicts --------------------------------------------------------------
async def test_a_recovery_conflict_on_the_standby_is_retried(lab, pair, table_name):
    await make_table(pair, table_name)
    attempts: list[str] = []
    async with connect(pair.standby_dsn) as standby, connect(pair.primary_dsn) as primary:
        async def long_read() -> int:
            attempts.append("try")
            return await standby.fetchval(f"SELECT count(*) FROM {table_name}, pg_sleep(1.5)")

        reading = asyncio.ensure_future(lab.retry(long_read, deadline=20))
        await asyncio.sleep(0.3)
        if reading.done():
            reading.result()  # retry() failed at once: show why
        assert attempts, "retry() did not run the read within 0.3 s"
        # An ACCESS EXCLUSIVE lock is replayed on the standby; after max_standby_streaming_delay (1 s
        # here) replay cancels the query holding a conflicting lock: SQLSTATE 40001.
        await primary.execute(f"BEGIN; LOCK TABLE {table_name} IN ACCESS EXCLUSIVE MODE; COMMIT")
        count = await within(reading, 25, "retry() of a read cancelled by a recovery conflict")
    assert count == 0 and len(attempts) >= 2, (
        f"the first read should have been cancelled by the conflict and retried (attempts: {len(attempts)})")


# -- the failover drill (last: it stops the primary and promotes the standby) ----------
async def test_failover_under_load_loses_no_committed_row_with_synchronous_replication(lab, pair, table_name):
    await make_table(pair, table_name)
    try:
        both = lab.multi_host_dsn([pair.primary_dsn, pair.standby_dsn], "read-write")
    except NotImplementedError as exc:  # reported without a traceback: the drill needs multi_host_dsn first
        pytest.fail(f"not implemented yet: {exc}", pytrace=False)
    pool = await within(asyncpg.create_pool(both, min_size=0, max_size=4, timeout=2), 20, "create_pool(multi_host_dsn)")
    acknowledged: dict[int, float] = {}
    fault_at: list[float] = []

    async def write(i: int) -> None:
        await lab.retry(lambda: pool.execute(f"INSERT INTO {table_name} VALUES ($1) ON CONFLICT DO NOTHING", i),
                        deadline=30)
        acknowledged[i] = time.monotonic()

    async def fail_over() -> None:
        await asyncio.to_thread(pair.stop_primary)  # like a crash: no shutdown checkpoint
        fault_at.append(time.monotonic())  # from here on, no write can succeed until the promotion
        await asyncio.to_thread(pair.standby.promote)

    try:
        drill = drills.load(write, requests=300, concurrency=8, fault=fail_over)
        result = await within(drill, 90, "the failover drill")
    finally:
        pool.terminate()
    failed = len(result.errors)
    if failed and isinstance(result.errors[0], NotImplementedError):
        pytest.fail(f"not implemented yet: {result.errors[0]}", pytrace=False)
    resumed = min((at for at in acknowledged.values() if at > fault_at[0]), default=None)
    assert failed == 0, (f"{failed} writes failed during the failover ({result.error_counts()}); retry() should "
                         "ride through it: connection errors and 'no host is writable' are transient")
    assert result.ok_after_fault > 0 and resumed is not None, "the pool never served writes after the failover"
    async with connect(pair.standby_dsn) as new_primary:
        stored = {row["id"] for row in await new_primary.fetch(f"SELECT id FROM {table_name}")}
    lost = sorted(set(acknowledged) - stored)
    print(f"failover: writes again after {resumed - fault_at[0]:.2f} s, {failed} failed, {len(lost)} lost "
          f"of {len(acknowledged)} acknowledged")
    assert not lost, f"{len(lost)} acknowledged rows are missing after a synchronous failover: {lost[:10]}"
