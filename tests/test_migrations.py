"""Migrations against real PostgreSQL: idempotent, complete, and least-privilege roles."""

from __future__ import annotations

import asyncpg
import pytest

from encimap import db
from tests.support import Databases

SEED_COLUMNS = {
    "motorical": {
        "users": {"id", "email"},
        "domains": {"id", "user_id", "domain"},
        "subscriptions": {"id", "user_id", "status"},
        "motor_blocks": {
            "username",
            "password_hash",
            "smtp_enabled",
            "rate_limit_per_hour",
            "domain",
        },
    },
    "encimap": {
        "vaultboxes": {"alias", "domain", "status", "limits", "smtp_enabled"},
        "vaultbox_smtp_credentials": {"vaultbox_id", "username", "password_hash"},
        "imap_app_credentials": {"vaultbox_id", "username", "password_hash", "revoked_at"},
        "certificates": {"vaultbox_id", "certificate_type", "pem_content"},
        "encrypted_emails": {
            "vaultbox_id",
            "body_encrypted",
            "subject_encrypted",
            "uid",
            "flags",
            "size_bytes",
            "internal_date",
            "mailbox_id",
        },
        "email_processing_logs": {"vaultbox_id", "outcome"},
        "mailboxes": {"vaultbox_id", "name", "uidvalidity", "uid_next"},
    },
}


async def _columns(conn: asyncpg.Connection, table: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table
    )
    return {row["column_name"] for row in rows}


@pytest.mark.parametrize("component", db.DATABASES)
async def test_migrations_create_every_seed_table_and_column(databases: Databases, component):
    conn = await databases.connect(component)
    try:
        for table, columns in SEED_COLUMNS[component].items():
            assert columns <= await _columns(conn, table), table
    finally:
        await conn.close()


@pytest.mark.parametrize("component", db.DATABASES)
async def test_migrations_apply_again_as_a_no_op(databases: Databases, component):
    conn = await databases.connect(component)
    try:
        before = await db.applied_versions(conn, component)
        assert await db.migrate(conn, component) == []
        assert await db.applied_versions(conn, component) == before
        assert set(before) == {m.version for m in db.available_migrations(component)}
    finally:
        await conn.close()


async def test_platform_migration_is_idempotent_on_existing_tables(fresh_databases: Databases):
    """Production already has the platform tables: re-running every statement must succeed."""
    conn = await fresh_databases.connect("motorical")
    try:
        await conn.execute("DELETE FROM schema_migrations WHERE component = 'motorical'")
        assert [m.version for m in await db.migrate(conn, "motorical")] == [
            m.version for m in db.available_migrations("motorical")
        ]
    finally:
        await conn.close()


async def test_single_database_install_holds_both_components(pg_cluster):
    pg_cluster.create_database("single_db")
    conn = await asyncpg.connect(pg_cluster.url("single_db"))
    try:
        for component in db.DATABASES:
            assert await db.migrate(conn, component)
        rows = await conn.fetch("SELECT component FROM schema_migrations")
        assert {row["component"] for row in rows} == set(db.DATABASES)
    finally:
        await conn.close()


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
    ("encimap", "encimap_intake", "SELECT armored_key FROM openpgp_keys"),
    ("encimap", "encimap_intake", "SELECT key_preference FROM vaultboxes"),
    ("encimap", "encimap_imap", "SELECT armored_key FROM openpgp_keys"),
    ("encimap", "encimap_imap", "SELECT body_encrypted, flags FROM encrypted_emails"),
    ("encimap", "encimap_imap", "UPDATE encrypted_emails SET flags = flags"),
    ("encimap", "encimap_imap", "DELETE FROM encrypted_emails WHERE false"),
]

REFUSED = [
    ("encimap", "encimap_auth", "SELECT body_encrypted FROM encrypted_emails"),
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
    ("encimap", "encimap_intake", "SELECT password_hash FROM vaultbox_smtp_credentials"),
    ("encimap", "encimap_intake", "DELETE FROM encrypted_emails"),
    ("encimap", "encimap_imap", "SELECT password_hash FROM imap_app_credentials"),
    ("encimap", "encimap_imap", "SELECT pem_content FROM certificates"),
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
