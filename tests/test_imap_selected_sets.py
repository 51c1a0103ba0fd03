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
def test_runs_are_the_maximal_stretches_of_consecutive_uids_recent_or_not(uids, data):
    """Each run names consecutive UIDs at consecutive sequence numbers, all \\Recent to the
    session or none, and no two neighbouring runs could be one."""
    selected = _selected(uids)
    pick = st.sets(st.sampled_from(uids)) if uids else st.just(set())
    subset = sorted(data.draw(pick))
    selected.recent = data.draw(pick)
    expected: list[tuple[int, int, int, bool]] = []
    for uid in subset:
        seq, recent = bisect.bisect_left(uids, uid) + 1, uid in selected.recent
        last = expected[-1] if expected else None
        if last and last[1] + 1 == uid and last[3] == recent:
            expected[-1] = (last[0], uid, last[2], recent)
        else:
            expected.append((uid, uid, seq, recent))
    assert list(zip(*selected.runs(subset), strict=True)) == expected
