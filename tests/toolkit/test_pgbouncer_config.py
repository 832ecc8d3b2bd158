"""Tests of pglab.servers.pgbouncer's config: max_prepared_statements pinned where the version has it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pglab.servers import pgbouncer

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
