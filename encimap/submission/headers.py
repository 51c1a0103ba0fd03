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
from email.parser import BytesHeaderParser

AUTH_HEADER = "X-Encimap-Auth"
_AUTH_HEADER_PREFIX = AUTH_HEADER.lower().encode() + b":"
_UNSAFE = re.compile(r"[^A-Za-z0-9.\-\[\]:_]")


def split_header(message: bytes) -> tuple[bytes, bytes]:
    """(header block with its final CRLF, the rest from the blank line on)."""
    if message.startswith(b"\r\n"):
        return b"", message
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message, b""
    return message[: end + 2], message[end + 2 :]


def from_addresses(message: bytes) -> list[str]:
    """The addresses of every From: header (empty when there is none)."""
    header, _ = split_header(message)
    parsed = BytesHeaderParser().parsebytes(header)
    values = [str(value) for value in parsed.get_all("From", [])]
    return [address for _name, address in email.utils.getaddresses(values) if address]


def strip_auth_header(message: bytes) -> bytes:
    """Drop any X-Encimap-Auth a client wrote itself, so the trace cannot be forged."""
    header, rest = split_header(message)
    if _AUTH_HEADER_PREFIX not in header.lower():
        return message
    kept: list[bytes] = []
    dropping = False
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith(_AUTH_HEADER_PREFIX)
        if not dropping:
            kept.append(line)
    return b"".join(kept) + rest


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
