"""Mod-sequences (RFC 7162 CONDSTORE/QRESYNC): what changed in a mailbox after a mod-sequence
and which UIDs vanished since. sql/encimap/repeatable/36_modseq.sql keeps them; a message
stored before mod-sequences existed has NULL, read as 1 (`MODSEQ`).

Both reads go through an index on the mod-sequence (`encrypted_emails_modseq_idx`, the primary
key of `mailbox_vanished`), so a resync costs what changed, not the mailbox.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from encimap.store import uidsets
from encimap.store.types import Executor

# A message's mod-sequence as IMAP shows it.
MODSEQ = "coalesce(modseq, 1)"


async def highest(db: Executor, mailbox_id: int) -> int:
    """The mailbox's HIGHESTMODSEQ (1 for a mailbox that is gone)."""
    value = await db.fetchval("SELECT highest_modseq FROM mailboxes WHERE id = $1", mailbox_id)
    return value or 1


async def changed_since(db: Executor, mailbox_id: int, modseq: int) -> list[asyncpg.Record]:
    """(uid, flags, modseq) of the messages changed after `modseq`, in UID order. Only the
    changed rows are read: the condition is the modseq index's (never NULL above 1)."""
    if modseq < 1:
        return await db.fetch(
            f"""SELECT uid, flags, {MODSEQ} AS modseq FROM encrypted_emails
                 WHERE mailbox_id = $1 ORDER BY uid""",  # noqa: S608 - constant
            mailbox_id,
        )
    return await db.fetch(
        """SELECT c.uid, c.flags, c.modseq FROM (
                  SELECT uid, flags, modseq FROM encrypted_emails
                   WHERE mailbox_id = $1 AND modseq > $2 ORDER BY modseq OFFSET 0) AS c
            ORDER BY c.uid""",
        mailbox_id,
        modseq,
    )


async def vanished_since(db: Executor, mailbox_id: int, modseq: int) -> list[tuple[int, int]]:
    """The UIDs expunged after `modseq` (possibly a few more, see sql/encimap/006_modseq.sql),
    as inclusive (low, high) ranges in order."""
    rows = await db.fetch(
        """SELECT lower(r) AS lo, upper(r) - 1 AS hi
             FROM unnest((SELECT range_agg(v.uids) FROM mailbox_vanished v
                           WHERE v.mailbox_id = $1 AND v.modseq > $2)) AS r
            ORDER BY lo""",
        mailbox_id,
        modseq,
    )
    return [(row["lo"], row["hi"]) for row in rows]


async def highest_of(db: Executor, mailbox_id: int, uids: Sequence[int]) -> int:
    """The highest mod-sequence among these messages (SEARCH's MODSEQ result)."""
    value = await db.fetchval(
        f"SELECT max({MODSEQ}) FROM {uidsets.messages('modseq', '$1', '$2', '$3')}",  # noqa: S608
        mailbox_id,
        *uidsets.ranges(uids),
    )
    return value or 1
