"""Tests of pglab.servers.replica: a standby of the course server, and a private pair.

The shared course server is only read from (pg_basebackup); everything that
promotes, stops a primary or needs synchronous replication uses a private pair.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest

from pglab.servers.replica import STANDBY_NAME, ReplicaPair, Standby
from pglab.testing import eventually, within

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the toolkit's servers need POSIX")


async def fetchval(dsn: str, query: str, *args: object) -> object:
    conn = await within(asyncpg.connect(dsn), 30, "connect")
    try:
        return await within(conn.fetchval(query, *args), 30, query)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def pair():
    with ReplicaPair(synchronous=True) as pair:
        yield pair


@pytest.mark.deadline(120)  # pg_basebackup copies the whole course server, busy with every other test
async def test_a_standby_of_the_course_server_streams_and_is_removed(dsn, table_name):
    if not await fetchval(dsn, "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"):
        pytest.skip("the course role may not replicate (DATABASE_URL with a plain role): no standby of it")
    folder = Path(tempfile.mkdtemp(prefix="pglab-standby-"))  # pytest may prune its own tmp dirs
    standby = Standby(folder / "replica")
    try:
        standby_dsn = await asyncio.to_thread(standby.up, dsn)
        assert standby.status().running
        assert await fetchval(standby_dsn, "SELECT pg_is_in_recovery()") is True
        await fetchval(dsn, f"CREATE TABLE {table_name} AS SELECT 7 AS n")

        async def replicated() -> bool:
            return bool(await fetchval(standby_dsn, "SELECT to_regclass($1) IS NOT NULL", table_name))

        await eventually(replicated, 60, f"table {table_name} written on the primary never reached the standby")
        assert await fetchval(standby_dsn, f"SELECT n FROM {table_name}") == 7
        assert await asyncio.to_thread(standby.up, dsn) == standby_dsn, "a second up() finds the running standby"
    finally:
        await fetchval(dsn, f"DROP TABLE IF EXISTS {table_name}")
        assert await asyncio.to_thread(standby.remove)
    assert not standby.status().running and not standby.home.exists()
    shutil.rmtree(folder, ignore_errors=True)


async def test_the_private_pair_is_synchronous(pair):
    assert await fetchval(pair.primary_dsn, "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1",
                          STANDBY_NAME) == "sync"
    assert await fetchval(pair.primary_dsn, "SHOW synchronous_standby_names") == STANDBY_NAME


async def test_promote_turns_the_standby_into_a_writable_primary(pair):
    await fetchval(pair.primary_dsn, "CREATE TABLE IF NOT EXISTS before_promote AS SELECT 1 AS n")
    pair.stop_primary()
    pair.standby.promote()
    assert await fetchval(pair.standby_dsn, "SELECT pg_is_in_recovery()") is False
    await fetchval(pair.standby_dsn, "CREATE TABLE after_promote (n int)")
    assert await fetchval(pair.standby_dsn, "SELECT n FROM before_promote") == 1, "a synchronous commit was lost"


def test_cli_replica_status_says_when_no_standby_runs(tmp_path):
    env = {"PGLAB_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    (tmp_path / "course.toml").write_text("")
    (tmp_path / "pglab").mkdir()
    proc = subprocess.run([sys.executable, "-m", "pglab", "db", "replica", "status"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 1 and "not running" in proc.stdout, proc.stdout + proc.stderr
