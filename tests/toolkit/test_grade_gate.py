"""The grader's database gate (pglab/grade/gate.py), through a lab's proxy to the real course server.

A graded lab reaches the server only through its proxy socket; the gate lets a
connection open the lab's own database and nothing else, refused as PostgreSQL
refuses a database without CONNECT (or one that does not exist).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from urllib.parse import unquote, urlsplit

import asyncpg
import pytest

from pglab.grade.gate import SSL_REQUEST, database_of
from pglab.grade.proxy import DatabaseProxy
from pglab.testing import within


@pytest.fixture
def gate(dsn, tmp_path):
    """(proxy, login) for the course DSN's own database; login(database) connects through the proxy."""
    parts = urlsplit(dsn)
    own = unquote(parts.path.lstrip("/"))
    proxy = DatabaseProxy(tmp_path, parts.hostname, parts.port, 8, database=own, existing={"template1", "postgres"})

    async def login(database: str) -> asyncpg.Connection:
        return await within(asyncpg.connect(host=str(tmp_path), port=5432, user=unquote(parts.username),
                                            password=unquote(parts.password or ""), database=database), 15,
                            f"connect to {database} through the grader's proxy")

    yield proxy, login, own
    proxy.close()


async def test_the_labs_own_database_opens_and_cancel_requests_pass(gate):
    _, login, own = gate
    conn = await login(own)
    try:
        assert await conn.fetchval("SELECT current_database()") == own
        with pytest.raises(asyncio.TimeoutError):  # asyncpg cancels the query with a cancel request
            await conn.execute("SELECT pg_sleep(30)", timeout=0.5)
        one = await within(conn.fetchval("SELECT 1"), 10, "a query after the cancelled one (cancel request lost?)")
        assert one == 1
    finally:
        await conn.close()


@pytest.mark.parametrize("other", ["template1", "postgres"])
async def test_another_database_is_refused_as_the_server_refuses_without_connect(gate, other):
    _, login, _ = gate
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=f'permission denied for database "{other}"'):
        conn = await login(other)
        await conn.close()


async def test_a_database_the_server_does_not_have_is_reported_missing(gate):
    _, login, _ = gate
    with pytest.raises(asyncpg.InvalidCatalogNameError, match="does not exist"):
        conn = await login("pglab_no_such_database")
        await conn.close()


def test_an_ssl_request_is_declined_and_garbage_is_cut(gate):
    proxy, _, _ = gate
    for first, answer in ((struct.pack("!II", 8, SSL_REQUEST), b"N"), (b"GET / HTTP/1.1\r\n\r\n", b"")):
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(proxy.path))
            client.sendall(first)
            try:
                got = client.recv(1)
            except ConnectionResetError:  # closed with our bytes unread: a reset, not an answer
                got = b""
            assert got == answer, f"the proxy's answer to {first!r}: {got!r}, expected {answer!r}"


def test_the_database_asked_is_the_servers_reading_of_the_startup():
    def body(*pairs: bytes) -> bytes:
        return b"".join(p + b"\0" for p in pairs) + b"\0"

    assert database_of(body(b"user", b"lab", b"database", b"mine")) == b"mine"
    assert database_of(body(b"user", b"lab")) == b"lab", "no database: the server opens the user's namesake"
    assert database_of(body(b"database", b"mine", b"user", b"lab", b"database", b"postgres")) == b"postgres", (
        "a repeated key: the server takes the last one, so must the gate"
    )
