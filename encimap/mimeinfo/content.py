"""Content-* header fields: type and parameters (RFC 2045, RFC 2231), disposition, language,
as BODYSTRUCTURE renders them."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TypeVar

from encimap.mimeinfo.headers import Headers
from encimap.mimeinfo.strings import nstring
from encimap.mimeinfo.tokens import _Tokens

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
            if tokens.unterminated:  # never closed: not a parameter (Dovecot)
                break
        else:
            param_value = tokens.atom()
        params.append((key, param_value))  # names as written: Dovecot serves them so
    return token, tuple(_join_rfc2231(params))


def media_type(headers: Headers, digest_child: bool) -> tuple[str, str, Params]:
    """(type, subtype, parameters) of a part as Dovecot reads them: a bare type is that type
    with an empty subtype, a type without a subtype but with parameters (or a subtype without
    a type) is none at all (no parameters either), a missing one is text/plain
    (message/rfc822 in a multipart/digest), message/rfc822 is lower case."""
    content_type = headers.first("content-type")
    mime_type, params = ("", ()) if content_type is None else parse_content_value(content_type)
    main, slash, sub = mime_type.partition("/")
    if mime_type and not slash and not params:
        pass  # a bare `text`: that type, an empty subtype
    elif mime_type and not (slash and main and sub):  # `text; a=b`, `text/`, `/plain`
        main, sub, params = "", "", ()
    elif not main or not sub:
        main, sub = ("message", "rfc822") if digest_child else ("text", "plain")
    if main.lower() == "message" and sub.lower() == "rfc822":
        main, sub = "message", "rfc822"
    return main, sub, params


def param(params: Params, name: str) -> str | None:
    """The value of parameter `name` (lower case; names compare case-insensitively)."""
    return next((value for key, value in params if key.lower() == name), None)


def _join_rfc2231(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """RFC 2231 continuations `name*0`, `name*1*` joined into `name` or `name*`. As in
    Dovecot, the RFC 2231 parameters (`name*` included) follow the others, sorted by name."""
    plain: list[tuple[str, str]] = []
    continued: dict[str, list[tuple[int, str, bool]]] = {}
    for key, value in params:
        match = re.fullmatch(r"(.+?)\*(?:(\d+)(\*?))?", key)
        if match is None:
            plain.append((key, value))
        elif match[2] is None:  # `name*`: one extended value
            continued.setdefault(match[1], []).append((0, value, True))
        else:
            continued.setdefault(match[1], []).append((int(match[2]), value, bool(match[3])))
    for name in sorted(continued):
        pieces = sorted(continued[name])
        extended = pieces[0][2]
        plain.append((name + ("*" if extended else ""), "".join(p[1] for p in pieces)))
    return plain


def _params(params: Params) -> str:
    if not params:
        return "NIL"
    return "(" + " ".join(f"{nstring(k)} {nstring(v)}" for k, v in params) + ")"


def _languages(value: str | None) -> str:
    """Content-Language: atoms separated by commas, comments and blanks skipped (Dovecot
    reads it with its RFC 822 tokenizer, so `en, (old) de` is ("en" "de"))."""
    if value is None:
        return "NIL"
    tokens = _Tokens(value)
    tags = []
    while True:
        tokens.skip_cfws()
        tag = tokens.atom()
        if not tag:
            break
        tags.append(tag)
        tokens.skip_cfws()
        if tokens.peek() != ",":
            break
        tokens.pos += 1
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
