"""Where each multipart's parts begin and end: the message read forward once, as Dovecot's
parser reads it.

A line that begins with `--` and a boundary of a multipart still open ends the part being
read. Several open boundaries may match one line (the same boundary reused inside, or one a
prefix of another): the longest wins, of equal ones the innermost. Multiparts and
message/rfc822 parts deeper than MAX_DEPTH are opaque, as in bodystructure. Each search
runs forward from where the last one ended (a part's header is looked for up to the next
delimiter), so the cost is linear in the message for every nesting level.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace

from encimap.mimeinfo.content import media_type, param
from encimap.mimeinfo.headers import parse_headers, split_header

MAX_DEPTH = 99
# A longer boundary is not looked for (its multipart has no parts): RFC 2046 allows 70
# characters, and no delimiter line of mail that came over SMTP can hold more than this.
MAX_BOUNDARY = 998

Spans = dict[int, list[tuple[int, int]]]  # a multipart's body start -> its parts' spans


@dataclass(frozen=True, slots=True)
class _Delimiter:
    start: int  # where its `--` is
    end: int  # after its line break
    level: int  # which open boundary it is (0: the outermost)
    closing: bool
    # the part before it ends no earlier than this: a closing delimiter line right before it
    # keeps its own line break
    floor: int = 0


def multipart_spans(data: bytes) -> Spans:
    """For every multipart of `data`, keyed by where its body starts, the [start, end) spans of
    its parts (an end leaves out the line break before the delimiter that ends the part)."""
    spans: Spans = {}
    _entity(data, 0, 0, False, [], spans, None)
    return spans


def _entity(
    data: bytes,
    start: int,
    depth: int,
    digest_child: bool,
    stack: list[bytes],
    spans: Spans,
    found: _Delimiter | None,
) -> _Delimiter | None:
    """Read the part (or message) at `start` whose end the caller found (`found`: the first
    delimiter line from `start`, None if there is none); return the delimiter line that ends
    it, None if the message ends first."""
    limit = len(data) if found is None else found.start
    # the header is looked for up to the delimiter only: cost per part, not per message
    header_end, body_start = split_header(data, start, limit)
    if header_end == limit:  # no empty line before the delimiter: the part is all header
        return found
    headers = parse_headers(data, start, header_end)
    main, sub, params = media_type(headers, digest_child)
    if depth >= MAX_DEPTH:
        return found
    if main.lower() == "multipart":
        boundary = param(params, "boundary")
        if boundary is not None and len(boundary) <= MAX_BOUNDARY:  # "" is one, too
            digest = sub.lower() == "digest"
            return _multipart(data, body_start, depth, digest, boundary, stack, spans)
    elif (main, sub) == ("message", "rfc822"):
        return _entity(data, body_start, depth + 1, False, stack, spans, found)
    return found


def _multipart(
    data: bytes,
    body_start: int,
    depth: int,
    digest: bool,
    boundary: str,
    stack: list[bytes],
    spans: Spans,
) -> _Delimiter | None:
    stack.append(boundary.encode("utf-8", "replace"))
    level = len(stack) - 1
    children = spans.setdefault(body_start, [])
    found = _next(data, body_start, stack)
    try:
        while found is not None and found.level == level:
            if found.closing:  # the epilogue runs to a delimiter of a multipart around it
                stack.pop()
                after = _next(data, found.end, stack)
                return None if after is None else replace(after, floor=found.end)
            part_start = found.end
            found = _next(data, part_start, stack)
            found = _entity(data, part_start, depth + 1, digest, stack, spans, found)
            children.append((part_start, _part_end(data, part_start, found)))
        return found  # the message ended, or a delimiter of a multipart around this one
    finally:
        if len(stack) > level:
            del stack[level:]


def _part_end(data: bytes, part_start: int, found: _Delimiter | None) -> int:
    if found is None:
        return len(data)
    stop = found.start
    if stop > part_start and data[stop - 1] == 10:
        stop -= 1
        if stop > part_start and data[stop - 1] == 13:
            stop -= 1
    return max(stop, part_start, found.floor)


def _next(data: bytes, start: int, stack: list[bytes]) -> _Delimiter | None:
    """The first delimiter line of an open boundary at or after the line start `start`."""
    if not stack:
        return None
    at_start, after_line_feed = _patterns(tuple(stack))
    match = at_start.match(data, start)
    if match is not None:
        line = start
    else:
        match = after_line_feed.search(data, start)
        if match is None:
            return None
        line = match.start() + 1
    boundary = match[1]
    level = len(stack) - 1 - stack[::-1].index(boundary)  # the innermost of equal ones
    after = line + 2 + len(boundary)
    closing = data.startswith(b"--", after)
    line_end = data.find(b"\n", after)
    return _Delimiter(line, len(data) if line_end < 0 else line_end + 1, level, closing)


@functools.lru_cache(maxsize=256)
def _patterns(stack: tuple[bytes, ...]) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """`--` and any of the boundaries, longest first (the regex takes the first that matches),
    at a position and after a line feed (a literal the regex engine scans for quickly)."""
    alternatives = b"|".join(re.escape(b) for b in sorted(set(stack), key=len, reverse=True))
    return re.compile(b"--(" + alternatives + b")"), re.compile(b"\n--(" + alternatives + b")")
