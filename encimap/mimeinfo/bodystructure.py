"""BODYSTRUCTURE and BODY of a message and the byte offsets of its MIME parts."""

from __future__ import annotations

from dataclasses import dataclass

from encimap.mimeinfo.content import (
    Params,
    _disposition,
    _languages,
    _params,
    _rendered_content_params,
    media_type,
    param,
    parse_content_value,
)
from encimap.mimeinfo.envelope import envelope
from encimap.mimeinfo.headers import Headers, parse_headers, split_header
from encimap.mimeinfo.layout import MAX_DEPTH, Spans
from encimap.mimeinfo.strings import nstring

# Dovecot's limits (message-parser): a multipart or message/rfc822 part this deep is served
# as an opaque application/octet-stream part, and a message has at most MAX_PARTS parts (the
# last one runs to the end of its multipart). They bound what a hostile message costs.
MAX_PARTS = 10_000
_NOT_MIME = Headers([])


@dataclass(frozen=True)
class Part:
    """Offsets of one MIME part in the message bytes: header [header_start, body_start) and
    body [body_start, end)."""

    section: str
    header_start: int
    body_start: int
    end: int
    message: bool = False  # a message/rfc822 part: BODY[n.HEADER] / [n.TEXT] are its own


def _message(
    data: bytes, start: int, end: int, section: str, parts: list[Part], depth: int, spans: Spans
) -> tuple[Headers, int, str, str]:
    """A message (the whole one or a message/rfc822 body): its headers, body offset and
    structures. A body that is not multipart is its own section `<section>.1`, whose MIME
    header (`<section>.1.MIME`) is the message's header, as Dovecot serves it."""
    header_end, body_start = split_header(data, start, end)
    headers = parse_headers(data, start, header_end)
    known = len(parts)
    # A message header with neither Content-Type nor MIME-Version is not MIME: its other
    # Content-* fields are not read either (Dovecot; a multipart's parts need neither).
    mime = headers.first("content-type") is not None or headers.first("mime-version") is not None
    described = headers if mime else _NOT_MIME
    extended, basic = _structure(
        data, described, body_start, end, section, parts, depth, False, spans
    )
    if len(parts) == known or not extended.startswith("(("):
        first = f"{section}.1" if section else "1"
        parts.insert(known, Part(first, start, body_start, end))
    return headers, body_start, extended, basic


def _structure(
    data: bytes,
    headers: Headers,
    body_start: int,
    end: int,
    section: str,
    parts: list[Part],
    depth: int,
    digest_child: bool,
    spans: Spans,
) -> tuple[str, str]:
    """(BODYSTRUCTURE, BODY) of the part whose headers are `headers`."""
    main, sub, params = media_type(headers, digest_child)
    content_type = headers.first("content-type")
    params_text = _rendered_content_params(content_type) if params and content_type else "NIL"
    nesting = main.lower() == "multipart" or (main, sub) == ("message", "rfc822")
    if nesting and (depth >= MAX_DEPTH or len(parts) + 1 >= MAX_PARTS):
        main, sub = "application", "octet-stream"  # too deep or too many parts: opaque
    is_text = main.lower() == "text"
    if is_text and param(params, "charset") is None:
        params = (*params, ("charset", "us-ascii"))
        params_text = _params(params)
    if main.lower() == "multipart":  # without a boundary: no parts
        return _multipart(data, headers, body_start, end, section, parts, depth, sub, params, spans)
    ext_tail = " ".join(
        (
            headers.nstring("content-md5"),
            _disposition(headers.first("content-disposition")),
            _languages(headers.first("content-language")),
            headers.nstring("content-location"),
        )
    )
    encoding = headers.first("content-transfer-encoding")
    encoding_token = parse_content_value(encoding)[0] if encoding else ""
    fields = " ".join(
        (
            nstring(main),
            nstring(sub),
            params_text,
            headers.nstring("content-id"),
            headers.nstring("content-description"),
            nstring(encoding_token) if encoding_token else '"7bit"',
            str(_crlf_size(data, body_start, end)),
        )
    )
    if is_text:
        lines = data.count(b"\n", body_start, end)  # counted only where it is sent: scans the body
        basic = f"({fields} {lines})"
        return f"({fields} {lines} {ext_tail})", basic
    if main == "message" and sub == "rfc822":
        for index in range(len(parts) - 1, -1, -1):
            if parts[index].section == section:
                part = parts[index]
                parts[index] = Part(section, part.header_start, part.body_start, part.end, True)
                break
        inner, _, inner_ext, inner_basic = _message(
            data, body_start, end, section, parts, depth + 1, spans
        )
        env = envelope(inner)
        lines = data.count(b"\n", body_start, end)
        return (
            f"({fields} {env} {inner_ext} {lines} {ext_tail})",
            f"({fields} {env} {inner_basic} {lines})",
        )
    return f"({fields} {ext_tail})", f"({fields})"


def _crlf_size(data: bytes, start: int, end: int) -> int:
    """The size of data[start:end] with every bare LF counted as CRLF, as Dovecot gives a
    part's size (the bytes IMAP clients are meant to see)."""
    size = end - start
    line_feeds = data.count(b"\n", start, end)
    return size if not line_feeds else size + line_feeds - data.count(b"\r\n", start, end)


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
    spans: Spans,
) -> tuple[str, str]:
    children = spans.get(body_start, []) if param(params, "boundary") is not None else []
    extended_children, basic_children = [], []
    for number, (start, stop) in enumerate(children, 1):
        if len(parts) + 1 >= MAX_PARTS:  # the root counts too (it is added last)
            break
        if len(parts) + 2 >= MAX_PARTS:
            stop = len(data)  # the last part Dovecot makes: no delimiter ends it any more
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
            spans,
        )
        extended_children.append(ext)
        basic_children.append(basic)
    if not children:
        empty = '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0'
        extended_children, basic_children = [empty + " NIL NIL NIL NIL)"], [empty + ")"]
    ext_tail = " ".join(
        (
            _params(params),
            _disposition(headers.first("content-disposition")),
            _languages(headers.first("content-language")),
            headers.nstring("content-location"),
        )
    )
    sub = nstring(subtype) if subtype else '"x-unknown"'
    return (
        f"({''.join(extended_children)} {sub} {ext_tail})",
        f"({''.join(basic_children)} {sub})",
    )
