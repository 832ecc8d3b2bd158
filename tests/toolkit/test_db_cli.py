"""`pglab db ...` against the course server: the password is printed only when asked for."""

from __future__ import annotations

from urllib.parse import urlsplit

from typer.testing import CliRunner

from pglab.cli import app
from pglab.servers.database import database_url


def test_db_up_masks_the_password_and_db_url_prints_it_for_export():
    dsn = database_url()
    password = urlsplit(dsn).password
    up = CliRunner().invoke(app, ["db", "up"])
    assert up.exit_code == 0 and "***" in up.output
    assert password not in up.output
    url = CliRunner().invoke(app, ["db", "url"])
    assert url.exit_code == 0 and url.output.strip() == dsn


def test_db_status_names_the_server_in_use():
    result = CliRunner().invoke(app, ["db", "status"])
    assert result.exit_code == 0
    assert "running" in result.output or "DATABASE_URL is set" in result.output
