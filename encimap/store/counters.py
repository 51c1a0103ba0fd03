"""The message counters kept at write time (sql/encimap/003_counters.sql and
repeatable/35_message_counters.sql): per mailbox its messages, bytes and unseen messages, per
vaultbox its messages and bytes (what the quota is checked against).

Triggers keep them exact; `recount` rebuilds them from the rows (`encimap db recount`), one
vaultbox per short transaction, under the same locks the writers take, so it can run while mail
arrives and clients change flags.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from encimap.store.types import Executor


@dataclass(frozen=True)
class Recounted:
    vaultboxes: int  # vaultboxes recounted
    corrected: int  # of which at least one counter was off


@dataclass(frozen=True)
class Usage:
    messages: int
    bytes: int


async def usage(db: Executor, vaultbox_id: uuid.UUID) -> Usage:
    """The vaultbox's stored messages and bytes (one row read)."""
    row = await db.fetchrow(
        "SELECT messages, bytes FROM vaultbox_usage WHERE vaultbox_id = $1", vaultbox_id
    )
    return Usage(row["messages"], row["bytes"]) if row else Usage(0, 0)


async def recount(
    conn: asyncpg.Connection,
    vaultbox_ids: list[uuid.UUID] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Recounted:
    """Recount these vaultboxes (all when None); each in its own transaction."""
    if vaultbox_ids is None:
        vaultbox_ids = [
            row["id"] for row in await conn.fetch("SELECT id FROM vaultboxes ORDER BY id")
        ]
    corrected = 0
    for done, vaultbox_id in enumerate(vaultbox_ids, 1):
        async with conn.transaction():
            corrected += bool(await conn.fetchval("SELECT encimap_recount($1)", vaultbox_id))
        if progress is not None and done % 1000 == 0:
            progress(done)
    return Recounted(len(vaultbox_ids), corrected)
