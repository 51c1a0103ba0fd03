"""One submission session's policy: AUTH through the auth engine, who may send as whom, the
shared hourly limit, and the upstream transaction that follows the client's step by step."""

from __future__ import annotations

import asyncio
import binascii
import datetime
import secrets
import time
from base64 import b64decode
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiosmtpd.smtp import MISSING, AuthResult, Envelope, Session

from encimap import db, logs
from encimap.auth import AuthEngine, AuthFailed, AuthUnavailable, Principal
from encimap.config import Config
from encimap.delivery import replies as delivery_replies
from encimap.delivery import trace
from encimap.delivery.deliverer import Deliverer, Job
from encimap.delivery.recipients import CertificateCache, Target, resolve
from encimap.metrics import RELAYED
from encimap.service.listeners import Sessions
from encimap.store import sending
from encimap.submission import headers, replies
from encimap.submission.relay import RelaySettings, Upstream, UpstreamRefused, UpstreamUnavailable

log = logs.get_logger(__name__)


@dataclass(frozen=True)
class Settings:
    """What every session of one process needs (rebuilt on SIGHUP)."""

    hostname: str
    max_recipients: int
    check_from_header: bool
    relay: RelaySettings


@dataclass(frozen=True)
class LocalDelivery:
    """`local_delivery`: vaultbox-to-vaultbox mail on this host goes through the intake's
    delivery path (on the intake role's pool) instead of the upstream."""

    pool: asyncpg.Pool
    config: Config
    deliverer: Deliverer
    certificates: CertificateCache
    background: Sessions  # failure records written after the reply


@dataclass
class Context:
    """Shared by the sessions of one process."""

    engine: AuthEngine
    pool: asyncpg.Pool
    settings: Settings
    local: LocalDelivery | None = None


@dataclass
class Transaction:
    id: str
    sender: str
    reserved: Counter[datetime.datetime] = field(default_factory=Counter)
    local: list[Target] = field(default_factory=list)  # stored here, not relayed
    relayed: int = 0  # recipients the upstream accepted


def principal_key(principal: Principal) -> str:
    """The sending entity the hourly limit counts for (all its credentials share it)."""
    if principal.kind == "motorblock":
        return f"motorblock:{principal.motorblock_id}"
    return f"vaultbox:{principal.vaultbox_id}"


class SubmissionHandler:
    """aiosmtpd handler for one connection (created per connection by the listener)."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.settings = context.settings
        self.upstream = Upstream(self.settings.relay)
        self.principal: Principal | None = None
        self.transaction: Transaction | None = None
        self.session: Session | None = None
        self.tls = ""
        self.messages = 0
        self.failed_logins = 0
        self.started = time.monotonic()
        self._delivering: asyncio.Future[str] | None = None
        self.client_ip = "unknown"

    def connected(self, client_ip: str | None) -> None:
        """The connection is open: its address, for every log line from the first on."""
        self.client_ip = client_ip or "local"

    # --- AUTH (RFC 4954, PLAIN per RFC 4616) -------------------------------------------------

    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            response = await server.challenge_auth("")
            if response is MISSING:
                return await self._ended(server, b"", "PLAIN")
        else:
            try:
                response = b64decode(args[1], validate=True)
            except binascii.Error:
                return await self._refuse_auth(
                    server, b"", "PLAIN", "invalid base64", replies.AUTH_BAD_BASE64
                )
        parts = response.split(b"\x00")
        if len(parts) != 3:  # nothing in it is certainly the username: it may be the password
            return await self._refuse_auth(
                server, b"", "PLAIN", "malformed PLAIN response", replies.AUTH_BAD_PLAIN
            )
        authzid, username, password = parts
        if authzid and authzid != username:
            # RFC 4616 lets a client ask to act as someone else; nobody here may, as in IMAP
            # and the auth socket.
            return await self._refuse_auth(
                server, username, "PLAIN", "authorization identity differs", replies.AUTH_INVALID
            )
        return await self._authenticate(server, username, password, "PLAIN")

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            username = await server.challenge_auth("Username:")
        else:
            try:
                username = b64decode(args[1], validate=True)
            except binascii.Error:
                return await self._refuse_auth(
                    server, b"", "LOGIN", "invalid base64", replies.AUTH_BAD_BASE64
                )
        if username is MISSING:
            return await self._ended(server, b"", "LOGIN")
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return await self._ended(server, username, "LOGIN")
        return await self._authenticate(server, username, password, "LOGIN")

    async def _authenticate(
        self, server: Any, username: bytes, password: bytes, method: str
    ) -> AuthResult:
        self._note_session(server)
        try:
            principal = await self.context.engine.authenticate(
                username.decode("utf-8", "replace"),
                password.decode("utf-8", "replace"),
                service="smtp",
                client_ip=self.client_ip,
                secured=server.secured,
                method=method,
            )
        except AuthFailed:
            self.failed_logins += 1
            return _refused(replies.AUTH_INVALID)
        except AuthUnavailable:
            return _refused(replies.AUTH_UNAVAILABLE)
        self.principal = principal
        return AuthResult(success=True, auth_data=principal, message=replies.AUTH_OK)

    async def _refuse_auth(
        self, server: Any, username: bytes, method: str, reason: str, reply: str
    ) -> AuthResult:
        """A malformed exchange: one logged, throttled failure, answered with `reply`."""
        await self._malformed(server, username, method, reason)
        return _refused(reply)

    async def _ended(self, server: Any, username: bytes, method: str) -> AuthResult:
        """The exchange ended at a challenge, its reply already sent: a malformed response is
        a failure like any other; a `*` or a hang-up is no decision."""
        if server.sasl_refusal is not None:
            await self._malformed(server, username, method, server.sasl_refusal)
        return AuthResult(success=False, handled=True)

    async def _malformed(self, server: Any, username: bytes, method: str, reason: str) -> None:
        self._note_session(server)
        self.failed_logins += 1
        try:
            await self.context.engine.refuse(
                username.decode("utf-8", "replace"),
                reason,
                service="smtp",
                client_ip=self.client_ip,
                secured=server.secured,
                method=method,
            )
        except (AuthFailed, AuthUnavailable):
            pass

    # --- envelope ---------------------------------------------------------------------------

    async def handle_EHLO(
        self, server: Any, session: Session, envelope: Envelope, hostname: str, responses: list
    ) -> list[str]:
        session.host_name = hostname
        self._note_session(server)
        await self._abort()
        return server.extension_reply(responses)

    async def handle_RSET(self, server: Any, session: Session, envelope: Envelope) -> str:
        await self._abort()
        return replies.OK

    async def handle_MAIL(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        principal = self._principal()
        await self._abort()
        if not principal.may_send_as(address):
            self._log_message(None, "refused", address, 0, 0, replies.SENDER_NOT_OWNED)
            return replies.SENDER_NOT_OWNED
        try:
            await self.upstream.begin(address, body_8bit="BODY=8BITMIME" in options)
        except UpstreamRefused as exc:
            return replies.passthrough(exc.code, exc.message)
        except UpstreamUnavailable as exc:
            log.warning("submission.upstream_unavailable", stage="MAIL", error=str(exc))
            return replies.UPSTREAM_UNAVAILABLE
        self.transaction = Transaction(secrets.token_hex(6), address)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return replies.OK

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        principal, transaction = self._principal(), self.transaction
        if transaction is None:  # MAIL was refused
            return "503 5.5.1 Error: need MAIL command"
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        key = principal_key(principal)
        try:
            quota = await sending.reserve(self.context.pool, key, 1, principal.hourly_limit)
        except db.DATABASE_ERRORS as exc:
            log.error("submission.counter_unavailable", error=str(exc))
            return replies.DATABASE_UNAVAILABLE
        if not quota.granted:
            log.info(
                "submission.rate_limited",
                id=transaction.id,
                user=principal.username,
                limit=principal.hourly_limit,
                resets_at=quota.resets_at.isoformat(),
            )
            return replies.rate_limited(principal.hourly_limit, quota.resets_at)
        reservation = Counter({quota.window_start: 1})
        try:
            reply = await self._add_recipient(transaction, principal, address)
        except BaseException:
            await asyncio.shield(self._release(key, reservation))
            raise
        if reply != replies.OK:
            await self._release(key, reservation)
            return reply
        transaction.reserved += reservation
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return reply

    async def _add_recipient(
        self, transaction: Transaction, principal: Principal, address: str
    ) -> str:
        """Local target or upstream RCPT for one recipient; OK or the refusal."""
        local = await self._local_target(principal, address)
        if isinstance(local, delivery_replies.Reply):  # a local vaultbox that cannot take it
            return str(local)
        if local is not None:
            transaction.local.append(local)
            return replies.OK
        try:
            await self.upstream.recipient(address)
        except UpstreamRefused as exc:
            return replies.passthrough(exc.code, exc.message)
        except UpstreamUnavailable as exc:
            log.warning("submission.upstream_unavailable", stage="RCPT", error=str(exc))
            return replies.UPSTREAM_UNAVAILABLE
        transaction.relayed += 1
        return replies.OK

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        transaction = self.transaction
        assert transaction is not None and envelope.original_content is not None
        # From here on the reservations belong to this message, not to the session: a client
        # that hangs up now (right after the final dot) must not get them back while the
        # message is handed on. The delivery runs in its own task, which `finish` waits for.
        self.transaction = None
        delivery = asyncio.ensure_future(
            self._deliver(transaction, session, envelope.original_content)
        )
        self._delivering = delivery
        return await asyncio.shield(delivery)

    async def _deliver(self, transaction: Transaction, session: Session, content: bytes) -> str:
        try:
            fields, rest = headers.scan(content)
        except headers.MalformedHeader as exc:
            return await self._refuse(transaction, len(content), replies.malformed_header(exc))
        if self.settings.check_from_header and not self._from_header_allowed(fields):
            return await self._refuse(transaction, len(content), replies.FROM_NOT_OWNED)
        content = headers.join(headers.without_auth_header(fields), rest)
        if transaction.local:
            stored = await self._deliver_locally(transaction, session, content)
            if stored.code != 250 or not transaction.relayed:
                return await self._finish(transaction, stored.code == 250, str(stored), content)
        message = self._trace(transaction, session) + content
        try:
            response = await self.upstream.send(message)
        except UpstreamRefused as exc:
            result, reply = "rejected", replies.passthrough(exc.code, exc.message)
        except UpstreamUnavailable as exc:
            log.warning("submission.upstream_unavailable", stage="DATA", error=str(exc))
            result, reply = "tempfail", replies.UPSTREAM_UNAVAILABLE
        else:
            result, reply = "ok", replies.passthrough(response.code, response.message)
        RELAYED.labels(result).inc()
        # Lost in the middle of DATA, the upstream may have queued the message: the
        # reservations stay spent (the safe side); only a refusal gives them back.
        spent = result != "rejected"
        return await self._finish(transaction, result == "ok", reply, message, spent=spent)

    async def _refuse(self, transaction: Transaction, size: int, reply: str) -> str:
        """A message refused before anything was handed on."""
        await self._give_back(transaction)
        await self.upstream.reset()
        recipients = transaction.relayed + len(transaction.local)
        code = reply.split(" ", 1)[0]
        self._log_message(transaction.id, "refused", transaction.sender, recipients, size, code)
        return reply

    async def _finish(
        self,
        transaction: Transaction,
        delivered: bool,
        reply: str,
        message: bytes,
        *,
        spent: bool = False,
    ) -> str:
        """End the transaction after DATA: spend or give back its reservations, log it.

        A retry after a failure past local delivery stores no second copy: the delivery path
        recognises the same Message-ID and body within its duplicate window."""
        if delivered:
            self.messages += 1
            if not transaction.relayed:  # everything stayed here: end the upstream's MAIL
                await self.upstream.reset()
        else:
            if not spent:
                await self._give_back(transaction)
            await self.upstream.reset()
        self._log_message(
            transaction.id,
            "relayed" if delivered else "failed",
            transaction.sender,
            transaction.relayed + len(transaction.local),
            len(message),
            reply,
        )
        return reply

    async def _local_target(
        self, principal: Principal, address: str
    ) -> Target | delivery_replies.Reply | None:
        """The vaultbox on this host `address` delivers to when local delivery applies (a
        refusal if it is one but cannot take mail now), None when the upstream gets it."""
        local = self.context.local
        if local is None or principal.kind != "vaultbox_smtp":
            return None
        found = await resolve(local.pool, address, local.config, local.certificates)
        return None if found == delivery_replies.UNKNOWN_RECIPIENT else found

    async def _deliver_locally(
        self, transaction: Transaction, session: Session, content: bytes
    ) -> delivery_replies.Reply:
        local = self.context.local
        assert local is not None
        received_at = datetime.datetime.now(datetime.UTC)
        prepared = trace.prepare(
            content,
            trace.Trace(
                sender=transaction.sender,
                helo=session.host_name or "",
                peer_ip=self.client_ip,
                hostname=self.settings.hostname,
                protocol="ESMTPSA",
                queue_id=transaction.id,
                received_at=received_at,
            ),
        )
        job = Job(
            queue_id=transaction.id,
            sender=transaction.sender,
            prepared=prepared,
            size_original=len(content),
            received_at=received_at,
            started=time.perf_counter(),
        )
        # Shielded: a client that disconnects now does not cancel a transaction half-way.
        return await asyncio.shield(local.deliverer.all(job, transaction.local))

    async def handle_exception(self, error: Exception) -> str:
        # Without this aiosmtpd answers a permanent "500 Error: (Class) text" to the client.
        log.error("submission.error", error=repr(error))
        await self._abort()
        return replies.DATABASE_UNAVAILABLE

    # --- session end --------------------------------------------------------------------------

    async def finish(self) -> None:
        """Connection closed: let a message being handed on finish, give back unsent
        reservations, close the upstream, log it."""
        try:
            if (delivering := self._delivering) is not None:
                await asyncio.wait([delivering])
                if not delivering.cancelled() and (error := delivering.exception()) is not None:
                    log.error("submission.error", error=repr(error))  # the client had left
            await self._abort()
        finally:
            await self.upstream.close()
        principal = self.principal
        log.info(
            "submission.session",
            rip=self.client_ip,
            tls=self.tls or None,
            kind=principal.kind if principal else None,
            user=principal.username if principal else None,
            messages=self.messages,
            failed_logins=self.failed_logins,
            duration_ms=round((time.monotonic() - self.started) * 1000),
        )

    # --- helpers ------------------------------------------------------------------------------

    def _principal(self) -> Principal:
        assert self.principal is not None, "the server refuses MAIL before AUTH"
        return self.principal

    def _from_header_allowed(self, fields: list[headers.Field]) -> bool:
        addresses = headers.from_addresses(fields)
        return bool(addresses) and all(self._principal().may_send_as(a) for a in addresses)

    async def _abort(self) -> None:
        """End the transaction in progress: release its reservations, RSET the upstream."""
        transaction, self.transaction = self.transaction, None
        if transaction is None:
            return
        await self._give_back(transaction)
        await self.upstream.reset()

    async def _give_back(self, transaction: Transaction) -> None:
        reserved, transaction.reserved = transaction.reserved, Counter()
        if reserved:
            await self._release(principal_key(self._principal()), reserved)

    async def _release(self, key: str, reserved: Counter[datetime.datetime]) -> None:
        try:
            for window_start, count in reserved.items():
                await sending.release(self.context.pool, key, window_start, count)
        except db.DATABASE_ERRORS as exc:  # the quota stays used until the window ends: safe side
            log.error("submission.counter_release_failed", key=key, error=str(exc))

    def _trace(self, transaction: Transaction, session: Session) -> bytes:
        principal = self._principal()
        return headers.trace_headers(
            headers.Trace(
                submission_id=transaction.id,
                hostname=self.settings.hostname,
                helo=session.host_name or "",
                client_ip=self.client_ip,
                tls=self.tls,
                kind=principal.kind,
                user_id=str(principal.user_id),
                principal_id=str(principal.motorblock_id or principal.vaultbox_id),
                credential_id=str(principal.credential_id),
            )
        )

    def _note_session(self, server: Any) -> None:
        self.session = server.session
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        if ssl_object is not None:
            cipher = ssl_object.cipher()
            self.tls = f"{ssl_object.version()} {cipher[0] if cipher else ''}".strip()

    def _log_message(
        self,
        submission_id: str | None,
        outcome: str,
        sender: str,
        recipients: int,
        size: int,
        reply: str,
    ) -> None:
        principal = self._principal()
        log.info(
            "submission.message",
            id=submission_id,
            outcome=outcome,
            kind=principal.kind,
            user=principal.username,
            rip=self.client_ip,
            sender=sender,
            recipients=recipients,
            size=size,
            reply=reply.splitlines()[-1],
        )


def _refused(reply: str) -> AuthResult:
    # handled=False with a message: aiosmtpd sends it (handled=True would send nothing).
    return AuthResult(success=False, handled=False, message=reply)
