"""Header blocks: where a header ends and its fields (names lower-cased, values unfolded)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from encimap.mimeinfo.strings import decode_raw, nstring

# The empty line ending a header: searched from its LF, a literal the regex engine can skip
# to (a leading optional CR would make it try every position); a CR before it is added back.
_HEADER_END = re.compile(rb"\n\r?\n")
# A field name at a line start, found from the LF before it (a literal, as for _HEADER_END).
_FIELD = re.compile(rb"\n([^:\s]+)[ \t]*:")
# Inside a field's text: a line start that is not a fold (a line without a colon, which ends
# the field, as in Dovecot, instead of being read as part of its value).
_NOT_CONTINUED = re.compile(rb"\n(?=[^ \t])")
_REPLACEMENT = "\ufffd".encode()  # what a NUL in a header value becomes


@dataclass
class Headers:
    """The header fields of one part, in order, with values unfolded (CR/LF removed)."""

    fields: list[tuple[str, str]]
    # lower-case names whose first field was folded over several lines: Dovecot serves such
    # a Subject as a literal even when the unfolded text would fit in a quoted string
    folded: frozenset[str] = frozenset()
    # lower-case name -> value of its first field: describe() looks up ~24 names per message
    _first: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._first = dict(reversed(self.fields))

    def first(self, name: str) -> str | None:
        return self._first.get(name.lower())

    def nstring(self, name: str) -> str:
        """The first field called `name` as an IMAP nstring, as written except that a bare CR
        or LF in it is served as a blank (as Dovecot serves Date, Message-ID, Content-ID...)."""
        value = self._first.get(name)
        if value is None:
            return "NIL"
        return nstring(value.replace("\r", " ").replace("\n", " "))

    def all(self, name: str) -> list[str]:
        """The values of every field called `name` (lower case), in order."""
        return [value for key, value in self.fields if key == name]


def split_header(data: bytes, start: int, end: int) -> tuple[int, int]:
    """(header end, body start): the body starts after the first empty line."""
    if data.startswith(b"\r\n", start) and start + 2 <= end:
        return start, start + 2
    if data.startswith(b"\n", start) and start + 1 <= end:
        return start, start + 1
    match = _HEADER_END.search(data, start, end)
    if match is None:
        return end, end
    header_end = match.start()
    if header_end > start and data[header_end - 1] == 13:  # CR
        header_end -= 1
    return header_end, match.end()


def parse_headers(data: bytes, start: int, end: int) -> Headers:
    # [text before the first field, name, value, name, value, ...]; the LF put in front makes
    # the first line start like the others.
    pieces = _FIELD.split(b"\n" + data[start:end])
    fields: list[tuple[str, str]] = []
    folded: set[str] = set()
    seen: set[str] = set()
    for index in range(1, len(pieces), 2):
        value = pieces[index + 1]
        invalid = _NOT_CONTINUED.search(value)  # a line that is neither a field nor folded
        if invalid is not None:
            value = value[: invalid.start()]
        name = pieces[index].decode("latin-1").lower()
        # White space is dropped from the start of the first line only: a value that begins
        # on a continuation line keeps that line's leading blank (as Dovecot serves it).
        value = value.lstrip(b" \t")
        if b"\n" in value and name not in seen:
            folded.add(name)
        seen.add(name)
        # line breaks go, a bare CR stays part of the value (Dovecot shows it as a blank)
        value = value.removesuffix(b"\r").replace(b"\r\n", b"").replace(b"\n", b"")
        if b"\0" in value:  # as Dovecot reads it; PostgreSQL's text cannot hold a NUL
            value = value.replace(b"\0", _REPLACEMENT)
        fields.append((name, decode_raw(value)))
    return Headers(fields, frozenset(folded))
