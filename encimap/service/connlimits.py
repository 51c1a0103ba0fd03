"""Connection limits shared by every listener (submission, intake, IMAP, auth socket TCP).

One `ConnectionLimiter` per service counts its open connections: in all, per client IP, and
those not yet logged in. A connection over a limit is refused at once, before the greeting,
with the front end's own words (SMTP `421 4.7.0`, IMAP `* BYE`). A connection that is not
logged in within `login_timeout` seconds of connecting is closed, whatever it sends meanwhile
(a slow client that keeps a read alive byte by byte gains nothing). The keys, per section:

- `max_connections`: open connections of the service (0 = no limit)
- `max_connections_per_ip`: open connections from one client address (an IPv6 client counts
  per /64, the prefix one host is usually given; unix sockets are not counted per address)
- `max_unauthenticated`: open connections that have not logged in (services with a login)
- `login_timeout`: seconds from connecting to a successful login (services with a login;
  a front end that enforces it inside its sessions, as IMAP does, passes no callback)

Each front end owns the per-command budgets of its protocol; this module only admits, counts
and times the login phase.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from encimap import logs
from encimap.metrics import CONNECTIONS_REFUSED
from encimap.service.slots import Counts, LocalCounter

log = logs.get_logger(__name__)


@dataclass(frozen=True)
class Limits:
    max_connections: int = 0
    per_ip: int = 0
    unauthenticated: int = 0
    login_timeout: float = 0.0

    @classmethod
    def of(cls, section: Any) -> Limits:
        """The limits a configuration section sets (keys a section lacks are 0: no limit)."""
        return cls(
            max_connections=getattr(section, "max_connections", 0),
            per_ip=getattr(section, "max_connections_per_ip", 0),
            unauthenticated=getattr(section, "max_unauthenticated", 0),
            login_timeout=getattr(section, "login_timeout", 0.0),
        )


def address_key(client_ip: str) -> str:
    """What `max_connections_per_ip` counts by: the IPv4 address (also inside an IPv4-mapped
    IPv6 one), or the IPv6 /64 network."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def peer_ip(peername: Any) -> str | None:
    """The client address of a transport's `peername` (None for a unix socket)."""
    return str(peername[0]) if isinstance(peername, tuple) and peername else None


class Ticket:
    """One admitted connection: `logged_in()` once it has, `release()` when it closes."""

    def __init__(
        self,
        limiter: ConnectionLimiter,
        client_ip: str | None,
        timer: asyncio.TimerHandle | None,
        ip_token: Any,
    ) -> None:
        self._limiter = limiter
        self.client_ip = client_ip
        self.ip_token = ip_token  # its place in the per-IP count, if counted
        self._timer = timer
        self.authenticated = False
        self._released = False

    def logged_in(self) -> None:
        if self.authenticated or self._released:
            return
        self.authenticated = True
        self._limiter.unauthenticated -= 1
        self._cancel_timer()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._cancel_timer()
        self._limiter._release(self)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class ConnectionLimiter:
    """The open connections of one service (all its listeners)."""

    def __init__(self, service: str, limits: Limits, per_ip: Counts | None = None) -> None:
        """`per_ip`: where connections per address are counted; this process's own count
        unless the service's processes share one (encimap.service.slots)."""
        self.service = service
        self.limits = limits
        self.total = 0
        self.unauthenticated = 0
        self.per_ip: Counts = per_ip if per_ip is not None else LocalCounter()

    def open_from(self, client_ip: str) -> int:
        """Connections from `client_ip` this process has open."""
        return self.per_ip.held(address_key(client_ip))

    def admit(
        self,
        client_ip: str | None,
        *,
        login: bool = False,
        on_login_timeout: Callable[[], None] | None = None,
    ) -> Ticket | None:
        """A ticket for a new connection, or None when a limit refuses it (counted, logged).

        `login`: the connection counts as unauthenticated until `Ticket.logged_in()`.
        `on_login_timeout` runs if it has not logged in within `login_timeout`; it says
        goodbye in the protocol's words and closes."""
        limits = self.limits
        key = address_key(client_ip) if client_ip else None
        reason = None
        ip_token = None
        if limits.max_connections and self.total >= limits.max_connections:
            reason = "connections"
        elif login and limits.unauthenticated and self.unauthenticated >= limits.unauthenticated:
            reason = "unauthenticated"
        elif limits.per_ip and key and (ip_token := self.per_ip.take(key, limits.per_ip)) is None:
            reason = "per-ip"
        if reason is not None:
            self.refused(client_ip, reason)
            return None
        self.total += 1
        timer = None
        if login:
            self.unauthenticated += 1
            if limits.login_timeout and on_login_timeout is not None:
                timer = asyncio.get_running_loop().call_later(
                    limits.login_timeout, self._login_expired, client_ip, on_login_timeout
                )
        ticket = Ticket(self, client_ip, timer, ip_token)
        ticket.authenticated = not login
        return ticket

    def refused(self, client_ip: str | None, reason: str) -> None:
        CONNECTIONS_REFUSED.labels(self.service, reason).inc()
        log.warning("connection.refused", service=self.service, rip=client_ip, reason=reason)

    def _login_expired(self, client_ip: str | None, goodbye: Callable[[], None]) -> None:
        self.refused(client_ip, "login-timeout")
        goodbye()

    def _release(self, ticket: Ticket) -> None:
        self.total -= 1
        if not ticket.authenticated:
            self.unauthenticated -= 1
        if ticket.ip_token is not None:
            self.per_ip.give_back(ticket.ip_token)
