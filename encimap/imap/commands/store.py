"""Changing messages: STORE, COPY, MOVE (RFC 6851), EXPUNGE and UID EXPUNGE (RFC 4315),
with their UID forms; COPYUID replies (UIDPLUS)."""

from __future__ import annotations

from encimap.imap import wire
from encimap.imap.commands import SELECTED, command, condstore
from encimap.imap.commands.mailbox import existing_mailbox, vaultbox_id
from encimap.imap.parser import ParseError, Reader
from encimap.imap.selected import SYSTEM_FLAGS, Selected
from encimap.imap.session import Session, bad, no
from encimap.store import messages

_SYSTEM = {f.lower(): f for f in SYSTEM_FLAGS}
_MODES = {"FLAGS": "replace", "+FLAGS": "add", "-FLAGS": "remove"}


def normalize_flags(flags: list[str]) -> list[str]:
    """System flags in their canonical case; \\Recent and unknown system flags refused."""
    result = []
    for flag in flags:
        if flag.startswith("\\"):
            if flag.lower() not in _SYSTEM:
                raise ParseError(f"cannot store flag {flag[:40]}")
            flag = _SYSTEM[flag.lower()]
        result.append(flag)
    return result


def target_uids(selected: Selected, reader: Reader, *, by_uid: bool) -> list[int]:
    sequence = reader.sequence_set()
    if by_uid:
        return selected.by_uid(sequence)
    if not selected.is_sequence_valid(sequence):
        raise bad("Invalid message sequence number")
    return selected.by_sequence(sequence)


def writable(session: Session) -> Selected:
    selected = session.selected
    assert selected is not None
    if selected.readonly:
        raise no("[READ-ONLY] Mailbox is open read-only")
    return selected


@command("STORE", states=SELECTED, expunge_ok=False)
async def store(session: Session, _tag: str, reader: Reader) -> str:
    return await _store(session, reader, by_uid=False)


@command("UID STORE", states=SELECTED)
async def uid_store(session: Session, _tag: str, reader: Reader) -> str:
    return await _store(session, reader, by_uid=True)


async def _store(session: Session, reader: Reader, *, by_uid: bool) -> str:
    selected = writable(session)
    reader.sp()
    uids = target_uids(selected, reader, by_uid=by_uid)
    reader.sp()
    unchanged_since = condstore.store_modifier(reader)
    action = reader.atom().upper()
    silent = action.endswith(".SILENT")
    mode = _MODES.get(action.removesuffix(".SILENT"))
    if mode is None:
        raise ParseError(f"unknown STORE action {action[:20]}")
    reader.sp()
    flags = normalize_flags(reader.flag_list())
    reader.end()
    if unchanged_since is not None:
        condstore.enable(session, condstore.CONDSTORE)
    if not uids:
        return "OK Store completed."
    async with session.server.pool.acquire() as conn:
        stored = await messages.store_flags(
            conn,
            vaultbox_id=vaultbox_id(session),
            mailbox_id=selected.mailbox.id,
            uids=uids,
            mode=mode,  # type: ignore[arg-type]
            flags=flags,
            origin=session.id,
            unchanged_since=unchanged_since,
        )
    changed = stored.changed
    selected.flags_changed_here(uid for uid, _current, _modseq in changed)
    for line in selected.announce([*flags, *(f for _uid, current, _m in changed for f in current)]):
        session.send(line)
    for uid, current, modseq in changed:
        if selected.seq_of(uid) is None:
            continue
        if not silent:
            session.send(selected.fetch_flags(uid, current, modseq, uid_at=1 if by_uid else None))
        elif selected.condstore:  # RFC 7162 3.1.3: .SILENT still reports the new MODSEQ
            session.send(selected.fetch_flags(uid, None, modseq, uid_at=0 if by_uid else None))
    if stored.modified:
        numbers = stored.modified if by_uid else [selected.seq_of(u) for u in stored.modified]
        modified = wire.ordered_sequence_set(sorted(n for n in numbers if n is not None))
        return f"OK [MODIFIED {modified}] Conditional store failed."
    return "OK Store completed."


@command("COPY", states=SELECTED, expunge_ok=False)
async def copy(session: Session, _tag: str, reader: Reader) -> str:
    return await _copy(session, reader, by_uid=False, move=False)


@command("MOVE", states=SELECTED, expunge_ok=False)
async def move(session: Session, _tag: str, reader: Reader) -> str:
    return await _copy(session, reader, by_uid=False, move=True)


@command("UID COPY", states=SELECTED)
async def uid_copy(session: Session, _tag: str, reader: Reader) -> str:
    return await _copy(session, reader, by_uid=True, move=False)


@command("UID MOVE", states=SELECTED)
async def uid_move(session: Session, _tag: str, reader: Reader) -> str:
    return await _copy(session, reader, by_uid=True, move=True)


async def _copy(session: Session, reader: Reader, *, by_uid: bool, move: bool) -> str:
    selected = writable(session) if move else session.selected
    assert selected is not None
    reader.sp()
    uids = target_uids(selected, reader, by_uid=by_uid)
    reader.sp()
    name = reader.mailbox()
    reader.end()
    target = await existing_mailbox(session, name)
    verb = "Move" if move else "Copy"
    if not uids:
        return f"OK {verb} completed."
    async with session.server.pool.acquire() as conn:
        uidvalidity, pairs = await messages.copy_messages(
            conn,
            vaultbox_id=vaultbox_id(session),
            source_id=selected.mailbox.id,
            target_id=target.id,
            uids=uids,
            origin=session.id,
            move=move,
        )
    if not pairs:
        return f"OK {verb} completed."
    if target.id == selected.mailbox.id:
        selected.expect_new()
    code = (
        f"COPYUID {uidvalidity} {wire.ordered_sequence_set([p[0] for p in pairs])} "
        f"{wire.ordered_sequence_set([p[1] for p in pairs])}"
    )
    if move:  # RFC 6851 4.3: COPYUID in an untagged OK, then the EXPUNGEs
        session.untagged(f"OK [{code}] Moved")
        for line in selected.expunged([p[0] for p in pairs]):
            session.send(line)
        return f"OK {verb} completed."
    return f"OK [{code}] {verb} completed."


@command("EXPUNGE", states=SELECTED)
async def expunge(session: Session, _tag: str, reader: Reader) -> str:
    reader.end()
    return await _expunge(session, None)


@command("UID EXPUNGE", states=SELECTED)
async def uid_expunge(session: Session, _tag: str, reader: Reader) -> str:
    reader.sp()
    selected = writable(session)
    uids = selected.by_uid(reader.sequence_set())
    reader.end()
    return await _expunge(session, uids)


async def _expunge(session: Session, uids: list[int] | None) -> str:
    selected = writable(session)
    if uids == []:
        return "OK Expunge completed."
    async with session.server.pool.acquire() as conn:
        gone = await messages.expunge(
            conn,
            vaultbox_id=vaultbox_id(session),
            mailbox_id=selected.mailbox.id,
            origin=session.id,
            uids=uids,
        )
    for line in selected.expunged(gone):
        session.send(line)
    # as Dovecot: with QRESYNC the client learns the modseq its expunge took
    selected.report_highest = selected.report_highest or (selected.qresync and bool(gone))
    return "OK Expunge completed."
