"""Data moves that adopt a platform database, run by `encimap db migrate` after the schema
migrations: in short transactions, resumable (each step picks up what is still undone), while
the services run.

1. Every vaultbox gets its default mailboxes (sql/encimap/repeatable/30_default_mailboxes.sql).
2. Mail the platform's old service stored (no mailbox, UID or flags) is placed in its vaultbox's
   INBOX in batches, UIDs in `processed_at` order (encimap_place_messages).
3. Placed mail that has no ENVELOPE/BODYSTRUCTURE yet is described (encimap.mimeinfo), so
   FETCH and SEARCH serve it like mail encimap stored.
4. Certificates the platform stored with only their PEM get fingerprint, validity and key type.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from encimap import mimeinfo
from encimap.store.certificates import complete_certificates
from encimap.store.messages import STORED_BYTES, save_infos
from encimap.store.types import Executor

Progress = Callable[[str], None]
PLACE_BATCH = 5_000
DESCRIBE_BATCH = 200


@dataclass(frozen=True)
class Pending:
    """What the data moves still have to do on this database."""

    vaultboxes_without_mailboxes: int
    unplaced_messages: int
    undescribed_messages: int
    incomplete_certificates: int

    def lines(self) -> list[str]:
        return [
            f"{self.vaultboxes_without_mailboxes} vaultboxes get their default mailboxes",
            f"{self.unplaced_messages} stored messages are placed in their vaultbox's INBOX",
            f"{self.undescribed_messages} messages get ENVELOPE/BODYSTRUCTURE",
            f"{self.incomplete_certificates} certificates get fingerprint, validity, key type",
        ]


async def pending(db: Executor) -> Pending:
    row = await db.fetchrow(
        """SELECT (SELECT count(*) FROM vaultboxes v
                    WHERE NOT EXISTS (SELECT 1 FROM mailboxes m
                                       WHERE m.vaultbox_id = v.id AND m.name = 'INBOX'))
                      AS vaultboxes,
                  (SELECT count(*) FROM encrypted_emails WHERE mailbox_id IS NULL) AS unplaced,
                  (SELECT count(*) FROM encrypted_emails WHERE envelope IS NULL) AS undescribed,
                  (SELECT count(*) FROM public_certificates WHERE fingerprint_sha256 IS NULL)
                      AS certificates"""
    )
    return Pending(row["vaultboxes"], row["unplaced"], row["undescribed"], row["certificates"])


async def create_missing_mailboxes(db: Executor) -> int:
    return await db.fetchval(
        """SELECT count(*) FROM (
                  SELECT encimap_create_default_mailboxes(v.id) FROM vaultboxes v
                   WHERE NOT EXISTS (SELECT 1 FROM mailboxes m
                                      WHERE m.vaultbox_id = v.id AND m.name = 'INBOX')) AS made"""
    )


async def place_batch(db: Executor, limit: int = PLACE_BATCH) -> int:
    """Place up to `limit` unplaced messages, vaultbox by vaultbox; how many were placed."""
    return await db.fetchval(
        """SELECT encimap_place_messages(ARRAY(
                  SELECT id FROM encrypted_emails WHERE mailbox_id IS NULL
                   ORDER BY vaultbox_id, processed_at, id LIMIT $1))""",
        limit,
    )


async def describe_batch(
    db: Executor, after: uuid.UUID, limit: int = DESCRIBE_BATCH
) -> tuple[uuid.UUID, int]:
    """Describe placed messages without ENVELOPE whose id is above `after`; returns the last id
    looked at (keyset order: each row is read once) and how many were described."""
    rows = await db.fetch(
        f"""SELECT id, {STORED_BYTES} AS body FROM encrypted_emails
             WHERE id > $1 AND envelope IS NULL AND mailbox_id IS NOT NULL
             ORDER BY id LIMIT $2""",  # noqa: S608 - constant expression
        after,
        limit,
    )
    await save_infos(db, [(row["id"], mimeinfo.describe(row["body"] or b"")) for row in rows])
    return (rows[-1]["id"] if rows else after), len(rows)


async def adopt(db: Executor, progress: Progress, *, batch: int = PLACE_BATCH) -> None:
    """Run every data move to the end, reporting progress; safe to interrupt and run again.
    With nothing to do it only reads (the services' login may run it)."""
    todo = await pending(db)
    if todo.vaultboxes_without_mailboxes:
        created = await create_missing_mailboxes(db)
        progress(f"default mailboxes created for {created} vaultboxes")
    placed = 0
    while todo.unplaced_messages and (count := await place_batch(db, batch)):
        placed += count
        progress(f"placed {placed}/{todo.unplaced_messages} stored messages")
    described, last = 0, uuid.UUID(int=0)
    while todo.undescribed_messages:
        last, count = await describe_batch(db, last)
        if not count:
            break
        described += count
        progress(f"described {described}/{todo.undescribed_messages} messages")
    if todo.incomplete_certificates and (completed := await complete_certificates(db)):
        progress(f"completed {completed} certificates")
