"""One query for many sessions: when a mailbox changes, every session that has it selected
wakes at once and asks the same question (the messages above the UID it knows, the flags of
the messages that changed). Identical reads under way are shared: the first starts the query,
the others await its answer, so a change costs one query per mailbox, not one per session.

A caller joins a read only if no event of the mailbox was dispatched since that read began
(`generation` is part of the key): the read then saw every change the caller was told of. For
the same reason an answer stays valid, and is kept, until the mailbox's next event: callers
that ask one after the other (the idle sessions reported in turn) share it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

_in_flight: dict[Hashable, asyncio.Future[Any]] = {}
# Per selected mailbox: the sessions that have it selected, the last event dispatched (every
# subscriber is handed the same object), the number dispatched so far and the answers read
# since the last one.
_mailboxes: dict[int, list[Any]] = {}


def selected(mailbox_id: int) -> None:
    _mailboxes.setdefault(mailbox_id, [0, None, 0, {}])[0] += 1


def unselected(mailbox_id: int) -> None:
    entry = _mailboxes.get(mailbox_id)
    if entry is not None:
        entry[0] -= 1
        if entry[0] <= 0:
            del _mailboxes[mailbox_id]


def selected_mailboxes() -> set[int]:
    """The mailboxes some session of this process has selected."""
    return set(_mailboxes)


def note(mailbox_id: int, event: object) -> None:
    """Count an event of the mailbox once, however many sessions are handed it."""
    entry = _mailboxes.get(mailbox_id)
    if entry is not None and event is not entry[1]:
        entry[1] = event
        _next_generation(entry)


def written(mailbox_id: int) -> None:
    """This process has just changed the mailbox (its own NOTIFY may still be on the way):
    counted as an event, so no read begun before, nor an answer kept from before, is used
    after it."""
    entry = _mailboxes.get(mailbox_id)
    if entry is not None:
        _next_generation(entry)


def _next_generation(entry: list[Any]) -> None:
    """Reads begun from now on are not joined with earlier ones; kept answers are dropped."""
    entry[2] += 1
    entry[3] = {}


async def read(mailbox_id: int, question: Hashable, query: Callable[[], Awaitable[Any]]) -> Any:
    """The answer of `query()` about the mailbox, shared with every caller asking the same
    `question` in the same generation: while it runs and until the mailbox's next event. The
    answer is shared as is: callers must not change it. A caller cancelled while waiting does
    not cancel the query for the others."""
    entry = _mailboxes.get(mailbox_id)
    current = entry[2] if entry is not None else 0
    if entry is not None and question in entry[3]:
        return entry[3][question]
    key = (mailbox_id, current, question)
    future = _in_flight.get(key)
    if future is None:
        future = asyncio.ensure_future(query())
        _in_flight[key] = future
        future.add_done_callback(lambda done: _keep(key, done))
    return await asyncio.shield(future)


def _keep(key: tuple[int, int, Hashable], done: asyncio.Future[Any]) -> None:
    """Keep a read's answer for the callers after it, unless an event came meanwhile."""
    _in_flight.pop(key, None)
    mailbox_id, began, question = key
    entry = _mailboxes.get(mailbox_id)
    if entry is None or entry[2] != began or done.cancelled() or done.exception() is not None:
        return
    entry[3][question] = done.result()
