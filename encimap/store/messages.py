"""Stored messages (`encrypted_emails`): the one insert path (`insert_message`, used by intake
delivery and IMAP APPEND), and what IMAP reads and changes: UIDs, flags, bodies, expunge, copy
and move.

`deliver` (intake) is one statement: alone it is its own transaction; a caller that stores one
message to several vaultboxes (SMTP mode) runs it inside one transaction and commits all of them
or none. It serialises deliveries per vaultbox by locking the vaultbox's INBOX row first: the
duplicate check then sees every message committed before it, and UIDs become visible in
increasing order (an IMAP client never sees a lower UID appear after a higher one).

Writers lock the mailboxes they change before any message row (`lock_mailboxes`, the lock
order of sql/encimap/repeatable/35_message_counters.sql, whose triggers keep the mailbox and
vaultbox counters): two writers of one mailbox queue on its row instead of deadlocking on its
messages. STORE and EXPUNGE are one function call each (repeatable/36_mailbox_events.sql), so
they hold that lock only while PostgreSQL runs them, never across a round trip. UID sets
travel as ranges (`encimap.store.uidsets`), so no plan grows with the square of the mailbox.

Every change publishes a NOTIFY on `encimap_mailbox` in the same transaction (delivered on
commit), so other sessions learn about it without polling; see `encimap.store.events`.
Queries name one mailbox and exact UIDs, so their cost follows what is asked, not the mailbox.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import asyncpg

from encimap import mimeinfo
from encimap.store import events, modseqs, uidsets
from encimap.store.errors import NotFound
from encimap.store.types import Executor

FlagMode = Literal["replace", "add", "remove"]
INBOX = "INBOX"

# FETCH asks for columns by these names only (never interpolated from client input).
COLUMNS = frozenset(
    {
        "id",
        "uid",
        "flags",
        "size_bytes",
        "internal_date",
        "envelope",
        "bodystructure",
        "bodystructure_basic",
        "mime_parts",
        "body_encrypted",
        "modseq",
    }
)
# The stored bytes of a message: `body` for what encimap stored, the platform's TEXT column for
# mail its old service stored (see sql/encimap/002_encimap_tables.sql). FETCH reads them under
# the name `body_encrypted`.
STORED_BYTES = "encimap_stored_bytes(body, body_encrypted)"  # repeatable/10_stored_bytes.sql
_SELECTED = {
    "body_encrypted": f"{STORED_BYTES} AS body_encrypted",
    "modseq": f"{modseqs.MODSEQ} AS modseq",
}
# The messages of mailbox $1 with UIDs in the ranges $2, $3 (see encimap.store.uidsets).
_IN_RANGES = uidsets.messages("{columns}", "$1", "$2", "$3")
# The same messages for an UPDATE or DELETE of `t`: their ctids collected once, then a TID
# scan, which every plan uses for `ctid = ANY(...)` (joined on the UID instead, a plan may
# rescan the ranges for each candidate row or read the whole mailbox). A row another
# transaction changed meanwhile is still found: PostgreSQL rechecks the mailbox condition on
# its new version.
_CHOSEN = (
    "t.ctid = ANY(ARRAY(SELECT e.ctid FROM "  # noqa: S608 - fixed SQL
    + _IN_RANGES.format(columns="ctid")
    + ")) AND t.mailbox_id = $1"
)
# What a copy carries over besides the mailbox and UID.
_COPIED = (
    "vaultbox_id, message_id, sender, recipient, subject_encrypted, body_encrypted, body, "
    "body_sha256, encryption_method, certificate_fingerprints, size_bytes, flags, internal_date, "
    "envelope, bodystructure, bodystructure_basic, mime_parts, sent_date, search_headers, "
    "processed_at"
)


@dataclass(frozen=True)
class Inserted:
    id: uuid.UUID
    mailbox_id: int
    uid: int
    uidvalidity: int


# The IMAP columns in the order the SQL functions (sql/encimap/repeatable/30_store_message.sql)
# take them.
INFO_COLUMNS = (
    "envelope",
    "bodystructure",
    "bodystructure_basic",
    "mime_parts",
    "sent_date",
    "search_headers",
)


def info_columns(info: mimeinfo.MessageInfo) -> dict[str, object]:
    """The stored form of what FETCH and SEARCH need (see sql/encimap/002_encimap_tables.sql)."""
    return {
        "envelope": info.envelope,
        "bodystructure": info.bodystructure,
        "bodystructure_basic": info.body,
        "mime_parts": json.dumps(
            [[p.section, p.header_start, p.body_start, p.end, int(p.message)] for p in info.parts]
        ),
        "sent_date": info.sent_date,
        "search_headers": json.dumps(info.search),
    }


async def insert_message(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    *,
    vaultbox_id: uuid.UUID,
    body: bytes,
    mailbox_id: int | None = None,
    mailbox_name: str = "INBOX",
    flags: Sequence[str] = (),
    internal_date: datetime | None = None,
    message_id: str | None = None,
    sender: str | None = None,
    recipient: str | None = None,
    subject_encrypted: str | None = None,
    body_sha256: str | None = None,
    encryption_method: str | None = None,
    certificate_fingerprints: Sequence[str] = (),
    info: mimeinfo.MessageInfo | None = None,
) -> Inserted:
    """Store one message in a mailbox (INBOX unless named) with the next UID, and NOTIFY.

    `body` is stored and later served exactly as given; `info` is `mimeinfo.describe(body)`
    (computed here when not given). One statement (`encimap_insert_message`, one round trip),
    atomic on its own or part of the caller's transaction. The mailbox row lock taken by the
    UID allocation orders concurrent inserts, so UIDs become visible in increasing order.
    """
    info_values = _info_values(info or mimeinfo.describe(body))
    row = await conn.fetchrow(
        """SELECT * FROM encimap_insert_message($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                                                $12, $13, $14, $15, $16, $17, $18, $19)""",
        vaultbox_id,
        mailbox_id,
        mailbox_name,
        body,
        sorted(set(flags)),
        internal_date,
        message_id,
        sender,
        recipient,
        subject_encrypted,
        body_sha256,
        encryption_method,
        list(certificate_fingerprints),
        *info_values,
    )
    if row["email_id"] is None:
        raise NotFound(f"vaultbox {vaultbox_id} has no mailbox {mailbox_id or mailbox_name}")
    return Inserted(row["email_id"], row["mailbox_id"], row["uid"], row["uidvalidity"])


async def uids_and_flags(db: Executor, mailbox_id: int, after_uid: int = 0) -> list[asyncpg.Record]:
    """(uid, flags) of the mailbox's messages above `after_uid`, in UID order."""
    return await db.fetch(
        """SELECT uid, flags FROM encrypted_emails
            WHERE mailbox_id = $1 AND uid > $2 ORDER BY uid""",
        mailbox_id,
        after_uid,
    )


async def fetch_rows(
    db: Executor, mailbox_id: int, uids: Sequence[int], columns: Iterable[str]
) -> list[asyncpg.Record]:
    """The named columns of the messages with these UIDs (those that still exist), UID order."""
    wanted = ["uid", *sorted(set(columns) - {"uid"})]
    unknown = set(wanted) - COLUMNS
    if unknown:
        raise ValueError(f"unknown message columns {sorted(unknown)}")
    selected = ", ".join(_SELECTED.get(name, name) for name in wanted)
    return await db.fetch(
        f"SELECT e.* FROM {_IN_RANGES.format(columns=selected)} ORDER BY e.uid",  # noqa: S608
        mailbox_id,
        *uidsets.ranges(uids),
    )


async def sizes(db: Executor, mailbox_id: int, uids: Sequence[int]) -> dict[int, int]:
    """Stored sizes of the messages with these UIDs (an index-only read)."""
    rows = await db.fetch(
        f"SELECT e.uid, e.size_bytes FROM {_IN_RANGES.format(columns='uid, size_bytes')}",  # noqa: S608
        mailbox_id,
        *uidsets.ranges(uids),
    )
    return {row["uid"]: row["size_bytes"] for row in rows}


async def lock_mailboxes(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    vaultbox_id: uuid.UUID,
    mailbox_ids: Iterable[int],
) -> list[int]:
    """Lock these mailboxes of the vaultbox until the transaction ends, in id order, before
    their messages are changed (the lock order that keeps writers from deadlocking); the ids
    that exist."""
    return list(
        await conn.fetchval(
            "SELECT encimap_lock_mailboxes($1, $2::bigint[])", vaultbox_id, sorted(set(mailbox_ids))
        )
    )


async def sort_rows(db: Executor, mailbox_id: int, uids: Sequence[int]) -> list[asyncpg.Record]:
    """What SORT and THREAD order by: uid, internal_date, size_bytes and the outer header
    bytes (the stored message up to its body, which is in clear above the S/MIME envelope)."""
    return await db.fetch(
        f"""SELECT uid, internal_date, size_bytes,
                   substring({STORED_BYTES} FROM 1
                             FOR coalesce((mime_parts->0->>2)::integer, 65536)) AS header
              FROM encrypted_emails
             WHERE mailbox_id = $1 AND uid = ANY($2::bigint[])""",  # noqa: S608 - constant
        mailbox_id,
        list(uids),
    )


async def complete_info(db: Executor, message_id: uuid.UUID) -> mimeinfo.MessageInfo:
    """Compute and persist ENVELOPE/BODYSTRUCTURE for a row stored without them."""
    body = await db.fetchval(
        f"SELECT {STORED_BYTES} FROM encrypted_emails WHERE id = $1",  # noqa: S608 - constant
        message_id,
    )
    if body is None:
        raise NotFound(f"no message {message_id}")
    info = mimeinfo.describe(body)
    await save_info(db, message_id, info)
    return info


async def save_info(db: Executor, message_id: uuid.UUID, info: mimeinfo.MessageInfo) -> None:
    await save_infos(db, [(message_id, info)])


async def save_infos(
    db: Executor, described: Sequence[tuple[uuid.UUID, mimeinfo.MessageInfo]]
) -> None:
    """Persist ENVELOPE/BODYSTRUCTURE and the search fields of messages stored without them."""
    await db.executemany(
        """UPDATE encrypted_emails
              SET envelope = $2, bodystructure = $3, bodystructure_basic = $4,
                  mime_parts = $5::jsonb, sent_date = $6, search_headers = $7::jsonb
            WHERE id = $1""",
        [(message_id, *_info_values(info)) for message_id, info in described],
    )


def _info_values(info: mimeinfo.MessageInfo) -> list[object]:
    columns = info_columns(info)
    return [columns[name] for name in INFO_COLUMNS]


@dataclass(frozen=True)
class Stored:
    changed: list[tuple[int, list[str], int]]  # (uid, new flags, new modseq), UID order
    modified: list[int]  # UIDs left alone: changed after UNCHANGEDSINCE (RFC 7162 3.1.3)


async def store_flags(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    *,
    vaultbox_id: uuid.UUID,
    mailbox_id: int,
    uids: Sequence[int],
    mode: FlagMode,
    flags: Sequence[str],
    origin: str,
    unchanged_since: int | None = None,
) -> Stored:
    """Change flags; returns the messages whose flags changed, with their new flags and
    mod-sequence, and those that failed the UNCHANGEDSINCE test (not changed) if one is given.

    Rows that already have the wanted flags are not written (nor reported, as Dovecot does),
    so a repeated `STORE +FLAGS` costs no writes. One statement (`encimap_store_flags`,
    sql/encimap/repeatable/36_mailbox_events.sql: lock, test UNCHANGEDSINCE, change, NOTIFY),
    so one round trip, and no other writer changes a message between the test and the change.
    """
    rows = await conn.fetch(
        """SELECT uid, flags, modseq, modified
             FROM encimap_store_flags($1, $2, $3, $4, $5, $6, $7, $8)""",
        vaultbox_id,
        mailbox_id,
        *uidsets.ranges(uids),
        mode,
        sorted(set(flags)),
        origin,
        unchanged_since,
    )
    changed = sorted(
        (row["uid"], list(row["flags"]), row["modseq"]) for row in rows if not row["modified"]
    )
    return Stored(changed, sorted(row["uid"] for row in rows if row["modified"]))


async def expunge(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    *,
    vaultbox_id: uuid.UUID,
    mailbox_id: int,
    origin: str,
    uids: Sequence[int] | None = None,
) -> list[int]:
    """Delete the messages flagged \\Deleted (only among `uids` when given); their UIDs.
    One statement, as `store_flags` (`encimap_expunge`)."""
    lows, highs = (None, None) if uids is None else uidsets.ranges(uids)
    rows = await conn.fetch(
        "SELECT encimap_expunge AS uid FROM encimap_expunge($1, $2, $3, $4, $5)",
        vaultbox_id,
        mailbox_id,
        lows,
        highs,
        origin,
    )
    return sorted(row["uid"] for row in rows)


async def copy_messages(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    *,
    vaultbox_id: uuid.UUID,
    source_id: int,
    target_id: int,
    uids: Sequence[int],
    origin: str,
    move: bool = False,
) -> tuple[int, list[tuple[int, int]]]:
    """Copy (or move) messages to another mailbox of the same vaultbox.

    Returns (target UIDVALIDITY, [(source uid, new uid)]). Both mailboxes must belong to
    `vaultbox_id`; a message never leaves its vaultbox.
    """
    async with conn.transaction():
        locked = await lock_mailboxes(conn, vaultbox_id, [source_id, target_id])
        if source_id not in locked:
            raise NotFound(f"no mailbox {source_id}")
        existing = await conn.fetch(
            f"SELECT e.uid FROM {_IN_RANGES.format(columns='uid')} ORDER BY e.uid",  # noqa: S608
            source_id,
            *uidsets.ranges(uids),
        )
        source_uids = [row["uid"] for row in existing]
        target = await conn.fetchrow(
            """UPDATE mailboxes SET uid_next = uid_next + $3
                WHERE id = $1 AND vaultbox_id = $2
               RETURNING uid_next - $3 AS first, uidvalidity""",
            target_id,
            vaultbox_id,
            len(source_uids),
        )
        if target is None:
            raise NotFound(f"no mailbox {target_id}")
        if not source_uids:
            return target["uidvalidity"], []
        new_uids = list(range(target["first"], target["first"] + len(source_uids)))
        await conn.execute(
            f"""INSERT INTO encrypted_emails (mailbox_id, uid, {_COPIED})
                SELECT $1, m.new_uid, {_COPIED}
                  FROM unnest($3::bigint[], $4::bigint[]) AS m(old_uid, new_uid)
                 CROSS JOIN LATERAL (
                       -- one index lookup per message in any plan (see _IN_RANGES)
                       SELECT {_COPIED} FROM encrypted_emails
                        WHERE mailbox_id = $2 AND uid = m.old_uid OFFSET 0) AS e""",  # noqa: S608
            target_id,
            source_id,
            source_uids,
            new_uids,
        )
        await events.publish_new(conn, vaultbox_id, target_id, new_uids[-1])
        if move:
            await conn.execute(
                f"DELETE FROM encrypted_emails t WHERE {_CHOSEN}",  # noqa: S608
                source_id,
                *uidsets.ranges(source_uids),
            )
            await events.publish_change(
                conn, vaultbox_id, source_id, events.EXPUNGE, origin, source_uids
            )
    return target["uidvalidity"], list(zip(source_uids, new_uids, strict=True))


@dataclass(frozen=True)
class NewMessage:
    """One recipient's copy of a message, ready to store (never logged: `body` is content)."""

    vaultbox_id: uuid.UUID
    recipient: str
    sender: str
    message_id: str
    body: bytes = field(repr=False)
    body_sha256: str
    size_original: int
    encryption_method: str
    certificate_fingerprints: list[str]
    subject_encrypted: str | None
    internal_date: datetime
    outcome: str = "stored"  # "stored" (encrypted here) or "passthrough" (arrived encrypted)
    # mimeinfo.describe(body), when the caller computed it already (e.g. in a worker thread).
    info: mimeinfo.MessageInfo | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Delivered:
    email_id: uuid.UUID
    mailbox_id: int
    uid: int
    duplicate: bool


async def deliver(
    db: Executor,
    message: NewMessage,
    *,
    queue_id: str,
    duplicate_window_seconds: float,
    duration_ms: int,
) -> Delivered:
    """Store `message` in the INBOX unless it is a duplicate; log it either way.

    A duplicate is the same Message-ID and body hash delivered to the same vaultbox within the
    window: an MTA retrying after a lost reply. It is answered as delivered and stored once.
    One statement (`encimap_deliver`, sql/encimap/repeatable/30_store_message.sql), so one
    round trip: on a pool or connection outside a transaction it commits on its own before
    returning; inside the caller's transaction (SMTP mode) it commits with it.
    """
    info_values = _info_values(message.info or mimeinfo.describe(message.body))
    row = await db.fetchrow(
        """SELECT * FROM encimap_deliver($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                                         $14, $15, $16, $17, $18, $19, $20, $21)""",
        message.vaultbox_id,
        message.body,
        message.internal_date,
        message.message_id,
        message.sender,
        message.recipient,
        message.subject_encrypted,
        message.body_sha256,
        message.encryption_method,
        message.certificate_fingerprints,
        *info_values,
        float(duplicate_window_seconds),
        queue_id,
        message.outcome,
        message.size_original,
        duration_ms,
    )
    if row is None:
        raise NotFound(f"vaultbox {message.vaultbox_id} has no {INBOX}")
    return Delivered(row["email_id"], row["mailbox_id"], row["uid"], row["duplicate"])


async def log_failure(
    db: Executor,
    *,
    vaultbox_id: uuid.UUID,
    queue_id: str,
    recipient: str,
    reply_code: str,
    size_original: int,
    duration_ms: int,
    error: str,
) -> None:
    """Record a delivery that was refused or failed (never with content)."""
    await db.execute(
        """INSERT INTO email_processing_logs
               (vaultbox_id, queue_id, recipient, outcome, reply_code, size_original,
                duration_ms, error)
           VALUES ($1, $2, $3, CASE WHEN $4 LIKE '4%' THEN 'tempfail' ELSE 'rejected' END,
                   $4, $5, $6, $7)""",
        vaultbox_id,
        queue_id,
        recipient,
        reply_code,
        size_original,
        duration_ms,
        error,
    )
