"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 4): the PARTIAL, UPDATE and CONTEXT return options
of SEARCH and SORT (and their UID forms), the ADDTO/REMOVEFROM updates of a kept result and
CANCELUPDATE.

PARTIAL m:n returns the m-th to n-th results (1-based, in mailbox order for SEARCH, in the
requested order for SORT); n:m is m:n, and RFC 9394's negative ranges (-1:-100, counted from
the last result) are accepted too. A range past the end answers NIL.

UPDATE keeps the result current for as long as the mailbox stays selected or until
CANCELUPDATE: the session's view reports every message it learns of, whose flags change or
that is expunged (encimap.imap.selected), and only those messages are searched again, never the
whole mailbox. Sequence sets and RECENT in the search program name the messages they named when
the command ran. A session holds at most `MAX_UPDATE_CONTEXTS` of them; beyond that the command
still answers, with an untagged `NO [NOUPDATE "tag"]` (RFC 5267 4.3.1); so does a SORT whose
result would make the session keep more than `MAX_KEPT_SORTED` sorted messages.

SEARCH updates give context position 0 and sets in mailbox order (RFC 5267 4.3.3); SORT updates
give the positions in the sorted result: removals from the last position back, then additions
in order, each run of adjacent positions in one pair.
"""

from __future__ import annotations

import bisect
import re
from array import array
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from encimap.db import DATABASE_ERRORS
from encimap.imap import wire
from encimap.imap.commands import SELECTED, command, esearch
from encimap.imap.parser import ParseError, Reader
from encimap.imap.selected import Selected
from encimap.imap.session import Session, bad, no
from encimap.logs import get_logger
from encimap.store import search as keys

log = get_logger(__name__)

# Contexts kept current per session (RFC 5267 4.3.1: at least one; Dovecot allows 10). Each
# holds its result (4 bytes per message for SEARCH, the sort keys for SORT) and costs one
# query per change of the mailbox.
MAX_UPDATE_CONTEXTS = 5
# Messages the session's SORT contexts may keep in all: a sort key takes about 330 bytes
# (10,000 messages sorted by SUBJECT REVERSE DATE: 3.3 MB), so at most about 16 MB.
MAX_KEPT_SORTED = 50_000

_RANGE = re.compile(r"(-?)([1-9][0-9]{0,9}):(-?)([1-9][0-9]{0,9})")
# sort keys of some messages by UID (given by SORT, which knows its criteria)
Keys = dict[int, tuple[Any, ...]]
SortKeys = Callable[[Sequence[int]], Awaitable[Keys]]
# (context position, UIDs in the requested order): one pair of ADDTO or REMOVEFROM
Pairs = list[tuple[int, list[int]]]


@dataclass
class ReturnOptions:
    """What a RETURN (...) list asks for: the ESEARCH options (MIN MAX ALL COUNT), a PARTIAL
    range (low, high; both negative for RFC 9394's last-results form) and UPDATE."""

    plain: list[str] = field(default_factory=list)
    partial: tuple[int, int] | None = None
    update: bool = False


def return_options(tokens: list[str]) -> ReturnOptions:
    """The RETURN list, read as its atoms (upper-cased); syntax errors are BAD. RFC 5267 4.4:
    one PARTIAL or one ALL, not both; an empty list (or CONTEXT alone) means ALL."""
    options = ReturnOptions()
    index = 0
    while index < len(tokens):
        word = tokens[index]
        index += 1
        if word == "PARTIAL":
            if options.partial is not None or "ALL" in options.plain:
                raise ParseError("one PARTIAL or ALL return option at most")
            if index == len(tokens):
                raise ParseError("PARTIAL needs a range")
            options.partial = partial_range(tokens[index])
            index += 1
        elif word == "UPDATE":
            if options.update:
                raise ParseError("UPDATE given twice")
            options.update = True
        elif word == "CONTEXT":
            continue  # RFC 5267 4.2: a hint; every result is computed when asked
        elif word == "ALL" and (options.partial is not None or "ALL" in options.plain):
            raise ParseError("one PARTIAL or ALL return option at most")
        else:
            options.plain.extend(esearch.check_options([word]))
    if not options.plain and options.partial is None and not options.update:
        options.plain = esearch.check_options([])
    return options


def partial_range(text: str) -> tuple[int, int]:
    """`m:n` with 1 <= m, n < 2^32 (RFC 5267 partial-range), or `-m:-n` (RFC 9394), as
    (low, high) by absolute value: `4:2` is `2:4`, `-5:-1` is `-1:-5`."""
    match = _RANGE.fullmatch(text)
    if match is None or match[1] != match[3]:
        raise ParseError(f"invalid PARTIAL range {text[:30]}")
    first, second = int(match[2]), int(match[4])
    if max(first, second) > 0xFFFFFFFF:
        raise ParseError("PARTIAL range out of range")
    low, high = min(first, second), max(first, second)
    return (-low, -high) if match[1] else (low, high)


def partial_results(numbers: list[int], window: tuple[int, int]) -> list[int]:
    """The results at the window's positions, in their order."""
    low, high = window
    if low < 0:  # -1 is the last result
        start, stop = max(len(numbers) + high, 0), max(len(numbers) + low + 1, 0)
        return numbers[start:stop]
    return numbers[low - 1 : high]


def response(tag: str, numbers: list[int], options: ReturnOptions, *, by_uid: bool) -> str:
    """The ESEARCH response (without "* ") for the results, in their order."""
    partial = ""
    if options.partial is not None:
        low, high = options.partial
        found = partial_results(numbers, options.partial)
        chosen = wire.ordered_sequence_set(found) if found else "NIL"
        partial = f"PARTIAL ({low}:{high} {chosen})"
    return esearch.response(tag, numbers, options.plain, by_uid=by_uid, partial=partial)


def start(
    session: Session,
    tag: str,
    key: keys.Key,
    uids: Iterable[int],
    *,
    by_uid: bool,
    sort_keys: Keys | None = None,
    sorter: SortKeys | None = None,
) -> None:
    """Keep the result of an UPDATE command current: `uids` matched `key` (a SEARCH, in
    mailbox order) or, given `sort_keys` (every matching UID's) and `sorter`, a SORT."""
    selected = session.selected
    assert selected is not None
    contexts = _contexts(session, selected)
    refusal = None
    if len(contexts.kept) >= MAX_UPDATE_CONTEXTS:
        refusal = f"At most {MAX_UPDATE_CONTEXTS} searches are kept current"
    elif sort_keys is not None and contexts.sorted() + len(sort_keys) > MAX_KEPT_SORTED:
        refusal = f"At most {MAX_KEPT_SORTED} sorted messages are kept current"
    if refusal is not None:
        session.untagged(f"NO [NOUPDATE {wire.quoted_or_literal(tag)}] {refusal}")
        return
    result: _Result
    if sort_keys is None:
        result = _SearchResult(uids)
    else:
        assert sorter is not None
        result = _SortResult(sort_keys, sorter)
    contexts.kept[tag] = _Context(tag, key, by_uid, result)


def check_tag(session: Session, tag: str) -> None:
    """RFC 5267 4.3: UPDATE under the tag of a context still kept is BAD."""
    selected = session.selected
    contexts = selected.observer if selected is not None else None
    if isinstance(contexts, Contexts) and tag in contexts.kept:
        raise bad(f"Tag {tag[:40]} already names a search kept current")


@command("CANCELUPDATE", states=SELECTED)
async def cancelupdate(session: Session, _tag: str, reader: Reader) -> str:
    """`CANCELUPDATE 1*(SP quoted)`: stop the updates of the named contexts. An unknown tag
    answers NO and cancels none of them."""
    tags = []
    while True:
        reader.sp()
        tags.append(reader.string().decode("utf-8", "replace"))
        if reader.at_end():
            break
    selected = session.selected
    assert selected is not None
    contexts = selected.observer
    kept = contexts.kept if isinstance(contexts, Contexts) else {}
    unknown = [tag for tag in tags if tag not in kept]
    if unknown:
        raise no(f"No search kept current under tag {unknown[0][:40]}")
    for tag in tags:
        kept.pop(tag, None)
    return "OK Updates cancelled."


def _contexts(session: Session, selected: Selected) -> Contexts:
    contexts = selected.observer
    if not isinstance(contexts, Contexts):
        contexts = Contexts(session, selected)
        selected.observer = contexts
    return contexts


class _Result:
    """A kept result: the matching UIDs in the requested order."""

    def __contains__(self, uid: int) -> bool:
        raise NotImplementedError

    def remove(self, uids: list[int]) -> Pairs:
        """Drop `uids` (ascending, all present): (context position, UIDs) pairs to send."""
        raise NotImplementedError

    def add(self, uids: list[int], sort_keys: Keys) -> Pairs:
        """Insert `uids` (ascending, none present)."""
        raise NotImplementedError


class _SearchResult(_Result):
    """A SEARCH result in mailbox order: position 0, sets in mailbox order (RFC 5267 4.3.3)."""

    def __init__(self, uids: Iterable[int]) -> None:
        self.uids = array("I", uids)

    def __contains__(self, uid: int) -> bool:
        index = bisect.bisect_left(self.uids, uid)
        return index < len(self.uids) and self.uids[index] == uid

    def remove(self, uids: list[int]) -> Pairs:
        gone = set(uids)
        self.uids = array("I", (uid for uid in self.uids if uid not in gone))
        return [(0, uids)]

    def add(self, uids: list[int], sort_keys: Keys) -> Pairs:
        merged = sorted((*self.uids, *uids))
        self.uids = array("I", merged)
        return [(0, uids)]


class _SortResult(_Result):
    """A SORT result: the sort key of each message (ending in its UID, so ties are in mailbox
    order as RFC 5256 wants) in sorted order."""

    def __init__(self, sort_keys: Keys, sorter: SortKeys) -> None:
        self.by_uid = dict(sort_keys)
        self.order = sorted(sort_keys.values())
        self.sorter = sorter

    def __contains__(self, uid: int) -> bool:
        return uid in self.by_uid

    def remove(self, uids: list[int]) -> Pairs:
        positions = sorted(bisect.bisect_left(self.order, self.by_uid[uid]) for uid in uids)
        pairs: Pairs = []
        for position in reversed(positions):  # from the end: earlier positions stay valid
            uid = self.order[position][-1]
            if pairs and pairs[-1][0] == position + 1:
                pairs[-1] = (position, [uid, *pairs[-1][1]])
            else:
                pairs.append((position, [uid]))
            del self.order[position]
            del self.by_uid[uid]
        return [(position + 1, run) for position, run in pairs]

    def add(self, uids: list[int], sort_keys: Keys) -> Pairs:
        pairs: Pairs = []
        for entry in sorted(sort_keys[uid] for uid in uids):  # each at its final position
            position = bisect.bisect_left(self.order, entry)
            self.order.insert(position, entry)
            self.by_uid[entry[-1]] = entry
            if pairs and pairs[-1][0] + len(pairs[-1][1]) == position:
                pairs[-1][1].append(entry[-1])
            else:
                pairs.append((position, [entry[-1]]))
        return [(position + 1, run) for position, run in pairs]


@dataclass
class _Context:
    tag: str
    key: keys.Key
    by_uid: bool
    result: _Result


class Contexts:
    """The contexts kept current in one session's selected mailbox: its view's observer
    (encimap.imap.selected.Observer)."""

    def __init__(self, session: Session, selected: Selected) -> None:
        self.session = session
        self.selected = selected
        self.kept: dict[str, _Context] = {}
        self.pending: set[int] = set()  # UIDs to search again

    def sorted(self) -> int:
        """How many messages the SORT contexts keep."""
        results = [context.result for context in self.kept.values()]
        return sum(len(result.by_uid) for result in results if isinstance(result, _SortResult))

    def changed(self, uids: Iterable[int]) -> None:
        if self.kept:
            self.pending.update(uids)

    def expunging(self, uids: Sequence[int]) -> None:
        """REMOVEFROM now, before the EXPUNGE responses (RFC 5267 4.3.4): sequence numbers
        are still those the client knows."""
        self.pending.difference_update(uids)
        for context in self.kept.values():
            gone = [uid for uid in sorted(uids) if uid in context.result]
            if gone:
                removed = self._pairs(context, context.result.remove(gone))
                self.session.untagged(f"{self._head(context)} REMOVEFROM ({removed})")

    async def report(self) -> list[bytes]:
        """ADDTO/REMOVEFROM for the messages whose flags changed or that arrived (after their
        EXISTS), found by searching those messages only. A failed search leaves them pending
        for the next report."""
        if not self.pending or not self.kept:
            self.pending.clear()
            return []
        pending, self.pending = self.pending, set()
        selected = self.selected
        uids = [uid for uid in sorted(pending) if selected.seq_of(uid) is not None]
        if not uids:
            return []
        contexts = list(self.kept.values())
        try:
            found = []
            for context in contexts:
                matching = set(
                    await keys.search(selected.pool, selected.mailbox.id, context.key, uids)
                )
                added = [uid for uid in uids if uid in matching and uid not in context.result]
                sort_keys: Keys = {}
                if added and isinstance(context.result, _SortResult):
                    sort_keys = await context.result.sorter(added)
                    added = [uid for uid in added if uid in sort_keys]
                found.append((context, matching, added, sort_keys))
        except DATABASE_ERRORS as exc:
            self.pending |= pending
            log.warning("imap.context_update_failed", session=self.session.id, error=str(exc))
            return []
        lines = []
        for context, matching, added, sort_keys in found:
            if context.tag not in self.kept:
                continue
            removed = [uid for uid in uids if uid not in matching and uid in context.result]
            parts = []
            if removed:
                pairs = context.result.remove(removed)
                parts.append(f"REMOVEFROM ({self._pairs(context, pairs)})")
            if added:
                pairs = context.result.add(added, sort_keys)
                parts.append(f"ADDTO ({self._pairs(context, pairs)})")
            if parts:
                lines.append(f"* {self._head(context)} {' '.join(parts)}\r\n".encode())
        return lines

    def _head(self, context: _Context) -> str:
        head = f"ESEARCH (TAG {wire.quoted_or_literal(context.tag)})"
        return head + " UID" if context.by_uid else head

    def _pairs(self, context: _Context, pairs: Pairs) -> str:
        """`position set` pairs, in UIDs or in sequence numbers as the command asked."""
        texts = []
        for position, uids in pairs:
            numbers = uids
            if not context.by_uid:
                numbers = [seq for seq in map(self.selected.seq_of, uids) if seq is not None]
            texts.append(f"{position} {wire.ordered_sequence_set(numbers)}")
        return " ".join(texts)
