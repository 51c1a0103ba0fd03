"""The selected mailbox of one session: the sequence number <-> UID map and the changes other
sessions made that this one has not reported yet (RFC 3501 5.2, 7.4.1)."""

from __future__ import annotations

import asyncio
import bisect
import uuid
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import asyncpg

from encimap.imap import shared, wire
from encimap.imap.parser import SequenceSet
from encimap.store import events, flagsync, mailboxes, messages, modseqs
from encimap.store.mailboxes import Mailbox

RECENT = "\\Recent"
# (pool, mailbox id, UIDVALIDITY) -> the highest UID a session of this process has claimed
# as \Recent (or seen claimed): later sessions need not ask the database for those again.
_claimed: dict[tuple[int, int, int], int] = {}
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


def stretches(uids: Sequence[int]) -> tuple[list[int], list[int]]:
    """Ascending, distinct `uids` as stretches of consecutive numbers: (lowest, highest) of
    each. A stretch is one when its ends differ by its length, so halving finds them in
    (stretches x log n) steps, not one per number."""
    lows: list[int] = []
    highs: list[int] = []
    stack = [(0, len(uids))] if uids else []
    while stack:
        start, stop = stack.pop()
        if uids[stop - 1] - uids[start] == stop - 1 - start:
            if highs and highs[-1] + 1 == uids[start]:
                highs[-1] = uids[stop - 1]
            else:
                lows.append(uids[start])
                highs.append(uids[stop - 1])
            continue
        middle = (start + stop) // 2
        stack.append((middle, stop))
        stack.append((start, middle))
    return lows, highs


class Observer(Protocol):
    """Told of every message of the view that arrives, changes flags or goes (the SEARCH and
    SORT results kept current, encimap.imap.commands.context)."""

    def changed(self, uids: Iterable[int]) -> None: ...

    def expunging(self, uids: Sequence[int]) -> None:
        """Before the EXPUNGE responses, while the sequence numbers are still the client's."""

    async def report(self) -> list[bytes]:
        """Untagged responses for what changed, after those of `sync` (EXISTS first)."""
        ...


class Selected:
    def __init__(
        self,
        pool: asyncpg.Pool,
        listener: events.Listener,
        mailbox: Mailbox,
        *,
        readonly: bool,
        session_id: str,
        recent: bool = True,
    ) -> None:
        self.pool = pool
        self.mailbox = mailbox
        self.readonly = readonly
        self.session_id = session_id
        # index = sequence number - 1; 4 bytes per message (flagsync.packed_uids)
        self.uids: array = array("I")
        self.highest_uid = 0
        # RFC 3501 2.3.2: the messages this session is the first to see (FLAGS \Recent,
        # SEARCH RECENT/NEW/OLD, the RECENT count)
        self.has_recent = recent
        self.claims_recent = self.claims(recent, readonly)
        self.recent: set[int] = set()
        self.recent_reported = 0  # the last RECENT count sent: sent again when it differs
        self.keywords: set[str] = set()  # announced in FLAGS (RFC 3501 7.2.6)
        # RFC 7162, as the session enabled them: MODSEQ in every FETCH response about a flag
        # change, and VANISHED instead of EXPUNGE (encimap.imap.commands.condstore).
        self.condstore = False
        self.qresync = False
        self.highest_modseq = 1  # as read at SELECT
        self.report_highest = False  # VANISHED reported: HIGHESTMODSEQ in the tagged OK
        self._highest_before_sync: int | None = None
        # RFC 5182: the UIDs of the last SEARCH RETURN (SAVE), "$"; empty until one ran
        self.saved: list[int] = []
        self.changed = asyncio.Event()  # wakes IDLE
        # While set (an idling session), called instead of waking `changed`: the changes are
        # then reported for the session without waking its task (encimap.imap.commands.idle).
        self.waker: Callable[[], None] | None = None
        self.observer: Observer | None = None
        self._new = False
        self._flags: set[int] = set()
        self._expunged: set[int] = set()
        self._resync = False
        shared.selected(mailbox.id)
        self._unsubscribe: Callable[[], None] = listener.subscribe(mailbox.id, self._on_event)

    @classmethod
    async def open(
        cls,
        pool: asyncpg.Pool,
        listener: events.Listener,
        vaultbox_id: uuid.UUID,
        name: str,
        *,
        readonly: bool,
        session_id: str,
        recent: bool = True,
    ) -> tuple[Selected, flagsync.Summary] | None:
        """SELECT/EXAMINE of the vaultbox's mailbox `name`: the view, and what it was made
        from, after one query (flagsync.select); None when there is no such mailbox.

        The mailbox's events must be heard from before its UIDs are read: mail committed
        after the read but announced before the view subscribes would be missed. Its id is
        known only with the read, so the vaultbox's events are kept while it runs, and those
        of the mailbox (or a resync) are handed to the view."""
        heard: list[events.Event] = []
        stop = listener.subscribe_vaultbox(str(vaultbox_id), heard.append)
        try:
            summary = await flagsync.select(
                pool, vaultbox_id, name, claim_recent=cls.claims(recent, readonly)
            )
        finally:
            stop()
        if summary is None:
            return None
        selected = cls(
            pool, listener, summary.mailbox, readonly=readonly, session_id=session_id, recent=recent
        )
        selected._load(summary)
        for event in heard:
            if event.mailbox_id == summary.mailbox.id or event.kind == events.RESYNC:
                selected._on_event(event)
        return selected, summary

    @staticmethod
    def claims(recent: bool, readonly: bool) -> bool:
        """Whether a session claims \\Recent messages (RFC 3501 2.3.2): a read-only one claims
        none (it sees as \\Recent those no session has claimed), nor does one without `recent`
        (IMAP4rev2 has no \\Recent: RFC 9051 appendix E)."""
        return recent and not readonly

    def _claim_key(self) -> tuple[int, int, int]:
        return (id(self.pool), self.mailbox.id, self.mailbox.uidvalidity)

    def _load(self, summary: flagsync.Summary) -> None:
        self.uids = summary.uids
        self.highest_uid = max(self.uids[-1] if self.uids else 0, self.mailbox.uid_next - 1)
        if self.has_recent:
            self.recent = set(self.uids[bisect.bisect_left(self.uids, summary.recent_from) :])
        self.recent_reported = len(self.recent)
        self.keywords = set(summary.keywords)
        self.highest_modseq = summary.highest_modseq
        if self.claims_recent and self.uids:
            # what it read is now \Recent to this session or was to another: syncs of this
            # process need not claim it again
            key = self._claim_key()
            _claimed[key] = max(_claimed.get(key, 0), self.uids[-1])

    def flag_lines(self) -> list[bytes]:
        """The FLAGS and PERMANENTFLAGS responses for the keywords known so far."""
        flags = " ".join((*SYSTEM_FLAGS, *sorted(self.keywords)))
        permanent = "()" if self.readonly else f"({flags} \\*)"
        return [
            f"* FLAGS ({flags})\r\n".encode(),
            f"* OK [PERMANENTFLAGS {permanent}] Flags permitted.\r\n".encode(),
        ]

    def announce(self, flags: Iterable[str]) -> list[bytes]:
        """FLAGS/PERMANENTFLAGS again when `flags` has keywords not announced yet: a client
        must learn of a keyword before it appears in a FETCH response."""
        new = {f for f in flags if not f.startswith("\\")} - self.keywords
        if not new:
            return []
        self.keywords |= new
        return self.flag_lines()

    def flags(self, uid: int, flags: Sequence[str]) -> list[str]:
        """A message's stored flags as this session sees them (with \\Recent)."""
        return [*flags, RECENT] if uid in self.recent else list(flags)

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
        if sequence.saved:
            return list(self.saved)
        count = len(self.uids)
        spans = [(max(low - 1, 0), min(high, count)) for low, high in sequence.resolve(count)]
        return self._slices(spans)

    def by_uid(self, sequence: SequenceSet) -> list[int]:
        """Existing UIDs within a UID set ("*" is the highest UID in the mailbox)."""
        if sequence.saved:
            return list(self.saved)
        if not self.uids:
            return []
        view = self.uids
        spans = [
            (bisect.bisect_left(view, low), bisect.bisect_right(view, high))
            for low, high in sequence.resolve(view[-1])
        ]
        return self._slices(spans)

    def uid_ranges(self, sequence: SequenceSet, *, by_uid: bool) -> list[tuple[int, int]]:
        """The messages `by_uid` / `by_sequence` names, as inclusive UID ranges (in no order,
        possibly overlapping) within the view's first and last UID, where the stored UIDs
        are exactly the view's: one range per range of the set, however many messages it
        names (a search program of many sets costs their length, not sets x messages)."""
        if sequence.saved:
            return list(zip(*stretches(self.saved), strict=True))
        if not self.uids:
            return []
        view = self.uids
        if by_uid:
            first, last = view[0], view[-1]
            return [
                (max(low, first), min(high, last))
                for low, high in sequence.resolve(last)
                if low <= last and high >= first
            ]
        count = len(view)
        return [
            (view[low - 1], view[min(high, count) - 1])
            for low, high in sequence.resolve(count)
            if low <= count
        ]

    def _slices(self, spans: list[tuple[int, int]]) -> list[int]:
        """The view's UIDs at these index spans [start, stop), ascending and once each: the
        spans merged, then sliced from the array (no Python work per message)."""
        chosen = array("I")
        start = stop = 0
        for low, high in sorted(span for span in spans if span[0] < span[1]):
            if low > stop:
                chosen.extend(self.uids[start:stop])
                start = low
            stop = max(stop, high)
        chosen.extend(self.uids[start:stop])
        return chosen.tolist()

    def runs(self, uids: Sequence[int]) -> tuple[list[int], list[int], list[int], list[bool]]:
        """`uids` (ascending, all in this view) as runs of consecutive UIDs at consecutive
        sequence numbers, each wholly \\Recent to this session or not: (lowest UIDs, highest
        UIDs, sequence numbers of the lowest, recent)."""
        lows: list[int] = []
        highs: list[int] = []
        seqs: list[int] = []
        recent: list[bool] = []
        recent_lows, recent_highs = stretches(sorted(self.recent))
        index = 0  # the first recent stretch that does not end before the piece
        for low, high in zip(*stretches(uids), strict=True):
            seq = bisect.bisect_left(self.uids, low) + 1
            while low <= high:
                while index < len(recent_highs) and recent_highs[index] < low:
                    index += 1
                inside = index < len(recent_lows) and recent_lows[index] <= low
                if inside:
                    end = min(high, recent_highs[index])
                elif index < len(recent_lows):
                    end = min(high, recent_lows[index] - 1)
                else:
                    end = high
                lows.append(low)
                highs.append(end)
                seqs.append(seq)
                recent.append(inside)
                seq += end - low + 1
                low = end + 1
        return lows, highs, seqs, recent

    def is_sequence_valid(self, sequence: SequenceSet) -> bool:
        """Numbers beyond the last message are an error; a range ending in "*" never is
        (`FETCH 1:*` in an empty mailbox names nothing), nor is "$" (RFC 5182)."""
        return sequence.saved or all(
            None in (start, end) or max(start, end) <= len(self.uids)  # type: ignore[type-var]
            for start, end in sequence.ranges
        )

    def expunged(self, uids: Sequence[int]) -> list[bytes]:
        """Forget expunged UIDs; the responses that report them: `* n EXPUNGE` each, or with
        QRESYNC one `* VANISHED` (RFC 7162 3.2.10)."""
        if not self.qresync:
            return [b"* %d EXPUNGE\r\n" % seq for seq in self.forget(uids)]
        known = [uid for uid in uids if self.seq_of(uid) is not None]
        self.forget(known)
        if not known:
            return []
        return [b"* VANISHED %s\r\n" % wire.ordered_sequence_set(known).encode()]

    def fetch_flags(
        self, uid: int, flags: Sequence[str] | None, modseq: int, *, uid_at: int | None
    ) -> bytes:
        """The FETCH response that reports a message's flags (None: only its MODSEQ). Without
        CONDSTORE, UID at position `uid_at` (0 or 1; None: without); with it, as Dovecot
        writes it, `UID u MODSEQ (m) FLAGS (...)`, UID also whenever QRESYNC is enabled."""
        items = []
        if flags is not None:
            items.append(b"FLAGS " + wire.flag_list(self.flags(uid, flags)).encode())
        if self.condstore:
            items.insert(0, b"MODSEQ (%d)" % modseq)
            if uid_at is not None or self.qresync:
                items.insert(0, b"UID %d" % uid)
        elif uid_at is not None:
            items.insert(uid_at, b"UID %d" % uid)
        return b"* %d FETCH (%b)\r\n" % (self.seq_of(uid) or 0, b" ".join(items))

    async def before_sync(self) -> None:
        """With QRESYNC, when the tagged OK may carry HIGHESTMODSEQ: read it before the
        changes are gathered (the listener barrier, then `sync`), so every change numbered
        up to it is among those reported; read later, it could name a change committed in
        between that this session has not reported yet, which a client that disconnects
        then would never learn of."""
        self._highest_before_sync = None
        if self.qresync:  # expunges may be announced during the barrier: read it anyway
            self._highest_before_sync = await modseqs.highest(self.pool, self.mailbox.id)

    def with_highest_modseq(self, result: str) -> str:
        """A tagged `OK text` as `OK [HIGHESTMODSEQ n] text` (unless it has a code already),
        as Dovecot answers after reporting VANISHED; n as read by `before_sync`."""
        self.report_highest = False
        highest, self._highest_before_sync = self._highest_before_sync, None
        if highest is None or not result.startswith("OK ") or result.startswith("OK ["):
            return result
        return f"OK [HIGHESTMODSEQ {highest}] {result[3:]}"

    # -- changes --
    def _on_event(self, event: events.Event) -> None:
        shared.note(self.mailbox.id, event)
        if event.kind == events.NEW:
            if event.uid > self.highest_uid:
                self._new = True
        elif event.kind == events.RESYNC or event.uids is None:
            self._resync = True
        elif event.origin == self.session_id:
            return  # reported with the command that made it (`flags_changed_here`)
        elif event.kind == events.FLAGS:
            self._flags.update(event.uids)
        elif event.kind == events.EXPUNGE:
            self._expunged.update(event.uids)
        if self.waker is not None:
            self.waker()
        else:
            self.changed.set()

    def flags_changed_here(self, uids: Iterable[int]) -> None:
        """This session changed these messages' flags (STORE, FETCH setting \\Seen): its
        contexts (RFC 5267) are updated with the command's reply. Its own NOTIFY may come back
        only after that reply, since the events barrier starts when the command arrives."""
        if self.observer is not None:
            self.observer.changed(uids)

    def expect_new(self) -> None:
        """This session added messages here (APPEND, COPY): report them with its reply rather
        than when the NOTIFY comes back."""
        self._new = True

    def pending_kinds(self) -> set[str]:
        """The kinds of the changes not reported yet (events.NEW, FLAGS, EXPUNGE, RESYNC)."""
        kinds = set()
        for kind, pending in (
            (events.NEW, self._new),
            (events.RESYNC, self._resync),
            (events.FLAGS, self._flags),
            (events.EXPUNGE, self._expunged),
        ):
            if pending:
                kinds.add(kind)
        return kinds

    def has_changes(self) -> bool:
        return self._new or self._resync or bool(self._flags) or bool(self._expunged)

    def forget(self, uids: Sequence[int]) -> list[int]:
        """Drop expunged UIDs from the map; their sequence numbers as reported (RFC 3501 7.4.1:
        each EXPUNGE renumbers the later messages at once)."""
        if self.observer is not None:
            self.observer.expunging(uids)
        numbers: list[int] = []
        kept = array("I")
        start = 0  # the view is rebuilt once, not shifted once per expunged message
        for uid in sorted(set(uids)):
            index = bisect.bisect_left(self.uids, uid)
            if index < len(self.uids) and self.uids[index] == uid:
                numbers.append(index + 1 - len(numbers))  # after the earlier ones went
                kept.extend(self.uids[start:index])
                start = index + 1
        if numbers:
            kept.extend(self.uids[start:])
            self.uids[:] = kept
        self._flags.difference_update(uids)
        self.recent.difference_update(uids)
        if self.saved:  # RFC 5182 2.1: an expunged message leaves the saved result
            gone = set(uids)
            self.saved = [uid for uid in self.saved if uid not in gone]
        return numbers

    async def sync(self, *, expunge_ok: bool) -> list[bytes]:
        """Untagged responses for what changed since the last report, the observer's last."""
        lines = await self._sync(expunge_ok=expunge_ok)
        if self.observer is not None:
            lines += await self.observer.report()
        return lines

    async def _sync(self, *, expunge_ok: bool) -> list[bytes]:
        """The view's own untagged responses for what changed since the last report.

        Everything is read before the session's view changes: a read that fails (the database
        gone for a moment, as in a failover) puts every change it took back as pending for the
        next sync, and the sequence numbers the client knows stay right. The pending changes
        are taken before the reads, so events that arrive while they run stay pending."""
        self.changed.clear()
        if not self.has_changes():
            return self._recent_update()
        new, resync = self._new, self._resync
        expunged, flagged = self._expunged, self._flags
        self._new = self._resync = False
        self._expunged, self._flags = set(), set()
        try:
            read = await self._read(new or resync, resync, expunged, flagged)
        except BaseException:
            self._new, self._resync = self._new or new, self._resync or resync
            self._expunged |= expunged
            self._flags |= flagged
            raise
        new_rows, flag_rows, first_recent = read
        if self.observer is not None:
            self.observer.changed(row["uid"] for rows in (new_rows, flag_rows) for row in rows)
        # Flag changes first, numbered as the client still numbers them, then expunges, then
        # new mail: Dovecot's order.
        lines: list[bytes] = list(self.announce(f for row in flag_rows for f in row["flags"]))
        for row in flag_rows:
            if self.seq_of(row["uid"]) is not None:
                # UID as before CONDSTORE; with it as Dovecot sends it (UID only with QRESYNC)
                uid, uid_at = row["uid"], None if self.condstore else 0
                lines.append(self.fetch_flags(uid, row["flags"], row["modseq"], uid_at=uid_at))
        if expunge_ok and expunged:
            vanished = self.expunged(sorted(expunged))
            lines.extend(vanished)
            # as Dovecot: the tagged OK then carries the new HIGHESTMODSEQ (QRESYNC)
            self.report_highest = self.report_highest or (self.qresync and bool(vanished))
        else:
            self._expunged |= expunged
        if new_rows:
            lines.extend(self.announce(f for row in new_rows for f in row["flags"]))
            self.uids.extend(row["uid"] for row in new_rows)
            self.highest_uid = new_rows[-1]["uid"]
            lines.append(b"* %d EXISTS\r\n" % len(self.uids))
            if first_recent is not None:
                self.recent.update(row["uid"] for row in new_rows if row["uid"] >= first_recent)
        return lines + self._recent_update()

    async def _read(
        self, new: bool, resync: bool, expunged: set[int], flagged: set[int]
    ) -> tuple[list, list, int | None]:
        """The database reads of a sync: (new rows, changed flags, first UID claimed as
        \\Recent or None). A resync adds what it finds to `expunged` and `flagged`."""
        if resync:
            rows = await messages.uids_and_flags(self.pool, self.mailbox.id)
            current = {row["uid"] for row in rows}
            expunged.update(uid for uid in self.uids if uid not in current)
            flagged.update(uid for uid in self.uids if uid in current)
        mailbox_id, after = self.mailbox.id, self.highest_uid
        new_rows = []
        if new:
            new_rows = await shared.read(
                mailbox_id,
                ("new", id(self.pool), after),
                lambda: messages.uids_and_flags(self.pool, mailbox_id, after),
            )
        first_recent = None
        if new_rows and self.claims_recent:
            newest = new_rows[-1]["uid"]
            key = self._claim_key()
            before = _claimed.get(key, 0)
            if newest > before:
                # The first session of this process to learn of the new mail claims it, and
                # says so before asking: the others, syncing meanwhile, know another session
                # has it (no UPDATE each). A claim that fails leaves the mail to the next.
                _claimed[key] = newest
                try:
                    first_recent = await mailboxes.claim_recent(self.pool, mailbox_id, newest)
                except BaseException:
                    if _claimed.get(key) == newest:
                        _claimed[key] = before
                    raise
        flag_rows = []
        if flagged:
            changed = sorted(flagged)
            flag_rows = await shared.read(
                mailbox_id,
                ("flags", id(self.pool), tuple(changed)),
                lambda: messages.fetch_rows(self.pool, mailbox_id, changed, ["flags", "modseq"]),
            )
        return new_rows, flag_rows, first_recent

    def _recent_update(self) -> list[bytes]:
        """RECENT again when the count differs from the last one sent (new mail, expunges)."""
        if len(self.recent) == self.recent_reported:
            return []
        self.recent_reported = len(self.recent)
        return [b"* %d RECENT\r\n" % self.recent_reported]
