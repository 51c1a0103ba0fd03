"""Migrations against real PostgreSQL: the platform's schema contract (../shared/seed/),
idempotent runs, repeatable migrations, and least-privilege roles."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from encimap import db, migrations
from encimap.pgcluster import prepare_databases
from tests.platform_support import (
    load_seed,
    platform_statements,
    run_platform_statements,
    seeded_databases,
)
from tests.support import Databases

# Where encimap stores another type than the platform (documented in 002_encimap_tables.sql):
# varchar(255) widened to text, which keeps what the platform writes and reads meaning the same.
WIDENED = {
    ("encrypted_emails", "message_id"),
    ("encrypted_emails", "sender"),
    ("encrypted_emails", "recipient"),
}


async def _shape(conn: asyncpg.Connection, tables: list[str]) -> dict[tuple[str, str], tuple]:
    rows = await conn.fetch(
        """SELECT table_name, column_name, data_type, character_maximum_length, column_default,
                  is_nullable
             FROM information_schema.columns
            WHERE table_schema = 'public' AND table_name = ANY($1::text[])""",
        tables,
    )
    return {
        (r["table_name"], r["column_name"]): (
            r["data_type"],
            r["character_maximum_length"],
            r["column_default"],
            r["is_nullable"],
        )
        for r in rows
    }


async def _constraints(conn: asyncpg.Connection, tables: list[str]) -> set[tuple[str, str]]:
    rows = await conn.fetch(
        """SELECT conrelid::regclass::text AS t, pg_get_constraintdef(oid) AS d
             FROM pg_constraint WHERE conrelid::regclass::text = ANY($1::text[])""",
        tables,
    )
    return {(r["t"], r["d"]) for r in rows}


async def _reference(pg_cluster, component: str) -> tuple[dict, set, list[str]]:
    """The seed's shape: loaded into a database of its own, untouched."""
    name = f"reference_{component}_{uuid.uuid4().hex[:6]}"
    pg_cluster.create_database(name)
    await load_seed(pg_cluster.url(name), component)
    conn = await asyncpg.connect(pg_cluster.url(name))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = [r["tablename"] for r in rows]
        return await _shape(conn, tables), await _constraints(conn, tables), tables
    finally:
        await conn.close()


async def _install(pg_cluster, install: str) -> Databases:
    tag = uuid.uuid4().hex[:6]
    if install == "adopted":
        await seeded_databases(pg_cluster, f"mot_{tag}", f"enc_{tag}")
    urls = await prepare_databases(pg_cluster, f"mot_{tag}", f"enc_{tag}")
    return Databases(pg_cluster, *urls)


@pytest.mark.parametrize("component", db.DATABASES)
@pytest.mark.parametrize("install", ["fresh", "adopted"])
async def test_schema_is_a_strict_superset_of_the_platform(pg_cluster, component, install):
    """Every seed table, column, type, default, nullability and constraint exists, on a fresh
    install and on a database that had the seed before encimap."""
    shape, constraints, tables = await _reference(pg_cluster, component)
    conn = await (await _install(pg_cluster, install)).connect(component)
    try:
        got = await _shape(conn, tables)
        for key, (kind, length, default, nullable) in shape.items():
            assert key in got, key
            got_kind, got_length, got_default, got_nullable = got[key]
            assert (got_default, got_nullable) == (default, nullable), key
            if key in WIDENED:
                assert got_kind == "text", key
            else:
                assert (got_kind, got_length) == (kind, length), key
        assert constraints <= await _constraints(conn, tables)
    finally:
        await conn.close()


@pytest.mark.parametrize("install", ["fresh", "adopted"])
async def test_every_platform_statement_runs_unchanged(pg_cluster, install):
    dbs = await _install(pg_cluster, install)
    assert len(await run_platform_statements(dbs)) == len(platform_statements())


@pytest.mark.parametrize("component", db.DATABASES)
async def test_migrations_apply_again_as_a_no_op(databases: Databases, component):
    conn = await databases.connect(component)
    try:
        before = await migrations.applied_versions(conn, component)
        outcome = await migrations.migrate(conn, component)
        assert (outcome.versioned, outcome.repeatables) == ([], [])
        assert await migrations.applied_versions(conn, component) == before
        assert set(before) == {m.version for m in migrations.available_migrations(component)}
    finally:
        await conn.close()


async def test_a_changed_repeatable_is_applied_again(fresh_databases: Databases):
    conn = await fresh_databases.connect("encimap")
    try:
        await conn.execute("DROP VIEW public_certificates")
        await conn.execute(
            "UPDATE schema_repeatables SET checksum = 'old' "
            "WHERE name = '40_public_certificates.sql'"
        )
        outcome = await migrations.migrate(conn, "encimap")
        assert outcome.versioned == []
        assert [r.name for r in outcome.repeatables] == [
            r.name for r in migrations.available_repeatables("encimap")
        ]
        assert await conn.fetchval("SELECT count(*) FROM public_certificates") == 0
    finally:
        await conn.close()


async def test_single_database_install_from_the_platform_shape(pg_cluster):
    """Both seeds in one database (single-database mode), migrated for both components."""
    name = f"single_{uuid.uuid4().hex[:6]}"
    await seeded_databases(pg_cluster, name)
    conn = await asyncpg.connect(pg_cluster.url(name))
    try:
        for component in db.DATABASES:
            await migrations.upgrade(conn, component)
        rows = await conn.fetch("SELECT DISTINCT component FROM schema_migrations")
        assert {row["component"] for row in rows} == set(db.DATABASES)
        await conn.execute("SET ROLE encimap_auth")
        await conn.execute("SELECT username, password_hash FROM motor_blocks")
        await conn.execute("SELECT username, password_hash FROM imap_app_credentials")
    finally:
        await conn.close()


def test_statements_split_respects_quotes_comments_and_dollar_bodies():
    sql = (
        "-- a; comment\n"
        "CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN 'a;b'; END $$;\n"
        "/* block; */ SELECT 'it''s;' AS \"x;y\";\n"
        "SELECT $tag$ ; $tag$;\n"
        "-- trailing comment only"
    )
    statements = list(migrations.split_statements(sql))
    assert len(statements) == 3
    assert statements[1].endswith('AS "x;y"')
    assert migrations.summary(statements[0]) == (
        "CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN 'a;b'; END $$"
    )


def test_statement_splitting_is_linear():
    """Long runs of quotes, dollars and dashes are read once (no backtracking)."""
    for text in ["'" * 200_000, "$" * 200_000, "-" * 200_000, "$a" * 100_000]:
        list(migrations.split_statements(text))


async def _as_role(databases: Databases, component: str, role: str) -> asyncpg.Connection:
    conn = await databases.connect(component)
    await conn.execute(f"SET ROLE {role}")
    return conn


ALLOWED = [
    ("encimap", "encimap_auth", "SELECT username, password_hash FROM vaultbox_smtp_credentials"),
    ("encimap", "encimap_auth", "SELECT username, revoked_at FROM imap_app_credentials"),
    ("encimap", "encimap_auth", "SELECT alias, domain, status, smtp_enabled FROM vaultboxes"),
    (
        "motorical",
        "encimap_auth",
        "SELECT username, password_hash, smtp_enabled, domain FROM motor_blocks",
    ),
    ("encimap", "encimap_intake", "SELECT pem_content FROM public_certificates"),
    ("encimap", "encimap_intake", "SELECT id, uid_next FROM mailboxes"),
    ("encimap", "encimap_imap", "SELECT body, body_encrypted, flags FROM encrypted_emails"),
    ("encimap", "encimap_intake", "UPDATE public_certificates SET subject = subject"),
    ("encimap", "encimap_intake", "SELECT armored_key FROM openpgp_keys"),
    ("encimap", "encimap_intake", "SELECT key_preference FROM vaultboxes"),
    ("encimap", "encimap_imap", "SELECT armored_key FROM openpgp_keys"),
    ("encimap", "encimap_imap", "UPDATE encrypted_emails SET flags = flags"),
    ("encimap", "encimap_imap", "DELETE FROM encrypted_emails WHERE false"),
]

REFUSED = [
    ("encimap", "encimap_auth", "SELECT body_encrypted FROM encrypted_emails"),
    ("encimap", "encimap_auth", "SELECT body FROM encrypted_emails"),
    ("encimap", "encimap_auth", "SELECT subject_encrypted FROM encrypted_emails"),
    ("encimap", "encimap_auth", "UPDATE vaultbox_smtp_credentials SET enabled = false"),
    ("encimap", "encimap_auth", "UPDATE imap_app_credentials SET revoked_at = now()"),
    ("encimap", "encimap_auth", "DELETE FROM imap_app_credentials"),
    ("encimap", "encimap_auth", "SELECT pem_content FROM certificates"),
    ("motorical", "encimap_auth", "UPDATE motor_blocks SET smtp_enabled = false"),
    ("motorical", "encimap_auth", "SELECT email FROM users"),
    ("motorical", "encimap_auth", "SELECT * FROM subscriptions"),
    ("encimap", "encimap_intake", "SELECT pem_content FROM certificates"),
    ("encimap", "encimap_intake", "SELECT body_encrypted FROM encrypted_emails"),
    ("encimap", "encimap_intake", "SELECT body FROM encrypted_emails"),
    ("encimap", "encimap_intake", "SELECT password_hash FROM vaultbox_smtp_credentials"),
    ("encimap", "encimap_intake", "DELETE FROM encrypted_emails"),
    ("encimap", "encimap_imap", "SELECT password_hash FROM imap_app_credentials"),
    ("encimap", "encimap_imap", "SELECT pem_content FROM certificates"),
    ("encimap", "encimap_intake", "UPDATE public_certificates SET pem_content = ''"),
    ("encimap", "encimap_intake", "UPDATE certificates SET subject = subject"),
    ("motorical", "encimap_auth", "SELECT password_hash FROM users"),
    ("motorical", "encimap_auth", "UPDATE domains SET domain = domain"),
    ("encimap", "encimap_auth", "SELECT armored_key FROM openpgp_keys"),
    ("encimap", "encimap_intake", "DELETE FROM openpgp_keys"),
    ("encimap", "encimap_imap", "UPDATE openpgp_keys SET is_active = false"),
    ("motorical", "encimap_intake", "SELECT username FROM motor_blocks"),
    ("motorical", "encimap_imap", "SELECT username FROM motor_blocks"),
]


@pytest.mark.parametrize(("component", "role", "sql"), ALLOWED)
async def test_role_may(databases: Databases, component, role, sql):
    conn = await _as_role(databases, component, role)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.mark.parametrize(("component", "role", "sql"), REFUSED)
async def test_role_may_not(databases: Databases, component, role, sql):
    conn = await _as_role(databases, component, role)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(sql)
    finally:
        await conn.close()


async def test_pool_runs_as_its_role_even_after_reset(config):
    pool = await db.create_pool(config.database, "encimap", role=db.ROLE_AUTH, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("RESET ALL")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_user") == "encimap_auth"
    finally:
        await pool.close()


async def test_acquire_waits_at_most_its_timeout_and_gives_the_connection_back(config):
    pool = await db.create_pool(config.database, "encimap", role=db.ROLE_INTAKE, max_size=1)
    try:
        async with db.acquire(pool, 5) as held:
            with pytest.raises(TimeoutError):
                async with db.acquire(pool, 0.2):
                    pass
            assert await held.fetchval("SELECT current_user") == "encimap_intake"
        async with db.acquire(pool, 0.2) as conn:
            assert await conn.fetchval("SELECT 1") == 1
        assert pool.get_idle_size() == 1
    finally:
        await pool.close()
