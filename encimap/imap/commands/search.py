"""SEARCH and UID SEARCH over the clear metadata (see encimap.store.search)."""

from __future__ import annotations

from encimap.imap.commands import SELECTED, command
from encimap.imap.parser import Reader, SetKey, TooManyKeys, parse_search
from encimap.imap.selected import Selected
from encimap.imap.session import Session, bad, no
from encimap.store import search as keys


def _resolve(node: object, selected: Selected) -> keys.Key:
    """Sequence-set nodes become the UIDs they name in this session's view."""
    match node:
        case SetKey(sequence, uid):
            found = selected.by_uid(sequence) if uid else selected.by_sequence(sequence)
            return keys.Uids(tuple(found))
        case keys.Not(inner):
            return keys.Not(_resolve(inner, selected))
        case keys.Or(left, right):
            return keys.Or(_resolve(left, selected), _resolve(right, selected))
        case keys.And(inner):
            return keys.And(tuple(_resolve(k, selected) for k in inner))
    return node  # type: ignore[return-value]


@command("SEARCH", states=SELECTED, expunge_ok=False)
async def search(session: Session, _tag: str, reader: Reader) -> str:
    return await _search(session, reader, by_uid=False)


@command("UID SEARCH", states=SELECTED)
async def uid_search(session: Session, _tag: str, reader: Reader) -> str:
    return await _search(session, reader, by_uid=True)


async def _search(session: Session, reader: Reader, *, by_uid: bool) -> str:
    selected = session.selected
    assert selected is not None
    reader.sp()
    limit = session.config.max_search_keys
    try:
        program = parse_search(reader, max_keys=limit)
    except TooManyKeys:
        raise no(f"[LIMIT] Too many search keys (at most {limit})") from None
    if program.return_options:
        raise bad("SEARCH RETURN (ESEARCH) is not supported")
    if not selected.uids:
        session.untagged("SEARCH")
        return "OK Search completed."
    key = _resolve(program.key, selected)
    found = await keys.search(session.server.pool, selected.mailbox.id, key, selected.uids)
    if by_uid:
        numbers = found
    else:
        numbers = [seq for seq in map(selected.seq_of, found) if seq is not None]
    session.untagged("SEARCH" + "".join(f" {n}" for n in numbers))
    return "OK Search completed."
