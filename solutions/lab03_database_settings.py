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
        # BEGIN SOLUTION
        # A cross-field rule runs after every field is parsed, so it compares the
        # two sizes themselves, whatever order they were declared or given in.
        if self.pool_max_size < self.pool_min_size:
            raise ValueError(
                f"pool_max_size ({self.pool_max_size}) must be >= "
                f"pool_min_size ({self.pool_min_size})"
            )
        return self
        # END SOLUTION

    def get_dsn(self) -> str:
        """A URI DSN asyncpg accepts: `postgresql://user:password@host:port/database?sslmode=...`.

        Never log it: it carries the password. Log `get_masked_dsn()` instead.
        """
        # BEGIN SOLUTION
        # '@', ':', '/', '#' and '%' in a user name or password would break the
        # URI's structure; quote(safe="") percent-encodes every one of them.
        user = quote(self.user, safe="")
        password = quote(self.password.get_secret_value(), safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        params = {"sslmode": self.ssl_mode}
        files = {"sslrootcert": self.ssl_ca, "sslcert": self.ssl_cert, "sslkey": self.ssl_key}
        params.update({name: str(path) for name, path in files.items() if path is not None})
        database = quote(self.database, safe="")
        return f"postgresql://{user}:{password}@{host}:{self.port}/{database}?{urlencode(params)}"
        # END SOLUTION

    def get_masked_dsn(self) -> str:
        """The same DSN with the password replaced by `***`, safe for logs."""
        # BEGIN SOLUTION
        parts = urlsplit(self.get_dsn())
        # The encoded password contains no '@', so the last '@' ends the credentials.
        server = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{quote(self.user, safe='')}:***@{server}"))
        # END SOLUTION

    def get_pool_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `asyncpg.create_pool(**settings.get_pool_kwargs())`."""
        # BEGIN SOLUTION
        return {
            "dsn": self.get_dsn(),
            "min_size": self.pool_min_size,
            "max_size": self.pool_max_size,
            "max_queries": self.pool_max_queries,
            "max_inactive_connection_lifetime": self.pool_max_inactive_lifetime,
            "command_timeout": self.command_timeout,
            "timeout": self.connect_timeout,  # passed on to asyncpg.connect()
        }
        # END SOLUTION

    @classmethod
    def for_environment(cls, environment: str, **overrides: Any) -> DatabaseSettings:
        """Settings with the pool preset of "development", "production" or "high_traffic".

        The preset beats the environment for the fields it sets; `overrides` beat both.
        Raises ValueError for an unknown environment.
        """
        # BEGIN SOLUTION
        if environment not in PRESETS:
            raise ValueError(
                f"unknown environment {environment!r}; expected one of {sorted(PRESETS)}"
            )
        return cls(**{**PRESETS[environment], **overrides})
        # END SOLUTION
