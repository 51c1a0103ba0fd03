"""Schema migrations of the two databases, as Flyway shapes them.

- Versioned migrations, `sql/<database>/NNN_name.sql`: table changes and data moves, applied
  once each, in order, each in one transaction, recorded in `schema_migrations`.
- Repeatable migrations, `sql/<database>/repeatable/*.sql`: functions, views, triggers and
  privileges, one file per object (or per privilege picture), written so they can run again.
  Re-applied together, in file name order and in one transaction, whenever one of them changed
  (checksums in `schema_repeatables`) or a versioned migration ran, so a function or view
  always matches the tables beneath it and lives in exactly one file.

A failure names the file, the statement's first words and PostgreSQL's message on one line,
and leaves nothing of that migration applied. `plan` runs the same steps in a transaction it
rolls back, to say what each would change on this very database.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from encimap.db import Database
from encimap.logs import get_logger
from encimap.store import adoption
from encimap.store.adoption import Progress

log = get_logger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_VERSIONED_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_REPEATABLE_NAME = re.compile(r"^\d{2}_[a-z0-9_]+\.sql$")
# One migrator at a time per database, whichever host runs it.
_MIGRATION_LOCK = 0x656E63696D6170
# A migration waits this long for a table lock (a long platform transaction, say), then fails
# cleanly instead of queueing every other statement on that table behind it.
LOCK_TIMEOUT = "10s"

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component   text NOT NULL,
    version     integer NOT NULL,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
);
CREATE TABLE IF NOT EXISTS schema_repeatables (
    component   text NOT NULL,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, name)
);
"""


class MigrationError(Exception):
    """A migration failed or cannot run; the message is one line for the operator."""


@dataclass(frozen=True)
class Migration:
    component: Database
    version: int
    name: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.version:03d}_{self.name}"


@dataclass(frozen=True)
class Repeatable:
    component: Database
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@dataclass
class Outcome:
    """What a run applied (or, for a plan, would apply): statement summaries per file."""

    versioned: list[Migration] = field(default_factory=list)
    repeatables: list[Repeatable] = field(default_factory=list)
    statements: dict[str, list[str]] = field(default_factory=dict)
    data_moves: adoption.Pending | None = None  # what `upgrade` then moves (encimap only)


def available_migrations(database: Database, sql_dir: Path = SQL_DIR) -> list[Migration]:
    migrations = []
    for path in sorted((sql_dir / database).glob("*.sql")):
        match = _VERSIONED_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path}: versioned migrations are named NNN_name.sql")
        migrations.append(Migration(database, int(match[1]), match[2], path))
    return migrations


def available_repeatables(database: Database, sql_dir: Path = SQL_DIR) -> list[Repeatable]:
    found = []
    for path in sorted((sql_dir / database / "repeatable").glob("*.sql")):
        if not _REPEATABLE_NAME.match(path.name):
            raise MigrationError(f"{path}: repeatable migrations are named NN_name.sql")
        found.append(Repeatable(database, path))
    return found


def split_statements(sql: str) -> Iterator[str]:
    """The statements of a SQL file, in one linear pass that respects comments, quoted
    strings and identifiers, and dollar-quoted bodies (so `;` inside a function is no end)."""
    start = i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c == "-" and sql.startswith("--", i):
            i = _find_end(sql, "\n", i + 2)
        elif c == "/" and sql.startswith("/*", i):
            i = _find_end(sql, "*/", i + 2)
        elif c in "'\"":
            i = _end_of_quoted(sql, i, c)
        elif c == "$" and (tag := re.match(r"\$[A-Za-z_]*\$", sql[i : i + 64])):
            i = _find_end(sql, tag[0], i + len(tag[0]))
        elif c == ";":
            if statement := sql[start:i].strip():
                yield statement
            start = i = i + 1
        else:
            i += 1
    if (statement := sql[start:].strip()) and summary(statement):
        yield statement


def _find_end(sql: str, token: str, offset: int) -> int:
    end = sql.find(token, offset)
    return len(sql) if end < 0 else end + len(token)


def _end_of_quoted(sql: str, offset: int, quote: str) -> int:
    """Past the closing quote; a doubled quote is part of the string."""
    i = offset + 1
    while True:
        i = sql.find(quote, i)
        if i < 0:
            return len(sql)
        if not sql.startswith(quote * 2, i):
            return i + 1
        i += 2


def summary(statement: str, width: int = 96) -> str:
    """The statement's first words: its first line that is not a comment."""
    for line in statement.splitlines():
        line = line.strip()
        if line and not line.startswith("--"):
            return line if len(line) <= width else line[: width - 1] + "…"
    return ""


async def applied_versions(conn: asyncpg.Connection, database: Database) -> dict[int, str]:
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return {}
    rows = await conn.fetch(
        "SELECT version, name FROM schema_migrations WHERE component = $1", database
    )
    return {row["version"]: row["name"] for row in rows}


async def _applied_checksums(conn: asyncpg.Connection, database: Database) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT name, checksum FROM schema_repeatables WHERE component = $1", database
    )
    return {row["name"]: row["checksum"] for row in rows}


def pending_migrations(database: Database, done: dict[int, str]) -> list[Migration]:
    """The migrations not yet applied; refuses a history this encimap does not know."""
    available = available_migrations(database)
    known = {m.version: m.name for m in available}
    for version, name in sorted(done.items()):
        if known.get(version) != name:
            raise MigrationError(
                f"{database}: schema_migrations records {version:03d}_{name}, which this "
                "encimap does not have (a database made by a pre-release encimap: recreate it;"
                " for the demo, `make clean`)"
            )
    return [m for m in available if m.version not in done]


async def _run_file(conn: asyncpg.Connection, path: Path, outcome: Outcome) -> None:
    executed = outcome.statements.setdefault(path.name, [])
    for statement in split_statements(path.read_text()):
        try:
            await conn.execute(statement)
        except asyncpg.PostgresError as exc:
            where = path.relative_to(SQL_DIR.parent) if path.is_relative_to(SQL_DIR) else path
            message = " ".join(str(exc).split())
            raise MigrationError(f"{where}: {summary(statement)}: {message}") from None
        executed.append(summary(statement))


async def _apply(conn: asyncpg.Connection, database: Database, outcome: Outcome) -> None:
    """Every pending versioned migration in its own transaction, then the repeatables. With
    nothing to do it changes nothing and only reads, so the services' login may run it."""
    if not await conn.fetchval(
        "SELECT to_regclass('schema_migrations') IS NOT NULL"
        " AND to_regclass('schema_repeatables') IS NOT NULL"
    ):
        await conn.execute(_BOOKKEEPING)
    for migration in pending_migrations(database, await applied_versions(conn, database)):
        async with conn.transaction():
            await _run_file(conn, migration.path, outcome)
            await conn.execute(
                "INSERT INTO schema_migrations (component, version, name) VALUES ($1, $2, $3)",
                database,
                migration.version,
                migration.name,
            )
        log.info("migration.applied", database=database, migration=migration.label)
        outcome.versioned.append(migration)
    repeatables = available_repeatables(database)
    checksums = await _applied_checksums(conn, database)
    stale = outcome.versioned or any(checksums.get(r.name) != r.checksum for r in repeatables)
    if not stale:
        return
    async with conn.transaction():
        for repeatable in repeatables:
            await _run_file(conn, repeatable.path, outcome)
            await conn.execute(
                """INSERT INTO schema_repeatables (component, name, checksum) VALUES ($1, $2, $3)
                   ON CONFLICT (component, name)
                   DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()""",
                database,
                repeatable.name,
                repeatable.checksum,
            )
        await conn.execute(
            "DELETE FROM schema_repeatables WHERE component = $1 AND name <> ALL($2::text[])",
            database,
            [r.name for r in repeatables],
        )
    log.info("migration.repeatables_applied", database=database, count=len(repeatables))
    outcome.repeatables = repeatables


async def migrate(conn: asyncpg.Connection, database: Database) -> Outcome:
    """Apply what is pending on `database`; raises MigrationError with one line on failure."""
    await conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        outcome = Outcome()
        await _apply(conn, database, outcome)
        return outcome
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


class _RolledBack(Exception):
    pass


async def plan(conn: asyncpg.Connection, database: Database) -> Outcome:
    """What `migrate` would apply, found by applying it in a transaction that is rolled back
    (so a conflict shows here, as the same one-line error). Nothing is changed."""
    await conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    outcome = Outcome()
    try:
        async with conn.transaction():
            await _apply(conn, database, outcome)
            if database == "encimap":
                outcome.data_moves = await adoption.pending(conn)
            raise _RolledBack
    except _RolledBack:
        pass
    return outcome


async def upgrade(
    conn: asyncpg.Connection, database: Database, progress: Progress = lambda _line: None
) -> Outcome:
    """`migrate`, then the data moves that adopt a platform database (encimap.store.adoption),
    which run in short transactions of their own and resume where an earlier run stopped."""
    outcome = await migrate(conn, database)
    if database == "encimap":
        await adoption.adopt(conn, progress)
    return outcome
