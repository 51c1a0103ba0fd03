"""One client connection of the auth socket (a Postfix smtpd process, or another daemon).

The server sends its handshake at once, then answers AUTH/CONT lines. Every AUTH runs as its
own task, so one connection may have many requests in flight; answers carry the request id.
A temporary failure (database down, bcrypt queue full) closes the connection.

Postfix never tells the server about an exchange its SMTP client abandoned (`*`, bad base64,
a hang-up after the `334`), and one connection serves an smtpd process for its whole life. So
an exchange waiting for a CONT is dropped when MAX_PENDING newer ones wait, and a CONT for an
exchange that is gone is answered FAIL (as Dovecot does), not with a closed connection.
Replies wait for the peer to read them: a peer that stops reading stops being read.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass

from encimap import logs
from encimap.auth import AuthEngine, AuthFailed, AuthUnavailable
from encimap.authsocket import codec
from encimap.service.listeners import Sessions

log = logs.get_logger(__name__)

MAX_PENDING = 128  # exchanges waiting for the client's CONT, per connection
MAX_RUNNING = 128  # checks under way, per connection
SERVICES = {"smtp": "smtp", "submission": "smtp", "imap": "imap"}
_connection_ids = itertools.count(1)


@dataclass
class _Exchange:
    request: codec.AuthRequest
    username: str | None = None


class AuthConnection:
    def __init__(
        self,
        engine: AuthEngine,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        requests: Sessions,
    ) -> None:
        self.engine = engine
        self.reader = reader
        self.writer = writer
        self.requests = requests
        self.id = next(_connection_ids)
        self._pending: dict[str, _Exchange] = {}
        self._version_seen = False
        self._running: set[str] = set()

    async def run(self) -> None:
        self._send(codec.handshake(os.getpid(), self.id))
        try:
            while True:
                try:
                    line = await self.reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    raise codec.ProtocolError(f"line longer than {codec.MAX_LINE} bytes") from None
                self._dispatch(codec.split_line(line[:-1]))
                await self.writer.drain()  # returns at once unless the peer stopped reading
        except codec.ProtocolError as exc:
            log.warning("authsocket.protocol_error", connection=self.id, error=str(exc))
        except ConnectionError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()

    def _send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def _dispatch(self, fields: list[str]) -> None:
        command, args = fields[0], fields[1:]
        if command == "VERSION":
            if not args or args[0] != str(codec.MAJOR_VERSION):
                raise codec.ProtocolError(f"unsupported protocol version {args[:1]}")
            self._version_seen = True
        elif not self._version_seen:  # as Dovecot: a client that does not say VERSION first
            raise codec.ProtocolError("VERSION must come first")
        elif command == "AUTH":
            self._auth(codec.parse_auth(args))
        elif command == "CONT":
            if len(args) < 2:
                raise codec.ProtocolError("CONT needs an id and data")
            self._cont(args[0], args[1])
        # CPID and unknown commands need no answer (Dovecot ignores what it does not know).

    def _auth(self, request: codec.AuthRequest) -> None:
        if request.id in self._pending or request.id in self._running:
            raise codec.ProtocolError(f"request id {request.id} is already in use")
        if len(self._running) >= MAX_RUNNING:
            raise codec.ProtocolError("too many requests in flight")
        if request.mechanism not in codec.MECHANISMS:
            self._start(request, "", "", refusal="unknown mechanism")
            return
        if request.service not in SERVICES:
            self._start(request, "", "", refusal="unknown service")
            return
        exchange = _Exchange(request)
        if request.initial_response is None:
            self._wait_for_cont(exchange)
            prompt = "" if request.mechanism == "PLAIN" else codec.LOGIN_USERNAME_PROMPT
            self._send(codec.cont(request.id, prompt))
        else:
            self._step(exchange, request.initial_response)

    def _wait_for_cont(self, exchange: _Exchange) -> None:
        """Park an exchange until its CONT; the oldest parked one goes when too many wait."""
        self._pending[exchange.request.id] = exchange
        while len(self._pending) > MAX_PENDING:
            del self._pending[next(iter(self._pending))]

    def _cont(self, request_id: str, data: str) -> None:
        exchange = self._pending.pop(request_id, None)
        if exchange is None:  # abandoned and dropped, answered, or never begun
            if request_id not in self._running:
                self._send(codec.fail(request_id))
            return
        self._step(exchange, data)

    def _step(self, exchange: _Exchange, data: str) -> None:
        """Feed one client response into PLAIN or LOGIN; start the check when complete."""
        request = exchange.request
        try:
            if request.mechanism == "PLAIN":
                username, password = codec.parse_plain(data)
            elif exchange.username is None:
                exchange.username = codec.decode_b64(data)
                self._wait_for_cont(exchange)
                self._send(codec.cont(request.id, codec.LOGIN_PASSWORD_PROMPT))
                return
            else:
                username, password = exchange.username, codec.decode_b64(data)
        except codec.SaslError as malformed:  # an ordinary failure, logged with its reason
            username = malformed.username or exchange.username or ""
            self._start(request, username, "", refusal=str(malformed))
            return
        self._start(request, username, password)

    def _start(
        self, request: codec.AuthRequest, username: str, password: str, refusal: str | None = None
    ) -> None:
        self._running.add(request.id)
        task = asyncio.create_task(self._answer(request, username, password, refusal))
        self.requests.add(task)

    async def _answer(
        self, request: codec.AuthRequest, username: str, password: str, refusal: str | None
    ) -> None:
        how: dict = {
            "service": SERVICES.get(request.service, "smtp"),
            "client_ip": request.client_ip,
            "secured": request.secured,
            "method": request.mechanism,
        }
        try:
            if refusal is not None:
                await self.engine.refuse(username, refusal, **how)
            principal = await self.engine.authenticate(username, password, **how)
        except AuthFailed:
            self._send(codec.fail(request.id))
        except AuthUnavailable:
            # The one temporary signal Postfix understands (454 4.7.0); see codec.fail.
            log.warning("authsocket.closed_for_temporary_failure", connection=self.id)
            self.close()
        else:
            self._send(codec.ok(request.id, principal.username))
        finally:
            self._running.discard(request.id)
