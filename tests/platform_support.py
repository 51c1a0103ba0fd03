"""The platform as it runs in production: databases loaded from ../shared/seed/ (schema v2.1)
and rows inserted the way the platform's services insert them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from encimap.migrations import split_statements
from encimap.pgcluster import LocalCluster
from tests.support import REPO, Databases

SEED = REPO.parent / "shared" / "seed"
SEED_FILES = {
    "motorical": SEED / "motorical_db-v2.1.sql",
    "encimap": SEED / "motorical_encrypted_imap-v2.1.sql",
}
PLATFORM_QUERIES = SEED / "platform-queries.sql"


async def load_seed(url: str, component: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SEED_FILES[component].read_text())
    finally:
        await conn.close()


async def seeded_databases(
    cluster: LocalCluster, motorical_name: str, encimap_name: str | None = None
) -> Databases:
    """Databases shaped like production v2.1, not migrated. With one name, both components
    share one database (single-database mode)."""
    names = {"motorical": motorical_name, "encimap": encimap_name or motorical_name}
    for component, name in names.items():
        if not cluster.database_exists(name):
            cluster.create_database(name)
        await load_seed(cluster.url(name), component)
    return Databases(cluster, cluster.url(names["motorical"]), cluster.url(names["encimap"]))


def platform_statements() -> list[str]:
    """The statements of platform-queries.sql, their comment lines dropped."""
    return [
        "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
        for statement in split_statements(PLATFORM_QUERIES.read_text())
    ]


@dataclass(frozen=True)
class PlatformVaultbox:
    id: uuid.UUID
    user_id: uuid.UUID
    address: str


async def insert_vaultbox(
    conn: asyncpg.Connection, user_id: uuid.UUID, alias: str, domain: str
) -> PlatformVaultbox:
    """The platform's own INSERT (platform-queries.sql), with its defaults for the rest."""
    row = await conn.fetchrow(
        "INSERT INTO vaultboxes (user_id, domain, name, alias) VALUES ($1, $2, $3, $4) RETURNING *",
        user_id,
        domain,
        f"{alias} box",
        alias,
    )
    return PlatformVaultbox(row["id"], user_id, f"{alias}@{domain}")


async def run_platform_statements(databases: Databases) -> list[str]:
    """Run every statement of platform-queries.sql with plausible arguments, in file order;
    returns the statements run (a failing one raises)."""
    user_id = uuid.uuid4()
    motorical = await databases.connect("motorical")
    encimap = await databases.connect("encimap")
    state: dict[str, object] = {"user": user_id}
    ran = []
    try:
        for statement in platform_statements():
            conn = motorical if "FROM users" in statement else encimap
            rows = await conn.fetch(statement, *_arguments(statement, state))
            if statement.startswith("INSERT INTO vaultboxes"):
                state["vaultbox"] = rows[0]["id"]
            ran.append(statement)
    finally:
        await motorical.close()
        await encimap.close()
    return ran


def _arguments(statement: str, state: dict[str, object]) -> list[object]:
    user = state["user"]
    tag = uuid.uuid4().hex[:8]
    if statement.startswith("INSERT INTO vaultboxes"):
        return [user, "platform.test", f"Box {tag}", f"p{tag}"]
    if statement.startswith("INSERT INTO vaultbox_smtp_credentials"):
        return [state["vaultbox"], f"smtp-{tag}", "!"]
    if statement.startswith("INSERT INTO imap_app_credentials"):
        state["imap_user"] = f"imap-{tag}"
        return [user, state["imap_user"], state["vaultbox"], "!"]
    if statement.startswith("INSERT INTO certificates"):
        return [state["vaultbox"], state.get("pem", "-----BEGIN CERTIFICATE-----\n"), "mine"]
    if statement.startswith("UPDATE imap_app_credentials"):
        return [state["imap_user"]]
    if "ANY($1::uuid[])" in statement:
        return [[user]]
    if "$1" in statement:
        return [state.get("vaultbox", user)] if "vaultbox_id = $1" in statement else [user]
    return []
