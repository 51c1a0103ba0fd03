"""Mailbox change notifications over PostgreSQL LISTEN/NOTIFY (channel `encimap_mailbox`).

Payloads (sent inside the changing transaction, so they arrive only after commit):
- `<vaultbox_id>:<mailbox_id>:<uid>`: messages up to this UID were added (delivery, APPEND,
  COPY/MOVE). Readers fetch everything above the last UID they know, so a lost or merged
  notification costs nothing.
- `<vaultbox_id>:<mailbox_id>:flags:<origin>:<uids>` and `...:expunge:<origin>:<uids>`: flags
  changed / messages removed; `<uids>` is a range list such as `1-5,9`, or `*` ("resync",
  when the list would not fit in a NOTIFY payload). `<origin>` names the session that made
  the change so it can skip its own echo.
- `<vaultbox_id>:0:names:<origin>:`: the vaultbox's mailboxes (names) or subscriptions
  changed; readers re-read them (IMAP NOTIFY's MailboxName and SubscriptionChange).

One `Listener` per process holds one connection and fans events out to subscribers by
mailbox, or by vaultbox for every mailbox of it (IMAP NOTIFY); if that connection drops,
every subscriber gets a resync event.

`Watch` is the LISTEN loop that caches built on notifications share (the auth engine's on
`encimap_auth`, the intake's recipient lookups on `encimap_recipients`): it tells its owner
each payload, and tells it to forget everything whenever it may have missed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg

from encimap.db import DATABASE_ERRORS
from encimap.logs import get_logger
from encimap.store.types import Executor

log = get_logger(__name__)

CHANNEL = "encimap_mailbox"
NEW, FLAGS, EXPUNGE, RESYNC = "new", "flags", "expunge", "resync"
NAMES = "names"  # mailboxes created, deleted or renamed, or subscriptions changed
_BARRIER_TIMEOUT = 5.0  # seconds a barrier waits for the LISTEN connection before giving up


@dataclass(frozen=True)
class Event:
    kind: str
    mailbox_id: int
    uid: int = 0  # NEW: the highest new UID
    uids: frozenset[int] | None = None  # FLAGS/EXPUNGE; None means "unknown: resync"
    origin: str = ""
    vaultbox_id: str = ""


def decode_ranges(text: str) -> frozenset[int]:
    uids: set[int] = set()
    for item in text.split(","):
        low, _, high = item.partition("-")
        uids.update(range(int(low), int(high or low) + 1))
    return frozenset(uids)


async def publish_new(db: Executor, vaultbox_id: uuid.UUID, mailbox_id: int, uid: int) -> None:
    await db.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{vaultbox_id}:{mailbox_id}:{uid}")


async def publish_change(
    db: Executor,
    vaultbox_id: uuid.UUID,
    mailbox_id: int,
    kind: str,
    origin: str,
    uids: Iterable[int],
) -> None:
    """NOTIFY a flag change or expunge (`encimap_publish_change`, sql/encimap/repeatable/
    36_mailbox_events.sql, which STORE and EXPUNGE call from the statement that writes)."""
    await db.execute(
        "SELECT encimap_publish_change($1, $2, $3, $4, $5::bigint[])",
        vaultbox_id,
        mailbox_id,
        kind,
        origin,
        sorted(set(uids)),
    )


async def publish_names(db: Executor, vaultbox_id: uuid.UUID, origin: str = "") -> None:
    await db.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{vaultbox_id}:0:{NAMES}:{origin}:")


def parse(payload: str) -> Event | None:
    parts = payload.split(":")
    try:
        if len(parts) == 3:
            return Event(NEW, int(parts[1]), uid=int(parts[2]), vaultbox_id=parts[0])
        if len(parts) == 5 and parts[2] in (FLAGS, EXPUNGE):
            uids = None if parts[4] == "*" else decode_ranges(parts[4])
            return Event(parts[2], int(parts[1]), uids=uids, origin=parts[3], vaultbox_id=parts[0])
        if len(parts) == 5 and parts[2] == NAMES:
            return Event(NAMES, 0, origin=parts[3], vaultbox_id=parts[0])
    except ValueError:
        pass
    log.warning("events.bad_payload", payload=payload[:200])
    return None


Subscriber = Callable[[Event], None]


def _join(
    groups: dict[Any, set[Subscriber]], key: Any, subscriber: Subscriber
) -> Callable[[], None]:
    """Add `subscriber` to `key`'s group; the function returned takes it out again (and the
    group, once empty)."""
    groups.setdefault(key, set()).add(subscriber)

    def leave() -> None:
        group = groups.get(key)
        if group is not None:
            group.discard(subscriber)
            if not group:
                del groups[key]

    return leave


class Listener:
    """LISTENs on one dedicated connection and calls subscribers of the event's mailbox."""

    def __init__(self, pool: asyncpg.Pool, retry_delay: float = 1.0) -> None:
        self._pool = pool
        self._retry_delay = retry_delay
        self._subscribers: dict[int, set[Subscriber]] = {}
        self._vaultboxes: dict[str, set[Subscriber]] = {}
        self._connection: asyncpg.pool.PoolConnectionProxy | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._round: asyncio.Future[None] | None = None  # the next barrier() round trip
        self._in_use = asyncio.Lock()  # one operation at a time on the LISTEN connection
        self._barriers: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._watch(), name="events-listener")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._barriers is not None:
            self._barriers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._barriers
        if self._round is not None and not self._round.done():
            self._round.set_result(None)  # nothing more will be heard: do not wait for it
        await self._release()

    def subscribe(self, mailbox_id: int, subscriber: Subscriber) -> Callable[[], None]:
        return _join(self._subscribers, mailbox_id, subscriber)

    def subscribe_vaultbox(self, vaultbox_id: str, subscriber: Subscriber) -> Callable[[], None]:
        """Every event of the vaultbox's mailboxes, and its NAMES events."""
        return _join(self._vaultboxes, vaultbox_id, subscriber)

    def barrier(self) -> asyncio.Future[None]:
        """A future done once every notification committed before this call has been
        dispatched: a caller may start the barrier, do its own work, then await it.

        A commit signals the listening backend before the committer hears of it, and that
        backend sends pending notifications before it answers a later query: so one round
        trip on the LISTEN connection started after this call is enough. Concurrent callers
        share the next round trip."""
        loop = asyncio.get_running_loop()
        if self._connection is None:
            done = loop.create_future()
            done.set_result(None)
            return done
        if self._round is None:
            self._round = loop.create_future()
            if self._barriers is None or self._barriers.done():
                self._barriers = asyncio.create_task(self._run_barriers(), name="events-barrier")
        return asyncio.shield(self._round)

    async def _run_barriers(self) -> None:
        while self._round is not None:
            waiting, self._round = self._round, None
            try:
                async with asyncio.timeout(_BARRIER_TIMEOUT), self._in_use:
                    connection = self._connection
                    if connection is not None:
                        try:
                            await connection.execute(f'LISTEN "{CHANNEL}"')  # a no-op round trip
                        except (*DATABASE_ERRORS, asyncpg.InternalClientError):
                            # notifications may have been lost with the connection: reconnect
                            # and resynchronise every session (asyncpg does not always call
                            # the termination listener when a query fails with the backend)
                            self._lost.set()
                await asyncio.sleep(0)  # let the notification callbacks queued before it run
            except TimeoutError:
                self._lost.set()  # an unanswered LISTEN connection is as good as lost
            finally:
                if not waiting.done():
                    waiting.set_result(None)

    async def _connect(self) -> None:
        connection = await self._pool.acquire()
        await connection.add_listener(CHANNEL, self._on_notify)
        connection.add_termination_listener(lambda _conn: self._lost.set())
        self._connection = connection
        self._lost.clear()

    async def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            async with self._in_use:  # a barrier's round trip may still be on it
                with contextlib.suppress(Exception):
                    await connection.remove_listener(CHANNEL, self._on_notify)
            with contextlib.suppress(Exception):
                await self._pool.release(connection)

    async def _watch(self) -> None:
        while True:
            await self._lost.wait()
            log.warning("events.connection_lost")
            await self._release()
            while self._connection is None:
                try:
                    await self._connect()
                except DATABASE_ERRORS as exc:  # no primary yet during a failover
                    log.warning("events.reconnect_failed", error=str(exc) or repr(exc))
                    await asyncio.sleep(self._retry_delay)
            for mailbox_id in list(self._subscribers):
                self._dispatch(Event(RESYNC, mailbox_id))
            for vaultbox_id in list(self._vaultboxes):
                self._dispatch(Event(RESYNC, 0, vaultbox_id=vaultbox_id))

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        event = parse(payload)
        if event is not None:
            self._dispatch(event)

    def _dispatch(self, event: Event) -> None:
        if event.mailbox_id:
            for subscriber in list(self._subscribers.get(event.mailbox_id, ())):
                subscriber(event)
        for subscriber in list(self._vaultboxes.get(event.vaultbox_id, ())):
            subscriber(event)


class Watch:
    """Holds one LISTEN connection on `channel` for a cache, reconnecting when it drops.

    `on_notify(payload)` runs for every notification. `on_deaf()` runs whenever the channel
    was, or may have been, unheard: when LISTEN starts (a change may have been committed
    before it), when the connection is lost and when the watch stops; a cache empties itself
    there, so nothing it holds survives a missed notification. `listening` is set while
    notifications are heard; a cache keeps nothing while it is clear.
    """

    # Short enough that a cache is back within seconds of a failover's promotion.
    RETRY_MAX = 5.0

    def __init__(
        self,
        pool: asyncpg.Pool,
        channel: str,
        *,
        on_notify: Callable[[str], None],
        on_deaf: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._channel = channel
        self._on_notify = on_notify
        self._on_deaf = on_deaf
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"listen-{self._channel}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.listening.clear()
        self._on_deaf()

    async def _run(self) -> None:
        retry = 0.5
        while True:
            try:
                async with self._pool.acquire() as conn:
                    lost = asyncio.Event()
                    conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                    await conn.add_listener(self._channel, self._heard)
                    self._on_deaf()
                    self.listening.set()
                    retry = 0.5
                    try:
                        await lost.wait()
                    finally:
                        with contextlib.suppress(*DATABASE_ERRORS):
                            await conn.remove_listener(self._channel, self._heard)
            except DATABASE_ERRORS as exc:
                log.warning("listen.failed", channel=self._channel, error=str(exc) or repr(exc))
            self.listening.clear()
            self._on_deaf()
            log.warning("listen.lost", channel=self._channel, retry_in=retry)
            await asyncio.sleep(retry)
            retry = min(retry * 2, self.RETRY_MAX)

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._on_notify(payload)
