"""IMAP folders of a vaultbox (`mailboxes`): names use "/" as the hierarchy delimiter and
INBOX is matched case-insensitively (RFC 3501 5.1). Creating, deleting and renaming a folder
and changing a subscription publish a NAMES event (encimap.store.events) once committed;
`origin` names the session that made the change."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields

import asyncpg

from encimap.store import events
from encimap.store.errors import Conflict, LimitReached, NotFound, StoreError
from encimap.store.types import Executor

DELIMITER = "/"
_COLUMNS = "id, vaultbox_id, name, special_use, uidvalidity, uid_next"


@dataclass(frozen=True)
class Mailbox:
    id: int
    vaultbox_id: uuid.UUID
    name: str
    special_use: str | None
    uidvalidity: int
    uid_next: int


@dataclass(frozen=True)
class Counts:
    messages: int
    unseen: int
    size: int
    highest_modseq: int  # RFC 7162 HIGHESTMODSEQ


def canonical_name(name: str) -> str:
    """INBOX in any case is INBOX (also as the parent of a hierarchy)."""
    head, sep, rest = name.partition(DELIMITER)
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return name


def new_name(name: str) -> str:
    """The name CREATE (or RENAME's target) makes: canonical, without a trailing
    delimiter (RFC 3501 6.3.3: "foo/" declares the intent to create "foo/bar" later)."""
    return canonical_name(name.rstrip(DELIMITER))


def from_row(row: asyncpg.Record) -> Mailbox:
    """The Mailbox of a row that has its columns (`_COLUMNS`), among others maybe."""
    return Mailbox(**{field.name: row[field.name] for field in fields(Mailbox)})


async def list_mailboxes(db: Executor, vaultbox_id: uuid.UUID) -> list[Mailbox]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM mailboxes WHERE vaultbox_id = $1 ORDER BY name",  # noqa: S608
        vaultbox_id,
    )
    return [from_row(row) for row in rows]


async def find_mailbox(db: Executor, vaultbox_id: uuid.UUID, name: str) -> Mailbox | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM mailboxes WHERE vaultbox_id = $1 AND name = $2",  # noqa: S608
        vaultbox_id,
        canonical_name(name),
    )
    return from_row(row) if row else None


async def create_mailbox(
    db: Executor, vaultbox_id: uuid.UUID, name: str, *, max_count: int = 0, origin: str = ""
) -> Mailbox:
    """Create a folder; `max_count` (0: none) caps the folders of the vaultbox (concurrent
    creates may pass it by the number of sessions racing)."""
    name = new_name(name)
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
    await events.publish_names(db, vaultbox_id, origin)
    return from_row(row)


async def delete_mailbox(
    db: Executor, vaultbox_id: uuid.UUID, name: str, *, origin: str = ""
) -> None:
    """Delete a folder and its messages (its children stay). INBOX cannot be deleted."""
    name = canonical_name(name)
    if name == "INBOX":
        raise StoreError("INBOX cannot be deleted")
    status = await db.execute(
        "DELETE FROM mailboxes WHERE vaultbox_id = $1 AND name = $2", vaultbox_id, name
    )
    if status.endswith(" 0"):
        raise NotFound(f"no mailbox {name}")
    await events.publish_names(db, vaultbox_id, origin)


async def rename_mailbox(
    db: Executor, vaultbox_id: uuid.UUID, old: str, new: str, *, origin: str = ""
) -> None:
    """Rename a folder and its children. UIDVALIDITY and UIDs stay (RFC 3501 6.3.5 allows it,
    Dovecot does the same): the messages are unchanged, so clients keep their caches."""
    old, new = canonical_name(old), new_name(new)
    if old == "INBOX":
        raise StoreError("renaming INBOX is not supported")
    if not new or new == "INBOX" or new.startswith(old + DELIMITER):
        raise StoreError(f"cannot rename {old} to {new}")
    try:
        # Subscriptions follow the folder and its children, in the same statement.
        status = await db.execute(
            """WITH moved AS (
                   DELETE FROM mailbox_subscriptions
                    WHERE vaultbox_id = $1 AND (name = $2 OR name LIKE $4 ESCAPE '\\')
                   RETURNING name),
               added AS (
                   INSERT INTO mailbox_subscriptions (vaultbox_id, name)
                   SELECT $1, $3 || substr(name, length($2) + 1) FROM moved
                   ON CONFLICT DO NOTHING)
               UPDATE mailboxes
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
    await events.publish_names(db, vaultbox_id, origin)


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def subscriptions(db: Executor, vaultbox_id: uuid.UUID) -> set[str]:
    """The subscribed names (RFC 3501 6.3.6: also names whose mailbox is gone)."""
    rows = await db.fetch(
        "SELECT name FROM mailbox_subscriptions WHERE vaultbox_id = $1", vaultbox_id
    )
    return {row["name"] for row in rows}


async def subscribe(
    db: Executor, vaultbox_id: uuid.UUID, name: str, *, max_count: int = 0, origin: str = ""
) -> None:
    """Subscribe to an existing mailbox (subscribing twice is fine). A subscription outlives
    its mailbox (RFC 3501 6.3.6), so CREATE, SUBSCRIBE and DELETE repeated would add names
    without end: `max_count` (0: none) caps them per vaultbox, as `create_mailbox` caps
    folders."""
    status = await db.execute(
        """INSERT INTO mailbox_subscriptions (vaultbox_id, name)
           SELECT vaultbox_id, name FROM mailboxes WHERE vaultbox_id = $1 AND name = $2
              AND ($3::integer = 0
                   OR (SELECT count(*) FROM mailbox_subscriptions s
                        WHERE s.vaultbox_id = $1) < $3::integer)
           ON CONFLICT DO NOTHING""",
        vaultbox_id,
        canonical_name(name),
        max_count,
    )
    if status.endswith(" 0"):
        if await find_mailbox(db, vaultbox_id, name) is None:
            raise NotFound(f"no mailbox {name}")
        if canonical_name(name) not in await subscriptions(db, vaultbox_id):
            raise LimitReached(f"at most {max_count} subscriptions per vaultbox")
        return  # subscribed already: nothing changed
    await events.publish_names(db, vaultbox_id, origin)


async def unsubscribe(db: Executor, vaultbox_id: uuid.UUID, name: str, *, origin: str = "") -> None:
    """Drop a subscription, whether or not the mailbox still exists."""
    status = await db.execute(
        "DELETE FROM mailbox_subscriptions WHERE vaultbox_id = $1 AND name = $2",
        vaultbox_id,
        canonical_name(name),
    )
    if status.endswith(" 0"):
        if await find_mailbox(db, vaultbox_id, name) is None:
            raise NotFound(f"not subscribed to {name}")
        return
    await events.publish_names(db, vaultbox_id, origin)


async def claim_recent(db: Executor, mailbox_id: int, up_to_uid: int) -> int:
    """Make the messages up to `up_to_uid` recent to the calling session if no session has
    had them as recent yet; returns the first UID it got (those from it on are its recent).
    The mailbox row is locked only when there is something to claim
    (`encimap_claim_recent`, sql/encimap/repeatable/37_select_mailbox.sql)."""
    return await db.fetchval("SELECT encimap_claim_recent($1, $2)", mailbox_id, up_to_uid)


async def count_recent(db: Executor, mailbox_id: int) -> int:
    """Messages no session has had as recent yet (STATUS RECENT)."""
    return await db.fetchval(
        """SELECT count(*) FROM encrypted_emails e JOIN mailboxes m ON m.id = e.mailbox_id
            WHERE e.mailbox_id = $1 AND e.uid >= m.first_recent_uid""",
        mailbox_id,
    )


async def count_deleted(db: Executor, mailbox_id: int) -> int:
    """Messages flagged \\Deleted (STATUS DELETED, RFC 9051 6.3.11)."""
    return await db.fetchval(
        r"""SELECT count(*) FROM encrypted_emails
             WHERE mailbox_id = $1 AND flags @> ARRAY['\Deleted']""",
        mailbox_id,
    )


async def counts(db: Executor, mailbox_id: int) -> Counts:
    """The mailbox's counters, kept at write time (sql/encimap/repeatable/
    35_message_counters.sql): one row read, whatever the mailbox holds."""
    row = await db.fetchrow(
        "SELECT messages, unseen, bytes AS size, highest_modseq FROM mailboxes WHERE id = $1",
        mailbox_id,
    )
    if row is None:
        return Counts(0, 0, 0, 1)
    return Counts(row["messages"], row["unseen"], row["size"], row["highest_modseq"])
