"""SEARCH and UID SEARCH over the clear metadata (see encimap.store.search), with ESEARCH
results (commands/esearch.py) and SEARCHRES's SAVE (commands/searchres.py)."""

from __future__ import annotations

from encimap.imap.commands import (
    SELECTED,
    command,
    condstore,
    context,
    never_writes,
    rev2,
    searchres,
)
from encimap.imap.parser import (
    MAX_SEARCH_TEXT,
    Reader,
    RecentKey,
    SearchTextTooLong,
    SetKey,
    TooManyKeys,
    parse_search,
)
from encimap.imap.selected import Selected, stretches
from encimap.imap.session import Session, no
from encimap.store import search as keys


def _resolve(node: object, selected: Selected, named: dict[object, keys.Uids]) -> keys.Key:
    """Sequence-set nodes become the UIDs they name in this session's view, as ranges; `named`
    keeps each distinct one, so repeating a set (or RECENT) costs nothing more."""
    match node:
        case SetKey(sequence, uid):
            if node not in named:
                named[node] = keys.Uids(tuple(selected.uid_ranges(sequence, by_uid=uid)))
            return named[node]
        case RecentKey():
            if node not in named:
                recent = stretches(sorted(selected.recent))
                named[node] = keys.Uids(tuple(zip(*recent, strict=True)))
            return named[node]
        case keys.Not(inner):
            return keys.Not(_resolve(inner, selected, named))
        case keys.Or(left, right):
            return keys.Or(_resolve(left, selected, named), _resolve(right, selected, named))
        case keys.And(inner):
            return keys.And(tuple(_resolve(k, selected, named) for k in inner))
    return node  # type: ignore[return-value]


def resolve(session: Session, program_key: object) -> keys.Key:
    """The program with its sequence sets and RECENT as the UIDs they name now."""
    assert session.selected is not None
    return _resolve(program_key, session.selected, {})


async def matching_uids(session: Session, program_key: object) -> list[int]:
    """UIDs of the selected mailbox's messages that a parsed search program matches."""
    selected = session.selected
    assert selected is not None
    rev2.check_search_key(session, program_key)
    if not selected.uids:
        return []
    key = resolve(session, program_key)
    # The session's view as one range: the stored UIDs between its first and last are exactly
    # those it knows (UIDs only grow; newer messages are above its last), so this is exact.
    view = range(selected.uids[0], selected.uids[-1] + 1)
    return await keys.search(session.server.pool, selected.mailbox.id, key, view)


@command("SEARCH", states=SELECTED, expunge_ok=False, writes=never_writes)
async def search(session: Session, tag: str, reader: Reader) -> str:
    return await _saving(session, tag, reader, by_uid=False)


@command("UID SEARCH", states=SELECTED, writes=never_writes)
async def uid_search(session: Session, tag: str, reader: Reader) -> str:
    return await _saving(session, tag, reader, by_uid=True)


async def _saving(session: Session, tag: str, reader: Reader, *, by_uid: bool) -> str:
    try:
        return await _search(session, tag, reader, by_uid=by_uid)
    except Exception:  # NO, BAD or a database failure alike (RFC 5182 2.1)
        if searchres.saving(reader.data):
            searchres.forget(session.selected)
        raise


async def _search(session: Session, tag: str, reader: Reader, *, by_uid: bool) -> str:
    selected = session.selected
    assert selected is not None
    reader.sp()
    limit = session.config.max_search_keys
    try:
        program = parse_search(reader, max_keys=limit)
    except TooManyKeys:
        raise no(f"[LIMIT] Too many search keys (at most {limit})") from None
    except SearchTextTooLong:
        raise no(f"[LIMIT] Search strings too long (at most {MAX_SEARCH_TEXT} bytes)") from None
    save = False
    options: context.ReturnOptions | None = None
    if program.return_options is not None:
        rest, save = searchres.split(program.return_options)
        if rest or not save:  # SAVE alone answers with no result (RFC 5182 2.1)
            options = context.return_options(rest)
            if options.update:
                context.check_tag(session, tag)
    elif rev2.active(session):  # RFC 9051 6.4.4: no RETURN is RETURN (ALL)
        options = context.ReturnOptions(plain=["ALL"])
    found = await matching_uids(session, program.key)
    if save:
        searchres.save(selected, found, options.plain if options else [])
    numbers = found if by_uid else [seq for seq in map(selected.seq_of, found) if seq is not None]
    modseq = None
    if condstore.uses_modseq(program.key):  # RFC 7162 3.1.5
        condstore.enable(session, condstore.CONDSTORE)
        plain = options.plain if options is not None else None
        modseq = await condstore.search_modseq(session, list(found), plain)
    if options is not None:
        if options.update:  # a refusal (NOUPDATE) comes before the results
            context.start(session, tag, resolve(session, program.key), found, by_uid=by_uid)
        session.untagged(context.response(tag, numbers, options, by_uid=by_uid, modseq=modseq))
    elif program.return_options is None:
        tail = f" (MODSEQ {modseq})" if modseq is not None else ""
        session.untagged(" ".join(["SEARCH", *map(str, numbers)]) + tail)
    return "OK Search completed."
