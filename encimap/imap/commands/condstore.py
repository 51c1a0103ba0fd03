"""CONDSTORE and QRESYNC (RFC 7162): what they add to ENABLE, SELECT/EXAMINE, FETCH, STORE,
SEARCH and STATUS. The commands themselves stay in their modules; these helpers parse the
modifiers and write the extra responses. Mod-sequences are kept by the database
(encimap.store.modseqs).

CONDSTORE is enabled for the session by ENABLE CONDSTORE or QRESYNC, and by the first command
that uses it (3.1: SELECT (CONDSTORE), FETCH MODSEQ or CHANGEDSINCE, STORE UNCHANGEDSINCE,
SEARCH MODSEQ, STATUS HIGHESTMODSEQ); from then on every FETCH response about a flag change
carries MODSEQ. QRESYNC only by ENABLE; it reports expunges as VANISHED.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

from encimap.imap import wire
from encimap.imap.commands import enableable
from encimap.imap.parser import FetchItem, ParseError, Reader, SequenceSet
from encimap.imap.selected import Selected
from encimap.imap.session import Session, bad
from encimap.store import modseqs
from encimap.store import search as keys

CONDSTORE, QRESYNC = "CONDSTORE", "QRESYNC"


def enable(session: Session, name: str) -> bool:
    """Enable CONDSTORE or QRESYNC (which implies CONDSTORE); whether `name` was newly
    enabled. With a mailbox selected the client learns a HIGHESTMODSEQ at once, as Dovecot
    sends it."""
    if name in session.enabled:
        return False
    if name == QRESYNC:
        enable(session, CONDSTORE)
    session.enabled.add(name)
    selected = session.selected
    if selected is not None:
        apply(session, selected)
        if name == CONDSTORE:
            # SELECT's value: the client has seen every change up to it; a newer one may
            # name a change not reported to this session yet (the next sync reports it)
            session.untagged(f"OK [HIGHESTMODSEQ {selected.highest_modseq}] Highest")
    return True


@enableable(CONDSTORE)
def _enable_condstore(session: Session) -> bool:
    return enable(session, CONDSTORE)


@enableable(QRESYNC)
def _enable_qresync(session: Session) -> bool:
    return enable(session, QRESYNC)


def apply(session: Session, selected: Selected) -> None:
    """Make the selected mailbox's reports follow what the session enabled."""
    selected.condstore = CONDSTORE in session.enabled
    selected.qresync = QRESYNC in session.enabled


# -- SELECT / EXAMINE (3.1.2, 3.2.5) --


@dataclass(frozen=True)
class Resync:
    """QRESYNC's select parameter: what the client has cached."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None


def select_params(session: Session, reader: Reader) -> Resync | None:
    """The optional `(CONDSTORE)` / `(QRESYNC (...))` after SELECT's mailbox name, up to the
    end of the command; SELECT (CONDSTORE) enables CONDSTORE (`selected` reports it)."""
    resync = None
    wants_condstore = False
    if not reader.at_end():
        reader.sp()

        def param() -> None:
            nonlocal resync, wants_condstore
            name = reader.atom().upper()
            if name == CONDSTORE:
                wants_condstore = True
            elif name == QRESYNC:
                if QRESYNC not in session.enabled:
                    raise bad("QRESYNC not enabled")
                reader.sp()
                resync = _qresync_param(reader)
            else:
                raise ParseError(f"unknown SELECT parameter {name[:20]}")

        reader.parenthesized(param)
    reader.end()
    if wants_condstore:
        session.enabled.add(CONDSTORE)
    return resync


def _qresync_param(reader: Reader) -> Resync:
    reader.expect(b"(")
    uidvalidity = reader.nz_number()
    reader.sp()
    modseq = reader.mod_sequence()
    known = None
    if reader.peek() == 0x20:
        reader.sp()
        if reader.peek() != 0x28:
            known = reader.sequence_set()
            if reader.peek() == 0x20:
                reader.sp()
        if reader.peek() == 0x28:  # seq-match-data: every expunge is on record, not needed
            reader.expect(b"(")
            reader.sequence_set()
            reader.sp()
            reader.sequence_set()
            reader.expect(b")")
    reader.expect(b")")
    return Resync(uidvalidity, modseq, known)


async def selected(session: Session, selected: Selected, resync: Resync | None) -> None:
    """After SELECT's standard responses: HIGHESTMODSEQ (every SELECT, 3.1.2.1) and, for a
    QRESYNC whose UIDVALIDITY matches, VANISHED (EARLIER) and the changed messages (3.2.5)."""
    apply(session, selected)
    session.untagged(f"OK [HIGHESTMODSEQ {selected.highest_modseq}] Highest")
    if resync is None or resync.uidvalidity != selected.mailbox.uidvalidity:
        return
    known = _uid_filter(selected, resync.known_uids)
    await _vanished_earlier(session, selected, resync.modseq, resync.known_uids)
    rows = await modseqs.changed_since(session.server.pool, selected.mailbox.id, resync.modseq)
    for row in rows:
        uid = row["uid"]
        seq = selected.seq_of(uid)
        if seq is not None and known(uid):
            flags = wire.flag_list(selected.flags(uid, row["flags"])).encode()
            # the items of `UID FETCH (UID FLAGS) (CHANGEDSINCE m)`, in that order, as Dovecot
            session.send(
                b"* %d FETCH (UID %d FLAGS %b MODSEQ (%d))\r\n" % (seq, uid, flags, row["modseq"])
            )
            await session.maybe_flush()


def _uid_filter(selected: Selected, uid_set: SequenceSet | None) -> Callable[[int], bool]:
    if uid_set is None:
        return lambda _uid: True
    return _membership(uid_set.resolve(max(selected.highest_uid, 1)))


def _membership(ranges: list[tuple[int, int]]) -> Callable[[int], bool]:
    """Whether a number lies in one of `ranges`: one binary search, not a test per range (a
    set can have 16,000 ranges, tested for every changed message)."""
    merged = _merged(ranges)
    lows = [low for low, _high in merged]

    def contains(number: int) -> bool:
        index = bisect.bisect_right(lows, number) - 1
        return index >= 0 and number <= merged[index][1]

    return contains


async def _vanished_earlier(
    session: Session, selected: Selected, modseq: int, uid_set: SequenceSet | None
) -> None:
    """`* VANISHED (EARLIER) uids`: what was expunged after `modseq`, among the UIDs the
    client may know (below UIDNEXT, and in `uid_set` if given); computed on ranges, so a
    large expunge costs no more than a small one."""
    gone = await modseqs.vanished_since(session.server.pool, selected.mailbox.id, modseq)
    wanted = [(1, selected.highest_uid)]
    if uid_set is not None:
        wanted = _merged(uid_set.resolve(max(selected.highest_uid, 1)))
    found = _intersection(gone, wanted)  # both in order, disjoint
    if found:
        text = ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in _merged(found))
        session.untagged(f"VANISHED (EARLIER) {text}")


def _intersection(
    first: list[tuple[int, int]], second: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Where two sorted lists of disjoint ranges overlap: one pass over both."""
    found = []
    i = j = 0
    while i < len(first) and j < len(second):
        low, high = max(first[i][0], second[j][0]), min(first[i][1], second[j][1])
        if low <= high:
            found.append((low, high))
        if first[i][1] < second[j][1]:
            i += 1
        else:
            j += 1
    return found


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges sorted, with overlapping and adjacent ones joined."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return merged


# -- FETCH (3.1.4, 3.2.6) --


@dataclass(frozen=True)
class FetchModifiers:
    changed_since: int | None = None
    vanished: bool = False


def fetch_modifiers(session: Session, reader: Reader, *, by_uid: bool) -> FetchModifiers:
    """FETCH's `(CHANGEDSINCE n [VANISHED])`, up to the end of the command."""
    if reader.at_end():
        return FetchModifiers()
    reader.sp()
    changed_since = None
    vanished = False

    def modifier() -> None:
        nonlocal changed_since, vanished
        name = reader.atom().upper()
        if name == "CHANGEDSINCE":
            reader.sp()
            changed_since = reader.mod_sequence()
        elif name == "VANISHED":
            vanished = True
        else:
            raise ParseError(f"unknown FETCH modifier {name[:20]}")

    reader.parenthesized(modifier)
    reader.end()
    if vanished and (not by_uid or QRESYNC not in session.enabled or changed_since is None):
        # 3.2.6: only UID FETCH with CHANGEDSINCE, once QRESYNC is enabled
        raise bad("VANISHED needs UID FETCH, CHANGEDSINCE and QRESYNC enabled")
    return FetchModifiers(changed_since, vanished)


async def changed_uids(
    session: Session,
    selected: Selected,
    sequence: SequenceSet,
    modifiers: FetchModifiers,
    *,
    by_uid: bool,
) -> list[int]:
    """The UIDs in the FETCH set changed after CHANGEDSINCE: read through the modseq index,
    so the cost is what changed, not the set. With VANISHED, the expunged UIDs of the set
    first."""
    assert modifiers.changed_since is not None
    if modifiers.vanished:
        await _vanished_earlier(session, selected, modifiers.changed_since, sequence)
    rows = await modseqs.changed_since(
        session.server.pool, selected.mailbox.id, modifiers.changed_since
    )
    if by_uid:
        wanted = _uid_filter(selected, sequence)
        return [row["uid"] for row in rows if selected.seq_of(row["uid"]) and wanted(row["uid"])]
    inside = _membership(sequence.resolve(len(selected)))
    found = []
    for row in rows:
        seq = selected.seq_of(row["uid"])
        if seq is not None and inside(seq):
            found.append(row["uid"])
    return found


def with_modseq(items: list[FetchItem]) -> list[FetchItem]:
    """CHANGEDSINCE reports MODSEQ too (after the items asked for, as Dovecot does)."""
    if any(item.name == "MODSEQ" for item in items):
        return items
    return [*items, FetchItem("MODSEQ")]


# -- STORE (3.1.3) --


def store_modifier(reader: Reader) -> int | None:
    """STORE's `(UNCHANGEDSINCE n)` before the action, if given (then followed by SP)."""
    if reader.peek() != 0x28:
        return None
    unchanged_since = None

    def modifier() -> None:
        nonlocal unchanged_since
        name = reader.atom().upper()
        if name != "UNCHANGEDSINCE":
            raise ParseError(f"unknown STORE modifier {name[:20]}")
        reader.sp()
        unchanged_since = reader.mod_sequence()

    reader.parenthesized(modifier)
    reader.sp()
    return unchanged_since


# -- SEARCH (3.1.5) --


def uses_modseq(key: object) -> bool:
    """Whether a parsed search program has a MODSEQ criterion (then results carry MODSEQ)."""
    return keys.mentions(key, keys.Modseq)


async def search_modseq(session: Session, uids: list[int], options: list[str] | None) -> int | None:
    """The MODSEQ of a SEARCH result (3.1.5): the highest mod-sequence of the messages found,
    or, for ESEARCH with only MIN or MAX (or both), of the messages those name."""
    selected = session.selected
    assert selected is not None
    if not uids:
        return None
    chosen = uids
    if options is not None and not {"ALL", "COUNT"} & set(options):
        chosen = [uids[0]] if "MIN" in options else []
        if "MAX" in options:
            chosen.append(uids[-1])
    return await modseqs.highest_of(session.server.pool, selected.mailbox.id, chosen)
