"""IMAP response serialization: pure functions from values to bytes (RFC 3501 9)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

_ASTRING_SAFE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&'+,-./:;<=>?@^_`|~]["
)


def quoted_or_literal(value: str) -> str:
    if value and all(c in _ASTRING_SAFE for c in value):
        return f'"{value}"'
    if all(0x20 <= ord(c) < 0x7F for c in value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{{{len(value.encode())}}}\r\n{value}"


def astring(value: str) -> str:
    """An atom when it is one (and not NIL), else a quoted string or a literal."""
    if value and value.upper() != "NIL" and all(c in _ASTRING_SAFE for c in value):
        return value
    return quoted_or_literal(value)


def flag_list(flags: Iterable[str]) -> str:
    return "(" + " ".join(flags) + ")"


def internal_date(value: datetime) -> str:
    return '"' + value.strftime("%d-%b-%Y %H:%M:%S %z") + '"'


def ordered_sequence_set(numbers: list[int]) -> str:
    """Numbers in the given order as a set of ranges: 7:8,2 (COPYUID pairs the source and
    target sets element by element, so their order must survive)."""
    ranges: list[str] = []
    index = 0
    while index < len(numbers):
        start = end = numbers[index]
        while index + 1 < len(numbers) and numbers[index + 1] == end + 1:
            index += 1
            end = numbers[index]
        ranges.append(str(start) if start == end else f"{start}:{end}")
        index += 1
    return ",".join(ranges)


def literal_bytes(data: bytes) -> bytes:
    return b"{%d}\r\n%b" % (len(data), data)
