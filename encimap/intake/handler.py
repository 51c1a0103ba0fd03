"""The aiosmtpd handler: policy at MAIL, RCPT and DATA (the protocol itself is aiosmtpd's)."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiosmtpd.smtp import SMTP, Session

from encimap import logs
from encimap.config import Config
from encimap.delivery import replies, trace
from encimap.delivery.deliverer import Deliverer, Job, report
from encimap.delivery.recipients import CertificateCache, RecipientCache, Target, resolve
from encimap.intake.server import IntakeEnvelope, IntakeProtocol
from encimap.service.listeners import Sessions

log = logs.get_logger(__name__)


def new_queue_id() -> str:
    return secrets.token_hex(5).upper()


class IntakeHandler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        config: Config,
        *,
        hostname: str,
        listen_pool: asyncpg.Pool | None = None,
    ) -> None:
        """`listen_pool`: where the recipient cache's LISTEN connection comes from (default
        `pool`)."""
        self._pool = pool
        self._config = config
        self._hostname = hostname
        self._lmtp = config.intake.protocol == "lmtp"
        # Deliveries run as their own tasks: a client that disconnects after DATA does not
        # cancel a transaction half-way; shutdown waits for these.
        self.deliveries = Sessions()
        self._deliverer = Deliverer(pool, config, self.deliveries)
        size = config.intake.recipient_cache_size
        self._certificates = CertificateCache(size)
        max_age = config.intake.recipient_cache_seconds
        self.recipients = (
            RecipientCache(listen_pool or pool, max_age, size) if max_age > 0 else None
        )

    async def handle_PROXY(self, server: SMTP, session: Session, envelope: Any, proxy: Any) -> bool:
        return True  # the trusted proxy's data is in session.proxy_data

    async def handle_EHLO(
        self,
        server: IntakeProtocol,
        session: Session,
        envelope: IntakeEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handler with this hook
        return server.extension_reply(responses)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: IntakeEnvelope, address: str, options: Any
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.queue_id = new_queue_id()
        return str(replies.SENDER_OK)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: IntakeEnvelope, address: str, options: Any
    ) -> str:
        if len(envelope.targets) >= self._config.intake.max_recipients:
            reply = replies.TOO_MANY_RECIPIENTS
        else:
            found = await resolve(
                self._pool, address, self._config, self._certificates, self.recipients
            )
            if isinstance(found, Target):
                envelope.rcpt_tos.append(address)
                envelope.rcpt_options.extend(options)
                envelope.targets.append(found)
                return str(replies.RECIPIENT_OK)
            reply = found
        outcome = "tempfail" if reply.temporary else "rejected"
        report(envelope.queue_id, address, outcome, reply, stage="rcpt")
        return str(reply)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: IntakeEnvelope) -> str:
        raw = envelope.original_content or b""
        received_at = datetime.now(UTC)
        prepared = trace.prepare(
            raw,
            trace.Trace(
                sender=envelope.mail_from or "",
                helo=session.host_name or "",
                peer_ip=_client_ip(session),
                hostname=self._hostname,
                protocol="LMTP" if self._lmtp else "ESMTP",
                queue_id=envelope.queue_id,
                received_at=received_at,
            ),
        )
        job = Job(
            queue_id=envelope.queue_id,
            sender=envelope.mail_from or "",
            prepared=prepared,
            size_original=len(raw),
            received_at=received_at,
            started=time.perf_counter(),
        )
        targets = list(envelope.targets)
        task = asyncio.ensure_future(self._deliver(job, targets))
        self.deliveries.add(task)
        return await asyncio.shield(task)

    async def _deliver(self, job: Job, targets: list[Target]) -> str:
        try:
            if self._lmtp:
                found = await self._deliverer.each(job, targets)
                return "\r\n".join(str(reply) for reply in found)
            return str(await self._deliverer.all(job, targets))
        except Exception as exc:
            # A bug of ours still owes the MTA one temporary reply per recipient.
            log.exception("delivery.error", queue_id=job.queue_id, error=repr(exc))
            count = len(targets) if self._lmtp else 1
            return "\r\n".join([str(replies.TEMPORARY_FAILURE)] * count)

    async def handle_exception(self, error: Exception) -> str:
        # Never a 5xx for our own bug: the MTA keeps the message and retries.
        log.exception("intake.error", error=f"{type(error).__name__}: {error}")
        return str(replies.TEMPORARY_FAILURE)


def _client_ip(session: Session) -> str:
    proxy = getattr(session, "proxy_data", None)
    address = getattr(proxy, "src_addr", None) if proxy else None
    if address is None:
        peer = session.peer
        address = peer[0] if isinstance(peer, tuple) else None
    return str(address) if address else "unix"
