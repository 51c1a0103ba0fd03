"""Address lists (RFC 5322 3.4) as IMAP ENVELOPE address structures."""

from __future__ import annotations

import re

from encimap.mimeinfo.strings import human_string, nstring
from encimap.mimeinfo.tokens import _Tokens

Address = tuple[str | None, str | None, str | None, str | None]  # name, route, mailbox, host


# Fast path: a list of plain `local@domain` / `Name Words <local@domain>` (ASCII atoms only: no
# quotes, comments, groups, routes, dots in names or 8-bit) is read by one regex per address.
# Only character classes repeat in it (a group repeated per word or per dot makes the regex
# engine keep state for each, hundreds of bytes per word of a long header); a dot-atom is
# matched loosely and its dots checked after.
_ATOM_CHARS = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_LOOSE_DOT_ATOM = rf"[{_ATOM_CHARS}][{_ATOM_CHARS}.]*"
_SIMPLE_MAILBOX = re.compile(
    rf"[ \t]*(?:([{_ATOM_CHARS}][{_ATOM_CHARS} \t]*)?<({_LOOSE_DOT_ATOM})@({_LOOSE_DOT_ATOM})>"
    rf"|({_LOOSE_DOT_ATOM})@({_LOOSE_DOT_ATOM}))[ \t]*(?:,|\Z)"
)


def _dot_atom(text: str) -> bool:
    """A loose match is a dot-atom: no dot at its end, no two dots in a row."""
    return not text.endswith(".") and ".." not in text


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
        if not all(_dot_atom(text) for text in (angle_mailbox or mailbox, angle_host or host)):
            return None
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
    """One mailbox; one whose quoted string is never closed is invalid as a whole: no name,
    missing mailbox and domain (Dovecot)."""
    tokens.unterminated = False
    _parse_mailbox_parts(tokens, out)
    if tokens.unterminated:
        out[-1] = (None, None, "MISSING_MAILBOX", "MISSING_DOMAIN")


def _parse_mailbox_parts(tokens: _Tokens, out: list[Address]) -> None:
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
    name = tokens.last_comment or None
    if host is None and name is None and tokens.peek() not in ("", ",", ";"):
        # `word more words` without @ or <>: a display name without an address (Dovecot)
        rest = tokens.phrase()
        if rest:
            name, mailbox = f"{mailbox} {rest}" if mailbox else rest, ""
    out.append(_filled(name, None, mailbox or None, host))
    if tokens.pos == start and tokens.peek() != ",":
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


def search_text(addresses: list[Address]) -> str:
    """Parsed addresses written out again (`Name <mailbox@host>`, groups as `name: ...;`):
    what SEARCH FROM/TO/CC/BCC match against, so comments and folding in the header do not
    hide an address (Dovecot searches the same form)."""
    out: list[str] = []
    for name, _route, mailbox, host in addresses:
        if host is None:
            out.append(";" if mailbox is None else f"{mailbox}:")
            continue
        address = f"{mailbox}@{host}"
        out.append(f"{name} <{address}>" if name else address)
    return ", ".join(out)
