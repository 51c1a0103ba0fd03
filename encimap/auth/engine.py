"""The auth engine: a username and a password become a Principal, AuthFailed or AuthUnavailable.

Per login: throttling check, the credential lookups (both databases at once for SMTP), then
bcrypt in the thread pool unless a cache entry for exactly this credential row, stored hash and
password exists. Unknown users are checked against a dummy hash of a cost that stored hashes
of the service have (the platform may hash at another cost than encimap does), so the answer
takes as long as for a known user with a wrong password.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal, NoReturn

import asyncpg

from encimap import db, logs
from encimap.auth.cache import VerificationCache, fingerprint, new_secret
from encimap.auth.hasher import BcryptVerifier, QueueFull, cost_of
from encimap.auth.principal import AuthFailed, AuthUnavailable, Principal
from encimap.auth.throttle import Throttle
from encimap.config import Config
from encimap.metrics import AUTH_CACHE, AUTH_DECISIONS, AUTH_THROTTLED
from encimap.store import events, logins
from encimap.store.logins import LoginRow

log = logs.get_logger(__name__)

Service = Literal["smtp", "imap"]
NOTIFY_CHANNEL = "encimap_auth"
MAX_USERNAME_LENGTH = 256
# Characters that can reach a log line verbatim; anything else becomes "?" so a crafted
# username cannot forge the fields fail2ban reads (e.g. a second "rip=").
_UNSAFE_LOG_CHARS = re.compile(r"[^A-Za-z0-9._@+\-]")


class _Refused(Exception):
    """Internal: a refusal with the reason for the log line (never shown to the client)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuthEngine:
    def __init__(
        self,
        config: Config,
        motorical: asyncpg.Pool,
        encimap: asyncpg.Pool,
        *,
        listen: asyncpg.Pool | None = None,
    ) -> None:
        """`listen`: the pool the cache's LISTEN connection comes from (default `encimap`)."""
        self.config = config
        self._auth = config.auth
        self._motorical = motorical
        self._encimap = encimap
        self._secret = new_secret()
        self._verified = VerificationCache(self._auth.cache_size)
        self._refused = VerificationCache(self._auth.cache_size)
        # bcrypt runs under way, by the fingerprint of what they check (_verify_once)
        self._verifying: dict[bytes, asyncio.Future[bool]] = {}
        # the bcrypt costs of the stored hashes looked up, per service (_dummy_cost)
        self._costs: dict[str, set[int]] = {"smtp": set(), "imap": set()}
        self._throttle = Throttle(self._auth)
        self._bcrypt = BcryptVerifier(
            workers=self._auth.bcrypt_workers,
            queue=self._auth.bcrypt_queue,
            cost=self._auth.bcrypt_cost,
        )
        self._lookup_timeout = config.database.connect_timeout + config.database.command_timeout
        self._watch = events.Watch(
            listen or encimap, NOTIFY_CHANNEL, on_notify=self._on_notify, on_deaf=self._on_deaf
        )
        self._change_hooks: list[Callable[[str], None]] = []
        self.listening = self._watch.listening

    # --- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare the dummy hash and start LISTENing for credential changes."""
        await self._bcrypt.start()
        self._watch.start()

    async def close(self) -> None:
        await self._watch.close()
        self._bcrypt.close()

    def flush_cache(self) -> None:
        self._verified.clear()
        self._refused.clear()

    @property
    def bcrypt_workers(self) -> int:
        return self._bcrypt.workers

    # --- the decision -------------------------------------------------------------------

    async def authenticate(
        self,
        username: str,
        password: str,
        *,
        service: Service,
        client_ip: str | None = None,
        secured: bool = True,
        method: str = "PLAIN",
        exempt_trusted: bool = True,
    ) -> Principal:
        """The principal for a login, or AuthFailed/AuthUnavailable. `exempt_trusted=False`
        throttles addresses in `[auth] trusted_networks` too (for an address a caller names
        rather than one the socket shows)."""
        return await self._decision(
            username, password, service, client_ip, secured, method, exempt_trusted, None
        )

    async def refuse(
        self,
        username: str,
        reason: str,
        *,
        service: Service,
        client_ip: str | None = None,
        secured: bool = True,
        method: str = "PLAIN",
        exempt_trusted: bool = True,
    ) -> NoReturn:
        """Refuse an exchange a front end found malformed before it held a password to check
        (bad base64, a PLAIN authorization identity of someone else, an unknown mechanism):
        AuthFailed (or AuthUnavailable over the address's hard limit), logged, throttled and
        costing a dummy bcrypt check like any failed login, so a malformed request is no
        cheaper way to fill the throttling's memory or to tell anything apart. `username`:
        only what is certainly the login name ("" when unknown), never a part of a response
        that may hold the password."""
        await self._decision(
            username, "", service, client_ip, secured, method, exempt_trusted, reason
        )
        raise AssertionError("a refusal never returns")  # pragma: no cover

    async def _decision(
        self,
        username: str,
        password: str,
        service: Service,
        client_ip: str | None,
        secured: bool,
        method: str,
        exempt_trusted: bool,
        refusal: str | None,
    ) -> Principal:
        rip = _valid_ip(client_ip)
        line = _LogLine(username, method, service, rip, secured)
        wait, over_limit = self._throttle.before_verify(rip, username, exempt_trusted)
        if over_limit:
            AUTH_THROTTLED.labels("refused").inc()
            line.unavailable("too many failures from this address")
            raise AuthUnavailable
        if wait:
            AUTH_THROTTLED.labels("delayed").inc()
            await asyncio.sleep(wait)
        try:
            if refusal is not None:
                await self._verify("", None, self._dummy_cost(service, username))
                raise _Refused(refusal)
            principal = await self._decide(username, password, service)
        except _Refused as refused:
            attempt = fingerprint(self._secret, "attempt", service, username, password)
            # A failure waits the address's delay in all, counting what it waited before.
            delay = self._throttle.failed(rip, username, attempt, exempt_trusted) - wait
            line.failed(refused.reason)
            if delay > 0:
                await asyncio.sleep(delay)
            raise AuthFailed from None
        except AuthUnavailable as exc:
            line.unavailable(str(exc))
            raise AuthUnavailable from None
        line.login(principal)
        return principal

    async def _decide(self, username: str, password: str, service: Service) -> Principal:
        if not username or len(username) > MAX_USERNAME_LENGTH or "\0" in username:
            await self._verify(password, None, self._dummy_cost(service, username))
            raise _Refused("malformed username")
        try:
            row = await self._lookup(username, service)
        except _Refused:  # a name live in both databases: no cheaper than any other refusal
            await self._verify(password, None, self._dummy_cost(service, username))
            raise
        if row is not None and (cost := cost_of(row.password_hash)) is not None:
            self._costs[service].add(cost)
        state = "unknown" if row is None else ("live" if row.live else "inactive")
        stored_hash = (row.password_hash or "") if row is not None else ""
        credential = f"{row.kind}:{row.credential_id}" if row is not None else "-"
        verified_key = fingerprint(self._secret, credential, stored_hash, username, password)
        if row is not None and row.live and self._verified.hit(verified_key):
            AUTH_CACHE.labels("hit").inc()
            return self._principal(row)
        AUTH_CACHE.labels("miss").inc()
        refused_key = fingerprint(self._secret, "refused", state, credential, verified_key.hex())
        if self._refused.hit(refused_key):
            raise _Refused(f"{_REASONS[state]} (cached)")
        matched = await self._verify_once(
            verified_key,
            password,
            row.password_hash if row is not None else None,
            self._dummy_cost(service, username),
        )
        if row is None or not row.live or not matched:
            reason = _REASONS[state] if state != "live" else "password mismatch"
            self._refused.add(refused_key, self._auth.negative_cache_ttl, username, None)
            raise _Refused(reason)
        ttl = self._auth.motorical_cache_ttl if row.kind == "motorblock" else self._auth.cache_ttl
        self._verified.add(verified_key, ttl, username, row.vaultbox_id)
        return self._principal(row)

    def _dummy_cost(self, service: Service, username: str) -> int:
        """The cost an unknown `username` is checked at: one of the costs seen in the stored
        hashes of `service`, always the same one for the same name (an unknown user must not
        cost what no known user costs, nor change its cost between attempts); the configured
        cost until a stored hash has been seen."""
        costs = sorted(self._costs[service])
        if not costs:
            return self._auth.bcrypt_cost
        pick = fingerprint(self._secret, "dummy-cost", service, username)
        return costs[int.from_bytes(pick[:4], "big") % len(costs)]

    async def _verify_once(
        self, key: bytes, password: str, password_hash: str | None, dummy_cost: int
    ) -> bool:
        """`_verify`, shared by the logins that check the same password against the same
        credential row and hash at the same time (`key`, their fingerprint): a client that
        opens several connections at once, or many sessions of one user reconnecting, costs
        one bcrypt run instead of one each (the cache only helps once one has ended)."""
        running = self._verifying.get(key)
        if running is None:
            running = asyncio.ensure_future(self._verify(password, password_hash, dummy_cost))
            self._verifying[key] = running
            running.add_done_callback(lambda done: self._verified_by(key, done))
        return await asyncio.shield(running)

    def _verified_by(self, key: bytes, done: asyncio.Future[bool]) -> None:
        self._verifying.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here too: every waiter may have gone

    async def _verify(
        self, password: str, password_hash: str | None, dummy_cost: int | None = None
    ) -> bool:
        try:
            return await self._bcrypt.verify(password, password_hash, dummy_cost)
        except QueueFull:
            raise AuthUnavailable("bcrypt queue full") from None

    async def _lookup(self, username: str, service: Service) -> LoginRow | None:
        lookups: list[Awaitable[LoginRow | None]]
        if service == "imap":
            lookups = [self._query("encimap", logins.vaultbox_imap_login, username)]
        else:
            lookups = [
                self._query("motorical", logins.motorblock_login, username),
                self._query("encimap", logins.vaultbox_smtp_login, username),
            ]
        results = await asyncio.gather(*lookups, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        rows = [row for row in results if isinstance(row, LoginRow)]
        live = [row for row in rows if row.live]
        if len(live) > 1:
            log.error(
                "auth.username_conflict",
                detail="username has live credentials in both databases; refusing every login "
                "until one is renamed or disabled",
                user=_safe(username),
                kinds=[row.kind for row in live],
            )
            raise _Refused("username in both databases")
        return (live or rows or [None])[0]

    async def _query(
        self,
        database: db.Database,
        lookup: Callable[[Any, str], Awaitable[LoginRow | None]],
        username: str,
    ) -> LoginRow | None:
        pool = self._motorical if database == "motorical" else self._encimap
        try:
            async with asyncio.timeout(self._lookup_timeout):
                return await lookup(pool, username)
        except db.DATABASE_ERRORS as exc:
            log.error(
                "auth.database_error", database=database, error=str(exc) or type(exc).__name__
            )
            raise AuthUnavailable(f"{database} database unavailable") from None

    def _principal(self, row: LoginRow) -> Principal:
        if row.kind == "motorblock":
            domains: tuple[str, ...] = row.domains
            addresses: tuple[str, ...] = ()
        else:
            domains, addresses = (), (row.address,)
        limit = row.hourly_limit
        return Principal(
            kind=row.kind,
            username=row.username,
            credential_id=row.credential_id,
            user_id=row.user_id,
            vaultbox_id=row.vaultbox_id,
            motorblock_id=row.motorblock_id,
            sender_domains=domains,
            sender_addresses=addresses,
            hourly_limit=limit
            if limit is not None
            else self.config.submission.default_hourly_limit,
        )

    # --- open sessions ------------------------------------------------------------------

    def on_change(self, hook: Callable[[str], None]) -> Callable[[], None]:
        """Call `hook` with each change announced on NOTIFY_CHANNEL ('user:<username>',
        'vaultbox:<uuid>') and with '*' whenever one may have been missed; the front ends
        re-check their open sessions with `still_valid`. Returns the unsubscribe function."""
        self._change_hooks.append(hook)
        return lambda: self._change_hooks.remove(hook)

    async def still_valid(self, principal: Principal) -> bool:
        """Whether the credential `principal` logged in with may still log in (not revoked,
        vaultbox or MotorBlock active); a password change keeps it valid. Raises
        AuthUnavailable when the database does not answer."""
        username = principal.username
        if principal.kind == "motorblock":
            row = await self._query("motorical", logins.motorblock_login, username)
        elif principal.kind == "vaultbox_smtp":
            row = await self._query("encimap", logins.vaultbox_smtp_login, username)
        else:
            row = await self._query("encimap", logins.vaultbox_imap_login, username)
        return row is not None and row.live and row.credential_id == principal.credential_id

    def _tell(self, payload: str) -> None:
        for hook in list(self._change_hooks):
            try:
                hook(payload)
            except Exception:
                log.exception("auth.change_hook_failed")

    # --- cache invalidation -------------------------------------------------------------

    def _on_deaf(self) -> None:
        self.flush_cache()
        self._tell("*")

    def _on_notify(self, payload: str) -> None:
        """Drop what a change announced on NOTIFY_CHANNEL may have made wrong."""
        self._tell(payload)
        what, _, value = payload.partition(":")
        if what == "user":
            self._verified.drop(username=value)
            self._refused.drop(username=value)
        elif what == "vaultbox":
            try:
                vaultbox_id = uuid.UUID(value)
            except ValueError:
                self.flush_cache()
                return
            self._verified.drop(vaultbox_id=vaultbox_id)
        else:
            self.flush_cache()


_REASONS = {
    "unknown": "unknown user",
    "inactive": "credential or account disabled",
    "live": "password mismatch",
}


def _safe(value: str, limit: int = 64) -> str:
    return _UNSAFE_LOG_CHARS.sub("?", value[:limit])


def _method(method: str) -> str:
    """The mechanism as the fail2ban filter reads it (`[A-Z0-9_-]+`), whatever a peer sent."""
    return re.sub(r"[^A-Z0-9_-]", "-", method.upper()[:16]) or "NONE"


def _valid_ip(client_ip: str | None) -> str | None:
    """The client address as logged and throttled: normalised, and an IPv4 client a
    dual-stack listener shows as ::ffff:a.b.c.d as the IPv4 address a firewall bans."""
    if not client_ip:
        return None
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


class _LogLine:
    """The one log line per decision, in the shape fail2ban's filter reads."""

    def __init__(
        self, username: str, method: str, service: str, rip: str | None, secured: bool
    ) -> None:
        self.started = time.perf_counter()
        self.fields = (
            f"user=<{_safe(username)}>, method={_method(method)}, "
            f"service={service}, rip={rip or 'unknown'}"
        )
        self.secured = secured
        self.service = service

    def _ms(self) -> int:
        return round((time.perf_counter() - self.started) * 1000)

    def login(self, principal: Principal) -> None:
        AUTH_DECISIONS.labels(self.service, principal.kind, "ok").inc()
        log.info(
            f"login: {self.fields}, kind={principal.kind}{', TLS' if self.secured else ''}",
            duration_ms=self._ms(),
        )

    def failed(self, reason: str) -> None:
        AUTH_DECISIONS.labels(self.service, "unknown", "failed").inc()
        log.warning(f"auth failed: {self.fields}", reason=reason, duration_ms=self._ms())

    def unavailable(self, reason: str) -> None:
        AUTH_DECISIONS.labels(self.service, "unknown", "tempfail").inc()
        log.error(f"auth unavailable: {self.fields}", reason=reason, duration_ms=self._ms())


async def engine_for(runtime: Any) -> AuthEngine:
    """The process's one engine on the auth pools of both databases (created on first use)."""

    async def build() -> AuthEngine:
        motorical = await runtime.logins_pool("motorical")
        encimap = await runtime.logins_pool("encimap")
        listen = await runtime.listen_pool("encimap", db.ROLE_AUTH)
        engine = AuthEngine(runtime.config, motorical, encimap, listen=listen)
        await engine.start()
        runtime.stack.push_async_callback(engine.close)
        runtime.reload_hooks.append(engine.flush_cache)
        return engine

    return await runtime.shared("auth", build)
