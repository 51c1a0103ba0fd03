"""The ADDTO/REMOVEFROM pairs of a kept SORT result, applied as RFC 5267 4.3.3/4.3.4 tell a
client to (each pair in order, at its context position), turn the client's list into the
server's, whatever messages come and go; PARTIAL windows pick the positions asked for."""

from __future__ import annotations

from datetime import UTC

from hypothesis import given, settings
from hypothesis import strategies as st

from encimap.imap.commands.context import (
    _SearchResult,
    _SortResult,
    partial_range,
    partial_results,
    return_options,
)
from encimap.imap.commands.sort import _descending


def _apply_removals(client: list[int], pairs: list[tuple[int, list[int]]]) -> None:
    for position, uids in pairs:
        assert client[position - 1 : position - 1 + len(uids)] == uids, (client, pairs)
        del client[position - 1 : position - 1 + len(uids)]


def _apply_additions(client: list[int], pairs: list[tuple[int, list[int]]]) -> None:
    for position, uids in pairs:
        assert 1 <= position <= len(client) + 1, (client, pairs)
        client[position - 1 : position - 1] = uids


async def _never(_uids):  # the sorter is only used by the session's report
    raise AssertionError


@settings(max_examples=300, deadline=None)
@given(
    keys=st.dictionaries(st.integers(1, 60), st.integers(0, 5), min_size=0, max_size=40),
    steps=st.lists(
        st.tuples(st.sets(st.integers(1, 60), max_size=10), st.sets(st.integers(1, 60))),
        max_size=8,
    ),
)
def test_sort_updates_keep_the_client_list_equal_to_the_server_result(keys, steps):
    # a message's sort key: a small number (many ties) then its UID, as sort.sort_key builds
    def entry(uid: int) -> tuple[int, int]:
        return (keys.get(uid, uid % 3), uid)

    result = _SortResult({uid: entry(uid) for uid in keys}, _never)
    client = [uid for _key, uid in sorted(entry(uid) for uid in keys)]
    for gone, come in steps:
        removed = sorted(uid for uid in gone if uid in result)
        if removed:
            _apply_removals(client, result.remove(removed))
        added = sorted(uid for uid in come if uid not in result)
        if added:
            _apply_additions(client, result.add(added, {uid: entry(uid) for uid in added}))
        assert client == [key[-1] for key in result.order]
        assert client == sorted(client, key=entry)


def test_search_updates_are_in_mailbox_order_at_position_zero():
    result = _SearchResult([2, 5, 9])
    assert result.add([3, 11], {}) == [(0, [3, 11])]
    assert result.remove([2, 9]) == [(0, [2, 9])]
    assert list(result.uids) == [3, 5, 11] and 5 in result and 2 not in result


def test_partial_windows():
    numbers = [10, 20, 30, 40, 50]
    assert partial_results(numbers, partial_range("2:3")) == [20, 30]
    assert partial_results(numbers, partial_range("3:2")) == [20, 30]
    assert partial_results(numbers, partial_range("4:100")) == [40, 50]
    assert partial_results(numbers, partial_range("6:7")) == []
    assert partial_results(numbers, partial_range("-1:-2")) == [40, 50]
    assert partial_results(numbers, partial_range("-2:-1")) == [40, 50]
    assert partial_results(numbers, partial_range("-5:-9")) == [10]
    assert partial_results(numbers, partial_range("-6:-9")) == []
    assert partial_range("4294967295:1") == (1, 4294967295)
    assert return_options([]).plain == ["ALL"]
    assert return_options(["CONTEXT"]).plain == ["ALL"]
    assert return_options(["UPDATE"]).plain == [] and return_options(["UPDATE"]).update
    assert return_options(["COUNT", "PARTIAL", "-1:-5"]).partial == (-1, -5)


@settings(max_examples=1000, deadline=None)
@given(
    st.one_of(
        st.tuples(st.text(max_size=6), st.text(max_size=6)),
        st.tuples(st.integers(), st.integers()),
        st.tuples(
            st.datetimes(timezones=st.just(UTC)),
            st.datetimes(timezones=st.just(UTC)),
        ),
    )
)
def test_reversed_sort_keys_order_the_other_way_round(pair):
    first, second = pair
    assert (first < second) == (_descending(first) > _descending(second))
    assert (first == second) == (_descending(first) == _descending(second))
