"""The selected mailbox's set arithmetic, which works on the packed UID array without a Python
step per message, against the per-message definitions it replaces (hypothesis)."""

from __future__ import annotations

import bisect
from array import array

from hypothesis import given
from hypothesis import strategies as st

from encimap.imap.parser import SequenceSet
from encimap.imap.selected import Selected

views = st.lists(st.integers(1, 300), max_size=120, unique=True).map(sorted)
ranges = st.lists(
    st.tuples(st.none() | st.integers(1, 320), st.none() | st.integers(1, 320)),
    min_size=1,
    max_size=6,
)


def _selected(uids: list[int]) -> Selected:
    selected = Selected.__new__(Selected)
    selected.uids = array("I", uids)
    return selected


@given(views, ranges)
def test_uid_and_sequence_sets_name_what_they_did(uids, chosen):
    selected = _selected(uids)
    sequence = SequenceSet(tuple(chosen))
    if uids:
        wanted = sorted(
            {uid for low, high in sequence.resolve(uids[-1]) for uid in uids if low <= uid <= high}
        )
    else:
        wanted = []
    assert selected.by_uid(sequence) == wanted
    count = len(uids)
    by_number = sorted(
        {
            uids[n - 1]
            for low, high in sequence.resolve(count)
            for n in range(low, high + 1)
            if 1 <= n <= count
        }
    )
    assert selected.by_sequence(sequence) == by_number


@given(views, st.data())
def test_runs_are_the_maximal_stretches_of_consecutive_uids(uids, data):
    selected = _selected(uids)
    subset = sorted(data.draw(st.sets(st.sampled_from(uids)) if uids else st.just(set())))
    lows, highs, seqs = selected.runs(subset)
    expected: list[tuple[int, int, int]] = []
    for uid in subset:
        if expected and expected[-1][1] + 1 == uid:
            expected[-1] = (expected[-1][0], uid, expected[-1][2])
        else:
            expected.append((uid, uid, bisect.bisect_left(uids, uid) + 1))
    assert list(zip(lows, highs, seqs, strict=True)) == expected
