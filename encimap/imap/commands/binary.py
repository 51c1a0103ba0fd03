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
import re
from typing import Any

from encimap.imap.commands.fetch import RENDERERS, is_message, literal, partial
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
    content = decoded(row, item.section)
    # literal8 when the part holds a NUL (RFC 3516 4.2 requires it), for any slice of it,
    # as Dovecot decides
    return literal(item.label().encode(), partial(item, content), binary=b"\x00" in content)


def _binary_size(item: FetchItem, row: dict[str, Any]) -> tuple[bytes, None]:
    assert item.section is not None
    return b"%b %d" % (item.label().encode(), len(decoded(row, item.section))), None


RENDERERS["BINARY"] = _binary
RENDERERS["BINARY.SIZE"] = _binary_size


def decoded(row: dict[str, Any], section: Section) -> bytes:
    """The section of the stored message with every leaf part in it decoded: a leaf part's
    body, or a message or multipart with its leaves' bodies decoded and their headers
    saying `binary`."""
    body: bytes = row["body_encrypted"]
    parts = {entry[0]: entry[1:] for entry in row["mime_parts"]}
    key = ".".join(map(str, section.part))
    if key not in parts:
        return b""
    if key and _is_leaf(parts, key):
        header_start, body_start, end = parts[key][:3]
        return decode(_encoding(body, header_start, body_start), body[body_start:end])
    start, end = (0, len(body)) if not key else parts[key][1:3]
    prefix = f"{key}." if key else ""
    pieces = []
    position = start
    leaves = sorted(
        (parts[name][:3] for name in parts if name.startswith(prefix) and _is_leaf(parts, name)),
    )
    for header_start, body_start, part_end in leaves:
        if header_start < position:  # a part that begins before the section: not inside it
            continue
        encoding = _encoding(body, header_start, body_start)
        if encoding in _IDENTITY:
            continue
        pieces.append(body[position:header_start])
        pieces.append(_CTE_FIELD.sub(_binary_field, body[header_start:body_start], count=1))
        pieces.append(decode(encoding, body[body_start:part_end]))
        position = part_end
    pieces.append(body[position:end])
    return b"".join(pieces)


def _binary_field(match: re.Match[bytes]) -> bytes:
    ending = b"\r\n" if match[0].endswith(b"\r\n") else b"\n"
    return b"Content-Transfer-Encoding: binary" + ending


def _is_leaf(parts: dict[str, list[int]], key: str) -> bool:
    return not is_message(parts, key) and f"{key}.1" not in parts


def _encoding(body: bytes, header_start: int, body_start: int) -> str:
    value = parse_headers(body, header_start, body_start).first("content-transfer-encoding")
    match = _CTE_TOKEN.match(value or "")
    return (match[1] if match else "").lower() or "7bit"


def decode(encoding: str, data: bytes) -> bytes:
    """`data` with Content-Transfer-Encoding `encoding` undone (RFC 2045 6)."""
    if encoding in _IDENTITY:
        return data
    if encoding == "base64":
        # lenient, as mail readers are: what is not in the alphabet is skipped, padding
        # added where it is missing, a dangling sixth of a byte dropped
        text = _BASE64_NOISE.sub(b"", data.split(b"=", 1)[0])
        if len(text) % 4 == 1:
            text = text[:-1]
        return binascii.a2b_base64(text + b"=" * (-len(text) % 4))
    if encoding == "quoted-printable":
        return _quoted_printable(data)
    raise no(f"[UNKNOWN-CTE] Unknown Content-Transfer-Encoding {encoding[:40]}")


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
