"""Tests of pglab.proxy: forwards, then freezes without closing, then thaws or closes."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from pglab.proxy import FreezableProxy
from pglab.testing import within


@pytest.fixture
def proxy(dsn):
    with FreezableProxy.for_dsn(dsn) as proxy:
        yield proxy


async def test_a_query_goes_through_the_proxy(proxy, dsn):
    conn = await within(asyncpg.connect(proxy.dsn(dsn)), 10, "connect through the proxy")
    try:
        assert await within(conn.fetchval("SELECT 1"), 10, "SELECT 1") == 1
        assert proxy.connections == 1 and not proxy.frozen
    finally:
        conn.terminate()


async def test_a_frozen_proxy_hangs_the_query_without_closing_then_thaws(proxy, dsn):
    conn = await within(asyncpg.connect(proxy.dsn(dsn)), 10, "connect through the proxy")
    try:
        proxy.freeze()
        query = asyncio.ensure_future(conn.fetchval("SELECT 42"))
        done, _ = await asyncio.wait({query}, timeout=0.5)
        assert not done, "a query through a frozen proxy must hang, not fail: nothing is forwarded or closed"
        assert not conn.is_closed(), "freezing must not close the connection (no FIN, no RST)"
        proxy.thaw()
        assert await within(query, 10, "the query after thaw()") == 42
    finally:
        conn.terminate()


async def test_command_timeout_bounds_a_query_through_a_frozen_proxy(proxy, dsn):
    conn = await within(asyncpg.connect(proxy.dsn(dsn), command_timeout=0.3), 10, "connect through the proxy")
    try:
        proxy.freeze()
        with pytest.raises(asyncio.TimeoutError):
            await within(conn.fetchval("SELECT 1"), 10, "a query with command_timeout")
    finally:
        conn.terminate()


async def test_close_cuts_forwarded_connections(dsn):
    proxy = FreezableProxy.for_dsn(dsn)
    proxy.start()
    conn = await within(asyncpg.connect(proxy.dsn(dsn)), 10, "connect through the proxy")
    proxy.freeze()
    proxy.close()
    with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, OSError)):
        await within(conn.fetchval("SELECT 1"), 10, "a query after close()")
    conn.terminate()
    proxy.close()  # a second close is a no-op


def test_dsn_keeps_credentials_and_database(dsn):
    proxy = FreezableProxy("127.0.0.1", 5432)
    proxy.port = 6543
    assert proxy.dsn("postgresql://u:p%40ss@db.example:5432/app?x=1") == "postgresql://u:p%40ss@127.0.0.1:6543/app?x=1"
