"""IDLE (RFC 2177): report changes as they happen until the client sends DONE. Woken by the
mailbox's NOTIFY events (see encimap.store.events), not by polling. A database failure does
not end IDLE: what changed is reported once the database answers again.

The sessions idling on a mailbox are reported together: an event queues them, and one task
per mailbox waits for the listener once, reads once (encimap.imap.shared) and writes each
session's untagged responses straight to its connection, without waking the sessions' own
tasks. A session whose report fails, or whose client is behind on reading, is woken instead
and reports (and waits for its client) itself.

NOTIFY (encimap.imap.commands.notify) reports the selected mailbox of a session waiting for
its next command the same way (`queue`, `settle`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from encimap.db import DATABASE_ERRORS
from encimap.imap.commands import AUTHENTICATED, command
from encimap.imap.parser import Reader
from encimap.imap.session import Session, bad
from encimap.logs import get_logger

log = get_logger(__name__)
# After a failed report (the database unreachable for a moment), IDLE tries again this soon.
IDLE_RETRY_SECONDS = 1.0
# The untagged responses that report a session's selected mailbox (Selected.sync and more).
Report = Callable[[Session], Awaitable[list[bytes]]]
# mailbox id -> the idling sessions with changes to report, and how (present while its
# task runs)
_due: dict[int, dict[Session, Report]] = {}
_reporters: set[asyncio.Task[None]] = set()
# session -> its report under way: IDLE does not end in the middle of one
_reporting: dict[Session, asyncio.Future[None]] = {}


@command("IDLE", states=AUTHENTICATED)
async def idle(session: Session, _tag: str, reader: Reader) -> str:
    reader.end()
    session.send(b"+ idling\r\n")
    await session.after_command(expunge_ok=True)
    await session.flush()
    done = asyncio.ensure_future(session.read_line())
    try:
        with session.waiting_for_client():
            await _wait(session, done)
    finally:
        if not done.done():
            done.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await done
    if done.result().strip().upper() != b"DONE":
        raise bad("Expected DONE")
    return "OK Idle completed."


async def _wait(session: Session, done: asyncio.Future[bytes]) -> None:
    """Report changes until the client's line (DONE) arrives."""
    while True:
        waiters: set[asyncio.Future[object]] = {done}
        changed = None
        selected = session.selected
        if selected is not None:
            changed = asyncio.ensure_future(selected.changed.wait())
            waiters.add(changed)
            selected.waker = lambda: queue(session, _sync)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if selected is not None:
                selected.waker = None
            if changed is not None and not changed.done():
                changed.cancel()
            await settle(session)
        if done.done():
            break
        try:
            await session.after_command(expunge_ok=True)
        except DATABASE_ERRORS as exc:
            # Keep idling: the changes stay pending (Selected.sync). The mailbox listener
            # resynchronises every session once its own connection is back, which wakes this
            # one; a failure on a pooled connection alone is retried a moment later.
            log.warning("imap.idle_unavailable", session=session.id, error=str(exc) or repr(exc))
            if session.selected is not None:
                asyncio.get_running_loop().call_later(
                    IDLE_RETRY_SECONDS, session.selected.changed.set
                )
        await session.flush()


async def _sync(session: Session) -> list[bytes]:
    assert session.selected is not None
    if session.notify is not None:  # with NOTIFY's FETCH of new messages
        return await session.notify.report_selected(session, expunge_ok=True)
    return await session.selected.sync(expunge_ok=True)


async def settle(session: Session) -> None:
    """Wait for the report of the session under way, if any (its waker already removed)."""
    under_way = _reporting.get(session)
    if under_way is not None:
        await asyncio.shield(under_way)


def queue(session: Session, report: Report) -> None:
    """An event for the waiting session: report it with the others of its mailbox."""
    assert session.selected is not None
    mailbox_id = session.selected.mailbox.id
    due = _due.get(mailbox_id)
    if due is None:
        due = _due[mailbox_id] = {}
        task = asyncio.get_running_loop().create_task(_report(session, mailbox_id))
        _reporters.add(task)
        task.add_done_callback(_reporters.discard)
    due[session] = report


async def _report(first: Session, mailbox_id: int) -> None:
    """Report the queued sessions of the mailbox until none is left."""
    try:
        while _due[mailbox_id]:
            # every change committed before the events is dispatched: one wait for all
            await first.server.listener.barrier()
            due = _due[mailbox_id]
            _due[mailbox_id] = {}
            for session, report in due.items():
                await _report_one(session, report)
    finally:
        for session in _due.pop(mailbox_id, {}):
            if session.selected is not None:
                session.selected.changed.set()


async def _report_one(session: Session, report: Report) -> None:
    selected = session.selected
    if selected is None or selected.waker is None:
        return  # the wait ended: the session reports after its next command
    under_way = asyncio.get_running_loop().create_future()
    _reporting[session] = under_way
    try:
        for line in await report(session):
            session.send(line)
        if not session.flush_now():
            selected.changed.set()
    except Exception:  # the session's own task reports it, and its errors
        selected.changed.set()
    finally:
        del _reporting[session]
        under_way.set_result(None)
