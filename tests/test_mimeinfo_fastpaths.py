"""The fast paths in encimap.mimeinfo give exactly what the general code gives.

Each fast path answers only for the inputs it recognises and leaves the rest to the general
code; these properties compare the two on generated inputs that mix plain values with the
characters that matter (quotes, backslashes, CR/LF, tabs, NUL, 8-bit, specials).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from encimap import mimeinfo

TRICKY = [*'aZ09 -_.@<>,;:()[]"\\\t\r\n\x00\x7f\x80\xa0é\u2028', "=?utf-8?q?x?=", "  "]
tricky_text = st.lists(st.sampled_from(TRICKY), max_size=25).map("".join)
any_text = st.one_of(tricky_text, st.text(max_size=25))


@settings(max_examples=500)
@given(any_text)
def test_nstring_fast_path_equals_general_code(value):
    assert mimeinfo.nstring(value) == mimeinfo._quoted_or_literal(value)


@settings(max_examples=500)
@given(any_text)
def test_human_string_fast_path_equals_general_code(value):
    assert mimeinfo.human_string(value) == mimeinfo._cleaned_human_string(value)


def test_plain_values_take_the_fast_paths():
    assert mimeinfo._QUOTABLE_AS_IS("<20240603.12345@bench.test>")
    assert mimeinfo._HUMAN_AS_IS("Sender Person")
    assert not mimeinfo._QUOTABLE_AS_IS('say "hi"')
    assert not mimeinfo._HUMAN_AS_IS("two  spaces")
    assert mimeinfo.nstring("smime.p7m") == '"smime.p7m"'
    assert mimeinfo.human_string("Sender Person") == '"Sender Person"'
