"""Vaultboxes: one encrypted mailbox per address `alias@domain`."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from encimap.store.errors import Conflict, NotFound, StoreError
from encimap.store.types import Executor

_COLUMNS = "id, user_id, alias, domain, name, status, limits, smtp_enabled, created_at"


@dataclass(frozen=True)
class Vaultbox:
    id: uuid.UUID
    user_id: uuid.UUID
    alias: str | None
    domain: str
    status: str
    name: str | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    smtp_enabled: bool = True

    @property
    def address(self) -> str:
        """alias@domain; a platform vaultbox without alias has none (and receives nothing)."""
        return f"{self.alias}@{self.domain}" if self.alias else f"(no alias)@{self.domain}"

    @property
    def active(self) -> bool:
        return self.status == "active"


def split_address(address: str) -> tuple[str, str]:
    """`alias@domain` into its parts; raise StoreError for anything else."""
    alias, sep, domain = address.strip().rpartition("@")
    if not sep or not alias or not domain or "@" in alias or any(c.isspace() for c in address):
        raise StoreError(f"{address!r} is not an address of the form alias@domain")
    return alias, domain


def parse_limits(value: Any) -> dict[str, Any]:
    """The `limits` JSONB column as a dict (asyncpg hands JSONB over as text)."""
    return json.loads(value) if isinstance(value, str) else dict(value or {})


def vaultbox_from_row(row: asyncpg.Record) -> Vaultbox:
    return Vaultbox(
        id=row["id"],
        user_id=row["user_id"],
        alias=row["alias"],
        domain=row["domain"],
        status=row["status"],
        name=row["name"],
        limits=parse_limits(row["limits"]),
        smtp_enabled=bool(row["smtp_enabled"]),
    )


async def create_vaultbox(
    db: Executor, *, user_id: uuid.UUID, alias: str, domain: str, name: str | None
) -> Vaultbox:
    """Create the vaultbox; its default mailboxes come with it (a trigger makes them for every
    vaultbox, whoever inserts it). The platform requires a name: the alias when none is given.
    """
    alias, domain = split_address(f"{alias}@{domain}")
    try:
        row = await db.fetchrow(
            f"""INSERT INTO vaultboxes (user_id, alias, domain, name, smtp_enabled)
                VALUES ($1, lower($2), lower($3), coalesce($4, lower($2)), true)
                RETURNING {_COLUMNS}""",  # noqa: S608
            user_id,
            alias,
            domain,
            name,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"vaultbox {alias}@{domain} already exists") from None
    except asyncpg.StringDataRightTruncationError:
        raise StoreError(f"{alias}@{domain}: alias or domain is too long") from None
    return vaultbox_from_row(row)


async def list_vaultboxes(db: Executor) -> list[Vaultbox]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM vaultboxes WHERE status IS DISTINCT FROM 'deleted' "  # noqa: S608
        "ORDER BY domain, alias NULLS LAST"
    )
    return [vaultbox_from_row(row) for row in rows]


async def find_vaultbox(db: Executor, address: str) -> Vaultbox | None:
    """The live vaultbox at `address` (case-insensitive), whatever its status."""
    alias, domain = split_address(address)
    row = await db.fetchrow(
        f"""SELECT {_COLUMNS} FROM vaultboxes
            WHERE lower(alias) = lower($1) AND lower(domain) = lower($2)
              AND status IS DISTINCT FROM 'deleted'""",  # noqa: S608
        alias,
        domain,
    )
    return vaultbox_from_row(row) if row else None


async def get_vaultbox(db: Executor, address: str) -> Vaultbox:
    vaultbox = await find_vaultbox(db, address)
    if vaultbox is None:
        raise NotFound(f"no vaultbox {address}")
    return vaultbox


async def vaultbox_by_id(db: Executor, vaultbox_id: uuid.UUID) -> Vaultbox:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM vaultboxes WHERE id = $1",  # noqa: S608
        vaultbox_id,
    )
    if row is None:
        raise NotFound(f"no vaultbox {vaultbox_id}")
    return vaultbox_from_row(row)


def limit(limits: dict[str, Any], key: str) -> int | None:
    """A numeric limit (`max_messages`, `max_bytes`, ...) of a vaultbox, None when unset."""
    value = limits.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Usage:
    messages: int
    bytes: int


async def usage(db: Executor, vaultbox_id: uuid.UUID) -> Usage:
    """The messages a vaultbox stores and their stored size, over all its mailboxes (what
    the `max_messages` / `max_bytes` limits count)."""
    row = await db.fetchrow(
        """SELECT count(*) AS messages, coalesce(sum(size_bytes), 0) AS bytes
             FROM encrypted_emails WHERE vaultbox_id = $1""",
        vaultbox_id,
    )
    return Usage(row["messages"], row["bytes"])
