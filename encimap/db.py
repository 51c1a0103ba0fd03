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
from encimap.metrics import DB_QUERY_SECONDS, DB_RECONNECTS

log = get_logger(__name__)

Database = Literal["motorical", "encimap"]
DATABASES: tuple[Database, ...] = ("motorical", "encimap")

# Least-privilege roles per service (see sql/*/repeatable/90_privileges.sql). The auth role
# serves both databases; the intake and IMAP roles exist only in encimap's database.
ROLE_AUTH = "encimap_auth"
ROLE_INTAKE = "encimap_intake"
ROLE_IMAP = "encimap_imap"


# What a lost, failing or slow database raises through asyncpg. InternalClientError covers a
# multi-host URL none of whose servers is (yet) the primary (TargetServerAttributeNotMatched,
# during a failover) and a connection whose protocol state the server's sudden exit left
# inconsistent ("cannot switch to state ...; another operation is in progress").
DATABASE_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)

# A statement beyond one of PostgreSQL's own limits (SQLSTATE class 54: an index row too large,
# an expression nested too deeply, a mailbox's keyword limit): the same request fails again,
# so it is the request's fault, answered as a limit, not as an outage to retry.
LIMIT_ERRORS = (asyncpg.exceptions.ProgramLimitExceededError,)

# Errors that say the server of a pooled connection is no longer a primary that will take
# writes (demoted to a standby, shutting down, crashed, restarting): the pool drops the
# connection instead of handing it out again, and its next acquisition connects to whichever
# host of the URL is the primary now.
_NOT_PRIMARY = (
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
)


class DatabaseUnavailable(Exception):
    """A database could not be reached or did not answer in time."""


def database_url(config: DatabaseConfig, database: Database, *, listen: bool = False) -> str:
    """The URL of `database`; with `listen`, the one for LISTEN connections (`*_listen_url`,
    a direct URL where the pools go through PgBouncer)."""
    if listen:
        direct = (
            config.motorical_listen_url if database == "motorical" else config.encimap_listen_url
        )
        if direct:
            return direct
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


class PooledConnection(asyncpg.Connection):
    """A pool's connection that knows whether it ended by our hand (closed when idle, when the
    pool closes, or dropped below) or was lost to the server, and whether it must be dropped:
    its server refused a write as a standby ("standby"), or its protocol state is no longer
    usable ("broken"). Counted in encimap_db_reconnects_total."""

    database: str = ""
    ended_by_us = False
    drop = ""  # why the pool must not hand this connection out again

    async def close(self, *, timeout: float | None = None) -> None:
        self.ended_by_us = True
        await super().close(timeout=timeout)

    def terminate(self) -> None:
        self.ended_by_us = True
        super().terminate()

    def observe(self, query: asyncpg.connection.LoggedQuery) -> None:
        """Query logger: remember a sign that the server is no longer a writable primary."""
        if isinstance(query.exception, _NOT_PRIMARY):
            self.drop = "standby"
        elif isinstance(query.exception, asyncpg.exceptions.InternalClientError):
            self.drop = "broken"

    def on_termination(self, _conn: object) -> None:
        if not self.ended_by_us:
            DB_RECONNECTS.labels(self.database, "lost").inc()
            log.warning("pool.connection_lost", database=self.database, server=self.server)

    @property
    def server(self) -> str:
        """host:port this connection went to (one of the URL's hosts)."""
        addr = self._addr
        return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


async def _keep_session(conn: PooledConnection) -> None:
    """Pool release hook: asyncpg has already rolled back an open transaction and dropped the
    connection's listeners; nothing else needs undoing, because encimap's code never changes
    session state on a pooled connection (the role is a startup parameter, no SET, no
    session-level advisory locks, LISTEN is removed by its owner). The default hook would run
    `RESET ALL; UNLISTEN *; CLOSE ALL; SELECT pg_advisory_unlock_all()` on every release: one
    more round trip for every single-statement `pool.fetch*()` call.

    A connection whose server refused a write as a standby (or is shutting down), or whose
    protocol state is broken, is dropped here, so the pool's next acquisition connects to
    the current primary."""
    if conn.drop:
        DB_RECONNECTS.labels(conn.database, conn.drop).inc()
        log.warning(
            "pool.connection_dropped", database=conn.database, server=conn.server, reason=conn.drop
        )
        conn.terminate()


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
    listen: bool = False,
    target_session_attrs: str | None = None,
) -> asyncpg.Pool:
    """A pool on one database, running as `role` when `database.set_role` is on; with
    `listen`, on the database's URL for LISTEN connections; `target_session_attrs` overrides
    the URL's (e.g. "prefer-standby" for reads that may come from a standby).

    The role is a startup parameter rather than a `SET ROLE`, so a session can never return
    to the (more privileged) login user, and a release needs no `RESET ALL` (`_keep_session`).
    With a multi-host URL each new connection goes to the host that matches
    `target_session_attrs`; connections to a server that stopped being the primary are
    dropped (`PooledConnection`, `_keep_session`), so the pool follows a failover by itself.
    """
    settings = {"application_name": f"{config.application_name}-{purpose}".rstrip("-")}
    if role and config.set_role:
        settings["role"] = role
    query_seconds = DB_QUERY_SECONDS.labels(database)

    async def setup_connection(conn: PooledConnection) -> None:
        conn.database = database
        conn.add_query_logger(lambda query: query_seconds.observe(query.elapsed))
        conn.add_query_logger(conn.observe)
        conn.add_termination_listener(conn.on_termination)

    try:
        pool = await asyncpg.create_pool(
            database_url(config, database, listen=listen),
            password=_password(config, database),
            connection_class=PooledConnection,
            statement_cache_size=config.statement_cache_size,
            # None: as the URL says (asyncpg's default there is "any").
            target_session_attrs=target_session_attrs,
            min_size=min(config.pool_min_size, max_size or config.pool_max_size),
            max_size=max_size or config.pool_max_size,
            max_inactive_connection_lifetime=config.idle_timeout,
            timeout=config.connect_timeout,
            command_timeout=config.command_timeout,
            server_settings=settings,
            init=setup_connection,
            reset=_keep_session,
        )
    except DATABASE_ERRORS as exc:
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
            statement_cache_size=config.statement_cache_size,
            server_settings={"application_name": f"{config.application_name}-admin"},
        )
    except DATABASE_ERRORS as exc:
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
    server: str = ""  # host:port of the PostgreSQL server that answered
    primary: bool | None = None  # False: a standby (in recovery)

    def describe(self) -> str:
        if not self.ok:
            return f"unavailable: {self.error} ({self.latency_ms:.1f} ms)"
        role = "primary" if self.primary else "standby"
        return f"ok, {role} {self.server} ({self.latency_ms:.1f} ms)"


_SERVER = (
    "SELECT coalesce(host(inet_server_addr()), 'local') || ':' || "
    "coalesce(inet_server_port(), current_setting('port')::int), NOT pg_is_in_recovery()"
)


async def check_health(
    executor: asyncpg.Pool | asyncpg.Connection, database: Database, timeout: float = 2.0
) -> Health:
    """Whether `database` answers through `executor`, which server answered (through
    PgBouncer too: the address is the server's own) and whether that server is the primary."""
    started = time.perf_counter()
    try:
        row = await executor.fetchrow(_SERVER, timeout=timeout)
    except DATABASE_ERRORS as exc:
        return Health(database, False, (time.perf_counter() - started) * 1000, _describe(exc))
    elapsed = (time.perf_counter() - started) * 1000
    return Health(database, True, elapsed, server=row[0], primary=row[1])
