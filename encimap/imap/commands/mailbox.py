"""Mailbox commands: SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST
(with LIST-EXTENDED selection/return options and SPECIAL-USE), LSUB, STATUS, NAMESPACE,
CLOSE, UNSELECT."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from encimap.imap import listmatch, names, wire
from encimap.imap.commands import AUTHENTICATED, SELECTED, command
from encimap.imap.parser import ParseError, Reader
from encimap.imap.selected import Selected
from encimap.imap.session import Reply, Session, State, no
from encimap.store import Conflict, LimitReached, NotFound, StoreError, mailboxes, messages
from encimap.store.mailboxes import DELIMITER, Mailbox

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


def vaultbox_id(session: Session) -> uuid.UUID:
    assert session.principal is not None and session.principal.vaultbox_id is not None
    return session.principal.vaultbox_id


def nonexistent(name: str) -> Reply:
    return no("[NONEXISTENT] Mailbox doesn't exist: " + name[:200])


async def existing_mailbox(session: Session, name: str) -> Mailbox:
    mailbox = await mailboxes.find_mailbox(session.server.pool, vaultbox_id(session), name)
    if mailbox is None:
        raise nonexistent(name)
    return mailbox


@contextlib.contextmanager
def refusals(name: str) -> Iterator[None]:
    """The store's refusals of a change to mailbox `name` as NO with RFC 5530 codes."""
    try:
        yield
    except NotFound:
        raise nonexistent(name) from None
    except Conflict as exc:
        raise no("[ALREADYEXISTS] " + str(exc)) from None
    except LimitReached as exc:
        raise no("[LIMIT] " + str(exc)) from None
    except names.InvalidName as exc:
        raise no(("[LIMIT] " if exc.limit else "[CANNOT] ") + str(exc)) from None
    except StoreError as exc:
        raise no("[CANNOT] " + str(exc)) from None


def unselect(session: Session) -> None:
    if session.selected is not None:
        session.selected.close()
        session.selected = None
    session.state = State.AUTHENTICATED


@command("SELECT", states=AUTHENTICATED)
async def select(session: Session, _tag: str, reader: Reader) -> str:
    return await _select(session, reader, readonly=False)


@command("EXAMINE", states=AUTHENTICATED)
async def examine(session: Session, _tag: str, reader: Reader) -> str:
    return await _select(session, reader, readonly=True)


async def _select(session: Session, reader: Reader, *, readonly: bool) -> str:
    reader.sp()
    name = reader.mailbox()
    reader.end()
    unselect(session)
    mailbox = await existing_mailbox(session, name)
    selected = Selected(
        session.server.pool,
        session.server.listener,
        mailbox,
        readonly=readonly,
        session_id=session.id,
    )
    rows = await selected.load()
    keywords = sorted({f for row in rows for f in row["flags"] if not f.startswith("\\")})
    flags = " ".join((*SYSTEM_FLAGS, *keywords))
    session.untagged(f"FLAGS ({flags})")
    permanent = "()" if readonly else f"({flags} \\*)"
    session.untagged(f"OK [PERMANENTFLAGS {permanent}] Flags permitted.")
    session.untagged(f"{len(rows)} EXISTS")
    session.untagged("0 RECENT")
    first_unseen = next(
        (seq for seq, row in enumerate(rows, 1) if "\\Seen" not in row["flags"]), None
    )
    if first_unseen is not None:
        session.untagged(f"OK [UNSEEN {first_unseen}] First unseen.")
    session.untagged(f"OK [UIDVALIDITY {mailbox.uidvalidity}] UIDs valid")
    session.untagged(f"OK [UIDNEXT {selected.highest_uid + 1}] Predicted next UID")
    session.selected = selected
    session.state = State.SELECTED
    mode = "READ-ONLY" if readonly else "READ-WRITE"
    return f"OK [{mode}] {'Examine' if readonly else 'Select'} completed."


@command("UNSELECT", states=SELECTED)
async def unselect_command(session: Session, _tag: str, reader: Reader) -> str:
    reader.end()
    unselect(session)
    return "OK Unselect completed."


@command("CLOSE", states=SELECTED)
async def close(session: Session, _tag: str, reader: Reader) -> str:
    """RFC 3501 6.4.2: expunge silently (unless read-only), then leave the mailbox."""
    reader.end()
    selected = session.selected
    assert selected is not None
    if not selected.readonly:
        async with session.server.pool.acquire() as conn:
            await messages.expunge(
                conn,
                vaultbox_id=vaultbox_id(session),
                mailbox_id=selected.mailbox.id,
                origin=session.id,
            )
    unselect(session)
    return "OK Close completed."


@command("CREATE", states=AUTHENTICATED)
async def create(session: Session, _tag: str, reader: Reader) -> str:
    reader.sp()
    name = reader.mailbox()
    reader.end()
    settings = session.config
    with refusals(name):
        names.check_new(
            name,
            max_length=settings.max_mailbox_name_length,
            max_depth=settings.max_mailbox_depth,
        )
        await mailboxes.create_mailbox(
            session.server.pool, vaultbox_id(session), name, max_count=settings.max_mailboxes
        )
    return "OK Create completed."


@command("DELETE", states=AUTHENTICATED)
async def delete(session: Session, _tag: str, reader: Reader) -> str:
    reader.sp()
    name = reader.mailbox()
    reader.end()
    if session.selected is not None and session.selected.mailbox.name == mailboxes.canonical_name(
        name
    ):
        unselect(session)
    with refusals(name):
        await mailboxes.delete_mailbox(session.server.pool, vaultbox_id(session), name)
    return "OK Delete completed."


@command("RENAME", states=AUTHENTICATED)
async def rename(session: Session, _tag: str, reader: Reader) -> str:
    reader.sp()
    old = reader.mailbox()
    reader.sp()
    new = reader.mailbox()
    reader.end()
    with refusals(old):
        await _check_rename(session, old, new)
        await mailboxes.rename_mailbox(session.server.pool, vaultbox_id(session), old, new)
    return "OK Rename completed."


async def _check_rename(session: Session, old: str, new: str) -> None:
    """The new name, and every child's name after the move, within the limits."""
    settings = session.config
    limits = {
        "max_length": settings.max_mailbox_name_length,
        "max_depth": settings.max_mailbox_depth,
    }
    names.check_new(new, **limits)
    old, new = mailboxes.canonical_name(old), mailboxes.canonical_name(new.rstrip(DELIMITER))
    prefix = old + DELIMITER
    for mailbox in await mailboxes.list_mailboxes(session.server.pool, vaultbox_id(session)):
        if mailbox.name.startswith(prefix):
            names.check_size(new + mailbox.name[len(old) :], **limits)


@command("SUBSCRIBE", states=AUTHENTICATED)
async def subscribe(session: Session, _tag: str, reader: Reader) -> str:
    return await _subscribe(session, reader, on=True)


@command("UNSUBSCRIBE", states=AUTHENTICATED)
async def unsubscribe(session: Session, _tag: str, reader: Reader) -> str:
    return await _subscribe(session, reader, on=False)


async def _subscribe(session: Session, reader: Reader, *, on: bool) -> str:
    reader.sp()
    name = reader.mailbox()
    reader.end()
    with refusals(name):
        await mailboxes.set_subscribed(session.server.pool, vaultbox_id(session), name, on)
    return f"OK {'Subscribe' if on else 'Unsubscribe'} completed."


def _pattern(reference: str, pattern: str) -> listmatch.Matcher:
    full = reference + pattern if not pattern.startswith(DELIMITER) else pattern
    return listmatch.Matcher(full, DELIMITER)


def _options(reader: Reader) -> list[str]:
    return [option.upper() for option in reader.parenthesized(reader.atom)]


@command("LIST", states=AUTHENTICATED)
async def list_command(session: Session, _tag: str, reader: Reader) -> str:
    return await _list(session, reader, lsub=False)


@command("LSUB", states=AUTHENTICATED)
async def lsub_command(session: Session, _tag: str, reader: Reader) -> str:
    return await _list(session, reader, lsub=True)


async def _list(session: Session, reader: Reader, *, lsub: bool) -> str:
    reader.sp()
    selection = _options(reader) if not lsub and reader.peek() == 0x28 else []
    if selection:
        reader.sp()
    reference = reader.mailbox() if reader.peek() != 0x22 else reader.quoted().decode()
    reader.sp()
    if reader.peek() == 0x28:
        patterns = reader.parenthesized(reader.list_mailbox)
    else:
        patterns = [reader.list_mailbox()]
    returns: list[str] = []
    if not reader.at_end():
        reader.sp()
        if not reader.accept(b"RETURN "):
            raise ParseError("expected RETURN")
        returns = _options(reader)
    reader.end()
    word = "LSUB" if lsub else "LIST"
    if patterns == [""]:
        session.untagged(f'{word} (\\Noselect) "{DELIMITER}" ""')
        return f"OK {word} completed."
    everything = await mailboxes.list_mailboxes(session.server.pool, vaultbox_id(session))
    names = {m.name for m in everything}
    matchers = [_pattern(reference, p) for p in patterns]
    subscribed_only = lsub or "SUBSCRIBED" in selection
    special_only = "SPECIAL-USE" in selection
    for mailbox in everything:
        if not any(m.match(mailbox.name) for m in matchers):
            continue
        if (subscribed_only and not mailbox.subscribed) or (
            special_only and not mailbox.special_use
        ):
            continue
        has_children = any(n.startswith(mailbox.name + DELIMITER) for n in names)
        attributes = ["\\HasChildren" if has_children else "\\HasNoChildren"]
        if mailbox.special_use and (not lsub):
            attributes.append(mailbox.special_use)
        if mailbox.subscribed and ("SUBSCRIBED" in selection or "SUBSCRIBED" in returns):
            attributes.append("\\Subscribed")
        session.untagged(
            f'{word} ({" ".join(attributes)}) "{DELIMITER}" {wire.astring(mailbox.name)}'
        )
        await session.maybe_flush()
    return f"OK {word} completed."


_STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE")


@command("STATUS", states=AUTHENTICATED)
async def status(session: Session, _tag: str, reader: Reader) -> str:
    reader.sp()
    name = reader.mailbox()
    reader.sp()
    items = _options(reader)
    reader.end()
    if not items or any(item not in _STATUS_ITEMS for item in items):
        raise ParseError("unknown STATUS item")
    mailbox = await existing_mailbox(session, name)
    counts = await mailboxes.counts(session.server.pool, mailbox.id)
    values = {
        "MESSAGES": counts.messages,
        "RECENT": 0,
        "UIDNEXT": mailbox.uid_next,
        "UIDVALIDITY": mailbox.uidvalidity,
        "UNSEEN": counts.unseen,
        "SIZE": counts.size,
    }
    listed = " ".join(f"{item} {values[item]}" for item in items)
    session.untagged(f"STATUS {wire.astring(mailbox.name)} ({listed})")
    return "OK Status completed."


@command("NAMESPACE", states=AUTHENTICATED)
async def namespace(session: Session, _tag: str, reader: Reader) -> str:
    reader.end()
    session.untagged(f'NAMESPACE (("" "{DELIMITER}")) NIL NIL')
    return "OK Namespace completed."
