"""IMAP folders of a vaultbox (`mailboxes`): names use "/" as the hierarchy delimiter and
INBOX is matched case-insensitively (RFC 3501 5.1)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from encimap.store.errors import Conflict, LimitReached, NotFound, StoreError
from encimap.store.types import Executor

DELIMITER = "/"
_COLUMNS = "id, vaultbox_id, name, special_use, subscribed, uidvalidity, uid_next"


@dataclass(frozen=True)
class Mailbox:
    id: int
    vaultbox_id: uuid.UUID
    name: str
    special_use: str | None
    subscribed: bool
    uidvalidity: int
    uid_next: int


@dataclass(frozen=True)
class Counts:
    messages: int
    unseen: int
    size: int


def canonical_name(name: str) -> str:
    """INBOX in any case is INBOX (also as the parent of a hierarchy)."""
    head, sep, rest = name.partition(DELIMITER)
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return name


def _mailbox(row: asyncpg.Record) -> Mailbox:
    return Mailbox(**dict(row))


async def list_mailboxes(db: Executor, vaultbox_id: uuid.UUID) -> list[Mailbox]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM mailboxes WHERE vaultbox_id = $1 ORDER BY name",  # noqa: S608
        vaultbox_id,
    )
    return [_mailbox(row) for row in rows]


async def find_mailbox(db: Executor, vaultbox_id: uuid.UUID, name: str) -> Mailbox | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM mailboxes WHERE vaultbox_id = $1 AND name = $2",  # noqa: S608
        vaultbox_id,
        canonical_name(name),
    )
    return _mailbox(row) if row else None


async def create_mailbox(
    db: Executor, vaultbox_id: uuid.UUID, name: str, *, max_count: int = 0
) -> Mailbox:
    """Create a folder; `max_count` (0: none) caps the folders of the vaultbox (concurrent
    creates may pass it by the number of sessions racing)."""
    name = canonical_name(name.rstrip(DELIMITER))
    if not name or DELIMITER * 2 in name or name.startswith(DELIMITER):
        raise StoreError(f"{name!r} is not a valid mailbox name")
    try:
        row = await db.fetchrow(
            f"""INSERT INTO mailboxes (vaultbox_id, name)
                SELECT $1, $2
                 WHERE $3::integer = 0
                    OR (SELECT count(*) FROM mailboxes WHERE vaultbox_id = $1) < $3::integer
                RETURNING {_COLUMNS}""",  # noqa: S608
            vaultbox_id,
            name,
            max_count,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"mailbox {name} already exists") from None
    if row is None:
        raise LimitReached(f"at most {max_count} mailboxes per vaultbox")
    return _mailbox(row)


async def delete_mailbox(db: Executor, vaultbox_id: uuid.UUID, name: str) -> None:
    """Delete a folder and its messages (its children stay). INBOX cannot be deleted."""
    name = canonical_name(name)
    if name == "INBOX":
        raise StoreError("INBOX cannot be deleted")
    status = await db.execute(
        "DELETE FROM mailboxes WHERE vaultbox_id = $1 AND name = $2", vaultbox_id, name
    )
    if status.endswith(" 0"):
        raise NotFound(f"no mailbox {name}")


async def rename_mailbox(db: Executor, vaultbox_id: uuid.UUID, old: str, new: str) -> None:
    """Rename a folder and its children. UIDVALIDITY and UIDs stay (RFC 3501 6.3.5 allows it,
    Dovecot does the same): the messages are unchanged, so clients keep their caches."""
    old, new = canonical_name(old), canonical_name(new.rstrip(DELIMITER))
    if old == "INBOX":
        raise StoreError("renaming INBOX is not supported")
    if not new or new == "INBOX" or new.startswith(old + DELIMITER):
        raise StoreError(f"cannot rename {old} to {new}")
    try:
        status = await db.execute(
            """UPDATE mailboxes
                  SET name = $3 || substr(name, length($2) + 1)
                WHERE vaultbox_id = $1 AND (name = $2 OR name LIKE $4 ESCAPE '\\')""",
            vaultbox_id,
            old,
            new,
            _like_prefix(old + DELIMITER),
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"mailbox {new} already exists") from None
    if status.endswith(" 0"):
        raise NotFound(f"no mailbox {old}")


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def set_subscribed(db: Executor, vaultbox_id: uuid.UUID, name: str, subscribed: bool) -> None:
    status = await db.execute(
        "UPDATE mailboxes SET subscribed = $3 WHERE vaultbox_id = $1 AND name = $2",
        vaultbox_id,
        canonical_name(name),
        subscribed,
    )
    if status.endswith(" 0"):
        raise NotFound(f"no mailbox {name}")


async def counts(db: Executor, mailbox_id: int) -> Counts:
    row = await db.fetchrow(
        r"""SELECT count(*) AS messages,
                   count(*) FILTER (WHERE NOT flags @> ARRAY['\Seen']) AS unseen,
                   coalesce(sum(size_bytes), 0) AS size
              FROM encrypted_emails WHERE mailbox_id = $1""",
        mailbox_id,
    )
    return Counts(row["messages"], row["unseen"], row["size"])
