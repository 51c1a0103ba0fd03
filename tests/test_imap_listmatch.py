"""LIST pattern matching: the same answers as a plain reference matcher, at a cost linear in
the name (counted in matcher steps, never on the clock)."""

from __future__ import annotations

import functools

from hypothesis import given, settings
from hypothesis import strategies as st

from encimap.imap.listmatch import Matcher, tokens

pattern_text = st.text(alphabet="ab/%*", max_size=10)
name_text = st.text(alphabet="ab/", max_size=10)


def reference(pattern: str, name: str) -> bool:
    """RFC 3501 6.3.8 read literally: try every split (fine for short inputs)."""
    if pattern[:5].upper() == "INBOX" and name[:5].upper() == "INBOX":
        pattern, name = "INBOX" + pattern[5:], "INBOX" + name[5:]

    @functools.cache
    def at(p: int, n: int) -> bool:
        if p == len(pattern):
            return n == len(name)
        token = pattern[p]
        if token in "*%":
            end = n
            while True:
                if at(p + 1, end):
                    return True
                if end == len(name) or (token == "%" and name[end] == "/"):
                    return False
                end += 1
        return n < len(name) and name[n] == token and at(p + 1, n + 1)

    return at(0, 0)


@settings(max_examples=400, deadline=None)
@given(pattern_text, name_text)
def test_matches_like_the_reference(pattern, name):
    assert Matcher(pattern).match(name) == reference(pattern, name)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["INBOX", "inbox", "Inbox", ""]),
    st.text(alphabet="xX/%*", max_size=6),
    st.sampled_from(["INBOX", "inbox", "iNbOx", ""]),
    st.text(alphabet="xX/", max_size=6),
)
def test_inbox_cases_match_like_the_reference(pattern_head, pattern_tail, name_head, name_tail):
    pattern, name = pattern_head + pattern_tail, name_head + name_tail
    assert Matcher(pattern).match(name) == reference(pattern, name)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["INBOX", "inbox", "InBoX"]), st.sampled_from(["", "/a", "%", "*"]))
def test_inbox_is_case_insensitive(head, tail):
    assert Matcher(head + tail).match("INBOX" + tail.replace("%", "").replace("*", ""))


def test_wildcard_runs_collapse():
    assert tokens("%%%%a**%%b%*") == ["%", "a", "*", "b", "*"]
    assert "".join(tokens("%" * 45 + "X")) == "%X"


def _cost(pattern: str, name: str) -> int:
    matcher = Matcher(pattern)
    matcher.match(name)
    return matcher.steps


@settings(max_examples=60, deadline=None)
@given(
    st.text(alphabet="ab/%*", min_size=1, max_size=8),
    st.text(alphabet="ab/", min_size=1, max_size=8),
)
def test_ten_times_the_input_costs_at_most_ten_times_the_steps(pattern, name):
    """At most one step per pattern and per name character (a mismatch may stop earlier),
    so ten times the input costs at most ten times the steps the input may cost."""
    size = len(pattern) + len(name)
    assert _cost(pattern, name) <= size + 1
    assert _cost(pattern * 10, name * 10) <= 10 * size + 1
    # a name the pattern matches is stepped to its end: exactly linear
    matched = name.replace("/", "")
    assert _cost("*", matched) == 1 + len(matched)
    assert _cost("*", matched * 10) == 1 + 10 * len(matched)


def test_the_reported_freeze_is_a_handful_of_steps():
    """`LIST "" "%%%%...(45 %)...X"` froze the process for seconds (a backtracking regex)."""
    pattern = "%" * 45 + "X"
    name = "a" * 60
    assert not Matcher(pattern).match(name)
    assert _cost(pattern, name) <= len(pattern) + len(name) + 1
    # Alternating wildcards and literals do not collapse; still one step per character.
    pattern = "%a" * 40 + "X"
    assert _cost(pattern, "a" * 200) <= len(pattern) + 200 + 1
    pattern = "*a" * 40 + "X"
    assert _cost(pattern, "a" * 200) <= len(pattern) + 200 + 1
