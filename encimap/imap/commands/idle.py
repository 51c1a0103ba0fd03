"""IDLE (RFC 2177): report changes as they happen until the client sends DONE. Woken by the
mailbox's NOTIFY events (see encimap.store.events), not by polling. A database failure does
not end IDLE: what changed is reported once the database answers again."""

from __future__ import annotations

import asyncio
import contextlib

from encimap.db import DATABASE_ERRORS
from encimap.imap.commands import AUTHENTICATED, command
from encimap.imap.parser import Reader
from encimap.imap.session import Session, bad
from encimap.logs import get_logger

log = get_logger(__name__)
# After a failed report (the database unreachable for a moment), IDLE tries again this soon.
IDLE_RETRY_SECONDS = 1.0


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
        if session.selected is not None:
            changed = asyncio.ensure_future(session.selected.changed.wait())
            waiters.add(changed)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if changed is not None and not changed.done():
                changed.cancel()
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
