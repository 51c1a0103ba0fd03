"""The IMAP component: STARTTLS listeners (`imap.listen`) and implicit TLS listeners
(`imap.tls_listen`), per-user connection limits, and the shared pool, auth engine and
mailbox event listener. `start(runtime)` is registered in COMPONENTS as "imap".

With `imap.workers = N`, N processes serve the same ports (encimap.service.workers). Each has
its own pool, listener and sessions; what must hold across them, the connections per user and
per client address, is counted in encimap.service.slots."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import ssl
from typing import Any

import asyncpg

from encimap import db
from encimap.auth import AuthUnavailable
from encimap.config import Config, listeners
from encimap.delivery.recipients import CertificateCache
from encimap.imap import proxy
from encimap.imap.cache import MessageCache
from encimap.imap.session import Session
from encimap.logs import get_logger
from encimap.metrics import IMAP_SESSIONS
from encimap.service import slots, workers
from encimap.service.bytebudget import ByteBudget
from encimap.service.connlimits import ConnectionLimiter, Limits, Ticket, peer_ip
from encimap.service.listeners import Sessions, bind
from encimap.store import events
from encimap.tls import TLSMaterial

log = get_logger(__name__)

_STREAM_LIMIT = 64 * 1024
# Credential changes remembered for logins in progress (a login takes seconds at most).
_CHANGES_KEPT = 10_000
_CHANGE_AGE = 300.0


class Server:
    name = "imap"

    def __init__(
        self,
        config: Config,
        pool: asyncpg.Pool,
        engine: Any,
        tls: TLSMaterial,
        listener: events.Listener,
        counts: tuple[slots.Counts, slots.Counts],
    ) -> None:
        """`counts`: where connections per user and per client address are counted."""
        self.config = config
        self.pool = pool
        self.engine = engine
        self.tls = tls
        self.listener = listener
        self.sessions = Sessions()
        self.cache = MessageCache()
        # literal bytes held by commands being read or run, in all sessions
        self.literal_budget = ByteBudget(config.imap.max_literal_bytes_in_flight, "imap")
        # APPEND's certificates and OpenPGP keys, parsed once (as the intake's)
        self.certificates = CertificateCache()
        self.servers: list[asyncio.Server] = []
        self._per_user, per_ip = counts
        self._user_tokens: dict[str, Any] = {}  # session id -> its place in the user's count
        self.limiter = ConnectionLimiter("imap", Limits.of(config.imap), per_ip=per_ip)
        self._tickets: dict[str, Ticket] = {}  # session id -> its place in the limits
        self.workers: workers.Workers | None = None
        self._open: dict[str, Session] = {}  # session id -> every session, logged in or not
        self._counted: dict[str, Session] = {}  # session id -> logged-in session
        self._rechecks: set[asyncio.Task[None]] = set()
        self._changes: dict[str, float] = {}  # NOTIFY payload -> loop time last heard
        self._unhook = engine.on_change(self._credentials_changed)
        self._trusted = [
            ipaddress.ip_network(network, strict=False) for network in config.imap.trusted_networks
        ]

    async def start(self, counts_directory: str) -> None:
        """Listen; the first of several workers then starts the others, which share the
        ports (and `counts_directory`)."""
        settings = self.config.imap
        shared = settings.workers > 1
        for spec in listeners(settings.listen):
            factory = self._factory(tls=False)
            sock = workers.inherited_socket(spec)
            self.servers.append(await bind(spec, factory, reuse_port=shared, sock=sock))
        for spec in listeners(settings.tls_listen):
            factory, context = self._factory(tls=True), self._implicit_context()
            sock = workers.inherited_socket(spec)
            self.servers.append(
                await bind(spec, factory, tls=context, reuse_port=shared, sock=sock)
            )
        if shared and workers.worker_number() is None:
            specs = [*listeners(settings.listen), *listeners(settings.tls_listen)]
            self.workers = workers.Workers(
                "imap",
                self.config,
                workers.unix_sockets(specs, self.servers),
                settings.workers - 1,
                {slots.DIRECTORY_ENV: counts_directory},
            )
            await self.workers.start()
        log.info(
            "imap.listening",
            starttls=listeners(settings.listen),
            tls=listeners(settings.tls_listen),
            worker=workers.worker_number() or 0,
        )

    def _implicit_context(self) -> ssl.SSLContext:
        """The listener's context; its SNI hook switches each handshake to the current
        material, so a SIGHUP reload reaches implicit-TLS connections too."""
        context = self.tls.context

        def current(connection: ssl.SSLObject, _name: str | None, used: ssl.SSLContext) -> None:
            if self.tls.context is not used:
                connection.context = self.tls.context

        context.sni_callback = current
        return context

    def tls_context(self) -> ssl.SSLContext:
        return self.tls.context

    def _factory(self, *, tls: bool) -> Any:
        def build() -> asyncio.StreamReaderProtocol:
            reader = asyncio.StreamReader(limit=max(self.config.imap.max_line_length, 1024))

            async def connected(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                await self._serve(r, w, tls=tls)

            return asyncio.StreamReaderProtocol(reader, connected)

        return build

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, tls: bool
    ) -> None:
        peer = writer.get_extra_info("peername")
        client_ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        # PROXY headers on the STARTTLS listeners only: before an implicit-TLS handshake the
        # header's bytes and the ClientHello can arrive in one read, which asyncio cannot
        # hand over to TLS.
        if self.config.imap.proxy_protocol and not tls:
            try:
                client_ip = await proxy.read_header(reader) or client_ip
            except (proxy.ProxyError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                log.warning("imap.proxy_refused", peer=client_ip, error=str(exc))
                writer.transport.abort()
                return
        session = Session(self, reader, writer, tls=tls, client_ip=client_ip)
        # imap.login_timeout is the session's own (encimap.imap.session): no timer here.
        ticket = self.limiter.admit(peer_ip(peer) and client_ip, login=True)
        if ticket is None:
            _bye(writer, _TOO_MANY)
            return
        self._tickets[session.id] = ticket
        self._open[session.id] = session
        task = asyncio.current_task()
        if task is not None:
            self.sessions.add(task)
        IMAP_SESSIONS.labels("open").inc()
        try:
            await session.run()
        except asyncio.CancelledError:
            # drain() cancels sessions still open at its timeout; the connection is closed
            # and this is the task's top level, so the cancellation ends here.
            writer.transport.abort()
        finally:
            IMAP_SESSIONS.labels("open").dec()
            ticket.release()
            del self._tickets[session.id]
            del self._open[session.id]

    # -- policy --
    def login_allowed(self, session: Session) -> bool:
        """Passwords only over TLS, except from `imap.trusted_networks`."""
        if session.tls:
            return True
        try:
            address = ipaddress.ip_address(session.client_ip)
        except ValueError:
            return False
        return any(address in network for network in self._trusted)

    def session_started(self, session: Session, principal: Any, since: float | None = None) -> bool:
        """Count a logged-in session; False when the user is at `max_connections_per_user`.
        `since` is when the login began: a change to the credential announced after it
        (while the password was being checked) gets the new session re-checked."""
        limit = self.config.imap.max_connections_per_user
        if limit:
            token = self._per_user.take(principal.username, limit)
            if token is None:
                return False
            self._user_tokens[session.id] = token
        self._counted[session.id] = session
        if (ticket := self._tickets.get(session.id)) is not None:
            ticket.logged_in()
        keys = ("*", f"user:{principal.username}", f"vaultbox:{principal.vaultbox_id}")
        if since is not None and any(self._changes.get(key, since - 1) >= since for key in keys):
            self._start_recheck([session])
        return True

    def session_ended(self, session: Session) -> None:
        self._counted.pop(session.id, None)
        if (token := self._user_tokens.pop(session.id, None)) is not None:
            self._per_user.give_back(token)

    # -- revocation --
    def _credentials_changed(self, payload: str) -> None:
        """A credential or vaultbox changed (NOTIFY on encimap_auth, heard on every host):
        re-check the sessions it concerns, all of them when a change may have been missed."""
        now = asyncio.get_running_loop().time()
        if len(self._changes) >= _CHANGES_KEPT:
            self._changes = {k: t for k, t in self._changes.items() if t > now - _CHANGE_AGE}
        self._changes[payload if payload.startswith(("user:", "vaultbox:")) else "*"] = now
        what, _, value = payload.partition(":")

        def concerned(principal: Any) -> bool:
            if what == "user":
                return principal.username == value
            if what == "vaultbox":
                return str(principal.vaultbox_id) == value
            return True

        sessions = [s for s in self._counted.values() if concerned(s.principal)]
        if sessions:
            self._start_recheck(sessions)

    def _start_recheck(self, sessions: list[Session]) -> None:
        task = asyncio.create_task(self._recheck(sessions))
        self._rechecks.add(task)
        task.add_done_callback(self._rechecks.discard)

    async def _recheck(self, sessions: list[Session]) -> None:
        """End (`* BYE`) the sessions whose credential was revoked or whose vaultbox is no
        longer active; one lookup per credential. A database that does not answer ends
        nothing: the next change or reconnection checks again."""
        by_credential: dict[Any, list[Session]] = {}
        for session in sessions:
            by_credential.setdefault(session.principal, []).append(session)
        for principal, group in by_credential.items():
            try:
                valid = await self.engine.still_valid(principal)
            except AuthUnavailable:
                return
            if not valid:
                for session in group:
                    log.info("imap.session_revoked", session=session.id, user=principal.username)
                    session.end("BYE Credential revoked or account suspended", "revoked")

    # -- component --
    async def close(self) -> None:
        """Stop listening and end every session: at once where it waits for the client or
        idles, after its command where one is running; the drain waits for those."""
        self._unhook()
        for server in self.servers:
            server.close()
        for session in list(self._open.values()):
            session.end("BYE [UNAVAILABLE] Server shutting down", "shutdown")
        if self.workers is not None:
            self.workers.stop()

    async def drain(self, timeout: float) -> None:
        await self.sessions.drain(timeout)
        for server in self.servers:
            await server.wait_closed()
        if self.workers is not None:
            await self.workers.wait(timeout)

    def reload(self) -> None:
        """TLS material is reloaded by the runtime (in every worker: SIGHUP is passed on);
        new handshakes pick it up."""
        if self.workers is not None:
            self.workers.signal(signal.SIGHUP)


_TOO_MANY = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"


def _bye(writer: asyncio.StreamWriter, text: bytes) -> None:
    """Refused by the connection limits (encimap.service.connlimits): say why, close."""
    writer.write(text)
    writer.close()


async def start(runtime: Any) -> Server:
    from encimap.auth import engine_for

    pool = await runtime.pool("encimap", db.ROLE_IMAP, "imap")
    engine = await engine_for(runtime)
    listener = events.Listener(await runtime.listen_pool("encimap", db.ROLE_IMAP))
    await listener.start()
    runtime.stack.push_async_callback(listener.close)
    directory = slots.shared_directory(runtime.stack)
    counts = (slots.SharedCounter(directory / "users"), slots.SharedCounter(directory / "ips"))
    for counter in counts:
        runtime.stack.callback(counter.close)
    server = Server(runtime.config, pool, engine, runtime.tls, listener, counts)
    await server.start(str(directory))
    return server
