"""Database discovery: DATABASE_URL, the Docker probe, the embedded server."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import asyncpg
import pytest

from pglab.servers import database
from pglab.servers.dsn import BadDsnError, build_dsn, mask_dsn, validate_dsn, with_database
from pglab.servers.embedded import EmbeddedServer, EmbeddedServerError


def test_database_url_is_honoured_without_probing_docker(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone:s3cret@db.example:6543/app")
    monkeypatch.setattr(database, "docker_available", lambda *a, **k: pytest.fail("Docker was probed"))
    found = database.locate()
    assert (found.kind, found.dsn) == ("env", "postgresql://someone:s3cret@db.example:6543/app")
    assert "s3cret" not in repr(found)


@pytest.mark.parametrize("bad", ["host=localhost port=5432 dbname=x", "mysql://u:p@h/db", "postgresql://u:p@h:99999/db"])
def test_a_bad_database_url_gets_a_clear_error(monkeypatch, bad):
    monkeypatch.setenv("DATABASE_URL", bad)
    with pytest.raises(database.DatabaseUnavailableError, match="DATABASE_URL is not usable"):
        database.locate()


def test_docker_absent_is_detected_fast(monkeypatch):
    monkeypatch.delenv("PGLAB_NO_DOCKER", raising=False)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    started = time.monotonic()
    assert database.docker_available() is False
    assert time.monotonic() - started < 1.5, "the Docker probe must not hang when no engine answers"


def test_docker_probe_can_be_disabled(monkeypatch):
    monkeypatch.setenv("PGLAB_NO_DOCKER", "1")
    assert database.docker_available() is False


def test_nothing_available_says_what_was_tried(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setattr(database, "docker_available", lambda *a, **k: False)

    def broken(self):
        raise EmbeddedServerError("initdb failed: no space left on device")

    monkeypatch.setattr(EmbeddedServer, "up", broken)
    with pytest.raises(database.DatabaseUnavailableError) as info:
        database.locate()
    message = str(info.value)
    assert "DATABASE_URL" in message and "Docker" in message and "no space left" in message
    assert "Fix:" in message


def test_dsn_helpers():
    dsn = build_dsn("127.0.0.1", 5432, "p@ss:w/rd#1", user="me")
    assert dsn == "postgresql://me:p%40ss%3Aw%2Frd%231@127.0.0.1:5432/pglab"
    assert mask_dsn(dsn) == "postgresql://me:***@127.0.0.1:5432/pglab"
    assert with_database(dsn, "other").endswith("@127.0.0.1:5432/other")
    assert validate_dsn(dsn) == dsn
    with pytest.raises(BadDsnError, match="keyword"):
        validate_dsn("host=x port=5432")


def test_scrub_secrets_hides_known_passwords(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2hunter2@h:5432/d")
    assert database.scrub_secrets("failed for u:hunter2hunter2@h") == "failed for u:***@h"


async def _select_one(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


@pytest.fixture
def private_server(tmp_path):
    server = EmbeddedServer(home=tmp_path / "server")
    yield server
    server.down()


def test_embedded_server_starts_is_reused_and_survives_a_crash(private_server):
    dsn = private_server.up()
    assert asyncio.run(_select_one(dsn)) == 1
    first = private_server.status()
    assert first.running and first.pid

    assert private_server.up() == dsn, "a running server must be reused, not restarted"
    assert private_server.status().pid == first.pid

    os.kill(first.pid, signal.SIGKILL)  # a crash leaves a stale postmaster.pid behind
    deadline = time.monotonic() + 10
    while private_server.status().running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not private_server.status().running
    assert asyncio.run(_select_one(private_server.up())) == 1, "a stale server must be replaced"


def test_embedded_server_moves_off_a_stolen_port(private_server):
    port = private_server.status().port or 0
    private_server.up()
    port = private_server.status().port
    private_server.down()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        dsn = private_server.up()
        assert private_server.status().port != port
        assert asyncio.run(_select_one(dsn)) == 1
