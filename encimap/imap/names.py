"""Mailbox names a client may create: modified UTF-7 (RFC 3501 5.1.3), within the configured
length and hierarchy depth. Pure functions; the commands turn `InvalidName` into NO.

Without UTF8=ACCEPT (RFC 6855, not offered) a mailbox name on the wire is 7-bit: printable
US-ASCII stands for itself, "&-" for "&", and "&...-" holds UTF-16 in modified base64
("," for "/", no padding). A name must be the one canonical encoding of its text, so that
two spellings never name two folders that display alike.
"""

from __future__ import annotations

import binascii

from encimap.store.mailboxes import DELIMITER


class InvalidName(Exception):
    """A name that cannot be created; `limit` tells a configured limit from bad syntax."""

    def __init__(self, text: str, *, limit: bool = False) -> None:
        super().__init__(text)
        self.limit = limit


_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def decode(name: str) -> str:
    """The text a modified UTF-7 name stands for; ValueError if it is not valid."""
    raw = name.encode("ascii")  # UnicodeEncodeError is a ValueError
    out: list[str] = []
    index = 0
    while index < len(raw):
        byte = raw[index]
        if not 0x20 <= byte <= 0x7E:
            raise ValueError("control character")
        if byte != 0x26:  # "&"
            out.append(chr(byte))
            index += 1
            continue
        end = raw.find(b"-", index + 1)
        if end < 0:
            raise ValueError("unterminated &-sequence")
        chunk = raw[index + 1 : end]
        index = end + 1
        if not chunk:
            out.append("&")
            continue
        if any(b not in _BASE64 for b in chunk):
            raise ValueError("invalid character in a &-sequence")
        bits = len(chunk) * 6
        if bits % 16 >= 6:  # more than the padding left over
            raise ValueError("truncated &-sequence")
        padded = chunk.replace(b",", b"/") + b"=" * (-len(chunk) % 4)
        data = binascii.a2b_base64(padded, strict_mode=True)
        if len(data) % 2:
            raise ValueError("truncated &-sequence")
        text = data.decode("utf-16-be")  # unpaired surrogates raise UnicodeDecodeError
        if any(0x20 <= ord(c) <= 0x7E for c in text):
            raise ValueError("printable ASCII inside a &-sequence")
        out.append(text)
    return "".join(out)


def encode(text: str) -> str:
    """The canonical modified UTF-7 form of `text`."""
    out: list[str] = []
    pending: list[str] = []

    def shift() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append(
                "&"
                + binascii.b2a_base64(data, newline=False).decode().rstrip("=").replace("/", ",")
                + "-"
            )
            pending.clear()

    for char in text:
        if 0x20 <= ord(char) <= 0x7E:
            shift()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    shift()
    return "".join(out)


def check_new(name: str, *, max_length: int, max_depth: int) -> None:
    """Raise `InvalidName` unless `name` may be created (or be the target of a RENAME)."""
    try:
        text = decode(name)
    except ValueError:
        raise InvalidName("Mailbox name is not valid modified UTF-7 (RFC 3501 5.1.3)") from None
    if encode(text) != name:
        raise InvalidName("Mailbox name is not in canonical modified UTF-7 (RFC 3501 5.1.3)")
    check_size(name, max_length=max_length, max_depth=max_depth)


def check_size(name: str, *, max_length: int, max_depth: int) -> None:
    if max_length and len(name) > max_length:
        raise InvalidName(f"Mailbox name longer than {max_length} bytes", limit=True)
    if max_depth and name.count(DELIMITER) + 1 > max_depth:
        raise InvalidName(f"Mailbox hierarchy deeper than {max_depth} levels", limit=True)
