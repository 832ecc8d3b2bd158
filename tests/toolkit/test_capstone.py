"""Tests of pglab.capstone's `--pgbouncer` path, on the course server and a real PgBouncer.

The service is always the reference solution (toolkit tests never read the learner's labs/).
Without PgBouncer (or wrk) the checks that need it skip, with the reason.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner

from pglab import capstone
from pglab.cli import app
from pglab.servers import pgbouncer
from pglab.testing import eventually, within

SOLUTIONS = str(Path(__file__).resolve().parents[2] / "solutions")
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason=capstone.WRK_HINT)


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich would wrap the hints mid-sentence at 80


@pytest.fixture
def no_pgbouncer(monkeypatch, wide):
    """A machine without PgBouncer: no binary where PGLAB_PGBOUNCER_BIN points, no PGLAB_PGBOUNCER_URL."""
    monkeypatch.delenv("PGLAB_PGBOUNCER_URL", raising=False)
    monkeypatch.setenv("PGLAB_PGBOUNCER_BIN", "/nonexistent/pgbouncer")


@pytest.fixture
def bouncer_available():
    if reason := pgbouncer.unavailable_reason():
        pytest.skip(reason)


def invoke(*args: str):
    return CliRunner().invoke(app, ["capstone", *args])


def report_of(result, out: Path) -> dict:
    """The run's report.json; exit code 1 is a missed SLO on a loaded machine, not these tests' point."""
    assert result.exit_code in (0, 1) and (out / "report.json").exists(), (result.output, result.exception)
    return json.loads((out / "report.json").read_text())


@needs_wrk
def test_run_without_pgbouncer_says_how_to_install_it(no_pgbouncer, tmp_path):
    result = invoke("run", "--target", SOLUTIONS, "--pgbouncer", "--seconds", "2", "--out", str(tmp_path))
    assert result.exit_code == 3, result.output
    assert "--pgbouncer needs PgBouncer" in result.output and "apt-get install pgbouncer" in result.output, \
        result.output
    assert not (tmp_path / "report.json").exists(), "no report for a run that never started"


def test_serve_without_pgbouncer_says_how_to_install_it(no_pgbouncer):
    result = invoke("serve", "--target", SOLUTIONS, "--pgbouncer")
    assert result.exit_code == 3, result.output
    assert "apt-get install pgbouncer" in result.output, result.output


def test_a_private_pgbouncer_fronts_its_server_and_is_gone_on_exit(bouncer_available):
    from pglab.drills import PrivateServer

    with PrivateServer() as server, pgbouncer.private_pgbouncer(server.dsn, {"server_login_retry": 1}) as front:
        assert urlsplit(front).port != urlsplit(server.dsn).port, front

        async def through() -> tuple[int, str]:
            conn = await within(asyncpg.connect(front, statement_cache_size=0), 10, "connect through PgBouncer")
            try:
                return await conn.fetchval("SELECT 1"), next(
                    row["value"] for row in pgbouncer.show("CONFIG", front) if row["key"] == "server_login_retry")
            finally:
                await conn.close()

        one, retry = asyncio.run(through())
        assert one == 1 and float(retry) == 1, (one, retry)
    with pytest.raises(OSError):  # stopped: nothing listens on its port any more
        asyncio.run(asyncio.wait_for(asyncio.open_connection("127.0.0.1", urlsplit(front).port), 5))


@pytest.mark.slow
@pytest.mark.deadline(120)
@needs_wrk
def test_the_restart_drill_runs_through_a_pgbouncer_of_its_own(bouncer_available, wide, tmp_path):
    result = invoke("run", "--target", SOLUTIONS, "--pgbouncer", "--drill", "restart", "--seconds", "6",
                    "--out", str(tmp_path))
    report = report_of(result, tmp_path)
    assert report["path"].startswith("through PgBouncer") and "server_login_retry=1" in report["path"], report
    assert report["fault"] == "restart" and report["requests"] > 0, report


def test_through_pgbouncer_leads_to_the_database_through_pgbouncer(bouncer_available, dsn):
    database = urlsplit(dsn).path.lstrip("/")
    front, path = capstone.through_pgbouncer(dsn, database)
    assert path == "through PgBouncer, pool_mode=transaction", path
    assert urlsplit(front).port == pgbouncer.bouncer_status().port != urlsplit(dsn).port, front
    assert urlsplit(front).path.lstrip("/") == database


@pytest.mark.deadline(90)
async def test_the_drill_terminates_the_backends_behind_pgbouncer_and_the_service_recovers(bouncer_available, dsn):
    async with capstone.private_database(dsn) as (_, name):
        front, _ = await asyncio.to_thread(capstone.through_pgbouncer, dsn, name)
        running = await asyncio.to_thread(capstone.start, front, SOLUTIONS, 1, behind_pgbouncer=True)
        try:
            async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
                assert (await client.post("/items", json={"id": 1, "value": "one"})).status_code == 201
                # The service's only way in is PgBouncer: every backend of its database is PgBouncer's.
                killed = await within(capstone.terminate_service_backends(dsn, name), 10, "the drill")
                assert killed >= 1, "the drill found no backend behind PgBouncer to terminate"

                conn = await within(asyncpg.connect(dsn), 10, "connect to the server")
                try:
                    async def served_again() -> bool:
                        return (await client.get("/items/1")).status_code == 200

                    await eventually(served_again, 20, "GET /items/1 should answer 200 again after the drill")
                    backends = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                                                   "AND backend_type = 'client backend'", name)
                finally:
                    await conn.close()
            assert backends >= 1, "PgBouncer should have opened new server connections after the drill"
        finally:
            await asyncio.to_thread(capstone.stop, running)


@pytest.mark.slow
@pytest.mark.deadline(120)
@needs_wrk
def test_run_through_pgbouncer_reports_the_path_and_the_drill(bouncer_available, wide, tmp_path):
    result = invoke("run", "--target", SOLUTIONS, "--pgbouncer", "--seconds", "6", "--out", str(tmp_path))
    report = report_of(result, tmp_path)
    assert report["path"] == "through PgBouncer, pool_mode=transaction", report["path"]
    assert report["fault"] == "terminate" and report["fault_at"] is not None, report
    assert report["requests"] > 0, report
    assert "through PgBouncer, pool_mode=transaction, 16 connections, unpaced" in result.output, result.output
    assert (tmp_path / "slo.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.deadline(120)
@needs_wrk
def test_a_plain_run_is_direct(wide, tmp_path):
    result = invoke("run", "--target", SOLUTIONS, "--drill", "none", "--seconds", "3", "--out", str(tmp_path))
    report = report_of(result, tmp_path)
    assert report["path"] == "direct" and report["requests"] > 0, report


@pytest.mark.slow
@pytest.mark.deadline(120)
@needs_wrk
def test_a_paced_run_offers_no_more_than_its_pace(wide, tmp_path):
    result = invoke("run", "--target", SOLUTIONS, "--drill", "none", "--seconds", "3", "--connections", "2",
                    "--pace", "100", "--out", str(tmp_path))
    report = report_of(result, tmp_path)
    assert report["load"] == "2 connections, each waiting 100 ms between requests", report["load"]
    # Two connections, each at most one request per 100 ms, in one-second slices: 20 a slice.
    answered = [s["requests"] + s["errors"] for s in report["slices"]]
    assert answered and all(0 < n <= 22 for n in answered), answered


def test_run_refuses_a_negative_pace(wide):
    result = invoke("run", "--pace", "-1")
    assert result.exit_code == 2 and "--pace at least 0" in result.output, result.output
