"""aiosmtpd's LMTP/SMTP protocols with what the intake adds around them.

- Replies aiosmtpd makes itself (size and line limits) are rewritten into our enhanced-code
  form, and in LMTP the end-of-DATA ones are repeated once per accepted recipient, as RFC 2033
  4.2 requires (aiosmtpd sends a single line).
- Every connection is tracked so shutdown can close idle ones at once, let a transaction in
  flight finish, and then say 421.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope

from encimap import logs
from encimap.delivery import replies
from encimap.delivery.recipients import Target
from encimap.service.bytebudget import ByteBudget
from encimap.service.connlimits import ConnectionLimiter, Ticket, peer_ip
from encimap.smtpaddress import StrictAddressParsing
from encimap.smtpcodes import EnhancedStatusCodes
from encimap.smtpdata import FastDataReading

log = logs.get_logger(__name__)


class IntakeEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.queue_id = ""
        self.targets: list[Target] = []


class Connections:
    """The open connections of one intake process."""

    def __init__(self) -> None:
        self._open: set[IntakeProtocol] = set()
        self.draining = False
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, protocol: IntakeProtocol) -> None:
        self._open.add(protocol)
        self._empty.clear()

    def discard(self, protocol: IntakeProtocol) -> None:
        self._open.discard(protocol)
        if not self._open:
            self._empty.set()

    def start_draining(self) -> None:
        """Refuse new transactions; close connections that are between transactions."""
        self.draining = True
        for protocol in list(self._open):
            if protocol.idle:
                protocol.say_goodbye()

    async def wait_closed(self, timeout: float) -> int:
        """Wait for the connections to end; close what is left after `timeout`."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            pass
        left = list(self._open)
        for protocol in left:
            protocol.say_goodbye()
        return len(left)


class IntakeProtocol(EnhancedStatusCodes, StrictAddressParsing, FastDataReading):
    extensions = replies.EXTENSIONS

    def __init__(
        self,
        handler: Any,
        *,
        connections: Connections,
        limiter: ConnectionLimiter,
        data_timeout: float = 0.0,
        data_budget: ByteBudget | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.data_budget = data_budget
        self._connections = connections
        self._limiter = limiter
        self._ticket: Ticket | None = None
        self.data_timeout = data_timeout
        self._in_data = False
        self._data_recipients = 0
        self._tracked = False
        self.opened = time.monotonic()
        self.transactions = 0

    @property
    def idle(self) -> bool:
        return not self._in_data and not (self.envelope and self.envelope.mail_from)

    def _create_envelope(self) -> IntakeEnvelope:
        return IntakeEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._tracked:  # not again after STARTTLS
            self._tracked = True
            self._connections.add(self)
            self._ticket = self._limiter.admit(peer_ip(transport.get_extra_info("peername")))
            if self._ticket is None:  # refused before the greeting (its task has not run)
                if self._handler_coroutine is not None:
                    self._handler_coroutine.cancel()
                transport.write(f"{replies.TOO_MANY_CONNECTIONS}\r\n".encode())  # type: ignore[attr-defined]
                transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        peer = self.session.peer if self.session else None
        super().connection_lost(error)
        self._connections.discard(self)
        if self._ticket is not None:
            self._ticket.release()
        log.info(
            "session",
            peer=_peer_text(peer),
            pid=os.getpid(),
            transactions=self.transactions,
            seconds=round(time.monotonic() - self.opened, 3),
            error=str(error) if error else None,
        )

    def say_goodbye(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"{replies.SHUTTING_DOWN}\r\n".encode())
            self.transport.close()

    async def push(self, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else str(status)
        reply = replies.AIOSMTPD_REWRITES.get(text)
        if reply is not None:
            count = self._data_recipients if self._lmtp_data_reply(reply) else 1
            text = "\r\n".join([str(reply)] * max(count, 1))
        await super().push(text)

    def _lmtp_data_reply(self, reply: replies.Reply) -> bool:
        return isinstance(self, LMTP) and self._in_data and reply in replies.DATA_PHASE_REPLIES

    async def smtp_MAIL(self, arg: str | None) -> None:
        if self._connections.draining:
            self.say_goodbye()
            return
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:
        self._in_data = True
        self._data_recipients = len(self.envelope.rcpt_tos) if self.envelope else 0
        try:
            await super().smtp_DATA(arg)
        finally:
            self._in_data = False
            self.transactions += bool(self._data_recipients)
        if self._connections.draining:
            self.say_goodbye()


class IntakeLMTP(IntakeProtocol, LMTP):
    pass


class IntakeSMTP(IntakeProtocol):
    pass


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "unix")
