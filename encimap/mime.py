"""MIME on bytes, shared by the S/MIME and OpenPGP engines: header/body split, CRLF
canonicalisation, recognising encrypted mail, RFC 9788 header protection, base64 lines.

The email package is deliberately not used on bodies: re-serialising alters bytes and is slow
for large messages. Bodies are only ever canonicalised to CRLF line endings (RFC 8551 section
3.1.1), except parts with Content-Transfer-Encoding binary, whose bytes are left untouched.
"""

from __future__ import annotations

import binascii
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from encimap.mimeinfo import MAX_DEPTH, split_header

CRLF = b"\r\n"
CHUNK_SIZE = 1 << 20
BASE64_LINE_BYTES = 57  # encodes to the 76 characters RFC 2045 allows per line
SUBJECT_PLACEHOLDER = b"[...]"  # RFC 9788 section 5.2.1

# Outer header fields kept in clear: what the server and mail clients need to list, thread and
# trace mail. Everything else (Bcc above all) exists only inside the encrypted part.
CLEAR_FIELDS = frozenset(
    {
        b"date",
        b"from",
        b"to",
        b"cc",
        b"message-id",
        b"in-reply-to",
        b"references",
        b"return-path",
        b"received",
    }
)
# Trace fields are added in transit, not by the author, so they get no HP-Outer copy.
TRACE_FIELDS = frozenset({b"return-path", b"received"})
ENCRYPTED_SMIME_TYPES = frozenset({"enveloped-data", "authenveloped-data"})
PKCS7_MIME_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
# Inline OpenPGP (RFC 4880 section 6.2 armour in a plain body), stored as it is like PGP/MIME.
INLINE_PGP_TYPES = frozenset({"text/plain", "application/pgp-encrypted", "application/pgp"})
PGP_MESSAGE_ARMOR = b"-----BEGIN PGP MESSAGE-----"
# DER of the ContentInfo contentType OIDs, to recognise an encrypted body without smime-type.
ENVELOPED_OIDS_DER = (
    bytes.fromhex("06092a864886f70d010703"),  # id-envelopedData
    bytes.fromhex("060b2a864886f70d0109100117"),  # id-ct-authEnvelopedData
)

# A quoted value is matched as runs between escapes ("unrolled"): an alternation repeated per
# character would make the regex engine keep state per character of a long value.
_PARAMETER = re.compile(
    rb';\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*("[^"\\]*(?:\\.[^"\\]*)*"|[^;\s]+)'
)
_HP_PARAMETER = re.compile(rb"(?i);\s*hp\s*=")
# A part header announcing a binary body; it always follows a line break.
_BINARY_PART = re.compile(rb"(?i)\ncontent-transfer-encoding[ \t]*:[ \t]*binary")


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field: lower-case name and the field as received, folding kept, CRLF ends."""

    name: bytes
    raw: bytes

    @property
    def value(self) -> bytes:
        """The unfolded field body without surrounding white space (RFC 5322 section 2.2.3)."""
        _, _, body = self.raw.partition(b":")
        return body.replace(CRLF, b"").strip()


# RFC 2045 section 5.2: what a part without Content-Type is.
DEFAULT_CONTENT_TYPE = HeaderField(
    b"content-type", b"Content-Type: text/plain; charset=us-ascii\r\n"
)


@dataclass(frozen=True, slots=True)
class Message:
    """A message split without copying its body: header fields and where the body starts."""

    raw: bytes
    fields: list[HeaderField]
    body_start: int

    def first(self, name: bytes) -> HeaderField | None:
        """The first field called `name` (lower case), if any."""
        return next((field for field in self.fields if field.name == name), None)

    @property
    def content_type(self) -> tuple[str, dict[str, str]]:
        field = self.first(b"content-type")
        return parse_content_type(field.value if field else b"text/plain")

    @property
    def transfer_encoding(self) -> str:
        field = self.first(b"content-transfer-encoding")
        return field.value.decode("latin-1").lower() if field else "7bit"


@dataclass(frozen=True, slots=True)
class EncryptionResult:
    """What the store keeps for one delivered message, whichever the encryption format.

    `message` is the stored RFC 5322 message (outer headers + encrypted body, CRLF line
    endings), or the input unchanged when `already_encrypted`. `subject_encrypted` is the
    original Subject value (unfolded, still RFC 2047-encoded if it was) encrypted on its own to
    the same keys, base64 (S/MIME: DER CMS; OpenPGP: a binary OpenPGP message); None without a
    Subject or when the message was already encrypted. `algorithm` names the format, content
    and key management, such as "aes256-cbc/rsa" or "openpgp/x25519"; None when already
    encrypted. `recipient_fingerprints` are of the certificates or OpenPGP keys used.
    """

    message: bytes
    already_encrypted: bool = False
    subject_encrypted: str | None = None
    algorithm: str | None = None
    recipient_fingerprints: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Protected:
    """A message split for encryption with RFC 9788 header protection: the fields shown in
    clear, and the plaintext of the encrypted part (protected header + canonical body)."""

    outer: list[HeaderField]
    plaintext: Content
    subject: HeaderField | None


@dataclass(frozen=True, slots=True)
class Content:
    """Bytes to encrypt, made lazily: `pieces` (iterate once) concatenate to `length` bytes."""

    pieces: Iterable[bytes | memoryview]
    length: int


def parse_message(raw: bytes) -> Message:
    """Split `raw` at the first empty line and parse the header fields before it."""
    header_end, body_start = split_header(raw, 0, len(raw))
    return Message(raw, parse_header_block(raw[:header_end]), body_start)


def parse_header_block(block: bytes) -> list[HeaderField]:
    """Header fields in order, each with its continuation lines and CRLF line endings."""
    fields: list[list[bytes]] = []
    for line in block.split(b"\n"):
        line = line.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif line:
            fields.append([line])
    return [
        HeaderField(lines[0].partition(b":")[0].strip().lower(), CRLF.join(lines) + CRLF)
        for lines in fields
    ]


def parse_content_type(value: bytes) -> tuple[str, dict[str, str]]:
    """(lower-case media type, parameters with lower-case names and unquoted values)."""
    media = value.split(b";", 1)[0].strip().decode("latin-1").lower()
    parameters = {}
    for name, raw in _PARAMETER.findall(value):
        if raw.startswith(b'"'):
            raw = re.sub(rb"\\(.)", rb"\1", raw[1:-1])
        parameters[name.decode("latin-1").lower()] = raw.decode("latin-1")
    return media, parameters


def is_encrypted(message: Message) -> bool:
    """True for S/MIME enveloped or auth-enveloped data, multipart/encrypted (PGP/MIME) and
    inline OpenPGP (a single-part body that begins with an armoured PGP MESSAGE)."""
    media, parameters = message.content_type
    if media == "multipart/encrypted":
        return True
    if media in INLINE_PGP_TYPES:
        start = message.body_start
        return message.raw[start : start + 1024].lstrip().startswith(PGP_MESSAGE_ARMOR)
    if media not in PKCS7_MIME_TYPES:
        return False
    smime_type = parameters.get("smime-type", "").lower()
    if smime_type:
        return smime_type in ENCRYPTED_SMIME_TYPES
    start = message.body_start
    return _starts_with_enveloped_content(message.raw[start : start + 256])


def _starts_with_enveloped_content(head: bytes) -> bool:
    """Old clients omit smime-type: look at the contentType OID of the CMS ContentInfo."""
    text = b"".join(head.split())
    try:
        der = binascii.a2b_base64(text[: len(text) // 4 * 4])
    except binascii.Error:
        der = head
    return any(oid in der[:24] for oid in ENVELOPED_OIDS_DER)


def protect(message: Message, *, hide_subject: bool) -> Protected:
    """The clear outer fields and the plaintext to encrypt, the same for every format."""
    outer = outer_fields(message, hide_subject=hide_subject)
    inner_header = protected_header(message, outer)
    body = canonical_body(message)
    plaintext = Content(
        itertools.chain([inner_header], body.pieces), len(inner_header) + body.length
    )
    return Protected(outer, plaintext, message.first(b"subject"))


def to_crlf(data: bytes) -> bytes:
    """Turn every line feed not preceded by a carriage return into CRLF."""
    return data.replace(CRLF, b"\n").replace(b"\n", CRLF)


def canonical_body(message: Message) -> Content:
    """The body with CRLF line endings, binary parts untouched.

    The common case streams: line endings are counted first, so the length is known without
    building the converted body, and an already canonical body is not copied at all.
    """
    raw, start = message.raw, message.body_start
    binary = message.transfer_encoding == "binary" or _BINARY_PART.search(raw, start)
    if binary:
        pieces = _canonical_entity_body(message)
        return Content(pieces, sum(len(piece) for piece in pieces))
    line_feeds = raw.count(b"\n", start)
    length = len(raw) - start + line_feeds - raw.count(CRLF, start)
    if length == len(raw) - start:
        return Content([memoryview(raw)[start:]], length)
    return Content(_crlf_chunks(raw, start), length)


def _crlf_chunks(raw: bytes, start: int) -> Iterator[bytes]:
    position = start
    while position < len(raw):
        end = min(position + CHUNK_SIZE, len(raw))
        if raw[end - 1] == 0x0D and end < len(raw):
            end += 1  # never cut between CR and LF
        yield to_crlf(raw[position:end])
        position = end


def _canonical_entity_body(
    message: Message, end: int | None = None, depth: int = 0
) -> list[bytes | memoryview]:
    """Walk the MIME tree of a message that has binary parts (rare; not streamed).

    Parts are addressed by offsets into the one message buffer, so no level copies what it
    contains, and entities nested deeper than MAX_DEPTH are left as they are: the work is
    linear in the message size and the recursion bounded, however deep the nesting.
    """
    raw, start = message.raw, message.body_start
    end = len(raw) if end is None else end
    if message.transfer_encoding == "binary" or depth >= MAX_DEPTH:
        return [memoryview(raw)[start:end]]
    media, parameters = message.content_type
    if media.startswith("multipart/") and parameters.get("boundary"):
        boundary = parameters["boundary"].encode("latin-1")
        return _canonical_multipart(raw, start, end, boundary, depth)
    if media in ("message/rfc822", "message/global"):
        return _canonical_entity(raw, start, end, depth + 1)
    return [to_crlf(raw[start:end])]


def _canonical_entity(raw: bytes, start: int, end: int, depth: int) -> list[bytes | memoryview]:
    header_end, body_start = split_header(raw, start, end)
    part = Message(raw, parse_header_block(raw[start:header_end]), body_start)
    header = b"".join(field.raw for field in part.fields) + CRLF
    return [header, *_canonical_entity_body(part, end, depth)]


def _canonical_multipart(
    raw: bytes, start: int, end: int, boundary: bytes, depth: int
) -> list[bytes | memoryview]:
    pieces: list[bytes | memoryview] = []
    position = start
    closed = False
    for match_start, match_end, closing in delimiter_lines(raw, start, end, boundary):
        if position == start or closed:
            pieces.append(to_crlf(raw[position:match_start]))  # preamble
        else:
            pieces.extend(_canonical_entity(raw, position, match_start, depth + 1))
        pieces.append(to_crlf(raw[match_start:match_end]))
        closed = closed or closing
        position = match_end
    pieces.append(to_crlf(raw[position:end]))  # epilogue
    return pieces


def delimiter_lines(
    raw: bytes, start: int, end: int, boundary: bytes
) -> Iterator[tuple[int, int, bool]]:
    r"""The delimiter lines of a multipart body raw[start:end] (RFC 2046 5.1.1): `--boundary`,
    `--` if it is the closing one, blanks, the line break. Each is (start, end, closing), its
    span taking the line break before it (except at `start`) and the one ending it.

    What the regex `(?:\A|\r?\n)--B(--)?[ \t]*(?:\r?\n|\Z)` finds, non-overlapping, but
    found with bytes.find: a regex that starts with an alternation tries every position in
    Python's engine, a hundred times slower on a body of many megabytes."""
    dash = b"--" + boundary
    position = start
    if raw.startswith(dash, start) and start + len(dash) <= end:
        line = _delimiter_end(raw, start + len(dash), end)
        if line is not None:
            yield start, line[0], line[1]
            position = line[0]
    while True:
        line_feed = raw.find(b"\n" + dash, position, end)
        if line_feed < 0:
            return
        match_start = line_feed
        if line_feed > position and raw[line_feed - 1] == 13:
            match_start -= 1  # the CR before it, unless the previous delimiter took it
        line = _delimiter_end(raw, line_feed + 1 + len(dash), end)
        if line is None:
            position = line_feed + 1
            continue
        yield match_start, line[0], line[1]
        position = line[0]


def _delimiter_end(raw: bytes, after: int, end: int) -> tuple[int, bool] | None:
    """Where a delimiter line whose `--boundary` ends at `after` ends, and whether it is the
    closing one; None if the rest of the line is not `--`, blanks and a line break."""
    for closing in (True, False):
        position = after
        if closing:
            if not (raw.startswith(b"--", position) and position + 2 <= end):
                continue
            position += 2
        while position < end and raw[position] in (32, 9):
            position += 1
        if position == end:
            return end, closing
        if raw[position] == 10:
            return position + 1, closing
        if raw[position] == 13 and position + 1 < end and raw[position + 1] == 10:
            return position + 2, closing
    return None


def protected_header(message: Message, outer: list[HeaderField]) -> bytes:
    """Header of the encrypted MIME part: RFC 9788 header protection.

    The original header fields (Bcc included) travel inside, the Content-Type gains
    `hp="cipher"` (RFC 9788) and `protected-headers="v1"` (read by Thunderbird), and one
    HP-Outer field per non-structural outer field records what was sent in clear.
    """
    # The Content-Type with hp="cipher" goes first: a malformed line further down ends the
    # header for strict parsers, and must not hide the protection from them.
    content_type = message.first(b"content-type")
    fields = [_mark_protected(content_type or DEFAULT_CONTENT_TYPE)]
    fields.extend(field.raw for field in message.fields if field is not content_type)
    fields.extend(b"HP-Outer: " + field.raw for field in outer if field.name not in TRACE_FIELDS)
    return b"".join(fields) + CRLF


def _mark_protected(field: HeaderField) -> bytes:
    if _HP_PARAMETER.search(field.raw):
        return field.raw
    return field.raw.removesuffix(CRLF) + b';\r\n hp="cipher"; protected-headers="v1"\r\n'


def outer_fields(message: Message, *, hide_subject: bool) -> list[HeaderField]:
    """Header fields shown in clear, in their original order; Subject `[...]` when hidden."""
    fields = []
    for field in message.fields:
        if field.name in CLEAR_FIELDS:
            fields.append(field)
        elif field.name == b"subject":
            fields.append(
                HeaderField(b"subject", b"Subject: " + SUBJECT_PLACEHOLDER + CRLF)
                if hide_subject
                else field
            )
    return fields


def write_base64(chunks: Iterable[bytes], out: BinaryIO) -> None:
    """Write `chunks` base64-encoded in 76-character lines, each ended by CRLF."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk if carry else chunk
        cut = len(data) - len(data) % BASE64_LINE_BYTES
        _write_base64_lines(memoryview(data)[:cut], out)
        carry = bytes(data[cut:])
    _write_base64_lines(memoryview(carry), out)


_BASE64_LINE = re.compile(rb".{1,76}", re.DOTALL)


def _write_base64_lines(data: memoryview, out: BinaryIO) -> None:
    if not data:
        return
    # One C call to encode, one to cut the lines: about half the time of a call per line.
    lines = _BASE64_LINE.findall(binascii.b2a_base64(data, newline=False))
    out.write(CRLF.join(lines))
    out.write(CRLF)
