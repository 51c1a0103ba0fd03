"""BINARY (RFC 3516): `FETCH BINARY[part]<partial>`, `BINARY.PEEK`, `BINARY.SIZE[part]`, the
stored parts with their Content-Transfer-Encoding undone. (APPEND's literal8 `~{n}` is in the
parser; what it carries is encrypted like any APPEND.)

The stored message is what the server has: the encrypted envelope. `BINARY[1]` of an S/MIME
message is the DER of its CMS structure (what `openssl cms -inform DER` reads), `BINARY[]` the
whole message with that part decoded and its header saying `Content-Transfer-Encoding:
binary`, as Dovecot serves it. A part the message does not have is empty (Dovecot too); an
encoding other than 7bit, 8bit, binary, base64 and quoted-printable answers
`NO [UNKNOWN-CTE]`.
"""

from __future__ import annotations

import binascii
import contextlib
import re
from dataclasses import dataclass
from typing import Any

from encimap.imap.commands.fetch import (
    RENDERERS,
    Renderer,
    is_message,
    literal,
    part_key,
    partial,
)
from encimap.imap.parser import FetchItem, Section
from encimap.imap.session import no
from encimap.mimeinfo.headers import parse_headers

_IDENTITY = frozenset({"7bit", "8bit", "binary"})
_CTE_FIELD = re.compile(rb"(?im)^content-transfer-encoding[ \t]*:[^\n]*\n(?:[ \t][^\n]*\n)*")
_CTE_TOKEN = re.compile(r"\s*([^\s();]*)")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_BASE64_NOISE = re.compile(rb"[^A-Za-z0-9+/]")


def _binary(item: FetchItem, row: dict[str, Any]) -> tuple[bytes, bytes]:
    assert item.section is not None
    content, binary = decoded(row, item.section)
    return literal(item.label().encode(), partial(item, content), binary=binary)


def _binary_size(item: FetchItem, row: dict[str, Any]) -> tuple[bytes, None]:
    assert item.section is not None
    return b"%b %d" % (item.label().encode(), len(decoded(row, item.section)[0])), None


def _check(item: FetchItem, row: dict[str, Any]) -> None:
    assert item.section is not None
    _plan(row, item.section)


RENDERERS["BINARY"] = Renderer(_binary, _check)
RENDERERS["BINARY.SIZE"] = Renderer(_binary_size, _check)


@dataclass(frozen=True)
class _Plan:
    """Where a section is in the stored message, and its leaf parts that need decoding."""

    start: int
    end: int
    leaves: list[tuple[int, int, int, str]]  # header start, body start, end, encoding
    leaf: bool  # the section is one leaf part: its decoded body only


def _plan(row: dict[str, Any], section: Section) -> _Plan | None:
    """None for a part the message does not have; NO [UNKNOWN-CTE] for an encoding that
    cannot be undone."""
    body: bytes = row["body_encrypted"]
    parts = {entry[0]: entry[1:] for entry in row["mime_parts"]}
    key = part_key(parts, section)
    if key not in parts:
        return None
    if key and _is_leaf(parts, key):
        header_start, body_start, end = parts[key][:3]
        encoding = _checked(_encoding(body, header_start, body_start))
        return _Plan(body_start, end, [(header_start, body_start, end, encoding)], True)
    start, end = (0, len(body)) if not key else parts[key][1:3]
    prefix = f"{key}." if key else ""
    leaves = []
    position = start
    for header_start, body_start, part_end in sorted(
        parts[name][:3] for name in parts if name.startswith(prefix) and _is_leaf(parts, name)
    ):
        if header_start < position:  # a part that begins before the section: not inside it
            continue
        encoding = _checked(_encoding(body, header_start, body_start))
        if encoding not in _IDENTITY:
            leaves.append((header_start, body_start, part_end, encoding))
            position = part_end
    return _Plan(start, end, leaves, False)


def decoded(row: dict[str, Any], section: Section) -> tuple[bytes, bool]:
    """The section of the stored message with every leaf part in it decoded: a leaf part's
    body, or a message or multipart with its leaves' bodies decoded and their headers
    saying `binary`; and whether what was decoded holds NUL or 8-bit bytes (then it goes
    out as a literal8, whatever slice is asked for: RFC 3516 4.2 requires it for NUL,
    Dovecot does it for both)."""
    plan = _plan(row, section)
    if plan is None:
        return b"", False
    body: bytes = row["body_encrypted"]
    if plan.leaf:
        _header_start, body_start, end, encoding = plan.leaves[0]
        content = decode(encoding, body[body_start:end])
        return content, encoding not in _IDENTITY and _eight_bit(content)
    pieces = []
    binary = False
    position = plan.start
    for header_start, body_start, part_end, encoding in plan.leaves:
        pieces.append(body[position:header_start])
        pieces.append(_binary_header(body[header_start:body_start]))
        content = decode(encoding, body[body_start:part_end])
        binary = binary or _eight_bit(content)
        pieces.append(content)
        position = part_end
    pieces.append(body[position : plan.end])
    return b"".join(pieces), binary


def _eight_bit(data: bytes) -> bool:
    return not data.isascii() or b"\x00" in data


def _binary_header(header: bytes) -> bytes:
    """A decoded part's header: its Content-Transfer-Encoding fields dropped and
    `Content-Transfer-Encoding: binary` added as the last field, as Dovecot writes it."""
    ending = b"\r\n" if header.endswith(b"\r\n") else b"\n"
    kept = _CTE_FIELD.sub(b"", header)
    if kept == ending or kept.endswith(ending * 2):
        kept = kept[: -len(ending)]  # the empty line that ends the header
    return kept + b"Content-Transfer-Encoding: binary" + ending + ending


def _is_leaf(parts: dict[str, list[int]], key: str) -> bool:
    return not is_message(parts, key) and f"{key}.1" not in parts


def _encoding(body: bytes, header_start: int, body_start: int) -> str:
    value = parse_headers(body, header_start, body_start).first("content-transfer-encoding")
    match = _CTE_TOKEN.match(value or "")
    return (match[1] if match else "").lower() or "7bit"


def _checked(encoding: str) -> str:
    if encoding in _IDENTITY or encoding in ("base64", "quoted-printable"):
        return encoding
    raise no(f"[UNKNOWN-CTE] Unknown Content-Transfer-Encoding {encoding[:40]}")


def decode(encoding: str, data: bytes) -> bytes:
    """`data` with Content-Transfer-Encoding `encoding` undone (RFC 2045 6)."""
    if _checked(encoding) in _IDENTITY:
        return data
    if encoding == "base64":
        # lenient, as mail readers are: what is not in the alphabet is skipped (line ends
        # too, without a copy), padding added where it is missing, a dangling sixth of a
        # byte dropped
        with contextlib.suppress(binascii.Error):
            return binascii.a2b_base64(data)
        text = _BASE64_NOISE.sub(b"", data.split(b"=", 1)[0])
        if len(text) % 4 == 1:
            text = text[:-1]
        return binascii.a2b_base64(text + b"=" * (-len(text) % 4))
    return _quoted_printable(data)


def _quoted_printable(data: bytes) -> bytes:
    """RFC 2045 6.7: trailing white space dropped, `=` at a line end joins the lines, `=XX`
    is the byte XX; other `=` are kept (a robust decoder's choice)."""
    out = []
    for line in data.splitlines(keepends=True):
        text = line.rstrip(b"\r\n")
        ending = line[len(text) :]
        text = text.rstrip(b" \t")
        if text.endswith(b"="):
            text, ending = text[:-1], b""
        out.append(_QP_ESCAPE.sub(lambda match: bytes([int(match[1], 16)]), text) + ending)
    return b"".join(out)
