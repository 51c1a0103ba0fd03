"""FETCH and UID FETCH: stored bytes and stored ENVELOPE/BODYSTRUCTURE, nothing re-parsed.

The set is read in chunks (one query each, only the columns the items need), and responses are
buffered and written in large writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from encimap import mimeinfo
from encimap.imap import wire
from encimap.imap.commands import SELECTED, command, condstore
from encimap.imap.commands.mailbox import vaultbox_id
from encimap.imap.parser import FetchItem, Reader, Section, parse_fetch_items
from encimap.imap.session import Session, bad
from encimap.store import flagsync, messages

_CHUNK_WITH_BODY = 200
_CHUNK_METADATA = 2000
_CHUNK_BYTES = 4 * 1024 * 1024
_COLUMNS_FOR = {
    "UID": (),
    "FLAGS": ("flags",),
    "INTERNALDATE": ("internal_date",),
    "RFC822.SIZE": ("size_bytes",),
    "ENVELOPE": ("id", "envelope"),
    "BODYSTRUCTURE": ("id", "bodystructure"),
    "BODY": ("id", "bodystructure_basic"),
    "RFC822": ("body_encrypted",),
    "RFC822.HEADER": ("body_encrypted", "mime_parts", "id"),
    "RFC822.TEXT": ("body_encrypted", "mime_parts", "id"),
    "MODSEQ": ("modseq",),
}
_FLAG_SYNC = frozenset({"UID", "FLAGS", "MODSEQ"})
_DERIVED = ("envelope", "bodystructure", "bodystructure_basic", "mime_parts")
_FIELD = re.compile(rb"^([^:\s]+)[ \t]*:", re.MULTILINE)


@dataclass(frozen=True)
class Renderer:
    """An item another module renders (BINARY, BINARY.SIZE: commands/binary.py)."""

    # (item, row) -> the response text and, for a literal, its content
    render: Callable[[FetchItem, dict[str, Any]], tuple[bytes, bytes | None]]
    # (item, row) -> None, or raises a `Reply` (NO): called for every item before anything
    # of the message's response is sent, cheaply (the items are rendered one at a time)
    check: Callable[[FetchItem, dict[str, Any]], None]


RENDERERS: dict[str, Renderer] = {}


def columns_for(items: Sequence[FetchItem]) -> set[str]:
    columns: set[str] = set()
    for item in items:
        if item.section is not None:
            columns.add("body_encrypted")
            if item.section != Section() or item.name != "BODY":
                columns.update(("mime_parts", "id"))
        else:
            columns.update(_COLUMNS_FOR[item.name])
    return columns


# What in a FETCH line may set \\Seen (sets_seen): a body section not PEEKed, RFC822,
# RFC822.TEXT. A line that might is taken as one that writes; one that cannot, as reading only.
_MAY_SET_SEEN = re.compile(rb"(?:BODY|BINARY)\[|RFC822(?!\.HEADER|\.SIZE)", re.IGNORECASE)


def may_set_seen(command: bytes) -> bool:
    """Whether a FETCH command line may set \\Seen (change the mailbox)."""
    return _MAY_SET_SEEN.search(command) is not None


def sets_seen(items: Sequence[FetchItem]) -> bool:
    """RFC 3501 6.4.5: BODY[...] (not PEEK), RFC822 and RFC822.TEXT set \\Seen; so does
    BINARY[...] (RFC 3516 4.1), not BINARY.SIZE."""
    return any(
        (item.section is not None and not item.peek and item.name != "BINARY.SIZE")
        or item.name in ("RFC822", "RFC822.TEXT")
        for item in items
    )


@command("FETCH", states=SELECTED, expunge_ok=False, writes=may_set_seen)
async def fetch(session: Session, _tag: str, reader: Reader) -> str:
    return await _fetch(session, reader, by_uid=False)


@command("UID FETCH", states=SELECTED, writes=may_set_seen)
async def uid_fetch(session: Session, _tag: str, reader: Reader) -> str:
    return await _fetch(session, reader, by_uid=True)


async def _fetch(session: Session, reader: Reader, *, by_uid: bool) -> str:
    selected = session.selected
    assert selected is not None
    reader.sp()
    sequence = reader.sequence_set()
    reader.sp()
    items = parse_fetch_items(reader)
    modifiers = condstore.fetch_modifiers(session, reader, by_uid=by_uid)
    if by_uid and not any(item.name == "UID" for item in items):
        items = [FetchItem("UID"), *items]
    if not by_uid and not selected.is_sequence_valid(sequence):
        raise bad("Invalid message sequence number")
    if modifiers.changed_since is not None or any(item.name == "MODSEQ" for item in items):
        condstore.enable(session, condstore.CONDSTORE)
    if modifiers.changed_since is not None:
        items = condstore.with_modseq(items)
        uids = await condstore.changed_uids(session, selected, sequence, modifiers, by_uid=by_uid)
    elif by_uid:
        uids = selected.by_uid(sequence)
    else:
        uids = selected.by_sequence(sequence)
    if not uids:
        return "OK Fetch completed."
    seen: list[tuple[int, list[str], int]] = []
    if sets_seen(items) and not selected.readonly:
        async with session.server.pool.acquire() as conn:
            stored = await messages.store_flags(
                conn,
                vaultbox_id=vaultbox_id(session),
                mailbox_id=selected.mailbox.id,
                uids=uids,
                mode="add",
                flags=["\\Seen"],
                origin=session.id,
            )
        seen = stored.changed
        selected.flags_changed_here(uid for uid, _current, _modseq in seen)
        if not any(item.name == "FLAGS" for item in items):
            items = [*items, FetchItem("FLAGS")]
    names = [item.name for item in items]
    # each flag item at most once: PostgreSQL renders the line as one expression, which
    # thousands of repeats would nest too deeply (the general path answers repeats)
    if set(names) <= _FLAG_SYNC and len(set(names)) == len(names):
        # A flag resync (`UID FETCH 1:* (UID FLAGS)`): rendered by PostgreSQL, no object
        # per message (\Recent, the session's, comes with the runs).
        runs = selected.runs(uids)
        pool, mailbox_id = session.server.pool, selected.mailbox.id
        lines, keywords = await flagsync.flag_responses(pool, mailbox_id, runs, names)
        for line in selected.announce(keywords):  # keywords another session set
            session.send(line)
        session.send(lines)
        return "OK Fetch completed."
    columns = columns_for(items)
    for chunk in await _chunks(session, uids, columns):
        for data in await message_rows(session, chunk, columns):
            seq = selected.seq_of(data["uid"])
            if seq is None:
                continue
            if "flags" in data:
                for line in selected.announce(data["flags"]):  # keywords another session set
                    session.send(line)
                if data["uid"] in selected.recent:
                    data = {**data, "flags": selected.flags(data["uid"], data["flags"])}
            for item in items:  # an item that cannot be served fails before the response
                if item.name in RENDERERS:
                    RENDERERS[item.name].check(item, data)
            # Streamed piece by piece: a message body goes out in drained chunks, so no
            # response (BODY[] a thousand times over) is ever built whole in memory.
            session.send(b"* %d FETCH (" % seq)
            for index, item in enumerate(items):
                head, content = render(item, data)
                session.send(head if not index else b" " + head)
                if content is not None:
                    await session.send_large(content)
                else:
                    await session.maybe_flush()
            session.send(b")\r\n")
            await session.maybe_flush()
    if selected.condstore:  # the new MODSEQ of messages it set \Seen on, as Dovecot sends it
        for uid, _flags, modseq in seen:
            if selected.seq_of(uid) is not None:
                session.send(selected.fetch_flags(uid, None, modseq, uid_at=0 if by_uid else None))
    return "OK Fetch completed."


async def _chunks(session: Session, uids: list[int], columns: set[str]) -> list[list[int]]:
    """`uids` in groups to read with one query each: by count, and with bodies also by size
    (so a bulk fetch of large messages holds a few megabytes, not the whole set)."""
    if "body_encrypted" not in columns:
        return [uids[i : i + _CHUNK_METADATA] for i in range(0, len(uids), _CHUNK_METADATA)]
    if len(uids) == 1:
        return [uids]
    selected = session.selected
    assert selected is not None
    sizes = await messages.sizes(session.server.pool, selected.mailbox.id, uids)
    chunks: list[list[int]] = [[]]
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if chunks[-1] and (total + size > _CHUNK_BYTES or len(chunks[-1]) >= _CHUNK_WITH_BODY):
            chunks.append([])
            total = 0
        chunks[-1].append(uid)
        total += size
    return chunks


async def message_rows(
    session: Session, uids: list[int], columns: set[str]
) -> list[dict[str, Any]]:
    """The rows of `uids` that still exist, from the cache where possible (never for flags or
    mod-sequences)."""
    selected = session.selected
    assert selected is not None
    cache = session.server.cache
    mailbox_id = selected.mailbox.id
    found: dict[int, dict[str, Any]] = {}
    if not columns & {"flags", "modseq"}:
        for uid in uids:
            entry = cache.get(mailbox_id, uid, columns)
            if entry is not None:
                found[uid] = entry
    missing = [uid for uid in uids if uid not in found]
    if missing:
        pool = session.server.pool
        for row in await messages.fetch_rows(pool, mailbox_id, missing, columns):
            data = await complete_row(pool, row, columns)
            cache.put(mailbox_id, data)
            found[data["uid"]] = data
    return [found[uid] for uid in uids if uid in found]


async def complete_row(
    pool: asyncpg.Pool, row: asyncpg.Record, columns: set[str]
) -> dict[str, Any]:
    """The row as a dict; ENVELOPE/BODYSTRUCTURE computed and stored if the row lacks them
    (messages stored before they existed)."""
    data = dict(row)
    if any(name in columns and data.get(name) is None for name in _DERIVED):
        info = await messages.complete_info(pool, data["id"])
        stored = messages.info_columns(info)
        for name in _DERIVED:
            data[name] = stored[name]
    if isinstance(data.get("mime_parts"), str):
        data["mime_parts"] = json.loads(data["mime_parts"])
    return data


def render(item: FetchItem, row: dict[str, Any]) -> tuple[bytes, bytes | None]:
    """The item's response text, and for a literal its content (sent on its own)."""
    name = item.name
    if name in RENDERERS:
        return RENDERERS[name].render(item, row)
    if item.section is not None:
        return literal(item.label().encode(), partial(item, section_bytes(row, item.section)))
    if name == "UID":
        return b"UID %d" % row["uid"], None
    if name == "FLAGS":
        return b"FLAGS " + wire.flag_list(row["flags"]).encode(), None
    if name == "INTERNALDATE":
        return b"INTERNALDATE " + wire.internal_date(row["internal_date"]).encode(), None
    if name == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % row["size_bytes"], None
    if name == "MODSEQ":
        return b"MODSEQ (%d)" % row["modseq"], None
    if name == "ENVELOPE":
        return b"ENVELOPE " + mimeinfo.wire(row["envelope"]), None
    if name == "BODYSTRUCTURE":
        return b"BODYSTRUCTURE " + mimeinfo.wire(row["bodystructure"]), None
    if name == "BODY":
        return b"BODY " + mimeinfo.wire(row["bodystructure_basic"]), None
    if name == "RFC822":
        return literal(b"RFC822", row["body_encrypted"])
    part = section_bytes(row, Section(text="HEADER" if name == "RFC822.HEADER" else "TEXT"))
    return literal(name.encode(), part)


def partial(item: FetchItem, content: bytes) -> bytes:
    """The `<start.length>` slice an item asks for, or all of `content`."""
    if item.partial is None:
        return content
    start, length = item.partial
    return content[start : start + length]


def literal(label: bytes, content: bytes, *, binary: bool = False) -> tuple[bytes, bytes]:
    """`label {n}` (with `binary`, a literal8 `~{n}`, RFC 3516) and the content."""
    return b"%b %b{%d}\r\n" % (label, b"~" if binary else b"", len(content)), content


def section_bytes(row: dict[str, Any], section: Section) -> bytes:
    """The bytes RFC 3501 6.4.5 names by a section, sliced from the stored message."""
    body: bytes = row["body_encrypted"]
    if section == Section():
        return body
    parts = {entry[0]: entry[1:] for entry in row["mime_parts"]}
    key = part_key(parts, section)
    if key not in parts:
        return b""  # a part the message does not have: empty, as Dovecot answers
    header_start, body_start, end = parts[key][:3]
    if section.text == "MIME":
        return body[header_start:body_start]
    if section.text == "":
        return body[body_start:end] if section.part else body
    if section.part:  # HEADER/TEXT of a message/rfc822 part: that message's own header
        if not is_message(parts, key):  # only a message/rfc822 part has a header of its
            return b""  # own; Dovecot answers "" for other parts
        header_start = body_start
        _header_end, body_start = mimeinfo.split_header(body, header_start, end)
    if section.text == "TEXT":
        return body[body_start:end]
    header = body[header_start:body_start]
    if section.text == "HEADER":
        return header
    return _header_fields(header, section.fields, exclude=section.text == "HEADER.FIELDS.NOT")


def part_key(parts: dict[str, list[int]], section: Section) -> str:
    """The key in `parts` of the part a section names (not in `parts` when the message has
    no such part). `N.1` of a part N of a multipart that is neither multipart nor a
    message is N itself (RFC 3501 6.4.5: such a part has only part 1), as Dovecot reads
    it; part 1 of a single-part (sub)message is already its body and has no `1.1`."""
    key = ".".join(map(str, section.part))
    if key in parts or not key.endswith(".1"):
        return key
    parent = key[:-2]
    if parent not in parts or is_message(parts, parent):
        return key
    enclosing = parent.rpartition(".")[0]
    message_start = parts[enclosing][1] if enclosing else 0
    return key if parts[parent][0] == message_start else parent


def is_message(parts: dict[str, list[int]], key: str) -> bool:
    entry = parts[key]
    if len(entry) > 3:
        return bool(entry[3])
    return f"{key}.1" in parts  # stored before parts were marked: the best guess


def _header_fields(header: bytes, names: Sequence[str], *, exclude: bool) -> bytes:
    wanted = {name.lower().encode() for name in names}
    matches = list(_FIELD.finditer(header))
    # lines before the first field (an mbox "From " line): not a named field, so kept by
    # HEADER.FIELDS.NOT, as Dovecot does
    kept = [header[: matches[0].start() if matches else len(header)]] if exclude else []
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(header)
        if (match[1].lower() in wanted) != exclude:
            field = header[match.start() : end]
            kept.append(field if field.endswith(b"\n") else field + b"\r\n")
    joined = b"".join(kept)
    # the trailing blank line of the header block, as in the full header
    if joined.endswith(b"\r\n\r\n") or joined.endswith(b"\n\n"):
        return joined
    return joined + b"\r\n"
