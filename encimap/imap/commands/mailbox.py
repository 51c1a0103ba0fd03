"""Mailbox commands: SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST
(with LIST-EXTENDED selection/return options and SPECIAL-USE), LSUB, STATUS, NAMESPACE,
CLOSE, UNSELECT."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from encimap.imap import listmatch, names
from encimap.imap.commands import AUTHENTICATED, SELECTED, command, condstore, never_writes, rev2
from encimap.imap.parser import ParseError, Reader
from encimap.imap.selected import Selected
from encimap.imap.session import Reply, Session, State, no
from encimap.store import Conflict, LimitReached, NotFound, StoreError, mailboxes, messages
from encimap.store.mailboxes import DELIMITER, Mailbox


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
    resync = condstore.select_params(session, reader)
    if session.selected is not None:
        unselect(session)
        rev2.closed(session)
    rev2_mode = rev2.active(session)
    opened = await Selected.open(
        session.server.pool,
        session.server.listener,
        vaultbox_id(session),
        name,
        readonly=readonly,
        session_id=session.id,
        recent=not rev2_mode,
    )
    if opened is None:
        raise nonexistent(name)
    selected, summary = opened
    mailbox = selected.mailbox
    if rev2_mode:
        rev2.select_responses(session, mailbox, name)
    for line in selected.flag_lines():
        session.send(line)
    session.untagged(f"{len(selected)} EXISTS")
    first_unseen = (
        None if summary.first_unseen_uid is None else selected.seq_of(summary.first_unseen_uid)
    )
    if not rev2_mode:  # RFC 9051 appendix E: neither RECENT nor UNSEEN in rev2
        session.untagged(f"{len(selected.recent)} RECENT")
        if first_unseen is not None:
            session.untagged(f"OK [UNSEEN {first_unseen}] First unseen.")
    session.untagged(f"OK [UIDVALIDITY {mailbox.uidvalidity}] UIDs valid")
    session.untagged(f"OK [UIDNEXT {selected.highest_uid + 1}] Predicted next UID")
    try:
        await condstore.selected(session, selected, resync)
    except BaseException:
        selected.close()  # not the session's yet: nothing else would release it
        raise
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
            session.server.pool,
            vaultbox_id(session),
            name,
            max_count=settings.max_mailboxes,
            origin=session.id,
        )
    rev2.normalized(session, name, mailboxes.new_name(name), deleted=False)
    return "OK Create completed."


@command("DELETE", states=AUTHENTICATED)
async def delete(session: Session, _tag: str, reader: Reader) -> str:
    reader.sp()
    name = reader.mailbox()
    reader.end()
    canonical = mailboxes.canonical_name(name)
    if session.selected is not None and session.selected.mailbox.name == canonical:
        unselect(session)
    with refusals(name):
        await mailboxes.delete_mailbox(
            session.server.pool, vaultbox_id(session), name, origin=session.id
        )
    rev2.normalized(session, name, canonical, deleted=True)
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
        await mailboxes.rename_mailbox(
            session.server.pool, vaultbox_id(session), old, new, origin=session.id
        )
    rev2.renamed(session, old, new)
    return "OK Rename completed."


async def _check_rename(session: Session, old: str, new: str) -> None:
    """The new name, and every child's name after the move, within the limits."""
    settings = session.config
    limits = {
        "max_length": settings.max_mailbox_name_length,
        "max_depth": settings.max_mailbox_depth,
    }
    names.check_new(new, **limits)
    old, new = mailboxes.canonical_name(old), mailboxes.new_name(new)
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
    pool, owner = session.server.pool, vaultbox_id(session)
    with refusals(name):
        if on:  # as many subscriptions as folders
            limit = session.config.max_mailboxes
            await mailboxes.subscribe(pool, owner, name, max_count=limit, origin=session.id)
        else:
            await mailboxes.unsubscribe(pool, owner, name, origin=session.id)
    return f"OK {'Subscribe' if on else 'Unsubscribe'} completed."


def _pattern(reference: str, pattern: str) -> listmatch.Matcher:
    full = reference + pattern if not pattern.startswith(DELIMITER) else pattern
    return listmatch.Matcher(full, DELIMITER)


def _options(reader: Reader) -> list[str]:
    return [option.upper() for option in reader.parenthesized(reader.atom)]


@command("LIST", states=AUTHENTICATED, writes=never_writes)
async def list_command(session: Session, _tag: str, reader: Reader) -> str:
    return await _list(session, reader, lsub=False)


@command("LSUB", states=AUTHENTICATED, writes=never_writes)
async def lsub_command(session: Session, _tag: str, reader: Reader) -> str:
    return await _list(session, reader, lsub=True)


_SELECTION = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
# Patterns in one LIST (RFC 5258 allows a list of them): each is matched against every name.
MAX_LIST_PATTERNS = 100
_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})


def _return_options(session: Session, reader: Reader) -> tuple[list[str], list[str]]:
    """LIST's RETURN options, and the items of RETURN (STATUS (...)) (RFC 5819)."""
    status_items: list[str] = []

    def option() -> str:
        word = reader.atom().upper()
        if word == "STATUS":
            reader.sp()
            status_items.extend(_status_items(session, reader))
        return word

    return reader.parenthesized(option), status_items


def _parents(name: str) -> Iterator[str]:
    """`a/b/c` -> `a`, `a/b`."""
    pieces = name.split(DELIMITER)
    for end in range(1, len(pieces)):
        yield DELIMITER.join(pieces[:end])


async def _list(session: Session, reader: Reader, *, lsub: bool) -> str:
    reader.sp()
    has_selection = not lsub and reader.peek() == 0x28
    selection = _options(reader) if has_selection else []
    if has_selection:
        reader.sp()
    reference = (
        reader.mailbox()
        if reader.peek() != 0x22
        else reader.stored_name(reader.quoted().decode("utf-8", "replace"))
    )
    reader.sp()
    if reader.peek() == 0x28:
        patterns = list(dict.fromkeys(reader.parenthesized(reader.list_mailbox)))
    else:
        patterns = [reader.list_mailbox()]
    returns: list[str] = []
    status_items: list[str] = []
    if not reader.at_end():
        reader.sp()
        if not reader.accept(b"RETURN "):
            raise ParseError("expected RETURN")
        returns, status_items = _return_options(session, reader)
    reader.end()
    # RFC 5258 3: unknown options and RECURSIVEMATCH without another selection are BAD.
    if any(o not in _SELECTION for o in selection) or any(o not in _RETURN for o in returns):
        raise ParseError("unknown LIST option")
    if "RECURSIVEMATCH" in selection and not set(selection) - {"RECURSIVEMATCH", "REMOTE"}:
        raise ParseError("RECURSIVEMATCH needs another selection option")
    if len(patterns) > MAX_LIST_PATTERNS:  # each is matched against every name
        raise no(f"[LIMIT] At most {MAX_LIST_PATTERNS} patterns in one LIST")
    word = "LSUB" if lsub else "LIST"
    if patterns == [""]:
        session.untagged(f'{word} (\\Noselect) "{DELIMITER}" ""')
        return f"OK {word} completed."
    pool, owner = session.server.pool, vaultbox_id(session)
    everything = {m.name: m for m in await mailboxes.list_mailboxes(pool, owner)}
    subscribed = await mailboxes.subscriptions(pool, owner)
    matchers = [_pattern(reference, p) for p in patterns]

    def matches(name: str) -> bool:
        return any(m.match(name) for m in matchers)

    # every name that is the path of another: one pass, not one per name listed (a folder
    # tree of 1,000 names 16 levels deep has 15,000 such paths)
    parents = {parent for name in everything for parent in _parents(name)}

    def has_children(name: str) -> bool:
        return name in parents

    if lsub:
        listed: dict[str, list[str]] = {n: [] for n in subscribed if matches(n)}
        # RFC 3501 6.3.9: a parent that matches "%" where only its child is subscribed
        for name in subscribed - listed.keys():
            for parent in _parents(name):
                if parent not in listed and matches(parent):
                    listed[parent] = ["\\Noselect"]
        for name in sorted(listed):
            session.untagged(
                f'LSUB ({" ".join(listed[name])}) "{DELIMITER}" {rev2.wire_name(session, name)}'
            )
        return "OK LSUB completed."

    show_subscribed = "SUBSCRIBED" in selection or "SUBSCRIBED" in returns
    show_children = "CHILDREN" in returns or not (selection or returns)
    if "SUBSCRIBED" in selection:
        candidates = set(subscribed)
        if "RECURSIVEMATCH" in selection:
            candidates |= {p for name in subscribed for p in _parents(name)}
    else:  # with the parents that exist only as the path of a child (\Noselect)
        candidates = set(everything) | parents
    # RECURSIVEMATCH: the paths of the subscribed names the patterns do not match
    unmatched_below = (
        {p for name in subscribed if not matches(name) for p in _parents(name)}
        if "RECURSIVEMATCH" in selection
        else set()
    )
    for name in sorted(candidates):
        if not matches(name):
            continue
        mailbox = everything.get(name)
        extra = ""
        if "SUBSCRIBED" in selection and name not in subscribed:
            # RECURSIVEMATCH: listed for subscribed descendants the patterns do not match
            if name not in unmatched_below:
                continue
            extra = ' ("CHILDINFO" ("SUBSCRIBED"))'
        if "SPECIAL-USE" in selection and (mailbox is None or not mailbox.special_use):
            continue
        attributes = []
        if mailbox is None and has_children(name) and not (selection or returns):
            attributes.append(rev2.placeholder_attribute(session))  # rev1 knows \Noselect
        elif mailbox is None:
            attributes.append("\\NonExistent")  # RFC 5258: implies \Noselect
        if show_children and (mailbox is not None or has_children(name)):
            attributes.append("\\HasChildren" if has_children(name) else "\\HasNoChildren")
        if mailbox is not None and mailbox.special_use:
            attributes.append(mailbox.special_use)
        if show_subscribed and name in subscribed:
            attributes.append("\\Subscribed")
        session.untagged(
            f'LIST ({" ".join(attributes)}) "{DELIMITER}" {rev2.wire_name(session, name)}{extra}'
        )
        if status_items and mailbox is not None:  # RFC 5819: after the mailbox's LIST
            session.untagged(await status_line(session, mailbox, status_items))
        await session.maybe_flush()
    return "OK LIST completed."


_STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "HIGHESTMODSEQ")


def _status_items(session: Session, reader: Reader) -> list[str]:
    items = _options(reader)
    known = rev2.status_items(session, _STATUS_ITEMS)
    if not items or any(item not in known for item in items):
        raise ParseError("unknown STATUS item")
    return items


async def status_line(session: Session, mailbox: Mailbox, items: list[str]) -> str:
    """The STATUS response for `items` of a mailbox (STATUS, LIST RETURN (STATUS ...))."""
    counts = await mailboxes.counts(session.server.pool, mailbox.id)
    values = {
        "MESSAGES": counts.messages,
        "RECENT": await mailboxes.count_recent(session.server.pool, mailbox.id)
        if "RECENT" in items
        else 0,
        "UIDNEXT": mailbox.uid_next,
        "UIDVALIDITY": mailbox.uidvalidity,
        "UNSEEN": counts.unseen,
        "SIZE": counts.size,
        "HIGHESTMODSEQ": counts.highest_modseq,  # RFC 7162 3.1.6
        "DELETED": await mailboxes.count_deleted(session.server.pool, mailbox.id)
        if "DELETED" in items
        else 0,
    }
    listed = " ".join(f"{item} {values[item]}" for item in items)
    return f"STATUS {rev2.wire_name(session, mailbox.name)} ({listed})"


@command("STATUS", states=AUTHENTICATED, writes=never_writes)
async def status(session: Session, _tag: str, reader: Reader) -> str:
    reader.sp()
    name = reader.mailbox()
    reader.sp()
    items = _status_items(session, reader)
    reader.end()
    mailbox = await existing_mailbox(session, name)
    if "HIGHESTMODSEQ" in items:
        condstore.enable(session, condstore.CONDSTORE)
    session.untagged(await status_line(session, mailbox, items))
    return "OK Status completed."


@command("NAMESPACE", states=AUTHENTICATED, writes=never_writes)
async def namespace(session: Session, _tag: str, reader: Reader) -> str:
    reader.end()
    session.untagged(f'NAMESPACE (("" "{DELIMITER}")) NIL NIL')
    return "OK Namespace completed."
