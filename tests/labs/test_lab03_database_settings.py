"""Checks for lab 03: DatabaseSettings."""

from __future__ import annotations

import json
import os
import uuid
from urllib.parse import unquote, urlsplit

import asyncpg
import pytest
from pydantic import ValidationError

from pglab.testing import within

MODULE = "lab03_database_settings"
HARD_PASSWORD = "p@ss:w/rd#1"  # every character that breaks a naive URI



@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No DB_* variable from the shell and no stray .env: each test sets what it needs."""
    for name in list(os.environ):
        if name.upper().startswith("DB_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # the default env_file '.env' is looked up here


def server(dsn: str) -> dict:
    """Where the course server listens, as DatabaseSettings keyword arguments."""
    parts = urlsplit(dsn)
    return {"host": "127.0.0.1", "port": parts.port, "database": parts.path.lstrip("/"), "ssl_mode": "disable"}


def test_environment_variables_and_dotenv_override_the_defaults(lab, monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("DB_DATABASE=from_dotenv\nDB_HOST=dotenv.example\n")
    monkeypatch.setenv("DB_HOST", "db.example.com")
    monkeypatch.setenv("DB_PORT", "6543")
    monkeypatch.setenv("DB_POOL_MAX_SIZE", "42")
    monkeypatch.setenv("DB_PASSWORD", "from-env")
    settings = lab.DatabaseSettings()
    assert (settings.host, settings.port, settings.pool_max_size) == ("db.example.com", 6543, 42), (
        "DB_HOST, DB_PORT and DB_POOL_MAX_SIZE should override the defaults (env_prefix='DB_')"
    )
    assert settings.password.get_secret_value() == "from-env", "DB_PASSWORD should set the password"
    assert settings.database == "from_dotenv", "values from a .env file should be read (env_file='.env')"
    assert lab.DatabaseSettings(host="kwarg.example").host == "kwarg.example", "keyword arguments beat the environment"
    assert lab.DatabaseSettings(_env_file=None).database != "from_dotenv"


@pytest.mark.parametrize(("bad", "field"), [
    ({"pool_min_size": 10, "pool_max_size": 5}, "pool_max_size"),
    ({"port": 0}, "port"),
    ({"port": 70000}, "port"),
    ({"command_timeout": 0}, "command_timeout"),
    ({"connect_timeout": -1}, "connect_timeout"),
    ({"ssl_mode": "sometimes"}, "ssl_mode"),
])
def test_an_invalid_value_raises_a_validation_error_naming_the_field(lab, bad, field):
    equal = lab.DatabaseSettings(_env_file=None, pool_min_size=5, pool_max_size=5)
    assert equal.pool_max_size == 5, "pool_max_size == pool_min_size is a valid (fixed-size) pool"
    with pytest.raises(ValidationError) as excinfo:
        lab.DatabaseSettings(_env_file=None, **bad)
    assert field in str(excinfo.value), f"the error for {bad} should name {field!r}, got: {excinfo.value}"


async def test_a_hard_password_round_trips_through_get_dsn_into_a_connection(lab, dsn):
    role = f"lab03@{uuid.uuid4().hex[:8]}"  # an '@' in the user name too
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{HARD_PASSWORD}'")
        settings = lab.DatabaseSettings(_env_file=None, user=role, password=HARD_PASSWORD, **server(dsn))
        url = settings.get_dsn()
        assert url.startswith(("postgresql://", "postgres://")), "get_dsn() should return a URI, not libpq keywords"
        assert "sslmode=disable" in urlsplit(url).query, "ssl_mode should travel as the sslmode query parameter"
        conn = await within(asyncpg.connect(url), 10, "asyncpg.connect(get_dsn())")
        try:
            assert await conn.fetchval("SELECT current_user") == role
        finally:
            await conn.close()
    except asyncpg.InvalidPasswordError:
        pytest.fail("the server rejected the password: percent-encode user and password with "
                    "urllib.parse.quote(value, safe='')", pytrace=False)
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS \"{role}\"")
        await admin.close()


async def test_get_pool_kwargs_open_a_working_pool(lab, dsn, app_name):
    parts = urlsplit(dsn)
    settings = lab.DatabaseSettings(
        _env_file=None, user=unquote(parts.username), password=unquote(parts.password), **server(dsn),
        pool_min_size=1, pool_max_size=2, pool_max_queries=1000, command_timeout=5, connect_timeout=7,
    )
    kwargs = settings.get_pool_kwargs()
    expected = {"min_size": 1, "max_size": 2, "max_queries": 1000, "command_timeout": 5}
    wrong = {key: kwargs.get(key) for key, value in expected.items() if kwargs.get(key) != value}
    assert not wrong, f"get_pool_kwargs() should map the pool_* settings to create_pool's names: {wrong}"
    pool = await within(asyncpg.create_pool(**kwargs, server_settings={"application_name": app_name}), 15,
                        "asyncpg.create_pool(**get_pool_kwargs())")
    try:
        assert (pool.get_min_size(), pool.get_max_size()) == (1, 2)
        assert await within(pool.fetchval("SELECT 1"), 5, "a query through the pool") == 1
    finally:
        pool.terminate()


def test_the_password_never_shows(lab):
    settings = lab.DatabaseSettings(_env_file=None, user="app", password=HARD_PASSWORD, host="db.example.com")
    masked = settings.get_masked_dsn()
    shown = {"repr()": repr(settings), "str()": str(settings), "model_dump_json()": settings.model_dump_json(),
             "get_masked_dsn()": masked}
    for where, text in shown.items():
        for secret in (HARD_PASSWORD, "p%40ss"):
            assert secret not in text, f"the password appears in {where}"
    parts = urlsplit(masked)
    assert (parts.hostname, parts.port, parts.username) == ("db.example.com", 5432, "app"), (
        f"the masked DSN should keep everything but the password, got {masked}"
    )
    assert "***" in masked, "mark the hidden password with ***"
    assert json.loads(settings.model_dump_json())["host"] == "db.example.com"


def test_presets_for_each_environment(lab, monkeypatch):
    monkeypatch.setenv("DB_HOST", "db.internal")
    presets = {name: lab.DatabaseSettings.for_environment(name, _env_file=None)
               for name in ("development", "production", "high_traffic")}
    for name, settings in presets.items():
        assert isinstance(settings, lab.DatabaseSettings), f"for_environment({name!r}) should return DatabaseSettings"
        assert settings.host == "db.internal", f"the {name} preset should keep connection details from the environment"
        assert settings.pool_min_size <= settings.pool_max_size
    sizes = [presets[name].pool_max_size for name in ("development", "production", "high_traffic")]
    assert sizes == sorted(sizes) and sizes[0] < sizes[2], (
        f"pool_max_size should grow from development to high_traffic, got {sizes}"
    )
    assert presets["production"].ssl_mode in ("require", "verify-ca", "verify-full"), (
        "production should require TLS"
    )
    assert lab.DatabaseSettings.for_environment("production", _env_file=None, pool_max_size=99).pool_max_size == 99
    with pytest.raises(ValueError, match="staging"):
        lab.DatabaseSettings.for_environment("staging", _env_file=None)
