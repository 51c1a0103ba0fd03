"""SORT and UID SORT (RFC 5256), SORT=DISPLAY (RFC 5957) and ESORT (RFC 5267 RETURN options)
over what is in clear: the outer header fields, the arrival date and the stored size. The
messages are chosen by SEARCH's program (commands/search.py); a Subject hidden by header
protection sorts as its placeholder."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.errors import HeaderParseError
from typing import Any

from encimap import mimeinfo
from encimap.imap import encodedwords
from encimap.imap.commands import SELECTED, command, context, never_writes
from encimap.imap.commands.search import matching_uids, resolve
from encimap.imap.parser import ParseError, Reader, SearchProgram, parse_search
from encimap.imap.session import Session
from encimap.mimeinfo.dates import parse_date
from encimap.store import messages

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CRITERIA = frozenset(
    {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
)


@command("SORT", states=SELECTED, expunge_ok=False, writes=never_writes)
async def sort(session: Session, tag: str, reader: Reader) -> str:
    return await _sort(session, tag, reader, by_uid=False)


@command("UID SORT", states=SELECTED, writes=never_writes)
async def uid_sort(session: Session, tag: str, reader: Reader) -> str:
    return await _sort(session, tag, reader, by_uid=True)


def _criteria(reader: Reader) -> list[tuple[str, bool]]:
    """(criterion, reversed) pairs from `(REVERSE FROM DATE ...)`. A criterion named again
    cannot change the order (messages it would compare are equal in it already), so only its
    first use is kept: a key costs at most one value per criterion, however long the list."""
    words = [word.upper() for word in reader.parenthesized(reader.atom)]
    criteria: list[tuple[str, bool]] = []
    seen: set[str] = set()
    reverse = False
    for word in words:
        if word == "REVERSE":
            reverse = True
            continue
        if word not in CRITERIA:
            raise ParseError(f"unknown sort criterion {word[:20]}")
        if word not in seen:
            seen.add(word)
            criteria.append((word, reverse))
        reverse = False
    if not criteria or reverse:
        raise ParseError("empty sort criteria")
    return criteria


async def _sort(session: Session, tag: str, reader: Reader, *, by_uid: bool) -> str:
    reader.sp()
    options = None
    if reader.accept(b"RETURN "):
        options = context.return_options([o.upper() for o in reader.parenthesized(reader.atom)])
        reader.sp()
    criteria = _criteria(reader)
    reader.sp()
    program = sort_program(reader)
    if options is not None and options.update:
        context.check_tag(session, tag)
    keyed = await program_fields(session, program)
    order = {uid: sort_key(fields, criteria, uid) for fields, _seq, uid in keyed}
    keyed.sort(key=lambda item: order[item[2]])
    numbers = [uid if by_uid else seq for _fields, seq, uid in keyed]
    if options is not None:
        if options.update:  # a refusal (NOUPDATE) comes before the results
            key = resolve(session, program.key)
            sorter = functools.partial(_sort_keys, session, criteria)
            context.start(session, tag, key, order, by_uid=by_uid, sort_keys=order, sorter=sorter)
        session.untagged(context.response(tag, numbers, options, by_uid=by_uid))
    else:
        session.untagged(" ".join(["SORT", *map(str, numbers)]))
    return "OK Sort completed."


def sort_key(fields: MessageFields, criteria: list[tuple[str, bool]], uid: int) -> tuple:
    """What a message sorts by: each criterion's key (reversed ones descending), then its UID:
    RFC 5256 puts ties in sequence-number order, which is UID order."""
    return (
        *(_descending(fields.key(c)) if reverse else fields.key(c) for c, reverse in criteria),
        uid,
    )


async def _sort_keys(
    session: Session, criteria: list[tuple[str, bool]], uids: Sequence[int]
) -> dict[int, tuple]:
    """The sort keys of the messages (those still stored) for a SORT kept current."""
    selected = session.selected
    assert selected is not None
    rows = await messages.sort_rows(session.server.pool, selected.mailbox.id, uids)
    return {row["uid"]: sort_key(MessageFields(row), criteria, row["uid"]) for row in rows}


def _descending(value: Any) -> Any:
    """A key that orders the other way round (REVERSE), compared by Python's own code: numbers
    and times negated; a string as its negated code points and a final 1, so that "ab" comes
    before "a" as it comes after it ascending."""
    if isinstance(value, str):
        return (*(-ord(char) for char in value), 1)
    if isinstance(value, datetime):  # microseconds since the epoch: exact, unlike a float
        return -((value - _EPOCH) // timedelta(microseconds=1))
    return -value


async def matching_fields(session: Session, reader: Reader) -> list[tuple[MessageFields, int, int]]:
    """`charset search-criteria` (RFC 5256, shared by SORT and THREAD): the matching messages'
    clear fields with their sequence number and UID, in sequence order."""
    return await program_fields(session, sort_program(reader))


def sort_program(reader: Reader) -> SearchProgram:
    """`charset search-criteria` (RFC 5256)."""
    charset = reader.astring().decode("ascii", "replace").upper()
    if charset not in ("US-ASCII", "UTF-8"):
        raise ParseError(f"[BADCHARSET (US-ASCII UTF-8)] unsupported charset {charset}")
    reader.sp()
    return parse_search(reader)


async def program_fields(
    session: Session, program: SearchProgram
) -> list[tuple[MessageFields, int, int]]:
    """The messages the program matches: their clear fields with their sequence number and
    UID, in sequence order."""
    selected = session.selected
    assert selected is not None
    found = await matching_uids(session, program.key)
    rows = await messages.sort_rows(session.server.pool, selected.mailbox.id, found)
    keyed = []
    for row in rows:
        seq = selected.seq_of(row["uid"])
        if seq is not None:
            keyed.append((MessageFields(row), seq, row["uid"]))
    keyed.sort(key=lambda item: item[1])
    return keyed


# One way to match each space: with `\s*` both after a blob and before the next, n blobs
# not followed by `re:` backtracked through 2^n splits (24 blobs: seconds, 40: hours).
_SUBJECT_LEADER = re.compile(r"\s*(?:\[[^\[\]]*\]\s*)*(?:re|fwd?)\s*(?:\[[^\[\]]*\])?\s*:", re.I)
_SUBJECT_BLOB = re.compile(r"\s*\[[^\[\]]*\]\s*")


def base_subject(subject: str) -> str:
    """RFC 5256 2.1 base subject, upper-cased (compared case-insensitively)."""
    return subject_info(subject)[0]


def subject_info(subject: str) -> tuple[str, bool]:
    """(base subject, whether it is a reply or forward): RFC 2047 decoded, without Re:/Fwd:
    leaders, [blob]s, (fwd) trailers and [fwd: ...] wrappers (RFC 5256 2.1).

    What is left is `text[start:end]`: a cut moves an end, never copies the rest, and where
    no leader starts no later blob can start one either, so a subject costs its length, not
    its length once per blob, trailer or wrapper."""
    text = " ".join(_decoded(subject).split())  # single spaces: a strip is one step
    start, end = 0, len(text)
    reply = False
    stuck = -1  # a start where neither a leader nor a blob (but the last) can be cut
    while True:
        before = start, end
        if end - start >= 5 and text[end - 5 : end].lower() == "(fwd)":  # (2)
            end -= 5
            reply = True
            if end > start and text[end - 1] == " ":
                end -= 1
        while start != stuck:  # (3) and (4)
            leader = _SUBJECT_LEADER.match(text, start, end)
            if leader is not None:
                start = leader.end()
                start += start < end and text[start] == " "
                reply = True
                continue
            while (blob := _SUBJECT_BLOB.match(text, start, end)) and blob.end() < end:
                start = blob.end()
            stuck = start
        if end - start >= 6 and text[start : start + 5].lower() == "[fwd:" and text[end - 1] == "]":
            start, end = start + 5, end - 1  # (5)
            reply = True
            start += start < end and text[start] == " "
            end -= end > start and text[end - 1] == " "
        if (start, end) == before:
            return text[start:end].upper(), reply


def _decoded(value: str) -> str:
    """RFC 2047 words decoded; a value with a word that cannot be (bad base64, an unknown
    charset, bytes that are not in it) sorts as it is written."""
    try:
        return encodedwords.decoded(value)
    except (ValueError, LookupError, UnicodeError, HeaderParseError):
        return value


class MessageFields:
    """The sort keys of one message, computed from its outer header when first asked."""

    def __init__(self, row: Any) -> None:
        data: bytes = row["header"]
        header_end, _ = mimeinfo.split_header(data, 0, len(data))
        self.headers = mimeinfo.parse_headers(data, 0, header_end)
        self.internal_date: datetime = row["internal_date"]
        self.size: int = row["size_bytes"]

    def _first_address(self, name: str) -> tuple[str | None, str, str | None] | None:
        """(display name, mailbox, host) of the first address; a group's start counts, with
        the group name as its mailbox (as Dovecot sorts it)."""
        values = self.headers.all(name)
        for display, _route, mailbox, host in mimeinfo.parse_addresses(", ".join(values)):
            if mailbox is not None:
                return display, mailbox, host
        return None

    def key(self, criterion: str) -> Any:
        if criterion == "ARRIVAL":
            return self.internal_date
        if criterion == "SIZE":
            return self.size
        if criterion == "DATE":
            sent = parse_date(self.headers.first("date"))
            if sent is not None and sent.tzinfo is not None:
                return sent
            return self.internal_date
        if criterion == "SUBJECT":
            return base_subject(self.headers.first("subject") or "")
        field = {"CC": "cc", "FROM": "from", "TO": "to"}.get(criterion)
        if field is not None:  # RFC 5256: the addr-mailbox of the first address
            first = self._first_address(field)
            return "" if first is None else first[1].upper()
        first = self._first_address("from" if criterion == "DISPLAYFROM" else "to")
        if first is None:  # RFC 5957: the display name, else the addr-spec
            return ""
        display, mailbox, host = first
        name = _decoded(display).strip() if display else ""
        return (name or (mailbox if host is None else f"{mailbox}@{host}")).upper()
