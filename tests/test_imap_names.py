"""Mailbox names a client may create: modified UTF-7 (RFC 3501 5.1.3) and the size limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encimap.imap import names


@pytest.mark.parametrize(
    ("wire", "text"),
    [
        ("INBOX", "INBOX"),
        ("&-", "&"),
        ("Entw&APw-rfe", "Entwürfe"),
        ("&ZeVnLIqe-", "日本語"),
        ("~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語"),
        ("&2D3eAA-", "\U0001f600"),
    ],
)
def test_valid_names_decode_and_encode_back(wire, text):
    assert names.decode(wire) == text
    assert names.encode(text) == wire
    names.check_new(wire, max_length=512, max_depth=16)


@pytest.mark.parametrize(
    "wire",
    [
        "a&b",  # "&" not followed by "-" ... and no terminator
        "&Jjo",  # unterminated
        "&Jj!-",  # not base64
        "&AGE-",  # printable ASCII ("a") inside a shift
        "&Jjo-&Jjo-",  # two shifts in a row: the canonical form is one
        "&Jjp-",  # non-zero padding bits
        "&2D0-",  # unpaired surrogate
        "&A-",  # truncated
        "Entwürfe",  # raw 8-bit
        "tab\there",
    ],
)
def test_invalid_names_are_refused(wire):
    with pytest.raises(names.InvalidName) as refused:
        names.check_new(wire, max_length=512, max_depth=16)
    assert not refused.value.limit


def test_limits():
    names.check_new("a" * 20, max_length=20, max_depth=16)
    with pytest.raises(names.InvalidName) as refused:
        names.check_new("a" * 21, max_length=20, max_depth=16)
    assert refused.value.limit
    names.check_new("/".join("a" * 16), max_length=512, max_depth=16)
    with pytest.raises(names.InvalidName) as refused:
        names.check_new("/".join("a" * 17), max_length=512, max_depth=16)
    assert refused.value.limit


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30))
def test_any_text_round_trips(text):
    wire = names.encode(text)
    assert wire.isascii()
    assert names.decode(wire) == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="&-AGEZabz+,/Jjo09\u00fc", max_size=20))
def test_arbitrary_names_are_valid_or_refused_never_crash(wire):
    try:
        names.check_new(wire, max_length=512, max_depth=16)
    except names.InvalidName:
        return
    assert names.encode(names.decode(wire)) == wire
