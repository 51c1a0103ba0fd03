"""DATA: encrypt one message per accepted recipient and store it; a reply only after COMMIT.

LMTP stores each recipient in its own transaction and answers each (RFC 2033 4.2); SMTP stores
all recipients in one transaction and answers once, so a 451 always means nothing was stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from encimap import logs, smime
from encimap.config import Config
from encimap.delivery import replies
from encimap.delivery.recipients import DATABASE_ERRORS, Target
from encimap.delivery.replies import Reply
from encimap.delivery.trace import Prepared
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


class Deliverer:
    def __init__(self, pool: asyncpg.Pool, config: Config) -> None:
        self._pool = pool
        self._config = config

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
            async with self._transaction() as conn:
                for copy in copies:
                    await self._store(conn, job, copy)
        except DATABASE_ERRORS as exc:
            return self._outcome(
                job, targets, replies.TEMPORARY_FAILURE, "tempfail", _describe(exc)
            )
        return self._outcome(job, targets, _delivered(job), "stored")

    async def _one(self, job: Job, target: Target) -> Reply:
        try:
            copy = await self._encrypt(job, target)
            async with self._transaction() as conn:
                delivered = await self._store(conn, job, copy)
        except (DeliveryFailed, *DATABASE_ERRORS) as exc:
            return self._outcome(
                job, [target], replies.TEMPORARY_FAILURE, "tempfail", _describe(exc)
            )
        outcome = "duplicate" if delivered.duplicate else copy.outcome
        return self._outcome(job, [target], _delivered(job), outcome, uid=delivered.uid)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        timeout = self._config.database.connect_timeout
        async with self._pool.acquire(timeout=timeout) as conn, conn.transaction():
            yield conn

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
        encrypt: Callable[[], smime.EncryptionResult] = lambda: smime.encrypt_message(  # noqa: E731
            job.prepared.data,
            target.certificates,
            target.profile,
            hide_subject=target.hide_subject,
        )
        try:
            if len(job.prepared.data) > self._config.intake.offload_threshold:
                result = await asyncio.to_thread(encrypt)
            else:
                result = encrypt()
        except (smime.SMIMEError, ValueError) as exc:
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
        """Log one line per recipient's delivery outcome, return the reply."""
        for target in targets:
            log.info(
                "delivery",
                queue_id=job.queue_id,
                recipient=target.address,
                vaultbox=str(target.vaultbox.id),
                outcome=outcome,
                code=f"{reply.code} {reply.enhanced}",
                size=job.size_original,
                ms=_elapsed_ms(job),
                **({"uid": uid} if uid is not None else {}),
                **({"error": error} if error else {}),
            )
        return reply


def _delivered(job: Job) -> Reply:
    return replies.DELIVERED.with_text(f"{replies.DELIVERED.text} as {job.queue_id}")


def _elapsed_ms(job: Job) -> int:
    return round((time.perf_counter() - job.started) * 1000)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
