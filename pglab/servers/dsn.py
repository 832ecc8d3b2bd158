"""Connection strings: build, validate and mask PostgreSQL URIs."""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit, urlunsplit

ROLE = "pglab"
DATABASE = "pglab"


class BadDsnError(ValueError):
    """A connection string that asyncpg cannot use, with the reason and the fix."""


def build_dsn(host: str, port: int, password: str, *, user: str = ROLE, database: str = DATABASE) -> str:
    """A URI DSN with the user and password percent-encoded."""
    return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{database}"


def validate_dsn(dsn: str) -> str:
    """Return `dsn` when asyncpg can parse it; raise `BadDsnError` saying what to fix."""
    if re.match(r"^\s*\w+\s*=", dsn):
        raise BadDsnError(
            "this looks like a libpq keyword string ('host=... port=...'); asyncpg needs a URI: "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise BadDsnError(
            f"the scheme must be 'postgresql://' (got {parts.scheme or 'none'!r}); "
            "expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise BadDsnError(f"the port is not a number from 1 to 65535 ({exc})") from None
    if not parts.hostname:
        raise BadDsnError("no host; expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    return dsn


def mask_dsn(dsn: str) -> str:
    """The DSN with its password replaced by `***`, safe to print or log."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def with_database(dsn: str, database: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))
