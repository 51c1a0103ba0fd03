"""IMAP command parsing (RFC 3501 9, RFC 7888 literals): pure, bytes in, values out.

A command arrives as one buffer: the line, and for each literal `{n}` / `{n+}` its CRLF and
n bytes followed by the rest of the line, exactly as on the wire (the session reads that far
before parsing). Every syntax problem raises `ParseError`, which the session answers with BAD.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import TypeVar

from encimap.imap import names
from encimap.store import search as keys


class ParseError(Exception):
    """Bad syntax; the text goes to the client in the BAD reply."""


# RFC 3501 9: ATOM-CHAR is any CHAR except atom-specials.
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}
_ASTRING_EXTRA = frozenset(b"]")
_LITERAL = re.compile(rb"\{(\d{1,19})(\+?)\}\r\n")
_LITERAL8 = re.compile(rb"~\{(\d{1,19})(\+?)\}\r\n")  # RFC 3516 4.2: may carry NUL
_MONTHS = ("jan feb mar apr may jun jul aug sep oct nov dec").split()
_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})")
_DATETIME = re.compile(
    r"([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})"
)


def literal_announcement(line: bytes) -> tuple[int, bool] | None:
    """(size, synchronizing) when the line (without CRLF) ends in `{n}` or `{n+}`."""
    match = re.search(rb"\{(\d{1,19})(\+?)\}$", line)
    if match is None:
        return None
    return int(match[1]), not match[2]


def announces_literal8(line: bytes) -> bool:
    """Whether the line (without CRLF) ends in a literal8 announcement `~{n}` / `~{n+}`."""
    return re.search(rb"~\{\d{1,19}\+?\}$", line) is not None


Range = tuple[int | None, int | None]  # None stands for "*"
T = TypeVar("T")


@dataclass(frozen=True)
class SequenceSet:
    ranges: tuple[Range, ...]
    # RFC 5182 "$": the session's saved search result (whatever the ranges say)
    saved: bool = False

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Ranges with "*" replaced by `largest`, each as (low, high)."""
        resolved = []
        for start, end in self.ranges:
            low = largest if start is None else start
            high = largest if end is None else end
            resolved.append((min(low, high), max(low, high)))
        return resolved


class Reader:
    """A cursor over one command."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.keys_left = 0  # search keys still allowed (parse_search sets it)
        self.text_left = 0  # bytes of search strings still allowed (parse_search sets it)
        # IMAP4rev2 (RFC 9051 5.1): mailbox names on the wire are UTF-8; they are kept (and
        # compared) in the modified UTF-7 form that IMAP4rev1 uses
        self.utf8_names = False

    # -- basics --
    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < len(self.data) else -1

    def expect(self, token: bytes) -> None:
        if not self.data.startswith(token, self.pos):
            raise ParseError(f"expected {token.decode()!r}")
        self.pos += len(token)

    def accept(self, token: bytes) -> bool:
        if self.data[self.pos : self.pos + len(token)].upper() == token.upper():
            self.pos += len(token)
            return True
        return False

    def sp(self) -> None:
        self.expect(b" ")

    def parenthesized(self, item: Callable[[], T]) -> list[T]:
        """`(item SP item ...)`, possibly empty: each item read by calling `item`."""
        self.expect(b"(")
        items: list[T] = []
        while self.peek() != 0x29:
            if items:
                self.sp()
            items.append(item())
        self.pos += 1
        return items

    def end(self) -> None:
        if not self.at_end():
            raise ParseError("unexpected characters at the end of the command")

    def _run(
        self, extra: frozenset[int] = frozenset(), stop: frozenset[int] = frozenset()
    ) -> bytes:
        start = self.pos
        data = self.data
        while (
            self.pos < len(data)
            and (data[self.pos] not in _ATOM_SPECIALS or data[self.pos] in extra)
            and data[self.pos] not in stop
        ):
            self.pos += 1
        return data[start : self.pos]

    def atom(self) -> str:
        value = self._run()
        if not value:
            raise ParseError("expected an atom")
        if any(b >= 0x80 for b in value):
            raise ParseError("8-bit characters in an atom")
        return value.decode("ascii")

    def tag(self) -> str:
        value = self._run()
        if not value or b"+" in value or any(b >= 0x80 for b in value):
            raise ParseError("invalid tag")
        return value.decode("ascii")

    def number(self) -> int:
        start = self.pos
        while self.pos < len(self.data) and 0x30 <= self.data[self.pos] <= 0x39:
            self.pos += 1
        if start == self.pos or self.pos - start > 10:
            raise ParseError("expected a number")
        value = int(self.data[start : self.pos])
        if value > 0xFFFFFFFF:
            raise ParseError("number out of range")
        return value

    def mod_sequence(self) -> int:
        """A mod-sequence value, 0 included (RFC 7162 mod-sequence-valzer: 63 bits)."""
        start = self.pos
        while self.pos < len(self.data) and 0x30 <= self.data[self.pos] <= 0x39:
            self.pos += 1
        if start == self.pos or self.pos - start > 19:
            raise ParseError("expected a mod-sequence")
        value = int(self.data[start : self.pos])
        if value > 0x7FFFFFFFFFFFFFFF:
            raise ParseError("mod-sequence out of range")
        return value

    def nz_number(self) -> int:
        value = self.number()
        if value == 0:
            raise ParseError("expected a non-zero number")
        return value

    # -- strings --
    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        data = self.data
        while self.pos < len(data):
            byte = data[self.pos]
            self.pos += 1
            if byte == 0x22:
                return bytes(out)
            if byte == 0x5C:
                if self.pos >= len(data) or data[self.pos] not in b'"\\':
                    raise ParseError("bad escape in a quoted string")
                byte = data[self.pos]
                self.pos += 1
            elif byte in (0x0D, 0x0A, 0x00):
                raise ParseError("CR, LF or NUL in a quoted string")
            out.append(byte)
        raise ParseError("unterminated quoted string")

    def literal(self, *, binary: bool = False) -> bytes:
        """A literal; with `binary` also a literal8 (RFC 3516: APPEND data, CATENATE TEXT)."""
        pattern = _LITERAL8 if binary and self.peek() == 0x7E else _LITERAL
        match = pattern.match(self.data, self.pos)
        if match is None:
            raise ParseError("bad literal")
        size = int(match[1])
        start = match.end()
        if start + size > len(self.data):
            raise ParseError("literal shorter than announced")
        self.pos = start + size
        return self.data[start : self.pos]

    def string(self) -> bytes:
        if self.peek() == 0x22:
            return self.quoted()
        if self.peek() == 0x7B:
            return self.literal()
        raise ParseError("expected a string")

    def astring(self) -> bytes:
        if self.peek() in (0x22, 0x7B):
            return self.string()
        value = self._run(_ASTRING_EXTRA)
        if not value:
            raise ParseError("expected a string or atom")
        return value

    def text_astring(self) -> str:
        value = self.astring()
        if b"\x00" in value:
            raise ParseError("NUL in a string")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("string is not UTF-8") from None

    def mailbox(self) -> str:
        name = self.text_astring()
        if not name or any(ord(c) < 0x20 for c in name):
            raise ParseError("invalid mailbox name")
        return self.stored_name(name)

    def stored_name(self, name: str) -> str:
        """A mailbox name or pattern as the client sent it, in the stored form."""
        return names.encode(name) if self.utf8_names else name

    def list_mailbox(self) -> str:
        """A LIST pattern: like an astring but `%` and `*` are allowed unquoted."""
        if self.peek() in (0x22, 0x7B):
            return self.stored_name(self.text_astring())
        start = self.pos
        while self.pos < len(self.data) and (
            self.data[self.pos] not in _ATOM_SPECIALS or self.data[self.pos] in b"%*]"
        ):
            self.pos += 1
        return self.stored_name(self.data[start : self.pos].decode("utf-8", "replace"))

    # -- structures --
    def sequence_set(self) -> SequenceSet:
        if self.peek() == 0x24:  # RFC 5182 seq-last-command: "$" alone, never in a list
            self.pos += 1
            if self.peek() in (0x2C, 0x3A):
                raise ParseError("$ cannot be combined with other numbers")
            return SequenceSet((), saved=True)
        ranges: list[Range] = []
        while True:
            start = self._seq_number()
            end = start
            if self.peek() == 0x3A:
                self.pos += 1
                end = self._seq_number()
            ranges.append((start, end))
            if self.peek() != 0x2C:
                break
            self.pos += 1
        return SequenceSet(tuple(ranges))

    def _seq_number(self) -> int | None:
        if self.peek() == 0x2A:
            self.pos += 1
            return None
        if not 0x30 <= self.peek() <= 0x39:
            raise ParseError("invalid sequence set")
        return self.nz_number()

    def flag(self) -> str:
        if self.peek() == 0x5C:
            self.pos += 1
            return "\\" + self.atom()
        return self.atom()

    def flag_list(self) -> list[str]:
        if self.peek() != 0x28:
            return [self.flag()]
        return self.parenthesized(self.flag)

    def date(self) -> date:
        text = self.astring().decode("ascii", "replace")
        match = _DATE.fullmatch(text)
        if match is None or match[2].lower() not in _MONTHS:
            raise ParseError("invalid date")
        try:
            return date(int(match[3]), _MONTHS.index(match[2].lower()) + 1, int(match[1]))
        except ValueError:
            raise ParseError("invalid date") from None

    def date_time(self) -> datetime:
        text = self.quoted().decode("ascii", "replace")
        match = _DATETIME.fullmatch(text)
        if match is None or match[2].lower() not in _MONTHS:
            raise ParseError("invalid date-time")
        try:
            return datetime.strptime(
                f"{match[1].strip()}-{match[2].title()}-{match[3]} {match[4]}:{match[5]}:"
                f"{match[6]} {match[7]}{match[8]}{match[9]}",
                "%d-%b-%Y %H:%M:%S %z",
            )
        except ValueError:
            raise ParseError("invalid date-time") from None


def guess_tag(data: bytes) -> str:
    """The tag to answer a command that cannot be parsed with ("*" if it has none)."""
    reader = Reader(data)
    try:
        return reader.tag()
    except ParseError:
        return "*"


def parse_head(data: bytes) -> tuple[str, str, Reader]:
    """(tag, upper-case command name, reader after the name). `UID X` is one name."""
    reader = Reader(data)
    tag = reader.tag()
    reader.sp()
    name = reader.atom().upper()
    if name == "UID":
        reader.sp()
        name = "UID " + reader.atom().upper()
    return tag, name, reader


# --- FETCH ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    part: tuple[int, ...] = ()
    text: str = ""  # "", HEADER, TEXT, MIME, HEADER.FIELDS, HEADER.FIELDS.NOT
    fields: tuple[str, ...] = ()

    def label(self) -> str:
        parts = [".".join(map(str, self.part))] if self.part else []
        if self.text:
            parts.append(self.text)
        label = ".".join(parts)
        if self.fields:
            label += " (" + " ".join(self.fields) + ")"
        return label


@dataclass(frozen=True)
class FetchItem:
    # UID, FLAGS, ..., BODY (section fetch when section is not None), RFC822..., and with
    # a section BINARY / BINARY.SIZE (RFC 3516)
    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False

    def label(self) -> str:
        if self.section is None:
            return self.name
        label = f"{self.name}[{self.section.label()}]"
        if self.partial is not None:
            label += f"<{self.partial[0]}>"
        return label


_SIMPLE_ITEMS = {
    "UID",
    "FLAGS",
    "INTERNALDATE",
    "RFC822.SIZE",
    "ENVELOPE",
    "BODYSTRUCTURE",
    "RFC822",
    "RFC822.HEADER",
    "RFC822.TEXT",
    "BODY",
    "MODSEQ",  # RFC 7162
}
_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}


def parse_fetch_items(reader: Reader) -> list[FetchItem]:
    if reader.peek() != 0x28:
        name = reader.atom().upper()
        if name in _MACROS:
            return [FetchItem(item) for item in _MACROS[name]]
        reader.pos -= len(name)
        return [_fetch_item(reader)]
    return reader.parenthesized(lambda: _fetch_item(reader))


def _fetch_item(reader: Reader) -> FetchItem:
    name = reader._run(stop=frozenset(b"[<")).decode("ascii", "replace").upper()
    if name in ("BODY", "BODY.PEEK") and reader.peek() == 0x5B:
        section = _section(reader)
        return FetchItem("BODY", section, _partial(reader), peek=name == "BODY.PEEK")
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        section = _binary_section(reader)
        if name == "BINARY.SIZE":
            return FetchItem(name, section)
        return FetchItem("BINARY", section, _partial(reader), peek=name == "BINARY.PEEK")
    if name not in _SIMPLE_ITEMS:
        raise ParseError(f"unknown FETCH item {name or '?'}")
    return FetchItem(name)


def _partial(reader: Reader) -> tuple[int, int] | None:
    if reader.peek() != 0x3C:
        return None
    reader.pos += 1
    start = reader.number()
    reader.expect(b".")
    partial = (start, reader.nz_number())
    reader.expect(b">")
    return partial


def _binary_section(reader: Reader) -> Section:
    """RFC 3516 section-binary: `[` [part numbers] `]`, no HEADER/TEXT/MIME."""
    section = _section(reader)
    if section.text:
        raise ParseError("BINARY takes only part numbers")
    return section


def parse_section(text: bytes) -> Section:
    """A section-spec on its own (as in an IMAP URL's `;SECTION=`)."""
    reader = Reader(b"[" + text + b"]")
    section = _section(reader)
    reader.end()
    return section


def _section(reader: Reader) -> Section:
    reader.expect(b"[")
    part: list[int] = []
    text = ""
    fields: tuple[str, ...] = ()
    while 0x30 <= reader.peek() <= 0x39:
        part.append(reader.nz_number())
        if reader.peek() != 0x2E:
            break
        reader.pos += 1
    if reader.peek() != 0x5D:
        text = reader.atom().upper()
        if text not in ("HEADER", "TEXT", "MIME", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            raise ParseError(f"unknown section {text}")
        if text == "MIME" and not part:
            raise ParseError("MIME needs a part number")
        if text.startswith("HEADER.FIELDS"):
            reader.sp()
            fields = tuple(_header_list(reader))
    reader.expect(b"]")
    return Section(tuple(part), text, fields)


def _header_list(reader: Reader) -> list[str]:
    names = reader.parenthesized(lambda: reader.astring().decode("ascii", "replace").upper())
    if not names:
        raise ParseError("empty header list")
    return names


# --- SEARCH -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetKey:
    """A sequence set in a search program (by sequence number, or by UID)."""

    sequence: SequenceSet
    uid: bool


@dataclass(frozen=True)
class RecentKey:
    """RECENT: the messages that are \\Recent in this session (NEW is RECENT UNSEEN)."""


_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_DATE_KEYS = {
    "BEFORE": ("internal", "before"),
    "ON": ("internal", "on"),
    "SINCE": ("internal", "since"),
    "SENTBEFORE": ("sent", "before"),
    "SENTON": ("sent", "on"),
    "SENTSINCE": ("sent", "since"),
}


@dataclass
class SearchProgram:
    key: object
    charset: str = "US-ASCII"
    return_options: list[str] | None = None  # RFC 4731 ESEARCH: RETURN (...) given


class TooManyKeys(ParseError):
    """A search program with more keys than the caller allows (answered NO [LIMIT])."""


class SearchTextTooLong(ParseError):
    """A search program whose strings exceed MAX_SEARCH_TEXT bytes in all (NO [LIMIT])."""


# Bytes of search strings in one program. PostgreSQL's strpos (store/search.py) costs up to
# the text's length times the string's when the string almost matches everywhere (`baaa...`
# in a Subject of `aaaa...`): a 1 MB string against a 2 MB field was hours. Bounded in all,
# a search costs less than max_search_keys one-byte keys already may (against a 2 MB field:
# 8 KB in one string 5 s, 1,000 keys 19 s), and 8 KB leaves room for a search by a long
# thread's Message-IDs, or for max_search_keys short strings.
MAX_SEARCH_TEXT = 8192


def parse_search(reader: Reader, max_keys: int = 1000) -> SearchProgram:
    program = SearchProgram(keys.All())
    reader.keys_left = max_keys
    reader.text_left = MAX_SEARCH_TEXT
    if reader.accept(b"RETURN "):
        program.return_options = [option.upper() for option in reader.parenthesized(reader.atom)]
        reader.sp()
    if reader.accept(b"CHARSET "):
        program.charset = reader.astring().decode("ascii", "replace").upper()
        if program.charset not in ("US-ASCII", "UTF-8"):
            raise ParseError(f"[BADCHARSET (US-ASCII UTF-8)] unsupported charset {program.charset}")
        reader.sp()
    found = [_search_key(reader, 0)]
    while not reader.at_end():
        reader.sp()
        found.append(_search_key(reader, 0))
    program.key = found[0] if len(found) == 1 else keys.And(tuple(found))
    return program


def _search_key(reader: Reader, depth: int) -> object:
    if depth > 50:
        raise ParseError("search program nested too deeply")
    reader.keys_left -= 1
    if reader.keys_left < 0:
        raise TooManyKeys("too many search keys")
    if reader.peek() == 0x28:
        reader.pos += 1
        found = [_search_key(reader, depth + 1)]
        while reader.peek() != 0x29:
            reader.sp()
            found.append(_search_key(reader, depth + 1))
        reader.pos += 1
        return found[0] if len(found) == 1 else keys.And(tuple(found))
    if 0x30 <= reader.peek() <= 0x39 or reader.peek() in (0x2A, 0x24):
        return SetKey(reader.sequence_set(), uid=False)
    name = reader.atom().upper()
    if name == "ALL":
        return keys.All()
    if name == "RECENT":
        return RecentKey()
    if name == "OLD":
        return keys.Not(RecentKey())
    if name == "NEW":
        return keys.And((RecentKey(), keys.Flag("\\Seen", False)))
    if name in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[name]
        return keys.Flag(flag, present)
    if name in ("KEYWORD", "UNKEYWORD"):
        reader.sp()
        return keys.Flag(reader.atom(), name == "KEYWORD")
    if name in _DATE_KEYS:
        reader.sp()
        source, op = _DATE_KEYS[name]
        return keys.Date(source, op, reader.date())  # type: ignore[arg-type]
    if name in ("LARGER", "SMALLER"):
        reader.sp()
        return keys.Size(name.lower(), reader.number())  # type: ignore[arg-type]
    if name in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
        reader.sp()
        return keys.Header(name.lower(), _search_text(reader))
    if name == "HEADER":
        reader.sp()
        header = reader.astring().decode("ascii", "replace").lower()
        reader.sp()
        return keys.Header(header, _search_text(reader))
    if name in ("BODY", "TEXT"):
        reader.sp()
        text = _search_text(reader)
        return keys.Nothing() if name == "BODY" else keys.Text(text)
    if name == "UID":
        reader.sp()
        return SetKey(reader.sequence_set(), uid=True)
    if name == "MODSEQ":  # RFC 7162 3.1.5; the entry name and type only narrow to a flag
        reader.sp()
        if reader.peek() == 0x22:
            reader.quoted()
            reader.sp()
            if reader.atom().lower() not in ("priv", "shared", "all"):
                raise ParseError("unknown MODSEQ entry type")
            reader.sp()
        return keys.Modseq(reader.mod_sequence())
    if name == "NOT":
        reader.sp()
        return keys.Not(_search_key(reader, depth + 1))
    if name == "OR":
        reader.sp()
        left = _search_key(reader, depth + 1)
        reader.sp()
        return keys.Or(left, _search_key(reader, depth + 1))
    raise ParseError(f"unknown search key {name}")


def _search_text(reader: Reader) -> str:
    text = reader.astring()
    reader.text_left -= len(text)
    if reader.text_left < 0:
        raise SearchTextTooLong(f"search strings too long (at most {MAX_SEARCH_TEXT} bytes)")
    return text.decode("utf-8", "replace")
