"""Database isolation: the grader's admin role, and a role and database per graded lab.

The superuser is used once, to create (or repair) `pglab_grade_admin`, a role with
CREATEROLE and CREATEDB but no superuser rights; its password lives in
`.pglab/grade-admin` (mode 600), which no sandbox sees. Grading administers
everything through it. Each lab gets a role `grade_<grader pid>_<random>` (LOGIN, CREATEROLE so
checks can make throw-away roles, a CONNECTION LIMIT, no other right) and a
database of that name that it owns (TEMPORARY revoked from PUBLIC). CONNECT stays granted
to PUBLIC there, since the roles the lab's checks create must log in to it; the lab's proxy
(gate.py) keeps its connections out of every other database. Clean-up ends the role's
sessions, drops the database, then every role the lab created and the role itself,
each under `lock_timeout`; a failure is returned to the caller as that learner's
problem, never raised to stop the batch.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from ..paths import state_dir
from ..servers.dsn import validate_dsn
from .limits import CONNECTIONS
from .report import hide_secret

ADMIN = "pglab_grade_admin"
PREFIX = "grade_"
LOCK_TIMEOUT = "5s"
FAILURES = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class IsolationError(RuntimeError):
    """The grader could not set up its admin role (no server, no superuser once)."""


def with_login(dsn: str, user: str, password: str, database: str | None = None) -> str:
    """`dsn` logged in as another role (and database)."""
    parts = urlsplit(dsn)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    path = f"/{database}" if database else parts.path
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=15, server_settings={"application_name": "pglab-grade",
                                                                   "lock_timeout": LOCK_TIMEOUT})


def admin_dsn(superuser_dsn: str) -> str:
    """The admin role's DSN, creating the role or resetting its password with the superuser when needed."""
    validate_dsn(superuser_dsn)
    secret_file = state_dir() / "grade-admin"
    password = secret_file.read_text().strip() if secret_file.is_file() else ""
    dsn = with_login(superuser_dsn, ADMIN, password) if password else ""

    async def usable() -> bool:
        try:
            conn = await _connect(dsn)
        except FAILURES:
            return False
        await conn.close()
        return True

    if dsn and asyncio.run(usable()):
        hide_secret(password)
        return dsn
    password = secrets.token_urlsafe(24)

    async def create() -> None:
        conn = await _connect(superuser_dsn)
        try:
            exists = await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", ADMIN)
            verb = "ALTER" if exists else "CREATE"
            await conn.execute(f"{verb} ROLE {ADMIN} LOGIN CREATEROLE CREATEDB NOSUPERUSER PASSWORD '{password}'")
            # To end the sessions of a lab's roles at clean-up; never a superuser's.
            await conn.execute(f"GRANT pg_signal_backend TO {ADMIN}")
        finally:
            await conn.close()

    try:
        asyncio.run(create())
    except FAILURES as exc:
        raise IsolationError(f"could not set up the grader's admin role: {type(exc).__name__}: {exc}") from None
    secret_file.touch(mode=0o600)
    secret_file.chmod(0o600)
    secret_file.write_text(password)
    hide_secret(password)
    return with_login(superuser_dsn, ADMIN, password)


@dataclass
class LabDatabase:
    """A role and database of one graded lab."""

    name: str
    password: str
    dsn: str  # as the lab's role, to its database
    others: frozenset[str]  # the server's other databases when it was made: the gate refuses them by name


def create(admin: str) -> LabDatabase:
    """A fresh role and database for one lab; raises one of FAILURES when the server refuses."""
    name = f"{PREFIX}{os.getpid():x}_{secrets.token_hex(4)}"  # the grader's pid: a batch finds its own
    password = secrets.token_urlsafe(18)

    async def make() -> frozenset[str]:
        conn = await _connect(admin)
        try:
            await conn.execute(f"CREATE ROLE {name} LOGIN CREATEROLE CONNECTION LIMIT {CONNECTIONS}"
                               f" PASSWORD '{password}'")
            await conn.execute(f"GRANT {name} TO {ADMIN}")  # the admin can then own its database for it
            # Roles the lab creates are then its members: it may end their sessions (lab 04's outage).
            await conn.execute(f"ALTER ROLE {name} SET createrole_self_grant = 'set, inherit'")
            await conn.execute(f"CREATE DATABASE {name} OWNER {name} TEMPLATE template0")
            # Only this lab (and roles it creates) may use its database; other learners may not.
            await conn.execute(f"REVOKE TEMPORARY ON DATABASE {name} FROM PUBLIC")
            rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname <> $1", name)
            return frozenset(row["datname"] for row in rows)
        finally:
            await conn.close()

    others = asyncio.run(make())
    return LabDatabase(name, password, with_login(admin, name, password, name), others)


def drop(admin: str, name: str) -> str:
    """Remove a lab's database and roles; returns "" or what could not be cleaned up."""

    async def clean() -> None:
        conn = await _connect(admin)
        try:
            created = [r["rolname"] for r in await conn.fetch(
                "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
                " JOIN pg_roles g ON g.oid = m.member WHERE g.rolname = $1 AND m.admin_option"
                " AND r.rolname <> $1", name)]
            roles = [*created, name]
            for role in roles:  # no new sessions, then end the ones left, on every database
                await conn.execute(f'ALTER ROLE "{role}" NOLOGIN')
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                               " WHERE usename = ANY($1::text[])", roles)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for role in roles:
                await conn.execute(f'DROP OWNED BY "{role}"')  # what it may own in the admin's database
                await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await conn.close()

    for attempt in range(3):
        try:
            asyncio.run(clean())
            return ""
        except FAILURES as exc:
            problem = f"the grader could not clean up database {name} ({type(exc).__name__}: {exc})"
            if attempt == 2:
                return problem
    return ""
