"""aiosmtpd's SMTP protocol with the submission port's TLS and AUTH rules.

- STARTTLS listener: AUTH is neither advertised nor accepted before TLS (aiosmtpd answers
  `538 5.7.11`); MAIL before TLS gets `530 5.7.0`.
- Implicit-TLS listener: the connection is TLS from the first byte, so no STARTTLS is offered.
- MAIL needs a successful AUTH (`530 5.7.0`) and a non-null sender (`553 5.7.1`).
- ENHANCEDSTATUSCODES is announced and every reply carries an RFC 3463 code
  (encimap.smtpcodes), aiosmtpd's own and upstream ones passed through included.
- Connection limits (encimap.service.connlimits): over a limit the connection gets
  `421 4.7.0` instead of the greeting; without a successful AUTH within `login_timeout` it
  gets `421 4.7.0` and is closed. aiosmtpd's `timeout` runs from one valid command to the
  next (not per read); `data_timeout` bounds DATA as a whole.
- A session that has been refused `max_errors` times (any 4xx/5xx reply, as Postfix's
  `smtpd_hard_error_limit` counts, but not `replies.NOT_CLIENT_ERRORS`: the server's own
  unavailability and recipients over the limit) gets `421 4.7.0` and is closed: refused RCPTs
  cost a database reservation and an upstream command each.

aiosmtpd's own `auth_required` is left off: it is meant for TLS-less setups and warns on every
connection when combined with implicit TLS; the checks above are ours instead.

STARTTLS goes through `loop.start_tls` rather than aiosmtpd's own wiring of asyncio's
pure-Python SSL protocol, so on uvloop the TLS layer is uvloop's compiled one (a tenth of the
submission's CPU per message went to asyncio's).
"""

from __future__ import annotations

import asyncio
import binascii
import ssl
from base64 import b64decode, b64encode
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import MISSING, TLSSetupException, syntax

from encimap.service.bytebudget import ByteBudget
from encimap.service.connlimits import ConnectionLimiter, Ticket, peer_ip
from encimap.smtpaddress import StrictAddressParsing
from encimap.smtpcodes import EnhancedStatusCodes
from encimap.smtpdata import FastDataReading
from encimap.submission import replies


class SubmissionServer(EnhancedStatusCodes, StrictAddressParsing, FastDataReading):
    def __init__(
        self,
        handler: Any,
        *,
        implicit_tls: bool,
        tls_context: ssl.SSLContext,
        hostname: str,
        max_message_size: int,
        timeout: float,
        data_timeout: float,
        max_errors: int = 0,
        limiter: ConnectionLimiter,
        data_budget: ByteBudget | None = None,
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
        self.sasl_refusal: str | None = None
        self.max_errors = max_errors
        self.errors = 0
        self.data_timeout = data_timeout
        self.data_budget = data_budget
        self._limiter = limiter
        self._ticket: Ticket | None = None
        self._on_session = on_session

    @property
    def secured(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if not first:
            return
        client_ip = peer_ip(transport.get_extra_info("peername"))
        self.event_handler.connected(client_ip)
        self._ticket = self._limiter.admit(
            client_ip, login=True, on_login_timeout=self._login_expired
        )
        if self._ticket is None:
            if self._handler_coroutine is not None:  # not started yet: no greeting
                self._handler_coroutine.cancel()
            self._goodbye(replies.TOO_MANY_CONNECTIONS)
        elif self._handler_coroutine is not None:
            self._on_session(self._handler_coroutine)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self._ticket is not None:
            self._ticket.release()
        self._on_session(self.loop.create_task(self.event_handler.finish()))

    async def push(self, status: str | bytes) -> None:
        await super().push(status)
        reply = status.encode() if isinstance(status, str) else status
        if not self.max_errors or reply[:1] not in (b"4", b"5"):
            return
        if reply.startswith(replies.NOT_CLIENT_ERRORS):
            return
        self.errors += 1
        if self.errors >= self.max_errors:
            self._goodbye(replies.TOO_MANY_ERRORS)

    def _timeout_cb(self) -> None:
        # aiosmtpd closes silently; RFC 5321 4.5.3.2 lets the server say 421 first.
        self._goodbye(replies.TIMEOUT)

    def _login_expired(self) -> None:
        self._goodbye(replies.LOGIN_TIMEOUT)

    def _goodbye(self, reply: str) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(reply.encode() + b"\r\n")  # type: ignore[attr-defined]
            transport.close()

    async def challenge_auth(
        self,
        challenge: str | bytes,
        encode_to_b64: bool = True,
        log_client_response: bool = False,
    ) -> Any:
        """aiosmtpd's challenge_auth (the decoded response, or MISSING once the exchange ended
        with a reply sent), but a response line over `line_length_limit` is answered
        `500 5.5.6` (RFC 4954 4) and read to its end instead of escaping as an error, and
        `sasl_refusal` says why an exchange ended that the client did not cancel with `*`."""
        self.sasl_refusal = None
        if isinstance(challenge, str):
            challenge = challenge.encode()
        await self.push(b"334 " + (b64encode(challenge) if encode_to_b64 else challenge))
        try:
            line = await self._read_line()
        except asyncio.IncompleteReadError:  # the client left
            return MISSING
        if line is None:
            self.sasl_refusal = "response line too long"
            await self.push(replies.AUTH_LINE_TOO_LONG)
            return MISSING
        blob = line.strip()
        if blob == b"*":
            await self.push(replies.AUTH_CANCELLED)
            return MISSING
        try:
            return b64decode(blob, validate=True)
        except binascii.Error:
            self.sasl_refusal = "invalid base64"
            await self.push(replies.AUTH_BAD_BASE64)
            return MISSING

    async def _read_line(self) -> bytes | None:
        """One line from the client; None (the rest of it read and dropped) when it is longer
        than `line_length_limit`, as aiosmtpd's command loop does with a long command.
        IncompleteReadError when the client leaves."""
        try:
            return await self._reader.readuntil()
        except asyncio.LimitOverrunError as overrun:
            await self._reader.read(overrun.consumed)
        while True:
            try:
                await self._reader.readuntil()
                return None
            except asyncio.LimitOverrunError as overrun:
                await self._reader.read(overrun.consumed)

    async def smtp_AUTH(self, arg: str) -> None:
        await super().smtp_AUTH(arg)
        if self._ticket is not None and self.session is not None and self.session.authenticated:
            self._ticket.logged_in()

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            await self.push(replies.STARTTLS_SYNTAX)
            return
        if not self.tls_context:
            await self.push(replies.TLS_NOT_AVAILABLE)
            return
        if self._tls_protocol is not None:
            await self.push(replies.TLS_ALREADY_ACTIVE)
            return
        assert self.transport is not None
        await self.push(replies.TLS_READY)
        # RFC 3207 4.2: drop plaintext pipelined behind STARTTLS. Now, not after the handshake:
        # the TLS layer may hand over the client's first command before start_tls returns.
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        plain = self.transport
        try:
            secured = await self.loop.start_tls(plain, self, self.tls_context, server_side=True)
        except (OSError, ssl.SSLError, TimeoutError) as error:
            raise TLSSetupException() from error
        if secured is None:  # the connection closed during the handshake
            raise TLSSetupException()
        self._secured(plain, secured)

    def _secured(self, plain: asyncio.BaseTransport, secured: asyncio.Transport) -> None:
        """What aiosmtpd's connection_made does after its own STARTTLS (RFC 3207 4.2: the
        session starts again)."""
        self._original_transport = plain  # aiosmtpd closes it when the connection is lost
        self._tls_protocol = secured  # type: ignore[assignment]  # aiosmtpd tests it as a flag
        self._set_rset_state()
        self.session = self._create_session()
        self.session.peer = secured.get_extra_info("peername")
        self.session.ssl = {
            key: secured.get_extra_info(key)
            for key in ("sslcontext", "ssl_object", "peercert", "cipher", "compression")
        }
        self._reset_timeout()
        self._reader._transport = secured  # type: ignore[attr-defined]
        self._writer._transport = secured  # type: ignore[attr-defined]
        self.transport = secured

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
