"""NOTIFY (RFC 5465): unsolicited responses about the session's vaultbox while it waits.

`NOTIFY SET [STATUS] (filter events) ...` replaces the session's notification set and
`NOTIFY NONE` drops it. Filters: SELECTED, SELECTED-DELAYED, INBOXES (INBOX: the only
mailbox mail is delivered to), PERSONAL, SUBSCRIBED, SUBTREE and MAILBOXES; the first filter
that matches a mailbox decides its events. Events: MessageNew (with FETCH attributes for the
selected mailbox), MessageExpunge, FlagChange, MailboxName and SubscriptionChange;
AnnotationChange, MailboxMetadataChange and ServerMetadataChange (encimap has no ANNOTATE or
METADATA) and unknown events answer `NO [BADEVENT (...)]` (RFC 5465 3.1).

- The selected mailbox (SELECTED, SELECTED-DELAYED) is reported as IDLE reports it (EXPUNGE,
  EXISTS, FETCH; encimap.imap.commands.idle) while the session waits for its next command;
  SELECTED-DELAYED keeps expunges for the next command that may report them (RFC 5465 6.1).
- Another mailbox is reported by `* STATUS` (messages and flags, RFC 5465 5.2-5.3) and by
  `* LIST` (MailboxName with OLDNAME for a rename or \\NonExistent for a deletion,
  SubscriptionChange with or without \\Subscribed, RFC 5465 5.4-5.5).

One watch per vaultbox (`_Watch`) subscribes to the vaultbox's events on the process's
listener (encimap.store.events) for all its NOTIFY sessions: a batch of events costs one
read of the mailbox list and one STATUS read per changed mailbox and item set, whatever the
number of sessions. Responses are written at once to a session waiting for its next command
(never into a command's output); a session in a command gets them after its command's
responses. A session that holds more than `_MAX_PENDING` of them, whose client does not
read, or whose MessageNew FETCH responses for one batch of new mail would pass
MESSAGE_NEW_BYTES, gets `* OK [NOTIFICATIONOVERFLOW]` and no more notifications (RFC 5465
5.8).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from encimap.db import DATABASE_ERRORS
from encimap.imap.commands import AUTHENTICATED, command, fetch, idle, rev2
from encimap.imap.commands import mailbox as mailbox_commands
from encimap.imap.commands.mailbox import vaultbox_id
from encimap.imap.parser import FetchItem, ParseError, Reader, parse_fetch_items
from encimap.imap.selected import Selected
from encimap.imap.session import Reply, Session, no
from encimap.logs import get_logger
from encimap.store import events, mailboxes
from encimap.store.mailboxes import DELIMITER, Mailbox

log = get_logger(__name__)

NEW, EXPUNGE, FLAGS = "MessageNew", "MessageExpunge", "FlagChange"
ANNOTATION, NAME, SUBSCRIPTION = "AnnotationChange", "MailboxName", "SubscriptionChange"
_KNOWN = (
    NEW,
    EXPUNGE,
    FLAGS,
    ANNOTATION,
    NAME,
    SUBSCRIPTION,
    "MailboxMetadataChange",
    "ServerMetadataChange",
)
SUPPORTED = (NEW, EXPUNGE, FLAGS, NAME, SUBSCRIPTION)
_MESSAGE_EVENTS = frozenset({NEW, EXPUNGE, FLAGS, ANNOTATION})
_BY_KIND = {events.NEW: NEW, events.EXPUNGE: EXPUNGE, events.FLAGS: FLAGS}
_SELECTED = ("SELECTED", "SELECTED-DELAYED")
_OTHERS = ("INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES")
# What a client controls (RFC 5465 leaves the limits to the server): event groups per NOTIFY
# and mailbox names in all its groups, as Dovecot's 100 names per namespace.
MAX_GROUPS = 20
MAX_NAMES = 100
# Responses held for a session in a command before it overflows.
_MAX_PENDING = 1000
# Bytes of MessageNew FETCH responses built for one report: more (bodies of large new mail)
# ends notifications with NOTIFICATIONOVERFLOW rather than holding them in memory; the EXISTS
# still tells the client, which fetches the messages itself.
MESSAGE_NEW_BYTES = 4 * 1024 * 1024
_RETRY_SECONDS = 1.0  # after a failed read the watch tries again this soon


@dataclass(frozen=True)
class Group:
    filter: str  # one of _SELECTED or _OTHERS
    names: tuple[str, ...]  # SUBTREE and MAILBOXES
    events: frozenset[str]
    fetch: tuple[FetchItem, ...] = ()  # MessageNew's attributes (selected filters only)

    def matches(self, name: str, subscribed: set[str]) -> bool:
        if self.filter == "PERSONAL":
            return True
        if self.filter == "INBOXES":
            return name == "INBOX"
        if self.filter == "SUBSCRIBED":
            return name in subscribed
        if self.filter == "MAILBOXES":
            return name in self.names
        return any(name == n or name.startswith(n + DELIMITER) for n in self.names)


@dataclass
class Notify:
    """One session's notification set, and what it has not been told yet."""

    status: bool
    selected: Group | None
    groups: list[Group]
    pending: dict[object, bytes] = field(default_factory=dict)
    overflowed: bool = False
    watch: _Watch | None = None

    def events_for(self, name: str, subscribed: set[str]) -> frozenset[str]:
        """The events wanted for mailbox `name` (not the selected one): its first group's."""
        for group in self.groups:
            if group.matches(name, subscribed):
                return group.events
        return frozenset()

    # -- delivery --
    def deliver(self, session: Session, key: object, line: bytes) -> None:
        """Write `line` now if the session waits for a command, else after its command
        (a later response with the same `key` replaces one not sent yet)."""
        if self.overflowed:
            return
        if session.waiting:
            session.send(line)
            if not session.flush_now():
                self._overflow(session)
            return
        self.pending.pop(key, None)
        self.pending[key] = line
        if len(self.pending) > _MAX_PENDING:
            self._overflow(session)

    def _overflow(self, session: Session) -> None:
        self.overflowed = True
        self.pending = {"overflow": b"* OK [NOTIFICATIONOVERFLOW] Notifications stopped\r\n"}
        self.stop(session)

    def take_pending(self) -> list[bytes]:
        lines = list(self.pending.values())
        self.pending.clear()
        return lines

    def stop(self, session: Session) -> None:
        if self.watch is not None:
            self.watch.leave(session)
            self.watch = None

    # -- the selected mailbox --
    def wait_start(self, session: Session) -> None:
        """The session waits for its next command: what was held for it goes out (after a
        command answered BAD nothing was), and its selected mailbox is reported at once."""
        if self.pending:
            for line in self.take_pending():
                session.send(line)
            session.flush_now()
        selected = session.selected
        group = self.selected
        if selected is None or group is None or not group.events or self.overflowed:
            return

        def wake() -> None:
            if selected.pending_kinds() & self._selected_kinds():
                idle.queue(session, self._report_waiting)

        selected.waker = wake
        wake()

    async def wait_end(self, session: Session) -> None:
        if session.selected is not None and self.selected is not None:
            session.selected.waker = None
            await idle.settle(session)

    def _selected_kinds(self) -> set[str]:
        assert self.selected is not None
        kinds = {events.NEW, events.RESYNC}
        if self.selected.filter == "SELECTED":
            kinds.add(events.EXPUNGE)
        if FLAGS in self.selected.events:
            kinds.add(events.FLAGS)
        return kinds

    async def _report_waiting(self, session: Session) -> list[bytes]:
        assert self.selected is not None
        return await self.report_selected(session, expunge_ok=self.selected.filter == "SELECTED")

    async def report_selected(self, session: Session, *, expunge_ok: bool) -> list[bytes]:
        """The selected mailbox's changes, with MessageNew's FETCH of the new messages."""
        selected = session.selected
        assert selected is not None
        before = selected.highest_uid
        lines = await selected.sync(expunge_ok=expunge_ok)
        group = self.selected
        if group is None or not group.fetch or self.overflowed or selected.highest_uid <= before:
            return lines
        new = list(selected.uids[bisect.bisect_right(selected.uids, before) :])
        fetched, complete = await _fetch_lines(session, new, group.fetch)
        lines.extend(fetched)
        if not complete:
            self._overflow(session)
            lines.extend(self.take_pending())
        return lines


async def _fetch_lines(
    session: Session, uids: list[int], items: Iterable[FetchItem]
) -> tuple[list[bytes], bool]:
    """`* n FETCH (...)` of new messages for MessageNew's attributes (\\Seen is not set), and
    whether they all fit in MESSAGE_NEW_BYTES. Rows are read a few at a time, one at a time
    when they carry bodies, so no more than one body is held beyond what fits."""
    selected = session.selected
    assert selected is not None
    items = list(items)
    columns = fetch.columns_for(items)
    batch = 1 if "body_encrypted" in columns else 64
    lines: list[bytes] = []
    size = 0
    for start in range(0, len(uids), batch):
        for data in await fetch.message_rows(session, uids[start : start + batch], columns):
            line = _fetch_line(selected, items, data)
            if line is None:
                continue
            size += len(line)
            if size > MESSAGE_NEW_BYTES:
                return lines, False
            lines.append(line)
    return lines, True


def _fetch_line(selected: Selected, items: list[FetchItem], data: dict[str, Any]) -> bytes | None:
    seq = selected.seq_of(data["uid"])
    if seq is None:
        return None
    if "flags" in data:
        data = {**data, "flags": selected.flags(data["uid"], data["flags"])}
    try:
        pieces = [
            b"".join(piece for piece in fetch.render(item, data) if piece is not None)
            for item in items
        ]
    except Reply:
        # An item that cannot be served (BINARY of an unknown encoding): the EXISTS tells the
        # client of the message, and its own FETCH gets the NO.
        return None
    return b"* %d FETCH (%b)\r\n" % (seq, b" ".join(pieces))


# -- the command --
@command("NOTIFY", states=AUTHENTICATED)
async def notify(session: Session, _tag: str, reader: Reader) -> str:
    reader.sp()
    verb = reader.atom().upper()
    if verb == "NONE":
        reader.end()
        _drop(session)
        return "OK NOTIFY completed."
    if verb != "SET":
        raise ParseError("expected SET or NONE")
    reader.sp()
    status = reader.accept(b"STATUS ")
    groups: list[Group] = []
    while True:
        groups.append(_group(reader))
        if reader.at_end():
            break
        reader.sp()
        if len(groups) >= MAX_GROUPS:
            raise no(f"[LIMIT] At most {MAX_GROUPS} event groups")
    selected = [g for g in groups if g.filter in _SELECTED]
    if len(selected) > 1:
        raise ParseError("more than one selected filter")
    if sum(len(g.names) for g in groups) > MAX_NAMES:
        raise no(f"[LIMIT] At most {MAX_NAMES} mailbox names")
    unsupported = {e for g in groups for e in g.events} - set(SUPPORTED)
    if unsupported:
        raise no(f"[BADEVENT ({' '.join(SUPPORTED)})] Unsupported NOTIFY events")
    setting = Notify(
        status=status,
        selected=selected[0] if selected else None,
        groups=[g for g in groups if g.filter not in _SELECTED],
    )
    _drop(session)
    await _Watch.join(session, setting)
    session.notify = setting
    if status:
        await _initial_status(session, setting)
    return "OK NOTIFY completed."


def _drop(session: Session) -> None:
    current = session.notify
    if current is not None:
        current.stop(session)
        for line in current.take_pending():
            session.send(line)
        if session.selected is not None:
            session.selected.waker = None
        session.notify = None


def _group(reader: Reader) -> Group:
    reader.expect(b"(")
    name = reader.atom().upper()
    names: tuple[str, ...] = ()
    if name in ("SUBTREE", "MAILBOXES"):
        reader.sp()
        if reader.peek() == 0x28:
            listed = reader.parenthesized(reader.mailbox)
            if not listed:
                raise ParseError("empty mailbox list")
        else:
            listed = [reader.mailbox()]
        names = tuple(dict.fromkeys(mailboxes.canonical_name(n) for n in listed))
    elif name not in _SELECTED and name not in _OTHERS:
        raise ParseError(f"unknown mailbox filter {name[:40]}")
    reader.sp()
    fetch_items: list[FetchItem] = []
    if reader.accept(b"NONE"):
        chosen: set[str] = set()
    else:
        chosen = set(reader.parenthesized(lambda: _event(reader, fetch_items)))
        if not chosen:
            raise ParseError("empty event list")
    reader.expect(b")")
    if name in _SELECTED:
        _check_selected(chosen)
    elif fetch_items:
        raise ParseError("FETCH attributes only for the selected mailbox")
    return Group(name, names, frozenset(chosen), tuple(fetch_items))


def _event(reader: Reader, fetch_items: list[FetchItem]) -> str:
    word = reader.atom()
    known = {e.upper(): e for e in _KNOWN}
    event = known.get(word.upper(), word)
    if event == NEW and reader.data.startswith(b" (", reader.pos):
        reader.sp()
        items = parse_fetch_items(reader)
        if not items:
            raise ParseError("empty FETCH attribute list")
        fetch_items.extend(items)
    return event


def _check_selected(chosen: set[str]) -> None:
    """RFC 5465 5 and 6.1: MessageNew and MessageExpunge together, FlagChange and
    AnnotationChange only with them, and only message events for the selected mailbox."""
    if (NEW in chosen) != (EXPUNGE in chosen):
        raise ParseError("MessageNew and MessageExpunge must be given together")
    if chosen & {FLAGS, ANNOTATION} and NEW not in chosen:
        raise ParseError("FlagChange needs MessageNew and MessageExpunge")
    if chosen & {NAME, SUBSCRIPTION, "MailboxMetadataChange", "ServerMetadataChange"}:
        raise ParseError("only message events for the selected mailbox")


def status_items(wanted: frozenset[str]) -> list[str]:
    """The STATUS items that report `wanted` message events (RFC 5465 3.1, 5.2-5.3), built
    from the STATUS command's items."""
    items = []
    if wanted & {NEW, EXPUNGE}:
        items.append("MESSAGES")
    if NEW in wanted:
        items.append("UIDNEXT")
    if wanted & {NEW, FLAGS}:
        items.append("UIDVALIDITY")
    if wanted & _MESSAGE_EVENTS:
        items.append("UNSEEN")
    if FLAGS in wanted:
        items.append("HIGHESTMODSEQ")
    return items


async def _initial_status(session: Session, setting: Notify) -> None:
    """NOTIFY SET STATUS: the STATUS of every mailbox with message events (RFC 5465 3.1),
    read now (the watch's copy may not have this session's last CREATE yet)."""
    pool, owner = session.server.pool, vaultbox_id(session)
    subscribed = set()
    if any(group.filter == "SUBSCRIBED" for group in setting.groups):
        subscribed = await mailboxes.subscriptions(pool, owner)
    selected_id = session.selected.mailbox.id if session.selected is not None else None
    for mailbox in await mailboxes.list_mailboxes(pool, owner):
        if mailbox.id == selected_id:
            continue
        items = status_items(setting.events_for(mailbox.name, subscribed) & _MESSAGE_EVENTS)
        if items:
            session.untagged(await mailbox_commands.status_line(session, mailbox, items))
            await session.maybe_flush()


# -- the shared watch of a vaultbox --
class _Watch:
    """The NOTIFY sessions of one vaultbox, its events not reported yet and the mailbox list
    and subscriptions as of the last NAMES event (what name changes are reported against)."""

    _all: dict[str, _Watch] = {}

    def __init__(self, session: Session, key: str) -> None:
        self.key = key
        self.owner: uuid.UUID = vaultbox_id(session)
        self.server = session.server
        self.sessions: dict[Session, None] = {}
        self.mailboxes: dict[int, Mailbox] = {}
        self.subscribed: set[str] = set()
        self.changed: dict[int, set[str]] = {}  # mailbox id -> event kinds
        self.names = False  # NAMES (or a resync) seen
        self.origins: set[str] = set()  # the sessions that made the NAMES changes
        self.task: asyncio.Task[None] | None = None
        self.loaded: asyncio.Future[None] | None = None
        self._unsubscribe = session.server.listener.subscribe_vaultbox(key, self._on_event)

    @classmethod
    async def join(cls, session: Session, setting: Notify) -> _Watch:
        key = str(vaultbox_id(session))
        watch = cls._all.get(key)
        if watch is None:
            watch = cls._all[key] = cls(session, key)
        watch.sessions[session] = None
        setting.watch = watch
        if watch.loaded is None:
            watch.loaded = asyncio.ensure_future(watch._load())
        loaded = watch.loaded
        try:
            await asyncio.shield(loaded)
        except BaseException:
            setting.stop(session)
            if loaded.done() and not loaded.cancelled() and loaded.exception() is not None:
                watch.loaded = None  # the next NOTIFY reads again
            raise
        return watch

    async def _load(self) -> None:
        pool = self.server.pool
        listing = await mailboxes.list_mailboxes(pool, self.owner)
        self.subscribed = await mailboxes.subscriptions(pool, self.owner)
        self.mailboxes = {m.id: m for m in listing}

    def leave(self, session: Session) -> None:
        self.sessions.pop(session, None)
        if not self.sessions:
            self._unsubscribe()
            if self._all.get(self.key) is self:
                del self._all[self.key]
            if self.task is not None:
                self.task.cancel()

    def _on_event(self, event: events.Event) -> None:
        if event.kind == events.NAMES:
            self.names = True
            self.origins.add(event.origin)
        elif event.kind == events.RESYNC:
            self.names = True
            self.origins.add("")
            for mailbox_id in self.mailboxes:
                self.changed.setdefault(mailbox_id, set()).add(events.RESYNC)
        else:
            self.changed.setdefault(event.mailbox_id, set()).add(event.kind)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.changed or self.names:
            if self.loaded is not None and not self.loaded.done():
                with contextlib.suppress(Exception):  # its NOTIFY reports the failure
                    await asyncio.shield(self.loaded)
            await self.server.listener.barrier()
            changed, self.changed = self.changed, {}
            names, origins = self.names, self.origins
            self.names, self.origins = False, set()
            try:
                await self._report(changed, names, origins)
            except DATABASE_ERRORS as exc:
                log.warning("imap.notify_unavailable", error=str(exc) or repr(exc))
                for mailbox_id, kinds in changed.items():
                    self.changed.setdefault(mailbox_id, set()).update(kinds)
                self.names = self.names or names
                self.origins |= origins
                await asyncio.sleep(_RETRY_SECONDS)

    async def _report(self, changed: dict[int, set[str]], names: bool, origins: set[str]) -> None:
        pool = self.server.pool
        before, subscribed_before = self.mailboxes, self.subscribed
        current = {m.id: m for m in await mailboxes.list_mailboxes(pool, self.owner)}
        subscribed = self.subscribed
        name_lines: list[tuple[str, str, str, str | None]] = []
        if names:  # diffed only then: a change read before its NAMES event tells no origin
            subscribed = await mailboxes.subscriptions(pool, self.owner)
            name_lines = _name_changes(before, current, subscribed_before, subscribed)
            self.mailboxes, self.subscribed = current, subscribed
        lines: dict[tuple[int, tuple[str, ...], bool], bytes] = {}  # one STATUS read each
        for session in list(self.sessions):
            setting = session.notify
            if setting is None or setting.watch is not self:
                continue
            selected_id = session.selected.mailbox.id if session.selected is not None else None
            for mailbox_id, kinds in changed.items():
                mailbox = current.get(mailbox_id)
                if mailbox is None or mailbox_id == selected_id:
                    continue
                wanted = setting.events_for(mailbox.name, subscribed) & _MESSAGE_EVENTS
                if events.RESYNC not in kinds and not wanted & {_BY_KIND[k] for k in kinds}:
                    continue
                items = tuple(status_items(wanted))
                if not items:
                    continue
                key = (mailbox_id, items, session.utf8_names)  # the name as the session reads it
                if key not in lines:
                    text = await mailbox_commands.status_line(session, mailbox, list(items))
                    lines[key] = f"* {text}\r\n".encode()
                setting.deliver(session, ("status", mailbox_id), lines[key])
            if origins == {session.id}:
                continue  # its own CREATE, RENAME...: its commands' replies told it
            for event, name, attributes, old in name_lines:
                wanted = setting.events_for(name, subscribed | subscribed_before)
                if event in wanted:
                    line = _list_line(session, attributes, name, old)
                    setting.deliver(session, ("list", name), line)


def _name_changes(
    before: dict[int, Mailbox],
    after: dict[int, Mailbox],
    subscribed_before: set[str],
    subscribed: set[str],
) -> list[tuple[str, str, str, str | None]]:
    """(event, mailbox name, LIST attributes, old name) for the mailboxes created, deleted and
    renamed and the subscriptions changed (RFC 5465 5.4, 5.5)."""
    changes: list[tuple[str, str, str, str | None]] = []
    for mailbox_id, mailbox in after.items():
        old = before.get(mailbox_id)
        if old is None:
            changes.append((NAME, mailbox.name, "", None))
        elif old.name != mailbox.name:
            changes.append((NAME, mailbox.name, "", old.name))
    for mailbox_id, mailbox in before.items():
        if mailbox_id not in after:
            changes.append((NAME, mailbox.name, "\\NonExistent", None))
    # a rename moves the subscription with the mailbox: its OLDNAME response says so
    moved = [(before[i].name, after[i].name) for i in before if i in after]
    moved_from = {old for old, new in moved if old != new}
    moved_to = {new for old, new in moved if old != new}
    for name in sorted(subscribed - subscribed_before - moved_to):
        changes.append((SUBSCRIPTION, name, "\\Subscribed", None))
    for name in sorted(subscribed_before - subscribed - moved_from):
        changes.append((SUBSCRIPTION, name, "", None))
    return changes


def _list_line(session: Session, attributes: str, name: str, old: str | None) -> bytes:
    """The LIST response announcing a name change, with the names as this session reads them."""
    extra = f' ("OLDNAME" ({rev2.wire_name(session, old, quoted=True)}))' if old else ""
    listed = rev2.wire_name(session, name)
    return f'* LIST ({attributes}) "{DELIMITER}" {listed}{extra}\r\n'.encode()
