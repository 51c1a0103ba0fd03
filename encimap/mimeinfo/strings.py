"""IMAP string output for ENVELOPE and BODYSTRUCTURE: quoted strings, literals and display
strings, as Dovecot 2.3 renders them."""

from __future__ import annotations

import re

_QUOTED_MAX_ESCAPES = 4

# Fast paths: values made only of these characters come out as they are, in quotes; a regex
# match is one C scan where the general code below loops over every character in Python.
_QUOTABLE_AS_IS = re.compile(r'[^"\\\r\n\x80-\U0010ffff]*').fullmatch
_HUMAN_AS_IS = re.compile(
    r'(?:[^ \t\r\n"\\\x00\x80-\U0010ffff]+(?: [^ \t\r\n"\\\x00\x80-\U0010ffff]+)*)?'
).fullmatch


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
    return f"{{{len(value.encode())}}}\r\n{value}"


def human_string(value: str) -> str:
    """A display string (Subject, address names): CR/LF dropped, whitespace runs collapsed,
    trimmed; quoted as it is when nothing needed changing, a literal otherwise."""
    if _HUMAN_AS_IS(value):
        return f'"{value}"'
    return _cleaned_human_string(value)


def _cleaned_human_string(value: str) -> str:
    cleaned = re.sub(r"[ \t]+", " ", value.replace("\r", "").replace("\n", "")).strip(" ")
    cleaned = cleaned.replace("\0", "\x80")
    if cleaned == value and not any(c in '"\\' or ord(c) >= 0x80 for c in value):
        return f'"{value}"'
    if not cleaned:
        return '""'
    return literal(cleaned)
