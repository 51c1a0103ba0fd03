"""Properties of the IMAP command parser: any input ends in a value or in ParseError (the
error the session answers with BAD), never another exception, and parsing costs a number of
steps linear in the input (counted as executed lines of the parser module, not on the clock).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encimap.imap import parser

TOKENS = [
    b" ", b"(", b")", b"[", b"]", b"<", b">", b".", b"*", b"%", b":", b",", b'"', b"\\",
    b"{", b"}", b"+", b"\r\n", b"0", b"1", b"42", b"4294967296", b"NIL", b"UID", b"FETCH",
    b"BODY", b"BODY.PEEK", b"HEADER.FIELDS", b"MIME", b"TEXT", b"SEARCH", b"OR", b"NOT",
    b"FROM", b"SINCE", b"1-Jan-2024", b"CHARSET", b"UTF-8", b"RETURN", b"\\Seen", b"\x00",
    b"\xff", b"{3}\r\nabc", b"{5+}\r\nab", b"{99999999999999999999}\r\n",
]  # fmt: skip

adversarial = st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)
anything = st.one_of(st.binary(max_size=200), adversarial)


def _args(read: Callable[[parser.Reader], Any]) -> Callable[[bytes], Any]:
    def run(data: bytes) -> Any:
        reader = parser.Reader(data)
        value = read(reader)
        reader.end()
        return value

    return run


ENTRY_POINTS: dict[str, Callable[[bytes], Any]] = {
    "head": parser.parse_head,
    "fetch": _args(parser.parse_fetch_items),
    "search": _args(parser.parse_search),
    "sequence": _args(lambda r: r.sequence_set()),
    "astring": _args(lambda r: r.text_astring()),
    "mailbox": _args(lambda r: r.mailbox()),
    "list_mailbox": _args(lambda r: r.list_mailbox()),
    "flags": _args(lambda r: r.flag_list()),
    "date_time": _args(lambda r: r.date_time()),
    "date": _args(lambda r: r.date()),
    "literal_announcement": parser.literal_announcement,
    "guess_tag": parser.guess_tag,
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(ENTRY_POINTS)), anything)
def test_any_input_parses_or_raises_parse_error(entry, data):
    try:
        ENTRY_POINTS[entry](data)
    except parser.ParseError:
        pass


def _steps(function: Callable[[bytes], Any], data: bytes) -> int:
    """Lines of encimap/imap/parser.py executed while `function(data)` runs."""
    count = 0
    target = parser.__file__

    def tracer(frame: Any, event: str, _arg: Any) -> Any:
        nonlocal count
        if frame.f_code.co_filename != target:
            return None
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        function(data)
    except parser.ParseError:
        pass
    finally:
        sys.settrace(None)
    return count


# Inputs that grow by repeating a valid piece: (entry point, prefix, repeated piece, suffix).
GROWING = {
    "search keys": ("search", b"", b"OR FROM a NOT SEEN ", b"ALL"),
    "nested search": ("search", b"", b"(", b"ALL"),
    "fetch items": ("fetch", b"(", b"BODY.PEEK[1.2.HEADER.FIELDS (From To)]<0.10> ", b"UID)"),
    "sequence set": ("sequence", b"", b"1:4,7,", b"*"),
    "quoted string": ("astring", b'"', b'ab\\"c', b'"'),
    "literal": ("astring", b"{%d}\r\n", b"x", b""),
    "atom": ("astring", b"", b"abc", b""),
    "list pattern": ("list_mailbox", b"", b"%*a/", b""),
    "flags": ("flags", b"(", b"\\Seen $Label ", b"\\Draft)"),
    "command line": ("head", b"tag ", b"X", b" rest"),
}


def _input(prefix: bytes, piece: bytes, suffix: bytes, times: int) -> bytes:
    body = piece * times
    if b"%d" in prefix:
        prefix = prefix % len(body)
    return prefix + body + suffix


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(GROWING)), st.integers(min_value=1, max_value=20))
def test_ten_times_the_input_costs_at_most_about_ten_times_the_steps(case, times):
    entry, prefix, piece, suffix = GROWING[case]
    function = ENTRY_POINTS[entry]
    small = _steps(function, _input(prefix, piece, suffix, times))
    large = _steps(function, _input(prefix, piece, suffix, times * 10))
    assert large <= 10 * small + 50, (case, times, small, large)


def test_search_keys_are_counted_against_the_limit():
    program = b" ".join([b"SEEN"] * 10)
    parser.parse_search(parser.Reader(program), max_keys=10)
    try:
        parser.parse_search(parser.Reader(program + b" SEEN"), max_keys=10)
    except parser.TooManyKeys:
        pass
    else:
        raise AssertionError("11 keys passed a limit of 10")
