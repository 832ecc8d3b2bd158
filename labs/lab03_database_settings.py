# Your lab file: replace each `raise NotImplementedError("TODO: ...")` with your code,
# then run `pglab check 03`. (Generated from solutions/lab03_database_settings.py by `pglab build-labs`.)
"""Lab 03: `DatabaseSettings`, the pool's configuration from the environment (pydantic-settings v2).

Values come from, highest priority first: keyword arguments, `DB_*` environment
variables, a `.env` file, the defaults below. Each field is checked when the
settings are loaded, so a bad value fails at start-up with the field's name
instead of deep inside `asyncpg.create_pool`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The libpq sslmode values; asyncpg accepts the same names.
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

# Pool sizing per deployment; connection details still come from the environment.
PRESETS: dict[str, dict[str, Any]] = {
    "development": {"pool_min_size": 1, "pool_max_size": 5, "command_timeout": 60.0},
    "production": {"pool_min_size": 10, "pool_max_size": 20, "command_timeout": 30.0,
                   "ssl_mode": "verify-full"},
    "high_traffic": {"pool_min_size": 20, "pool_max_size": 50, "pool_max_queries": 100_000,
                     "pool_max_inactive_lifetime": 60.0, "command_timeout": 10.0,
                     "ssl_mode": "verify-full"},
}


class DatabaseSettings(BaseSettings):
    """Connection and pool settings; `DB_HOST`, `DB_PASSWORD`, ... override the defaults."""

    model_config = SettingsConfigDict(env_prefix="DB_", env_file=".env", extra="ignore")

    host: str = "localhost"
    port: int = Field(5432, ge=1, le=65535)
    database: str = "postgres"
    user: str = "postgres"
    password: SecretStr = SecretStr("")  # prints as '**********' in repr, str and JSON
    pool_min_size: int = Field(10, ge=0)
    pool_max_size: int = Field(20, ge=1)
    pool_max_queries: int = Field(50_000, gt=0)
    pool_max_inactive_lifetime: float = Field(300.0, ge=0)
    command_timeout: float = Field(60.0, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    ssl_mode: SslMode = "prefer"
    ssl_ca: Path | None = None
    ssl_cert: Path | None = None
    ssl_key: Path | None = None

    @model_validator(mode="after")
    def check_pool_sizes(self) -> DatabaseSettings:
        """Reject a pool whose maximum is below its minimum (a ValueError names both fields)."""
        raise NotImplementedError("TODO: implement check_pool_sizes()")

    def get_dsn(self) -> str:
        """A URI DSN asyncpg accepts: `postgresql://user:password@host:port/database?sslmode=...`.

        Never log it: it carries the password. Log `get_masked_dsn()` instead.
        """
        raise NotImplementedError("TODO: implement get_dsn()")

    def get_masked_dsn(self) -> str:
        """The same DSN with the password replaced by `***`, safe for logs."""
        raise NotImplementedError("TODO: implement get_masked_dsn()")

    def get_pool_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `asyncpg.create_pool(**settings.get_pool_kwargs())`."""
        raise NotImplementedError("TODO: implement get_pool_kwargs()")

    @classmethod
    def for_environment(cls, environment: str, **overrides: Any) -> DatabaseSettings:
        """Settings with the pool preset of "development", "production" or "high_traffic".

        The preset beats the environment for the fields it sets; `overrides` beat both.
        Raises ValueError for an unknown environment.
        """
        raise NotImplementedError("TODO: implement for_environment()")
