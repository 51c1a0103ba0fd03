"""SEARCH over what is stored in clear: flags, dates, sizes, UIDs and the outer header fields
From/To/Cc/Bcc/Subject (`search_headers`). Message bodies are encrypted, so BODY never
matches and TEXT matches those header fields only.

The IMAP front end parses a search program into these nodes; `search()` turns them into one
parameterised query over one mailbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal

from encimap.store import flagsync, modseqs, uidsets
from encimap.store.types import Executor

SEARCHABLE_HEADERS = ("from", "to", "cc", "bcc", "subject")


@dataclass(frozen=True)
class All:
    pass


@dataclass(frozen=True)
class Nothing:
    pass


@dataclass(frozen=True)
class Flag:
    flag: str
    present: bool = True


@dataclass(frozen=True)
class Uids:
    """The UIDs within inclusive (low, high) ranges, in any order, overlapping or not: a
    sequence set costs its ranges, not a number per message it names."""

    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Not:
    key: Key


@dataclass(frozen=True)
class Or:
    left: Key
    right: Key


@dataclass(frozen=True)
class And:
    keys: tuple[Key, ...]


@dataclass(frozen=True)
class Date:
    field: Literal["internal", "sent"]
    op: Literal["before", "on", "since"]
    day: date


@dataclass(frozen=True)
class Size:
    op: Literal["larger", "smaller"]
    size: int


@dataclass(frozen=True)
class Header:
    name: str  # lower case
    text: str


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Modseq:
    """RFC 7162 3.1.5: messages whose mod-sequence is at least `modseq`."""

    modseq: int


Key = All | Nothing | Flag | Uids | Not | Or | And | Date | Size | Header | Text | Modseq


def mentions(key: object, kind: type) -> bool:
    """Whether a search program (also one still holding the parser's own nodes, such as
    RECENT before it is resolved) has a criterion of type `kind` anywhere in it."""
    if isinstance(key, kind):
        return True
    match key:
        case Not(inner):
            return mentions(inner, kind)
        case Or(left, right):
            return mentions(left, kind) or mentions(right, kind)
        case And(inner):
            return any(mentions(k, kind) for k in inner)
    return False


class _Compiler:
    def __init__(self, mailbox_id: int) -> None:
        self.params: list[object] = [mailbox_id]

    def param(self, value: object, cast: str = "") -> str:
        self.params.append(value)
        return f"${len(self.params)}{cast}"

    def sql(self, key: Key) -> str:
        match key:
            case All():
                return "true"
            case Nothing():
                return "false"
            case Flag(flag, present):
                test = f"flags @> ARRAY[{self.param(flag, '::text')}]"
                return test if present else f"NOT {test}"
            case Uids(ranges):
                # A multirange: one binary search per row whatever the size of the set.
                return f"uid <@ {self.param(uidsets.multirange(ranges), '::text::int8multirange')}"
            case Not(inner):
                return f"NOT ({self.sql(inner)})"
            case Or(left, right):
                return f"(({self.sql(left)}) OR ({self.sql(right)}))"
            case And(keys):
                return (
                    "(" + " AND ".join(f"({self.sql(k)})" for k in keys) + ")" if keys else "true"
                )
            case Date(field, op, day):
                column = "internal_date" if field == "internal" else "sent_date"
                value = f"({column} AT TIME ZONE 'UTC')::date"
                operator = {"before": "<", "on": "=", "since": ">="}[op]
                return f"{value} {operator} {self.param(day, '::date')}"
            case Size(op, size):
                operator = ">" if op == "larger" else "<"
                return f"size_bytes {operator} {self.param(size, '::integer')}"
            case Header(name, text):
                if name not in SEARCHABLE_HEADERS:
                    return "false"
                return self._contains(f"search_headers->>{self.param(name, '::text')}", text)
            case Modseq(modseq):
                return f"{modseqs.MODSEQ} >= {self.param(modseq, '::bigint')}"
            case Text(text):
                fields = " || ' ' || ".join(
                    f"coalesce(search_headers->>'{name}', '')" for name in SEARCHABLE_HEADERS
                )
                return self._contains(f"({fields})", text)
        raise TypeError(f"not a search key: {key!r}")

    def _contains(self, expression: str, text: str) -> str:
        # a missing field (NULL) does not contain anything, and NOT of that is true
        return (
            f"coalesce(strpos(lower({expression}), lower({self.param(text, '::text')})) > 0, false)"
        )


async def search(db: Executor, mailbox_id: int, key: Key, within: Sequence[int]) -> Sequence[int]:
    """UIDs in `within` (the session's view of the mailbox; a `range` costs nothing to send)
    matching `key`, ascending; as a packed array (flagsync.packed_uids), not an object per
    message."""
    compiler = _Compiler(mailbox_id)
    condition = compiler.sql(key)
    lows, highs = uidsets.ranges(within)
    scope = uidsets.messages("*", "$1", compiler.param(lows), compiler.param(highs))
    data = await db.fetchval(
        f"""SELECT array_send(ARRAY(SELECT e.uid FROM {scope} WHERE ({condition})
                                     ORDER BY e.uid))""",  # noqa: S608 - placeholders, fixed SQL
        *compiler.params,
    )
    return flagsync.packed_uids(data)
