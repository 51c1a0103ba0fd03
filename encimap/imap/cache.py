"""A bounded in-memory cache of what never changes about a stored message (its bytes, size,
dates, ENVELOPE, BODYSTRUCTURE, part offsets), keyed by (mailbox id, UID).

A (mailbox, UID) pair names one immutable message for the life of the mailbox: UIDs are never
reused, COPY/MOVE/APPEND create new pairs, a recreated mailbox gets a new id. So entries never
go stale; an expunged message is simply not asked for again. Flags change and are never
cached. This plays the part the page cache plays for Dovecot's files: repeated fetches of the
same messages skip the database round trip.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

_ENTRY_OVERHEAD = 512


_CHANGING = ("flags", "modseq")  # never cached: another session may change them


class MessageCache:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, int], dict[str, Any]] = OrderedDict()
        self._bytes = 0

    def get(self, mailbox_id: int, uid: int, columns: set[str]) -> dict[str, Any] | None:
        entry = self._entries.get((mailbox_id, uid))
        if entry is None or not columns <= entry.keys():
            return None
        self._entries.move_to_end((mailbox_id, uid))
        return entry

    def put(self, mailbox_id: int, row: dict[str, Any]) -> None:
        entry = {name: value for name, value in row.items() if name not in _CHANGING}
        key = (mailbox_id, entry["uid"])
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= _size(old)
            entry = {**old, **entry}
        size = _size(entry)
        if size > self.max_bytes // 8:
            return
        self._entries[key] = entry
        self._bytes += size
        while self._bytes > self.max_bytes:
            _key, evicted = self._entries.popitem(last=False)
            self._bytes -= _size(evicted)


def _size(entry: dict[str, Any]) -> int:
    body = entry.get("body_encrypted")
    return _ENTRY_OVERHEAD + (len(body) if body is not None else 0)
