"""Checks for lab 08: ConnectionPoolManager, one pool per event loop."""

from __future__ import annotations

import asyncio
import gc
import threading
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest

from pglab.backends import count_backends, terminate_backends
from pglab.testing import eventually, within

MODULE = "lab08_loop_aware_manager"
SECRET = "s3cr:t/p@ss%word"


def pg_config(lab, dsn, **sizes):
    return lab.PostgresPoolConfig.from_dict({"connection_string": dsn, "min_size": 1, "max_size": 2, **sizes})


def asyncpg_creator(app_name):
    """A create_pool_func for real asyncpg pools, found on the server by application_name."""

    async def create(config):
        return await asyncpg.create_pool(
            config.to_connection_string(), min_size=config.min_size, max_size=config.max_size,
            command_timeout=config.command_timeout, server_settings={"application_name": app_name},
        )

    return create


class FakePool:
    """A stand-in for any client with an async close()."""

    def __init__(self) -> None:
        self.closed = False
        self.healthy = True

    async def close(self) -> None:
        await asyncio.sleep(0.01)  # like a real close, it takes a round trip
        self.closed = True


class Factory:
    """create_pool_func that counts its calls and takes a little time, like a real connect."""

    def __init__(self) -> None:
        self.calls = 0
        self.pools: list[FakePool] = []

    async def __call__(self, config) -> FakePool:
        self.calls += 1
        await asyncio.sleep(0.05)
        self.pools.append(FakePool())
        return self.pools[-1]


async def test_config_from_url_or_fields_and_the_password_stays_secret(lab, dsn):
    fields = dict(host="db.example", port=6543, database="shop db", user="app", password=SECRET)
    config = lab.PostgresPoolConfig.from_dict(fields)
    assert (config.min_size, config.max_size, config.command_timeout) == (2, 5, None), "defaults: 2, 5, None"
    url = config.to_connection_string()
    assert url.startswith("postgresql://app:") and SECRET not in url, (
        f"the password must be percent-encoded in the URL (special characters break parsing): {url!r}"
    )
    again = lab.PostgresPoolConfig.from_dict({"connection_string": url})
    assert again == config, f"from_dict(connection_string=...) should parse back the same config: {again!r}"
    assert again.to_hash_key() == config.to_hash_key(), "equal configs need equal hash keys"
    other = lab.PostgresPoolConfig.from_dict({**fields, "password": "other"})
    assert other.to_hash_key() != config.to_hash_key(), "another password (other credentials) needs another key"
    for text in (repr(config), str(config), config.to_hash_key()):
        assert SECRET not in text and "p@ss" not in text, f"the password leaks: {text!r}"

    live = pg_config(lab, dsn, command_timeout=5.0)
    conn = await within(asyncpg.connect(live.to_connection_string()), 10, "asyncpg.connect(to_connection_string())")
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()



def refusal(make, what: str, named: str) -> None:
    """`make()` must raise a ValueError that names `named`."""
    try:
        result = make()
    except ValueError as exc:
        assert named in str(exc), f"{what}: the ValueError should name {named!r}, it says {exc}"
    except Exception as exc:  # noqa: BLE001 - the learner reads what was raised instead
        pytest.fail(f"{what} raised {type(exc).__name__}: {exc}; raise a ValueError naming {named!r}", pytrace=False)
    else:
        pytest.fail(f"{what} should raise a ValueError naming {named!r}, it returned {result!r}", pytrace=False)


def test_from_dict_fills_in_the_default_port_refuses_bad_input_and_keeps_its_argument(lab):
    config = lab.PostgresPoolConfig.from_dict({"connection_string": "postgresql://app:pw@db.example/shop"})
    assert (config.host, config.port, config.database) == ("db.example", 5432, "shop"), (
        f"a URL without a port means PostgreSQL's default port, 5432: got {config!r}"
    )
    settings = {"connection_string": "postgresql://app:pw@db.example:6543/shop", "max_size": 9}
    before = dict(settings)
    lab.PostgresPoolConfig.from_dict(settings)
    assert settings == before, f"from_dict() changed the caller's mapping, {before} became {settings}: work on a copy"
    refusal(lambda: lab.PostgresPoolConfig.from_dict({"connection_string": "mysql://app:pw@db.example/shop"}),
            "from_dict() with a mysql:// URL", "postgresql://")
    fields = dict(host="db.example", port=5432, database="shop", user="app", password="pw")
    refusal(lambda: lab.PostgresPoolConfig.from_dict({**fields, "max_sise": 9}),
            "from_dict() with a misspelt setting, max_sise", "max_sise")

async def test_one_pool_per_config_and_50_concurrent_calls_create_it_once(lab):
    manager = lab.ConnectionPoolManager()
    factory = Factory()
    config = lab.PostgresPoolConfig("h", 5432, "db", "u", SECRET)
    pools = await within(asyncio.gather(*(manager.get_pool(config, factory) for _ in range(50))), 10, "get_pool()")
    assert factory.calls == 1, f"50 concurrent get_pool() calls ran the factory {factory.calls} times (need a lock)"
    assert all(pool is pools[0] for pool in pools), "every caller in one loop should get the same pool"
    assert await manager.get_pool(config, factory) is pools[0], "a later call should reuse the pool"
    url_pool = await manager.get_pool("http://127.0.0.1:9/", factory)  # any hashable config: a generic client
    assert url_pool is not pools[0] and manager.get_pool_count() == 2, "another config needs another pool"
    await within(manager.close_all(), 10, "close_all()")
    assert all(pool.closed for pool in factory.pools), (
        "close_all() should close the running loop's pools, and return only once they are closed (await them)"
    )
    assert manager.get_pool_count() == 0, "close_all() should forget the pools"


async def test_a_failed_creation_registers_nothing_and_the_next_call_tries_again(lab):
    manager = lab.ConnectionPoolManager()
    factory = Factory()

    async def refused(config):
        await asyncio.sleep(0.01)
        raise ConnectionRefusedError("the server is not up yet")

    with pytest.raises(ConnectionRefusedError):
        await within(manager.get_pool("client", refused), 5, "get_pool() with a create_pool_func that raises")
    assert manager.get_pool_count() == 0 and manager.get_pool_info() == [], (
        f"a pool whose creation failed is still registered: count {manager.get_pool_count()}, "
        f"info {manager.get_pool_info()}. Register the pool only after create_pool_func succeeded"
    )
    pool = await within(manager.get_pool("client", factory), 5, "get_pool() once creation works again")
    assert isinstance(pool, FakePool) and factory.calls == 1, (
        f"after a failed creation the next get_pool() should create the pool, got {pool!r}"
    )
    pool.healthy = False  # it breaks, and its replacement cannot be created either

    async def healthy(candidate) -> bool:
        return candidate.healthy

    with pytest.raises(ConnectionRefusedError):
        await within(manager.get_pool("client", refused, healthy), 5, "get_pool() replacing a broken pool")
    assert pool.closed and manager.get_pool_count() == 0, (
        f"the pool that failed validation should be closed and forgotten even when its replacement cannot be "
        f"created: closed {pool.closed}, still registered: {manager.get_pool_info()}"
    )
    await within(manager.close_all(), 5, "close_all()")


async def test_a_closed_pool_is_never_handed_out(lab, dsn, app_name):
    manager = lab.ConnectionPoolManager()
    factory = Factory()
    first = await manager.get_pool("client", factory)
    await first.close()  # closed behind the manager's back (a shutdown hook, a test fixture)
    second = await within(manager.get_pool("client", factory), 5, "get_pool() after the pool was closed")
    assert second is not first and not second.closed, (
        "get_pool() returned a pool that was already closed: check it (asyncpg: pool.is_closing(); "
        "a pool with a `closed` attribute) before handing it out, and create a new one"
    )
    config = pg_config(lab, dsn)
    try:
        pool = await within(manager.get_pool(config, asyncpg_creator(app_name)), 15, "get_pool()")
        await within(pool.close(), 10, "pool.close()")
        again = await within(manager.get_pool(config, asyncpg_creator(app_name)), 15, "get_pool() after close()")
        assert again is not pool and not again.is_closing(), "a closed asyncpg pool (is_closing()) was handed out"
        assert await again.fetchval("SELECT 1") == 1
        assert manager.get_pool_count() == 2, f"one pool per config should be registered: {manager.get_pool_info()}"
    finally:
        await within(manager.close_all(), 10, "close_all()")
        await terminate_backends(dsn, app_name)


async def test_a_pool_that_fails_validation_is_closed_and_replaced(lab, dsn, app_name):
    manager = lab.ConnectionPoolManager()
    config = pg_config(lab, dsn)
    create = asyncpg_creator(app_name)

    async def validate(pool) -> bool:
        return await pool.fetchval("SELECT 1") == 1  # raises on a closed pool

    first = await within(manager.get_pool(config, create, validate), 15, "get_pool()")
    try:
        assert await within(manager.get_pool(config, create, validate), 10, "get_pool()") is first
        first.terminate()  # the pool breaks: validation now raises
        second = await within(manager.get_pool(config, create, validate), 15, "get_pool() after the pool broke")
        assert second is not first, "a pool that fails validation must be replaced by a new one"
        assert await second.fetchval("SELECT 2") == 2
        assert manager.get_pool_count() == 1, "the broken pool should be forgotten"

        fake = Factory()
        broken = await manager.get_pool("client", fake)
        broken.healthy = False

        async def healthy(pool) -> bool:
            return pool.healthy

        replacement = await within(manager.get_pool("client", fake, healthy), 10, "get_pool()")
        assert replacement is not broken and broken.closed, "the invalid pool must be closed, then replaced"

        async def ping(pool) -> bool:
            if not pool.healthy:
                raise ConnectionResetError("connection reset by peer")
            return True

        replacement.healthy = False
        third = await within(manager.get_pool("client", fake, ping), 10, "get_pool() with a validator that raises")
        assert third is not replacement and replacement.closed, (
            "a validator that raises means the pool is broken: get_pool() should close and replace it, not raise"
        )
    finally:
        await within(manager.close_all(), 10, "close_all()")
        await terminate_backends(dsn, app_name)


def test_two_threads_with_their_own_loops_get_two_working_pools(lab, dsn, app_name):
    manager = lab.ConnectionPoolManager()
    config = pg_config(lab, dsn)
    barrier = threading.Barrier(2, timeout=20)

    async def in_thread():
        pool = await asyncio.wait_for(manager.get_pool(config, asyncpg_creator(app_name)), 15)
        value = await pool.fetchval("SELECT pg_backend_pid()")
        barrier.wait()  # both loops alive, both pools registered
        info = manager.get_pool_info()
        count = manager.get_pool_count()
        barrier.wait()  # both threads have looked before either removes its pool
        removed = await asyncio.wait_for(manager.remove_pool(config), 10)
        return pool, value, info, count, removed

    try:
        with ThreadPoolExecutor(2) as executor:
            futures = [executor.submit(asyncio.run, in_thread()) for _ in range(2)]
            results = [future.result(timeout=60) for future in futures]
    finally:
        asyncio.run(terminate_backends(dsn, app_name))
    (pool_a, pid_a, info, count, removed_a), (pool_b, pid_b, _, _, removed_b) = results
    assert pool_a is not pool_b, "each event loop must get its own pool (an asyncpg pool is bound to its loop)"
    assert pid_a and pid_b, "both pools should run queries against the server"
    assert count == 2 and len(info) == 2, f"two loops x one config = 2 pools, got count={count}, info={info}"
    assert SECRET not in str(info) and config.password not in str(info), "get_pool_info() must not show passwords"
    assert removed_a and removed_b, "remove_pool() should return True when it closed the loop's pool"


def test_closed_loops_are_forgotten_without_touching_them(lab, dsn, app_name):
    manager = lab.ConnectionPoolManager()
    factory = Factory()
    dead = asyncio.new_event_loop()
    dead.run_until_complete(manager.get_pool("client", factory))
    # asyncio.run closes its loop at the end, leaving a real asyncpg pool behind.
    asyncio.run(manager.get_pool(pg_config(lab, dsn), asyncpg_creator(app_name)))
    dead.close()
    asyncio.run(manager.close_all())  # would raise "Event loop is closed" if it touched the dead loops
    assert manager.get_pool_count() == 0, "pools of closed loops should be forgotten"
    assert not factory.pools[0].closed, "a pool of a closed loop must not be closed through that loop"
    assert manager.get_pool_info() == [], "get_pool_info() should not list pools of closed loops"
    asyncio.run(terminate_backends(dsn, app_name))



def test_get_pool_forgets_the_pools_of_closed_loops(lab):
    manager = lab.ConnectionPoolManager()
    factory = Factory()

    async def job() -> None:
        pool = await manager.get_pool("client", factory)
        pool.loop = asyncio.get_running_loop()  # as an asyncpg pool does: the weak key then stays alive

    for _ in range(5):  # a worker calling asyncio.run() per task, never close_all()
        asyncio.run(job())
    count = manager.get_pool_count()
    assert count <= 1, (
        f"after 5 asyncio.run() calls, each closing its loop, {count} pools are still registered: a pool that "
        "refers to its loop keeps the weak key alive, so get_pool() should forget the loops that are closed"
    )

def test_a_new_loop_never_inherits_a_dead_loops_pool(lab):
    manager = lab.ConnectionPoolManager()
    factory = Factory()
    loop_ids = []

    async def job():
        loop_ids.append(id(asyncio.get_running_loop()))
        return await manager.get_pool("client", factory)

    pools = []
    for _ in range(12):  # like a worker calling asyncio.run() per task
        pools.append(asyncio.run(job()))
        gc.collect(1)  # the dead loop is freed: CPython often gives the next loop its id()
    reused = len(loop_ids) - len(set(loop_ids))
    assert factory.calls == 12 and len({id(pool) for pool in pools}) == 12, (
        f"12 loops (of which {reused} reused a dead loop's id()) should get 12 new pools, "
        f"the factory ran {factory.calls} times: key pools by the loop object (held weakly), not id(loop)"
    )


async def test_remove_pool_closes_only_the_running_loops_pool(lab, dsn, app_name):
    manager = lab.ConnectionPoolManager()
    config = pg_config(lab, dsn, min_size=2)
    try:
        pool = await within(manager.get_pool(config, asyncpg_creator(app_name)), 15, "get_pool()")
        assert await count_backends(dsn, app_name) == 2, "the pool should have opened min_size=2 connections"
        info = manager.get_pool_info()
        assert len(info) == 1 and "Pool" in str(info[0].values()), f"get_pool_info() should describe the pool: {info}"
        assert await within(manager.remove_pool(config), 10, "remove_pool()") is True
        assert pool.is_closing(), "remove_pool() should close the pool"

        async def gone() -> bool:
            return await count_backends(dsn, app_name) == 0

        await eventually(gone, 5, "remove_pool() left server connections open")
        assert await manager.remove_pool(config) is False, "removing a pool twice should return False"
        assert manager.get_pool_count() == 0
    finally:
        await terminate_backends(dsn, app_name)
