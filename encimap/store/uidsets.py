"""UID sets as SQL parameters whose plan does not depend on their size.

A statement given a list of UIDs as `uid = ANY($n)` is fine with a custom plan, but on a pooled
connection PostgreSQL switches a prepared statement to a generic plan after five runs (or at
once with `plan_cache_mode = force_generic_plan`), and the generic plan for `= ANY(array)`
checks every row of the mailbox against the whole list: quadratic for `UID FETCH 1:*`. A set is
sent instead as two arrays of inclusive bounds, joined as `unnest(lo, hi)`: one index range
scan per range in any plan, and `1:*` is a single range whatever the mailbox holds.
"""

from __future__ import annotations

from collections.abc import Iterable


def ranges(uids: Iterable[int]) -> tuple[list[int], list[int]]:
    """(lows, highs): the sorted, merged, inclusive ranges covering exactly `uids` (a `range`
    is one range at no cost)."""
    if isinstance(uids, range) and uids.step == 1:
        return ([uids.start], [uids.stop - 1]) if uids else ([], [])
    lows: list[int] = []
    highs: list[int] = []
    for uid in sorted(set(uids)):
        if highs and uid == highs[-1] + 1:
            highs[-1] = uid
        else:
            lows.append(uid)
            highs.append(uid)
    return lows, highs


def multirange(bounds: Iterable[tuple[int, int]]) -> str:
    """Inclusive (low, high) ranges, in any order and overlapping or not, as the text of an
    int8multirange (PostgreSQL merges them), for a membership test (`uid <@ $n`)."""
    return "{" + ",".join(f"[{lo},{hi}]" for lo, hi in bounds) + "}"


def messages(columns: str, mailbox: str, lows: str, highs: str) -> str:
    """A FROM item `e` of the given columns of the mailbox's messages whose UIDs are in the
    ranges (parameters such as "$1", "$2", "$3"). The LATERAL subquery (kept apart by OFFSET 0)
    makes every plan, custom or generic, read one index range per range; ranges are disjoint,
    so no message comes twice."""
    ranges_sql = f"unnest({lows}::bigint[], {highs}::bigint[]) AS uid_range(lo, hi)"
    inner = (
        f"SELECT {columns} FROM encrypted_emails"  # noqa: S608 - placeholders and fixed columns
        f" WHERE mailbox_id = {mailbox} AND uid BETWEEN uid_range.lo AND uid_range.hi OFFSET 0"
    )
    return f"{ranges_sql} CROSS JOIN LATERAL ({inner}) AS e"
