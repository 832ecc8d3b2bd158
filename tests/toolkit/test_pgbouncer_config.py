"""Tests of pglab.servers.pgbouncer's config: max_prepared_statements pinned where the version has it,
and custom [pgbouncer] settings, checked, in an instance of their own (a real PgBouncer where installed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from pglab.servers import pgbouncer
from pglab.testing import hold_pgbouncer_server_connection, within

UPSTREAM = "postgresql://pglab:secret@127.0.0.1:5432/pglab"


@pytest.mark.parametrize(("version", "pinned"), [((1, 18, 0), False), ((1, 21, 0), True), ((1, 24, 1), True)])
def test_the_config_pins_prepared_statements_only_where_the_version_knows_the_key(monkeypatch, version, pinned):
    monkeypatch.setattr(pgbouncer, "pgbouncer_version", lambda: version)
    off = pgbouncer._config(Path("/x"), UPSTREAM, 6432, 0)
    on = pgbouncer._config(Path("/x"), UPSTREAM, 6432, 100)
    assert ("max_prepared_statements = 0\n" in off) is pinned, off  # 1.18 refuses unknown keys
    assert ("max_prepared_statements = 100\n" in on) is pinned, on
    assert "secret" not in off, "the config must not carry the password (it is in the auth file)"


def test_prepared_statements_need_1_21(monkeypatch):
    monkeypatch.delenv("PGLAB_PGBOUNCER_PREPARED_URL", raising=False)
    monkeypatch.delenv("PGLAB_PGBOUNCER_URL", raising=False)
    monkeypatch.setattr(pgbouncer, "pgbouncer_binary", lambda: "/usr/sbin/pgbouncer")
    monkeypatch.setattr(pgbouncer, "pgbouncer_version", lambda: (1, 18, 0))
    reason = pgbouncer.unavailable_reason(max_prepared_statements=100)
    assert reason and "1.21" in reason and "1.18" in reason
    with pytest.raises(pgbouncer.PgBouncerUnavailableError, match="1.21"):
        pgbouncer.ensure_pgbouncer(UPSTREAM, max_prepared_statements=100)
    monkeypatch.setattr(pgbouncer, "pgbouncer_version", lambda: (1, 24, 1))
    assert pgbouncer.unavailable_reason(max_prepared_statements=100) is None
    assert pgbouncer.home(100) != pgbouncer.home(0), "the prepared-statements instance needs a folder of its own"


def test_the_installed_version_is_read_from_pgbouncer_version():
    if pgbouncer.pgbouncer_binary() is None:
        pytest.skip(pgbouncer.INSTALL_HINT)
    version = pgbouncer.pgbouncer_version()
    assert version is not None and version >= (1, 0), version


# -- custom [pgbouncer] settings: ensure_pgbouncer(settings=...) ------------------------
QUEUED = {"query_wait_timeout": 0.5, "default_pool_size": 1, "max_client_conn": 50}  # this file's own instance


@pytest.mark.parametrize(("settings", "says"), [
    ({"listen_port": 7000}, "listen_port"),  # not a setting the course lets a caller change
    ({"auth_type": "trust"}, "auth_type"),
    ({"query_wait_timeout": "1\nadmin_users = nobody"}, "query_wait_timeout"),  # a smuggled ini line
    ({"pool_mode": "session; x"}, "pool_mode"),
    ({"default_pool_size": True}, "default_pool_size"),
])
def test_settings_outside_the_list_or_not_one_value_are_refused_naming_the_key(settings, says):
    with pytest.raises(ValueError, match=says):
        pgbouncer.ensure_pgbouncer(UPSTREAM, settings=settings)  # refused before anything starts


def test_each_set_of_custom_settings_gets_a_folder_of_its_own():
    default, queued = pgbouncer.home(), pgbouncer.home(settings=QUEUED)
    assert pgbouncer.home(settings={}) == default, "no settings is the default instance"
    assert queued not in (default, pgbouncer.home(100)), "custom settings must never reconfigure a shared instance"
    assert pgbouncer.home(settings=dict(reversed(QUEUED.items()))) == queued, "the same settings, the same instance"
    assert pgbouncer.home(settings={**QUEUED, "query_wait_timeout": 2}) != queued
    assert pgbouncer.home(100, QUEUED) not in (queued, pgbouncer.home(100))


def test_the_config_writes_custom_settings_in_place_of_the_defaults():
    default = pgbouncer._config(Path("/x"), UPSTREAM, 6432, 0)
    custom = pgbouncer._config(Path("/x"), UPSTREAM, 6432, 0, pgbouncer.checked_settings(QUEUED))
    assert f"default_pool_size = {pgbouncer.POOL_SIZE}\n" in default and "query_wait_timeout" not in default
    assert "default_pool_size = 1\n" in custom and "query_wait_timeout = 0.5\n" in custom, custom
    assert custom.count("default_pool_size") == 1 and custom.count("max_client_conn") == 1, (
        f"an overridden setting must be written once, not after the default: {custom}")
    assert "pool_mode = transaction\n" in custom


def test_custom_settings_need_a_local_pgbouncer_not_the_url(monkeypatch):
    monkeypatch.setenv("PGLAB_PGBOUNCER_URL", "postgresql://u:p@127.0.0.1:6432/db")
    assert pgbouncer.ensure_pgbouncer(UPSTREAM) == "postgresql://u:p@127.0.0.1:6432/db", "without settings: as today"
    monkeypatch.setattr(pgbouncer, "pgbouncer_binary", lambda: None)
    assert pgbouncer.unavailable_reason() is None
    assert pgbouncer.unavailable_reason(settings=QUEUED) == pgbouncer.CUSTOM_HINT
    with pytest.raises(pgbouncer.PgBouncerUnavailableError, match="cannot be reconfigured"):
        pgbouncer.ensure_pgbouncer(UPSTREAM, settings=QUEUED)


@pytest.mark.deadline(90)  # starting PgBouncer on a busy machine
async def test_a_custom_instance_applies_query_wait_timeout(dsn):
    if reason := pgbouncer.unavailable_reason(settings=QUEUED):
        pytest.skip(reason)
    bouncer = await within(asyncio.to_thread(pgbouncer.ensure_pgbouncer, dsn, settings=QUEUED), 30, "start PgBouncer")
    pid = pgbouncer.bouncer_status(settings=QUEUED).pid
    again = await within(asyncio.to_thread(pgbouncer.ensure_pgbouncer, dsn, settings=QUEUED), 30, "ensure again")
    assert again == bouncer and pgbouncer.bouncer_status(settings=QUEUED).pid == pid, "a running instance is reused"
    config = {row["key"]: row["value"] for row in await asyncio.to_thread(pgbouncer.show, "CONFIG", bouncer)}
    assert (config["query_wait_timeout"], config["default_pool_size"], config["pool_mode"]) == (
        "0.5", "1", "transaction"), f"SHOW CONFIG: {config}"
    holder = await hold_pgbouncer_server_connection(bouncer)
    queued = await within(asyncpg.connect(bouncer, statement_cache_size=0, command_timeout=10), 10, "connect")
    try:
        with pytest.raises(asyncpg.ConnectionDoesNotExistError, match="query_wait_timeout"):
            await within(queued.fetchval("SELECT 1"), 10, "a query queued behind the held server connection")
    finally:
        queued.terminate()
        holder.terminate()
