"""Checks for lab 14: the connection budget of many worker processes, and timeouts as a system.

The budget checks run real worker processes against a private server of this
module's own (max_connections = 20, reserved_connections = 2, a role `app` with
CONNECTION LIMIT 12), so an overrun never touches the shared server. The timeout
checks set their timeouts per session (server_settings) on the course server, use a
freezable proxy (`pglab.proxy`) for the half-open connection, and a PgBouncer of their
own (one server connection, the budget's query_wait_timeout) for PgBouncer's queue; without
a `pgbouncer` binary that check is skipped with the reason, never silently.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time

import asyncpg
import pytest

from pglab import drills
from pglab.proxy import FreezableProxy
from pglab.servers import pgbouncer
from pglab.servers.dsn import build_dsn
from pglab.testing import hold_pgbouncer_server_connection, within

MODULE = "lab14_connection_budget"
MAX_CONNECTIONS, SUPERUSER_RESERVED, RESERVED, ROLE_LIMIT = 20, 3, 2, 12
WORKERS, SURGE = 2, 2  # a rolling deploy starts 2 new workers while the 2 old ones still run


class Budgeted:
    """The private server, its superuser DSN and the `app` role's DSN."""

    def __init__(self, server: drills.PrivateServer, app_dsn: str) -> None:
        self.server, self.admin_dsn, self.app_dsn = server, server.dsn, app_dsn

    def app_backends(self) -> int:
        """Backends of role `app` right now (psql: these checks are synchronous, as a deploy is)."""
        port = server_port(self.server)
        return int(self.server.embedded.psql(port, "pglab", "SELECT count(*) FROM pg_stat_activity"
                                                            " WHERE usename = 'app'").strip())

    def wait_no_app_backends(self, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while self.app_backends():
            if time.monotonic() > deadline:
                pytest.fail(f"role app still has {self.app_backends()} backends {seconds:g} s after Fleet.close(): "
                            "do the workers close their pools and exit?", pytrace=False)
            time.sleep(0.1)


def server_port(server: drills.PrivateServer) -> int:
    port = server.embedded.status().port
    assert port is not None
    return port


@pytest.fixture(scope="module")
def budgeted():
    """A private server with a small, known budget, and a non-superuser role `app` capped at 12."""
    if reason := drills.private_server_unavailable():
        pytest.skip(reason)
    with drills.PrivateServer() as server:  # own temporary folder: pytest may prune its tmp dirs
        port, password = server_port(server), secrets.token_urlsafe(12)
        for sql in (f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}",
                    f"ALTER SYSTEM SET superuser_reserved_connections = {SUPERUSER_RESERVED}",
                    f"ALTER SYSTEM SET reserved_connections = {RESERVED}",
                    f"CREATE ROLE app LOGIN PASSWORD '{password}' CONNECTION LIMIT {ROLE_LIMIT}"):
            server.embedded.psql(port, "pglab", sql)
        server.embedded.restart()  # max_connections needs a restart
        yield Budgeted(server, build_dsn("127.0.0.1", server_port(server), password, user="app"))


def process_exists(pid: int) -> bool:
    """Whether `pid` is still a process (running, or exited and not yet joined by its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def expect_reports(reports, workers: int, what: str) -> None:
    assert isinstance(reports, list) and len(reports) == workers, (
        f"{what}: Fleet.start() should return one WorkerReport per worker ({workers}), got {reports!r}")


# -- the budget ----------------------------------------------------------------------
async def test_read_budget_reports_the_slots_and_the_role_limit(lab, budgeted):
    conn = await within(asyncpg.connect(budgeted.admin_dsn), 15, "connect to the private server")
    try:
        got = await within(lab.read_budget(conn, "app"), 10, "read_budget(conn, 'app')")
        assert got == lab.ServerBudget(MAX_CONNECTIONS, SUPERUSER_RESERVED, RESERVED, ROLE_LIMIT), (
            f"the server has max_connections={MAX_CONNECTIONS}, superuser_reserved_connections={SUPERUSER_RESERVED}, "
            f"reserved_connections={RESERVED} and role app has CONNECTION LIMIT {ROLE_LIMIT}; read_budget gave {got}")
        unlimited = await within(lab.read_budget(conn, "pglab"), 10, "read_budget(conn, 'pglab')")
        assert unlimited.role_limit is None, (
            f"role pglab has no CONNECTION LIMIT (rolconnlimit = -1): role_limit should be None, got "
            f"{unlimited.role_limit!r}")
        await conn.execute("DROP ROLE IF EXISTS locked; CREATE ROLE locked LOGIN CONNECTION LIMIT 0")
        locked = await within(lab.read_budget(conn, "locked"), 10, "read_budget(conn, 'locked')")
        assert locked.role_limit == 0, (
            f"role locked has CONNECTION LIMIT 0 (it may not connect at all): role_limit should be 0, got "
            f"{locked.role_limit!r}; only -1 means no limit")
        with pytest.raises(ValueError, match="nobody"):
            await within(lab.read_budget(conn, "nobody"), 10, "read_budget(conn, 'nobody')")
    finally:
        conn.terminate()


def test_usable_connections_take_the_reserved_slots_and_the_role_limit_off(lab):
    cases = [((20, 3, 2, 12), 12), ((20, 3, 2, None), 15), ((20, 3, 2, 100), 15), ((100, 3, 0, 50), 50),
             ((100, 10, 5, None), 85)]
    for args, usable in cases:
        budget = lab.ServerBudget(*args)
        got = lab.usable_connections(budget)
        assert got == usable, (f"{budget}: an ordinary role can open max_connections - superuser_reserved - "
                               f"reserved, at most its CONNECTION LIMIT = {usable}; got {got}")


def test_pool_size_per_worker_fits_a_rolling_deploy(lab):
    cases = [((12, 2, 2, 0), 3), ((12, 2, 0, 0), 6), ((100, 4, 4, 4), 12), ((12, 2, 2, 1), 2), ((13, 2, 2, 0), 3),
             ((4, 2, 2, 0), 1), ((5, 2, 1, 2), 1),  # exactly one connection each still fits
             ((10, 1, 1, 0), 5), ((10, 1, 0, 0), 10)]  # one worker is a fleet too
    for (usable, workers, surge, headroom), size in cases:
        got = lab.pool_size_per_worker(usable, workers, surge=surge, headroom=headroom)
        assert got == size, (f"{workers} workers + {surge} during a deploy, {headroom} kept for admin, in "
                             f"{usable} connections: max_size {size} (rounded down), got {got}")
    with pytest.raises(ValueError, match="PgBouncer"):
        lab.pool_size_per_worker(3, 2, surge=2)
    with pytest.raises(ValueError, match=r"\b4\b"):  # 2 + 1 processes, one each, and 1 for admin
        lab.pool_size_per_worker(3, 2, surge=1, headroom=1)
    for usable, workers, surge, headroom in ((12, 0, 0, 0), (12, 2, -1, 0), (12, 2, 0, -1)):
        with pytest.raises(ValueError):
            lab.pool_size_per_worker(usable, workers, surge=surge, headroom=headroom)


def test_a_fleet_of_worker_processes_holds_its_pools_on_the_server(lab, budgeted):
    fleet = lab.Fleet(budgeted.app_dsn, WORKERS, 3)
    try:
        reports = fleet.start(timeout=60)
        expect_reports(reports, WORKERS, "2 workers with pools of 3")
        assert all(r.error is None and r.opened == 3 for r in reports), f"every worker should hold 3: {reports}"
        pids = {r.pid for r in reports}
        assert len(pids) == WORKERS and os.getpid() not in pids, (
            f"each worker is a process of its own; report pids {pids}, this process is {os.getpid()}")
        held = budgeted.app_backends()
        assert held == 6, f"2 workers x 3 connections should show 6 backends of role app on the server, saw {held}"
    finally:
        fleet.close()
    running = [pid for pid in pids if process_exists(pid)]
    assert not running, (f"Fleet.close() returned while worker processes {running} still existed: join() each "
                         "worker, so a deploy script knows the old fleet is gone when close() returns")
    budgeted.wait_no_app_backends()


def test_fleet_start_gives_up_at_its_timeout_when_a_worker_never_reports(lab):
    # A DSN asyncpg cannot parse: the worker dies before it can report (its traceback shows below).
    fleet = lab.Fleet("postgresql://app@127.0.0.1:not-a-port/pglab", 1, 1)
    outcome: list[BaseException | object] = []

    def start() -> None:
        try:
            outcome.append(fleet.start(timeout=1))
        except BaseException as exc:  # the expected end: queue.Empty, or the lab's own error
            outcome.append(exc)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(20)
    try:
        assert not thread.is_alive(), (
            "Fleet.start(timeout=1) was still waiting 20 s later for a worker that had died: pass the timeout to "
            "the wait for each report (queue.get(timeout=...)), or a crashed worker hangs the deploy")
        if isinstance(outcome[0], NotImplementedError):
            raise outcome[0]
        assert isinstance(outcome[0], Exception), (
            f"a worker died without reporting, yet Fleet.start() returned {outcome[0]!r}: it should raise")
    finally:
        if not thread.is_alive():
            fleet.close()


def test_a_rolling_deploy_overruns_the_naive_budget_and_fits_the_planned_one(lab, budgeted):
    usable = ROLE_LIMIT
    naive, planned = usable // WORKERS, lab.pool_size_per_worker(usable, WORKERS, surge=SURGE)
    outcome = {}
    for name, size in (("naive", naive), ("planned", planned)):
        old, new = lab.Fleet(budgeted.app_dsn, WORKERS, size), lab.Fleet(budgeted.app_dsn, WORKERS, size)
        try:
            reports = old.start(timeout=60) + new.start(timeout=60)
            expect_reports(reports, 2 * WORKERS, f"old + new workers with pools of {size}")
            outcome[name] = (sum(r.opened for r in reports), [r.error for r in reports if r.error], reports,
                             budgeted.app_backends())
        finally:
            new.close()
            old.close()
        budgeted.wait_no_app_backends()
    opened, errors, reports, backends = outcome["naive"]
    print(f"rolling deploy, naive max_size {naive}: asked {2 * WORKERS * naive}, opened {opened}, "
          f"{len(errors)} workers refused; planned max_size {planned}: opened {outcome['planned'][0]}")
    assert opened == backends == usable and errors and all("TooManyConnections" in e for e in errors), (
        f"4 workers x {naive} = {4 * naive} connections overrun the role's {usable}: the server opens {usable} and "
        f"refuses the rest with TooManyConnectionsError, and the reports must say so (opened = what the worker "
        f"really holds, error = the exception); reports: {reports}, backends seen: {backends}")
    opened, errors, reports, backends = outcome["planned"]
    assert not errors and opened == backends == 2 * WORKERS * planned <= usable, (
        f"with max_size {planned} old and new workers together fit in {usable}; reports: {reports}")


# -- timeouts as a system ------------------------------------------------------------
def test_the_timeout_budget_rejects_timeouts_in_the_wrong_order(lab):
    lab.TimeoutBudget().validate()  # the defaults fit together
    wrong = [("lock", {"lock": 3.0}), ("statement", {"statement": 3.5}), ("transaction", {"transaction": 1.5}),
             ("request", {"acquire": 1.0, "command": 4.5}), ("connect", {"connect": 1.5}),
             ("positive", {"lock": 0.0}), ("positive", {"idle_in_transaction": -1.0}),
             ("query_wait", {"query_wait": 1.0})]
    for says, change in wrong:
        with pytest.raises(ValueError, match=says):
            lab.TimeoutBudget(**change).validate()
    # Behind PgBouncer a query first waits in its queue, then runs: both inside one command_timeout.
    with pytest.raises(ValueError, match="query_wait"):
        lab.TimeoutBudget(query_wait=1.0, statement=2.0, command=2.5).validate()


def test_pool_options_carry_the_client_and_the_server_timeouts(lab):
    options = lab.TimeoutBudget(connect=0.5, acquire=0.75, lock=0.25, statement=1.5, command=2.5,
                                transaction=3.0, idle_in_transaction=10.0, request=4.0).pool_options()
    assert options == {"timeout": 0.5, "command_timeout": 2.5, "server_settings": {
        "lock_timeout": "250ms", "statement_timeout": "1500ms", "transaction_timeout": "3000ms",
        "idle_in_transaction_session_timeout": "10000ms"}}, f"pool_options() gave {options}"
    with pytest.raises(ValueError):
        lab.TimeoutBudget(statement=5.0).pool_options()


def test_pgbouncer_settings_carry_query_wait_timeout_in_seconds(lab):
    settings = lab.TimeoutBudget(query_wait=0.25).pgbouncer_settings()
    assert settings == {"query_wait_timeout": 0.25}, (
        f"pgbouncer_settings() should give PgBouncer query_wait_timeout in seconds, fractions allowed (PgBouncer "
        f"takes no units, and 0 turns the timeout off); got {settings}")
    with pytest.raises(ValueError):
        lab.TimeoutBudget(query_wait=5.0).pgbouncer_settings()


@pytest.fixture
async def budget_pool(dsn, lab):
    """`await budget_pool(budget, via=None, max_size=2)`: a pool with the budget's options, terminated afterwards."""
    pools = []

    async def make(budget, *, server_dsn: str | None = None, max_size: int = 2, min_size: int = 0):
        pool = await within(asyncpg.create_pool(server_dsn or dsn, min_size=min_size, max_size=max_size,
                                                **budget.pool_options()), 15, "create_pool(**pool_options())")
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.terminate()


async def layer_of(lab, awaitable, what: str, seconds: float = 10) -> tuple[BaseException, str]:
    try:
        await within(awaitable, seconds, what)
    except Exception as exc:  # the timeout error under test
        return exc, lab.timeout_layer(exc)
    pytest.fail(f"{what} should have failed with a timeout error, it succeeded", pytrace=False)


async def test_statement_timeout_is_cancelled_by_the_server(lab, budget_pool):
    pool = await budget_pool(lab.TimeoutBudget(lock=0.1, statement=0.3))
    assert await within(pool.fetchval("SHOW statement_timeout"), 10, "SHOW") == "300ms", "statement_timeout not set"
    exc, layer = await layer_of(lab, pool.fetchval("SELECT pg_sleep(5)"), "SELECT pg_sleep(5)")
    assert isinstance(exc, asyncpg.QueryCanceledError) and layer == "statement_timeout", (
        f"past statement_timeout the server cancels the query: QueryCanceledError -> 'statement_timeout'; "
        f"got {type(exc).__name__} -> {layer!r}")


async def test_lock_timeout_gives_up_waiting_for_a_lock(lab, budget_pool, dsn, table_name):
    holder = await within(asyncpg.connect(dsn), 15, "connect")
    try:
        await holder.execute(f"CREATE TABLE {table_name} (id int)")
        pool = await budget_pool(lab.TimeoutBudget(lock=0.2))
        async with holder.transaction():
            await holder.execute(f"LOCK TABLE {table_name} IN ACCESS EXCLUSIVE MODE")
            exc, layer = await layer_of(lab, pool.fetch(f"SELECT * FROM {table_name}"), "a read of a locked table")
        assert isinstance(exc, asyncpg.LockNotAvailableError) and layer == "lock_timeout", (
            f"a lock wait past lock_timeout raises LockNotAvailableError -> 'lock_timeout'; "
            f"got {type(exc).__name__} -> {layer!r}")
    finally:
        await holder.execute(f"DROP TABLE IF EXISTS {table_name}")
        holder.terminate()


async def test_transaction_timeout_ends_a_long_transaction(lab, budget_pool):
    pool = await budget_pool(lab.TimeoutBudget(lock=0.1, statement=0.4, transaction=0.6, command=1.0, acquire=0.5,
                                               connect=0.3))
    async with pool.acquire() as conn:
        if conn.get_server_version().major < 17:
            pytest.skip("transaction_timeout needs PostgreSQL 17+")

        async def many_short_statements() -> None:
            await conn.execute("BEGIN")  # no transaction() block: its exit would mask the error
            for _ in range(20):
                await conn.execute("SELECT pg_sleep(0.1)")  # each well under statement_timeout

        exc, layer = await layer_of(lab, many_short_statements(), "a transaction of 20 x 0.1 s")
    assert layer == "transaction_timeout", (
        f"the server ends the session past transaction_timeout; asyncpg raises {type(exc).__name__}: {exc}, "
        f"which timeout_layer() should name 'transaction_timeout', got {layer!r}")


async def test_idle_in_transaction_timeout_closes_the_session(lab, dsn):
    options = lab.TimeoutBudget(idle_in_transaction=0.3).pool_options()
    # One connection, no pool: a pool detaches a connection the server closed, and the next
    # call says "released back to the pool" instead.
    conn = await within(asyncpg.connect(dsn, server_settings=options["server_settings"]), 10, "connect")
    try:
        await conn.execute("BEGIN")
        await asyncio.sleep(1.0)  # idle in a transaction: the server hangs up at 0.3 s
        exc, layer = await layer_of(lab, conn.fetchval("SELECT 1"), "a query after idling in a transaction")
    finally:
        conn.terminate()
    assert layer == "connection lost", (
        f"the server ended the idle session; asyncpg says {type(exc).__name__}: {exc} on the next query, which "
        f"timeout_layer() should call 'connection lost' (only the server log names the timeout); got {layer!r}")


async def test_an_exhausted_pool_fails_at_the_acquire_timeout(lab, budget_pool):
    budget = lab.TimeoutBudget(connect=0.2, acquire=0.3)
    pool = await budget_pool(budget, max_size=1)
    async with pool.acquire():
        # The request deadline is 5 s: a 0.3 s acquire timeout must fire well before it.
        exc, layer = await layer_of(lab, lab.fetch_within(pool, budget, "SELECT 1"),
                                    "fetch_within() on a full pool with acquire=0.3 (is the acquire bounded?)", 3)
    assert isinstance(exc, TimeoutError) and layer == "client", (
        f"a full pool fails after the acquire timeout with TimeoutError -> 'client'; got {type(exc).__name__} "
        f"-> {layer!r}")
    assert await within(lab.fetch_within(pool, budget, "SELECT 7 AS n"), 10, "fetch_within()") == [(7,)], (
        "fetch_within() should return the query's rows")


async def test_a_half_open_connection_is_bounded_by_the_client_timeouts(lab, budget_pool, dsn):
    budget = lab.TimeoutBudget(connect=0.3, acquire=0.5, lock=0.1, statement=0.4, query_wait=0.2, command=0.8)
    with FreezableProxy.for_dsn(dsn) as proxy:
        pool = await budget_pool(budget, server_dsn=proxy.dsn(dsn), min_size=1)
        proxy.freeze()  # no FIN, no RST: the server's answer (even its own timeout error) never arrives
        exc, layer = await layer_of(lab, pool.fetchval("SELECT 1"), "a query through a frozen network path")
        assert isinstance(exc, TimeoutError) and layer == "client", (
            f"only command_timeout can end a query whose connection went silent: TimeoutError -> 'client'; "
            f"got {type(exc).__name__} -> {layer!r}")
        exc, layer = await layer_of(lab, asyncpg.connect(proxy.dsn(dsn), timeout=budget.pool_options()["timeout"]),
                                    "a connect through a frozen network path")
        assert isinstance(exc, TimeoutError) and layer == "client", (
            f"a connect that gets no answer ends at the connect timeout: TimeoutError; got {type(exc).__name__}")


@pytest.mark.pgbouncer
@pytest.mark.deadline(90)  # starting PgBouncer, and maybe waiting for another run to let go of it
async def test_pgbouncer_bounces_a_queued_query_before_the_client_gives_up(lab, dsn):
    if reason := pgbouncer.unavailable_reason(settings={"query_wait_timeout": 1}):
        pytest.skip(f"PgBouncer check skipped: {reason}")
    budget = lab.TimeoutBudget()  # its defaults: query_wait + statement inside command
    settings = {**budget.pgbouncer_settings(), "default_pool_size": 1}  # one server connection, easy to hold
    bouncer = await within(asyncio.to_thread(pgbouncer.ensure_pgbouncer, dsn, settings=settings), 30,
                           f"start PgBouncer with {settings}")
    options = budget.pool_options()
    # PgBouncer refuses other startup parameters ("unsupported startup parameter: statement_timeout"):
    # behind it the server's timeouts go on the role (ALTER ROLE ... SET), so the pool takes the client's only.
    options.pop("server_settings")
    holder = await hold_pgbouncer_server_connection(bouncer)
    pool = None
    try:
        pool = await within(asyncpg.create_pool(bouncer, min_size=0, max_size=1, statement_cache_size=0, **options),
                            15, "create_pool() through PgBouncer")
        exc, layer = await layer_of(lab, lab.fetch_within(pool, budget, "SELECT 1"),
                                    "fetch_within() while PgBouncer's only server connection is taken")
    finally:
        holder.terminate()
        if pool is not None:
            pool.terminate()
    assert layer == "query_wait_timeout", (
        f"PgBouncer's one server connection is held, so the query waits in PgBouncer's queue; past query_wait_timeout "
        f"({budget.query_wait:g} s, inside command_timeout {budget.command:g} s) PgBouncer disconnects the client "
        f"saying 'query_wait_timeout', and timeout_layer() should name it so. Got {type(exc).__name__}: {exc} -> "
        f"{layer!r}. A TimeoutError means the client gave up first: is query_wait_timeout in seconds (0 turns it "
        f"off)? 'other' or 'connection lost': look for PgBouncer's word in the message")


def test_timeout_layer_names_the_session_timeouts_by_their_errors(lab):
    # The server ends the session with FATAL; asyncpg raises these when the message reaches a query in flight.
    for exc, layer in ((asyncpg.IdleInTransactionSessionTimeoutError(
                            "terminating connection due to idle-in-transaction timeout"),
                        "idle_in_transaction_session_timeout"),
                       (asyncpg.TransactionTimeoutError("terminating connection due to transaction timeout"),
                        "transaction_timeout")):
        assert lab.timeout_layer(exc) == layer, f"{type(exc).__name__}: {exc} is the server's {layer}"


def test_timeout_layer_calls_other_errors_other(lab):
    for exc in (ValueError("bug"), asyncpg.UniqueViolationError("duplicate key"), ConnectionRefusedError(111, "no")):
        assert lab.timeout_layer(exc) == "other", f"{type(exc).__name__} is no timeout: 'other'"
