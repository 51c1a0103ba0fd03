"""DATA: encrypt one message per accepted recipient and store it; a reply only after COMMIT.

LMTP stores each recipient in its own transaction and answers each (RFC 2033 4.2); SMTP stores
all recipients in one transaction and answers once, so a 451 always means nothing was stored.
An LMTP recipient's delivery is one statement (`store.messages.deliver`) on a pooled
connection outside any transaction block: PostgreSQL commits it before answering, so it costs
one round trip.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from encimap import db, encryption, logs, mimeinfo
from encimap.config import Config
from encimap.delivery import replies
from encimap.delivery.recipients import Target
from encimap.delivery.replies import Reply
from encimap.delivery.trace import Prepared
from encimap.metrics import DELIVERIES, ENCRYPTION_SECONDS
from encimap.mime import EncryptionResult
from encimap.service.listeners import Sessions
from encimap.store import messages

log = logs.get_logger(__name__)


class DeliveryFailed(Exception):
    """Encryption failed for a recipient; nothing of this message is stored for it."""


@dataclass(frozen=True)
class Job:
    """One message after DATA, with everything its log lines need."""

    queue_id: str
    sender: str
    prepared: Prepared
    size_original: int
    received_at: datetime
    started: float  # time.perf_counter() at the end of DATA


def report(queue_id: str, recipient: str, outcome: str, reply: Reply, **fields: object) -> None:
    """The one `delivery` log line and metric per recipient outcome (RCPT refusals too)."""
    DELIVERIES.labels(outcome).inc()
    log.info(
        "delivery",
        queue_id=queue_id,
        recipient=recipient,
        outcome=outcome,
        code=f"{reply.code} {reply.enhanced}",
        **fields,
    )


class Deliverer:
    def __init__(self, pool: asyncpg.Pool, config: Config, background: Sessions) -> None:
        self._pool = pool
        self._config = config
        # Failure records written after the reply (shutdown waits for them, briefly).
        self._background = background

    async def each(self, job: Job, targets: Sequence[Target]) -> list[Reply]:
        """LMTP: one transaction and one reply per recipient, in RCPT order."""
        return [await self._one(job, target) for target in targets]

    async def all(self, job: Job, targets: Sequence[Target]) -> Reply:
        """SMTP: every recipient in one transaction, one reply."""
        try:
            copies = [await self._encrypt(job, target) for target in targets]
        except DeliveryFailed as exc:
            return self._outcome(job, targets, replies.TEMPORARY_FAILURE, "tempfail", str(exc))
        # Lock INBOX rows in one global order, so two sessions never wait on each other.
        copies.sort(key=lambda copy: copy.vaultbox_id)
        try:
            async with self._connection() as conn, conn.transaction():
                for copy in copies:
                    await self._store(conn, job, copy)
        except db.DATABASE_ERRORS as exc:
            return self._outcome(
                job, targets, replies.TEMPORARY_FAILURE, "tempfail", _describe(exc)
            )
        return self._outcome(job, targets, _delivered(job), "stored")

    async def _one(self, job: Job, target: Target) -> Reply:
        try:
            copy = await self._encrypt(job, target)
            async with self._connection() as conn:
                delivered = await self._store(conn, job, copy)
        except (DeliveryFailed, *db.DATABASE_ERRORS) as exc:
            return self._outcome(
                job, [target], replies.TEMPORARY_FAILURE, "tempfail", _describe(exc)
            )
        outcome = "duplicate" if delivered.duplicate else copy.outcome
        return self._outcome(job, [target], _delivered(job), outcome, uid=delivered.uid)

    def _connection(self) -> db.acquire:
        return db.acquire(self._pool, self._config.database.connect_timeout)

    async def _store(
        self, conn: asyncpg.Connection, job: Job, copy: messages.NewMessage
    ) -> messages.Delivered:
        return await messages.deliver(
            conn,
            copy,
            queue_id=job.queue_id,
            duplicate_window_seconds=self._config.intake.duplicate_window_seconds,
            duration_ms=_elapsed_ms(job),
        )

    async def _encrypt(self, job: Job, target: Target) -> messages.NewMessage:
        def encrypt() -> tuple[EncryptionResult, mimeinfo.MessageInfo]:
            started = time.perf_counter()
            result = encryption.encrypt(job.prepared.data, target.keys)
            ENCRYPTION_SECONDS.observe(time.perf_counter() - started)
            # What IMAP serves without parsing again, computed here so that a large message
            # is described in the worker thread too.
            return result, mimeinfo.describe(result.message)

        try:
            if len(job.prepared.data) > self._config.intake.offload_threshold:
                result, info = await asyncio.to_thread(encrypt)
            else:
                result, info = encrypt()
        except encryption.ENCRYPTION_ERRORS as exc:
            raise DeliveryFailed(f"encryption failed: {exc}") from exc
        return messages.NewMessage(
            vaultbox_id=target.vaultbox.id,
            recipient=target.address,
            sender=job.sender,
            message_id=job.prepared.message_id,
            body=result.message,
            body_sha256=job.prepared.body_sha256,
            size_original=job.size_original,
            encryption_method=result.algorithm or "none",
            certificate_fingerprints=list(result.recipient_fingerprints),
            subject_encrypted=result.subject_encrypted,
            internal_date=job.received_at,
            outcome="passthrough" if result.already_encrypted else "stored",
            info=info,
        )

    def _outcome(
        self,
        job: Job,
        targets: Sequence[Target],
        reply: Reply,
        outcome: str,
        error: str = "",
        uid: int | None = None,
    ) -> Reply:
        """Report each recipient's outcome, record a temporary failure; return the reply."""
        fields: dict[str, object] = {"size": job.size_original, "ms": _elapsed_ms(job)}
        if uid is not None:
            fields["uid"] = uid
        if error:
            fields["error"] = error
        for target in targets:
            report(
                job.queue_id,
                target.address,
                outcome,
                reply,
                vaultbox=str(target.vaultbox.id),
                **fields,
            )
        if outcome == "tempfail":
            task = asyncio.ensure_future(self._record_failure(job, targets, reply, error))
            self._background.add(task)
        return reply

    async def _record_failure(
        self, job: Job, targets: Sequence[Target], reply: Reply, error: str
    ) -> None:
        """A `tempfail` row per recipient, if the database answers; never delays the reply."""
        try:
            async with self._connection() as conn:
                for target in targets:
                    await messages.log_failure(
                        conn,
                        vaultbox_id=target.vaultbox.id,
                        queue_id=job.queue_id,
                        recipient=target.address,
                        reply_code=str(reply.code),
                        size_original=job.size_original,
                        duration_ms=_elapsed_ms(job),
                        error=error,
                    )
        except db.DATABASE_ERRORS as exc:
            log.warning("delivery.log_failed", queue_id=job.queue_id, error=_describe(exc))


def _delivered(job: Job) -> Reply:
    return replies.DELIVERED.with_text(f"{replies.DELIVERED.text} as {job.queue_id}")


def _elapsed_ms(job: Job) -> int:
    return round((time.perf_counter() - job.started) * 1000)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
