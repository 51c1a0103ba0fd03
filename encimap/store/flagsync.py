"""Reads of a whole mailbox's UIDs and flags without a Python object per message: what SELECT
needs (the UIDs packed as 32-bit integers, the keywords, the first unseen UID) and the
`FETCH (UID FLAGS)` responses of a flag resync rendered by PostgreSQL.

UIDs are at most 2^32 - 1 (RFC 3501 2.3.1.1), so they fit an unsigned 32-bit array: 400 KB per
100,000 messages, where a list of Python ints takes about 3.6 MB.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from encimap.store.types import Executor


@dataclass(frozen=True)
class Summary:
    uids: array  # array('I'), ascending
    keywords: list[str]  # flags other than the system flags (\...), sorted
    first_unseen_uid: int | None


def packed_uids(data: bytes) -> array:
    """Big-endian 32-bit UIDs (as int4send writes them) as an array('I') in machine order."""
    uids = array("I")
    assert uids.itemsize == 4
    uids.frombytes(data)
    if sys.byteorder == "little":
        uids.byteswap()
    return uids


async def summary(db: Executor, mailbox_id: int) -> Summary:
    """One query: the mailbox's UIDs, keywords and first message without \\Seen."""
    row = await db.fetchrow(
        r"""SELECT coalesce((SELECT string_agg(int4send(uid::bigint::bit(32)::int4), ''::bytea
                                               ORDER BY uid)
                               FROM encrypted_emails WHERE mailbox_id = $1), ''::bytea) AS uids,
                   ARRAY(SELECT DISTINCT f FROM encrypted_emails e, unnest(e.flags) f
                          WHERE e.mailbox_id = $1 AND f NOT LIKE '\\%' ORDER BY f) AS keywords,
                   (SELECT uid FROM encrypted_emails
                     WHERE mailbox_id = $1 AND NOT flags @> ARRAY['\Seen']
                     ORDER BY uid LIMIT 1) AS first_unseen""",
        mailbox_id,
    )
    return Summary(packed_uids(row["uids"]), list(row["keywords"]), row["first_unseen"])


# Response items FETCH (UID FLAGS) may name, rendered by PostgreSQL.
_ITEM_SQL = {
    "UID": "'UID ' || e.uid",
    "FLAGS": "'FLAGS (' || array_to_string(e.flags, ' ') || ')'",
}


async def flag_responses(
    db: Executor,
    mailbox_id: int,
    runs: tuple[Sequence[int], Sequence[int], Sequence[int]],
    items: Sequence[str],
) -> bytes:
    """`* n FETCH (UID u FLAGS (...))` lines, CRLF-terminated, for the messages in `runs`:
    (lowest UIDs, highest UIDs, sequence numbers of the lowest), each run naming consecutive
    UIDs at consecutive sequence numbers; `items` is an ordering of UID and/or FLAGS. Messages
    no longer stored are left out."""
    rendered = " || ' ' || ".join(_ITEM_SQL[item] for item in items)
    data = await db.fetchval(
        f"""SELECT string_agg('* ' || (run.seq + e.uid - run.lo) || ' FETCH ('
                              || {rendered} || E')\\r\\n', '' ORDER BY e.uid)
              FROM unnest($2::bigint[], $3::bigint[], $4::bigint[]) AS run(lo, hi, seq)
             CROSS JOIN LATERAL (
                   SELECT uid, flags FROM encrypted_emails
                    WHERE mailbox_id = $1 AND uid BETWEEN run.lo AND run.hi OFFSET 0) AS e""",  # noqa: S608
        mailbox_id,
        *runs,
    )
    return (data or "").encode()
