"""CATENATE (RFC 4469): an APPEND message assembled from TEXT literals and IMAP URLs
(RFC 5092) to the user's own stored messages, also inside MULTIAPPEND.

A URL names stored bytes: `/mailbox[;UIDVALIDITY=n]/;UID=n[/;SECTION=x][/;PARTIAL=a[.b]]`,
also as `imap://user@host/...` (the logged-in user only) or relative to the selected mailbox
(`;UID=n...`). Sections are those of the stored, encrypted message (`fetch.section_bytes`).
The assembled message then takes APPEND's path (encrypted unless it already is). A URL that
does not resolve answers `NO [BADURL "url"]`, more parts than `imap.max_catenate_parts`
`NO [LIMIT]`, assembled messages over `imap.max_literal_size` (all of one APPEND
together, as its literals) `NO [TOOBIG]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes

from encimap.imap import names
from encimap.imap.commands.fetch import complete_row, part_key, section_bytes
from encimap.imap.commands.mailbox import vaultbox_id
from encimap.imap.parser import ParseError, Reader, Section, parse_section
from encimap.imap.session import Reply, Session, no
from encimap.store import mailboxes, messages

_URL = re.compile(
    r"(?:/(?P<mailbox>[^;]+?)(?:;UIDVALIDITY=(?P<uidvalidity>[1-9]\d{0,9}))?/)?"
    r";UID=(?P<uid>[1-9]\d{0,9})"
    r"(?:/;SECTION=(?P<section>[^/;]+))?"
    r"(?:/;PARTIAL=(?P<start>\d{1,10})(?:\.(?P<length>[1-9]\d{0,9}))?)?",
    re.IGNORECASE,
)
_COLUMNS = {"id", "body_encrypted", "mime_parts"}


@dataclass(frozen=True)
class Text:
    data: bytes


@dataclass(frozen=True)
class Url:
    url: str


Part = Text | Url


def parse(reader: Reader) -> list[Part]:
    """`(cat-part *(SP cat-part))` after `CATENATE SP`: `TEXT literal` (or literal8, with
    BINARY) and `URL astring`."""

    def part() -> Part:
        kind = reader.atom().upper()
        reader.sp()
        if kind == "TEXT":
            return Text(reader.literal(binary=True))
        if kind == "URL":
            return Url(reader.astring().decode("utf-8", "replace"))
        raise ParseError(f"unknown CATENATE part {kind[:20]}")

    parts = reader.parenthesized(part)
    if not parts:
        raise ParseError("empty CATENATE")
    return parts


async def assemble(session: Session, parts: list[Part], limit: int) -> bytes:
    """The message the parts make, at most `limit` bytes (else NO [TOOBIG]: the limit is
    `imap.max_literal_size` for all messages of the APPEND)."""
    pieces: list[bytes] = []
    total = 0
    for part in parts:
        data = part.data if isinstance(part, Text) else await _resolve(session, part.url)
        total += len(data)
        if total > limit:
            raise no("[TOOBIG] The messages of this APPEND are too large in all")
        pieces.append(data)
    return b"".join(pieces)


def _bad_url(url: str) -> Reply:
    shown = "".join(c for c in url[:200] if c.isprintable() and c not in '"\\]')
    return no(f'[BADURL "{shown}"] CATENATE URL does not name a stored message part')


async def _resolve(session: Session, url: str) -> bytes:
    """The stored bytes a URL names (the user's own mailboxes only)."""
    path = url
    if path[:7].lower() == "imap://":
        authority, slash, rest = path[7:].partition("/")
        user, at, _host = authority.rpartition("@")
        principal = session.principal
        if not slash or not at or principal is None:
            raise _bad_url(url)
        if unquote(user.split(";", 1)[0]) != principal.username:
            raise _bad_url(url)
        path = "/" + rest
    match = _URL.fullmatch(path)
    if match is None:
        raise _bad_url(url)
    pool = session.server.pool
    if match["mailbox"] is None:  # relative to the selected mailbox (RFC 5092 imessagepart)
        if session.selected is None:
            raise _bad_url(url)
        mailbox = session.selected.mailbox
    else:
        mailbox = await _mailbox(session, match["mailbox"])
        if mailbox is None:
            raise _bad_url(url)
    if match["uidvalidity"] is not None and int(match["uidvalidity"]) != mailbox.uidvalidity:
        raise _bad_url(url)
    rows = await messages.fetch_rows(pool, mailbox.id, [int(match["uid"])], _COLUMNS)
    if not rows:
        raise _bad_url(url)
    row = await complete_row(pool, rows[0], _COLUMNS)
    section = Section()
    if match["section"] is not None:
        try:
            section = parse_section(unquote_to_bytes(match["section"]))
        except ParseError:
            raise _bad_url(url) from None
        parts = {entry[0]: entry[1:] for entry in row["mime_parts"]}
        if part_key(parts, section) not in parts:
            raise _bad_url(url)
    data = section_bytes(row, section)
    if match["start"] is not None:
        start = int(match["start"])
        end = start + int(match["length"]) if match["length"] is not None else None
        data = data[start:end]
    return data


async def _mailbox(session: Session, encoded: str) -> mailboxes.Mailbox | None:
    """The mailbox a URL names: RFC 5092 3 percent-encodes its UTF-8 name; a name sent in
    modified UTF-7 (as stored) is found too."""
    try:
        text = unquote_to_bytes(encoded).decode("utf-8")
    except UnicodeDecodeError:
        return None
    pool = session.server.pool
    owner = vaultbox_id(session)
    found = await mailboxes.find_mailbox(pool, owner, names.encode(text))
    if found is None and names.encode(text) != text:
        found = await mailboxes.find_mailbox(pool, owner, text)
    return found
