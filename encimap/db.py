"""The two PostgreSQL databases: connection pools, health checks (the migration runner is
encimap.migrations).

`motorical` is the platform database (MotorBlocks; encimap only reads it), `encimap` is
encimap's own (vaultboxes, credentials, certificates, messages). A small installation may point
both URLs at one database: the migration runner keys its records by component.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg

from encimap.config import DatabaseConfig
from encimap.logs import get_logger
from encimap.metrics import DB_QUERY_SECONDS

log = get_logger(__name__)

Database = Literal["motorical", "encimap"]
DATABASES: tuple[Database, ...] = ("motorical", "encimap")

# Least-privilege roles per service (see sql/*/repeatable/90_privileges.sql). The auth role
# serves both databases; the intake and IMAP roles exist only in encimap's database.
ROLE_AUTH = "encimap_auth"
ROLE_INTAKE = "encimap_intake"
ROLE_IMAP = "encimap_imap"


# What a lost, failing or slow database raises through asyncpg.
DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class DatabaseUnavailable(Exception):
    """A database could not be reached or did not answer in time."""


def database_url(config: DatabaseConfig, database: Database) -> str:
    return config.motorical_url if database == "motorical" else config.encimap_url


def _password(config: DatabaseConfig, database: Database) -> str | None:
    name = (
        config.motorical_password_file if database == "motorical" else config.encimap_password_file
    )
    if not name:
        return None
    path = Path(name)
    if not path.is_absolute() and "CREDENTIALS_DIRECTORY" in os.environ:
        path = Path(os.environ["CREDENTIALS_DIRECTORY"]) / name
    return path.read_text().strip()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pool release hook: asyncpg has already rolled back an open transaction and dropped the
    connection's listeners; nothing else needs undoing, because encimap's code never changes
    session state on a pooled connection (the role is a startup parameter, no SET, no
    session-level advisory locks, LISTEN is removed by its owner). The default hook would run
    `RESET ALL; UNLISTEN *; CLOSE ALL; SELECT pg_advisory_unlock_all()` on every release: one
    more round trip for every single-statement `pool.fetch*()` call."""


class acquire:
    """`async with acquire(pool, timeout) as conn`: a pooled connection, waited for at most
    `timeout` seconds (TimeoutError).

    asyncpg's `pool.acquire(timeout=...)` runs every acquisition as a task of its own under
    `wait_for`; the intake acquires twice per message, so the bound is an `asyncio.timeout`
    here, which costs a timer. A timed-out acquisition gives its connection back (asyncpg
    handles the cancellation)."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: asyncpg.Pool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout

    async def __aenter__(self) -> asyncpg.Connection:
        async with asyncio.timeout(self._timeout):
            self._conn = await self._pool.acquire()
        return self._conn

    async def __aexit__(self, *_exc: object) -> None:
        await self._pool.release(self._conn)


async def create_pool(
    config: DatabaseConfig,
    database: Database,
    *,
    role: str | None = None,
    purpose: str = "",
    min_size: int | None = None,
    max_size: int | None = None,
) -> asyncpg.Pool:
    """A pool on one database, running as `role` when `database.set_role` is on.

    The role is a startup parameter rather than a `SET ROLE`, so a session can never return
    to the (more privileged) login user, and a release needs no `RESET ALL` (`_keep_session`).
    """
    settings = {"application_name": f"{config.application_name}-{purpose}".rstrip("-")}
    if role and config.set_role:
        settings["role"] = role
    query_seconds = DB_QUERY_SECONDS.labels(database)

    async def observe_queries(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda query: query_seconds.observe(query.elapsed))

    try:
        pool = await asyncpg.create_pool(
            database_url(config, database),
            password=_password(config, database),
            min_size=min(config.pool_min_size, max_size or config.pool_max_size),
            max_size=max_size or config.pool_max_size,
            max_inactive_connection_lifetime=config.idle_timeout,
            timeout=config.connect_timeout,
            command_timeout=config.command_timeout,
            server_settings=settings,
            init=observe_queries,
            reset=_keep_session,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"{database} database: {_describe(exc)}") from exc
    log.info("pool.open", database=database, role=settings.get("role"), purpose=purpose)
    return pool


@asynccontextmanager
async def connect(config: DatabaseConfig, database: Database) -> AsyncIterator[asyncpg.Connection]:
    """One administrative connection as the configured login user (CLI, migrations)."""
    try:
        conn = await asyncpg.connect(
            database_url(config, database),
            password=_password(config, database),
            timeout=config.connect_timeout,
            command_timeout=config.command_timeout,
            server_settings={"application_name": f"{config.application_name}-admin"},
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"{database} database: {_describe(exc)}") from exc
    try:
        yield conn
    finally:
        await conn.close()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class Health:
    database: Database
    ok: bool
    latency_ms: float
    error: str = ""


async def check_health(pool: asyncpg.Pool, database: Database, timeout: float = 2.0) -> Health:
    started = time.perf_counter()
    try:
        await pool.fetchval("SELECT 1", timeout=timeout)
    except DATABASE_ERRORS as exc:
        return Health(database, False, (time.perf_counter() - started) * 1000, _describe(exc))
    return Health(database, True, (time.perf_counter() - started) * 1000)
