"""aiosmtpd's SMTP protocol with the submission port's TLS and AUTH rules.

- STARTTLS listener: AUTH is neither advertised nor accepted before TLS (aiosmtpd answers
  `538 5.7.11`); MAIL before TLS gets `530 5.7.0`.
- Implicit-TLS listener: the connection is TLS from the first byte, so no STARTTLS is offered.
- MAIL needs a successful AUTH (`530 5.7.0`) and a non-null sender (`553 5.7.1`).

aiosmtpd's own `auth_required` is left off: it is meant for TLS-less setups and warns on every
connection when combined with implicit TLS; the checks above are ours instead.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import SMTP

from encimap.submission import replies


class SubmissionServer(SMTP):
    def __init__(
        self,
        handler: Any,
        *,
        implicit_tls: bool,
        tls_context: ssl.SSLContext,
        hostname: str,
        max_message_size: int,
        timeout: float,
        on_session: Callable[[asyncio.Task[None]], None],
    ) -> None:
        super().__init__(
            handler,
            hostname=hostname,
            ident="encimap",
            data_size_limit=max_message_size or None,
            tls_context=None if implicit_tls else tls_context,
            auth_require_tls=not implicit_tls,
            timeout=timeout,
        )
        self.implicit_tls = implicit_tls
        self._on_session = on_session

    @property
    def secured(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first and self._handler_coroutine is not None:
            self._on_session(self._handler_coroutine)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._on_session(self.loop.create_task(self.event_handler.finish()))

    async def smtp_MAIL(self, arg: str | None) -> None:
        assert self.session is not None
        refusal = None
        if not self.secured:
            refusal = replies.STARTTLS_FIRST
        elif not self.session.authenticated:
            refusal = replies.AUTH_FIRST
        elif (self._strip_command_keyword("FROM:", arg or "") or "").startswith("<>"):
            refusal = replies.NULL_SENDER
        if refusal:
            await self.push(refusal)
            return
        await super().smtp_MAIL(arg)
