"""The fast paths in encimap.mimeinfo give exactly what the general code gives.

Each fast path answers only for the inputs it recognises and leaves the rest to the general
code; these properties compare the two on generated inputs that mix plain values with the
characters that matter (quotes, backslashes, CR/LF, tabs, NUL, 8-bit, specials).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from encimap import mimeinfo
from encimap.mimeinfo import addresses, dates, strings

TRICKY = [*'aZ09 -_.@<>,;:()[]"\\\t\r\n\x00\x7f\x80\xa0é\u2028', "=?utf-8?q?x?=", "  "]
tricky_text = st.lists(st.sampled_from(TRICKY), max_size=25).map("".join)
any_text = st.one_of(tricky_text, st.text(max_size=25))
HEADER_PIECES = [b"\r", b"\n", b"\r\n", b"\t", b" ", b":", b"a", b"From", b"To", b"\xc3", b"\xa9"]
header_bytes = st.lists(st.sampled_from(HEADER_PIECES), max_size=30).map(b"".join)


@settings(max_examples=500)
@given(any_text)
def test_nstring_fast_path_equals_general_code(value):
    assert mimeinfo.nstring(value) == strings._quoted_or_literal(value)


@settings(max_examples=500)
@given(any_text)
def test_human_string_fast_path_equals_general_code(value):
    assert mimeinfo.human_string(value) == strings._cleaned_human_string(value)


def test_plain_values_take_the_fast_paths():
    assert strings._QUOTABLE_AS_IS("<20240603.12345@bench.test>")
    assert strings._human_as_is("Sender Person")
    assert not strings._QUOTABLE_AS_IS('say "hi"')
    assert not strings._human_as_is("two  spaces")
    assert mimeinfo.nstring("smime.p7m") == '"smime.p7m"'
    assert mimeinfo.human_string("Sender Person") == '"Sender Person"'


def _split_by_spec(data: bytes, start: int, end: int) -> tuple[int, int]:
    """The header ends at the first empty line (CRLF or LF endings, mixed)."""
    if data.startswith((b"\r\n", b"\n"), start):
        body_start = start + (2 if data.startswith(b"\r\n", start) else 1)
        if body_start <= end:
            return start, body_start
    match = re.compile(rb"\r?\n\r?\n").search(data, start, end)
    return (end, end) if match is None else match.span()


@settings(max_examples=1000)
@given(header_bytes, st.integers(0, 4), st.integers(0, 40))
def test_split_header_finds_the_first_empty_line(data, start, length):
    start = min(start, len(data))
    end = min(len(data), start + length)
    assert mimeinfo.split_header(data, start, end) == _split_by_spec(data, start, end)


def _fields_by_spec(block: bytes) -> list[tuple[str, str]]:
    """A field runs from its `name:` at a line start to the next one, or to a line that is
    not folded (no leading white space); its final line break, the blanks before the first
    line's text and its other line breaks (CRLF or LF) removed, a bare CR kept."""
    matches = list(re.finditer(rb"(?m)^([^:\s]+)[ \t]*:", block))
    ends = [match.start() for match in matches[1:]]
    ends.append(len(block))

    def value(text: bytes) -> str:
        text = re.split(rb"\n(?=[^ \t])", text)[0]
        text = re.sub(rb"\r?\n?\Z", b"", text).lstrip(b" \t")
        return strings.decode_raw(re.sub(rb"\r?\n", b"", text))

    return [
        (match[1].decode("latin-1").lower(), value(block[match.end() : end]))
        for match, end in zip(matches, ends[: len(matches)], strict=True)
    ]


def test_header_bytes_that_are_not_utf8_are_served_as_they_are():
    text = strings.decode_raw(b"J\xf6rg \xc3\xa4 \x80\xbf\xc0\xff")
    assert text.startswith("J") and "\u00e4" in text
    assert strings.wire(text) == b"J\xf6rg \xc3\xa4 \x80\xbf\xc0\xff"
    assert strings.literal(strings.decode_raw(b"J\xf6rg")) == "{4}\r\n" + strings.decode_raw(
        b"J\xf6rg"
    )


@settings(max_examples=1000)
@given(header_bytes)
def test_parse_headers_and_first(block):
    headers = mimeinfo.parse_headers(b"xx" + block + b"yy", 2, 2 + len(block))
    assert headers.fields == _fields_by_spec(block)
    for name in ("from", "From", "to", "a", "missing"):
        expected = next((v for k, v in headers.fields if k == name.lower()), None)
        assert headers.first(name) == expected


atoms = st.sampled_from(["a", "Bob", "x-y", "o'k", "=?utf-8?q?x?=", "a+b", "Z9", "{}|~"])
dot_atoms = st.lists(atoms, min_size=1, max_size=3).map(".".join)
addr_specs = st.builds(lambda local, domain: f"{local}@{domain}", dot_atoms, dot_atoms)
blanks = st.sampled_from(["", " ", "\t", "  "])
names = st.lists(atoms, min_size=1, max_size=3).flatmap(
    lambda words: st.builds(lambda gap: gap.join(words), st.sampled_from([" ", "  ", "\t", " \t"]))
)
angle_addrs = st.builds(
    lambda name, gap, spec: f"{name}{gap}<{spec}>",
    st.one_of(st.just(""), names),
    blanks,
    addr_specs,
)
plain_mailboxes = st.builds(
    lambda a, box, b: a + box + b, blanks, st.one_of(addr_specs, angle_addrs), blanks
)
plain_lists = st.builds(
    lambda boxes, trailing: ",".join(boxes) + trailing,
    st.lists(plain_mailboxes, min_size=1, max_size=4),
    st.sampled_from(["", ","]),
)
# What the fast path must leave alone: inserted anywhere in a plain list
ODD_PIECES = ['"', "(c)", "\\", ":", ";", "[1.2.3.4]", "@", "<", ">", "é", "\x00", "\r\n"]
# ... and pieces that may leave it plain: the edges of what the fast path accepts
EDGE_PIECES = [" ", "\t", ",", ",,", ".", "a", "a@b", "<a@b>"]


@st.composite
def damaged_lists(draw):
    text = draw(plain_lists)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(ODD_PIECES + EDGE_PIECES)) + text[at:]
    return text


@settings(max_examples=500)
@given(plain_lists)
def test_plain_address_lists_take_the_fast_path(value):
    simple = addresses._simple_addresses(value)
    assert simple is not None
    assert simple == addresses._parse_address_list(value)


@settings(max_examples=1500)
@given(st.one_of(damaged_lists(), tricky_text))
def test_address_fast_path_equals_the_tokenizer_or_declines(value):
    simple = addresses._simple_addresses(value)
    if simple is not None:
        assert simple == addresses._parse_address_list(value)
    assert mimeinfo.parse_addresses(value) == addresses._parse_address_list(value)


def _date_by_stdlib(value: str) -> tuple[datetime, timedelta | None] | None:
    try:
        found = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return found, found.utcoffset()


two_digits = st.integers(0, 61).map("{:02d}".format)
plain_dates = st.builds(
    "{}{} {} {} {}:{}:{} {}".format,
    st.sampled_from(["", "Mon, ", "Sun, "]),
    st.integers(0, 32).map(str) | two_digits,
    st.sampled_from(["Jan", "Feb", "Jun", "Dec"]),
    st.integers(1000, 9999).map(str),
    two_digits,
    two_digits,
    two_digits,
    st.integers(-2500, 2500).map("{:+05d}".format) | st.just("-0000"),
)
# forms the fast path leaves to the stdlib
other_dates = st.builds(
    "{}{} {} {} {}:{}:{} {}".format,
    st.sampled_from(["", "Mon, ", "mon, ", "Mon,", "Xyz, "]),
    st.integers(0, 99).map(str),
    st.sampled_from(["Jun", "jun", "JUN", "Foo"]),
    st.sampled_from(["0099", "99", "2024", "12024"]),
    st.integers(0, 99).map(str),
    st.integers(0, 99).map(str),
    st.integers(0, 99).map(str),
    st.sampled_from(["+0000", "-0000", "+0130", "GMT", "EST", "", "+1", "-00000"]),
)


@settings(max_examples=1000)
@given(plain_dates)
def test_plain_dates_take_the_fast_path_with_the_stdlib_result(value):
    assert dates._PLAIN_DATE(value)
    found = dates.parse_date(value)
    assert (found and (found, found.utcoffset())) == _date_by_stdlib(value)


@settings(max_examples=1000)
@given(other_dates | tricky_text)
def test_other_dates_get_the_stdlib_result(value):
    found = dates.parse_date(value)
    assert (found and (found, found.utcoffset())) == _date_by_stdlib(value)


def test_common_dates_take_the_fast_path():
    assert dates._PLAIN_DATE("Mon, 3 Jun 2024 10:00:00 +0000")
    assert dates._PLAIN_DATE("3 Jun 2024 10:00:00 -0130")
    assert dates.parse_date("Mon, 3 Jun 2024 10:00:00 -0000").tzinfo is None
