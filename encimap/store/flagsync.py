"""Reads of a whole mailbox's UIDs and flags without a Python object per message: what SELECT
needs, in one round trip (the mailbox; its UIDs as PostgreSQL's binary array, unpacked into
32-bit integers; its keyword list; the first unseen UID; the \\Recent claim) and the
`FETCH (UID FLAGS)` responses of a flag resync rendered by PostgreSQL.

UIDs are at most 2^32 - 1 (RFC 3501 2.3.1.1), so they fit an unsigned 32-bit array: 400 KB per
100,000 messages, where a list of Python ints takes about 3.6 MB.
"""

from __future__ import annotations

import sys
import uuid
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from encimap.store import mailboxes, modseqs
from encimap.store.mailboxes import Mailbox
from encimap.store.types import Executor


@dataclass(frozen=True)
class Summary:
    mailbox: Mailbox  # found by its name
    uids: array  # array('I'), ascending
    keywords: list[str]  # flags other than the system flags (\...), sorted
    first_unseen_uid: int | None
    highest_modseq: int  # HIGHESTMODSEQ (RFC 7162) as of the same snapshot as `uids`
    recent_from: int  # the messages \Recent to this session: UIDs from this one on


def packed_uids(data: bytes) -> array:
    """The UIDs of `array_send(bigint[])` (one dimension) as an array('I'), without a Python
    object per element: after the header, each element is a 4-byte length and 8 bytes of
    big-endian value whose high half is 0 for a UID, so the UID is every third 32-bit word."""
    words = array("I")
    assert words.itemsize == 4
    words.frombytes(data)
    if sys.byteorder == "little":
        words.byteswap()
    if len(words) < 5:  # no dimension: an empty array
        return array("I")
    # Header: ndim, has-nulls flag, element type, then per dimension its length and lower bound.
    return words[5 + 2 :: 3]


async def select(
    db: Executor, vaultbox_id: uuid.UUID, name: str, *, claim_recent: bool
) -> Summary | None:
    """One round trip for SELECT/EXAMINE (`encimap_select_mailbox`, sql/encimap/repeatable/
    37_select_mailbox.sql): the mailbox named `name`, its UIDs, keywords and first message
    without \\Seen, from one snapshot; with `claim_recent`, the session takes the messages no
    session has had as \\Recent yet (RFC 3501 2.3.2). None: no such mailbox."""
    row = await db.fetchrow(
        "SELECT * FROM encimap_select_mailbox($1, $2, $3)",
        vaultbox_id,
        mailboxes.canonical_name(name),
        claim_recent,
    )
    if row is None:
        return None
    return Summary(
        mailboxes.from_row(row),
        packed_uids(row["uids"]),
        list(row["keywords"]),
        row["first_unseen_uid"],
        row["highest_modseq"],
        row["recent_from"],
    )


# Response items FETCH (UID FLAGS) may name, rendered by PostgreSQL.
_ITEM_SQL = {
    "UID": "'UID ' || e.uid",
    # \\Recent is the session's (run.recent), last, as Selected.flags puts it
    "FLAGS": "'FLAGS (' || array_to_string(CASE WHEN run.recent THEN e.flags || '\\Recent'::text"
    " ELSE e.flags END, ' ') || ')'",
    "MODSEQ": f"'MODSEQ (' || {modseqs.MODSEQ} || ')'",
}


async def flag_responses(
    db: Executor,
    mailbox_id: int,
    runs: tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[bool]],
    items: Sequence[str],
) -> tuple[bytes, list[str]]:
    """`* n FETCH (UID u FLAGS (...))` lines, CRLF-terminated, for the messages in `runs`:
    (lowest UIDs, highest UIDs, sequence numbers of the lowest, whether the run's messages are
    \\Recent to the session), each run naming consecutive UIDs at consecutive sequence
    numbers; `items` is an ordering of UID, FLAGS and MODSEQ. Messages no longer stored are
    left out. With them, the mailbox's keywords as of the same snapshot: every keyword the
    lines may name, which a client must have been told of first (Selected.announce)."""
    rendered = " || ' ' || ".join(_ITEM_SQL[item] for item in items)
    # without MODSEQ the rows come from the index alone (its INCLUDE has the flags)
    columns = "uid, flags, modseq" if "MODSEQ" in items else "uid, flags"
    row = await db.fetchrow(
        f"""SELECT (SELECT string_agg('* ' || (run.seq + e.uid - run.lo) || ' FETCH ('
                                      || {rendered} || E')\\r\\n', '' ORDER BY e.uid)
                      FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::boolean[])
                           AS run(lo, hi, seq, recent)
                     CROSS JOIN LATERAL (
                           SELECT {columns} FROM encrypted_emails
                            WHERE mailbox_id = $1 AND uid BETWEEN run.lo AND run.hi
                           OFFSET 0) AS e) AS lines,
                   (SELECT keywords FROM mailboxes WHERE id = $1) AS keywords""",  # noqa: S608
        mailbox_id,
        *runs,
    )
    return (row["lines"] or "").encode(), list(row["keywords"] or ())
