"""The header scanner the From: check and the trace-header strip share: any input is read
one way or refused, a read block joins back to the same bytes, cost linear in the input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encimap.submission import headers
from tests.opcount import assert_linear

LIMITED = settings(max_examples=200, deadline=None)
names = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":"), min_size=1
)
values = st.text(st.characters(blacklist_characters="\r\n\x00"), max_size=30).map(
    lambda text: text.encode("utf-8", "surrogatepass")
)
continuations = st.lists(
    st.tuples(st.sampled_from([b" ", b"\t"]), values).map(b"".join), max_size=2
)
fields = st.tuples(names, values, continuations).map(
    lambda f: f[0].encode() + b":" + f[1] + b"\r\n" + b"".join(c + b"\r\n" for c in f[2])
)
bodies = st.binary(max_size=40).map(lambda body: b"\r\n" + body)


@LIMITED
@given(st.lists(fields, max_size=6), bodies)
def test_well_formed_blocks_read_and_join_back_byte_for_byte(block, body):
    message = b"".join(block) + body
    scanned, rest = headers.scan(message)
    assert len(scanned) == len(block)
    assert headers.join(scanned, rest) == message


@LIMITED
@given(st.binary(max_size=120))
def test_any_bytes_are_read_or_refused(message):
    try:
        scanned, rest = headers.scan(message)
    except headers.MalformedHeader:
        return
    assert headers.join(scanned, rest) == message
    for field in scanned:
        assert b"\r" not in field.raw[:-2].replace(b"\r\n", b"")
        assert field.name and ":" not in field.name and " " not in field.name
    headers.from_addresses(scanned)  # never raises


@LIMITED
@given(st.lists(fields, max_size=4), st.lists(fields, max_size=4), bodies)
def test_every_trace_header_spelling_is_dropped(before, after, body):
    forged = b"x-ENCIMAP-auth: forged\r\n\tcontinued\r\n"
    scanned, rest = headers.scan(b"".join(before) + forged + b"".join(after) + body)
    kept = headers.without_auth_header(scanned)
    assert b"forged" not in headers.join(kept, rest)
    assert len(kept) == len(before) + len(after) - sum(
        f.split(b":", 1)[0].lower() == b"x-encimap-auth" for f in before + after
    )


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (b"From: A <a@x.test>\r\n", ["a@x.test"]),
        (b"From: a@x.test, b@y.test\r\n", ["a@x.test", "b@y.test"]),
        (b"From: A <a@x.test>\r\nfrom: a@x.test\r\n", None),  # exactly one From: field
        (b"From: " + b"(" * 990 + b"\r\n", None),  # the email package would recurse too deep
        (b'From: "ceo@bank.test" <a@x.test>\r\n', ["a@x.test"]),
        (b"Subject: no from\r\n", None),
        (b"From: a@x.test <ceo@bank.test>\r\n", None),  # read two ways: refused
        (b"From:\r\n", None),
        (b"From: <ceo@bank.test\r\n", None),
        (b"From: " + b"a" * 1000 + b"@x.test\r\n", None),
        (b"From: g:;a@x.test\r\n", None),  # the email package: AttributeError
        (b"From: a:b;a:b;\r\n", None),
    ],
)
def test_from_addresses(block, expected):
    scanned, _ = headers.scan(block + b"\r\nbody\r\n")
    assert headers.from_addresses(scanned) == expected


ADDRESS_TOKENS = ["a", "b@x.test", "@", ":", ";", ",", "<", ">", '"', "\\", "(", ")", " ", ".",
                  "[", "]", "g", "=?utf-8?q?a?=", "=?x?b?a?=", "\t", "\xe9", "\udcff"]  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(ADDRESS_TOKENS), min_size=1, max_size=12).map("".join))
def test_any_from_value_is_read_or_refused(value):
    """Whatever the email package's parser raises on a From: value (IndexError, TypeError,
    AttributeError, UnboundLocalError...) is a From: that cannot be read, not an error of
    the session (which answered 451 and logged an error, retried by the client forever)."""
    field = headers.Field("From", b"From: " + value.encode("utf-8", "surrogateescape") + b"\r\n")
    found = headers.from_addresses([field])
    assert found is None or all(isinstance(address, str) for address in found)


@pytest.mark.parametrize(
    "block",
    [
        b"From : a@x.test\r\n",
        b"From\t: a@x.test\r\n",
        b"no colon here\r\n",
        b": empty name\r\n",
        b" leading continuation\r\n",
        b"X: a\nFrom: b@x.test\r\n",
        b"X: a\rb\r\n",
        b"X: a\x00b\r\n",
        b"X: no final line end",
        b"Gr\xc3\xbc\xc3\x9fe: 8-bit name\r\n",
    ],
)
def test_refused_blocks(block):
    with pytest.raises(headers.MalformedHeader):
        headers.scan(block + b"\r\nbody\r\n" if block.endswith(b"\r\n") else block)


@pytest.mark.parametrize(
    "build",
    [
        lambda n: b"X-A: b\r\n" * n + b"\r\nbody\r\n",
        lambda n: b"X-A: b\r\n" + b"\tcontinued\r\n" * n + b"\r\n",
        lambda n: b"X: " + b"a" * n + b"\r\n" + b"\r\nbody" * n,
        lambda n: b"X-A: b\r\n" * n + b"not a field\r\n",
        lambda n: b"X-A: " + b"\r" * n,
    ],
)
def test_cost_is_linear_in_the_input(build):
    assert_linear(build, headers.scan, 100)
    assert_linear(build, lambda m: headers.without_auth_header(headers.scan(m)[0]), 100)
