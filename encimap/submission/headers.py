"""Pure functions on the submitted message's header block: the From: addresses and the trace
headers the submission adds (`Received:` per RFC 5321 section 4.4 with `ESMTPSA` per RFC 3848,
and `X-Encimap-Auth:` naming who submitted it).

The trace names the principal kind and ids, never the username or the password: the ids are
what an operator needs to find the account (the `submission.message` log line with the same
submission id has the username), and a login name does not leak to every recipient.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from email import policy

AUTH_HEADER = "X-Encimap-Auth"
_UNSAFE = re.compile(r"[^A-Za-z0-9.\-\[\]:_]")
# RFC 5322 3.6.8: a field name is printable US-ASCII except the colon, nothing before the colon.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_FORBIDDEN_IN_LINE = re.compile(rb"[\r\n\x00]")
# From: values longer than this are refused rather than handed to the email package's parser
# (its cost grows faster than the input on some forms).
MAX_FROM_VALUE = 998  # RFC 5322 2.1.1: the longest line


class MalformedHeader(ValueError):
    """The header block cannot be read one way only; the text says where (for the reply)."""


@dataclass(frozen=True)
class Field:
    name: str  # as written
    raw: bytes  # every line of the field, continuation lines and CRLFs included

    @property
    def value(self) -> str:
        """The unfolded value (RFC 5322 2.2.3), undecoded 8-bit kept as surrogate escapes."""
        text = self.raw[len(self.name) + 1 :].decode("utf-8", "surrogateescape")
        return text.replace("\r\n", "").strip()


def split_header(message: bytes) -> tuple[bytes, bytes]:
    """(header block with its final CRLF, the rest from the blank line on)."""
    if message.startswith(b"\r\n"):
        return b"", message
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message, b""
    return message[: end + 2], message[end + 2 :]


def scan(message: bytes) -> tuple[list[Field], bytes]:
    """(the header fields, the rest of the message from the blank line on).

    The one reading of the header block that every check here uses. Refused, as readers
    disagree on them: a line that is neither a field nor a continuation (no colon, or
    whitespace or other non-field-name text before the colon: RFC 5322 4.5's obsolete
    `name WSP ":"`), a continuation line before the first field, and a bare CR, bare LF or NUL
    (one reader ends a line there, another does not).
    """
    header, rest = split_header(message)
    lines = header.split(b"\r\n")
    if lines[-1]:  # a header block without its final CRLF: the message ends inside it
        raise MalformedHeader("header block does not end with CRLF")
    fields: list[Field] = []
    name = ""
    raw: list[bytes] = []
    for number, line in enumerate(lines[:-1], 1):
        if _FORBIDDEN_IN_LINE.search(line):
            raise MalformedHeader(f"bare CR, LF or NUL in header line {number}")
        if line[:1] in (b" ", b"\t"):
            if not raw:
                raise MalformedHeader("continuation line before the first header field")
            raw.append(line + b"\r\n")
            continue
        colon = line.find(b":")
        if colon <= 0 or _FIELD_NAME.fullmatch(line, 0, colon) is None:
            raise MalformedHeader(f"header line {number} is not a header field")
        if raw:
            fields.append(Field(name, b"".join(raw)))
        name, raw = line[:colon].decode("ascii"), [line + b"\r\n"]
    if raw:
        fields.append(Field(name, b"".join(raw)))
    return fields, rest


def join(fields: list[Field], rest: bytes) -> bytes:
    """The message from scanned fields (`join(*scan(m)) == m`)."""
    return b"".join(field.raw for field in fields) + rest


def from_addresses(fields: list[Field]) -> list[str] | None:
    """The addresses of the message's From: field; None unless there is exactly one (RFC 5322
    3.6) that reads without a defect the email package reports, within MAX_FROM_VALUE
    characters (that parser's cost grows faster than its input, and it recurses on comments)."""
    found = [field for field in fields if field.name.lower() == "from"]
    if len(found) != 1:
        return None
    value = found[0].value
    if not value or len(value) > MAX_FROM_VALUE:
        return None
    try:
        parsed = policy.default.header_factory("From", value)
        addresses = [address.addr_spec for address in parsed.addresses]
    except Exception:  # on malformed lists that parser raises IndexError, TypeError,
        # AttributeError (`g:;x`), UnboundLocalError, RecursionError...: not readable
        return None
    if parsed.defects or not addresses:
        return None
    return addresses


def without_auth_header(fields: list[Field]) -> list[Field]:
    """Drop any X-Encimap-Auth a client wrote itself, so the trace cannot be forged."""
    return [field for field in fields if field.name.lower() != AUTH_HEADER.lower()]


@dataclass(frozen=True)
class Trace:
    submission_id: str
    hostname: str
    helo: str
    client_ip: str
    tls: str  # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384"
    kind: str
    user_id: str
    principal_id: str
    credential_id: str


def _clean(text: str) -> str:
    """A client-chosen word (the EHLO name) made safe for a header comment."""
    return _UNSAFE.sub("?", text)[:255] or "unknown"


def trace_headers(trace: Trace) -> bytes:
    date = email.utils.formatdate(localtime=False, usegmt=False)
    received = (
        f"Received: from {_clean(trace.helo)} ([{trace.client_ip}])\r\n"
        f"\tby {trace.hostname} (encimap) with ESMTPSA id {trace.submission_id}\r\n"
        f"\t({trace.tls}; authenticated as {trace.kind});\r\n"
        f"\t{date}\r\n"
    )
    auth = (
        f"{AUTH_HEADER}: kind={trace.kind}; user-id={trace.user_id};\r\n"
        f"\tprincipal-id={trace.principal_id}; credential-id={trace.credential_id};\r\n"
        f"\tsubmission-id={trace.submission_id}\r\n"
    )
    return (received + auth).encode("ascii", "replace")
