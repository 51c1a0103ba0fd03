"""The selected mailbox of one session: the sequence number <-> UID map and the changes other
sessions made that this one has not reported yet (RFC 3501 5.2, 7.4.1)."""

from __future__ import annotations

import asyncio
import bisect
from array import array
from collections.abc import Callable, Sequence

import asyncpg

from encimap.imap import shared, wire
from encimap.imap.parser import SequenceSet
from encimap.store import events, flagsync, messages
from encimap.store.mailboxes import Mailbox


class Selected:
    def __init__(
        self,
        pool: asyncpg.Pool,
        listener: events.Listener,
        mailbox: Mailbox,
        *,
        readonly: bool,
        session_id: str,
    ) -> None:
        self.pool = pool
        self.mailbox = mailbox
        self.readonly = readonly
        self.session_id = session_id
        # index = sequence number - 1; 4 bytes per message (flagsync.packed_uids)
        self.uids: array = array("I")
        self.highest_uid = 0
        self.changed = asyncio.Event()  # wakes IDLE
        self._new = False
        self._flags: set[int] = set()
        self._expunged: set[int] = set()
        self._resync = False
        shared.selected(mailbox.id)
        self._unsubscribe: Callable[[], None] = listener.subscribe(mailbox.id, self._on_event)

    async def load(self) -> flagsync.Summary:
        """Read the mailbox's UIDs once, at SELECT (one query, no object per message)."""
        summary = await flagsync.summary(self.pool, self.mailbox.id)
        self.uids = summary.uids
        self.highest_uid = max(self.uids[-1] if self.uids else 0, self.mailbox.uid_next - 1)
        return summary

    def close(self) -> None:
        self._unsubscribe()
        shared.unselected(self.mailbox.id)

    # -- numbers --
    def __len__(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        index = bisect.bisect_left(self.uids, uid)
        if index < len(self.uids) and self.uids[index] == uid:
            return index + 1
        return None

    def by_sequence(self, sequence: SequenceSet) -> list[int]:
        """UIDs of the messages a sequence-number set names (an empty mailbox names none)."""
        if not self.uids:
            return []
        chosen: set[int] = set()
        for low, high in sequence.resolve(len(self.uids)):
            if low > len(self.uids):
                continue
            chosen.update(self.uids[low - 1 : min(high, len(self.uids))])
        return sorted(chosen)

    def by_uid(self, sequence: SequenceSet) -> list[int]:
        """Existing UIDs within a UID set ("*" is the highest UID in the mailbox)."""
        if not self.uids:
            return []
        chosen: list[int] = []
        for low, high in sequence.resolve(self.uids[-1]):
            start = bisect.bisect_left(self.uids, low)
            stop = bisect.bisect_right(self.uids, high)
            chosen.extend(self.uids[start:stop])
        return sorted(set(chosen))

    def runs(self, uids: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
        """`uids` (ascending, all in this view) as runs of consecutive UIDs at consecutive
        sequence numbers: (lowest UIDs, highest UIDs, sequence numbers of the lowest)."""
        lows: list[int] = []
        highs: list[int] = []
        seqs: list[int] = []
        view = self.uids
        index = -2
        for uid in uids:
            if highs and uid == highs[-1] + 1 and index + 1 < len(view) and view[index + 1] == uid:
                highs[-1] = uid
                index += 1
                continue
            index = bisect.bisect_left(view, uid)
            lows.append(uid)
            highs.append(uid)
            seqs.append(index + 1)
        return lows, highs, seqs

    def is_sequence_valid(self, sequence: SequenceSet) -> bool:
        """Numbers beyond the last message are an error; a range ending in "*" never is
        (`FETCH 1:*` in an empty mailbox names nothing)."""
        return all(
            None in (start, end) or max(start, end) <= len(self.uids)  # type: ignore[type-var]
            for start, end in sequence.ranges
        )

    # -- changes --
    def _on_event(self, event: events.Event) -> None:
        shared.note(self.mailbox.id, event)
        if event.kind == events.NEW:
            if event.uid > self.highest_uid:
                self._new = True
        elif event.kind == events.RESYNC or event.uids is None:
            self._resync = True
        elif event.origin == self.session_id:
            return
        elif event.kind == events.FLAGS:
            self._flags.update(event.uids)
        elif event.kind == events.EXPUNGE:
            self._expunged.update(event.uids)
        self.changed.set()

    def expect_new(self) -> None:
        """This session added messages here (APPEND, COPY): report them with its reply rather
        than when the NOTIFY comes back."""
        self._new = True

    def has_changes(self) -> bool:
        return self._new or self._resync or bool(self._flags) or bool(self._expunged)

    def forget(self, uids: Sequence[int]) -> list[int]:
        """Drop expunged UIDs from the map; their sequence numbers as reported (RFC 3501 7.4.1:
        each EXPUNGE renumbers the later messages at once)."""
        numbers = []
        for uid in sorted(uids):
            seq = self.seq_of(uid)
            if seq is not None:
                del self.uids[seq - 1]
                numbers.append(seq)
        self._flags.difference_update(uids)
        return numbers

    async def sync(self, *, expunge_ok: bool) -> list[bytes]:
        """Untagged responses for what changed since the last report.

        Everything is read before the session's view changes: a read that fails (the database
        gone for a moment, as in a failover) leaves every pending change pending for the next
        sync, and the sequence numbers the client knows stay right."""
        self.changed.clear()
        if not self.has_changes():
            return []
        expunged, flagged = set(self._expunged), set(self._flags)
        if self._resync:
            rows = await messages.uids_and_flags(self.pool, self.mailbox.id)
            current = {row["uid"] for row in rows}
            expunged.update(uid for uid in self.uids if uid not in current)
            flagged.update(uid for uid in self.uids if uid in current)
        mailbox_id, after = self.mailbox.id, self.highest_uid
        new_rows = []
        if self._new or self._resync:
            new_rows = await shared.read(
                ("new", id(self.pool), mailbox_id, shared.generation(mailbox_id), after),
                lambda: messages.uids_and_flags(self.pool, mailbox_id, after),
            )
        flag_rows = []
        if flagged:
            changed = sorted(flagged)
            flag_rows = await shared.read(
                ("flags", id(self.pool), mailbox_id, shared.generation(mailbox_id), tuple(changed)),
                lambda: messages.fetch_rows(self.pool, mailbox_id, changed, ["flags"]),
            )
        # All read: report (a failed read above leaves every change pending).
        self._resync = self._new = False
        self._flags = set()
        lines: list[bytes] = []
        if expunge_ok and expunged:
            self._expunged = set()
            lines.extend(b"* %d EXPUNGE\r\n" % seq for seq in self.forget(sorted(expunged)))
        else:
            self._expunged = expunged
        if new_rows:
            self.uids.extend(row["uid"] for row in new_rows)
            self.highest_uid = new_rows[-1]["uid"]
            lines.append(b"* %d EXISTS\r\n" % len(self.uids))
        for row in flag_rows:
            seq = self.seq_of(row["uid"])
            if seq is not None:
                lines.append(
                    b"* %d FETCH (UID %d FLAGS %s)\r\n"
                    % (seq, row["uid"], wire.flag_list(row["flags"]).encode())
                )
        return lines
