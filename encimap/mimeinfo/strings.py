"""IMAP string output for ENVELOPE and BODYSTRUCTURE: quoted strings, literals and display
strings, as Dovecot 2.3 renders them."""

from __future__ import annotations

import re

_QUOTED_MAX_ESCAPES = 4

# Header bytes that are not UTF-8 (raw Latin-1 names, say) are passed through as they are,
# as Dovecot does. The stored strings are text, so each such byte 0x80-0xFF is held as the
# private-use character U+F700 + byte and turned back into the byte when served.
_RAW_BASE = 0xF700
_TO_RAW = {0xDC00 + byte: _RAW_BASE + byte for byte in range(0x80, 0x100)}
_RAW_UTF8 = re.compile(b"\xef\x9e[\x80-\xbf]|\xef\x9f[\x80-\xbf]")


def decode_raw(data: bytes) -> str:
    """Header bytes as text: UTF-8, other bytes kept as raw-byte characters (see wire)."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape").translate(_TO_RAW)


def wire(text: str) -> bytes:
    """The bytes a stored string is served as (raw-byte characters back to their bytes)."""
    data = text.encode()
    if b"\xef\x9e" not in data and b"\xef\x9f" not in data:
        return data
    return _RAW_UTF8.sub(
        lambda m: bytes([m[0][2] - 0x80 + (0xC0 if m[0][1] == 0x9F else 0x80)]), data
    )


# Fast paths: values made only of these characters come out as they are, in quotes; a regex
# match is one C scan where the general code below loops over every character in Python.
_QUOTABLE_AS_IS = re.compile(r'[^"\\\r\n\x80-\U0010ffff]*').fullmatch
# A display string is as-is when nothing in it would change: no character outside printable
# ASCII-with-space, no quote or backslash, no blank at either end or two in a row. Searched
# for, not matched word by word (a repeated group costs the regex engine memory per word).
_HUMAN_CHANGES = re.compile(r'[\t\r\n"\\\x00\x80-\U0010ffff]|  |\A | \Z').search


def _human_as_is(value: str) -> bool:
    return _HUMAN_CHANGES(value) is None


def nstring(value: str | None) -> str:
    """An IMAP string: quoted when it can be, a literal for 8-bit, CR/LF or many escapes."""
    if value is None:
        return "NIL"
    if _QUOTABLE_AS_IS(value):
        return f'"{value}"'
    return _quoted_or_literal(value)


def _quoted_or_literal(value: str) -> str:
    escapes = 0
    for char in value:
        if char in '"\\':
            escapes += 1
            if escapes > _QUOTED_MAX_ESCAPES:
                return literal(value)
        elif char in "\r\n" or ord(char) >= 0x80:
            return literal(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(value: str) -> str:
    return f"{{{len(wire(value))}}}\r\n{value}"


def human_string(value: str, *, folded: bool = False) -> str:
    """A display string (Subject, address names): runs of blanks, CR and LF made one space,
    trimmed; quoted as it is when nothing needed changing, a literal otherwise. `folded`: the
    value was unfolded from several lines, which counts as a change (Dovecot)."""
    if not folded and _human_as_is(value):
        return f'"{value}"'
    return _cleaned_human_string(value, folded=folded)


def _cleaned_human_string(value: str, *, folded: bool = False) -> str:
    cleaned = re.sub(r"[ \t\r\n]+", " ", value).strip(" ")
    cleaned = cleaned.replace("\0", "\x80")
    if not folded and cleaned == value and not any(c in '"\\' or ord(c) >= 0x80 for c in value):
        return f'"{value}"'
    if not cleaned:
        return '""'
    return literal(cleaned)
