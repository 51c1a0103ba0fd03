"""Failure throttling per client address and per (address, username), Dovecot-like.

Each counted failure doubles the delay (base, 2 x base, 4 x base ... capped at `max_delay`).
Failures with a password already refused in the window are not counted again, so a client
retrying a stale saved password is not punished as if it were guessing. State of an address
ends `window` seconds after its last counted failure. An address is counted as the connection
limits count it: an IPv4 address (also inside an IPv4-mapped IPv6 one) or an IPv6 /64, the
prefix one host is usually given, so a client cannot shed its delay by moving within its /64.
Trusted networks are exempt, and so is a request without a client address (nothing to key
on; one shared "unknown" bucket would let one client slow down every other). Per-user lockout
is deliberately absent: it would let anyone lock a victim out.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from encimap.config import AuthConfig
from encimap.service.connlimits import address_key

MAX_TRACKED_ADDRESSES = 100_000
MAX_REMEMBERED_PASSWORDS = 32  # per address: recent refused (username, password) fingerprints
MAX_USERS_PER_ADDRESS = 1024


@dataclass
class _State:
    failures: int = 0
    last: float = 0.0
    per_user: dict[str, int] = field(default_factory=dict)
    seen: OrderedDict[bytes, None] = field(default_factory=OrderedDict)


class Throttle:
    def __init__(self, config: AuthConfig, clock=time.monotonic) -> None:
        self.base = config.throttle_base_delay
        self.max_delay = config.throttle_max_delay
        self.window = config.throttle_window
        self.max_failures = config.max_failures_per_ip
        self.trusted = [ipaddress.ip_network(net, strict=False) for net in config.trusted_networks]
        self._clock = clock
        self._states: OrderedDict[str, _State] = OrderedDict()

    def exempt(self, client_ip: str | None) -> bool:
        address = _address(client_ip)
        return address is None or any(address in net for net in self.trusted)

    def _state(self, key: str) -> _State | None:
        state = self._states.get(key)
        if state is not None and self._clock() - state.last > self.window:
            del self._states[key]
            return None
        return state

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return min(self.max_delay, self.base * 2 ** min(failures - 1, 30))

    def before_verify(
        self, client_ip: str | None, username: str, exempt_trusted: bool = True
    ) -> tuple[float, bool]:
        """(delay before checking, whether the address is over the hard limit)."""
        if client_ip is None or (exempt_trusted and self.exempt(client_ip)):
            return 0.0, False
        state = self._state(address_key(client_ip))
        if state is None:
            return 0.0, False
        over = 0 < self.max_failures <= state.failures
        return self.delay(state.per_user.get(username, 0)), over

    def failed(
        self, client_ip: str | None, username: str, attempt: bytes, exempt_trusted: bool = True
    ) -> float:
        """Count a failure (unless `attempt` was refused before); the delay before answering."""
        if client_ip is None or (exempt_trusted and self.exempt(client_ip)):
            return 0.0
        key = address_key(client_ip)
        state = self._state(key)
        if state is None:
            state = self._states[key] = _State()
        self._states.move_to_end(key)
        if attempt not in state.seen:
            state.failures += 1
            state.per_user[username] = state.per_user.pop(username, 0) + 1
            if len(state.per_user) > MAX_USERS_PER_ADDRESS:
                del state.per_user[next(iter(state.per_user))]
            state.seen[attempt] = None
            if len(state.seen) > MAX_REMEMBERED_PASSWORDS:
                state.seen.popitem(last=False)
            state.last = self._clock()
        while len(self._states) > MAX_TRACKED_ADDRESSES:
            self._states.popitem(last=False)
        return self.delay(state.failures)


def _address(client_ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not client_ip:
        return None
    try:
        return ipaddress.ip_address(client_ip)
    except ValueError:
        return None
