"""IMAP ENVELOPE and BODYSTRUCTURE of a message, computed once from its raw bytes.

Pure: bytes in, strings out. Intake and APPEND call `describe()` when they store a message, so
FETCH serves the stored strings and never parses mail. The output follows what Dovecot 2.3
sends for the same bytes (the tests compare with a running Dovecot): header values are kept as
written (RFC 2047 words are not decoded), strings with 8-bit or line-break characters become
literals, missing address parts are filled with MISSING_MAILBOX / MISSING_DOMAIN.

`parts` maps every MIME section ("" for the whole message, "1", "1.2", ...) to the byte
offsets of its header and body, so BODY[1], BODY[1.MIME] and BODY[TEXT] are byte slices.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import TypeVar

MAX_DEPTH = 20  # nesting beyond this is served as an opaque part
_QUOTED_MAX_ESCAPES = 4
# The empty line ending a header: searched from its LF, a literal the regex engine can skip
# to (a leading optional CR would make it try every position); a CR before it is added back.
_HEADER_END = re.compile(rb"\n\r?\n")
# A field name at a line start, found from the LF before it (a literal, as for _HEADER_END).
_FIELD = re.compile(rb"\n([^:\s]+)[ \t]*:")


# --- IMAP string output -----------------------------------------------------------------------


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


# --- headers ----------------------------------------------------------------------------------


@dataclass
class Headers:
    """The header fields of one part, in order, with values unfolded (CR/LF removed)."""

    fields: list[tuple[str, str]]
    # lower-case name -> value of its first field: describe() looks up ~24 names per message
    _first: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._first = dict(reversed(self.fields))

    def first(self, name: str) -> str | None:
        return self._first.get(name.lower())


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
    for index in range(1, len(pieces), 2):
        value = pieces[index + 1].replace(b"\r", b"").replace(b"\n", b"").lstrip(b" \t")
        fields.append((pieces[index].decode("latin-1").lower(), value.decode("utf-8", "replace")))
    return Headers(fields)


# --- RFC 822 tokens ---------------------------------------------------------------------------


class _Tokens:
    """A cursor over a structured header value (RFC 5322 3.2: CFWS, atoms, quoted strings)."""

    def __init__(self, text: str, specials: str = '()<>@,;:\\".[]') -> None:
        self.text = text
        self.pos = 0
        self.specials = specials
        self.last_comment = ""

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_cfws(self) -> None:
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif char == "(":
                self.last_comment = self._comment()
            else:
                return

    def _comment(self) -> str:
        depth, out = 0, []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
                continue
            if char == "(":
                depth += 1
                if depth == 1:
                    continue
            elif char == ")":
                depth -= 1
                if depth == 0:
                    break
            out.append(char)
        return "".join(out)

    def atom(self, extra: str = "") -> str:
        start = self.pos
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r\n()" or (char in self.specials and char not in extra):
                break
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        self.pos += 1  # opening quote
        out = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
            elif char == '"':
                break
            elif char not in "\r\n":
                out.append(char)
        return "".join(out)

    def word(self) -> str | None:
        self.skip_cfws()
        if self.peek() == '"':
            return self.quoted()
        word = self.atom()
        return word or None

    def phrase(self) -> str:
        words = []
        while True:
            self.skip_cfws()
            if self.peek() == '"':
                words.append(self.quoted())
            elif self.peek() == ".":
                self.pos += 1
                words.append(".")
            else:
                word = self.atom()
                if not word:
                    break
                words.append(word)
        return " ".join(words).replace(" . ", ".")


# --- addresses --------------------------------------------------------------------------------

Address = tuple[str | None, str | None, str | None, str | None]  # name, route, mailbox, host


# Fast path: a list of plain `local@domain` / `Name Words <local@domain>` (ASCII atoms only: no
# quotes, comments, groups, routes, dots in names or 8-bit) is read by one regex per address.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_SIMPLE_MAILBOX = re.compile(
    rf"[ \t]*(?:({_ATOM}(?:[ \t]+{_ATOM})*)?[ \t]*<({_DOT_ATOM})@({_DOT_ATOM})>"
    rf"|({_DOT_ATOM})@({_DOT_ATOM}))[ \t]*(?:,|\Z)"
)


def parse_addresses(value: str) -> list[Address]:
    """An address list as ENVELOPE address tuples (groups as start/end markers)."""
    simple = _simple_addresses(value)
    return _parse_address_list(value) if simple is None else simple


def _simple_addresses(value: str) -> list[Address] | None:
    """What _parse_address_list gives for a list of plain addresses; None for anything else."""
    addresses: list[Address] = []
    position = 0
    while position < len(value) or not addresses:
        match = _SIMPLE_MAILBOX.match(value, position)
        if match is None:
            return None
        name, angle_mailbox, angle_host, mailbox, host = match.groups()
        if mailbox is None:
            addresses.append((name and " ".join(name.split()), None, angle_mailbox, angle_host))
        else:
            addresses.append((None, None, mailbox, host))
        position = match.end()
    return addresses


def _parse_address_list(value: str) -> list[Address]:
    tokens = _Tokens(value)
    addresses: list[Address] = []
    tokens.skip_cfws()
    for _ in range(10000):
        if tokens.at_end():
            break
        start = tokens.pos
        if not _parse_group(tokens, addresses):
            tokens.pos = start
            _parse_mailbox(tokens, addresses)
        tokens.skip_cfws()
        if tokens.peek() != ",":
            break
        tokens.pos += 1
        tokens.skip_cfws()
    return addresses


def _parse_group(tokens: _Tokens, out: list[Address]) -> bool:
    name = tokens.phrase()
    if not name or tokens.peek() != ":":
        return False
    tokens.pos += 1
    out.append((None, None, name, None))
    tokens.skip_cfws()
    while not tokens.at_end() and tokens.peek() != ";":
        before = tokens.pos
        _parse_mailbox(tokens, out)
        tokens.skip_cfws()
        if tokens.peek() == ",":
            tokens.pos += 1
            tokens.skip_cfws()
        elif tokens.pos == before or tokens.peek() != ";":
            break
    if tokens.peek() == ";":
        tokens.pos += 1
    out.append((None, None, None, None))
    return True


def _parse_mailbox(tokens: _Tokens, out: list[Address]) -> None:
    start = tokens.pos
    name = tokens.phrase()
    if tokens.peek() == "<":
        route, mailbox, host = _angle_addr(tokens)
        out.append(_filled(name or None, route, mailbox, host))
        return
    tokens.pos = start
    tokens.last_comment = ""
    tokens.skip_cfws()
    mailbox = _local_part(tokens)
    host = None
    if tokens.peek() == "@":
        tokens.pos += 1
        host = _domain(tokens)
    tokens.skip_cfws()
    out.append(_filled(tokens.last_comment or None, None, mailbox or None, host))
    if tokens.pos == start:
        tokens.pos = len(tokens.text)  # unparseable rest: stop instead of looping


def _filled(name: str | None, route: str | None, mailbox: str | None, host: str | None) -> Address:
    return (name, route, mailbox or "MISSING_MAILBOX", host or "MISSING_DOMAIN")


def _angle_addr(tokens: _Tokens) -> tuple[str | None, str | None, str | None]:
    tokens.pos += 1  # "<"
    tokens.skip_cfws()
    route = None
    if tokens.peek() == "@":
        hops = []
        while tokens.peek() == "@":
            tokens.pos += 1
            hops.append("@" + _domain(tokens))
            tokens.skip_cfws()
            while tokens.peek() == ",":
                tokens.pos += 1
                tokens.skip_cfws()
        route = ",".join(hops)
        if tokens.peek() == ":":
            tokens.pos += 1
        tokens.skip_cfws()
    mailbox = _local_part(tokens)
    host = None
    if tokens.peek() == "@":
        tokens.pos += 1
        host = _domain(tokens)
    tokens.skip_cfws()
    if tokens.peek() == ">":
        tokens.pos += 1
    elif host is None:
        host = "SYNTAX_ERROR"
    tokens.skip_cfws()
    return route, mailbox, host


def _local_part(tokens: _Tokens) -> str:
    parts = []
    while True:
        tokens.skip_cfws()
        if tokens.peek() == '"':
            parts.append(tokens.quoted())
        else:
            word = tokens.atom()
            if not word:
                break
            parts.append(word)
        tokens.skip_cfws()
        if tokens.peek() != ".":
            break
        tokens.pos += 1
        parts.append(".")
    return "".join(parts)


def _domain(tokens: _Tokens) -> str:
    tokens.skip_cfws()
    if tokens.peek() == "[":
        end = tokens.text.find("]", tokens.pos)
        end = len(tokens.text) if end < 0 else end + 1
        literal_domain = tokens.text[tokens.pos : end]
        tokens.pos = end
        return literal_domain
    parts = []
    while True:
        word = tokens.atom()
        if not word:
            break
        parts.append(word)
        tokens.skip_cfws()
        if tokens.peek() != ".":
            break
        tokens.pos += 1
        parts.append(".")
        tokens.skip_cfws()
    return "".join(parts)


def address_list(addresses: list[Address] | None) -> str:
    if not addresses:
        return "NIL"
    items = []
    for name, route, mailbox, host in addresses:
        rendered_name = "NIL" if name is None else human_string(name)
        items.append(f"({rendered_name} {nstring(route)} {nstring(mailbox)} {nstring(host)})")
    return "(" + "".join(items) + ")"


# --- ENVELOPE ---------------------------------------------------------------------------------


def envelope(headers: Headers) -> str:
    """RFC 3501 7.4.2 ENVELOPE; Sender and Reply-To default to From."""

    def addresses(name: str) -> list[Address] | None:
        value = headers.first(name)
        return None if value is None else parse_addresses(value)

    def plain(name: str) -> str:
        value = headers.first(name)
        return "NIL" if value is None else nstring(value)

    def defaulting_to_from(name: str) -> str:
        found = addresses(name)
        return address_list(found) if found else from_text

    subject = headers.first("subject")
    from_text = address_list(addresses("from"))
    fields = [
        plain("date"),
        "NIL" if subject is None else human_string(subject),
        from_text,
        defaulting_to_from("sender"),
        defaulting_to_from("reply-to"),
        address_list(addresses("to")),
        address_list(addresses("cc")),
        address_list(addresses("bcc")),
        plain("in-reply-to"),
        plain("message-id"),
    ]
    return "(" + " ".join(fields) + ")"


# --- Content-* headers ------------------------------------------------------------------------

_MIME_SPECIALS = '()<>@,;:\\"/[]?='


# Values up to this length are remembered: the Content-Type and Content-Disposition of what
# the intake stores are the same few strings for every message.
_CACHED_CONTENT_VALUE_LENGTH = 200

Params = tuple[tuple[str, str], ...]
_T = TypeVar("_T")


def _cached_when_short(function: Callable[[str], _T]) -> Callable[[str], _T]:
    """`function` (pure) remembered for values up to _CACHED_CONTENT_VALUE_LENGTH."""
    cached = functools.lru_cache(maxsize=256)(function)

    @functools.wraps(function)
    def lookup(value: str) -> _T:
        return cached(value) if len(value) <= _CACHED_CONTENT_VALUE_LENGTH else function(value)

    return lookup


@_cached_when_short
def parse_content_value(value: str) -> tuple[str, Params]:
    """`token; key=value; ...` into the token and its parameters (RFC 2231 joined)."""
    tokens = _Tokens(value, _MIME_SPECIALS)
    tokens.skip_cfws()
    token = tokens.atom()
    tokens.skip_cfws()
    if tokens.peek() == "/":
        tokens.pos += 1
        tokens.skip_cfws()
        token = f"{token}/{tokens.atom()}"
    params: list[tuple[str, str]] = []
    while True:
        tokens.skip_cfws()
        if tokens.peek() != ";":
            break
        tokens.pos += 1
        tokens.skip_cfws()
        key = tokens.atom()
        tokens.skip_cfws()
        if not key or tokens.peek() != "=":
            break
        tokens.pos += 1
        tokens.skip_cfws()
        if tokens.peek() == '"':
            param_value = tokens.quoted()
        else:
            param_value = tokens.atom()
        params.append((key.lower(), param_value))
    return token, tuple(_join_rfc2231(params))


def _join_rfc2231(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """RFC 2231 continuations `name*0`, `name*1*` joined into `name` or `name*`."""
    plain: list[tuple[str, str]] = []
    continued: dict[str, list[tuple[int, str, bool]]] = {}
    for key, value in params:
        match = re.fullmatch(r"(.+?)\*(\d+)(\*?)", key)
        if match:
            continued.setdefault(match[1], []).append((int(match[2]), value, bool(match[3])))
        else:
            plain.append((key, value))
    for name, pieces in continued.items():
        pieces.sort()
        extended = pieces[0][2]
        plain.append((name + ("*" if extended else ""), "".join(p[1] for p in pieces)))
    return plain


def _params(params: Params) -> str:
    if not params:
        return "NIL"
    return "(" + " ".join(f"{nstring(k)} {nstring(v)}" for k, v in params) + ")"


def _languages(value: str | None) -> str:
    if value is None:
        return "NIL"
    tags = [t.strip() for t in value.split(",") if t.strip()]
    return "(" + " ".join(nstring(t) for t in tags) + ")" if tags else "NIL"


def _disposition(value: str | None) -> str:
    return "NIL" if value is None else _rendered_disposition(value)


@_cached_when_short
def _rendered_disposition(value: str) -> str:
    token, params = parse_content_value(value)
    if not token:
        return "NIL"
    return f"({nstring(token)} {_params(params)})"


@_cached_when_short
def _rendered_content_params(value: str) -> str:
    return _params(parse_content_value(value)[1])


def _raw(headers: Headers, name: str) -> str:
    value = headers.first(name)
    return "NIL" if value is None else nstring(value)


# --- BODYSTRUCTURE ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """Offsets of one MIME part in the message bytes: header [header_start, body_start) and
    body [body_start, end)."""

    section: str
    header_start: int
    body_start: int
    end: int


@dataclass(frozen=True)
class MessageInfo:
    envelope: str
    bodystructure: str
    body: str  # the non-extensible BODY form
    parts: list[Part]
    sent_date: datetime | None
    search: dict[str, str]  # lower-case header name -> unfolded value (from, to, cc, subject)


SEARCH_HEADERS = ("from", "to", "cc", "bcc", "subject")


def describe(data: bytes) -> MessageInfo:
    """Everything FETCH and SEARCH need from a message, computed once when it is stored."""
    parts: list[Part] = []
    headers, body_start, extended, basic = _message(data, 0, len(data), "", parts, 0)
    parts.insert(0, Part("", 0, body_start, len(data)))
    return MessageInfo(
        envelope=envelope(headers),
        bodystructure=extended,
        body=basic,
        parts=parts,
        sent_date=_date(headers.first("date")),
        search={name: headers.first(name) or "" for name in SEARCH_HEADERS},
    )


def _message(
    data: bytes, start: int, end: int, section: str, parts: list[Part], depth: int
) -> tuple[Headers, int, str, str]:
    """A message (the whole one or a message/rfc822 body): its headers, body offset and
    structures. A body that is not multipart is its own section `<section>.1`, whose MIME
    header (`<section>.1.MIME`) is the message's header, as Dovecot serves it."""
    header_end, body_start = split_header(data, start, end)
    headers = parse_headers(data, start, header_end)
    known = len(parts)
    extended, basic = _structure(data, headers, body_start, end, section, parts, depth, False)
    if len(parts) == known or not extended.startswith("(("):
        first = f"{section}.1" if section else "1"
        parts.insert(known, Part(first, start, body_start, end))
    return headers, body_start, extended, basic


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Fast path: the RFC 5322 form almost every Date field has, read without the stdlib's
# general tokenizing; anything else goes to parsedate_to_datetime.
_PLAIN_DATE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?([0-9]{1,2}) "
    rf"({'|'.join(_MONTHS)}) ([1-9][0-9]{{3}}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-][0-9]{4})"
).fullmatch


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    plain = _PLAIN_DATE(value)
    try:
        return parsedate_to_datetime(value) if plain is None else _plain_date(plain)
    except (TypeError, ValueError, IndexError):
        return None


def _plain_date(match: re.Match[str]) -> datetime:
    """What parsedate_to_datetime gives for a _PLAIN_DATE match."""
    day, month, year, hour, minute, second, zone = match.groups()
    return datetime(
        int(year),
        _MONTHS.index(month) + 1,
        int(day),
        int(hour),
        int(minute),
        int(second),
        tzinfo=_zone(zone),
    )


@functools.lru_cache(maxsize=64)
def _zone(numeric: str) -> timezone | None:
    """`+hhmm` / `-hhmm` as a fixed zone; -0000 says the zone is unknown (RFC 5322 3.3)."""
    if numeric == "-0000":
        return None
    seconds = int(numeric[1:3]) * 3600 + int(numeric[3:5]) * 60
    return timezone(timedelta(seconds=-seconds if numeric[0] == "-" else seconds))


def _structure(
    data: bytes,
    headers: Headers,
    body_start: int,
    end: int,
    section: str,
    parts: list[Part],
    depth: int,
    digest_child: bool,
) -> tuple[str, str]:
    """(BODYSTRUCTURE, BODY) of the part whose headers are `headers`."""
    content_type = headers.first("content-type")
    if content_type is not None:
        mime_type, params = parse_content_value(content_type)
        params_text = _rendered_content_params(content_type)
    else:
        mime_type, params, params_text = "", (), "NIL"
    main, _, sub = mime_type.partition("/")
    if not main or not sub:
        main, sub = ("message", "rfc822") if digest_child else ("text", "plain")
        if content_type is not None and mime_type and "/" not in mime_type:
            main, sub = mime_type, ""
    is_text = main.lower() == "text"
    if is_text and not any(k == "charset" for k, _ in params):
        params = (*params, ("charset", "us-ascii"))
        params_text = _params(params)
    boundary = dict(params).get("boundary")
    if main.lower() == "multipart" and boundary and depth < MAX_DEPTH:
        return _multipart(data, headers, body_start, end, section, parts, depth, sub, params)
    ext_tail = " ".join(
        (
            _raw(headers, "content-md5"),
            _disposition(headers.first("content-disposition")),
            _languages(headers.first("content-language")),
            _raw(headers, "content-location"),
        )
    )
    encoding = headers.first("content-transfer-encoding")
    encoding_token = parse_content_value(encoding)[0] if encoding else ""
    fields = " ".join(
        (
            nstring(main),
            nstring(sub) if sub else ('"plain"' if is_text else '"unknown"'),
            params_text,
            _raw(headers, "content-id"),
            _raw(headers, "content-description"),
            nstring(encoding_token) if encoding_token else '"7bit"',
            str(end - body_start),
        )
    )
    if is_text:
        lines = data.count(b"\n", body_start, end)  # counted only where it is sent: scans the body
        basic = f"({fields} {lines})"
        return f"({fields} {lines} {ext_tail})", basic
    if main.lower() == "message" and sub.lower() == "rfc822" and depth < MAX_DEPTH:
        inner, _, inner_ext, inner_basic = _message(
            data, body_start, end, section, parts, depth + 1
        )
        env = envelope(inner)
        lines = data.count(b"\n", body_start, end)
        return (
            f"({fields} {env} {inner_ext} {lines} {ext_tail})",
            f"({fields} {env} {inner_basic} {lines})",
        )
    return f"({fields} {ext_tail})", f"({fields})"


def _multipart(
    data: bytes,
    headers: Headers,
    body_start: int,
    end: int,
    section: str,
    parts: list[Part],
    depth: int,
    subtype: str,
    params: Params,
) -> tuple[str, str]:
    boundary = dict(params)["boundary"].encode("utf-8", "replace")
    spans = split_multipart(data, body_start, end, boundary)
    extended_children, basic_children = [], []
    for number, (start, stop) in enumerate(spans, 1):
        child_section = f"{section}.{number}" if section else str(number)
        header_end, child_body = split_header(data, start, stop)
        child_headers = parse_headers(data, start, header_end)
        parts.append(Part(child_section, start, child_body, stop))
        ext, basic = _structure(
            data,
            child_headers,
            child_body,
            stop,
            child_section,
            parts,
            depth + 1,
            subtype.lower() == "digest",
        )
        extended_children.append(ext)
        basic_children.append(basic)
    if not spans:
        empty = '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'
        extended_children, basic_children = [empty], [empty]
    ext_tail = " ".join(
        (
            _params(params),
            _disposition(headers.first("content-disposition")),
            _languages(headers.first("content-language")),
            _raw(headers, "content-location"),
        )
    )
    sub = nstring(subtype) if subtype else '"x-unknown"'
    return (
        f"({''.join(extended_children)} {sub} {ext_tail})",
        f"({''.join(basic_children)} {sub})",
    )


def split_multipart(data: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """The [start, end) spans of a multipart body's parts (RFC 2046 5.1.1)."""
    delimiter = b"--" + boundary
    spans: list[tuple[int, int]] = []
    part_start: int | None = None
    position = start
    while position < end:
        if data.startswith(delimiter, position) and (position == start or data[position - 1] == 10):
            line_end = data.find(b"\n", position, end)
            line_end = end if line_end < 0 else line_end + 1
            if part_start is not None:
                stop = position
                if stop > part_start and data[stop - 1] == 10:
                    stop -= 1
                    if stop > part_start and data[stop - 1] == 13:
                        stop -= 1
                spans.append((part_start, max(stop, part_start)))
            closing = data.startswith(delimiter + b"--", position)
            if closing:
                return spans
            part_start = line_end
            position = line_end
            continue
        next_line = data.find(b"\n", position, end)
        if next_line < 0:
            break
        position = next_line + 1
    if part_start is not None:
        spans.append((part_start, end))
    return spans
