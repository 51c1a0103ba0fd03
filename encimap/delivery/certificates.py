"""Certificates the platform stores with only their PEM get what encimap derives from it
(fingerprint, subject, validity, key type) as soon as they arrive: on start, and whenever the
recipients channel announces a change to the certificates table. Delivery does not wait for
this (RCPT parses the PEM itself); it keeps the table complete for operators and the CLI."""

from __future__ import annotations

import asyncio

import asyncpg

from encimap.db import DATABASE_ERRORS
from encimap.delivery.recipients import RECIPIENTS_CHANNEL
from encimap.logs import get_logger
from encimap.store import certificates, events

log = get_logger(__name__)


class CertificateCompleter:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._closed = False
        self.watch = events.Watch(
            pool,
            RECIPIENTS_CHANNEL,
            on_notify=lambda _payload: self.schedule(),
            on_deaf=self.schedule,
        )

    def start(self) -> None:
        self.watch.start()

    def schedule(self) -> None:
        """Complete what is incomplete, now or right after the run in progress."""
        if self._closed:
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run(), name="certificate-completion")

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                completed = await certificates.complete_certificates(self._pool)
            except DATABASE_ERRORS as exc:
                log.warning("certificate.completion_failed", error=str(exc) or repr(exc))
                return
            if completed:
                log.info("certificate.completed", count=completed)
            if not self._again:
                return

    async def close(self) -> None:
        self._closed = True
        await self.watch.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
