"""Checks for lab 03: DatabaseSettings."""

from __future__ import annotations

import json
import os
import uuid
import warnings
from urllib.parse import parse_qs, unquote, urlsplit

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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            lab.DatabaseSettings(_env_file=None, pool_min_size=5, pool_max_size=5)
        except ValidationError as exc:
            pytest.fail(f"pool_max_size == pool_min_size is a valid (fixed-size) pool, yet it was rejected: {exc}",
                        pytrace=False)
    assert not caught, (f"building DatabaseSettings warned: {caught[0].message} "
                        "(a model_validator(mode=\"after\") must end with `return self`)")
    try:
        lab.DatabaseSettings(_env_file=None, **bad)
    except ValidationError as exc:
        assert field in str(exc), f"the error for {bad} should name {field!r}, got: {exc}"
    else:
        pytest.fail(f"DatabaseSettings({bad}) should raise a ValidationError naming {field!r}, it was accepted",
                    pytrace=False)


async def test_a_hard_password_round_trips_through_get_dsn_into_a_connection(lab, dsn):
    role = f"lab03@{uuid.uuid4().hex[:8]}"  # an '@' in the user name too
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{HARD_PASSWORD}'")
        settings = lab.DatabaseSettings(_env_file=None, user=role, password=HARD_PASSWORD, **server(dsn))
        url = settings.get_dsn()
        assert url.startswith(("postgresql://", "postgres://")), "get_dsn() should return a URI, not libpq keywords"
        assert "sslmode=disable" in urlsplit(url).query, "ssl_mode should travel as the sslmode query parameter"
        try:
            conn = await within(asyncpg.connect(url), 10, "asyncpg.connect(get_dsn())")
        except ValueError as exc:
            pytest.fail(f"asyncpg could not parse get_dsn() ({exc}): an '@', ':', '/' or '#' in the user or "
                        "password breaks the URI; percent-encode both with urllib.parse.quote(value, safe='')",
                        pytrace=False)
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


def test_get_dsn_adds_ssl_files_only_when_set_and_keeps_the_uri_parts(lab, tmp_path):
    plain = lab.DatabaseSettings(_env_file=None, host="db.example.com", ssl_mode="require")
    query = parse_qs(urlsplit(plain.get_dsn()).query)
    assert query.get("sslmode") == ["require"], f"sslmode should be in the query string, got {query}"
    unset = {"sslrootcert", "sslcert", "sslkey"} & set(query)
    assert not unset, f"SSL file options that are not set must stay out of the DSN, found {sorted(unset)}"
    files = {"ssl_ca": tmp_path / "root.crt", "ssl_cert": tmp_path / "client.crt", "ssl_key": tmp_path / "client.key"}
    query = parse_qs(urlsplit(lab.DatabaseSettings(_env_file=None, **files).get_dsn()).query)
    expected = {"sslrootcert": [str(files["ssl_ca"])], "sslcert": [str(files["ssl_cert"])],
                "sslkey": [str(files["ssl_key"])]}
    got = {key: query.get(key) for key in expected}
    assert got == expected, f"ssl_ca, ssl_cert and ssl_key should travel as {expected}, got {got}"
    ipv6 = urlsplit(lab.DatabaseSettings(_env_file=None, host="::1", port=6432).get_dsn())
    try:
        where = (ipv6.hostname, ipv6.port)
    except ValueError as exc:
        where = f"unparsable ({exc})"
    assert where == ("::1", 6432), f"an IPv6 host goes in brackets, [::1]:6432, got {where}"
    odd = "sales/2024 #eu?"
    path = urlsplit(lab.DatabaseSettings(_env_file=None, database=odd).get_dsn()).path
    assert unquote(path.removeprefix("/")) == odd and "/" not in path.removeprefix("/"), (
        f"a database name with '/', '#' or '?' must be percent-encoded, got the path {path!r}"
    )


async def test_get_pool_kwargs_open_a_working_pool(lab, dsn, app_name):
    parts = urlsplit(dsn)
    settings = lab.DatabaseSettings(
        _env_file=None, user=unquote(parts.username), password=unquote(parts.password), **server(dsn),
        pool_min_size=1, pool_max_size=2, pool_max_queries=1000, pool_max_inactive_lifetime=123.0,
        command_timeout=5, connect_timeout=7,
    )
    kwargs = settings.get_pool_kwargs()
    expected = {"dsn": settings.get_dsn(), "min_size": 1, "max_size": 2, "max_queries": 1000,
                "max_inactive_connection_lifetime": 123.0, "command_timeout": 5, "timeout": 7}
    wrong = {key: "missing" if key not in kwargs else "not get_dsn()" if key == "dsn"
             else f"{kwargs[key]!r}, expected {value!r}" for key, value in expected.items() if kwargs.get(key) != value}
    assert not wrong, (
        f"get_pool_kwargs() should map every setting to create_pool's keyword; wrong: {wrong} "
        "(connect_timeout is create_pool's `timeout`, pool_max_inactive_lifetime its "
        "`max_inactive_connection_lifetime`)"
    )
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
    overridden = lab.DatabaseSettings.for_environment("production", _env_file=None, pool_max_size=99)
    assert overridden.pool_max_size == 99, (
        f"an override should beat the preset: pool_max_size=99 gave {overridden.pool_max_size}"
    )
    try:
        lab.DatabaseSettings.for_environment("staging", _env_file=None)
    except ValueError as exc:
        assert "staging" in str(exc), f"the error should name the unknown environment 'staging': {exc}"
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - the learner reads what was raised instead
        pytest.fail(f"an unknown environment raised {type(exc).__name__}: {exc}; raise a ValueError naming it",
                    pytrace=False)
    else:
        pytest.fail("for_environment('staging') should raise ValueError: there is no such preset", pytrace=False)
