"""Caches of verified (and of refused) passwords.

An entry is keyed by an HMAC, under a per-process random key, of the credential's identity, its
stored hash and the password. The plaintext is never kept, and a changed hash, a different
credential row or a different password simply misses. The engine still reads the credential
row on every login, so revocation and password changes hold on the very next attempt even on
another host; the cache only saves the bcrypt cost.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass


def fingerprint(secret: bytes, *parts: str) -> bytes:
    """HMAC-SHA256 of the NUL-joined parts (NUL cannot occur in a username or a hash)."""
    return hmac.new(secret, "\0".join(parts).encode(), hashlib.sha256).digest()


@dataclass
class _Entry:
    expires: float
    username: str
    vaultbox_id: uuid.UUID | None


class VerificationCache:
    """A bounded LRU of fingerprints with per-entry expiry."""

    def __init__(self, size: int, clock=time.monotonic) -> None:
        self.size = size
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def hit(self, key: bytes) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        if entry.expires <= self._clock():
            del self._entries[key]
            return False
        self._entries.move_to_end(key)
        return True

    def add(
        self, key: bytes, ttl: float, username: str, vaultbox_id: uuid.UUID | None = None
    ) -> None:
        if self.size <= 0 or ttl <= 0:
            return
        self._entries[key] = _Entry(self._clock() + ttl, username, vaultbox_id)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, *, username: str | None = None, vaultbox_id: uuid.UUID | None = None) -> int:
        """Drop the entries of a username or a vaultbox; returns how many went."""
        doomed = [
            key
            for key, entry in self._entries.items()
            if (username is not None and entry.username == username)
            or (vaultbox_id is not None and entry.vaultbox_id == vaultbox_id)
        ]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def clear(self) -> None:
        self._entries.clear()


def new_secret() -> bytes:
    return secrets.token_bytes(32)
