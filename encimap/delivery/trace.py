"""What the intake adds to a message before encrypting it: Return-Path, Received, Message-ID.

Pure functions on bytes; the original message is never re-serialised.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from encimap.mimeinfo import split_header

_FIELD_START = re.compile(rb"[!-9;-~]+[ \t]*:")  # RFC 5322 2.2 field name, then a colon
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:[ \t]*((?:.*)(?:\r?\n[ \t].*)*)")
_UNSAFE = re.compile(r"[^\x21-\x7e]")
# A msg-id cannot be folded (RFC 5322 3.6.4), so a real one fits on a 998-byte line. A longer
# value is not recorded: it could not be indexed (PostgreSQL's B-tree rows end near 2.7 KB)
# and would fail every delivery of the message with a 451.
MAX_MESSAGE_ID = 998
# The separator line of an mbox file (RFC 4155), which mailbox-import tools leave in front of
# the message: not a header field, so it would otherwise end the header before it starts.
_MBOX_FROM_LINE = re.compile(rb"From [^\r\n]*\r?\n")


@dataclass(frozen=True)
class Prepared:
    """The message to encrypt and the identity used to recognise a redelivery."""

    data: bytes
    message_id: str
    body_sha256: str


@dataclass(frozen=True)
class Trace:
    sender: str
    helo: str
    peer_ip: str
    hostname: str
    protocol: str  # "LMTP" or "ESMTP"
    queue_id: str
    received_at: datetime


def header_block(raw: bytes) -> bytes:
    """The header section: up to the first empty line; empty if `raw` starts with no field."""
    if not _FIELD_START.match(raw):
        return b""
    return raw[: split_header(raw, 0, len(raw))[0]]


def message_id(raw: bytes) -> str | None:
    match = _MESSAGE_ID.search(header_block(raw))
    if match is None:
        return None
    value = b"".join(match[1].split()).decode("utf-8", "replace")
    return value or None


def prepare(raw: bytes, trace: Trace) -> Prepared:
    """Add the trace fields (and a Message-ID if there is none) in front of `raw`, without
    the mbox `From ` line an import tool may have left in front of it.

    The body hash is over the message as received, so a redelivery of the same bytes has the
    same hash, and a generated Message-ID is derived from it: a retried message without one
    (or with one too long to be real) gets the same ID again, which keeps duplicate detection
    working for it too.
    """
    digest = hashlib.sha256(raw).hexdigest()
    mbox_line = _MBOX_FROM_LINE.match(raw)
    if mbox_line is not None:
        raw = raw[mbox_line.end() :]
    found = message_id(raw)
    generated = f"<{digest[:32]}@{trace.hostname}>"
    added = [
        f"Return-Path: <{_clean(trace.sender)}>\r\n",
        (
            f"Received: from {_clean(trace.helo) or 'unknown'} ([{trace.peer_ip}])\r\n"
            f"\tby {trace.hostname} (encimap) with {trace.protocol} id {trace.queue_id};\r\n"
            f"\t{format_datetime(trace.received_at)}\r\n"
        ),
    ]
    if found is None:
        found = generated
        added.append(f"Message-ID: {found}\r\n")
    elif len(found) > MAX_MESSAGE_ID:
        found = generated  # recorded instead; the message keeps its own field
    if not header_block(raw) and not raw.startswith((b"\r\n", b"\n")):
        # No header section at all: the added fields must not run into the body.
        raw = b"\r\n" + raw
    return Prepared("".join(added).encode("utf-8") + raw, found, digest)


def _clean(value: str) -> str:
    """Envelope values go into a header: no controls, spaces or non-ASCII (RFC 5322 2.2)."""
    return _UNSAFE.sub("?", value)
