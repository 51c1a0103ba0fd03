"""IMAP ENVELOPE and BODYSTRUCTURE of a message, computed once from its raw bytes.

Pure: bytes in, strings out. Intake and APPEND call `describe()` when they store a message, so
FETCH serves the stored strings and never parses mail. The output follows what Dovecot 2.3
sends for the same bytes (the tests compare with a running Dovecot): header values are kept as
written (RFC 2047 words are not decoded), strings with 8-bit or line-break characters become
literals, missing address parts are filled with MISSING_MAILBOX / MISSING_DOMAIN.

`parts` maps every MIME section ("" for the whole message, "1", "1.2", ...) to the byte
offsets of its header and body, so BODY[1], BODY[1.MIME] and BODY[TEXT] are byte slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from encimap.mimeinfo.addresses import Address, address_list, parse_addresses, search_text
from encimap.mimeinfo.bodystructure import MAX_DEPTH, Part, _message
from encimap.mimeinfo.content import parse_content_value
from encimap.mimeinfo.dates import parse_date
from encimap.mimeinfo.envelope import envelope
from encimap.mimeinfo.headers import Headers, parse_headers, split_header
from encimap.mimeinfo.layout import multipart_spans
from encimap.mimeinfo.strings import human_string, literal, nstring, wire

__all__ = [
    "MAX_DEPTH",
    "SEARCH_HEADERS",
    "Address",
    "Headers",
    "MessageInfo",
    "Part",
    "address_list",
    "describe",
    "envelope",
    "human_string",
    "literal",
    "nstring",
    "parse_addresses",
    "parse_content_value",
    "parse_headers",
    "split_header",
    "wire",
]


@dataclass(frozen=True)
class MessageInfo:
    envelope: str
    bodystructure: str
    body: str  # the non-extensible BODY form
    parts: list[Part]
    # The Date field's day and time as written, zone dropped (stored as if UTC): RFC 3501
    # 6.4.4 SENTBEFORE/SENTON/SENTSINCE disregard time and timezone.
    sent_date: datetime | None
    # lower-case header name -> what SEARCH matches (only fields the message has)
    search: dict[str, str]


SEARCH_HEADERS = ("from", "to", "cc", "bcc", "subject")


def describe(data: bytes) -> MessageInfo:
    """Everything FETCH and SEARCH need from a message, computed once when it is stored."""
    parts: list[Part] = []
    spans = multipart_spans(data)
    headers, body_start, extended, basic = _message(data, 0, len(data), "", parts, 0, spans)
    parts.insert(0, Part("", 0, body_start, len(data)))
    return MessageInfo(
        envelope=envelope(headers),
        bodystructure=extended,
        body=basic,
        parts=parts,
        sent_date=_as_written(parse_date(headers.first("date"))),
        search=_search_fields(headers),
    )


def _as_written(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def _search_fields(headers: Headers) -> dict[str, str]:
    """SUBJECT as written; the address fields parsed (every field of the name, as one list).
    A field the message lacks is absent, so `HEADER CC ""` does not match it."""
    found = {}
    for name in SEARCH_HEADERS:
        values = headers.all(name)
        if not values:
            continue
        if name == "subject":
            found[name] = " ".join(values)
        else:
            found[name] = search_text(parse_addresses(", ".join(values)))
    return found
